"""Drawing a pipeline: a small graph model, rendered as Mermaid, Graphviz DOT or JSON.

:func:`build_graph` turns a :class:`~stageflow.Pipeline` into :class:`Graph`
(nodes plus typed edges); the renderers only map node types to shapes and
edge kinds to line styles. A node's edges are the graph module's
(:func:`stageflow._graph.edges`, which the graph checks and test coverage read
too); ``_DRAWN`` says how each kind is drawn, and the drawing adds only what
is not an edge of the model: the start marker and the branch ends that lead
to a parallel node's join. A new node type adds one function to
``_NODE_DETAIL``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs

from stageflow._errors import Problem
from stageflow._graph import Edge, continuation_edges, edges
from stageflow._graph import EdgeKind as ModelEdgeKind
from stageflow._model import (
    ConditionNode,
    MapNode,
    Node,
    ParallelNode,
    StageNode,
    SubpipelineNode,
    TerminalNode,
)
from stageflow._pipeline import Pipeline, structure_node

__all__ = [
    "FORMATS",
    "EdgeKind",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "build_graph",
    "build_invalid_graph",
    "render",
]


class EdgeKind(enum.StrEnum):
    """Why control can go from one node to another."""

    ENTRY = "entry"
    """From the start marker to the pipeline's ``entry``."""
    NEXT = "next"
    """A stage's ``next``."""
    CONDITION = "condition"
    """A condition's ``conditions[i].then``; labelled ``if #i+1``."""
    ELSE = "else"
    """A condition's ``else``."""
    BRANCH = "branch"
    """A parallel node to the entry of one branch; labelled ``branch i+1``."""
    JOIN = "join"
    """A parallel node to its ``next``: what runs once the branches are done."""
    BRANCH_END = "branch_end"
    """The last node of a branch (one without ``next``) to the parallel node's join."""
    ERROR = "error"
    """An error edge: ``on_error[i]`` (labelled ``on <error names>``) or ``fallback``."""
    BODY = "body"
    """A map node to the entry of its body, run once per item; labelled ``each item``."""


_CONDITION_KINDS: Final = (ModelEdgeKind.THEN, ModelEdgeKind.ELSE)
_WITH_ERRORS: Final = (StageNode, ParallelNode, SubpipelineNode, MapNode)
# model edge kind -> (drawn kind, label; "{n}" is the 1-based index)
_DRAWN: Final[dict[ModelEdgeKind, tuple[EdgeKind, str | None]]] = {
    ModelEdgeKind.NEXT: (EdgeKind.NEXT, None),
    ModelEdgeKind.THEN: (EdgeKind.CONDITION, "if #{n}"),
    ModelEdgeKind.ELSE: (EdgeKind.ELSE, "else"),
    ModelEdgeKind.BRANCH: (EdgeKind.BRANCH, "branch {n}"),
    ModelEdgeKind.JOIN: (EdgeKind.JOIN, "join"),
    ModelEdgeKind.BODY: (EdgeKind.BODY, "each item"),
    ModelEdgeKind.ON_ERROR: (EdgeKind.ERROR, None),
    ModelEdgeKind.FALLBACK: (EdgeKind.ERROR, "fallback"),
}


@attrs.frozen
class GraphNode:
    """A node as drawn.

    Attributes:
        id: the pipeline node id (or the start marker's id).
        type: the node type, or ``"start"`` for the start marker.
        detail: a second line under the id (``stage: Name``), or ``None``.
        problems: what is wrong with the node, for an invalid pipeline
            (``"LOCATION: MESSAGE"``). Its type is ``"invalid"`` when the node
            cannot be read at all, ``"missing"`` when an edge names an id no
            node has.
    """

    id: str
    type: str
    detail: str | None = None
    problems: tuple[str, ...] = ()


@attrs.frozen
class GraphEdge:
    """An edge as drawn: from ``source`` to ``target`` because of ``kind``."""

    source: str
    target: str
    kind: EdgeKind
    label: str | None = None


