"""Graph checks: everything about a pipeline's nodes and edges that JSON Schema cannot see.

Each check yields :class:`~stageflow.Problem` objects with locations relative
to the graph (``$.nodes[3].next``); the loader re-roots them for subpipelines
(``$.subpipelines.page.nodes[3].next``).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final

import attrs
import jsonschema

from stageflow import jsonlogic
from stageflow._errors import Problem, shown_scalar
from stageflow._guard import MAX_NESTING
from stageflow._json import thaw
from stageflow._model import (
    ConditionNode,
    MapNode,
    MergeStrategy,
    Node,
    ParallelNode,
    StageNode,
    SubpipelineNode,
    TerminalNode,
)
from stageflow._specs import (
    ARGUMENT_FORMAT,
    JSONLOGIC_FORMAT,
    TEMPLATE_FORMAT,
    TIME_FORMAT,
    compile_schema,
    json_message,
    schema_problem,
    time_with_offset,
)
from stageflow._stages import StageRegistry
from stageflow._templates import MalformedTemplateError, parse_template

__all__ = [
    "Edge",
    "EdgeKind",
    "all_edges",
    "check_graph",
    "continuation_edges",
    "edges",
    "node_writes",
    "walk",
]

_WITH_NEXT = (StageNode, ParallelNode, SubpipelineNode, MapNode)


class EdgeKind(enum.StrEnum):
    """What kind of edge leads from one node to another."""

    NEXT = "next"
    """The ``next`` of a stage, subpipeline or map node (for a map: once every item is done)."""
    THEN = "then"
    """A condition node's ``conditions[index].then``."""
    ELSE = "else"
    """A condition node's ``else``."""
    BRANCH = "branch"
    """A parallel node's ``children[index]``: the start of a branch."""
    JOIN = "join"
    """A parallel node's ``next``: taken when the branches have joined."""
    BODY = "body"
    """A map node's ``body``: the start of each item's run."""
    ON_ERROR = "on_error"
    """An error edge, ``on_error[index].next``, of any node that has them."""
    FALLBACK = "fallback"
    """The catch-all error edge, ``fallback``, of any node that has one."""


# Edge kinds that start a new path (a branch, an item) instead of continuing this one.
_OPENING = frozenset({EdgeKind.BRANCH, EdgeKind.BODY})

# Most names a message lists: a problem repeated for each of thousands of
# nodes must not list thousands of ids each (text quadratic in the document).
_LISTED: Final = 20
# Id comparisons the "did you mean" hints of one graph may spend: difflib
# compares a missing id with every id, so thousands of dangling edges among
# thousands of nodes took minutes. Past it, edges get no hint.
_GUESS_BUDGET: Final = 200_000
# Longer missing ids get no hint (difflib's full comparison is quadratic in length).
_GUESS_LENGTH: Final = 100


def listing(names: Iterable[str], empty: str = "none") -> str:
    """``names`` sorted and joined for a message; past :data:`_LISTED` of them, a count."""
    ordered = sorted(names)
    if not ordered:
        return empty
    if len(ordered) <= _LISTED:
        return ", ".join(ordered)
    return f"{', '.join(ordered[:_LISTED])} and {len(ordered) - _LISTED} more"


@attrs.frozen(order=True)
class Edge:
    """One edge of a pipeline graph.

    Attributes:
        source: id of the node the edge leaves.
        kind: what kind of edge it is.
        target: id of the node it leads to.
        index: the condition, child or error edge index, for ``then``,
            ``branch`` and ``on_error`` edges.
    """

    source: str
    kind: EdgeKind
    target: str
    index: int | None = None

    @property
    def field(self) -> str:
        """Where the edge is written in its node (``next``, ``conditions[1].then``, ...)."""
        match self.kind:
            case EdgeKind.NEXT | EdgeKind.JOIN:
                return "next"
            case EdgeKind.THEN:
                return f"conditions[{self.index}].then"
            case EdgeKind.BRANCH:
                return f"children[{self.index}]"
            case EdgeKind.ON_ERROR:
                return f"on_error[{self.index}].next"
            case _:
                return self.kind.value

    def __str__(self) -> str:
        label = self.kind.value if self.index is None else f"{self.kind.value} {self.index}"
        return f"{self.source} -[{label}]-> {self.target}"


def edges(node: Node) -> tuple[Edge, ...]:
    """Every edge leaving ``node``, in document order: the one list of a node's edges.

    The graph checks, ``stageflow graph`` and test coverage all read it.
    """
    out: list[Edge] = []
    if isinstance(node, ConditionNode):
        out.extend(Edge(node.id, EdgeKind.THEN, c.then, i) for i, c in enumerate(node.conditions))
        if node.else_ is not None:
            out.append(Edge(node.id, EdgeKind.ELSE, node.else_))
        return tuple(out)
    if isinstance(node, TerminalNode):
        return ()
    if isinstance(node, ParallelNode):
        out.extend(Edge(node.id, EdgeKind.BRANCH, c, i) for i, c in enumerate(node.children))
    if isinstance(node, MapNode):
        out.append(Edge(node.id, EdgeKind.BODY, node.body))
    if node.next is not None:
        kind = EdgeKind.JOIN if isinstance(node, ParallelNode) else EdgeKind.NEXT
        out.append(Edge(node.id, kind, node.next))
    out.extend(Edge(node.id, EdgeKind.ON_ERROR, h.next, i) for i, h in enumerate(node.on_error))
    if node.fallback is not None:
        out.append(Edge(node.id, EdgeKind.FALLBACK, node.fallback))
    return tuple(out)


