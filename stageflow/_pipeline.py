"""Loading a pipeline document: JSON Schema, then structure, then graph checks.

All three steps run before anything executes and collect every problem they
find into one :class:`~stageflow.PipelineValidationError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import attrs
import cattrs
import jsonschema
import yaml
from cattrs.gen import make_dict_structure_fn, override

from stageflow._errors import PipelineValidationError, Problem
from stageflow._json import copy_json, freeze
from stageflow._model import (
    API_VERSIONS,
    ConditionBranch,
    ConditionNode,
    Limits,
    MergeStrategy,
    Node,
    ParallelNode,
    Reducer,
    StageNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._specs import compile_schema
from stageflow._stages import StageRegistry, default_registry

__all__ = ["Pipeline", "load_schema"]

_NODE_CLASSES: dict[str, type[Any]] = {
    "stage": StageNode,
    "condition": ConditionNode,
    "parallel": ParallelNode,
    "terminal": TerminalNode,
}


@functools.cache
def load_schema(name: str = "pipeline") -> Mapping[str, Any]:
    """Return one of the JSON Schemas shipped in the package (``pipeline``, ...)."""
    text = resources.files("stageflow").joinpath("_schemas", f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _schema_validator() -> jsonschema.protocols.Validator:
    return compile_schema(load_schema("pipeline"))


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


def _where(doc: Any, path: Iterable[Any]) -> str:
    """Render a jsonschema error path as ``$.nodes[3].next``."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _node_label(doc: Any, index: int) -> str:
    try:
        node_id = doc["nodes"][index]["id"]
    except (KeyError, IndexError, TypeError):
        node_id = None
    return f"node {node_id!r}" if isinstance(node_id, str) else f"node #{index}"


