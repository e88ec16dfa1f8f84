"""A pipeline graph as SVG: the ``stageflow graph`` model, laid out and drawn with states.

The nodes and edges come from the graph model ``stageflow graph`` renders
(``build_graph`` / ``build_invalid_graph``); this module only places them
(:mod:`._layout`) and writes SVG. What a session or a test run adds (each
node's state, visits and problems, the edges taken or missed) goes into
classes and ``data-*`` attributes, so the stylesheet colours them and tests
can read them.
"""

from __future__ import annotations

import functools
import html
import itertools
from collections.abc import Collection, Mapping
from typing import Final

import attrs

from stageflow._cli._graph import EdgeKind, Graph, GraphNode
from stageflow.ui._layout import Box, Layout, layout

__all__ = ["NodeMarks", "draw", "drawn_kind"]

_CHAR = 7.2
_LINE = 16.0
_MIN_WIDTH = 96.0

# The tester's edge kinds (stageflow.testing.EdgeKind values) -> the drawn kinds.
_DRAWN_KIND: Final = {
    "next": EdgeKind.NEXT,
    "then": EdgeKind.CONDITION,
    "else": EdgeKind.ELSE,
    "branch": EdgeKind.BRANCH,
    "join": EdgeKind.JOIN,
    "body": EdgeKind.BODY,
    "on_error": EdgeKind.ERROR,
    "fallback": EdgeKind.ERROR,
}


def drawn_kind(kind: str) -> str:
    """The drawn edge kind of a tester's edge kind (``then`` -> ``condition``)."""
    return _DRAWN_KIND[kind].value if kind in _DRAWN_KIND else kind


@attrs.frozen
class NodeMarks:
    """What a page adds to one drawn node.

    Attributes:
        state: a CSS state (``waiting``, ``failed``, ``visited``, ``missed`` ...), or ``""``.
        badge: a short text in the node's corner (``3x``), or ``""``.
        label: what a screen reader says about the state.
    """

    state: str = ""
    badge: str = ""
    label: str = ""


def _size(node: GraphNode) -> tuple[float, float]:
    if node.type == "start":
        return 18.0, 18.0
    lines = [node.id, node.detail or ""]
    width = max(_MIN_WIDTH, max(len(line) for line in lines) * _CHAR + 28)
    if node.type == "condition":
        width *= 1.35
        return width, 64.0
    return width, 46.0


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _shape(node: GraphNode, box: Box) -> str:
    x0, y0 = box.x - box.width / 2, box.y - box.height / 2
    w, h = box.width, box.height
    if node.type == "start":
        return f'<circle class="shape" cx="{box.x:.1f}" cy="{box.y:.1f}" r="9"/>'
    if node.type == "condition":
        points = (
            f"{box.x:.1f},{y0:.1f} {x0 + w:.1f},{box.y:.1f} "
            f"{box.x:.1f},{y0 + h:.1f} {x0:.1f},{box.y:.1f}"
        )
        return f'<polygon class="shape" points="{points}"/>'
    if node.type == "map":
        k = 10.0
        points = (
            f"{x0 + k:.1f},{y0:.1f} {x0 + w:.1f},{y0:.1f} "
            f"{x0 + w - k:.1f},{y0 + h:.1f} {x0:.1f},{y0 + h:.1f}"
        )
        return f'<polygon class="shape" points="{points}"/>'
    radius = h / 2 if node.type == "terminal" else 6.0
    rect = (
        f'<rect class="shape" x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'rx="{radius:.1f}"/>'
    )
    if node.type in ("parallel", "subpipeline"):
        bars = "".join(
            f'<line class="bar" x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y0 + h:.1f}"/>'
            for x in (x0 + 7, x0 + w - 7)
        )
        return rect + bars
    return rect


def _route(points: tuple[tuple[float, float], ...], first: Box, last: Box) -> str:
    (x1, y1), (x2, y2) = points[0], points[-1]
    down = y2 >= y1
    start = (x1, y1 + (first.height / 2 if down else -first.height / 2))
    end = (x2, y2 - (last.height / 2 if down else -last.height / 2) - (4 if down else -4))
    pts = [start, *points[1:-1], end]
    d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
    for (ax, ay), (bx, by) in itertools.pairwise(pts):
        bend = (by - ay) / 2
        d += f" C{ax:.1f},{ay + bend:.1f} {bx:.1f},{by - bend:.1f} {bx:.1f},{by:.1f}"
    return d


@functools.lru_cache(maxsize=32)
def _layout_of(
    nodes: tuple[tuple[str, tuple[float, float]], ...], edges: tuple[tuple[str, str], ...]
) -> Layout:
    """The layout of a graph of ``nodes`` (id and size) and ``edges``, kept for the next page.

    A session page is drawn again on every load and live reload, and laying
    out a pipeline of a hundred nodes with many long edges takes seconds;
    the layout depends on nothing else, so the pages of one pipeline's
    sessions share it.
    """
    return layout([node for node, _ in nodes], dict(nodes), edges)