def continuation_edges(node: Node) -> tuple[str, ...]:
    """Ids a node can hand control to on its own path (not branch or map body entries)."""
    return tuple(e.target for e in edges(node) if e.kind not in _OPENING)


def region_edges(node: Node) -> tuple[str, ...]:
    """Edges that stay in one context: continuation edges and parallel children."""
    return tuple(e.target for e in edges(node) if e.kind is not EdgeKind.BODY)


def all_edges(node: Node) -> tuple[str, ...]:
    """Every id a node refers to: parallel children and map bodies included."""
    return tuple(e.target for e in edges(node))


def walk(
    start: Iterable[str],
    index: Mapping[str, Node],
    edges: Callable[[Node], tuple[str, ...]],
    stop: str | None = None,
) -> set[str]:
    """Ids reachable from ``start`` through ``edges``, not passing ``stop``."""
    seen: set[str] = set()
    todo = [s for s in start if s in index and s != stop]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        todo.extend(t for t in edges(index[node_id]) if t in index and t != stop and t not in seen)
    return seen


def node_writes(node: Node) -> set[str]:
    """The context paths a node writes in the context it runs in.

    Its error edges' ``error_path`` included: a failure they route writes
    the error's description there.
    """
    if isinstance(node, StageNode):
        written = set(node.outputs.values())
    elif isinstance(node, SubpipelineNode):
        written = set(node.artifacts.values())
        if node.result_output:
            written.add(node.result_output)
    elif isinstance(node, MapNode):
        written = set(node.collect.values())
        if node.failures_path:
            written.add(node.failures_path)
    elif isinstance(node, ParallelNode):
        written = set()
    else:
        return set()
    written.update(handler.error_path for handler in node.error_handlers)
    return written


class _Regions:
    """The regions of one graph and what they write, each worked out once.

    Many maps may share one body and many parallel nodes one branch: walking
    the region again for each made loading quadratic in the graph's size.
    """

    def __init__(self, index: Mapping[str, Node]) -> None:
        self.index = index
        # Each node's edges, once: edges() builds them anew at every call.
        self._all = {node_id: all_edges(node) for node_id, node in index.items()}
        self._inside = {node_id: region_edges(node) for node_id, node in index.items()}
        self._bodies: dict[str, frozenset[str]] = {}
        self._writes: dict[tuple[str, str | None], frozenset[str]] = {}
        self._joined: dict[tuple[str, str | None], frozenset[str]] = {}
        self._inside_of: dict[str, frozenset[str]] = {}
        self._written: dict[str, set[str]] = {}
        self._prefixes: dict[str, set[str]] = {}

    def walk_inside(self, start: Iterable[str]) -> set[str]:
        """:func:`walk` through :func:`region_edges`."""
        return walk(start, self.index, lambda node: self._inside[node.id])

    def body(self, start: str) -> frozenset[str]:
        """Every node a map body starting at ``start`` may run (nested bodies included)."""
        found = self._bodies.get(start)
        if found is None:
            found = frozenset(walk([start], self.index, lambda node: self._all[node.id]))
            self._bodies[start] = found
        return found

    def writes(self, start: str, stop: str | None) -> frozenset[str]:
        """The paths written in the context of the region from ``start``, not passing ``stop``."""
        if stop is not None and stop not in self._region(start, None):
            stop = None  # the same region: parallel nodes sharing a branch share its writes
        key = (start, stop)
        found = self._writes.get(key)
        if found is None:
            found = frozenset(
                path for member in self._region(start, stop) for path in self._node_writes(member)
            )
            self._writes[key] = found
        return found

    def joined_writes(self, start: str, stop: str | None) -> frozenset[str]:
        """:meth:`writes`, less the paths a node only ever writes inside one it writes with them.

        A stage's outputs ``x`` and ``x.y`` are written at once: at a join,
        ``x.y`` is part of the branch's value at ``x``, no other writer (see
        ``_merge._drop_writes_inside_own``). Written by another node too, or
        by an error edge (alone), it stays.
        """
        written = self.writes(start, stop)
        if stop is not None and stop not in self._region(start, None):
            stop = None  # as writes() does
        found = self._joined.get((start, stop))
        if found is not None:
            return found
        alone: set[str] = set()
        for member in self._region(start, stop):
            paths = self._node_writes(member)
            if not paths:  # (a condition or terminal node has no error edges either)
                continue
            node = self.index[member]
            assert isinstance(node, StageNode | SubpipelineNode | MapNode | ParallelNode)
            errors = {handler.error_path for handler in node.error_handlers}
            together = paths - errors
            for path in paths:
                parts = path.split(".")
                if path in errors or not any(
                    ".".join(parts[:cut]) in together for cut in range(1, len(parts))
                ):
                    alone.add(path)
        found = self._joined[start, stop] = frozenset(written & alone)
        return found

    def overlaps_writes(self, start: str, path: str) -> bool:
        """Whether the region from ``start`` writes ``path``, a path inside it or around it.

        :func:`overlaps` against each path written, in the time of ``path``'s segments.
        """
        prefixes = self._prefixes.get(start)
        if prefixes is None:
            prefixes = set()
            for written in self.writes(start, None):
                parts = written.split(".")
                prefixes.update(".".join(parts[:cut]) for cut in range(1, len(parts) + 1))
            self._prefixes[start] = prefixes
        if path in prefixes:  # written there or inside it
            return True
        exact = self.writes(start, None)
        parts = path.split(".")
        return any(".".join(parts[:cut]) in exact for cut in range(1, len(parts)))

    def _region(self, start: str, stop: str | None) -> AbstractSet[str]:
        if stop is not None:
            return walk([start], self.index, lambda node: self._inside[node.id], stop)
        found = self._inside_of.get(start)
        if found is None:
            found = self._inside_of[start] = frozenset(self.walk_inside([start]))
        return found

    def _node_writes(self, node_id: str) -> set[str]:
        found = self._written.get(node_id)
        if found is None:
            found = self._written[node_id] = node_writes(self.index[node_id])
        return found


