"""Loading a pipeline document: JSON Schema, then structure, then graph checks.

All three steps run before anything executes and collect every problem they
find into one :class:`~stageflow.PipelineValidationError`.

Hot path: only :meth:`Pipeline.to_dict`, once per session snapshot ("paused
session, as snapshot text" row).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import marshal
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import cattrs
import jsonschema
import yaml
from cattrs.gen import make_dict_structure_fn, override

from stageflow._errors import DefinitionError, PipelineValidationError, Problem, shown
from stageflow._graph import check_graph, listing
from stageflow._guard import (
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    BudgetError,
    DuplicateKeyError,
    int_too_large,
    is_yaml_path,
    parse_json_text,
    parse_yaml_text,
    read_text_file,
    yaml_problem,
)
from stageflow._identity import IdentityCache
from stageflow._json import (
    MAX_DEPTH,
    a_json_type,
    a_python_type,
    copy_json,
    find_non_json,
    freeze,
    too_much_text,
)
from stageflow._model import (
    API_VERSIONS,
    ConditionBranch,
    ConditionNode,
    Limits,
    MapNode,
    Node,
    ParallelNode,
    Reducer,
    StageNode,
    SubpipelineNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._specs import DocumentSchema, json_message, json_text
from stageflow._stages import StageRegistry, default_registry

__all__ = ["Pipeline", "load_schema", "plain_document", "structure_node"]

# The pattern of a context path in the pipeline schema ($defs.context_path),
# and the most segments it takes: a context nests at most MAX_DEPTH levels.
_PATH_PATTERN = r"^[^.]+(\.[^.]+){0,255}$"
_PATH_SEGMENTS = 256

# Each pipeline's document as plain JSON in marshal's bytes, for Pipeline.to_dict.
_PLAIN_DOCUMENTS: IdentityCache[bytes] = IdentityCache()

_NODE_CLASSES: dict[str, type[Any]] = {
    "stage": StageNode,
    "condition": ConditionNode,
    "parallel": ParallelNode,
    "terminal": TerminalNode,
    "subpipeline": SubpipelineNode,
    "map": MapNode,
}


@functools.cache
def load_schema(name: str = "pipeline") -> Mapping[str, Any]:
    """Return one of the JSON Schemas shipped in the package (``pipeline``, ...)."""
    text = resources.files("stageflow").joinpath("_schemas", f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _schema_validator() -> DocumentSchema:
    return DocumentSchema(load_schema("pipeline"))


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(
        ConditionBranch,
        make_dict_structure_fn(
            ConditionBranch, converter, _cattrs_forbid_extra_keys=True, if_=override(rename="if")
        ),
    )
    converter.register_structure_hook(
        ConditionNode,
        make_dict_structure_fn(
            ConditionNode, converter, _cattrs_forbid_extra_keys=True, else_=override(rename="else")
        ),
    )

    def structure_node(value: Any, _: Any) -> Node:
        node: Node = converter.structure(value, _NODE_CLASSES[value["type"]])
        return node

    converter.register_structure_hook(Node, structure_node)
    return converter


_converter = _make_converter()


def structure_node(raw: Any) -> Node | None:
    """One node of a document as a model, or ``None`` when it cannot be read as one.

    For tools that show an invalid pipeline (``stageflow graph``): the loader
    never builds a pipeline from a document with problems.
    """
    try:
        node: Node = _converter.structure(raw, Node)  # type: ignore[arg-type]
    except (cattrs.BaseValidationError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return node


def _where(doc: Any, path: Iterable[Any]) -> str:
    """Render a jsonschema error path as ``$.nodes[3].next``."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _node_label(graph: Any, index: int) -> str:
    try:
        node_id = graph["nodes"][index]["id"]
    except (KeyError, IndexError, TypeError):
        node_id = None
    if not isinstance(node_id, str):
        return f"node #{index}"
    # An id too long for the schema is cut here: its own problem says how long it is.
    return f"node {shown(node_id)}"


def _subject(doc: Any, path: list[Any]) -> str:
    """Who a problem at ``path`` is about: a node, a subpipeline, or the pipeline.

    A node of a subpipeline (``$.subpipelines.page.nodes[2].next``) is named
    as the node, as at the top level; a field of a subpipeline's own
    (``$.subpipelines.page.entry``) names the subpipeline.
    """
    graph, name, at = doc, None, 0
    while at + 1 < len(path) and path[at] == "subpipelines":
        children = graph.get("subpipelines") if isinstance(graph, Mapping) else None
        if not isinstance(children, Mapping) or path[at + 1] not in children:
            break
        name, graph = path[at + 1], children[path[at + 1]]
        at += 2
    if at + 1 < len(path) and path[at] == "nodes" and isinstance(path[at + 1], int):
        return _node_label(graph, path[at + 1])
    return "the pipeline" if name is None else f"subpipeline {shown(str(name))}"