def draw(
    graph: Graph,
    *,
    marks: Mapping[str, NodeMarks] | None = None,
    taken: Collection[tuple[str, str, str]] = (),
    missed: Collection[tuple[str, str, str]] = (),
    title: str = "",
) -> str:
    """The graph as an SVG element (text), nodes focusable and marked.

    Args:
        graph: the drawing model of ``stageflow graph``.
        marks: node id -> what to add to it.
        taken: edges to draw as taken, as (source, drawn kind, target).
        missed: edges to draw as never taken (coverage), the same way.
        title: the SVG's accessible title.
    """
    marks = marks or {}
    placed = _layout_of(
        tuple((n.id, _size(n)) for n in graph.nodes),
        tuple((e.source, e.target) for e in graph.edges),
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="group" '
        f'aria-label="{_e(title or graph.name)}" width="{placed.width:.0f}" '
        f'height="{placed.height:.0f}" viewBox="0 0 {placed.width:.0f} {placed.height:.0f}">',
        f"<title>{_e(title or graph.name)}</title>",
        "<defs>",
    ]
    for name in ("plain", "error", "taken", "missed"):
        out.append(
            f'<marker id="arrow-{name}" class="arrow arrow-{name}" viewBox="0 0 10 10" refX="9" '
            'refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" '
            'orient="auto-start-reverse">'
            '<path d="M0,0 L10,5 L0,10 z"/></marker>'
        )
    out.append("</defs>")
    out.append('<g class="edges">')
    for edge, points in zip(graph.edges, placed.routes, strict=True):
        key = (edge.source, edge.kind.value, edge.target)
        classes = ["edge", f"edge-{edge.kind.value}"]
        marker = "error" if edge.kind is EdgeKind.ERROR else "plain"
        if key in taken:
            classes.append("taken")
            marker = "taken"
        elif key in missed:
            classes.append("missed")
            marker = "missed"
        first, last = placed.boxes[edge.source], placed.boxes[edge.target]
        if len(points) == 1:  # a self-loop, on the right of the node
            x, y = first.x + first.width / 2, first.y
            d = (
                f"M{x:.1f},{y - 8:.1f} C{x + 40:.1f},{y - 30:.1f} "
                f"{x + 40:.1f},{y + 30:.1f} {x:.1f},{y + 8:.1f}"
            )
            mid = (x + 32, y)
        else:
            d = _route(points, first, last)
            if len(points) > 2:  # a long edge: at its middle bend
                mid = points[len(points) // 2]
            else:
                (ax, ay), (bx, by) = points
                mid = (ax + (bx - ax) * 0.6, ay + (by - ay) * 0.6)
        out.append(
            f'<g class="{" ".join(classes)}" data-source="{_e(edge.source)}" '
            f'data-target="{_e(edge.target)}" data-kind="{edge.kind.value}">'
            f'<path d="{d}" marker-end="url(#arrow-{marker})"/>'
        )
        if edge.label:
            out.append(
                f'<text class="edge-label" x="{mid[0] + 4:.1f}" y="{mid[1]:.1f}">'
                f"{_e(edge.label)}</text>"
            )
        out.append("</g>")
    out.append("</g>")
    out.append('<g class="nodes">')
    for node in graph.nodes:
        box = placed.boxes[node.id]
        mark = marks.get(node.id, NodeMarks())
        classes = ["node", f"node-{node.type}"]
        if mark.state:
            classes.append(f"state-{mark.state}")
        if node.problems:
            classes.append("has-problems")
        spoken = f"{node.type} {node.id}" if node.type != "start" else "start"
        if mark.label:
            spoken += f": {mark.label}"
        if node.problems:
            spoken += f"; {len(node.problems)} problem(s)"
        focus = ' tabindex="0" role="button"' if node.type != "start" else ""
        out.append(
            f'<g class="{" ".join(classes)}" data-node="{_e(node.id)}" '
            f'data-type="{_e(node.type)}" data-state="{_e(mark.state)}"{focus} '
            f'aria-label="{_e(spoken)}">'
        )
        tip = "\n".join([spoken, *node.problems])
        out.append(f"<title>{_e(tip)}</title>")
        out.append(_shape(node, box))
        if node.type != "start":
            top = box.y - (_LINE / 2 if node.detail else -4)
            out.append(
                f'<text class="node-id" x="{box.x:.1f}" y="{top + 4:.1f}">{_e(node.id)}</text>'
            )
            if node.detail:
                out.append(
                    f'<text class="node-detail" x="{box.x:.1f}" y="{top + _LINE + 4:.1f}">'
                    f"{_e(node.detail)}</text>"
                )
        badge = mark.badge or ("!" if node.problems else "")
        if badge:
            bx, by = box.x + box.width / 2 - 4, box.y - box.height / 2
            out.append(
                f'<g class="badge"><rect x="{bx - 14:.1f}" y="{by - 9:.1f}" width="26" '
                f'height="18" rx="9"/><text x="{bx - 1:.1f}" y="{by + 4:.1f}">'
                f"{_e(badge)}</text></g>"
            )
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out)