def overlaps(a: str, b: str) -> bool:
    """Whether one path is the other or inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_graph(
    doc: Mapping[str, Any],
    nodes: tuple[Node, ...],
    registry: StageRegistry,
    *,
    positions: tuple[int, ...] | None = None,
    other_ids: frozenset[str] = frozenset(),
    whole: bool = True,
    entry_said: bool = False,
) -> Iterator[Problem]:
    """Every graph problem of one pipeline or subpipeline (locations rooted at ``$``).

    Args:
        doc: the graph's document (its ``entry`` and ``reducers`` are read).
        nodes: the structured nodes.
        registry: where stage names are looked up.
        positions: each node's index in the document's ``nodes`` (default:
            0, 1, 2, ...), for a graph some of whose nodes could not be read.
        other_ids: ids of nodes left out of ``nodes`` because their own
            shape is invalid; edges to them are not dangling.
        whole: also run the checks of the whole graph (reachability, main
            path, loops, map regions, branch writes), which need every node;
            ``False`` when some nodes were left out.
        entry_said: ``entry`` has a problem of its own already (the schema's:
            it is no id); it is not reported again as a missing node.
    """
    at = positions if positions is not None else tuple(range(len(nodes)))
    where: dict[str, int] = {}
    for i, node in zip(at, nodes, strict=True):
        if node.id in where:
            yield Problem(
                f"$.nodes[{i}].id",
                f"node id {node.id!r} is used twice (first at $.nodes[{where[node.id]}]); "
                "give each node a unique id",
            )
        else:
            where[node.id] = i
    index = {node.id: node for node in reversed(nodes)}
    known = listing({*index, *other_ids})
    entry = doc["entry"]
    if entry not in index and entry not in other_ids and not entry_said:
        yield Problem("$.entry", f"entry {entry!r} is not a node id; use one of: {known}")

    ids = {*index, *other_ids}  # once: per node it made loading quadratic
    meant: dict[str, list[str]] = {}  # node id -> the ids its mistyped edges likely meant
    nearest = _Nearest(ids)
    stages = _UnknownStages(registry)
    for i, node in zip(at, nodes, strict=True):
        for problem, guess in _check_edges(i, node, ids, known, nearest):
            if guess is not None:
                meant.setdefault(node.id, []).append(guess)
            yield problem
        if isinstance(node, ConditionNode):
            for j, branch in enumerate(node.conditions):
                for inner, message in _rule_problems(branch.if_):
                    yield Problem(
                        f"$.nodes[{i}].conditions[{j}].if{inner}",
                        f"condition node {node.id!r}: {message}; fix the rule",
                    )
            yield from _check_self_edges(i, node)
        if isinstance(node, StageNode):
            yield from _check_stage(i, node, registry, stages)
        yield from _check_own_writes(i, node)
        if isinstance(node, ParallelNode):
            for child in node.children:
                if child in (node.id, node.next):
                    yield Problem(
                        f"$.nodes[{i}].children",
                        f"parallel node {node.id!r} lists {child!r} as a branch, but it is the "
                        "node itself or its join ('next'); branches must start elsewhere",
                    )

    if entry not in index or not whole:
        return
    # An edge with a typo in its target leaves what it meant unreachable: read
    # it as the id it likely meant, so only the typo is reported, not what
    # follows from it.
    reachable = walk([entry], index, lambda node: (*all_edges(node), *meant.get(node.id, ())))
    for i, node in zip(at, nodes, strict=True):
        if node.id not in reachable and where.get(node.id) == i:
            yield Problem(
                f"$.nodes[{i}]",
                f"node {node.id!r} is unreachable from the entry {entry!r}; connect it with "
                "'next', a condition, a parallel branch or a map body, or remove it",
            )

    main_path = walk([entry], index, continuation_edges)
    for node_id in sorted(main_path, key=lambda n: where.get(n, 0)):
        node = index[node_id]
        if isinstance(node, _WITH_NEXT) and node.next is None:
            yield Problem(
                f"$.nodes[{where[node_id]}].next",
                f"{node.type} node {node_id!r} is on the main path but has no 'next'; "
                "add 'next' pointing at the node to run after it (a terminal node to finish)",
            )

    yield from _check_exits(nodes, index, where, reachable)
    yield from _check_condition_loops(nodes, index, where)
    deepest, inner = _nesting(entry, index)
    if deepest > MAX_NESTING:
        # It could never run (limits.max_depth is at most MAX_NESTING), and the
        # region checks below walk every region nested in each: time quadratic
        # in such a chain.
        yield Problem(
            f"$.nodes[{where[inner]}]",
            f"map bodies and parallel branches nest {deepest} levels deep here, more than "
            f"any run may nest ({MAX_NESTING}, the largest limits.max_depth); flatten them",
        )
        return
    regions = _Regions(index)
    yield from _check_maps(nodes, regions, where, entry)
    yield from _check_branch_writes(doc, nodes, regions, where)


_Writes = list[tuple[str, str, str]]
"""``(field, what, path)`` of the paths a node writes into one context, in write order."""


def _own_writes(node: Node) -> list[tuple[_Writes, bool]]:
    """The paths a node writes at once, by context; whether none may be inside another.

    A map's paths hold lists (and an item's element and index): none may be
    inside another. Other nodes may write inside a path they wrote before.
    """
    if isinstance(node, StageNode):
        return [([(f"outputs.{k}", f"output {k!r}", p) for k, p in node.outputs.items()], False)]
    if isinstance(node, SubpipelineNode):
        writes = [(f"artifacts.{a}", f"artifact {a!r}", p) for a, p in node.artifacts.items()]
        if node.result_output is not None:
            writes.insert(0, ("result_output", "the result (result_output)", node.result_output))
        # Into the child's context, at the inputs' keys.
        inputs = [(f"inputs.{c}", f"the input from {p!r}", c) for c, p in node.inputs.items()]
        return [(inputs, False), (writes, False)]
    if isinstance(node, MapNode):
        item = [
            ("item_path", "the item (item_path)", node.item_path),
            ("index_path", "the index (index_path)", node.index_path),
        ]
        collected = [(f"collect.{s}", f"the list of {s!r}", p) for s, p in node.collect.items()]
        if node.failures_path is not None:
            collected.append(("failures_path", "the failures (failures_path)", node.failures_path))
        return [(item, True), (collected, True)]
    return []


def _check_own_writes(i: int, node: Node) -> Iterator[Problem]:
    """Paths one node writes at once of which the later would lose a value.

    The same path twice, or a path around one written before it (in a map,
    any path inside another): the later write would replace the earlier one,
    or fail on it; a value lost in silence, or a run that cannot succeed.
    """
    for writes, flat in _own_writes(node):
        seen: dict[str, str] = {}  # path -> what is written there first
        around: dict[str, str] = {}  # a path above one written before -> what that is
        for field, what, path in writes:
            first = seen.setdefault(path, what)
            if first != what:
                yield Problem(
                    f"$.nodes[{i}].{field}",
                    f"{node.type} node {node.id!r} writes {first} and {what} both at "
                    f"{path!r}: the later would replace the other; give each its own path",
                )
            elif not flat and path in around:  # (a map's is reported below)
                yield Problem(
                    f"$.nodes[{i}].{field}",
                    f"{node.type} node {node.id!r} writes {what} at {path!r}, around "
                    f"{around[path]} written inside it before, which it would replace; "
                    "write the outer one first, or give each its own path",
                )
            parts = path.split(".")
            for cut in range(1, len(parts)):
                around.setdefault(".".join(parts[:cut]), what)
        if not flat:
            continue
        for field, what, path in writes:
            parts = path.split(".")
            outer = next(
                (o for cut in range(1, len(parts)) if (o := ".".join(parts[:cut])) in seen), None
            )
            if outer is not None:
                yield Problem(
                    f"$.nodes[{i}].{field}",
                    f"{node.type} node {node.id!r} writes {what} at {path!r}, inside "
                    f"{seen[outer]} at {outer!r}: one would replace the other or fail on "
                    "it; give each a path of its own, neither inside the other",
                )


def _nesting(entry: str, index: Mapping[str, Node]) -> tuple[int, str]:
    """How deep map bodies and parallel branches nest, from ``entry``; the innermost node.

    Each node is counted at the level it is first reached at (a node reached
    at two levels is a region problem of its own), so this is linear.
    """
    level = {entry: 0}
    deepest, inner = 0, entry
    todo = [entry]
    while todo:
        node_id = todo.pop()
        here = level[node_id]
        for edge in edges(index[node_id]):
            target = edge.target
            if target not in index or target in level:
                continue
            level[target] = depth = here + (edge.kind in _NESTING_EDGES)
            if depth > deepest:
                deepest, inner = depth, target
            todo.append(target)
    return deepest, inner


# Edges into a nested context: a map item's run, a parallel branch.
_NESTING_EDGES: Final = frozenset({EdgeKind.BODY, EdgeKind.BRANCH})


def _check_exits(
    nodes: tuple[Node, ...],
    index: Mapping[str, Node],
    where: Mapping[str, int],
    reachable: set[str],
) -> Iterator[Problem]:
    """Nodes from which no path ends: every way on from them loops.

    A path ends at a terminal, or at a node with nowhere to go on (the end of
    a branch or of a map item). Error edges count: a loop that can only be
    left through an error edge (an input timeout routed by ``on_error``) is
    fine, and so is a loop left through a condition on an input.
    """
    # A dangling edge is reported on its own; it is not a loop too.
    ends = {
        node.id
        for node in nodes
        if not continuation_edges(node) or any(t not in index for t in continuation_edges(node))
    }
    # Walk backwards from the ends: whatever reaches one can finish.
    callers: dict[str, set[str]] = {}
    for node in nodes:
        for target in continuation_edges(node):
            callers.setdefault(target, set()).add(node.id)
    can_end = walk(ends, index, lambda n: tuple(callers.get(n.id, ())))
    stuck = sorted(reachable - can_end, key=lambda n: where.get(n, 0))
    if stuck:
        names = listing(repr(n) for n in stuck)
        yield Problem(
            f"$.nodes[{where[stuck[0]]}]",
            f"no path from {names} ever ends: every way on from "
            f"{'it' if len(stuck) == 1 else 'them'} loops back, so a session there runs "
            "until limits.max_steps; give the loop a way out to a terminal node (a "
            "condition's 'else', or an error edge) or to the end of its branch",
        )


class _Nearest:
    """The id a missing one likely meant, within :data:`_GUESS_BUDGET` comparisons."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.budget = _GUESS_BUDGET
        self.found: dict[str, str | None] = {}

    def __call__(self, missing: str) -> str | None:
        if missing in self.found:
            return self.found[missing]
        near = None
        if len(missing) <= _GUESS_LENGTH and len(self.ids) <= self.budget:
            self.budget -= len(self.ids)
            close = difflib.get_close_matches(missing, self.ids, n=1)
            near = close[0] if close else None
        self.found[missing] = near
        return near


