"""The ``stageflow`` command line, called in-process through ``main(argv)``.

A few tests at the end run the installed ``stageflow`` entry point in a real
subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cli_support import (
    EXAMPLE,
    FAILING_STAGES,
    PIPELINE,
    ROOT,
    STAGES,
    SUBCOMMANDS,
    Cli,
    restore_logging,  # noqa: F401  (autouse fixture)
    write_json,
    write_module,
)
from fakes import doc, stage, terminal
from graph_support import REFERENCE_EDGES, parse_dot

import stageflow
import stageflow._plugins
import stageflow.tracing
from stageflow._cli._app import build_parser
from stageflow.cli import ExitCode

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
    # Another example's "stages", imported by an earlier test, is not this one.
    monkeypatch.delitem(sys.modules, "stages", raising=False)
    got = cli("run", "pipeline.json", "--stages", "stages", "--payload", '{"text": "hi"}', "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["status"] == "completed"


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


def test_run_prints_an_error_message_escaped_on_one_line(cli: Cli, tmp_path: Path) -> None:
    # A stage's exception may carry any text: its line breaks started lines that
    # looked like the command's own, its escape sequences cleared the terminal.
    stages = write_module(
        tmp_path / "escaping_stages.py",
        """
        import stageflow

        registry = stageflow.StageRegistry()


        @registry.register("Boom")
        async def boom(ctx):
            raise ValueError("bad\\x1b[2J\\nstatus: completed")
        """,
    )
    pipeline = write_json(
        tmp_path / "p.json", doc([stage("work", "Boom", next="end"), terminal("end")])
    )
    got = cli("run", pipeline, "--stages", stages, "--no-plugins")
    assert got.code == ExitCode.FAILED
    assert "\x1b" not in got.out
    assert not any(line.startswith("status:") for line in got.out.splitlines())
    assert "caused by ValueError: bad\\x1b[2J\\nstatus: completed" in got.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--payload", "{not json"], "--payload: not valid JSON at line 1 column 2"),
        (
            ["--payload", "[1, 2]"],
            "--payload must be a JSON object (the initial context), got an array",
        ),
        (["--payload", "@/nonexistent/payload.json"], "--payload: cannot read"),
        # It said "cannot read '.': Is a directory".
        (["--payload", "@"], "--payload: nothing follows '@'; pass @FILE"),
        (["--input", "approval=@"], "--input approval: nothing follows '@'"),
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


@pytest.mark.parametrize("option", [["--stages", STAGES], ["--plugin", "echo"]])
def test_validate_structure_only_with_stage_options_is_a_usage_error(
    cli: Cli, option: list[str]
) -> None:
    # The stages were silently not checked (nor imported), as if not given.
    got = cli("validate", PIPELINE, "--structure-only", *option)
    assert got.code == ExitCode.USAGE
    assert f"{option[0]} chooses the stages to check, and --structure-only checks none" in got.err
    assert got.out == ""


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
        ("[1, 2]", "a pipeline document is a JSON object, got an array"),
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
    got = cli("validate", str(path))
    assert got.code == ExitCode.OK
    assert got.out == f"{path}: valid (1 node)\n"  # it said "1 nodes"


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


@pytest.mark.parametrize("trace", [[], ["--trace", "none"], ["--trace", "otlp"]])
def test_trace_json_without_trace_console_is_a_usage_error(cli: Cli, trace: list[str]) -> None:
    # It was ignored: no span printed, exit 0, nothing said.
    got = cli("run", PIPELINE, "--stages", STAGES, *trace, "--trace-json", "--json")
    assert got.code == ExitCode.USAGE
    assert got.out == ""
    assert "--trace-json prints the spans of --trace console as JSON" in got.err
    assert "add --trace console, or leave --trace-json out" in got.err


@pytest.mark.parametrize("given", [True, False], ids=["with --stages", "without --stages"])
def test_the_hint_to_pass_stages_comes_only_when_none_was_given(
    cli: Cli, tmp_path: Path, given: bool
) -> None:
    # `stageflow run p.json --stages s.py` with a misspelt stage name said
    # "pass --stages MODULE", which had been given (validate did not).
    module = write_module(tmp_path / "boom_stages.py", FAILING_STAGES)
    pipeline = write_json(
        tmp_path / "p.json", doc([stage("s", "Boomm", next="end"), terminal("end")])
    )
    got = cli("run", pipeline, *(["--stages", module] if given else []), "--no-plugins")
    assert got.code == ExitCode.USAGE
    assert "uses stage 'Boomm', which is not registered" in got.err
    assert ("pass --stages MODULE" in got.err) is not given


def test_trace_json_without_trace_console_is_told_before_the_pipeline_is_read(cli: Cli) -> None:
    # It was checked after the stages were imported and the pipeline loaded:
    # a pipeline without its --stages got its unregistered stages instead.
    got = cli("run", PIPELINE, "--trace-json", "--no-plugins")
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        "stageflow: --trace-json prints the spans of --trace console as JSON, and no --trace "
        "prints none; add --trace console, or leave --trace-json out"
    ]


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
    assert "coverage" not in got.json()  # --no-coverage was ignored with --json
    got = cli("test", "tests/cases/reference.stageflow.json", "--json")
    assert got.json()["coverage"][0]["pipeline"] == "demo_full_flow"


def test_test_command_exits_1_on_a_failing_case(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    got = cli("test", "tests/cases/failing.cases.json", "--no-coverage")
    assert got.code == ExitCode.FAILED
    assert "FAILED case 'wrong expectations'" in got.out
    assert "coverage of" not in got.out
    assert got.out.splitlines()[-1] == "0 passed, 2 failed, 0 errors"


@pytest.mark.parametrize(("ok", "code"), [(True, ExitCode.OK), (False, ExitCode.FAILED)])
def test_test_command_runs_case_files_and_reports(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ok: bool, code: int
) -> None:
    """Against the tester's API: Report.ok, Report.render(coverage=...), Report.to_dict()."""
    calls: list[Any] = []
    monkeypatch.chdir(tmp_path)  # the files must exist: a path that names none is a typo
    for name in ("a.json", "b.yaml"):
        (tmp_path / name).write_text("{}")

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