def _document_order(error: jsonschema.ValidationError) -> list[tuple[int, str]]:
    """Sort key: array indexes numerically (nodes[2] before nodes[10]), keys by name."""
    return [(p, "") if isinstance(p, int) else (-1, str(p)) for p in error.absolute_path]


def schema_error_message(error: jsonschema.ValidationError, subject: str) -> str:
    """Say what a JSON Schema error means for ``subject`` and how to fix it.

    Shared by every document stageflow validates (pipelines, test cases).
    """
    keyword = error.validator
    if keyword == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = sorted(schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, dict) else {}
        # Keys come from the document: at most 20 of them, each cut short, as
        # every list in a problem (10,000 unknown keys made one 10,000-key message).
        extra = listing(shown(key) for key in set(instance) - set(allowed))
        return (
            f"{subject} has unknown field(s) {extra}; "
            f"remove them or fix the spelling (allowed: {', '.join(allowed)})"
        )
    if keyword == "required":
        return f"{subject}: {json_message(error)}; add it"
    if keyword == "enum":
        options = ", ".join(json.dumps(v) for v in error.validator_value)  # type: ignore[union-attr]
        return f"{subject}: {json.dumps(error.instance)} is not allowed here; use one of {options}"
    if keyword == "pattern" and error.validator_value == _PATH_PATTERN:
        segments = str(error.instance).split(".")
        if len(segments) > _PATH_SEGMENTS and all(segments):
            return (
                f"{subject}: {json_text(error.instance)} has {len(segments)} segments; a context "
                f"path has at most {_PATH_SEGMENTS}, as deep as a context nests (a snapshot could "
                "not hold a value written deeper): flatten it"
            )
        return (
            f"{subject}: {json_text(error.instance)} is not a context path; a path is "
            'dotted keys and list indexes such as "order.items.0.sku": no empty segment, '
            "so no leading, trailing or double dot"
        )
    title = error.schema.get("title") if isinstance(error.schema, Mapping) else None
    if keyword == "pattern" and title in _NAME_RULES:
        return f"{subject}: {json_text(error.instance)} is not {_NAME_RULES[title]}"
    if keyword == "maxLength" and title in _NAME_RULES and isinstance(error.instance, str):
        return (
            f"{subject}: {json_text(error.instance)} is {len(error.instance)} characters long; "
            f"a {str(title).lower()} has at most {error.validator_value} (it names spans, "
            "metrics and log lines): shorten it"
        )
    return f"{subject}: {json_message(error)}"


# What the schema's name patterns ($defs.node_id, $defs.pipeline_name,
# $defs.error_name) allow, by title.
_NAME_RULES: dict[str, str] = {
    "Node id": (
        'a node id; an id is an ASCII letter or "_", then ASCII letters, digits, "_", "." '
        'or "-" (no accented letter, space, "/" or line break)'
    ),
    "Pipeline name": (
        "a pipeline name; a name is text without control characters (no line break, "
        "tab or escape sequence)"
    ),
    "Error name": 'an error name; write the name of an exception class, such as "ValueError"',
}


def _schema_problem(doc: Any, error: jsonschema.ValidationError) -> Problem:
    path = list(error.absolute_path)
    subject = _subject(doc, path)
    if path == ["api_version"] and isinstance(error.instance, int | float):
        text = json_text(error.instance)
        message = (
            f"api_version is the string {json.dumps(API_VERSIONS[-1])}, not the number {text}: "
            f'quote it ("api_version": "{API_VERSIONS[-1]}")'
        )
    elif path == ["api_version"]:
        supported = ", ".join(json.dumps(v) for v in API_VERSIONS)
        message = (
            f"api_version {json_text(error.instance)} is not supported; this stageflow reads "
            f"{supported}. "
            f'Set "api_version": "{API_VERSIONS[-1]}" or upgrade stageflow'
        )
    else:
        message = schema_error_message(error, subject)
    return Problem(_where(doc, path), message)