@attrs.frozen
class Graph:
    """A pipeline's nodes and edges, ready to render."""

    name: str
    start: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    problems: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The graph as a JSON object (``problems`` only for an invalid pipeline)."""
        out: dict[str, Any] = {
            "name": self.name,
            "start": self.start,
            "nodes": [_node_dict(n) for n in self.nodes],
            "edges": [
                {"source": e.source, "target": e.target, "kind": e.kind.value, "label": e.label}
                for e in self.edges
            ],
        }
        if self.problems:
            out["problems"] = [
                {"location": p.location, "message": p.message} for p in self.problems
            ]
        return out


def _node_dict(node: GraphNode) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id, "type": node.type, "detail": node.detail}
    if node.problems:
        out["problems"] = list(node.problems)
    return out


class _Drawable(Protocol):
    """What drawing reads of a pipeline (a :class:`Pipeline`, or the readable part of one)."""

    @property
    def name(self) -> str:
        """The pipeline's name."""

    @property
    def entry(self) -> str:
        """The entry node id."""

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes, in document order."""

    def node(self, node_id: str) -> Node:
        """The node with that id."""

    def __contains__(self, node_id: object) -> bool:
        """Whether a node has that id."""


@attrs.frozen
class _Readable:
    """The nodes of an invalid document that can be read, standing in for a pipeline."""

    name: str
    entry: str
    nodes: tuple[Node, ...]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def __contains__(self, node_id: object) -> bool:
        return any(n.id == node_id for n in self.nodes)


# ----------------------------------------------------------------- per node type


def _stage_detail(node: StageNode) -> str:
    return f"stage: {node.stage}"


def _condition_detail(node: ConditionNode) -> str:
    count = len(node.conditions)
    return f"condition: {count} rule{'s' if count != 1 else ''}"


def _parallel_detail(node: ParallelNode) -> str:
    return f"parallel: {node.policy.value}"


def _terminal_detail(node: TerminalNode) -> str:
    return "terminal"


def _subpipeline_detail(node: SubpipelineNode) -> str:
    return f"subpipeline: {node.pipeline}"


def _map_detail(node: MapNode) -> str:
    return f"map: {node.items}, {node.concurrency} at a time"


_NODE_DETAIL: Final[dict[str, Callable[[Any], str]]] = {
    "stage": _stage_detail,
    "condition": _condition_detail,
    "parallel": _parallel_detail,
    "terminal": _terminal_detail,
    "subpipeline": _subpipeline_detail,
    "map": _map_detail,
}


def _success_edges(node: Node) -> tuple[str, ...]:
    """Where control goes when ``node`` succeeds (error and opening edges left out)."""
    return tuple(e.target for e in edges(node) if e.kind in _SUCCESS)


_SUCCESS: Final = frozenset({ModelEdgeKind.NEXT, ModelEdgeKind.JOIN, *_CONDITION_KINDS})


def _branch_tails(child: str, join: str, pipeline: _Drawable) -> list[str]:
    """Nodes where the branch starting at ``child`` ends without a ``next`` (in document order).

    The walk follows continuation edges (error edges included: a handler
    without ``next`` ends the branch too) but not parallel children: nested
    branches end at their own join, not at this one.
    """
    seen: set[str] = set()
    todo = [child]
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id == join or node_id not in pipeline:
            continue
        seen.add(node_id)
        todo.extend(continuation_edges(pipeline.node(node_id)))
    return [
        n.id
        for n in pipeline.nodes
        if n.id in seen and not _success_edges(n) and not isinstance(n, TerminalNode)
    ]


def _drawn(node: Node, edge: Edge) -> GraphEdge:
    """How one model edge (:func:`stageflow._graph.edges`) is drawn."""
    kind, label = _DRAWN[edge.kind]
    index = edge.index if edge.index is not None else 0
    if edge.kind is ModelEdgeKind.ON_ERROR and isinstance(node, _WITH_ERRORS):
        label = f"on {', '.join(node.on_error[index].errors)}"
    elif label is not None:
        label = label.format(n=index + 1)
    return GraphEdge(node.id, edge.target, kind, label)


def _node_edges(node: Node, pipeline: _Drawable) -> Iterator[GraphEdge]:
    for edge in edges(node):
        yield _drawn(node, edge)
        if edge.kind is ModelEdgeKind.JOIN and isinstance(node, ParallelNode):
            tails: list[str] = []
            for child in node.children:
                tails.extend(
                    t for t in _branch_tails(child, edge.target, pipeline) if t not in tails
                )
            yield from (GraphEdge(tail, edge.target, EdgeKind.BRANCH_END) for tail in tails)


def _start_id(pipeline: _Drawable) -> str:
    start = "__start__"
    while start in pipeline:
        start = f"_{start}"
    return start


def build_graph(pipeline: _Drawable) -> Graph:
    """Describe ``pipeline`` as nodes and edges (nodes in document order)."""
    start = _start_id(pipeline)
    nodes = [GraphNode(start, "start", None)]
    drawn = [GraphEdge(start, pipeline.entry, EdgeKind.ENTRY)]
    for node in pipeline.nodes:
        detail = _NODE_DETAIL.get(node.type)
        nodes.append(GraphNode(node.id, node.type, detail(node) if detail else node.type))
        drawn.extend(_node_edges(node, pipeline))
    return Graph(pipeline.name, start, tuple(nodes), tuple(drawn))


_NODE_AT = re.compile(r"^\$\.nodes\[(\d+)\]")


def build_invalid_graph(document: Any, problems: Sequence[Problem]) -> Graph | None:
    """Draw what can be read of an invalid pipeline document, with its problems marked.

    Nodes that cannot be read are drawn as ``invalid``; ids that edges name
    but no node has, as ``missing``. Each problem located in a node
    (``$.nodes[3]...``) marks that node; one at ``$.entry`` marks the start.
    Returns ``None`` when the document has no list of nodes to draw.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("nodes"), list):
        return None
    raw_nodes: list[Any] = document["nodes"]
    ids = [
        raw["id"] if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) else f"#{i}"
        for i, raw in enumerate(raw_nodes)
    ]
    read = [structure_node(raw) for raw in raw_nodes]
    entry = document.get("entry")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    readable = _Readable(
        name if isinstance(name, str) and name else "pipeline",
        entry if isinstance(entry, str) else "",
        tuple(node for node in read if node is not None),
    )
    graph = build_graph(readable)
    marks: dict[str, list[str]] = {}
    for problem in problems:
        found = _NODE_AT.match(problem.location)
        if found and int(found.group(1)) < len(ids):
            owner = ids[int(found.group(1))]
        elif problem.location.startswith("$.entry"):
            owner = graph.start
        else:
            continue
        marks.setdefault(owner, []).append(f"{problem.location}: {problem.message}")
    nodes: list[GraphNode] = []
    for drawn in graph.nodes:
        nodes.append(attrs.evolve(drawn, problems=tuple(marks.get(drawn.id, ()))))
    for i, node in enumerate(read):
        if node is None:
            nodes.insert(
                i + 1,
                GraphNode(ids[i], "invalid", "cannot be read", tuple(marks.get(ids[i], ()))),
            )
    known = {n.id for n in nodes}
    for edge in graph.edges:
        if edge.target not in known and edge.target:
            known.add(edge.target)
            nodes.append(GraphNode(edge.target, "missing", "not a node", ("no node has this id",)))
    edges = tuple(e for e in graph.edges if e.target)
    return Graph(graph.name, graph.start, tuple(nodes), edges, tuple(problems))


