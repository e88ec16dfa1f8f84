"""The ``stageflow`` command line, called in-process through ``main(argv)``.

A few tests at the end run the installed ``stageflow`` entry point in a real
subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pydot
import pytest

with warnings.catch_warnings():
    # pydot's parser module still calls pyparsing's pre-3.0 names when it is imported.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pydot.dot_parser
from cli_support import restore_logging  # noqa: F401  (autouse fixture)
from fakes import doc, parallel, stage, terminal

import stageflow
import stageflow._plugins
import stageflow.tracing
from stageflow._stages import default_registry
from stageflow.cli import ExitCode, main

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "reference"
PIPELINE = str(EXAMPLE / "pipeline.json")
STAGES = str(EXAMPLE / "stages.py")
SUBCOMMANDS = ("run", "validate", "schema", "graph", "stages", "test")


@attrs.frozen
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Outcome]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def call(*argv: str) -> Outcome:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return call


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value, indent=2))
    return str(path)


def write_module(path: Path, source: str) -> str:
    path.write_text(textwrap.dedent(source))
    return str(path)


# --------------------------------------------------------------------------- run


def test_run_reference_pipeline_prints_the_result_as_json(cli: Cli) -> None:
    payload = json.dumps({"user_id": "u1", "text": "one two three four five"})
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", payload, "--json")
    assert got.code == ExitCode.OK, got.err
    data = got.json()
    assert data == {
        "status": "completed",
        "result": {"status": "ok"},
        "artifacts": {"score": 5, "a_result": 10, "b_result": "high"},
        "error": None,
    }


def test_run_without_stages_says_to_pass_them(cli: Cli) -> None:
    got = cli("run", PIPELINE)
    assert got.code == ExitCode.USAGE
    assert "'InitStage', which is not registered" in got.err
    assert got.err.rstrip().endswith(
        "pass --stages MODULE (a module name or a .py file that registers them)"
    )


def test_run_json_includes_the_history_on_request(cli: Cli) -> None:
    got = cli(
        "run", PIPELINE, "--stages", STAGES, "--payload", '{"text": "hi"}', "--json", "--history"
    )
    assert got.code == ExitCode.OK, got.err
    history = got.json()["history"]
    started = [e["node_id"] for e in history if e["type"] == "node_started"]
    assert started == ["start", "decide", "finish"]
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))


def test_run_prints_a_summary_for_people(cli: Cli) -> None:
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", '{"text": "a b c"}', "--history")
    assert got.code == ExitCode.OK, got.err
    lines = got.out.splitlines()
    assert lines[0].startswith("completed: demo_full_flow (6 node runs, session ")
    assert 'result: {"status": "ok"}' in lines
    assert lines[lines.index("artifacts:") + 1 :][:3] == [
        "  score: 3",
        "  a_result: 6",
        '  b_result: "low"',
    ]
    assert any(re.match(r"\s+3 scored\s+start\s+-\s+\{\"score\": 3", line) for line in lines)


def test_run_reads_the_payload_from_a_file(cli: Cli, tmp_path: Path) -> None:
    payload = write_json(tmp_path / "payload.json", {"text": "x y z w"})
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", f"@{payload}", "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["artifacts"]["score"] == 4


def test_run_imports_stages_by_module_name_from_the_current_directory(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLE)
    got = cli("run", "pipeline.json", "--stages", "stages", "--payload", '{"text": "hi"}', "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["status"] == "completed"


FAILING_STAGES = """
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Boom")
    async def boom(ctx):
        raise ValueError("the disk is full")
