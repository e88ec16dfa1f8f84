"""Graph checks: everything about a pipeline's nodes and edges that JSON Schema cannot see.

Each check yields :class:`~stageflow.Problem` objects with locations relative
to the graph (``$.nodes[3].next``); the loader re-roots them for subpipelines
(``$.subpipelines.page.nodes[3].next``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from stageflow import jsonlogic
from stageflow._errors import Problem
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
from stageflow._specs import compile_schema
from stageflow._stages import StageRegistry

__all__ = ["all_edges", "check_graph", "continuation_edges", "node_writes", "walk"]

_WITH_NEXT = (StageNode, ParallelNode, SubpipelineNode, MapNode)


def continuation_edges(node: Node) -> tuple[str, ...]:
    """Ids a node can hand control to on its own path (not branch or map body entries)."""
    if isinstance(node, ConditionNode):
        targets = [c.then for c in node.conditions]
        if node.else_:
            targets.append(node.else_)
        return tuple(targets)
    if isinstance(node, TerminalNode):
        return ()
    handlers = tuple(h.next for h in node.error_handlers)
    return ((node.next,) if node.next else ()) + handlers


def region_edges(node: Node) -> tuple[str, ...]:
    """Edges that stay in one context: continuation edges and parallel children."""
    if isinstance(node, ParallelNode):
        return node.children + continuation_edges(node)
    return continuation_edges(node)


def all_edges(node: Node) -> tuple[str, ...]:
    """Every id a node refers to: parallel children and map bodies included."""
    if isinstance(node, MapNode):
        return (node.body, *continuation_edges(node))
    return region_edges(node)


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
    """The context paths a node writes in the context it runs in."""
    if isinstance(node, StageNode):
        return set(node.outputs.values())
    if isinstance(node, SubpipelineNode):
        written = set(node.artifacts.values())
        if node.result_output:
            written.add(node.result_output)
        return written
    if isinstance(node, MapNode):
        written = set(node.collect.values())
        if node.failures_path:
            written.add(node.failures_path)
        return written
    return set()


def _region_writes(start: str, index: Mapping[str, Node], stop: str | None) -> set[str]:
    region = walk([start], index, region_edges, stop)
    return {path for member in region for path in node_writes(index[member])}


def overlaps(a: str, b: str) -> bool:
    """Whether one path is the other or inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_graph(
    doc: Mapping[str, Any], nodes: tuple[Node, ...], registry: StageRegistry
) -> Iterator[Problem]:
    """Every graph problem of one pipeline or subpipeline (locations rooted at ``$``)."""
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
    entry = doc["entry"]
    if entry not in index:
        yield Problem("$.entry", f"entry {entry!r} is not a node id; use one of: {known}")

    for i, node in enumerate(nodes):
        yield from _check_edges(i, node, index, known)
        if isinstance(node, ConditionNode):
            for j, branch in enumerate(node.conditions):
                for inner, message in jsonlogic.check(branch.if_):
                    yield Problem(
                        f"$.nodes[{i}].conditions[{j}].if{inner}",
                        f"condition node {node.id!r}: {message}; fix the rule",
                    )
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

    if entry not in index:
        return
    reachable = walk([entry], index, all_edges)
    for i, node in enumerate(nodes):
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

    yield from _check_maps(nodes, index, where, entry)
    yield from _check_branch_writes(doc, nodes, index, where)


def _check_edges(i: int, node: Node, index: Mapping[str, Node], known: str) -> Iterator[Problem]:
    refs: list[tuple[str, str]] = []
    if isinstance(node, _WITH_NEXT) and node.next is not None:
        refs.append((f"$.nodes[{i}].next", node.next))
    if isinstance(node, ConditionNode):
        refs.extend(
            (f"$.nodes[{i}].conditions[{j}].then", c.then) for j, c in enumerate(node.conditions)
        )
        if node.else_ is not None:
            refs.append((f"$.nodes[{i}].else", node.else_))
    if isinstance(node, ParallelNode):
        refs.extend((f"$.nodes[{i}].children[{j}]", c) for j, c in enumerate(node.children))
    if isinstance(node, MapNode):
        refs.append((f"$.nodes[{i}].body", node.body))
    if isinstance(node, _WITH_NEXT):
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
            suffix = "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            )
            hint = error.schema.get("description") if isinstance(error.schema, Mapping) else None
            yield Problem(
                f"$.nodes[{i}].config{suffix}",
                f"stage node {node.id!r}: config for stage {node.stage!r} is not valid: "
                f"{error.message}" + (f" ({hint})" if hint else ""),
            )


def _check_maps(
    nodes: tuple[Node, ...], index: Mapping[str, Node], where: Mapping[str, int], entry: str
) -> Iterator[Problem]:
    maps = [node for node in nodes if isinstance(node, MapNode) and node.body in index]
    if not maps:
        return
    outside = walk([entry], index, region_edges)
    for node in maps:
        i = where[node.id]
        region = walk([node.body], index, all_edges)
        escaped = sorted(region & outside) if node.id not in region else [node.id]
        if escaped:
            yield Problem(
                f"$.nodes[{i}].body",
                f"map node {node.id!r}: its body reaches {', '.join(repr(e) for e in escaped)}, "
                "which also runs outside the map; a body is a closed region: give it its own "
                "nodes and end it with a node without 'next'",
            )
            continue
        terminals = sorted(n for n in region if isinstance(index[n], TerminalNode))
        if terminals:
            yield Problem(
                f"$.nodes[{i}].body",
                f"map node {node.id!r}: its body contains terminal node(s) "
                f"{', '.join(repr(t) for t in terminals)}; an item ends at a node without "
                "'next' instead",
            )
        written = _region_writes(node.body, index, None) | {node.item_path, node.index_path}
        for source in node.collect:
            if not any(overlaps(source, path) for path in written):
                yield Problem(
                    f"$.nodes[{i}].collect.{source}",
                    f"map node {node.id!r} collects {source!r}, which no node of its body "
                    f"writes (the body writes: {', '.join(sorted(written))}); fix the path",
                )


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
        children = node.children
        clashes = _write_clashes(
            [_region_writes(child, index, node.next) for child in children], reducers
        )
        for (a, b), shared in sorted((pair, path) for path, pair in clashes.items()):
            yield Problem(
                f"$.nodes[{where[node.id]}].children",
                f"parallel node {node.id!r}: branches {children[a]!r} and "
                f"{children[b]!r} can both write {shared!r}; declare a reducer "
                f'("reducers": {{"{shared}": "append"}}), set "merge": "first" or '
                '"last" on the node, or write to different paths',
            )


def _write_clashes(
    writes: list[set[str]], reducers: Mapping[str, str]
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
