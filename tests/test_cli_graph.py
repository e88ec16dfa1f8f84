"""The CLI: `stageflow graph`, its formats and invalid pipelines drawn with their problems."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydot
import pytest
from cli_support import (
    FAILING_STAGES,
    PIPELINE,
    STAGES,
    Cli,
    restore_logging,  # noqa: F401  (autouse fixture)
    write_json,
    write_module,
)
from fakes import doc, parallel, stage, terminal
from graph_support import REFERENCE_EDGES, parse_dot, unquote

from stageflow.cli import ExitCode

# ------------------------------------------------------------------------ graph

MERMAID_EDGE = re.compile(r'^    (\S+) (-->|-\.->|==>)(?:\|"([^"]*)"\|)? (\S+)$')
MERMAID_NODE = re.compile(r'^    (\w+)(\(\(|\[\[|\(\[|\[|\{)"(.*)"(\)\)|\]\]|\]\)|\]|\})$')

MERMAID_STYLE = {"-->": "solid", "-.->": "dotted", "==>": "bold"}


def parse_mermaid(text: str) -> tuple[dict[str, tuple[str, str]], set[tuple[str, ...]]]:
    """Node id -> (opening bracket, label); and the edges, every line accounted for."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: set[tuple[Any, ...]] = set()
    for line in lines[1:]:
        if line.startswith(("    %%", "    classDef ", "    class ", "    linkStyle ")):
            continue
        if match := MERMAID_EDGE.match(line):
            source, arrow, label, target = match.groups()
            assert {source, target} <= nodes.keys(), line
            edges.add((source, target, MERMAID_STYLE[arrow], label))
        elif match := MERMAID_NODE.match(line):
            nodes[match[1]] = (match[2], match[3])
        else:
            pytest.fail(f"unexpected Mermaid line: {line!r}")
    return nodes, edges


def test_graph_mermaid_draws_every_node_and_edge(cli: Cli) -> None:
    got = cli("graph", PIPELINE)
    assert got.code == ExitCode.OK, got.err
    nodes, edges = parse_mermaid(got.out)
    assert nodes == {
        "__start__": ("((", "start"),
        "start": ("[", "start<br/>stage: InitStage"),
        "decide": ("{", "decide<br/>condition: 1 rule"),
        "fanout": ("[[", "fanout<br/>parallel: all"),
        "branch_a": ("[", "branch_a<br/>stage: WorkerAStage"),
        "branch_b": ("[", "branch_b<br/>stage: WorkerBStage"),
        "finish": ("([", "finish<br/>terminal"),
    }
    # Mermaid has one dotted style: branches are told apart from branch ends by the label.
    expected = {(s, t, "dotted" if st == "dashed" else st, lb) for s, t, st, lb in REFERENCE_EDGES}
    assert edges == expected
    assert "    class finish terminal" in got.out.splitlines()


def test_graph_dot_draws_every_node_and_edge(cli: Cli) -> None:
    got = cli("graph", PIPELINE, "--format", "dot")
    assert got.code == ExitCode.OK, got.err
    nodes, edges = parse_dot(got.out)
    assert edges == REFERENCE_EDGES
    shapes = {name: (a["shape"], a.get("label")) for name, a in nodes.items()}
    assert shapes == {
        "__start__": ("point", None),
        "start": ("box", "start\\nstage: InitStage"),
        "decide": ("diamond", "decide\\ncondition: 1 rule"),
        "fanout": ("hexagon", "fanout\\nparallel: all"),
        "branch_a": ("box", "branch_a\\nstage: WorkerAStage"),
        "branch_b": ("box", "branch_b\\nstage: WorkerBStage"),
        "finish": ("box", "finish\\nterminal"),
    }
    assert nodes["finish"]["peripheries"] == "2"


def test_graph_json_lists_nodes_and_typed_edges(cli: Cli) -> None:
    data = cli("graph", PIPELINE, "--format", "json").json()
    assert [n["id"] for n in data["nodes"]] == [
        "__start__",
        "start",
        "decide",
        "fanout",
        "branch_a",
        "branch_b",
        "finish",
    ]
    kinds = {(e["source"], e["target"]): e["kind"] for e in data["edges"]}
    assert kinds[("fanout", "finish")] == "join"
    assert kinds[("branch_a", "finish")] == "branch_end"
    assert kinds[("decide", "finish")] == "else"
    assert len(data["edges"]) == len(REFERENCE_EDGES)


def nested_pipeline() -> dict[str, Any]:
    """An outer parallel whose second branch holds an inner parallel; awkward ids."""
    return doc(
        [
            parallel("outer", ["a-1", "inner"], next="end"),
            stage("a-1", 'Say "hi"', next="a.2"),
            stage("a.2", "Work"),
            parallel("inner", ["x", "y"], next="after", policy="any"),
            stage("x", "Work"),
            stage("y", "Work", next="after"),
            stage("after", "Work"),
            terminal("end"),
        ]
    )


NESTED_EDGES = {
    ("__start__", "outer", "solid", None),
    ("outer", "a-1", "dashed", "branch 1"),
    ("outer", "inner", "dashed", "branch 2"),
    ("outer", "end", "bold", "join"),
    ("a-1", "a.2", "solid", None),
    ("a.2", "end", "dotted", None),
    ("inner", "x", "dashed", "branch 1"),
    ("inner", "y", "dashed", "branch 2"),
    ("inner", "after", "bold", "join"),
    ("x", "after", "dotted", None),
    ("y", "after", "solid", None),
    ("after", "end", "dotted", None),
}