def _check_edges(
    i: int, node: Node, ids: set[str], known: str, nearest: Callable[[str], str | None]
) -> Iterator[tuple[Problem, str | None]]:
    """Each edge to a missing node: the problem, and the id it likely meant (or ``None``)."""
    for edge in edges(node):
        if edge.target not in ids:
            near = nearest(edge.target)
            hint = f"did you mean {near!r}? " if near is not None else ""
            problem = Problem(
                f"$.nodes[{i}].{edge.field}",
                f"{node.type} node {node.id!r} points at {edge.target!r}, which is not a node; "
                f"{hint}use one of: {known}",
            )
            yield problem, near


class _UnknownStages:
    """What to say of a stage name the registry does not hold (made once per graph)."""

    def __init__(self, registry: StageRegistry) -> None:
        self.registry = registry
        self._nearest: _Nearest | None = None
        self._known: str | None = None
        self._builtins: bool | None = None

    def problem(self, i: int, node: StageNode) -> Problem:
        if self._nearest is None:
            names = self.registry.names()
            self._nearest = _Nearest(set(names))
            # At most _LISTED names, as every list in a problem: a registry of
            # many stage packs would repeat them all at each unknown name.
            self._known = listing(names, empty="none are registered")
            self._builtins = any(name.startswith("builtins.") for name in names)
        near = self._nearest(node.stage)
        if node.stage.startswith("builtins.") and not self._builtins:
            fix = (
                "it is a built-in stage, which a registry holds only when asked: load the "
                "pipeline with registry=stageflow.builtins.registry() (on the command line, "
                "--stages stageflow.builtins)"
            )
        elif near is not None:
            fix = f"did you mean {near!r}? fix the name or register it"
        else:
            fix = "register it or fix the name"
        return Problem(
            f"$.nodes[{i}].stage",
            f"stage node {node.id!r} uses stage {node.stage!r}, which is not registered "
            f"(known: {self._known}); {fix}",
        )


