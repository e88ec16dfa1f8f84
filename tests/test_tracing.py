"""Engine spans: the span tree, attributes, statuses, event and log correlation."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog
from example_support import load_example
from fakes import doc, fake_registry, load, parallel, stage, terminal
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from otlp_receiver import OtlpReceiver

import stageflow
import stageflow.tracing
from stageflow._telemetry import current_ids, enter_span, exit_span

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).parents[1] / "examples" / "reference"


@pytest.fixture
def reference_registry() -> stageflow.StageRegistry:
    # Loaded without leaving a module named "stages" behind (every example has one).
    registry: stageflow.StageRegistry = load_example("reference")[0].registry
    return registry


def tree(spans: tuple[ReadableSpan, ...]) -> dict[str, str | None]:
    """Span name -> parent span name."""
    by_id = {span.context.span_id: span.name for span in spans}
    return {span.name: by_id.get(span.parent.span_id) if span.parent else None for span in spans}


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


async def run_traced(
    document: dict[str, Any],
    provider: TracerProvider,
    registry: stageflow.StageRegistry | None = None,
    payload: dict[str, Any] | None = None,
) -> stageflow.SessionResult:
    registry = registry or fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload=payload, tracer_provider=provider
    )
    return await session.run()


async def test_reference_span_tree(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    reference_registry: stageflow.StageRegistry,
) -> None:
    pipeline = stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=reference_registry)
    session = stageflow.Session(
        pipeline,
        registry=reference_registry,
        payload={"text": "a b c d e"},
        session_id="s-1",
        tracer_provider=provider,
    )
    result = await session.run()
    spans = exporter.get_finished_spans()
    assert tree(spans) == {
        "run demo_full_flow": None,
        "stage start": "run demo_full_flow",
        "condition decide": "run demo_full_flow",
        "parallel fanout": "run demo_full_flow",
        "branch fanout/branch_a": "parallel fanout",
        "branch fanout/branch_b": "parallel fanout",
        "stage branch_a": "branch fanout/branch_a",
        "stage branch_b": "branch fanout/branch_b",
        "terminal finish": "run demo_full_flow",
    }
    assert len({span.context.trace_id for span in spans}) == 1
    root = named(spans, "run demo_full_flow")
    assert root.attributes is not None
    assert root.attributes["stageflow.session.id"] == "s-1"
    assert root.attributes["stageflow.pipeline.digest"] == pipeline.digest
    assert root.attributes["stageflow.outcome"] == "succeeded"
    start = named(spans, "stage start").attributes
    assert start == {
        "stageflow.node.id": "start",
        "stageflow.node.type": "stage",
        "stageflow.stage": "InitStage",
        "stageflow.attempt": 1,
        "stageflow.outcome": "succeeded",
    }
    assert named(spans, "parallel fanout").attributes["stageflow.parallel.policy"] == "all"  # type: ignore[index]
    assert named(spans, "branch fanout/branch_b").attributes["stageflow.branch"] == "branch_b"  # type: ignore[index]
    assert all(span.status.status_code is StatusCode.UNSET for span in spans)
    # Every history event names the span it happened in.
    ids = {format(s.context.span_id, "016x"): s for s in spans}
    for event in result.history:
        assert event.trace_id == format(root.context.trace_id, "032x")
        span = ids[event.span_id]  # type: ignore[index]
        expected_parent = format(span.parent.span_id, "016x") if span.parent else None
        assert event.parent_span_id == expected_parent
        if event.type in ("node_started", "node_finished"):
            assert span.attributes["stageflow.node.id"] == event.node_id  # type: ignore[index]
        if event.type.startswith("branch_"):
            assert span.name == f"branch {event.path}"


async def test_events_inside_a_stages_own_span_carry_its_ids(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = stageflow.StageRegistry()
    tracer = provider.get_tracer("the-application")

    @registry.register("Spans")
    async def spans(ctx: stageflow.StageContext) -> None:
        ctx.emit("before")
        with tracer.start_as_current_span("mine"):
            ctx.emit("inside")
        ctx.emit("after")

    document = doc([stage("a", "Spans", next="end"), terminal("end")])
    result = await run_traced(document, provider, registry)
    spans_by_name = {span.name: span for span in exporter.get_finished_spans()}
    node_id = format(spans_by_name["stage a"].context.span_id, "016x")
    mine_id = format(spans_by_name["mine"].context.span_id, "016x")
    by_type = {event.type: event for event in result.history if event.node_id == "a"}
    assert (by_type["inside"].span_id, by_type["inside"].parent_span_id) == (mine_id, node_id)
    for event_type in ("node_started", "before", "after", "node_finished"):
        assert by_type[event_type].span_id == node_id, event_type


def test_a_span_exited_in_another_context_still_ends(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def scenario() -> None:
        active = enter_span(provider.get_tracer("t"), "moved", {})
        assert current_ids() == active.ids
        contextvars.copy_context().run(exit_span, active, "succeeded")

    contextvars.copy_context().run(scenario)  # leaves the test's own context alone
    [span] = exporter.get_finished_spans()
    assert (span.name, span.attributes) == ("moved", {"stageflow.outcome": "succeeded"})
    assert current_ids() is None


async def test_no_provider_creates_no_spans_and_no_ids() -> None:
    result = await run_traced(doc([stage("a", "Set", next="end"), terminal("end")]), None)  # type: ignore[arg-type]
    assert all(e.trace_id is None and e.span_id is None for e in result.history)


async def test_failing_branch_is_error_and_cancelled_sibling_is_not(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc(
        [
            parallel("fan", ["bad", "hang"], next="end"),
            stage("bad", "Fail", config={"delay": 1}),
            stage("hang", "Hang"),
            terminal("end"),
        ]
    )
    result = await run_traced(document, provider)
    assert result.status is stageflow.SessionStatus.FAILED
    spans = exporter.get_finished_spans()
    bad = named(spans, "stage bad")
    assert bad.status.status_code is StatusCode.ERROR
    assert [e.name for e in bad.events] == ["exception"]
    assert named(spans, "branch fan/bad").status.status_code is StatusCode.ERROR
    for name in ("stage hang", "branch fan/hang"):
        span = named(spans, name)
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes["stageflow.outcome"] == "cancelled"  # type: ignore[index]
    assert named(spans, "run pipeline").attributes["stageflow.outcome"] == "failed"  # type: ignore[index]


async def test_any_losers_are_cancelled_not_errors(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc(
        [
            parallel("fan", ["win", "lose"], next="end", policy="any"),
            stage("win", "Set"),
            stage("lose", "Hang"),
            terminal("end"),
        ]
    )
    await run_traced(document, provider)
    lose = named(exporter.get_finished_spans(), "branch fan/lose")
    assert lose.status.status_code is StatusCode.UNSET
    assert lose.attributes["stageflow.outcome"] == "cancelled"  # type: ignore[index]


async def test_retried_stage_is_one_span_with_retry_events(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = fake_registry()

    @registry.register("Twice")
    async def twice(ctx: stageflow.StageContext) -> None:
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt}")

    node = stage("t", "Twice", next="end")
    node["retry"] = {"attempts": 3}
    await run_traced(doc([node, terminal("end")]), provider, registry)
    span = named(exporter.get_finished_spans(), "stage t")
    assert span.attributes["stageflow.attempt"] == 3  # type: ignore[index]
    assert [(e.name, e.attributes["stageflow.attempt"]) for e in span.events] == [
        ("retry", 1),
        ("retry", 2),
    ]  # type: ignore[index]
    assert span.status.status_code is StatusCode.UNSET


async def test_waits_are_span_events(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = fake_registry()
    session = stageflow.Session(
        load(
            doc([stage("w", "WaitStage", config={"input": "go"}, next="end"), terminal("end")]),
            registry,
        ),
        registry=registry,
        tracer_provider=provider,
    )
    session.send_input("go", 1)
    await session.run()
    # Taken from the backlog: received at once, without waiting.
    assert [e.name for e in named(exporter.get_finished_spans(), "stage w").events] == [
        "input_received"
    ]


async def test_node_log_lines_carry_the_node_span_ids(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with structlog.testing.capture_logs() as logs:
        await run_traced(doc([stage("a", "Set", next="end"), terminal("end")]), provider)
    structlog.reset_defaults()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    lines = [line for line in logs if line["event"] in ("node.started", "node.finished")]
    assert [(line["event"], line["node_id"]) for line in lines] == [
        ("node.started", "a"),
        ("node.finished", "a"),
        ("node.started", "end"),
        ("node.finished", "end"),
    ]
    for line in lines:
        span = spans[f"{'stage' if line['node_id'] == 'a' else 'terminal'} {line['node_id']}"]
        assert line["span_id"] == format(span.context.span_id, "016x")
        assert line["trace_id"] == format(span.context.trace_id, "032x")
    finished = [line for line in lines if line["event"] == "node.finished"]
    assert all(line["outcome"] == "succeeded" and line["duration_ms"] >= 0 for line in finished)


async def test_unconfigured_structlog_gets_no_node_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await run_traced(doc([stage("a", "Set", next="end"), terminal("end")]), None)  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


async def test_real_otlp_export_of_a_run(
    otlp_receiver: OtlpReceiver, reference_registry: stageflow.StageRegistry
) -> None:
    provider = stageflow.tracing.configure(
        exporter="otlp", endpoint=otlp_receiver.endpoint, set_global=False
    )
    try:
        pipeline = stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=reference_registry)
        session = stageflow.Session(
            pipeline,
            registry=reference_registry,
            payload={"text": "a b c"},
            tracer_provider=provider,
        )
        await session.run()
        provider.force_flush()
    finally:
        provider.shutdown()
    assert otlp_receiver.names() == sorted(
        [
            "run demo_full_flow",
            "stage start",
            "condition decide",
            "parallel fanout",
            "branch fanout/branch_a",
            "branch fanout/branch_b",
            "stage branch_a",
            "stage branch_b",
            "terminal finish",
        ]
    )
    stage_a = otlp_receiver.span("stage branch_a")
    assert stage_a.parent_span_id == otlp_receiver.span("branch fanout/branch_a").span_id
    assert stage_a.attributes["stageflow.stage"] == "WorkerAStage"
    assert otlp_receiver.rejected == []


async def test_a_restored_session_starts_a_new_trace_linked_to_the_original(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "ask",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "go"},
                "next": "end",
            },
            terminal("end"),
        ]
    )
    pipeline = load(document, registry)
    session = stageflow.Session(pipeline, registry=registry, tracer_provider=provider)
    suspended = await session.run(suspend=True)
    assert suspended.status is stageflow.SessionStatus.WAITING
    [first_run] = [s for s in exporter.get_finished_spans() if s.name == "run pipeline"]
    assert first_run.attributes is not None
    assert first_run.attributes["stageflow.outcome"] == "suspended"
    assert first_run.status.status_code is not StatusCode.ERROR
    snapshot = session.to_dict()
    assert snapshot["trace"] == {
        "trace_id": format(first_run.context.trace_id, "032x"),
        "span_id": format(first_run.context.span_id, "016x"),
    }
    exporter.clear()
    restored = stageflow.Session.from_dict(snapshot, registry=registry, tracer_provider=provider)
    restored.send_input("go", 1)
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    spans = exporter.get_finished_spans()
    run_span = named(spans, "run pipeline")
    assert run_span.context.trace_id != first_run.context.trace_id
    [link] = run_span.links
    assert link.context.trace_id == first_run.context.trace_id
    assert link.context.span_id == first_run.context.span_id
    assert link.attributes == {"stageflow.link.kind": "restored_from"}
    # The history's events after the restore carry the new trace.
    resumed = next(e for e in result.history if e.type == "session_resumed")
    assert resumed.trace_id == format(run_span.context.trace_id, "032x")


GLOBAL_PROVIDER_SCRIPT = textwrap.dedent(
    """
    import trio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import stageflow

    pipeline = stageflow.Pipeline.from_dict(
        {"api_version": "1.0", "entry": "end", "nodes": [{"id": "end", "type": "terminal"}]}
    )
    early = stageflow.Session(pipeline)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    late = stageflow.Session(pipeline)


    async def main():
        await early.run()
        first = len(exporter.get_finished_spans())
        await late.run()
        print(first, len(exporter.get_finished_spans()) - first)
        print(early.history[0].trace_id is None, late.history[0].trace_id is not None)


    trio.run(main)
    """
)


def test_tracing_is_decided_when_the_session_is_made() -> None:
    """docs/observability.md: a session made before the global provider was set traces nothing."""
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "2", "True", "True"]