def _parsers(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_has_help_and_every_option_default_is_told() -> None:
    # sessions list --limit, the session ids, --reason and --json had no
    # help; worker --max-attempts, --queue and --worker-id hid their defaults.
    untold = []
    for name, parser in _parsers(build_parser(), "stageflow"):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = action.help or ""
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not text:
                untold.append(f"{where}: no help")
            elif action.option_strings and action.default not in (None, False, []):
                if "default" not in text:
                    untold.append(f"{where}: default {action.default!r} not told")
            elif action.dest in ("queues", "worker_id") and "default" not in text:
                untold.append(f"{where}: default not told")
    assert untold == []


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


@pytest.mark.parametrize(
    "command",
    ["worker", "sessions", "sessions list", "sessions show", "sessions send", "ui"],
)
def test_the_store_and_inspector_commands_help_ends_with_their_exit_codes(
    cli: Cli, command: str
) -> None:
    # docs/cli.md says each command's --help ends with its codes; these had none.
    text = cli(*command.split(), "--help").out
    assert "exit codes:" in text
    listed = dict(EPILOG_ROW.findall(text.split("exit codes:")[1]))
    assert {"0", "2", "130"} <= set(listed)
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


def test_files_after_a_double_dash_may_start_with_a_dash(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With an option between the files, `-- -p.json` was an unrecognized argument.
    shutil.copy(PIPELINE, tmp_path / "-p.json")
    monkeypatch.chdir(tmp_path)
    got = cli("validate", PIPELINE, "--stages", STAGES, "--no-plugins", "--", "-p.json")
    assert got.code == ExitCode.OK, got.err
    assert got.out.count(": valid (") == 2


def test_an_unknown_option_after_the_files_is_still_a_usage_error(cli: Cli) -> None:
    got = cli("validate", PIPELINE, "--frobnicate")
    assert got.code == ExitCode.USAGE
    assert "unrecognized arguments: --frobnicate" in got.err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", PIPELINE, "second.json"],
        ["graph", PIPELINE, "--frobnicate"],
        ["sessions", "show", "--store", "sqlite:///x.db", "id", "extra"],
    ],
    ids=["run", "graph", "sessions show"],
)
def test_a_word_left_over_is_told_with_the_usage_of_its_command(cli: Cli, argv: list[str]) -> None:
    # `stageflow run a.json b.json` printed the top-level usage ("stageflow
    # [-h] [--version] COMMAND ...") and "stageflow: error: ...", which does
    # not say what `run` takes.
    got = cli(*argv)
    assert got.code == ExitCode.USAGE
    command = " ".join(argv[:2] if argv[0] == "sessions" else argv[:1])
    assert got.err.startswith(f"usage: stageflow {command} [-h]")
    assert got.err.strip().splitlines()[-1] == (
        f"stageflow {command}: error: unrecognized arguments: {argv[-1]}"
    )


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
