"""Log lines of failed runs: one ERROR line with the traceback, session lines, trace flags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from cli_support import restore_logging  # noqa: F401  (autouse fixture)
from fakes import doc, fake_registry, load, parallel, stage, terminal
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import stageflow
import stageflow.logging
from stageflow._errors import MAX_ERROR_MESSAGE
from stageflow.cli import main

pytestmark = pytest.mark.anyio

FAILING = doc(
    [
        parallel("fan", ["ok", "bad"], next="end"),
        stage("ok", "Set", config={"values": {}}),
        stage("bad", "Fail", config={"message": "no luck"}),
        terminal(),
    ]
)


async def _logged_run(
    document: dict[str, Any], provider: TracerProvider | None
) -> tuple[stageflow.SessionResult, list[dict[str, Any]], str]:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    registry = fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run()
    raw = out.getvalue()
    return result, [json.loads(line) for line in raw.splitlines()], raw


async def test_a_failed_node_is_one_error_line_with_its_traceback_and_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    result, lines, _ = await _logged_run(FAILING, provider)
    assert result.status is stageflow.SessionStatus.FAILED
    errors = [
        line for line in lines if line["level"] == "error" and line["event"] == "node.finished"
    ]
    [line] = errors
    assert line["node_id"] == "bad"
    assert line["error_type"] == "StageError"
    assert "no luck" in line["error"]
    assert "Traceback (most recent call last)" in line["exception"]
    assert "ValueError: no luck" in line["exception"]
    [span] = [s for s in exporter.get_finished_spans() if s.name == "stage bad"]
    assert line["span_id"] == f"{span.context.span_id:016x}"
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    # The traceback is written once in the whole run: on this line only.
    assert [x for x in lines if "exception" in x] == [line]
    # The nodes the failure crossed say so without repeating the traceback.
    fan = [x for x in lines if x.get("node_id") == "fan" and x["event"] == "node.finished"]
    assert fan[0]["level"] == "info"
    assert "exception" not in fan[0]


async def test_a_routed_error_is_reported_with_its_whole_traceback(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Once routed, the error leaves the engine's frames out of its
    # tracebacks (no cycle keeps the session): only after the node's line
    # and span have written it whole. Raised by the parallel node's executor
    # itself, it is first reported there.
    timed_out = doc(
        [
            parallel("fan", ["ok", "slow"], next="end", timeout=0.05, fallback="end"),
            stage("ok", "Set", config={"values": {}}),
            stage("slow", "Hang"),
            terminal(),
        ]
    )
    result, lines, _ = await _logged_run(timed_out, provider)
    assert result.status is stageflow.SessionStatus.COMPLETED
    [line] = [x for x in lines if x.get("node_id") == "fan" and x["event"] == "node.finished"]
    assert (line["level"], line["handled"], line["error_type"]) == (
        "warning",
        True,
        "NodeTimeoutError",
    )
    assert "_parallel.py" in line["exception"]  # the executor's frame, where it was raised
    [span] = [s for s in exporter.get_finished_spans() if s.name == "parallel fan"]
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert "_parallel.py" in str(event.attributes["exception.stacktrace"])


async def test_a_session_is_a_start_and_an_end_line_with_its_status(
    provider: TracerProvider,
) -> None:
    _, lines, _ = await _logged_run(FAILING, provider)
    started = [x for x in lines if x["event"] == "session.started"]
    finished = [x for x in lines if x["event"] == "session.finished"]
    assert len(started) == len(finished) == 1
    assert finished[0]["level"] == "error"
    assert finished[0]["status"] == "failed"
    assert finished[0]["error_type"] == "StageError"
    assert "exception" not in finished[0]  # the node's line has it


async def test_a_completed_session_ends_with_an_info_line(provider: TracerProvider) -> None:
    _, lines, _ = await _logged_run(doc([terminal()]), provider)
    [finished] = [x for x in lines if x["event"] == "session.finished"]
    assert finished["level"] == "info"
    assert finished["status"] == "completed"


async def test_every_line_in_a_span_has_trace_flags_and_event_first(
    provider: TracerProvider,
) -> None:
    _, lines, raw = await _logged_run(FAILING, provider)
    # W3C trace flags: bit 0 is "sampled" (the SDK also sets bit 1, "random trace id").
    assert all(int(line["trace_flags"], 16) & 1 for line in lines)
    assert all(text.startswith('{"event": ') for text in raw.splitlines())


async def test_a_sampled_out_run_logs_trace_flags_00() -> None:
    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    _, lines, _ = await _logged_run(FAILING, sampled_out)
    assert lines
    assert not any(int(line["trace_flags"], 16) & 1 for line in lines)


async def test_a_routed_failure_is_a_warning(provider: TracerProvider) -> None:
    document = doc([stage("bad", "Fail", next="end"), terminal(), terminal("handler")])
    document["nodes"][0]["on_error"] = [{"errors": ["ValueError"], "next": "handler"}]
    _, lines, _ = await _logged_run(document, provider)
    [line] = [x for x in lines if x.get("node_id") == "bad" and x["event"] == "node.finished"]
    assert line["level"] == "warning"
    assert line["handled"] is True
    assert not [x for x in lines if x["level"] == "error"]


def _failing_cli_files(tmp_path: Path) -> tuple[str, str]:
    pipeline = tmp_path / "fail.json"
    pipeline.write_text(json.dumps(doc([stage("a", "cli_fail", next="end"), terminal()])))
    stages = tmp_path / "cli_fail_stages.py"
    stages.write_text(
        "import stageflow\n"
        "registry = stageflow.StageRegistry()\n"
        "@registry.register('cli_fail')\n"
        "async def cli_fail(ctx):\n"
        "    raise ValueError('deep trouble')\n"
    )
    return str(pipeline), str(stages)


@pytest.mark.parametrize(
    ("options", "shown"),
    [((), False), (("--traceback",), True), (("--log-level", "debug"), True)],
    ids=["default", "--traceback", "--log-level debug"],
)
def test_the_cli_shows_the_stage_traceback_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], shown: bool
) -> None:
    pipeline, stages = _failing_cli_files(tmp_path)
    code = main(["run", pipeline, "--stages", stages, "--no-live", *options])
    err = capsys.readouterr().err
    assert code == 1
    assert "node.finished" in err  # the ERROR line, always
    assert ("raise ValueError('deep trouble')" in err) is shown


def test_the_cli_json_log_lines_start_with_the_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, stages = _failing_cli_files(tmp_path)
    main(["run", pipeline, "--stages", stages, "--log-format", "json", "--traceback"])
    lines = [json.loads(text) for text in capsys.readouterr().err.splitlines() if text]
    assert all(next(iter(line)) == "event" for line in lines)
    [error] = [x for x in lines if x["level"] == "error" and x["event"] == "node.finished"]
    assert "deep trouble" in error["exception"]


def test_the_cli_json_log_lines_of_a_traced_run_carry_trace_flags_and_the_node_span(
    tmp_path: Path,
) -> None:
    # As a library run's lines: trace_flags on every line, and the one traceback
    # on the failing node's line, with that node's span id. In a process of its
    # own: --trace sets OpenTelemetry's global tracer provider, which can be set
    # once, and would trace every later test of this one.
    pipeline, stages = _failing_cli_files(tmp_path)
    options = ["--log-format", "json", "--trace", "none", "--traceback"]
    argv = [sys.executable, "-m", "stageflow", "run", pipeline, "--stages", stages, *options]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(text) for text in done.stderr.splitlines() if text]
    assert lines
    assert all(int(line["trace_flags"], 16) & 1 for line in lines)
    [started] = [x for x in lines if x["event"] == "node.started" and x["node_id"] == "a"]
    [error] = [x for x in lines if "exception" in x]
    assert (error["event"], error["level"], error["node_id"]) == ("node.finished", "error", "a")
    assert error["span_id"] == started["span_id"]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


@pytest.mark.parametrize(
    "raised", [_Unprintable(), ValueError("x" * 100_000)], ids=["unprintable", "100k message"]
)
async def test_a_stage_error_that_cannot_be_shown_or_is_huge_fails_the_session_shown_cut(
    provider: TracerProvider, exporter: InMemorySpanExporter, raised: Exception
) -> None:
    # An exception whose __str__ raises made run() itself raise RuntimeError
    # (the engine's message for it called str());
    # a 100,000-character message was written whole into four events, the
    # outcome, the span and the log lines, so the snapshot held it six times.
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    registry = fake_registry()

    @registry.register("Raise")
    async def raise_it(ctx: stageflow.StageContext) -> None:
        raise raised

    document = doc([stage("bad", "Raise", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    message = result.history[-1].payload["error"]["message"]
    cause = result.history[-1].payload["error"]["causes"][0]["message"]
    if isinstance(raised, _Unprintable):
        assert message.endswith("_Unprintable: <_Unprintable whose str() failed>")
        assert cause == "<_Unprintable whose str() failed>"
    else:
        assert cause == "x" * 8192 + "... (91808 more characters cut)"
        assert len(json.dumps(session.to_dict())) < 100_000
    [error_line] = [
        json.loads(line) for line in out.getvalue().splitlines() if '"level": "error"' in line
    ][:1]
    assert error_line["error"] == message
    [span] = [s for s in exporter.get_finished_spans() if s.name == "stage bad"]
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"].endswith("StageError")
    assert event.attributes["exception.message"] == message
    assert span.status.description == f"StageError: {message}"


def _chain(depth: int) -> Exception:
    error = ValueError("root")
    for i in range(depth):
        outer = ValueError(f"wrapper {i}")
        outer.__cause__ = error
        error = outer
    return error


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    "raised",
    [lambda: ValueError("x" * 1_000_000), lambda: _chain(3000)],
    ids=["1 MB message", "3000 causes"],
)
async def test_a_huge_traceback_is_written_bounded_in_the_log_and_the_span(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    raised: Any,
    log_format: stageflow.logging.Format,
) -> None:
    # The message was cut in "error", but the traceback ("exception", the
    # span's exception.stacktrace) held it whole: a 1 MB line and event.
    out = io.StringIO()
    stageflow.logging.configure(stream=out, format=log_format)
    registry = fake_registry()

    @registry.register("Raise")
    async def raise_it(ctx: stageflow.StageContext) -> None:
        raise raised()

    document = doc([stage("bad", "Raise", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "more characters cut" in text
    assert len(text) < 16 * MAX_ERROR_MESSAGE
    [span] = [s for s in exporter.get_finished_spans() if s.name == "stage bad"]
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    stacktrace = event.attributes["exception.stacktrace"]
    assert isinstance(stacktrace, str)
    assert "more characters cut" in stacktrace
    assert len(stacktrace) <= 8 * MAX_ERROR_MESSAGE + 100


def _documented_line() -> dict[str, Any]:
    text = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    block = text.split("A JSON line:", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    line: dict[str, Any] = json.loads(block)
    return line


async def test_the_documented_json_line_has_the_keys_of_a_real_one_in_their_order(
    provider: TracerProvider,
) -> None:
    # The example in docs/observability.md had lost node_type and path.
    document = doc([stage("fetch", "Set", next="end"), terminal()])
    _, lines, _ = await _logged_run(document, provider)
    [real] = [x for x in lines if x["event"] == "node.finished" and x["node_id"] == "fetch"]
    documented = _documented_line()
    assert list(real) == list(documented)
    assert {key: type(value) for key, value in real.items()} == {
        key: type(value) for key, value in documented.items()
    }
    assert real["path"] == documented["path"] == ""
    started = [x for x in lines if x["event"] == "session.started"]
    assert [(x["pipeline"], x["resumed"]) for x in started] == [("pipeline", False)]


async def test_console_lines_stay_one_line_whatever_a_name_or_an_id_holds(
    provider: TracerProvider,
) -> None:
    # A session id with a line break or an escape sequence was written as it
    # is: a line that looked like another one, an escape that recolored or
    # cleared the terminal (stageflow run's format). (A pipeline's name can
    # hold neither any more: such a document is refused when it loads.)
    out = io.StringIO()
    stageflow.logging.configure(stream=out, format="console")
    registry = fake_registry()
    document = doc([terminal()], metadata={"name": "p"})
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        tracer_provider=provider,
        session_id="s\x1b[31m\nnode.finished",
    )
    await session.run()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # session.started, node.started, node.finished, session.finished
    assert "\x1b" not in out.getvalue()
    assert all("session_id=s\\x1b[31m\\nnode.finished" in line for line in lines)
    assert "pipeline=p" in lines[0].split()


class _NotesRaise(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("__notes__ failed")


def _formats(exc: BaseException) -> bool:
    """Whether traceback writes ``exc`` here (Python 3.13 does past a raising __notes__)."""
    try:
        traceback.format_exception(exc)
    except Exception:
        return False
    return True


async def test_a_stage_error_whose_traceback_cannot_be_written_fails_the_session_logged(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Writing its traceback raised (Python reads __notes__): run() raised that
    # RuntimeError from the span's exception event, or from the logging
    # module's own report of the log line it could not write.
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    registry = fake_registry()

    @registry.register("Raise")
    async def raise_it(ctx: stageflow.StageContext) -> None:
        raise _NotesRaise("odd")

    document = doc([stage("bad", "Raise", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    raised = None
    try:
        await session.run()
    except RuntimeError as exc:  # kept out of the report: pytest would write its traceback
        raised = repr(exc)
    assert raised is None
    assert session.status is stageflow.SessionStatus.FAILED
    [error_line] = [
        json.loads(line) for line in out.getvalue().splitlines() if '"level": "error"' in line
    ][:1]
    assert error_line["error_type"] == "StageError"
    if _formats(_NotesRaise("odd")):  # Python 3.13 writes it, past the failing __notes__
        assert "_NotesRaise: odd" in error_line["exception"]
    else:
        assert "(its traceback could not be written)" in error_line["exception"]
    [span] = [s for s in exporter.get_finished_spans() if s.name == "stage bad"]
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    stacktrace = str(event.attributes["exception.stacktrace"])
    assert "StageError: stage 'Raise' at node 'bad'" in stacktrace