def _check_stage(
    i: int, node: StageNode, registry: StageRegistry, unknown: _UnknownStages
) -> Iterator[Problem]:
    if node.stage not in registry:
        yield unknown.problem(i, node)
        return
    spec = registry.get(node.stage).spec
    if spec.arguments is not None:
        for name in spec.arguments.get("required", ()):
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
        for error in compile_schema(spec.config).iter_errors(thaw(node.config)):
            if _said_as_a_template(error, spec.config):
                continue  # _check_template_arguments says where and how to fix it
            suffix = "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            )
            hint = error.schema.get("description") if isinstance(error.schema, Mapping) else None
            yield Problem(
                f"$.nodes[{i}].config{suffix}",
                f"stage node {node.id!r}: config for stage {node.stage!r} is not valid: "
                f"{json_message(error)}" + (f" ({hint})" if hint else ""),
            )
        yield from _check_config_rules(i, node, spec.config)
    schema = node.config.get("input_schema")
    if spec.input_from_config is not None and not spec.allowed_inputs and schema is not None:
        # What a session makes of it (the input the node declares, as WaitStage's
        # config says): checked here too, or `stageflow validate` passes what a run refuses.
        problem = schema_problem(thaw(schema))
        if problem is not None:
            suffix, why = problem
            yield Problem(
                f"$.nodes[{i}].config.input_schema{suffix}",
                f"stage node {node.id!r}: config 'input_schema' of stage {node.stage!r} {why}; "
                "fix it, or leave 'input_schema' out to accept any payload",
            )


def _rule_problems(rule: Any) -> list[tuple[str, str]]:
    """What :func:`jsonlogic.check` finds in a rule, and operations written as one object."""
    return [*jsonlogic.check(rule), *jsonlogic.operations_written_as_one_object(rule)]


