"""Coverage: which nodes and edges of a pipeline a set of runs exercised.

Edges are the graph module's (:func:`stageflow._graph.edges`, which the graph
checks and ``stageflow graph`` read too); whether one was taken is read from
the run histories:

- ``next`` of a stage, subpipeline or map node: its ``node_finished`` event
  names that ``next``;
- ``body`` of a map node: a ``map_item_started`` event (one per item);
- ``then`` (by index) / ``else`` of a condition node: its ``node_finished``
  event names the target (and the matched branch, when the engine records
  it as ``payload["branch"]``);
- ``branch`` (by index) of a parallel node: a ``branch_started`` event for
  that child; ``join``: the parallel node's ``node_finished`` event;
- ``on_error`` (by index) and ``fallback`` of any node with error edges: an
  ``error_routed`` event naming the target (and the error path, which tells
  apart edges to the same target that write the error to different paths).

Events inside a subpipeline the pipeline calls are left out: the child's
node ids may repeat the caller's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from stageflow import (
    ConditionNode,
    Event,
    MapNode,
    Node,
    ParallelNode,
    Pipeline,
    StageNode,
    SubpipelineNode,
)
from stageflow._graph import Edge, EdgeKind, edges
from stageflow._json import a_python_type

__all__ = ["Coverage", "Edge", "EdgeKind", "measure_coverage"]

_Routed = StageNode | ParallelNode | SubpipelineNode | MapNode
_ROUTED = (StageNode, ParallelNode, SubpipelineNode, MapNode)


def pipeline_edges(node: Node) -> tuple[Edge, ...]:
    """Every edge leaving ``node``, in document order (the graph module's :func:`edges`)."""
    return edges(node)


def _error_edge(node: _Routed, payload: Mapping[str, Any]) -> Edge | None:
    target, path = payload.get("next"), payload.get("error_path")
    candidates = [(i, h) for i, h in enumerate(node.error_handlers) if h.next == target]
    # Several edges to one target: the error path tells them apart, else the first.
    exact = [(i, h) for i, h in candidates if h.error_path == path] or candidates
    if not exact:
        return None
    index, handler = exact[0]
    if index == len(node.on_error):
        return Edge(node.id, EdgeKind.FALLBACK, handler.next)
    return Edge(node.id, EdgeKind.ON_ERROR, handler.next, index)


def _taken(pipeline: Pipeline, event: Event) -> Edge | None:
    """The edge an event shows was taken, if it shows one."""
    if event.node_id is None or event.node_id not in pipeline:
        return None
    node = pipeline.node(event.node_id)
    if event.type == "branch_started" and isinstance(node, ParallelNode):
        child = event.payload.get("branch")
        if child in node.children:
            return Edge(node.id, EdgeKind.BRANCH, child, node.children.index(child))
        return None
    if event.type == "map_item_started" and isinstance(node, MapNode):
        return Edge(node.id, EdgeKind.BODY, node.body)
    if event.type == "error_routed" and isinstance(node, _ROUTED):
        return _error_edge(node, event.payload)
    if event.type != "node_finished":
        return None
    target = event.payload.get("next")
    if not isinstance(target, str):
        return None
    if isinstance(node, StageNode | SubpipelineNode | MapNode):
        return Edge(node.id, EdgeKind.NEXT, target)
    if isinstance(node, ParallelNode):
        return Edge(node.id, EdgeKind.JOIN, target)
    if isinstance(node, ConditionNode):
        return _condition_edge(node, target, event.payload.get("branch"))
    return None


def _condition_edge(node: ConditionNode, target: str, branch: Any) -> Edge:
    if branch == "else":
        return Edge(node.id, EdgeKind.ELSE, target)
    if isinstance(branch, int) and not isinstance(branch, bool):
        return Edge(node.id, EdgeKind.THEN, target, branch)
    # Without the matched branch in the event, the target tells it, unless
    # several branches share the target: then the first of them is credited.
    for i, condition in enumerate(node.conditions):
        if condition.then == target:
            return Edge(node.id, EdgeKind.THEN, target, i)
    return Edge(node.id, EdgeKind.ELSE, target)


def _in_subpipeline(pipeline: Pipeline, path: str) -> bool:
    """Whether an event at ``path`` happened inside a subpipeline ``pipeline`` calls.

    A path is made of a parallel node and one of its children, a map node and
    an item index, or a subpipeline node (whose own nodes come after it), in
    turn. A subpipeline's node ids may repeat the caller's: its events are
    not the caller's nodes and edges.
    """
    nodes = pipeline.node_index
    return any(isinstance(nodes.get(part), SubpipelineNode) for part in path.split("/")[::2])


def _percent(hit: int, total: int) -> str:
    return f"{hit}/{total} ({100.0 * hit / total:.1f}%)" if total else "0/0"


@attrs.frozen
class Coverage:
    """Which nodes and edges of one pipeline a set of runs exercised.

    Attributes:
        pipeline: the pipeline.
        runs: how many runs were counted.
        node_hits: node id -> how many times it was started, for every node.
        edge_hits: edge -> how many times it was taken, for every edge.
        source: where the pipeline came from (a file name), for the report.
    """

    pipeline: Pipeline = attrs.field(repr=False)
    runs: int
    node_hits: Mapping[str, int]
    edge_hits: Mapping[Edge, int]
    source: str = ""

    @property
    def missed_nodes(self) -> tuple[str, ...]:
        """Ids of the nodes never started, in document order."""
        return tuple(node_id for node_id, hits in self.node_hits.items() if not hits)

    @property
    def missed_edges(self) -> tuple[Edge, ...]:
        """The edges never taken, in document order."""
        return tuple(edge for edge, hits in self.edge_hits.items() if not hits)

    @property
    def node_ratio(self) -> float:
        """Share of nodes started at least once (1.0 for a pipeline without nodes)."""
        total = len(self.node_hits)
        return (total - len(self.missed_nodes)) / total if total else 1.0

    @property
    def edge_ratio(self) -> float:
        """Share of edges taken at least once (1.0 for a pipeline without edges)."""
        total = len(self.edge_hits)
        return (total - len(self.missed_edges)) / total if total else 1.0

    @property
    def complete(self) -> bool:
        """Whether every node was started and every edge taken."""
        return not self.missed_nodes and not self.missed_edges

    def render(self) -> str:
        """A text report naming every node and edge never exercised."""
        nodes, edges = len(self.node_hits), len(self.edge_hits)
        name = self.pipeline.name + (f" ({self.source})" if self.source else "")
        lines = [
            f"coverage of pipeline {name} by {self.runs} run(s):",
            f"  nodes: {_percent(nodes - len(self.missed_nodes), nodes)}"
            f"   edges: {_percent(edges - len(self.missed_edges), edges)}",
        ]
        if self.missed_nodes:
            lines.append("  nodes never run:")
            lines.extend(f"    {node_id}" for node_id in self.missed_nodes)
        if self.missed_edges:
            lines.append("  edges never taken:")
            lines.extend(f"    {edge}" for edge in self.missed_edges)
        if self.complete:
            lines.append("  every node and edge was exercised")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The coverage as a JSON object."""
        return {
            "pipeline": self.pipeline.name,
            "source": self.source,
            "runs": self.runs,
            "nodes": dict(self.node_hits),
            "edges": [{**_edge_dict(e), "hits": hits} for e, hits in self.edge_hits.items()],
            "missed_nodes": list(self.missed_nodes),
            "missed_edges": [_edge_dict(e) for e in self.missed_edges],
        }


def _edge_dict(edge: Edge) -> dict[str, Any]:
    return {
        "source": edge.source,
        "kind": edge.kind.value,
        "target": edge.target,
        "index": edge.index,
        "label": str(edge),
    }


def measure_coverage(
    pipeline: Pipeline, histories: Iterable[Sequence[Event]], *, source: str = ""
) -> Coverage:
    """Measure which nodes and edges of ``pipeline`` the runs with these histories exercised.

    Args:
        pipeline: the pipeline all the runs ran.
        histories: the event history of each run (``SessionResult.history``
            or ``CaseResult.history``).
        source: where the pipeline came from, shown in the report.

    Raises:
        TypeError: ``pipeline`` is no :class:`~stageflow.Pipeline`, or
            ``histories`` is one history, or holds results, not histories,
            or a history holds something that is no :class:`~stageflow.Event`.
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"measure_coverage() was given {a_python_type(pipeline)} for the pipeline; pass "
            "the stageflow.Pipeline the runs ran (CaseResult.pipeline, say)"
        )
    node_hits: Counter[str] = Counter()
    edge_hits: Counter[Edge] = Counter()
    runs = 0
    nested: dict[str, bool] = {}  # event path -> inside a subpipeline
    for index, history in enumerate(histories):
        if isinstance(history, Event):
            raise TypeError(
                "measure_coverage() was given the events of one history, where it takes "
                "several histories; pass a list of them: [result.history]"
            )
        if hasattr(history, "history"):
            raise TypeError(
                f"measure_coverage() was given {a_python_type(history)} among the histories; "
                "pass the histories of the results: [r.history for r in results]"
            )
        if not isinstance(history, Iterable) or isinstance(history, str | bytes | Mapping):
            raise TypeError(
                f"measure_coverage() was given {a_python_type(history)} as history #{index}; "
                "pass the histories of the runs: [r.history for r in results]"
            )
        runs += 1
        for event in history:
            if not isinstance(event, Event):
                # Such as a history read back from JSON: its events are dicts.
                raise TypeError(
                    f"measure_coverage() was given {a_python_type(event)} in history "
                    f"#{index}, where it takes stageflow.Event objects; pass the histories "
                    "of the runs as they ran (SessionResult.history, CaseResult.history)"
                )
            if event.path:
                inside = nested.get(event.path)
                if inside is None:
                    inside = nested[event.path] = _in_subpipeline(pipeline, event.path)
                if inside:
                    continue
            if event.type == "node_started" and event.node_id is not None:
                node_hits[event.node_id] += 1
            else:
                edge = _taken(pipeline, event)
                if edge is not None:
                    edge_hits[edge] += 1
    all_edges = [edge for node in pipeline.nodes for edge in pipeline_edges(node)]
    return Coverage(
        pipeline=pipeline,
        runs=runs,
        node_hits={node.id: node_hits[node.id] for node in pipeline.nodes},
        edge_hits={edge: edge_hits[edge] for edge in all_edges},
        source=source,
    )