# ---------------------------------------------------------------------- Mermaid

_MERMAID_SHAPES: Final = {
    "start": ("((", "))"),
    "stage": ("[", "]"),
    "condition": ("{", "}"),
    "parallel": ("[[", "]]"),
    "terminal": ("([", "])"),
    "subpipeline": ("[[", "]]"),
    "map": ("[/", "/]"),
}
_MERMAID_ARROWS: Final = {
    EdgeKind.BODY: "-.->",
    EdgeKind.BRANCH: "-.->",
    EdgeKind.BRANCH_END: "-.->",
    EdgeKind.JOIN: "==>",
    EdgeKind.ERROR: "-.->",
}
_MERMAID_ERROR_STYLE: Final = "stroke:#c0392b,color:#c0392b"
_MERMAID_SAFE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words Mermaid's flowchart grammar reads as keywords, never usable as bare ids:
# a chart with one as a node id does not parse ("got 'HREF'"), checked against
# Mermaid 11's parser. "call" is one only before a space, as in "call --> x";
# the link targets ("_blank" ...) are valid node ids too.
_MERMAID_KEYWORDS: Final = frozenset(
    {
        "end",
        "graph",
        "flowchart",
        "subgraph",
        "style",
        "class",
        "classdef",
        "click",
        "linkstyle",
        "href",
        "call",
        "interpolate",
        "_self",
        "_blank",
        "_parent",
        "_top",
    }
)


_PROBLEM_COLOR: Final = "#c0392b"


def _problem_note(node: GraphNode) -> str:
    count = len(node.problems)
    return f"! {count} problem{'s' if count != 1 else ''}"


def _mermaid_text(text: str) -> str:
    text = re.sub(r"#(?=\w+;)", "#35;", text)
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _mermaid_ids(graph: Graph) -> dict[str, str]:
    used = {n.id for n in graph.nodes}
    ids: dict[str, str] = {}
    for i, node in enumerate(graph.nodes):
        if _MERMAID_SAFE_ID.fullmatch(node.id) and node.id.lower() not in _MERMAID_KEYWORDS:
            ids[node.id] = node.id
            continue
        candidate = f"n{i}"
        while candidate in used:
            candidate = f"_{candidate}"
        used.add(candidate)
        ids[node.id] = candidate
    return ids


def _one_line(text: str) -> str:
    r"""``text`` for a comment line, line breaks shown as ``\n``.

    A line break in a name or a message would end the comment and turn the
    rest into graph text.
    """
    return "".join("\\n" if c in "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029" else c for c in text)


