"""What spans say: error semantics, item names, conditions, subpipelines, reasons, links."""

from __future__ import annotations

import datetime
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stageflow
from stageflow._errors import MAX_ERROR_MESSAGE

pytestmark = pytest.mark.anyio


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    return registry


async def _run(
    document: dict[str, Any], provider: TracerProvider, **kw: Any
) -> stageflow.SessionResult:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider, **kw
    )
    return await session.run()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = _named(spans, name)
    return span


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


FAILING_BRANCH = doc(
    [
        parallel("fan", ["ok", "bad"], next="end"),
        stage("ok", "Set", config={"values": {}}),
        stage("bad", "Fail", config={"message": "no luck"}),
        terminal(),
    ]
)


async def test_a_failure_is_recorded_once_where_it_was_raised(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    result = await _run(FAILING_BRANCH, provider)
    assert result.status is stageflow.SessionStatus.FAILED
    spans = exporter.get_finished_spans()
    with_exception = [s.name for s in spans if any(e.name == "exception" for e in s.events)]
    assert with_exception == ["stage bad"]
    failed = ["stage bad", "branch fan/bad", "parallel fan", "run pipeline"]
    for name in failed:
        span = _one(spans, name)
        assert span.status.status_code is StatusCode.ERROR, name
        assert _attr(span, "error.type"), name
    assert _attr(_one(spans, "stage bad"), "error.type") == "stageflow.StageError"
    # The status description is the class name and the message (tracing/CATALOGUE.md).
    assert result.error is not None
    for name in failed:
        assert _one(spans, name).status.description == f"StageError: {result.error}", name


async def test_every_error_span_has_an_error_type(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await _run(FAILING_BRANCH, provider)
    errors = [s for s in exporter.get_finished_spans() if s.status.status_code is StatusCode.ERROR]
    assert errors
    assert all(_attr(s, "error.type") for s in errors)


async def test_a_timeout_is_its_own_outcome(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc([stage("slow", "Hang", next="end"), terminal()])
    document["nodes"][0]["timeout"] = 0.05  # short: asyncio's clock is real
    result = await _run(document, provider)
    assert result.status is stageflow.SessionStatus.FAILED
    span = _one(exporter.get_finished_spans(), "stage slow")
    assert _attr(span, "stageflow.outcome") == "timed_out"
    assert span.status.status_code is StatusCode.ERROR
    assert _attr(span, "error.type") == "stageflow.NodeTimeoutError"


async def test_a_session_timeout_ends_the_run_span_timed_out(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Short: asyncio's clock is real (5 s made this test take 5 s there).
    document = doc([stage("hang", "Hang", next="end"), terminal()], limits={"timeout": 0.05})
    result = await _run(document, provider)
    assert result.status is stageflow.SessionStatus.TIMED_OUT
    spans = exporter.get_finished_spans()
    assert _attr(_one(spans, "run pipeline"), "stageflow.outcome") == "timed_out"
    hang = _one(spans, "stage hang")
    assert _attr(hang, "stageflow.outcome") == "cancelled"
    assert _attr(hang, "stageflow.cancel.reason") == "session_timeout"


async def test_a_routed_failure_is_marked_handled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc([stage("bad", "Fail", next="end"), terminal(), terminal("handler")])
    document["nodes"][0]["on_error"] = [{"errors": ["ValueError"], "next": "handler"}]
    result = await _run(document, provider)
    assert result.status is stageflow.SessionStatus.COMPLETED
    bad = _one(exporter.get_finished_spans(), "stage bad")
    assert bad.status.status_code is StatusCode.ERROR
    assert _attr(bad, "stageflow.error.handled") is True


async def test_an_unhandled_failure_is_marked_unhandled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await _run(doc([stage("bad", "Fail", next="end"), terminal()]), provider)
    bad = _one(exporter.get_finished_spans(), "stage bad")
    assert _attr(bad, "stageflow.error.handled") is False


MAP = doc(
    [
        stage("seed", "Set", next="each", config={"values": {"items": [1, 2, 3]}}),
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "item",
            "concurrency": 2,
            "next": "end",
        },
        stage("item", "Set", config={"values": {}}),
        terminal(),
    ]
)
MAP["nodes"][0]["outputs"] = {"items": "items"}


async def test_map_item_spans_share_one_name_and_carry_their_index(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await _run(MAP, provider)
    items = _named(exporter.get_finished_spans(), "item each")
    assert sorted(_attr(s, "stageflow.map.index") for s in items) == [0, 1, 2]
    assert not [s for s in exporter.get_finished_spans() if "[" in s.name]


async def test_a_condition_span_says_which_branch_it_took_and_where_it_goes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc(
        [
            {
                "id": "decide",
                "type": "condition",
                "conditions": [
                    {"if": {"==": [{"var": "x"}, 1]}, "then": "one"},
                    {"if": {"==": [{"var": "x"}, 2]}, "then": "two"},
                ],
                "else": "one",
            },
            terminal("one"),
            terminal("two"),
        ]
    )
    await _run(document, provider, payload={"x": 2})
    span = _one(exporter.get_finished_spans(), "condition decide")
    assert _attr(span, "stageflow.condition.branch") == "1"
    assert _attr(span, "stageflow.next") == "two"


async def test_a_subpipeline_span_names_the_pipeline_it_runs(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner = {"entry": "done", "nodes": [terminal("done")]}
    document = doc(
        [{"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "end"}, terminal()],
        subpipelines={"inner": inner},
    )
    await _run(document, provider)
    spans = exporter.get_finished_spans()
    call = _one(spans, "subpipeline call")
    assert _attr(call, "stageflow.subpipeline.name") == "inner"
    assert _one(spans, "terminal done").parent.span_id == call.context.span_id  # type: ignore[union-attr]


RACE = doc(
    [
        parallel("race", ["fast", "slow"], next="end", policy="any"),
        stage("fast", "Set", config={"values": {}, "delay": 1}),
        stage("slow", "Hang"),
        terminal(),
    ]
)


async def test_the_loser_of_a_race_is_cancelled_for_losing(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await _run(RACE, provider)
    spans = exporter.get_finished_spans()
    for name in ("branch race/slow", "stage slow"):
        span = _one(spans, name)
        assert _attr(span, "stageflow.outcome") == "cancelled"
        assert _attr(span, "stageflow.cancel.reason") == "lost_race"


async def test_a_sibling_failure_is_the_reason_of_a_cancelled_branch(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc(
        [
            parallel("fan", ["bad", "slow"], next="end"),
            stage("bad", "Fail"),
            stage("slow", "Hang"),
            terminal(),
        ]
    )
    await _run(document, provider)
    slow = _one(exporter.get_finished_spans(), "branch fan/slow")
    assert _attr(slow, "stageflow.cancel.reason") == "sibling_failed"


async def test_session_cancel_is_the_reason_on_every_cancelled_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    document = doc([stage("hang", "Hang", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await session.run()

        tg.start_soon(run)
        # Cancelled once the stage has started (a real 10 ms sleep raced it on asyncio).
        stream = session.events(buffer=0)
        async for event in stream:
            if event.type == "node_started" and event.node_id == "hang":
                break
        await stream.aclose()
        session.cancel()
    spans = exporter.get_finished_spans()
    for name in ("stage hang", "run pipeline"):
        assert _attr(_one(spans, name), "stageflow.cancel.reason") == "session_cancelled"


WAITING = doc([stage("ask", "Wait", next="end", outputs={"payload": "answer"}), terminal()])
WAITING["nodes"][0]["config"] = {"input": "answer"}


async def test_a_stage_that_got_an_input_links_to_the_span_that_sent_it(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, tracer_provider=provider
    )
    tracer = provider.get_tracer("app")
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "answer")
        with tracer.start_as_current_span("handle request") as sender:
            session.send_input("answer", {"text": "yes"})
    # The wait cut the trace: the stage's span goes on in a second segment.
    links = [
        link
        for span in _named(exporter.get_finished_spans(), "stage ask")
        for link in span.links
        if link.attributes == {"stageflow.link.kind": "input_from"}
    ]
    [link] = links
    assert link.context.span_id == sender.get_span_context().span_id


async def test_an_input_from_the_backlog_links_to_its_sender(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, tracer_provider=provider
    )
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("early sender") as sender:
        session.send_input("answer", {"text": "early"})
    await session.run()
    [link] = _one(exporter.get_finished_spans(), "stage ask").links
    assert link.context.span_id == sender.get_span_context().span_id


async def test_an_input_sent_to_a_suspended_session_is_received_on_the_stage_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given to the saved wait (as a Worker's turn gives its inputs), it was
    # an input_received event in the history but none on the stage's span.
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, tracer_provider=provider
    )
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    session.send_input("answer", {"text": "later"})
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED
    waited, received = _named(exporter.get_finished_spans(), "stage ask")
    assert [e.name for e in waited.events] == ["waiting_for_input"]
    assert [(e.name, e.attributes) for e in received.events] == [
        ("input_received", {"stageflow.input.type": "answer"})
    ]


async def test_an_input_sent_to_a_saved_wait_of_a_metered_session_says_how_long_it_waited(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # A metered session keeps when the wait began, and the histogram got how
    # long it waited; the stage span's input_received said nothing of it.
    from opentelemetry.sdk.metrics import MeterProvider

    now = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry),
        registry=registry,
        tracer_provider=provider,
        meter_provider=MeterProvider(),
        clock=lambda: now[0],
    )
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    [call] = session.to_dict()["position"]["stage"]["calls"]
    now[0] += datetime.timedelta(seconds=42)
    waited = (now[0] - datetime.datetime.fromisoformat(call["since"])).total_seconds()
    session.send_input("answer", {"text": "later"})
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED
    _, received = _named(exporter.get_finished_spans(), "stage ask")
    assert [(e.name, e.attributes) for e in received.events] == [
        ("input_received", {"stageflow.input.type": "answer", "stageflow.wait.seconds": waited})
    ]


class _Halt(BaseException):
    """A stage's own BaseException: no Exception, and no cancellation either."""


def _halting(raised: type[BaseException]) -> tuple[stageflow.StageRegistry, dict[str, Any]]:
    registry = _registry()

    @registry.register("Halt")
    async def halt(ctx: stageflow.StageContext) -> dict[str, Any]:
        raise raised("stop here")

    document = doc(
        [
            parallel("fan", ["bad", "slow"], next="end"),
            stage("bad", "Halt"),
            stage("slow", "Hang"),
            terminal(),
        ]
    )
    return registry, document


async def _run_until_raised(
    registry: stageflow.StageRegistry, document: dict[str, Any], provider: TracerProvider
) -> stageflow.Session:
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    with pytest.raises(BaseException) as raised:  # noqa: PT011 (which one is the test's point)
        await session.run()
    assert not isinstance(raised.value, Exception)
    return session


async def test_a_stages_own_base_exception_fails_the_spans_it_crosses(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # The stage's span said failed with no ERROR status and no error.type,
    # and its branch said cancelled with no reason.
    registry, document = _halting(_Halt)
    session = await _run_until_raised(registry, document, provider)
    assert session.status is stageflow.SessionStatus.FAILED
    spans = exporter.get_finished_spans()
    for name in ("stage bad", "branch fan/bad", "parallel fan"):
        span = _one(spans, name)
        assert _attr(span, "stageflow.outcome") == "failed", name
        assert span.status.status_code is StatusCode.ERROR, name
        assert _attr(span, "error.type") == f"{__name__}._Halt", name
    assert _attr(_one(spans, "stage bad"), "stageflow.error.handled") is False
    with_exception = [s.name for s in spans if any(e.name == "exception" for e in s.events)]
    assert with_exception == ["stage bad"]
    assert _one(spans, "run pipeline").status.status_code is StatusCode.ERROR


async def test_a_keyboard_interrupt_cancels_the_spans_it_crosses(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry, document = _halting(KeyboardInterrupt)
    session = await _run_until_raised(registry, document, provider)
    assert session.status is stageflow.SessionStatus.CANCELLED  # as the session ends
    spans = exporter.get_finished_spans()
    for name in ("stage bad", "branch fan/bad", "parallel fan", "run pipeline"):
        span = _one(spans, name)
        assert _attr(span, "stageflow.outcome") == "cancelled", name
        assert _attr(span, "stageflow.cancel.reason") == "cancelled", name
        assert span.status.status_code is StatusCode.UNSET, name


async def test_a_cancelled_wait_span_says_why(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # The wait span was the one cancelled span without stageflow.cancel.reason.
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry),
        registry=registry,
        tracer_provider=provider,
        trace_wait_threshold=None,  # not cut: the wait span is open when cancel() comes
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "answer")
        session.cancel()
    spans = exporter.get_finished_spans()
    for name in ("wait answer", "stage ask", "run pipeline"):
        span = _one(spans, name)
        assert _attr(span, "stageflow.outcome") == "cancelled", name
        assert _attr(span, "stageflow.cancel.reason") == "session_cancelled", name


async def test_a_wait_that_timed_out_is_an_error_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # The wait span said timed_out with status UNSET and no error.type.
    document = doc([stage("ask", "Wait", next="end"), terminal()])
    document["nodes"][0]["config"] = {"input": "answer", "timeout": 0.05}
    result = await _run(document, provider)
    assert result.status is stageflow.SessionStatus.FAILED
    spans = exporter.get_finished_spans()
    for name in ("wait answer", "stage ask"):
        span = _one(spans, name)
        assert _attr(span, "stageflow.outcome") == "timed_out", name
        assert span.status.status_code is StatusCode.ERROR, name
        assert _attr(span, "error.type") == "stageflow.InputTimeoutError", name
    # Recorded once, where it was raised: the wait.
    with_exception = [s.name for s in spans if any(e.name == "exception" for e in s.events)]
    assert with_exception == ["wait answer"]
    [timed_out] = [e for e in result.history if e.type == "input_timeout"]
    assert timed_out.span_id == f"{_one(spans, 'stage ask').context.span_id:016x}"


class _Unshowable(BaseException):
    """A stage's own BaseException whose ``str()`` fails."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


class _Long(BaseException):
    """A stage's own BaseException with a megabyte message."""

    def __str__(self) -> str:
        return "z" * 1_000_000


@pytest.mark.parametrize("raised", [_Unshowable, _Long], ids=["str() fails", "1 MB message"])
async def test_a_stages_own_base_exception_that_cannot_be_shown_is_recorded_bounded(
    provider: TracerProvider, exporter: InMemorySpanExporter, raised: type[BaseException]
) -> None:
    # The SDK's record_exception calls str() on it: run() raised the
    # RuntimeError of a failing __str__ (the stage's span and the run's never
    # ended), and a long message went whole into the exception event, twice.
    registry, document = _halting(raised)
    session = await _run_until_raised(registry, document, provider)
    assert session.status is stageflow.SessionStatus.FAILED
    spans = exporter.get_finished_spans()
    [event] = [e for e in _one(spans, "stage bad").events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == f"{__name__}.{raised.__qualname__}"
    assert len(str(event.attributes)) < 3 * MAX_ERROR_MESSAGE
    assert _one(spans, "run pipeline").status.status_code is StatusCode.ERROR
    [failed] = [e for e in session.history if e.type == "session_failed"]
    assert len(str(failed.payload)) < 3 * MAX_ERROR_MESSAGE