@attrs.frozen
class Pipeline:
    """A validated pipeline, ready to run in a :class:`~stageflow.Session`.

    Build one with :meth:`from_dict` or :meth:`load`; both validate the whole
    document first and raise :class:`~stageflow.PipelineValidationError`
    listing every problem.

    Attributes:
        api_version: the document version.
        entry: id of the first node.
        nodes: the nodes, in document order.
        metadata: free annotations; ``name`` names the pipeline in spans and logs.
        reducers: context path -> how parallel joins combine writes to it.
        limits: bounds for sessions running this pipeline.
        validate_events: default event validation mode of its sessions.
        document: the source document, read-only.
        digest: sha256 of the canonical JSON of the document.
        subpipelines: the subpipelines declared at this level, by id.
        registry: the stage registry the pipeline was validated against
            (the one given to :meth:`from_dict` / :meth:`load`, else the
            default registry). A :class:`~stageflow.Session` looks its stages
            up there unless it is given another.
    """

    api_version: str
    entry: str
    nodes: tuple[Node, ...]
    metadata: Mapping[str, Any]
    reducers: Mapping[str, Reducer]
    limits: Limits
    validate_events: ValidateEvents
    document: Mapping[str, Any] = attrs.field(repr=False, eq=False)
    digest: str
    subpipelines: Mapping[str, Pipeline] = attrs.field(repr=False, eq=False)
    _index: Mapping[str, Node] = attrs.field(repr=False, eq=False, alias="index")
    # subpipeline node id -> the pipeline it runs (filled in by the loader).
    _targets: dict[str, Pipeline] = attrs.field(repr=False, eq=False, alias="targets")
    registry: StageRegistry = attrs.field(repr=False, eq=False, factory=default_registry)
    # where this (sub)pipeline is in the document: "$" or "$.subpipelines.page"
    _prefix: str = attrs.field(default="$", repr=False, eq=False, alias="prefix")

    @property
    def name(self) -> str:
        """The pipeline's name (``metadata.name``, or ``"pipeline"``)."""
        name = self.metadata.get("name")
        return name if isinstance(name, str) and name else "pipeline"

    def node(self, node_id: str) -> Node:
        """Return the node with id ``node_id`` (``KeyError`` if there is none)."""
        return self._index[node_id]

    @property
    def node_index(self) -> Mapping[str, Node]:
        """Node id -> node, for every node of this graph (read-only; the engine's lookup)."""
        return self._index

    def callee(self, node_id: str) -> Pipeline:
        """The pipeline that the subpipeline node ``node_id`` runs (``KeyError`` if none)."""
        return self._targets[node_id]

    @property
    def document_path(self) -> str:
        """Where this graph is in its document: ``$``, or ``$.subpipelines.page`` style."""
        return self._prefix

    def location(self, node_id: str) -> str:
        """The node's location in the document, ``$.nodes[3]`` style."""
        for i, node in enumerate(self.nodes):
            if node.id == node_id:
                return f"{self._prefix}.nodes[{i}]"
        return self._prefix

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def to_dict(self) -> dict[str, Any]:
        """Return a copy of the source document."""
        # The document is kept frozen (read-only mappings, tuples), which
        # copy_json walks through the Mapping ABC; a snapshot copies it every
        # time ("paused session, as snapshot text" row). marshal copies plain
        # JSON in C: several times faster. Its bytes never leave the process.
        packed = _PLAIN_DOCUMENTS.get(self)
        if packed is None:
            plain = copy_json(self.document)
            try:
                packed = marshal.dumps(plain)
            except ValueError:
                # marshal takes exact built-in types only; a document built in
                # Python may hold str, int or float subclasses (enum members):
                # their JSON form is what a snapshot keeps anyway.
                packed = marshal.dumps(json.loads(json.dumps(plain)))
            _PLAIN_DOCUMENTS.put(self, packed)
        result: dict[str, Any] = marshal.loads(packed)
        return result

    @classmethod
    def from_dict(
        cls,
        document: Mapping[str, Any],
        *,
        registry: StageRegistry | None = None,
        source: str | None = None,
    ) -> Pipeline:
        """Validate and build a pipeline from a parsed JSON document.

        Args:
            document: the pipeline document.
            registry: where stage names are looked up (the default registry
                if not given). The pipeline keeps it as :attr:`registry`, so
                sessions running it need not be given it again.
            source: a file name or label used in error messages.

        Raises:
            PipelineValidationError: with every problem found.
            TypeError: ``registry`` is not a :class:`StageRegistry`.
        """
        if registry is not None and not isinstance(registry, StageRegistry):
            raise TypeError(
                f"Pipeline: registry=... was given {a_python_type(registry)}; pass a "
                "stageflow.StageRegistry (where the pipeline's stage names are looked up), or "
                "leave it out for the default registry"
            )
        if not isinstance(document, Mapping):
            raise PipelineValidationError(
                [
                    Problem(
                        "$",
                        f"a pipeline document is a JSON object, got {a_json_type(document)}; "
                        'start from {"api_version": "1.0", "entry": ..., "nodes": [...]}',
                    )
                ],
                source=source,
            )
        doc, non_json = plain_document(document)
        if non_json is not None:
            raise PipelineValidationError([non_json], source=source)
        too_deep = _nesting_problem(doc)
        if too_deep is not None:
            raise PipelineValidationError([too_deep], source=source)
        errors = sorted(_schema_validator().iter_errors(doc), key=_document_order)
        if errors:
            problems = [_schema_problem(doc, e) for e in errors]
            problems += _problems_beside_schema(doc, errors, registry or default_registry())
            raise PipelineValidationError(problems, source=source)
        try:
            return _Loader(doc, registry or default_registry()).load()
        except _Invalid as invalid:
            raise PipelineValidationError(invalid.problems, source=source) from None

    @classmethod
    def load(cls, path: str | PathLike[str], *, registry: StageRegistry | None = None) -> Pipeline:
        """Read a pipeline from a ``.json`` (or ``.yaml`` / ``.yml``) file and validate it.

        Raises:
            PipelineValidationError: the file is not valid JSON/YAML or the
                document has problems.
            OSError: the file cannot be read.
            TypeError: ``path`` is not a path, or ``registry`` is not a
                :class:`StageRegistry`.
        """
        file = file_path("Pipeline.load", path, parsed="Pipeline.from_dict(document)")
        try:
            text = read_text_file(file)
        except UnicodeDecodeError as exc:
            problem = Problem(
                "$",
                f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8",
            )
            raise PipelineValidationError([problem], source=str(file)) from None
        except BudgetError as exc:
            problem = Problem("$", f"not read: {exc}")
            raise PipelineValidationError([problem], source=str(file)) from None
        document = parse_document(text, source=str(file), yaml_=is_yaml_path(file))
        return cls.from_dict(document, registry=registry, source=str(file))


