"""A layered (Sugiyama-style) layout of a pipeline graph, small on purpose.

Why not a library: the one maintained-looking choice in Python, grandalf, has
had no release since 2023, ships no types (``mypy --strict`` would need it
silenced) and gives spline routing the SVG does not need. Pipelines are tens
of nodes, so the textbook steps fit in this module and stay deterministic:

1. cycles are broken by reversing the back edges a depth-first walk from the
   start finds (loops drawn upwards);
2. layers by longest path from the sources;
3. an edge that spans several layers gets a dummy point per layer crossed
   (while a budget for the whole graph lasts; then it is drawn straight);
4. the order inside each layer is improved by barycentre sweeps (down, up),
   starting from the order of the walk, keeping the order with the fewest
   crossings;
5. x positions: each node moves towards the mean of its neighbours, then the
   layer is pushed apart left to right so nothing overlaps.

The result is a plain record: node boxes and, per edge, the points its line
goes through.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import attrs

__all__ = ["Box", "Layout", "layout"]

_LAYER_GAP = 70.0
_NODE_GAP = 36.0
_MARGIN = 24.0
_SWEEPS = 8
# Most bend points all long edges get together. An edge gets one per layer it
# crosses, so a chain of n nodes whose error edges all lead to one handler
# has n * n / 2 of them: 1,600 nodes took minutes. Past the budget an edge
# is drawn straight.
_BENDS = 10_000


@attrs.frozen
class Box:
    """Where a node is drawn: centre ``x``, ``y`` and size."""

    x: float
    y: float
    width: float
    height: float


@attrs.frozen
class Layout:
    """Node boxes, and the points of each edge (by its index in the input), in pixels."""

    boxes: Mapping[str, Box]
    routes: tuple[tuple[tuple[float, float], ...], ...]
    width: float
    height: float


def _back_edges(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> set[int]:
    """Indices of the edges that close a cycle, in a depth-first walk in input order."""
    out: dict[str, list[tuple[int, str]]] = {n: [] for n in nodes}
    for i, (a, b) in enumerate(edges):
        out[a].append((i, b))
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    back: set[int] = set()
    for root in nodes:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, k = stack.pop()
            if k < len(out[node]):
                stack.append((node, k + 1))
                i, target = out[node][k]
                if state.get(target) == 1:
                    back.add(i)
                elif target not in state:
                    state[target] = 1
                    stack.append((target, 0))
            else:
                state[node] = 2
    return back


def _crossings(order: list[list[str]], down: Mapping[str, list[str]]) -> int:
    """How many pairs of edges cross between neighbouring layers.

    Per pair of layers, the edges sorted by their upper end: two cross when
    the later one's lower end is strictly left of the earlier one's, counted
    with a Fenwick tree over the lower positions (``n log n``; comparing
    every pair of edges took minutes for a chain of hundreds of nodes whose
    error edges all pass through every layer).
    """
    count = 0
    for upper, lower in itertools.pairwise(order):
        where = {n: i for i, n in enumerate(lower)}
        pairs = sorted((i, where[t]) for i, n in enumerate(upper) for t in down[n] if t in where)
        size = len(lower)
        tree = [0] * (size + 1)  # tree[k]: how many lower ends seen so far, by position
        for seen, (_, b) in enumerate(pairs):
            k, at_most = b + 1, 0
            while k:
                at_most += tree[k]
                k -= k & -k
            count += seen - at_most  # seen before, strictly right of this one
            k = b + 1
            while k <= size:
                tree[k] += 1
                k += k & -k
    return count


def layout(
    nodes: Sequence[str],
    sizes: Mapping[str, tuple[float, float]],
    edges: Sequence[tuple[str, str]],
) -> Layout:
    """Lay out ``nodes`` (in a stable order, the start first) joined by ``edges``.

    Args:
        nodes: node ids; the first is the graph's start.
        sizes: node id -> (width, height).
        edges: (source, target) pairs; self-loops and repeated pairs are allowed.
    """
    back = _back_edges(nodes, edges)
    dag = [
        (b, a) if i in back else (a, b) for i, (a, b) in enumerate(edges) if a != b
    ]  # self-loops take no part in layering
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in dag:
        preds[b].append(a)
    layer: dict[str, int] = {}

    def depth(node: str) -> int:
        # Iterative longest path (the DAG may be deep enough to hit the recursion limit).
        todo = [node]
        while todo:
            current = todo[-1]
            missing = [p for p in preds[current] if p not in layer]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            layer[current] = max((layer[p] + 1 for p in preds[current]), default=0)
        return layer[node]

    for node in nodes:
        depth(node)
    # Dummy points for long edges; chains[i] is the vertical path of edge i.
    down: dict[str, list[str]] = {n: [] for n in nodes}
    up: dict[str, list[str]] = {n: [] for n in nodes}
    chains: list[list[str]] = []
    bends = _BENDS
    for i, (a, b) in enumerate(edges):
        if a == b:
            chains.append([a])
            continue
        top, bottom = (b, a) if i in back else (a, b)
        chain = [top]
        crossed = range(layer[top] + 1, layer[bottom])
        if len(crossed) <= bends:  # past the budget, drawn straight
            bends -= len(crossed)
            for k in crossed:
                dummy = f"\0{i}:{k}"
                layer[dummy] = k
                down[dummy], up[dummy] = [], []
                chain.append(dummy)
        chain.append(bottom)
        for u, v in itertools.pairwise(chain):
            down[u].append(v)
            up[v].append(u)
        chains.append(chain if i not in back else chain[::-1])
    height_of = max(layer.values(), default=0) + 1
    order: list[list[str]] = [[] for _ in range(height_of)]
    seen: set[str] = set()
    walk = list(nodes[:1])
    while walk:  # breadth-first from the start, then the rest in input order
        node = walk.pop(0)
        if node in seen:
            continue
        seen.add(node)
        order[layer[node]].append(node)
        walk.extend(down[node])
    for node in [*nodes, *layer]:
        if node not in seen:
            seen.add(node)
            order[layer[node]].append(node)
    best = [list(row) for row in order]
    best_count = _crossings(best, down)
    for sweep in range(_SWEEPS):
        rows = range(1, height_of) if sweep % 2 == 0 else range(height_of - 2, -1, -1)
        for r in rows:
            ref = order[r - 1] if sweep % 2 == 0 else order[r + 1]
            where = {n: i for i, n in enumerate(ref)}
            links = up if sweep % 2 == 0 else down

            current = {n: i for i, n in enumerate(order[r])}
            centre = {
                n: sum(where[m] for m in links[n] if m in where)
                / max(1, sum(1 for m in links[n] if m in where))
                if any(m in where for m in links[n])
                else float(current[n])
                for n in order[r]
            }
            order[r] = sorted(order[r], key=centre.__getitem__)
        count = _crossings(order, down)
        if count < best_count:
            best, best_count = [list(row) for row in order], count
    order = best

    def size(node: str) -> tuple[float, float]:
        return sizes.get(node, (0.0, 0.0))

    x: dict[str, float] = {}
    for row in order:
        cursor = 0.0
        for node in row:
            w = size(node)[0]
            x[node] = cursor + w / 2
            cursor += w + _NODE_GAP
    for sweep in range(4):
        rows = range(1, height_of) if sweep % 2 == 0 else range(height_of - 2, -1, -1)
        links = up if sweep % 2 == 0 else down
        for r in rows:
            row = order[r]
            want = {
                n: sum(x[m] for m in links[n]) / len(links[n]) if links[n] else x[n] for n in row
            }
            placed: list[float] = []
            for k, node in enumerate(row):
                lowest = (
                    placed[-1] + (size(row[k - 1])[0] + size(node)[0]) / 2 + _NODE_GAP
                    if k
                    else -1e9
                )
                placed.append(max(want[node], lowest))
            # Pushed right only: shift back so the row's mean offset is zero.
            shift = sum(p - want[n] for p, n in zip(placed, row, strict=True)) / len(row)
            for node, p in zip(row, placed, strict=True):
                x[node] = p - shift
    left = min((x[n] - size(n)[0] / 2 for n in x), default=0.0)
    y_of: list[float] = []
    cursor = _MARGIN
    for row in order:
        tallest = max((size(n)[1] for n in row), default=0.0)
        y_of.append(cursor + tallest / 2)
        cursor += tallest + _LAYER_GAP
    boxes = {n: Box(x[n] - left + _MARGIN, y_of[layer[n]], *size(n)) for n in nodes}
    points = {n: (x[n] - left + _MARGIN, y_of[layer[n]]) for n in layer if n not in boxes}
    routes = tuple(
        tuple((boxes[n].x, boxes[n].y) if n in boxes else points[n] for n in chain)
        for chain in chains
    )
    right = max((b.x + b.width / 2 for b in boxes.values()), default=0.0)
    right = max([right, *(p[0] for p in points.values())])
    return Layout(boxes, routes, right + _MARGIN * 2, cursor - _LAYER_GAP + _MARGIN)