def _schema_problem(doc: Any, error: jsonschema.ValidationError) -> Problem:
    path = list(error.absolute_path)
    location = _where(doc, path)
    subject = "the pipeline"
    if len(path) >= 2 and path[0] == "nodes" and isinstance(path[1], int):
        subject = _node_label(doc, path[1])
    keyword = error.validator
    if path == ["api_version"]:
        supported = ", ".join(repr(v) for v in API_VERSIONS)
        message = (
            f"api_version {error.instance!r} is not supported; this stageflow reads {supported}. "
            f'Set "api_version": "{API_VERSIONS[-1]}" or upgrade stageflow'
        )
    elif keyword == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = sorted(schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        )
        message = (
            f"{subject} has unknown field(s) {', '.join(repr(e) for e in extra)}; "
            f"remove them or fix the spelling (allowed: {', '.join(allowed)})"
        )
    elif keyword == "required":
        message = f"{subject}: {error.message}; add it"
    elif keyword == "enum":
        options = ", ".join(json.dumps(v) for v in error.validator_value)  # type: ignore[union-attr]
        message = (
            f"{subject}: {json.dumps(error.instance)} is not allowed here; use one of {options}"
        )
    elif keyword == "type":
        message = (
            f"{subject}: expected {error.validator_value}, got {type(error.instance).__name__} "
            f"{json.dumps(error.instance, default=str)[:60]}"
        )
    else:
        message = f"{subject}: {error.message}"
    return Problem(location, message)


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
    _index: Mapping[str, Node] = attrs.field(repr=False, eq=False, alias="index")

    @property
    def name(self) -> str:
        """The pipeline's name (``metadata.name``, or ``"pipeline"``)."""
        name = self.metadata.get("name")
        return name if isinstance(name, str) and name else "pipeline"

    def node(self, node_id: str) -> Node:
        """Return the node with id ``node_id`` (``KeyError`` if there is none)."""
        return self._index[node_id]

    def location(self, node_id: str) -> str:
        """The node's location in the document, ``$.nodes[3]`` style."""
        for i, node in enumerate(self.nodes):
            if node.id == node_id:
                return f"$.nodes[{i}]"
        return "$"

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def to_dict(self) -> dict[str, Any]:
        """Return a copy of the source document."""
        result: dict[str, Any] = copy_json(self.document)
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
                if not given).
            source: a file name or label used in error messages.

        Raises:
            PipelineValidationError: with every problem found.
        """
        if not isinstance(document, Mapping):
            raise PipelineValidationError(
                [
                    Problem(
                        "$",
                        f"a pipeline document is a JSON object, got {type(document).__name__}; "
                        'start from {"api_version": "1.0", "entry": ..., "nodes": [...]}',
                    )
                ],
                source=source,
            )
        doc = copy_json(document)
        errors = sorted(
            _schema_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]
        )
        if errors:
            raise PipelineValidationError([_schema_problem(doc, e) for e in errors], source=source)
        try:
            nodes: tuple[Node, ...] = tuple(
                _converter.structure(n, Node)  # type: ignore[arg-type]
                for n in doc["nodes"]
            )
            limits = _converter.structure(doc.get("limits", {}), Limits)
            reducers = {path: Reducer(r) for path, r in doc.get("reducers", {}).items()}
        except (cattrs.BaseValidationError, ValueError, KeyError) as exc:
            # The schema should have caught this; report it instead of crashing.
            problems = [Problem("$", f"cannot read the document: {m}") for m in _flatten(exc)]
            raise PipelineValidationError(problems, source=source) from exc
        problems = list(_check_graph(doc, nodes, registry or default_registry()))
        if problems:
            raise PipelineValidationError(problems, source=source)
        index = {node.id: node for node in nodes}
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return cls(
            api_version=doc["api_version"],
            entry=doc["entry"],
            nodes=nodes,
            metadata=freeze(doc.get("metadata", {})),
            reducers=reducers,
            limits=limits,
            validate_events=ValidateEvents(doc.get("validate_events", "warn")),
            document=freeze(doc),
            digest=hashlib.sha256(canonical.encode()).hexdigest(),
            index=index,
        )

    @classmethod
    def load(cls, path: str | PathLike[str], *, registry: StageRegistry | None = None) -> Pipeline:
        """Read a pipeline from a ``.json`` (or ``.yaml`` / ``.yml``) file and validate it.

        Raises:
            PipelineValidationError: the file is not valid JSON/YAML or the
                document has problems.
            OSError: the file cannot be read.
        """
        file = Path(path)
        text = file.read_text(encoding="utf-8")
        document = parse_document(text, source=str(file), yaml_=file.suffix in (".yaml", ".yml"))
        return cls.from_dict(document, registry=registry, source=str(file))


def parse_document(text: str, *, source: str, yaml_: bool = False) -> Any:
    """Parse JSON (or YAML) text, turning syntax errors into a located problem."""
    try:
        if yaml_:
            return yaml.safe_load(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = Problem(
            "$",
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the syntax",
        )
    except yaml.YAMLError as exc:
        problem = Problem("$", f"not valid YAML: {exc}; fix the syntax")
    raise PipelineValidationError([problem], source=source)


def _flatten(exc: BaseException) -> Iterator[str]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _flatten(sub)
    else:
        yield str(exc)


def continuation_edges(node: Node) -> tuple[str, ...]:
    """Ids a node can hand control to on its own path (not parallel children)."""
    if isinstance(node, StageNode | ParallelNode):
        handlers = tuple(h.next for h in node.error_handlers)
        return ((node.next,) if node.next else ()) + handlers
    if isinstance(node, ConditionNode):
        targets = [c.then for c in node.conditions]
        if node.else_:
            targets.append(node.else_)
        return tuple(targets)
    return ()


def all_edges(node: Node) -> tuple[str, ...]:
    """Every id a node refers to, parallel children included."""
    if isinstance(node, ParallelNode):
        return node.children + continuation_edges(node)
    return continuation_edges(node)


def _walk(
    start: Iterable[str], index: Mapping[str, Node], edges: Any, stop: str | None
) -> set[str]:
    seen: set[str] = set()
    todo = [s for s in start if s in index and s != stop]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        todo.extend(t for t in edges(index[node_id]) if t in index and t != stop and t not in seen)
    return seen


def _check_graph(
    doc: Mapping[str, Any], nodes: tuple[Node, ...], registry: StageRegistry
) -> Iterator[Problem]:
    where: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.id in where:
            yield Problem(
                f"$.nodes[{i}].id",
                f"node id {node.id!r} is used twice (first at $.nodes[{where[node.id]}]); "
                "give each node a unique id",
            )
        else:
            where[node.id] = i
    index = {node.id: node for node in reversed(nodes)}
    known = ", ".join(sorted(index)) or "none"

    if doc["entry"] not in index:
        yield Problem("$.entry", f"entry {doc['entry']!r} is not a node id; use one of: {known}")

    for i, node in enumerate(nodes):
        yield from _check_edges(i, node, index, known)
        if isinstance(node, StageNode):
            yield from _check_stage(i, node, registry)
        if isinstance(node, ParallelNode):
            for child in node.children:
                if child in (node.id, node.next):
                    yield Problem(
                        f"$.nodes[{i}].children",
                        f"parallel node {node.id!r} lists {child!r} as a branch, but it is the "
                        "node itself or its join ('next'); branches must start elsewhere",
                    )

    reachable = _walk([doc["entry"]], index, all_edges, None)
    for i, node in enumerate(nodes):
        if node.id not in reachable and where.get(node.id) == i and doc["entry"] in index:
            yield Problem(
                f"$.nodes[{i}]",
                f"node {node.id!r} is unreachable from the entry {doc['entry']!r}; "
                "connect it with 'next', a condition or a parallel branch, or remove it",
            )

    main_path = _walk([doc["entry"]], index, continuation_edges, None)
    for node_id in sorted(main_path, key=lambda n: where.get(n, 0)):
        node = index[node_id]
        if isinstance(node, StageNode | ParallelNode) and node.next is None:
            yield Problem(
                f"$.nodes[{where[node_id]}].next",
                f"{node.type} node {node_id!r} is on the main path but has no 'next'; "
                "add 'next' pointing at the node to run after it (a terminal node to finish)",
            )

    yield from _check_branch_writes(doc, nodes, index, where)


def _check_edges(i: int, node: Node, index: Mapping[str, Node], known: str) -> Iterator[Problem]:
    refs: list[tuple[str, str]] = []
    if isinstance(node, StageNode | ParallelNode) and node.next is not None:
        refs.append((f"$.nodes[{i}].next", node.next))
    if isinstance(node, ConditionNode):
        refs.extend(
            (f"$.nodes[{i}].conditions[{j}].then", c.then) for j, c in enumerate(node.conditions)
        )
        if node.else_ is not None:
            refs.append((f"$.nodes[{i}].else", node.else_))
    if isinstance(node, ParallelNode):
        refs.extend((f"$.nodes[{i}].children[{j}]", c) for j, c in enumerate(node.children))
    if isinstance(node, StageNode | ParallelNode):
        refs.extend(
            (f"$.nodes[{i}].on_error[{j}].next", h.next) for j, h in enumerate(node.on_error)
        )
        if node.fallback is not None:
            refs.append((f"$.nodes[{i}].fallback", node.fallback))
    for location, target in refs:
        if target not in index:
            yield Problem(
                location,
                f"{node.type} node {node.id!r} points at {target!r}, which is not a node; "
                f"use one of: {known}",
            )


def _check_stage(i: int, node: StageNode, registry: StageRegistry) -> Iterator[Problem]:
    if node.stage not in registry:
        names = ", ".join(registry.names()) or "none are registered"
        yield Problem(
            f"$.nodes[{i}].stage",
            f"stage node {node.id!r} uses stage {node.stage!r}, which is not registered "
            f"(known: {names}); register it or fix the name",
        )
        return
    spec = registry.get(node.stage).spec
    if spec.arguments is not None:
        required = spec.arguments.get("required", ())
        for name in required:
            if name not in node.arguments:
                yield Problem(
                    f"$.nodes[{i}].arguments",
                    f"stage node {node.id!r}: stage {node.stage!r} requires argument {name!r}; "
                    f'map it to a context path ("arguments": {{"{name}": "<path>"}})',
                )
        properties = spec.arguments.get("properties", {})
        if spec.arguments.get("additionalProperties") is False:
            for name in node.arguments:
                if name not in properties:
                    yield Problem(
                        f"$.nodes[{i}].arguments.{name}",
                        f"stage node {node.id!r}: stage {node.stage!r} takes no argument "
                        f"{name!r} (it takes: {', '.join(sorted(properties)) or 'none'})",
                    )
    if spec.outputs is not None:
        properties = spec.outputs.get("properties", {})
        for key in node.outputs:
            if key not in properties:
                yield Problem(
                    f"$.nodes[{i}].outputs.{key}",
                    f"stage node {node.id!r}: stage {node.stage!r} returns no {key!r} "
                    f"(it returns: {', '.join(sorted(properties)) or 'nothing'}); fix the key",
                )
    if spec.config is not None:
        for error in compile_schema(spec.config).iter_errors(copy_json(node.config)):
            location = _where(None, ["nodes", i, "config", *error.absolute_path])
            yield Problem(
                location,
                f"stage node {node.id!r}: config for stage {node.stage!r} is not valid: "
                f"{error.message}",
            )


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _check_branch_writes(
    doc: Mapping[str, Any],
    nodes: tuple[Node, ...],
    index: Mapping[str, Node],
    where: Mapping[str, int],
) -> Iterator[Problem]:
    reducers: Mapping[str, str] = doc.get("reducers", {})
    for node in nodes:
        if not isinstance(node, ParallelNode) or node.merge is not MergeStrategy.ERROR:
            continue
        writes: list[tuple[str, set[str]]] = []
        for child in node.children:
            region = _walk([child], index, all_edges, node.next)
            paths = {
                path
                for member in region
                if isinstance(index[member], StageNode)
                for path in index[member].outputs.values()  # type: ignore[union-attr]
            }
            writes.append((child, paths))
        reported: set[str] = set()
        for a in range(len(writes)):
            for b in range(a + 1, len(writes)):
                for path_a in sorted(writes[a][1]):
                    for path_b in sorted(writes[b][1]):
                        shared = path_a if len(path_a) <= len(path_b) else path_b
                        if not _overlaps(path_a, path_b) or shared in reported:
                            continue
                        if path_a == path_b and path_a in reducers:
                            continue
                        reported.add(shared)
                        yield Problem(
                            f"$.nodes[{where[node.id]}].children",
                            f"parallel node {node.id!r}: branches {writes[a][0]!r} and "
                            f"{writes[b][0]!r} can both write {shared!r}; declare a reducer "
                            f'("reducers": {{"{shared}": "append"}}), set "merge": "first" or '
                            '"last" on the node, or write to different paths',
                        )