"""


def test_run_exits_1_when_the_session_fails(cli: Cli, tmp_path: Path) -> None:
    stages = write_module(tmp_path / "failing_stages.py", FAILING_STAGES)
    pipeline = write_json(
        tmp_path / "p.json", doc([stage("work", "Boom", next="end"), terminal("end")])
    )
    got = cli("run", pipeline, "--stages", stages)
    assert got.code == ExitCode.FAILED
    assert got.out.startswith("failed: pipeline")
    assert "error: StageError: stage 'Boom' at node 'work' failed on attempt 1" in got.out
    assert "caused by ValueError: the disk is full" in got.out
    data = cli("run", pipeline, "--stages", stages, "--json").json()
    assert data["status"] == "failed"
    assert data["error"]["type"] == "StageError"
    assert data["result"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--payload", "{not json"], "--payload: not valid JSON at line 1 column 2"),
        (["--payload", "[1, 2]"], "--payload must be a JSON object"),
        (["--payload", "@/nonexistent/payload.json"], "--payload: cannot read"),
        (["--input", "no-equals-sign"], "expected TYPE=JSON"),
        (["--input", "=1"], "expected TYPE=JSON"),
        (["--input", "approval={"], "--input approval: not valid JSON at line 1 column 2"),
    ],
)
def test_run_rejects_bad_options_with_exit_2(cli: Cli, argv: list[str], message: str) -> None:
    got = cli("run", PIPELINE, "--stages", STAGES, *argv)
    assert got.code == ExitCode.USAGE
    assert message in got.err
    assert got.out == ""


def test_run_rejects_an_invalid_pipeline_with_its_problems(cli: Cli) -> None:
    got = cli("run", PIPELINE)  # no --stages: the stage names are unknown
    assert got.code == ExitCode.USAGE
    assert f"{PIPELINE}: $.nodes[0].stage: stage node 'start' uses stage 'InitStage'" in got.err


# ---------------------------------------------------------------------- validate


def broken_schema_copy() -> dict[str, Any]:
    """The reference pipeline with three schema-level problems."""
    data = json.loads(Path(PIPELINE).read_text())
    data["api_version"] = "2.0"
    data["nodes"][2]["policy"] = "most"
    data["nodes"][3]["nxt"] = "finish"
    return data


def broken_graph_copy() -> dict[str, Any]:
    """The reference pipeline with three graph-level problems."""
    data = json.loads(Path(PIPELINE).read_text())
    data["entry"] = "begin"
    data["nodes"][1]["conditions"][0]["then"] = "nowhere"
    data["nodes"][4]["stage"] = "WorkerCStage"
    return data


def test_validate_prints_every_problem_of_every_file_with_its_location(
    cli: Cli, tmp_path: Path
) -> None:
    schema_bad = write_json(tmp_path / "schema_bad.json", broken_schema_copy())
    graph_bad = write_json(tmp_path / "graph_bad.json", broken_graph_copy())
    got = cli("validate", PIPELINE, schema_bad, graph_bad, "--stages", STAGES)
    assert got.code == ExitCode.USAGE
    lines = got.out.splitlines()
    assert lines[0] == f"{PIPELINE}: valid (6 nodes)"
    problems = {tuple(line.split(": ", 2)[:2]) for line in lines[1:-1]}
    assert problems == {
        (schema_bad, "$.api_version"),
        (schema_bad, "$.nodes[2].policy"),
        (schema_bad, "$.nodes[3]"),
        (graph_bad, "$.entry"),
        (graph_bad, "$.nodes[1].conditions[0].then"),
        (graph_bad, "$.nodes[4].stage"),
    }
    assert "'nxt'" in got.out
    assert "'WorkerCStage', which is not registered" in got.out
    assert lines[-1] == "2 of 3 files not valid, 6 problems"


def test_validate_json_report(cli: Cli, tmp_path: Path) -> None:
    graph_bad = write_json(tmp_path / "graph_bad.json", broken_graph_copy())
    got = cli("validate", PIPELINE, graph_bad, "--stages", STAGES, "--json")
    assert got.code == ExitCode.USAGE
    ok, bad = got.json()
    assert ok == {"file": PIPELINE, "valid": True, "nodes": 6, "problems": []}
    assert bad["valid"] is False
    assert [p["location"] for p in bad["problems"]] == [
        "$.entry",
        "$.nodes[1].conditions[0].then",
        "$.nodes[4].stage",
    ]
    assert all(p["message"] for p in bad["problems"])


def test_validate_exits_0_when_every_file_is_valid(cli: Cli) -> None:
    got = cli("validate", PIPELINE, "--stages", STAGES)
    assert (got.code, got.out) == (ExitCode.OK, f"{PIPELINE}: valid (6 nodes)\n")


def test_validate_structure_only_ignores_stage_names(cli: Cli, tmp_path: Path) -> None:
    got = cli("validate", PIPELINE)
    assert got.code == ExitCode.USAGE
    assert "that registers them), or --structure-only to skip them" in got.err
    assert cli("validate", PIPELINE, "--structure-only").code == ExitCode.OK
    graph_bad = write_json(tmp_path / "graph_bad.json", broken_graph_copy())
    got = cli("validate", graph_bad, "--structure-only", "--json")
    assert [p["location"] for p in got.json()[0]["problems"]] == [
        "$.entry",
        "$.nodes[1].conditions[0].then",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the file"),
        ("{ broken", "not valid JSON at line 1 column 3"),
        ("[1, 2]", "a pipeline document is a JSON object, got list"),
    ],
)
def test_validate_reports_unreadable_files_as_problems(
    cli: Cli, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    got = cli("validate", str(path), "--structure-only")
    assert got.code == ExitCode.USAGE
    assert f"{path}: $: " in got.out
    assert message in got.out


def test_validate_reads_yaml(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("api_version: '1.0'\nentry: end\nnodes:\n  - {id: end, type: terminal}\n")
    assert cli("validate", str(path)).code == ExitCode.OK


# ------------------------------------------------------------------------ graph

MERMAID_EDGE = re.compile(r'^    (\S+) (-->|-\.->|==>)(?:\|"([^"]*)"\|)? (\S+)$')
MERMAID_NODE = re.compile(r'^    (\w+)(\(\(|\[\[|\(\[|\[|\{)"(.*)"(\)\)|\]\]|\]\)|\]|\})$')

# source, target, arrow style, label
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


def unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], set[tuple[str, ...]]]:
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


# ----------------------------------------------------------------------- schema


def test_schema_prints_the_draft_2020_12_pipeline_schema(cli: Cli) -> None:
    got = cli("schema")
    assert got.code == ExitCode.OK
    schema = got.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    assert "enum" not in schema["$defs"]["stage_node"]["properties"]["stage"]


def test_schema_with_stages_lists_the_registered_names(cli: Cli) -> None:
    got = cli("schema", "--with-stages", "--stages", STAGES, "--no-plugins")
    assert got.code == ExitCode.OK
    schema = got.json()
    jsonschema.Draft202012Validator.check_schema(schema)
    stage_field = schema["$defs"]["stage_node"]["properties"]["stage"]
    names = ["InitStage", "SleepStage", "WaitStage", "WorkerAStage", "WorkerBStage"]
    assert stage_field["enum"] == names
    assert f"Registered stages: {', '.join(names)}." in stage_field["description"]
    validator = jsonschema.Draft202012Validator(schema)
    reference = json.loads(Path(PIPELINE).read_text())
    assert list(validator.iter_errors(reference)) == []
    reference["nodes"][3]["stage"] = "WorkerCStage"
    assert [list(e.absolute_path) for e in validator.iter_errors(reference)] == [
        ["nodes", 3, "stage"]
    ]


def test_pipeline_schema_returns_a_fresh_copy() -> None:
    first = stageflow.pipeline_schema(["B", "A", "B"])
    assert first["$defs"]["stage_node"]["properties"]["stage"]["enum"] == ["A", "B"]
    first["$defs"].clear()
    assert "stage_node" in stageflow.pipeline_schema()["$defs"]
    assert "enum" not in stageflow.pipeline_schema()["$defs"]["stage_node"]["properties"]["stage"]


@pytest.mark.parametrize("bad", ["", 3, None])
def test_pipeline_schema_rejects_bad_stage_names(bad: Any) -> None:
    with pytest.raises(stageflow.RegistryError, match="stage names must be non-empty strings"):
        stageflow.pipeline_schema(["ok", bad])


# ----------------------------------------------------------------------- stages


def test_stages_prints_the_catalogue(cli: Cli) -> None:
    got = cli("stages", "--stages", STAGES, "--no-plugins")
    assert got.code == ExitCode.OK
    lines = got.out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert names == ["InitStage", "SleepStage", "WaitStage", "WorkerAStage", "WorkerBStage"]
    assert "WaitStage  (stageflow (core))" in lines
    assert lines[:5] == [
        "InitStage  (stages.InitStage)",
        "    Score a text and decide whether to fan out",
        "    arguments: user_id, text (required)",
        "    config:    mode",
        "    outputs:   score, need_parallel",
    ]
    assert "WorkerAStage  (stages.worker_a)" in got.out
    assert "WorkerBStage  (stages.worker_b)" in got.out


def test_stages_json_has_the_full_specs(cli: Cli) -> None:
    entries = {e["name"]: e for e in cli("stages", "--stages", STAGES, "--json").json()}
    assert {"InitStage", "WorkerAStage", "WorkerBStage", "WaitStage", "EchoLLM"} <= set(entries)
    init = entries["InitStage"]
    assert init["source"] == "stages.InitStage"
    assert init["spec"]["arguments"]["required"] == ["text"]
    assert init["spec"]["config"]["properties"]["mode"] == {"enum": ["demo", "strict"]}
    assert init["spec"]["allowed_inputs"] == []
    assert entries["WorkerAStage"]["spec"]["arguments"] is None
    wait = entries["WaitStage"]["spec"]
    assert wait["config"]["required"] == ["input"]


def test_stages_lists_inputs_and_events(cli: Cli, tmp_path: Path) -> None:
    module = write_module(
        tmp_path / "io_stages.py",
        """
        import stageflow

        registry = stageflow.StageRegistry()


        @registry.register("Ask")
        class Ask(stageflow.BaseStage):
            spec = stageflow.StageSpec(
                description="Ask a person",
                allowed_inputs=[stageflow.InputSpec("answer", {"type": "string"}, "the reply")],
                allowed_events=[stageflow.EventSpec("asked")],
            )

            async def run(self, ctx):
                return None
        """,
    )
    got = cli("stages", "--stages", module)
    assert "    inputs:    answer" in got.out.splitlines()
    assert "    events:    asked" in got.out.splitlines()
    spec = cli("stages", "--stages", module, "--json").json()[0]["spec"]
    assert spec["allowed_inputs"] == [
        {"type": "answer", "description": "the reply", "schema": {"type": "string"}}
    ]


# ------------------------------------------------------- stage modules and packs


@pytest.fixture
def default_stage_names() -> Iterator[list[str]]:
    """Remove what a test registers into the process-wide default registry."""
    added: list[str] = []
    yield added
    for name in added:
        default_registry()._entries.pop(name, None)


def test_a_module_without_registry_registers_into_the_default_one(
    cli: Cli, tmp_path: Path, default_stage_names: list[str]
) -> None:
    default_stage_names.append("CliTestDefault")
    module = write_module(
        tmp_path / "default_stages.py",
        """
        import stageflow


        @stageflow.register_stage("CliTestDefault")
        async def stage(ctx):
            return {"done": True}
        """,
    )
    pipeline = write_json(
        tmp_path / "p.json",
        doc([stage("s", "CliTestDefault", next="end", outputs={"done": "done"}), terminal("end")]),
    )
    got = cli("run", pipeline, "--stages", module, "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["status"] == "completed"
    # Imported again by a second command in the same process: no conflict.
    assert cli("stages", "--stages", module).code == ExitCode.OK


def test_built_in_stages_come_with_stages_stageflow_builtins(cli: Cli, tmp_path: Path) -> None:
    pipeline = write_json(
        tmp_path / "p.json",
        doc(
            [
                {
                    "id": "count",
                    "type": "stage",
                    "stage": "builtins.increment",
                    "arguments": {"value": "n"},
                    "outputs": {"value": "n"},
                    "next": "end",
                },
                terminal("end", "n"),
            ]
        ),
    )
    assert cli("validate", pipeline).code == ExitCode.USAGE
    got = cli("run", pipeline, "--stages", "stageflow.builtins", "--payload", '{"n": 41}', "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["artifacts"] == {"n": 42}


def test_one_name_from_two_modules_is_a_conflict(cli: Cli, tmp_path: Path) -> None:
    first = write_module(tmp_path / "first_stages.py", FAILING_STAGES)
    second = write_module(tmp_path / "second_stages.py", FAILING_STAGES)
    got = cli("stages", "--stages", first, "--stages", second)
    assert got.code == ExitCode.USAGE
    assert "stage name 'Boom' is registered by both first_stages.boom and second_stages.boom" in (
        got.err
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("registry = {}\n", "its 'registry' attribute is a dict, not a stageflow.StageRegistry"),
        ("def registry():\n    return 1\n", "its 'registry' attribute is a int, not a"),
        ("raise RuntimeError('no config')\n", "importing it raised RuntimeError: no config"),
        ("import no_such_dependency_xyz\n", "importing it raised ModuleNotFoundError"),
    ],
)
def test_bad_stages_modules_exit_2(cli: Cli, tmp_path: Path, source: str, message: str) -> None:
    module = write_module(tmp_path / "bad_stages.py", source)
    got = cli("stages", "--stages", module)
    assert got.code == ExitCode.USAGE
    assert message in got.err
    if "raised" in message:
        assert "Traceback (most recent call last)" in got.err


def test_missing_stages_module_exits_2(cli: Cli) -> None:
    got = cli("stages", "--stages", "no_such_module_xyz")
    assert got.code == ExitCode.USAGE
    assert "no module named 'no_such_module_xyz'" in got.err
    got = cli("stages", "--stages", "missing/stages.py")
    assert "--stages missing/stages.py: no such file" in got.err


def test_a_stages_file_whose_name_is_no_identifier_still_imports(cli: Cli, tmp_path: Path) -> None:
    module = write_module(tmp_path / "my-stages.v2.py", FAILING_STAGES)
    got = cli("stages", "--stages", module)
    assert got.code == ExitCode.OK, got.err
    assert got.out.splitlines()[0].startswith("Boom  (my_stages_v2")


ECHO_SOURCE = "stage pack 'echo' (stageflow-echo-pack 0.1.0)"


@pytest.fixture
def fake_packs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Append (name, 'module:attr') to add stage packs next to the installed ones."""
    added: list[tuple[str, str]] = []
    real = tuple(entry_points(group=stageflow.STAGE_PACK_GROUP))

    def fake_entry_points(*, group: str) -> EntryPoints:
        fakes = (EntryPoint(n, v, group) for n, v in added)
        return EntryPoints((*real, *fakes))

    monkeypatch.setattr(stageflow._plugins, "entry_points", fake_entry_points)
    return added