def _invalid_nodes(errors: Iterable[jsonschema.ValidationError]) -> set[tuple[Any, ...]]:
    """Document paths of the nodes with a schema error (``("nodes", 3)``, ...)."""
    bad: set[tuple[Any, ...]] = set()
    for error in errors:
        path = tuple(error.absolute_path)
        for k in range(len(path) - 1):
            # The first ("nodes", i) on the path is a graph's node: inside it,
            # "nodes" may be a key of a config or a result.
            if path[k] == "nodes" and isinstance(path[k + 1], int):
                bad.add(path[: k + 2])
                break
    return bad


def _graph_docs(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """The document and its (nested) subpipelines, with their paths."""
    yield path, doc
    children = doc.get("subpipelines") if isinstance(doc, Mapping) else None
    if isinstance(children, Mapping):
        for name, child in children.items():
            yield from _graph_docs(child, (*path, "subpipelines", name))


def _problems_beside_schema(
    doc: Any, errors: list[jsonschema.ValidationError], registry: StageRegistry
) -> list[Problem]:
    """The graph, stage and config problems of every node whose own shape is valid.

    Reported with the schema problems, so one look shows every problem. A
    graph with invalid nodes gets the checks of single nodes only (edges,
    rules, stages and their config; the invalid nodes' ids count as known);
    the checks of a whole graph (reachability, main path, loops, map
    regions, branch writes) wait until every node is valid, and those of
    subpipeline calls until every node of every graph is.
    """
    bad = _invalid_nodes(errors)
    complete = True  # every graph is an object of valid nodes: the calls can be checked
    structured: dict[str, tuple[Node, ...]] = {}
    # An entry that is no id, or a list of no nodes, the schema reported:
    # the graph checks would only say it again ("entry 'a b' is not a node
    # id; use one of: none").
    reported = {tuple(error.absolute_path) for error in errors}
    problems: list[Problem] = []
    for path, graph in _graph_docs(doc):
        nodes = graph.get("nodes") if isinstance(graph, Mapping) else None
        entry = graph.get("entry") if isinstance(graph, Mapping) else None
        if (
            not isinstance(nodes, list)
            or not nodes
            or not isinstance(entry, str)
            or not isinstance(graph.get("subpipelines", {}), Mapping)
        ):
            complete = False
            continue
        valid: list[Node] = []
        positions: list[int] = []
        others: set[str] = set()
        for i, raw in enumerate(nodes):
            node_id = raw.get("id") if isinstance(raw, Mapping) else None
            try:
                if (*path, "nodes", i) in bad:
                    raise ValueError(i)
                node: Node = _converter.structure(raw, Node)  # type: ignore[arg-type]
            except (cattrs.BaseValidationError, ValueError, KeyError, TypeError):
                if isinstance(node_id, str):
                    others.add(node_id)
                continue
            valid.append(node)
            positions.append(i)
        found = check_graph(
            graph,
            tuple(valid),
            registry,
            positions=tuple(positions),
            other_ids=frozenset(others),
            whole=len(valid) == len(nodes),
            entry_said=(*path, "entry") in reported,
        )
        problems += _reroot(_where(doc, path), found)
        complete = complete and len(valid) == len(nodes)
        structured[_where(doc, path)] = tuple(valid)
    if complete:
        problems += _call_problems(doc, errors, registry, structured)
    return problems


def _call_problems(
    doc: dict[str, Any],
    errors: list[jsonschema.ValidationError],
    registry: StageRegistry,
    nodes: Mapping[str, tuple[Node, ...]],
) -> list[Problem]:
    """The subpipeline calls' problems (undeclared, recursive, too deep), beside the schema's.

    With limits the schema refused, nesting is checked only against what
    stageflow reads at all (which the document passed before the schema).
    """
    limits = None
    if any(error.absolute_path and error.absolute_path[0] == "limits" for error in errors):
        limits = Limits(max_depth=MAX_NESTING)
    try:
        loader = _Loader(doc, registry, limits=limits)
    except _Invalid as invalid:
        return invalid.problems
    loader._collect("$", doc, ())
    loader.nodes = {prefix: nodes[prefix] for prefix in loader.docs if prefix in nodes}
    loader._check_recursion(loader._resolve_calls())
    return loader.problems


def _copy_keeping_shared(value: Any, copies: dict[int, Any]) -> Any:
    """:func:`copy_json`, with each container copied once however often it is met.

    ``copies`` maps the id of each container copied (kept alive by ``value``)
    to its copy. A container is known before its items are copied, so one
    inside itself makes a copy inside itself, which the check then locates.
    """
    if not isinstance(value, Mapping | list | tuple):
        return copy_json(value)
    done = copies.get(id(value))
    if done is not None:
        return done
    if isinstance(value, Mapping):
        mapping: dict[Any, Any] = {}
        copies[id(value)] = mapping
        for key, item in value.items():
            mapping[key] = _copy_keeping_shared(item, copies)
        return mapping
    items: list[Any] = []
    copies[id(value)] = items
    items.extend(_copy_keeping_shared(item, copies) for item in value)
    return items


def plain_document(document: Any) -> tuple[Any, Problem | None]:
    """Copy ``document`` as plain JSON, or find the first value JSON cannot carry.

    Returns the copy and ``None``, or a problem for a YAML date, a set, NaN, ...
    Pipelines, case files and the command line's JSON and YAML values are
    checked with it.
    """
    if find_non_json(document, "$", max_chars=MAX_DOCUMENT_BYTES) is None:
        return copy_json(document), None  # plain JSON already: the common case
    try:
        # Mappings and tuples (a frozen document) become dicts and lists; the check
        # below reports whatever else is not JSON. The first copy keeps a list or
        # object met several times shared, so that a value huge only as a tree
        # (``x = [x, x]`` forty levels deep) is refused by the check's count
        # instead of being copied forever; an accepted one is then copied as a
        # tree, as the rest of the loader expects.
        shared = _copy_keeping_shared(document, {})
    except RecursionError:
        return None, Problem(
            "$", f"the document nests more than {MAX_DEPTH} levels deep; flatten it"
        )
    bad = find_non_json(shared, "$", max_chars=MAX_DOCUMENT_BYTES)
    if bad is None:
        return copy_json(shared), None
    plain = shared
    value = bad.value
    if bad.reason == too_much_text(MAX_DOCUMENT_BYTES):
        return plain, Problem(
            bad.location,
            f"the document {bad.reason.removeprefix('it ')} by this value, the most a document "
            "may hold; keep long text out of the document, or repeat it less",
        )
    hint = "use a string, number, boolean, null, object or array"
    if isinstance(value, datetime.date | datetime.time):
        hint = "YAML reads unquoted dates and times as such: quote it to make it a string"
    elif bad.reason == "object keys must be strings":
        hint = "quote the key (YAML reads unquoted numbers and booleans as such)"
    elif isinstance(value, dict | list):
        hint = "flatten it"
    elif isinstance(value, int) and int_too_large(value):
        hint = "write such a number as a string"
    elif isinstance(value, float):
        hint = "use a finite number (JSON has no NaN or infinity; 1e999 reads as infinity)"
    return plain, Problem(
        bad.location,
        f"{type(value).__name__} {_short(value)} is not JSON ({bad.reason}); {hint}",
    )


def _nesting_problem(doc: Mapping[str, Any]) -> Problem | None:
    """A problem when subpipelines nest deeper than stageflow reads (:data:`MAX_NESTING`).

    Checked before the schema, whose validator recurses once per level.
    """
    todo: list[tuple[str, Any, int]] = [("$", doc, 0)]
    while todo:
        where, graph, level = todo.pop()
        children = graph.get("subpipelines") if isinstance(graph, dict) else None
        if not isinstance(children, dict):
            continue
        if level >= MAX_NESTING:
            return Problem(
                f"{where}.subpipelines",
                f"subpipelines nest more than {MAX_NESTING} levels deep, the most stageflow "
                "reads; flatten them (declare subpipelines side by side at the top level)",
            )
        todo.extend((f"{where}.subpipelines.{k}", v, level + 1) for k, v in children.items())
    return None


def _short(value: object) -> str:
    # repr() of a huge integer, or of anything holding one or nested deeply, fails.
    if isinstance(value, int) and int_too_large(value):
        return f"of {value.bit_length()} bits"
    if isinstance(value, dict | list | tuple | set | frozenset):
        return f"of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def file_path(call: str, path: object, *, parsed: str | None = None) -> Path:
    """``path`` as a :class:`Path`, or a ``TypeError`` naming ``call`` and what to pass.

    ``parsed``: what to call instead with a parsed document (a mapping given as the path).
    """
    if not isinstance(path, str | PathLike):
        raise TypeError(
            f"{call}(path=...) was given {a_python_type(path)}; pass the path of a "
            ".json, .yaml or .yml file (a str or a pathlib.Path)"
            + (
                f", or use {parsed} for a parsed document"
                if parsed and isinstance(path, Mapping)
                else ""
            )
        )
    return Path(path)


def parse_document(
    text: str,
    *,
    source: str,
    yaml_: bool = False,
    error: Callable[..., DefinitionError] = PipelineValidationError,
) -> Any:
    """Parse JSON (or YAML) text, turning syntax errors into a located problem.

    ``error`` is the exception type raised, built as ``error([problem], source=source)``.
    The text is parsed within the budgets of :mod:`stageflow._guard` (size, depth,
    integer digits, YAML aliases): a text over one is a located problem too.
    """
    if not text.strip():  # JSON said "Expecting value", YAML read it as null
        raise error([Problem("$", "the file is empty; write the document in it")], source=source)
    try:
        if yaml_:
            return parse_yaml_text(text)
        return parse_json_text(text)
    except DuplicateKeyError as exc:
        problem = Problem(
            exc.location,
            f"the key {exc.key!r} appears more than once in this object (JSON keeps only the "
            "last, so the others would be ignored); keep one of them",
        )
    except BudgetError as exc:
        problem = Problem("$", f"not read: {exc}")
    except json.JSONDecodeError as exc:
        problem = Problem(
            "$",
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the syntax",
        )
    except yaml.YAMLError as exc:
        problem = Problem("$", f"{yaml_problem(exc)}; fix the syntax")
    raise error([problem], source=source)


# Model attributes whose document key is a Python keyword.
_DOCUMENT_KEYS: dict[str, str] = {"if_": "if", "else_": "else"}


def _structure_problems(exc: BaseException, where: str) -> list[Problem]:
    """Each value cattrs could not structure, located under ``where`` (``$.nodes[3]``).

    The schema refuses what the model cannot hold, so this is a safety net: a
    gap between them is a located problem, not a crash or a message at ``$``.
    """
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        problems: list[Problem] = []
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, cattrs.AttributeValidationNote):
                inner = f"{where}.{_DOCUMENT_KEYS.get(note.name, note.name)}"
            else:
                inner = f"{where}[{note.index}]"
            problems += _structure_problems(sub, inner)
        for sub in without:
            problems += _structure_problems(sub, where)
        return problems
    if isinstance(exc, KeyError):
        return [Problem(where, "this field is required; add it")]
    fix = "write a smaller number" if isinstance(exc, OverflowError) else "fix the value"
    return [Problem(where, f"cannot read this value: {exc}; {fix}")]


