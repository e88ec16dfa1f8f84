"""stageflow.logging: structlog set-up, JSON and console lines, trace correlation.

Each test that configures logging restores the root logger and structlog's
defaults afterwards; spans come from a local SDK provider, never the global one.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from cli_support import restore_logging  # noqa: F401  (autouse fixture)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import stageflow
import stageflow.logging

ROOT = Path(__file__).parents[1]


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    provider = TracerProvider()  # records spans, exports nothing, not global
    yield provider.get_tracer("stageflow.tests")
    provider.shutdown()


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def test_json_lines_carry_timestamp_level_logger_event_and_bound_keys() -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    log = structlog.get_logger("stageflow.session").bind(session_id="s-1")
    log.info("node.started", node_id="fetch", attempt=1)

    [line] = json_lines(out)
    stamp = datetime.datetime.fromisoformat(line.pop("timestamp"))
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - stamp) < datetime.timedelta(minutes=5)
    assert line == {
        "event": "node.started",
        "level": "info",
        "logger": "stageflow.session",
        "session_id": "s-1",
        "node_id": "fetch",
        "attempt": 1,
    }


def test_json_lines_stay_strict_json_whatever_a_line_carries() -> None:
    # NaN and infinities were written bare: strict JSON readers refuse them.
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    structlog.get_logger("stageflow.stage").info(
        "metric", ratio=float("nan"), top=[float("-inf")], fine=0.5
    )

    def strict(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    [line] = [json.loads(text, parse_constant=strict) for text in out.getvalue().splitlines()]
    assert (line["ratio"], line["top"], line["fine"]) == ("nan", ["-inf"], 0.5)


def test_a_value_whose_repr_fails_is_written_as_its_type() -> None:
    # It raised inside the renderer: a "--- Logging error ---" traceback went
    # into the JSON-lines stream instead of the line. (Only the renderer is
    # called here: pytest's own log capture would repr() the value too.)
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    text = stageflow.logging._strict_json(
        {"event": "odd", "value": Unprintable()}, default=stageflow.logging._fallback
    )
    assert json.loads(text) == {"event": "odd", "value": "<Unprintable with a failing repr()>"}


def test_a_container_inside_itself_or_keys_that_are_not_strings_still_make_a_line() -> None:
    # A value inside itself sent the NaN rewrite into endless recursion: the
    # log call raised RecursionError (a stage that logged it failed). Tuple
    # keys raised TypeError: the line was lost for a "--- Logging error ---".
    state: dict[str, Any] = {"step": 1}
    state["parent"] = state
    deep: list[Any] = []
    for _ in range(200):
        deep = [deep]
    text = stageflow.logging._strict_json(
        {
            "event": "odd",
            "state": state,
            "pairs": {(1, 2): "a"},
            "ratio": math.inf,
            "deep": deep,
        },
        default=stageflow.logging._fallback,
    )
    line = json.loads(text)
    assert line["state"] == {"step": 1, "parent": "<circular>"}
    assert (line["pairs"], line["ratio"]) == ({"(1, 2)": "a"}, "inf")
    assert json.dumps(line["deep"]).count("[") == 63  # the line itself is the first level
    assert "<nested too deep>" in json.dumps(line["deep"])


class _Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __hash__(self) -> int:
        return 0


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_value_key_or_event_that_cannot_be_shown_keeps_its_line(
    monkeypatch: pytest.MonkeyPatch, log_format: stageflow.logging.Format
) -> None:
    # Lost for a "--- Logging error ---": a key whose str() fails or an int
    # too long to write in the JSON format, and any value whose repr() fails
    # in the console format.
    out = io.StringIO()
    stageflow.logging.configure(stream=out, format=log_format)
    root = logging.getLogger()
    # pytest's own capture handlers would repr() the values too.
    ours = [h for h in root.handlers if isinstance(h, stageflow.logging._StageflowHandler)]
    monkeypatch.setattr(root, "handlers", ours)
    log = structlog.get_logger("stageflow.stage")
    log.info("odd", keyed={_Unshowable(): 1})
    log.info("odd", value=_Unshowable(), items=[_Unshowable()])
    log.info(_Unshowable())
    log.info("odd", number=10**5000)  # more digits than Python writes
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    if log_format == "json":
        assert json.loads(lines[0])["keyed"] == {"<_Unshowable whose str() failed>": 1}
        assert json.loads(lines[1])["value"] == "<_Unshowable with a failing repr()>"
        assert json.loads(lines[3])["number"] == "<int whose str() failed>"
    else:
        assert "keyed='<dict with a failing repr()>'" in lines[0]
        assert "value='<_Unshowable with a failing repr()>'" in lines[1]
        assert "<_Unshowable whose str() failed>" in lines[2]
        assert "number='<int with a failing repr()>'" in lines[3]


def test_a_log_call_with_a_value_inside_itself_writes_its_line() -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    state: dict[str, Any] = {}
    state["self"] = state
    structlog.get_logger("stageflow.stage").info("state", state=state)
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["state"] == {"self": "<circular>"}


def test_json_lines_carry_the_ids_of_the_current_span(tracer: trace.Tracer) -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    log = structlog.get_logger("stageflow.session")
    log.info("outside")
    with tracer.start_as_current_span("run demo") as run_span:
        log.info("in run")
        with tracer.start_as_current_span("stage fetch") as node_span:
            log.info("node.finished", outcome="succeeded")

    outside, in_run, in_node = json_lines(out)
    assert "trace_id" not in outside
    assert "span_id" not in outside
    assert (in_run["trace_id"], in_run["span_id"]) == ids(run_span)
    assert (in_node["trace_id"], in_node["span_id"]) == ids(node_span)
    assert in_node["trace_id"] == in_run["trace_id"]
    assert len(in_node["trace_id"]) == 32
    assert len(in_node["span_id"]) == 16
    assert in_node["trace_id"] == in_node["trace_id"].lower()


def test_records_from_the_logging_module_get_the_same_format(tracer: trace.Tracer) -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    with tracer.start_as_current_span("stage call") as span:
        logging.getLogger("some.library").warning("retrying %s in %d s", "upload", 2)

    [line] = json_lines(out)
    assert line["event"] == "retrying upload in 2 s"
    assert (line["logger"], line["level"]) == ("some.library", "warning")
    assert (line["trace_id"], line["span_id"]) == ids(span)


def test_exceptions_are_rendered_into_the_json_line() -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out)
    try:
        raise ZeroDivisionError("no")
    except ZeroDivisionError:
        structlog.get_logger("t").exception("stage.crashed")

    [line] = json_lines(out)
    assert line["level"] == "error"
    assert "ZeroDivisionError: no" in line["exception"]


def test_level_filters_lower_lines() -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out, level="warning")
    log = structlog.get_logger("stageflow.session")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]


def test_level_numbers_are_accepted() -> None:
    out = io.StringIO()
    stageflow.logging.configure(stream=out, level=logging.DEBUG)
    structlog.get_logger("t").debug("detail")
    assert [line["event"] for line in json_lines(out)] == ["detail"]


def test_console_format_is_for_humans(tracer: trace.Tracer) -> None:
    out = io.StringIO()
    stageflow.logging.configure(format="console", stream=out)
    with tracer.start_as_current_span("stage fetch") as span:
        structlog.get_logger("stageflow.session").info("node.started", node_id="fetch")

    text = out.getvalue()
    assert text.count("\n") == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "node.started" in text
    assert "[stageflow.session]" in text
    assert "node_id=fetch" in text
    assert f"span_id={ids(span)[1]}" in text
    assert "\x1b[" not in text  # no colors when the stream is not a terminal


def test_configuring_again_replaces_the_handler_and_keeps_the_applications() -> None:
    before = list(logging.getLogger().handlers)  # pytest's own capture handlers
    own = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(own)
    first, second = io.StringIO(), io.StringIO()
    stageflow.logging.configure(stream=first)
    stageflow.logging.configure(format="console", stream=second)
    structlog.get_logger("t").info("once")

    assert first.getvalue() == ""
    assert "once" in second.getvalue()
    added = [h for h in logging.getLogger().handlers if h not in before]
    assert own in added
    assert len(added) == 2  # the application's and one of stageflow's


def test_capture_logs_still_works_after_configure() -> None:
    # Loggers are not cached, so module-level loggers obey later configuration.
    stageflow.logging.configure(stream=io.StringIO())
    log = structlog.get_logger("stageflow.session")
    log.info("before")
    with structlog.testing.capture_logs() as captured:
        log.info("during", node_id="a")
    assert captured == [{"event": "during", "node_id": "a", "log_level": "info"}]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"format": "xml"}, "unknown format 'xml'; use 'json' or 'console'"),
        ({"level": "LOUD"}, "unknown level 'LOUD'; use one of DEBUG, INFO"),
        ({"level": 2.5}, "level must be a level name or number, got float"),
        # Taken before, and the first line failed inside the logging module.
        ({"stream": 5}, "stream was given an int, which has no write(); pass a text stream"),
    ],
)
def test_bad_options_are_typed_errors(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(stageflow.LoggingSetupError) as caught:
        stageflow.logging.configure(**kwargs)
    assert expected in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert not structlog.is_configured()


# -- add_otel_context on its own ---------------------------------------------------------------

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0x00F067AA0BA902B7


def remote_span(sampled: bool) -> NonRecordingSpan:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=flags))


def test_add_otel_context_adds_nothing_outside_a_span() -> None:
    assert stageflow.logging.add_otel_context(None, "info", {"event": "x"}) == {"event": "x"}


@pytest.mark.parametrize("sampled", [True, False])
def test_add_otel_context_uses_any_valid_span_context(sampled: bool) -> None:
    with trace.use_span(remote_span(sampled)):
        got = stageflow.logging.add_otel_context(None, "info", {"event": "x"})
    assert got == {
        "event": "x",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "00f067aa0ba902b7",
        "trace_flags": "01" if sampled else "00",
    }


def test_add_otel_context_keeps_ids_bound_by_the_caller() -> None:
    with trace.use_span(remote_span(True)):
        got = stageflow.logging.add_otel_context(None, "info", {"trace_id": "t", "span_id": "s"})
    assert got == {"trace_id": "t", "span_id": "s", "trace_flags": "01"}


# -- the library configures nothing by itself ------------------------------------------------

IMPORT_SCRIPT = textwrap.dedent(
    """
    import json, logging
    import structlog
    from opentelemetry import trace
    import stageflow, stageflow.logging, stageflow.tracing
    print(json.dumps({
        "structlog_configured": structlog.is_configured(),
        "root_handlers": len(logging.getLogger().handlers),
        "tracer_provider": type(trace.get_tracer_provider()).__name__,
    }))
    """
)


def test_importing_stageflow_configures_neither_logging_nor_tracing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "structlog_configured": False,
        "root_handlers": 0,
        "tracer_provider": "ProxyTracerProvider",
    }
    assert done.stderr == ""


def test_an_unconfigured_application_gets_no_log_output_from_a_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reference" / "run.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "node.started" not in done.stdout
    assert json.loads(done.stdout[: done.stdout.rindex("}") + 1])["status"] == "completed"


CLEANUP_SCRIPT = textwrap.dedent(
    """
    import anyio
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Leaky")
    class Leaky(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            raise RuntimeError("lease not returned")


    pipeline = stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "a",
            "nodes": [
                {"id": "a", "type": "stage", "stage": "Leaky", "next": "end"},
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=registry,
    )
    result = anyio.run(stageflow.Session(pipeline).run)
    print(result.status, [e.type for e in result.history if e.type == "cleanup_failed"])
    """
)


def test_an_unconfigured_application_gets_stageflow_warnings_on_standard_error() -> None:
    """No run lines unconfigured, but a failed cleanup reaches stderr (docs/observability.md)."""
    done = subprocess.run(
        [sys.executable, "-c", CLEANUP_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "completed ['cleanup_failed']"
    assert "stage.cleanup_failed" in done.stderr
    assert "lease not returned" in done.stderr
    assert "node.started" not in done.stderr
    assert "session.finished" not in done.stderr


def _one_stage(registry: stageflow.StageRegistry, stage: str) -> stageflow.Pipeline:
    """A pipeline of one ``stage`` node, node id ``a``."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "a",
            "nodes": [
                {"id": "a", "type": "stage", "stage": stage, "next": "end"},
                {"id": "end", "type": "terminal", "result": {}},
            ],
        },
        registry=registry,
    )


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ failed")