def sources(got: Outcome) -> dict[str, str]:
    return {e["name"]: e["source"] for e in got.json()}


def test_installed_stage_packs_load_by_default(cli: Cli) -> None:
    got = cli("stages", "--json")
    assert got.code == ExitCode.OK, got.err
    assert sources(got)["EchoLLM"] == ECHO_SOURCE


def test_plugin_loads_only_the_named_packs(cli: Cli, fake_packs: list[tuple[str, str]]) -> None:
    fake_packs.append(("text", "stage_packs"))
    assert {"EchoLLM", "Upper", "Lower"} <= set(sources(cli("stages", "--json")))
    got = cli("stages", "--plugin", "text", "--json")
    assert got.code == ExitCode.OK, got.err
    assert "EchoLLM" not in sources(got)
    assert sources(got)["Upper"] == "stage pack 'text' (stage_packs)"


def test_no_plugins_loads_none(cli: Cli) -> None:
    got = cli("stages", "--no-plugins", "--json")
    assert got.code == ExitCode.OK
    assert "EchoLLM" not in sources(got)
    assert cli("stages", "--no-plugins", "--plugin", "echo").code == ExitCode.USAGE


def test_a_missing_named_pack_is_an_error(cli: Cli) -> None:
    got = cli("stages", "--plugin", "ecko")
    assert got.code == ExitCode.USAGE
    assert "no stage pack named 'ecko' is installed" in got.err