# Subpipelines a recursion message names at each end of its chain.
_CHAIN_SHOWN = 5


class _Invalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems


def _reroot(prefix: str, problems: Iterable[Problem]) -> list[Problem]:
    return [Problem(prefix + p.location[1:], p.message) for p in problems]


def _digest(doc: Any) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Loader:
    """Structure and check a document and its subpipelines, then wire them together."""

    def __init__(
        self, doc: dict[str, Any], registry: StageRegistry, *, limits: Limits | None = None
    ) -> None:
        """``limits``: instead of the document's (when the schema refused those)."""
        self.doc = doc
        self.registry = registry
        self.problems: list[Problem] = []
        if limits is not None:
            self.limits = limits
        else:
            try:
                self.limits = _converter.structure(doc.get("limits", {}), Limits)
            except cattrs.BaseValidationError as exc:
                # What the schema lets through and Limits refuses (a duration
                # past the largest float): each refusal names its limit.
                raise _Invalid(_structure_problems(exc, "$.limits")) from None
        # graph location ("$", "$.subpipelines.page", ...) -> its pieces
        self.docs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, tuple[Node, ...]] = {}
        self.scopes: dict[str, tuple[str, ...]] = {}  # visible subpipeline containers

    def load(self) -> Pipeline:
        self._collect("$", self.doc, ())
        if self.problems:
            raise _Invalid(self.problems)
        for prefix, graph_doc in self.docs.items():
            structured: list[Node] = []
            for i, raw in enumerate(graph_doc["nodes"]):
                try:
                    structured.append(_converter.structure(raw, Node))  # type: ignore[arg-type]
                except (cattrs.BaseValidationError, ValueError, KeyError, TypeError) as exc:
                    # The schema should have caught this; report it instead of crashing.
                    self.problems += _structure_problems(exc, f"{prefix}.nodes[{i}]")
            if len(structured) < len(graph_doc["nodes"]):
                continue
            nodes = tuple(structured)
            self.nodes[prefix] = nodes
            self.problems += _reroot(prefix, check_graph(graph_doc, nodes, self.registry))
        if self.problems:
            raise _Invalid(self.problems)
        calls = self._resolve_calls()
        self._check_recursion(calls)
        if self.problems:
            raise _Invalid(self.problems)
        built = {prefix: self._pipeline(prefix) for prefix in self.docs}
        for prefix, targets in calls.items():
            for node_id, (target, _) in targets.items():
                built[prefix]._targets[node_id] = built[target]
        for prefix, pipeline in built.items():
            for name in self.docs[prefix].get("subpipelines", {}):
                pipeline.subpipelines[name] = built[f"{prefix}.subpipelines.{name}"]  # type: ignore[index]
        return built["$"]

    def _collect(self, prefix: str, graph_doc: dict[str, Any], outer: tuple[str, ...]) -> None:
        scope = (prefix, *outer) if graph_doc.get("subpipelines") else outer
        if prefix in self.docs:
            # An id with dots can spell another declaration's location: "a.subpipelines.b"
            # at the top and "b" inside "a". One would silently stand for the other.
            self.problems.append(
                Problem(
                    prefix,
                    "two subpipelines are declared at this location: an id with dots "
                    "('a.subpipelines.b') spells the location of one declared inside "
                    "another ('b' inside 'a'); rename one of them",
                )
            )
            return
        self.docs[prefix] = graph_doc
        self.scopes[prefix] = scope
        for name, child in graph_doc.get("subpipelines", {}).items():
            self._collect(f"{prefix}.subpipelines.{name}", child, scope)

    def _resolve_calls(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Graph -> {subpipeline node id: (target graph, node location)}."""
        calls: dict[str, dict[str, tuple[str, str]]] = {}
        returned: dict[str, set[str]] = {}  # subpipeline -> the artifacts its terminals return
        for prefix, nodes in self.nodes.items():
            calls[prefix] = {}
            for i, node in enumerate(nodes):
                if not isinstance(node, SubpipelineNode):
                    continue
                location = f"{prefix}.nodes[{i}]"
                target = next(
                    (
                        f"{container}.subpipelines.{node.pipeline}"
                        for container in self.scopes[prefix]
                        if node.pipeline in self.docs[container].get("subpipelines", {})
                    ),
                    None,
                )
                if target is None:
                    visible = {
                        name
                        for container in self.scopes[prefix]
                        for name in self.docs[container].get("subpipelines", {})
                    }
                    self.problems.append(
                        Problem(
                            f"{location}.pipeline",
                            f"subpipeline node {node.id!r} runs {node.pipeline!r}, which is not "
                            f"declared (declared: {listing(visible)}); declare it "
                            'under "subpipelines" or fix the id',
                        )
                    )
                    continue
                calls[prefix][node.id] = (target, location)
                if target not in returned:  # once per subpipeline, not per call
                    returned[target] = self._terminal_artifacts(target)
                yield_artifacts = returned[target]
                for artifact in node.artifacts:
                    if artifact not in yield_artifacts:
                        self.problems.append(
                            Problem(
                                f"{location}.artifacts.{artifact}",
                                f"subpipeline node {node.id!r}: no terminal of {node.pipeline!r} "
                                f"returns artifact {artifact!r} (they return: "
                                f"{listing(yield_artifacts)}); fix the path",
                            )
                        )
        return calls

    def _terminal_artifacts(self, prefix: str) -> set[str]:
        return {
            path
            for node in self.nodes.get(prefix, ())
            if isinstance(node, TerminalNode)
            for path in node.artifacts
        }

    def _check_recursion(self, calls: Mapping[str, Mapping[str, tuple[str, str]]]) -> None:
        # A walk of the call graph with its own stack, not Python's: a chain of
        # thousands of subpipelines, each calling the next, is refused for its
        # depth, not with a RecursionError. ``depth``: the deepest call chain
        # below each subpipeline walked.
        depth: dict[str, int] = {}
        path = ["$"]  # the chain being walked, and the same as a set
        on_path = {"$"}
        walking = [("$", iter(calls.get("$", {}).items()), 0)]
        while walking:
            prefix, children, deepest = walking[-1]
            for node_id, (target, location) in children:
                if target in on_path:
                    names = [p.rsplit(".", 1)[-1] for p in (*path[1:], target)]
                    if len(names) > 2 * _CHAIN_SHOWN:  # one cycle per call: keep each message short
                        names[_CHAIN_SHOWN:-_CHAIN_SHOWN] = ["..."]
                    chain = " -> ".join(names)
                    self.problems.append(
                        Problem(
                            f"{location}.pipeline",
                            f"subpipeline node {node_id!r} makes the subpipelines recursive "
                            f"({chain}); recursion is not supported, use a loop or a map",
                        )
                    )
                elif target in depth:
                    deepest = max(deepest, 1 + depth[target])
                else:
                    walking[-1] = (prefix, children, deepest)
                    walking.append((target, iter(calls.get(target, {}).items()), 0))
                    path.append(target)
                    on_path.add(target)
                    break
            else:
                walking.pop()
                path.pop()
                on_path.discard(prefix)
                depth[prefix] = deepest
                if walking:
                    above, rest, most = walking[-1]
                    walking[-1] = (above, rest, max(most, 1 + deepest))

        nesting = depth["$"]
        if nesting > self.limits.max_depth and not self.problems:
            self.problems.append(
                Problem(
                    "$.subpipelines",
                    f"subpipelines nest {nesting} levels deep, over limits.max_depth="
                    f"{self.limits.max_depth}; flatten them or raise the limit",
                )
            )

    def _pipeline(self, prefix: str) -> Pipeline:
        graph_doc = self.docs[prefix]
        nodes = self.nodes[prefix]
        return Pipeline(
            api_version=self.doc["api_version"],
            entry=graph_doc["entry"],
            nodes=nodes,
            metadata=freeze(graph_doc.get("metadata", {})),
            reducers=MappingProxyType(
                {path: Reducer(r) for path, r in graph_doc.get("reducers", {}).items()}
            ),
            limits=self.limits,
            validate_events=ValidateEvents(self.doc.get("validate_events", "warn")),
            document=freeze(graph_doc),
            digest=_digest(graph_doc),
            subpipelines={},
            index={node.id: node for node in nodes},
            targets={},
            registry=self.registry,
            prefix=prefix,
        )