def render_mermaid(graph: Graph) -> str:
    """Mermaid ``flowchart`` text: paste into Markdown (```mermaid) or mermaid.live."""
    ids = _mermaid_ids(graph)
    lines = ["flowchart TD", f"    %% pipeline: {_one_line(graph.name)}"]
    lines.extend(
        f"    %% problem: {_one_line(f'{p.location}: {p.message}')}" for p in graph.problems
    )
    for node in graph.nodes:
        opening, closing = _MERMAID_SHAPES.get(node.type, ("[", "]"))
        text = _mermaid_text(node.id if node.type != "start" else "start")
        if node.detail:
            text += "<br/>" + _mermaid_text(node.detail)
        if node.problems:
            text += "<br/>" + _problem_note(node)
        lines.append(f'    {ids[node.id]}{opening}"{text}"{closing}')
    for edge in graph.edges:
        arrow = _MERMAID_ARROWS.get(edge.kind, "-->")
        label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
        lines.append(f"    {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
    errors = [str(i) for i, edge in enumerate(graph.edges) if edge.kind is EdgeKind.ERROR]
    if errors:
        lines.append(f"    linkStyle {','.join(errors)} {_MERMAID_ERROR_STYLE}")
    terminals = [ids[n.id] for n in graph.nodes if n.type == "terminal"]
    if terminals:
        lines.append("    classDef terminal stroke-width:4px")
        lines.append(f"    class {','.join(terminals)} terminal")
    marked = [ids[n.id] for n in graph.nodes if n.problems]
    if marked:
        lines.append(f"    classDef problem stroke:{_PROBLEM_COLOR},stroke-width:3px")
        lines.append(f"    class {','.join(marked)} problem")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- DOT

_DOT_NODE_ATTRS: Final = {
    "start": {"shape": "point", "width": "0.2"},
    "stage": {"shape": "box", "style": "rounded"},
    "condition": {"shape": "diamond"},
    "parallel": {"shape": "hexagon"},
    "terminal": {"shape": "box", "style": "rounded,bold", "peripheries": "2"},
    "subpipeline": {"shape": "component"},
    "map": {"shape": "box3d"},
}
_DOT_EDGE_STYLES: Final = {
    EdgeKind.BODY: "dashed",
    EdgeKind.BRANCH: "dashed",
    EdgeKind.BRANCH_END: "dotted",
    EdgeKind.JOIN: "bold",
    EdgeKind.ERROR: "dashed",
}
_DOT_ERROR_COLOR: Final = "#c0392b"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_attrs(values: dict[str, str]) -> str:
    return ", ".join(f"{key}={_dot_quote(value)}" for key, value in values.items())


def render_dot(graph: Graph) -> str:
    """Graphviz DOT text: ``dot -Tsvg`` draws it."""
    lines = [
        f"digraph {_dot_quote(graph.name)} {{",
        "    rankdir=TB;",
        '    node [fontname="Helvetica"];',
        '    edge [fontname="Helvetica"];',
    ]
    lines.extend(
        f"    // problem: {_one_line(f'{p.location}: {p.message}')}" for p in graph.problems
    )
    for node in graph.nodes:
        values = dict(_DOT_NODE_ATTRS.get(node.type, {"shape": "box"}))
        if node.type != "start":
            values["label"] = f"{node.id}\n{node.detail}" if node.detail else node.id
        if node.problems:
            values["color"] = values["fontcolor"] = _PROBLEM_COLOR
            values["penwidth"] = "2"
            values["tooltip"] = "\n".join(node.problems)
            if node.type != "start":
                values["label"] += "\n" + _problem_note(node)
        lines.append(f"    {_dot_quote(node.id)} [{_dot_attrs(values)}];")
    for edge in graph.edges:
        values = {}
        if edge.kind in _DOT_EDGE_STYLES:
            values["style"] = _DOT_EDGE_STYLES[edge.kind]
        if edge.kind is EdgeKind.ERROR:
            values["color"] = values["fontcolor"] = _DOT_ERROR_COLOR
        if edge.label:
            values["label"] = edge.label
        suffix = f" [{_dot_attrs(values)}]" if values else ""
        lines.append(f"    {_dot_quote(edge.source)} -> {_dot_quote(edge.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_json(graph: Graph) -> str:
    """The graph as JSON (see :meth:`Graph.to_dict`)."""
    return json.dumps(graph.to_dict(), indent=2, ensure_ascii=False) + "\n"


FORMATS: Final[dict[str, Callable[[Graph], str]]] = {
    "mermaid": render_mermaid,
    "dot": render_dot,
    "json": render_json,
}
"""``--format`` name -> renderer."""


def render(pipeline: Pipeline, format: str) -> str:
    """Draw ``pipeline`` in ``format`` (a key of :data:`FORMATS`)."""
    return FORMATS[format](build_graph(pipeline))
