"""Reading ``stageflow graph --format dot`` back, and the edges the reference example draws."""

from __future__ import annotations

import warnings

import pydot

with warnings.catch_warnings():
    # pydot's parser module still calls pyparsing's pre-3.0 names when it is imported.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pydot.dot_parser

# The reference example's edges: source, target, arrow style, label.
REFERENCE_EDGES = {
    ("__start__", "start", "solid", None),
    ("start", "decide", "solid", None),
    ("decide", "fanout", "solid", "if #1"),
    ("decide", "finish", "solid", "else"),
    ("fanout", "branch_a", "dashed", "branch 1"),
    ("fanout", "branch_b", "dashed", "branch 2"),
    ("fanout", "finish", "bold", "join"),
    ("branch_a", "finish", "dotted", None),
    ("branch_b", "finish", "dotted", None),
}


def unquote(text: str) -> str:
    """``text`` without the double quotes DOT may put around it."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], set[tuple[str, ...]]]:
    """Node name -> attributes; and the edges as (source, target, style, label)."""
    graphs = pydot.graph_from_dot_data(text)
    assert graphs is not None
    assert len(graphs) == 1
    graph = graphs[0]
    nodes = {
        unquote(n.get_name()): {k: unquote(v) for k, v in n.get_attributes().items()}
        for n in graph.get_nodes()
        if n.get_name() not in ("node", "edge", "graph")
    }
    edges = set()
    for edge in graph.get_edges():
        attributes = {k: unquote(v) for k, v in edge.get_attributes().items()}
        source, target = unquote(edge.get_source()), unquote(edge.get_destination())
        assert source in nodes
        assert target in nodes
        edges.add((source, target, attributes.get("style", "solid"), attributes.get("label")))
    return nodes, edges