def test_a_broken_pack_is_left_out_with_a_warning_unless_named(
    cli: Cli, fake_packs: list[tuple[str, str]]
) -> None:
    fake_packs.append(("broken", "stage_pack_broken"))
    got = cli("stages", "--json")
    assert got.code == ExitCode.OK
    assert "EchoLLM" in sources(got)
    assert "plugin.failed" in got.err
    assert "broken" in got.err
    got = cli("stages", "--plugin", "broken")
    assert got.code == ExitCode.USAGE
    assert "broken" in got.err


# -------------------------------------------------- features from other modules


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_run_sets_up_tracing_and_flushes_the_spans_at_the_end(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    class Provider:
        def shutdown(self) -> None:
            calls.append("shutdown")

    def configure(*, exporter: str, console_format: str = "json") -> Provider:
        calls.append(exporter if exporter != "console" else f"console {console_format}")
        return Provider()

    monkeypatch.setattr(stageflow.tracing, "configure", configure)
    for exporter in ("otlp", "console", "none"):
        got = cli("run", PIPELINE, "--stages", STAGES, "--trace", exporter, "--json")
        assert got.code == ExitCode.OK, got.err
    assert calls == ["otlp", "shutdown", "console lines", "shutdown", "none", "shutdown"]
    calls.clear()
    got = cli("run", PIPELINE, "--stages", STAGES, "--trace", "console", "--trace-json", "--json")
    assert got.code == ExitCode.OK, got.err
    assert calls == ["console json", "shutdown"]
    calls.clear()
    assert cli("run", PIPELINE, "--stages", STAGES).code == ExitCode.OK
    assert calls == []


LOGGING_STAGES = """
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Chatty")
    async def chatty(ctx):
        ctx.log.info("chatty.said", words=3)
        return {}
"""


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        (["--log-format", "json"], "json"),
        (["--log-format", "console"], "console"),
        (["--log-level", "INFO"], "console"),
        (["--log-format", "json", "--log-level", "warning"], None),
        ([], None),
    ],
)
def test_run_writes_log_lines_to_stderr(
    cli: Cli, tmp_path: Path, options: list[str], shown: str | None
) -> None:
    stages = write_module(tmp_path / "chatty_stages.py", LOGGING_STAGES)
    pipeline = write_json(tmp_path / "p.json", doc([stage("s", "Chatty", next="end"), terminal()]))
    got = cli("run", pipeline, "--stages", stages, "--json", *options)
    assert got.code == ExitCode.OK, got.err
    assert got.json()["status"] == "completed"  # stdout holds the result only
    lines = [line for line in got.err.splitlines() if "chatty.said" in line]
    if shown is None:
        assert lines == []
        assert "node.started" not in got.err
    elif shown == "json":
        record = json.loads(lines[0])
        assert (record["event"], record["words"], record["node_id"]) == ("chatty.said", 3, "s")
    else:
        assert "words=3" in lines[0]