@pytest.mark.anyio
async def test_a_stage_log_call_with_an_unprintable_value_fails_no_stage_unconfigured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a structlog set-up, stageflow's own key=value rendering called
    # repr(): the stage's ctx.log.warning raised, and the stage failed.
    structlog.reset_defaults()
    registry = stageflow.StageRegistry()

    @registry.register("Chatty")
    async def chatty(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.log.warning("stage.odd", value=_BadRepr(), text="two\nlines")
        return {}

    pipeline = _one_stage(registry, "Chatty")
    with caplog.at_level(logging.WARNING, logger="stageflow.stage"):
        result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    [record] = [r for r in caplog.records if "stage.odd" in r.getMessage()]
    assert record.getMessage().startswith("event='stage.odd' attempt=1 node_id='a' ")
    assert "text='two\\nlines' value=<_BadRepr whose repr() failed>" in record.getMessage()


@pytest.mark.anyio
async def test_a_stage_s_exception_line_keeps_its_traceback_unconfigured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a structlog set-up, stageflow's key=value rendering wrote
    # exc_info into the text ("exc_info=True"): the traceback was lost.
    structlog.reset_defaults()
    registry = stageflow.StageRegistry()

    @registry.register("Careful")
    async def careful(ctx: stageflow.StageContext) -> dict[str, Any]:
        try:
            {}["missing"]
        except KeyError:
            ctx.log.exception("stage.lookup_failed", key="missing")
        ctx.log.warning("stage.passed_on", exc_info=ValueError("kept"))
        return {}

    pipeline = _one_stage(registry, "Careful")
    with caplog.at_level(logging.WARNING, logger="stageflow.stage"):
        result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    [lookup, passed] = [r for r in caplog.records if r.name == "stageflow.stage"]
    assert lookup.levelno == logging.ERROR
    assert "exc_info" not in lookup.getMessage()
    assert lookup.exc_info is not None
    assert isinstance(lookup.exc_info[1], KeyError)
    assert '{}["missing"]' in caplog.text  # the stage's line in the traceback
    assert passed.exc_info is not None
    assert str(passed.exc_info[1]) == "kept"


def _failing_line(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
    """A log set-up that fails on every line with a traceback (a renderer that raced a thread)."""
    if event_dict.get("exc_info"):
        raise RuntimeError("deque mutated during iteration")
    return event_dict


@pytest.mark.anyio
@pytest.mark.parametrize("routed", [False, True], ids=["failed", "routed"])
async def test_a_log_line_that_cannot_be_written_fails_no_run_and_no_stage(
    caplog: pytest.LogCaptureFixture, routed: bool
) -> None:
    # stageflow's lines were written unguarded: a log set-up that raised on a
    # failed node's line (structlog's console renderer drawing frame locals
    # with rich while another thread changed them) went up from run(), and
    # the session ended failed by an "internal error", its failure routed to
    # an error edge or not; a stage's own ctx.log line failed the stage.
    structlog.configure(processors=[_failing_line, structlog.processors.KeyValueRenderer()])
    registry = stageflow.StageRegistry()

    @registry.register("Noisy")
    async def noisy(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.log.warning("stage.noted", exc_info=ValueError("noted"))
        assert ctx.log.new(fresh=True) is not None  # not a line: the target's own
        raise ValueError("boom")

    document = {
        "api_version": "1.0",
        "entry": "a",
        "nodes": [
            {"id": "a", "type": "stage", "stage": "Noisy", "next": "end"},
            {"id": "end", "type": "terminal", "result": {}},
        ],
    }
    if routed:
        document["nodes"][0]["fallback"] = "end"  # type: ignore[index]
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    with caplog.at_level(logging.ERROR):
        result = await stageflow.Session(pipeline, registry=registry).run()
    if routed:
        assert result.status is stageflow.SessionStatus.COMPLETED
    else:
        assert result.status is stageflow.SessionStatus.FAILED
        assert isinstance(result.error, stageflow.StageError)
        assert isinstance(result.error.__cause__, ValueError)
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "stage.noted: the warning line could not be written" in lost
    level = "warning" if routed else "error"
    assert f"node.finished: the {level} line could not be written" in lost