def test_graph_nested_branches_end_at_their_own_join(cli: Cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "nested.json", nested_pipeline())
    nodes, edges = parse_dot(cli("graph", path, "--format", "dot").out)
    assert edges == NESTED_EDGES
    assert nodes["a-1"]["label"] == 'a-1\\nstage: Say \\"hi\\"'


def test_graph_mermaid_renames_ids_it_cannot_use(cli: Cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "nested.json", nested_pipeline())
    nodes, edges = parse_mermaid(cli("graph", path).out)
    labels = {
        "__start__" if shape == "((" else label.split("<br/>")[0]: mermaid_id
        for mermaid_id, (shape, label) in nodes.items()
    }
    assert labels["a-1"] != "a-1"
    assert labels["a.2"] != "a.2"
    assert labels["end"] != "end"
    assert nodes[labels["a-1"]][1] == "a-1<br/>stage: Say #quot;hi#quot;"
    named = {
        (
            next(k for k, v in labels.items() if v == s),
            next(k for k, v in labels.items() if v == t),
            "dashed" if st == "dotted" and lb and lb.startswith("branch") else st,
            lb,
        )
        for s, t, st, lb in edges
    }
    assert named == {(s, t, st, lb) for s, t, st, lb in NESTED_EDGES}


# Valid node ids that Mermaid 11's flowchart lexer reads as keywords (``href``, a
# ``call`` before a space, ``interpolate``, the link targets): "stageflow graph"
# wrote them as they were, and Mermaid refused the whole chart ("Parse error ...
# got 'HREF'"). Its lexer is case-sensitive: "HREF" or "Call" parse.
@pytest.mark.parametrize(
    "node_id", ["href", "call", "interpolate", "_self", "_blank", "_parent", "_top"]
)
def test_graph_mermaid_renames_ids_mermaid_reads_as_keywords(
    cli: Cli, tmp_path: Path, node_id: str
) -> None:
    document = doc([stage("first", "Work", next=node_id), stage(node_id, "Work", next="end")])
    document["nodes"].append(terminal("end"))
    path = write_json(tmp_path / "keyword.json", document)
    nodes, edges = parse_mermaid(cli("graph", path).out)
    (renamed,) = (k for k, (_, label) in nodes.items() if label.startswith(f"{node_id}<br/>"))
    assert renamed != node_id
    assert ("first", renamed, "solid", None) in edges


def error_edge_pipeline() -> dict[str, Any]:
    """A branch whose stage routes timeouts to one handler and anything else to another."""
    ask = stage("ask", "Ask", next="done")
    ask["on_error"] = [{"errors": ["InputTimeoutError", "StageError"], "next": "late"}]
    ask["fallback"] = "broken"
    fan = parallel("fan", ["ask", "side"], next="end")
    fan["fallback"] = "end"
    return doc(
        [
            fan,
            ask,
            stage("done", "Work"),
            stage("late", "Work"),
            stage("broken", "Work"),
            stage("side", "Work"),
            terminal("end"),
        ]
    )


ERROR_EDGES = {
    ("__start__", "fan", "solid", None),
    ("fan", "ask", "dashed", "branch 1"),
    ("fan", "side", "dashed", "branch 2"),
    ("fan", "end", "bold", "join"),
    ("fan", "end", "dashed", "fallback"),
    ("ask", "done", "solid", None),
    ("ask", "late", "dashed", "on InputTimeoutError, StageError"),
    ("ask", "broken", "dashed", "fallback"),
    ("done", "end", "dotted", None),
    ("late", "end", "dotted", None),
    ("broken", "end", "dotted", None),
    ("side", "end", "dotted", None),
}


def test_graph_draws_error_edges_in_red(cli: Cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "errors.json", error_edge_pipeline())
    out = cli("graph", path, "--format", "dot").out
    assert parse_dot(out)[1] == ERROR_EDGES
    graph = pydot.graph_from_dot_data(out)
    assert graph is not None
    colors = {
        (unquote(e.get_source()), unquote(e.get_destination()), unquote(e.get("label") or "")): (
            e.get("color")
        )
        for e in graph[0].get_edges()
    }
    assert colors[("ask", "late", "on InputTimeoutError, StageError")] == '"#c0392b"'
    assert colors[("fan", "end", "fallback")] == '"#c0392b"'
    assert colors[("fan", "end", "join")] is None


def test_graph_mermaid_colours_exactly_the_error_edges(cli: Cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "errors.json", error_edge_pipeline())
    text = cli("graph", path).out
    edge_lines = [line for line in text.splitlines() if MERMAID_EDGE.match(line)]
    styled = next(line for line in text.splitlines() if line.startswith("    linkStyle "))
    indexes = [int(i) for i in styled.split()[1].split(",")]
    assert {edge_lines[i].split("|")[1] for i in indexes} == {
        '"on InputTimeoutError, StageError"',
        '"fallback"',
    }
    assert len(indexes) == 3
    _, edges = parse_mermaid(text)
    assert len(edges) == len(ERROR_EDGES)


def test_graph_checks_stage_names_only_when_stages_are_given(cli: Cli, tmp_path: Path) -> None:
    assert cli("graph", PIPELINE).code == ExitCode.OK
    assert cli("graph", PIPELINE, "--stages", STAGES).code == ExitCode.OK
    other = write_module(tmp_path / "other_stages.py", FAILING_STAGES)
    got = cli("graph", PIPELINE, "--stages", other)
    assert got.code == ExitCode.USAGE
    assert "'InitStage', which is not registered" in got.err