def test_otlp_without_its_exporter_package_is_unavailable() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the gRPC OTLP exporter is installed here")
    proc = subprocess.run(
        [entry_point(), "run", PIPELINE, "--stages", STAGES, "--trace", "otlp"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    )
    assert proc.returncode == ExitCode.UNAVAILABLE, proc.stderr
    assert "pip install 'stageflow[otlp]'" in proc.stderr
    assert proc.stdout == ""


def test_test_command_is_unavailable_without_the_tester(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "stageflow.testing", None)
    got = cli("test", "cases.json")
    assert got.code == ExitCode.UNAVAILABLE
    assert "stageflow test needs stageflow.testing" in got.err
    fake_module(monkeypatch, "stageflow.testing")
    got = cli("test", "cases.json")
    assert got.code == ExitCode.UNAVAILABLE
    assert "stageflow.testing.run_case_files" in got.err


def test_test_command_runs_the_case_files(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    got = cli("test", "tests/cases/reference.stageflow.json")
    assert got.code == ExitCode.OK, got.err
    assert "coverage of pipeline demo_full_flow" in got.out
    assert "decide -[else]-> finish" in got.out  # the branch no case took
    assert got.out.splitlines()[-1] == "2 passed, 0 failed, 0 errors"
    got = cli("test", "tests/cases/reference.stageflow.json", "--no-coverage", "--json")
    assert (got.code, got.json()["ok"], got.json()["passed"]) == (ExitCode.OK, True, 2)


def test_test_command_exits_1_on_a_failing_case(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    got = cli("test", "tests/cases/failing.cases.json", "--no-coverage")
    assert got.code == ExitCode.FAILED
    assert "FAILED case 'wrong expectations'" in got.out
    assert "coverage of" not in got.out
    assert got.out.splitlines()[-1] == "0 passed, 2 failed, 0 errors"


@pytest.mark.parametrize(("ok", "code"), [(True, ExitCode.OK), (False, ExitCode.FAILED)])
def test_test_command_runs_case_files_and_reports(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, ok: bool, code: int
) -> None:
    """Against the tester's API: Report.ok, Report.render(coverage=...), Report.to_dict()."""
    calls: list[Any] = []

    @attrs.frozen
    class Report:
        ok: bool
        passed: int = 0  # a count in the tester's report, never the verdict

        def to_dict(self) -> dict[str, Any]:
            return {"ok": self.ok, "passed": self.passed}

        def render(self, *, coverage: bool = True) -> str:
            return f"ok={self.ok} coverage={coverage}\n"

    def run_case_files(paths: list[str], *, stages_modules: list[str]) -> Report:
        calls.append((paths, stages_modules))
        return Report(ok, passed=0 if ok else 2)

    fake_module(monkeypatch, "stageflow.testing", run_case_files=run_case_files)
    got = cli("test", "a.json", "b.yaml", "--stages", STAGES)
    assert (got.code, got.out) == (code, f"ok={ok} coverage=True\n")
    assert calls == [(["a.json", "b.yaml"], [STAGES])]
    assert cli("test", "a.json", "--no-coverage").out == f"ok={ok} coverage=False\n"
    got = cli("test", "a.json", "--json")
    assert (got.code, got.json()) == (code, {"ok": ok, "passed": 0 if ok else 2})


# ------------------------------------------------------------------ help, usage


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(cli: Cli, command: str) -> None:
    got = cli(command, "--help")
    assert got.code == ExitCode.OK
    assert got.out.startswith(f"usage: stageflow {command} ")
    assert "--help" in got.out


def test_top_level_help_lists_commands_and_exit_codes(cli: Cli) -> None:
    got = cli("--help")
    assert got.code == ExitCode.OK
    for command in SUBCOMMANDS:
        assert re.search(rf"^    {command}\s+\w", got.out, re.MULTILINE), command
    assert "exit codes:" in got.out
    assert cli("--version").out == f"stageflow {stageflow.__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["graph", PIPELINE, "--format", "svg"], ["run"], ["run", "--trace=x"]],
)
def test_usage_errors_exit_2(cli: Cli, argv: list[str]) -> None:
    got = cli(*argv)
    assert got.code == ExitCode.USAGE
    assert "usage: stageflow" in got.err


# ------------------------------------------------------------ real subprocesses


def entry_point() -> str:
    found = shutil.which("stageflow", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stageflow entry point is not installed: pip install -e .")
    return found


def test_entry_point_runs_the_reference_pipeline() -> None:
    proc = subprocess.run(
        [
            entry_point(),
            "run",
            PIPELINE,
            "--stages",
            STAGES,
            "--payload",
            '{"user_id": "u1", "text": "one two three"}',
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["artifacts"] == {"score": 3, "a_result": 6, "b_result": "low"}


def test_entry_point_validate_exits_2_on_a_broken_copy(tmp_path: Path) -> None:
    broken = write_json(tmp_path / "broken.json", broken_graph_copy())
    proc = subprocess.run(
        [entry_point(), "validate", broken, "--stages", STAGES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{broken}: $.entry: " in proc.stdout
    assert f"{broken}: $.nodes[1].conditions[0].then: " in proc.stdout
    assert f"{broken}: $.nodes[4].stage: " in proc.stdout


def test_python_dash_m_stageflow_is_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stageflow", "graph", PIPELINE, "--format", "dot"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert parse_dot(proc.stdout)[1] == REFERENCE_EDGES


def test_a_closed_pipe_ends_quietly_with_141(tmp_path: Path) -> None:
    # 3000 problems, one line each: far more than a pipe holds, so the writer is
    # still printing when the reader goes away.
    chain = [stage(f"s{i}", "Unknown", next=f"s{i + 1}") for i in range(3000)]
    path = write_json(tmp_path / "long.json", doc([*chain, terminal("s3000")]))
    proc = subprocess.Popen(
        [entry_point(), "validate", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.read(len(path)) == path.encode()
    proc.stdout.close()  # the reader goes away, as `| head -c N` would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.BROKEN_PIPE
    assert b"Traceback" not in err


def test_entry_point_traces_to_the_console_on_stderr() -> None:
    # A real process: OpenTelemetry allows one global tracer provider per process.
    proc = subprocess.run(
        [
            entry_point(),
            "run",
            PIPELINE,
            "--stages",
            STAGES,
            "--payload",
            '{"text": "hi"}',
            "--trace",
            "console",
            "--trace-json",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "completed"
    names = re.findall(r'^    "name": "([^"]+)",$', proc.stderr, re.MULTILINE)
    assert sorted(names) == sorted(
        ["run demo_full_flow", "stage start", "condition decide", "terminal finish"]
    )


def test_graph_without_stages_knows_the_stages_of_subpipelines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stageflow.cli import main

    code = main(
        ["graph", str(Path(__file__).parents[1] / "examples" / "documents" / "pipeline.json")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "subpipeline: read_page" in out


EXIT_CODE_ROW = re.compile(r"^\| (\d+) \| (.+) \|$", re.MULTILINE)
EPILOG_ROW = re.compile(r"^\s*(\d+)  (.+)$", re.MULTILINE)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_ends_with_its_exit_codes(cli: Cli, command: str) -> None:
    text = cli(command, "--help").out
    assert "exit codes:" in text
    listed = dict(EPILOG_ROW.findall(text.split("exit codes:")[1]))
    assert {"0", "2"} <= set(listed)
    top = dict(EPILOG_ROW.findall(cli("--help").out.split("exit codes:")[1]))
    assert all(top[code] == meaning for code, meaning in listed.items())


def test_the_docs_and_the_top_level_help_say_the_same_about_each_exit_code(cli: Cli) -> None:
    top = dict(EPILOG_ROW.findall(cli("--help").out.split("exit codes:")[1]))
    page = (ROOT / "docs" / "cli.md").read_text()
    table = page.split("## Exit codes")[1].split("They are also")[0]
    documented = {code: text.replace("\\|", "|") for code, text in EXIT_CODE_ROW.findall(table)}
    assert documented == top
    assert set(top) == {str(int(code)) for code in ExitCode}


def test_files_and_options_may_be_intermixed(cli: Cli, tmp_path: Path) -> None:
    other = shutil.copy(PIPELINE, tmp_path / "other.json")
    got = cli("validate", PIPELINE, "--stages", STAGES, str(other), "--no-plugins")
    assert got.code == ExitCode.OK, got.err
    assert got.out.count(": valid (") == 2


def test_an_unknown_option_after_the_files_is_still_a_usage_error(cli: Cli) -> None:
    got = cli("validate", PIPELINE, "--frobnicate")
    assert got.code == ExitCode.USAGE
    assert "unrecognized arguments: --frobnicate" in got.err


def test_graph_draws_an_invalid_pipeline_with_its_problems_marked(cli: Cli, tmp_path: Path) -> None:
    document = doc(
        [
            stage("a", "Set", next="gone"),
            {"id": "broken", "type": "stage", "colour": "red"},
            terminal("end"),
        ]
    )
    path = write_json(tmp_path / "bad.json", document)
    got = cli("graph", path)
    assert got.code == ExitCode.USAGE
    assert "%% problem: $.nodes[0].next: stage node 'a' points at 'gone'" in got.out
    assert re.search(r'^    a\["a<br/>stage: Set<br/>! \d+ problems?"\]$', got.out, re.MULTILINE)
    assert 'broken["broken<br/>cannot be read<br/>! ' in got.out
    assert 'gone["gone<br/>not a node<br/>! 1 problem"]' in got.out
    assert "class a,broken," in got.out
    assert f"{path}: $.nodes[0].next:" in got.err
    as_json = cli("graph", path, "--format", "json").json()
    assert {n["id"]: n["type"] for n in as_json["nodes"]}["broken"] == "invalid"
    assert as_json["problems"]
    assert "// problem: $.nodes[0].next" in cli("graph", path, "--format", "dot").out


def test_graph_help_describes_the_default_formats_shapes(cli: Cli) -> None:
    text = cli("graph", "--help").out
    assert "shapes in Mermaid (the default format):" in text
    assert "condition    a diamond" in text