def _check_self_edges(i: int, node: ConditionNode) -> Iterator[Problem]:
    """A condition's way back to itself: once taken, it is taken again and again.

    Nothing runs between two evaluations of the node, so its rules read the
    same context (a branch's context is its own) and choose the same way,
    until ``limits.max_steps`` ends the session (with ``max_steps`` null, never).
    """
    for edge in edges(node):
        if edge.target == node.id:
            yield Problem(
                f"$.nodes[{i}].{edge.field}",
                f"condition node {node.id!r} leads back to itself: nothing runs in between "
                "to change what its rules read, so once this way is taken it is taken again "
                "and again, until limits.max_steps; point it at the node that should run "
                "next (in a loop, one that changes what the rule reads)",
            )


# Ids a way around a loop of conditions is named by at each end.
_WAY_SHOWN: Final = 5


def _check_condition_loops(
    nodes: Sequence[Node], index: Mapping[str, Node], where: Mapping[str, int]
) -> Iterator[Problem]:
    """Condition nodes that lead around in a loop with nothing else in it.

    As with a condition leading back to itself (:func:`_check_self_edges`),
    nothing runs on the way around to change what the rules read: once the
    way around is taken, it is taken again and again. Each group of
    condition nodes that lead to one another is reported once, at its node
    that comes first in the document, with the shortest way around from
    it; in time linear in the conditions and their edges (a document of
    thousands of such loops must not take minutes to refuse).
    """
    after: dict[str, list[str]] = {}  # condition id -> the conditions it leads to, in order
    for node in nodes:
        if isinstance(node, ConditionNode) and index.get(node.id) is node:
            after[node.id] = [
                edge.target
                for edge in edges(node)
                if edge.target != node.id and isinstance(index.get(edge.target), ConditionNode)
            ]
    firsts = [min(group, key=where.__getitem__) for group in _loops(after) if len(group) > 1]
    for first in sorted(firsts, key=where.__getitem__):
        way = [repr(node_id) for node_id in [*_way_around(first, after), first]]
        if len(way) > 2 * _WAY_SHOWN:  # the ends of a long way: a message of bounded length
            way[_WAY_SHOWN:-_WAY_SHOWN] = ["..."]
        shown = " -> ".join(way)
        yield Problem(
            f"$.nodes[{where[first]}]",
            f"condition nodes lead around in a loop ({shown}): nothing runs on the way "
            "around to change what their rules read, so once it is taken it is taken again "
            "and again, until limits.max_steps; point one of them at a node that should run "
            "next (in a loop, one that changes what the rules read)",
        )


def _loops(after: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The groups of ids of ``after`` that lead to one another (its strongly connected parts).

    Tarjan's walk, with a stack of its own instead of recursion.
    """
    order: dict[str, int] = {}  # id -> when the walk reached it
    low: dict[str, int] = {}  # id -> the earliest id on the stack it leads back to
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in after:
        if root in order:
            continue
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        work = [(root, 0)]  # (id, how many of its edges are followed)
        while work:
            node_id, followed = work[-1]
            targets = after[node_id]
            if followed < len(targets):
                work[-1] = (node_id, followed + 1)
                target = targets[followed]
                if target not in order:
                    order[target] = low[target] = len(order)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, 0))
                elif target in on_stack:
                    low[node_id] = min(low[node_id], order[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node_id])
            if low[node_id] == order[node_id]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node_id:
                        break
                groups.append(group)
    return groups


def _way_around(first: str, after: Mapping[str, Sequence[str]]) -> list[str]:
    """The shortest way from ``first`` back to it along ``after``: its ids, ``first`` first.

    Edges are followed in document order; ``first`` lies on a loop.
    """
    came: dict[str, str] = {}  # id -> the id it was reached from
    reached = [first]
    for node_id in reached:  # grows as it is read: breadth first
        for target in after[node_id]:
            if target == first:
                way = [node_id]
                while way[-1] != first:
                    way.append(came[way[-1]])
                return way[::-1]
            if target not in came:
                came[target] = node_id
                reached.append(target)
    raise AssertionError(f"{first!r} lies on no loop")


def _check_config_rules(i: int, node: StageNode, schema: Mapping[str, Any]) -> Iterator[Problem]:
    """The problems of the JsonLogic rules in a stage node's config, found as a condition's are.

    A config property whose schema says ``"format": "jsonlogic"`` (as
    ``builtins.assert`` and ``builtins.filter`` declare ``rule``) holds a rule
    the stage evaluates: an unknown operator or a wrong argument count is
    reported when the pipeline loads, not when the stage first runs.
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for key, property_schema in properties.items():
        if key not in node.config or not isinstance(property_schema, Mapping):
            continue
        yield from _check_config_arguments(i, node, key, property_schema)
        if property_schema.get("format") != JSONLOGIC_FORMAT:
            continue
        for inner, message in _rule_problems(node.config[key]):
            yield Problem(
                f"$.nodes[{i}].config.{key}{inner}",
                f"stage node {node.id!r}: config {key!r} of stage {node.stage!r} is a "
                f"JsonLogic rule: {message}; fix the rule",
            )


def _check_config_arguments(
    i: int, node: StageNode, key: str, schema: Mapping[str, Any]
) -> Iterator[Problem]:
    """Names in a stage node's config that must be among its arguments and are not.

    A config string whose schema says ``"format": "argument"`` (as the items of
    ``builtins.concat``'s ``order`` do) names an argument the stage reads, and
    one that says ``"format": "template"`` (``builtins.template``'s
    ``template``) reads an argument in each placeholder: one the node does not
    map is reported when the pipeline loads, not when the stage first runs;
    so is a malformed template, with the character where it goes wrong. A
    value of the wrong type is left to the schema's problem.
    """
    value = node.config[key]
    items = schema.get("items")
    if schema.get("format") == TEMPLATE_FORMAT and isinstance(value, str):
        yield from _check_template_arguments(i, node, key, value)
        return
    if schema.get("format") == TIME_FORMAT and isinstance(value, str):
        yield from _check_time(i, node, key, value, schema)
        return
    if schema.get("format") == ARGUMENT_FORMAT:
        named = [("", value)]
    elif isinstance(items, Mapping) and items.get("format") == ARGUMENT_FORMAT:
        named = (
            [(f"[{j}]", v) for j, v in enumerate(value)] if isinstance(value, list | tuple) else []
        )
    else:
        return
    # One problem for the key, however many names it lists: a list of a
    # million unmapped names is one mistake, not a million messages.
    unmapped: dict[str, str] = {}  # name -> where it first is
    for inner, name in named:
        if isinstance(name, str) and name not in node.arguments:
            unmapped.setdefault(name, inner)
    if not unmapped:
        return
    first = next(iter(unmapped))
    if len(unmapped) == 1:
        where, what = f"{key}{unmapped[first]}", f"argument {first!r}"
    else:
        where, what = key, f"arguments {listing(map(shown_scalar, unmapped))}"
    yield Problem(
        f"$.nodes[{i}].config.{where}",
        f"stage node {node.id!r}: config {key!r} of stage {node.stage!r} names {what}, "
        f"which the node does not map (it maps: {listing(node.arguments)}); map each to a "
        f'context path ("arguments": {{"{first}": "<path>"}}) or fix the name',
    )


def _check_time(
    i: int, node: StageNode, key: str, text: str, schema: Mapping[str, Any]
) -> Iterator[Problem]:
    """A config time (``"format"`` :data:`TIME_FORMAT`) that its schema lets through but is no time.

    Text the schema refuses (its ``pattern``) is the schema's problem, said once.
    """
    if not compile_schema(schema).is_valid(text):
        return
    try:
        time_with_offset(text)
    except ValueError as exc:
        hint = schema.get("description")
        yield Problem(
            f"$.nodes[{i}].config.{key}",
            f"stage node {node.id!r}: config {key!r} of stage {node.stage!r} is not a time "
            f"stageflow can use ({exc}); write "
            + (hint if isinstance(hint, str) else "a date and time with a UTC offset"),
        )


def _said_as_a_template(error: jsonschema.ValidationError, config: Mapping[str, Any]) -> bool:
    """Whether ``error`` is a template's ``pattern`` failing, which the template check explains.

    The pattern's own message quotes the regular expression; the template
    check (:func:`_check_template_arguments`, run on each top-level property
    that says ``"format": "template"``) names the character where the text
    stops being a template. Anywhere else the pattern's problem stands.
    """
    path = error.absolute_path
    properties = config.get("properties")
    if error.validator != "pattern" or len(path) != 1 or not isinstance(properties, Mapping):
        return False
    declared, failed = properties.get(path[0]), error.schema
    return (
        isinstance(declared, Mapping)
        and isinstance(failed, Mapping)
        and declared.get("format") == failed.get("format") == TEMPLATE_FORMAT
        and isinstance(error.instance, str)
    )


def _check_template_arguments(i: int, node: StageNode, key: str, text: str) -> Iterator[Problem]:
    try:
        parts = parse_template(text)
    except MalformedTemplateError as exc:
        yield Problem(
            f"$.nodes[{i}].config.{key}",
            f"stage node {node.id!r}: config {key!r} of stage {node.stage!r} is malformed at "
            f"character {exc.position} ({exc.text!r}); a placeholder is {{name}} or "
            "{name.key} (ASCII letters, digits, _ and -), and a literal brace is written "
            "{{ or }}",
        )
        return
    unmapped = dict.fromkeys(
        ".".join(part)
        for part in parts
        if isinstance(part, tuple) and part[0] not in node.arguments
    )
    if unmapped:
        placeholders = listing(f"{{{p}}}" for p in unmapped)
        first = next(iter(unmapped)).partition(".")[0]
        yield Problem(
            f"$.nodes[{i}].config.{key}",
            f"stage node {node.id!r}: config {key!r} of stage {node.stage!r} reads "
            f"arguments the node does not map, in {placeholders} (it maps: "
            f"{listing(node.arguments)}); map each to a context path "
            f'("arguments": {{"{first}": "<path>"}}) or fix the placeholder',
        )


def _check_maps(
    nodes: tuple[Node, ...], regions: _Regions, where: Mapping[str, int], entry: str
) -> Iterator[Problem]:
    index = regions.index
    maps = [node for node in nodes if isinstance(node, MapNode) and node.body in index]
    if not maps:
        return
    outside = regions.walk_inside([entry])
    shared: dict[str, list[str]] = {}  # body -> its nodes that also run outside, once per body
    ends: dict[str, list[str]] = {}  # body -> its terminal nodes
    for node in maps:
        i = where[node.id]
        region = regions.body(node.body)
        if node.body not in shared:
            shared[node.body] = sorted(region & outside)
            ends[node.body] = sorted(n for n in region if isinstance(index[n], TerminalNode))
        escaped = shared[node.body] if node.id not in region else [node.id]
        if escaped:
            yield Problem(
                f"$.nodes[{i}].body",
                f"map node {node.id!r}: its body reaches {listing(repr(e) for e in escaped)}, "
                "which also runs outside the map; a body is a closed region: give it its own "
                "nodes and end it with a node without 'next'",
            )
            continue
        terminals = ends[node.body]
        if terminals:
            yield Problem(
                f"$.nodes[{i}].body",
                f"map node {node.id!r}: its body contains terminal node(s) "
                f"{listing(repr(t) for t in terminals)}; an item ends at a node without "
                "'next' instead",
            )
        own = {node.item_path, node.index_path}
        for source in node.collect:
            if not regions.overlaps_writes(node.body, source) and not any(
                overlaps(source, path) for path in own
            ):
                written = regions.writes(node.body, None) | own
                yield Problem(
                    f"$.nodes[{i}].collect.{source}",
                    f"map node {node.id!r} collects {source!r}, which no node of its body "
                    f"writes (the body writes: {listing(written)}); fix the path",
                )


def _check_branch_writes(
    doc: Mapping[str, Any],
    nodes: tuple[Node, ...],
    regions: _Regions,
    where: Mapping[str, int],
) -> Iterator[Problem]:
    reducers = doc.get("reducers", {})
    if not isinstance(reducers, Mapping):
        # Reported by the schema; the writes are checked as if there were none.
        reducers = {}
    found: dict[tuple[frozenset[str], ...], dict[str, tuple[int, int]]] = {}
    for node in nodes:
        if not isinstance(node, ParallelNode) or node.merge is not MergeStrategy.ERROR:
            continue
        children = node.children
        writes = tuple(regions.joined_writes(child, node.next) for child in children)
        clashes = found.get(writes)
        if clashes is None:  # parallel nodes with the same branches clash alike: once
            clashes = found[writes] = _write_clashes(writes, reducers)
        for (a, b), shared in sorted((pair, path) for path, pair in clashes.items()):
            yield Problem(
                f"$.nodes[{where[node.id]}].children",
                f"parallel node {node.id!r}: "
                + _clash_message(children, writes, reducers, (a, b), shared),
            )


def _clash_message(
    children: Sequence[str],
    writes: Sequence[AbstractSet[str]],
    reducers: Mapping[str, str],
    pair: tuple[int, int],
    shared: str,
) -> str:
    """What two branches that can write ``shared`` (or inside it) clash on, and the way out.

    A reducer combines the writes of exactly its path: where one branch
    writes a path inside the other's, declaring one cannot help.
    """
    a, b = pair
    if shared in writes[a] and shared in writes[b] and shared not in reducers:
        return (
            f"branches {children[a]!r} and {children[b]!r} can both write {shared!r}; "
            f'declare a reducer ("reducers": {{"{shared}": "append"}}), set "merge": '
            '"first" or "last" on the node, or write to different paths'
        )
    inside = ""
    for outer, inner in ((a, b), (b, a)):
        if shared in writes[outer]:
            inside = min((p for p in writes[inner] if p.startswith(shared + ".")), default="")
            if inside:
                break
    return (
        f"branch {children[outer]!r} can write {shared!r} and branch {children[inner]!r} "
        f"{inside!r} inside it, which no reducer combines (a reducer combines the writes of "
        f"exactly its path): make both branches write {shared!r} whole (with a reducer for "
        'it, such as "merge"), set "merge": "first" or "last" on the node, or write to '
        "different paths"
    )


def _write_clashes(
    writes: Sequence[AbstractSet[str]], reducers: Mapping[str, str]
) -> dict[str, tuple[int, int]]:
    """Paths two branches can both write (or one a path inside the other's): path -> branches.

    The path is the shorter of the two; the branches are the first pair, in
    ``children`` order, that clash on it. Linear in the paths written (times
    their segments): each path is looked up with each of its prefixes, instead
    of comparing every path of every branch with every other.
    """
    writers: dict[str, list[int]] = {}
    for branch, paths in enumerate(writes):
        for path in paths:
            writers.setdefault(path, []).append(branch)
    clashes: dict[str, tuple[int, int]] = {}

    def clash(path: str, pair: tuple[int, int]) -> None:
        if path not in clashes or pair < clashes[path]:
            clashes[path] = pair

    for path, branches in writers.items():
        if len(branches) > 1 and path not in reducers:
            clash(path, (branches[0], branches[1]))
        parts = path.split(".")
        for cut in range(1, len(parts)):
            outer = writers.get(".".join(parts[:cut]))
            if outer is None:
                continue
            pairs = [(min(x, y), max(x, y)) for x in outer[:2] for y in branches[:2] if x != y]
            if pairs:
                clash(".".join(parts[:cut]), min(pairs))
    return clashes
