"""Long waits cut a run's trace into linked segments; a restore rebuilds the spans a crash lost."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import pytest
import structlog.testing
from fakes import doc, fake_registry, load, parallel, scaled, stage, terminal, wait_until_waiting
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased

import stageflow
import stageflow.tracing

pytestmark = pytest.mark.anyio

ROOT_LINK = {"stageflow.link.kind": "previous_segment"}
CONTINUES = {"stageflow.link.kind": "continues"}


class Traced:
    """A provider (with stageflow's id generator) and its in-memory exporter."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            sampler=sampler, id_generator=stageflow.tracing.RestoringIdGenerator()
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def traced() -> Iterator[Traced]:
    kit = Traced()
    yield kit
    kit.provider.shutdown()


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    registry.add(stageflow.SleepStage, name="Sleep")
    return registry


def _session(
    document: Mapping[str, Any], traced: Traced, **kw: Any
) -> tuple[stageflow.Session, stageflow.StageRegistry]:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=traced.provider, **kw
    )
    return session, registry


def _waiting(node_id: str, *, next: str | None = None, **config: Any) -> dict[str, Any]:
    node = stage(node_id, "Wait", next=next, outputs={"payload": node_id})
    node["config"] = {"input": "go", **config}
    return node


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


def orphans(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """Spans whose parent, or a link's target, is not among the exported spans."""
    ids = {(s.context.trace_id, s.context.span_id) for s in spans}
    found = [
        f"{s.name}: parent"
        for s in spans
        if s.parent is not None and (s.parent.trace_id, s.parent.span_id) not in ids
    ]
    found += [
        f"{s.name}: link {link.attributes}"
        for s in spans
        for link in s.links
        if (link.context.trace_id, link.context.span_id) not in ids
    ]
    return found


def segment_tree(spans: tuple[ReadableSpan, ...]) -> list[list[str]]:
    """Per trace, in start order: each span as ``name < parent name`` (``name`` for a root)."""
    by_id = {s.context.span_id: s for s in spans}
    traces: dict[int, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        traces.setdefault(span.context.trace_id, []).append(span)
    return [
        [f"{s.name} < {by_id[s.parent.span_id].name}" if s.parent else s.name for s in members]
        for members in traces.values()
    ]


def span_tree(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """Every span as an indented ``name [outcome]`` line under its parent, siblings sorted.

    A rebuilt span says so, a span with links names their kinds; a span whose
    parent is not among ``spans`` is drawn nowhere (``orphans()`` names it).
    """

    def label(span: ReadableSpan) -> str:
        text = f"{span.name} [{_attr(span, 'stageflow.outcome')}]"
        if _attr(span, "stageflow.span.rebuilt"):
            text += " rebuilt"
        kinds = [(link.attributes or {}).get("stageflow.link.kind") for link in span.links]
        return text + (f" links={','.join(map(str, kinds))}" if kinds else "")

    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=label):
            lines.append("  " * depth + label(span))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


WAITING = doc([_waiting("ask", next="end"), terminal()])


async def test_a_long_wait_cuts_the_trace_into_linked_segments(traced: Traced) -> None:
    session, _ = _session(WAITING, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        # Mid-wait: everything so far is exported, and every parent with it.
        mid = traced.spans()
        assert sorted(s.name for s in mid) == ["run pipeline", "stage ask", "wait go"]
        assert {_attr(s, "stageflow.outcome") for s in mid} == {"waiting"}
        assert orphans(mid) == []
        session.send_input("go", {"ok": True})
    spans = traced.spans()
    assert segment_tree(spans) == [
        ["run pipeline", "stage ask < run pipeline", "wait go < stage ask"],
        ["run pipeline", "stage ask < run pipeline", "terminal end < run pipeline"],
    ]
    assert orphans(spans) == []
    first, second = [s for s in spans if s.name == "run pipeline"]
    assert _attr(second, "stageflow.segment") == 2
    # Its low bits are the first segment's, random: flagged so (W3C random-trace-id).
    assert second.context.trace_flags & 0x02 == 0x02
    assert [(link.context.span_id, link.attributes) for link in second.links] == [
        (first.context.span_id, ROOT_LINK)
    ]
    ask_before, ask_after = [s for s in spans if s.name == "stage ask"]
    assert [link.attributes for link in ask_after.links] == [CONTINUES]
    assert ask_after.links[0].context.span_id == ask_before.context.span_id
    assert _attr(ask_after, "stageflow.outcome") == "succeeded"
    assert _attr(second, "stageflow.outcome") == "succeeded"
    # The wait time is on the event that ends it, in the second segment.
    [received] = [e for e in ask_after.events if e.name == "input_received"]
    assert received.attributes is not None
    assert received.attributes["stageflow.wait.seconds"] >= 0


async def test_a_ratio_sampler_samples_every_segment_and_restore_of_a_run_alike() -> None:
    # Each segment's root, and a restored run's, is a new trace: the ratio
    # sampler decided afresh, so a run sampled at first lost what came after
    # a long wait or a restore whenever that was sampled out.
    kit = Traced(ParentBased(TraceIdRatioBased(0.5)))
    exporter, provider = kit.exporter, kit.provider
    registry = _registry()
    nodes = [_waiting("ask", next="again"), _waiting("again", next="last"), _waiting("last")]
    pipeline = load(doc([*nodes[:2], {**nodes[2], "next": "end"}, terminal()]), registry)
    for _ in range(40):
        session = stageflow.Session(pipeline, registry=registry, tracer_provider=provider)
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            for _ in ("ask", "again"):  # two long waits: segments 2 and 3
                await wait_until_waiting(session, "go")
                session.send_input("go", {})
            await wait_until_waiting(session, "go")
            snapshot = session.to_dict()  # in a cut wait: a restore starts a new run
            tg.cancel_scope.cancel()
        restored = stageflow.Session.from_dict(
            snapshot, registry=registry, tracer_provider=provider
        )
        restored.send_input("go", {})
        assert (await restored.run()).status is stageflow.SessionStatus.COMPLETED
    provider.shutdown()
    roots: dict[str, list[tuple[int, int]]] = {}
    for span in exporter.get_finished_spans():
        if span.name == "run pipeline":
            kinds = [link.attributes for link in span.links]
            restored_from = int(kinds == [{"stageflow.link.kind": "restored_from"}])
            roots.setdefault(_attr(span, "stageflow.session.id"), []).append(
                (restored_from, _attr(span, "stageflow.segment") or 1)
            )
    # Every run sampled at all has its four segments (the fourth records the
    # task's cancellation) and its restored run; about half are.
    expected = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    assert [sorted(runs) for runs in roots.values()] == [expected] * len(roots)
    assert 0 < len(roots) < 40


async def test_a_run_sampled_as_its_callers_span_is_sampled_in_every_segment() -> None:
    # The caller's trace id fails the ratio (low bits all ones): its first
    # segment was sampled because the caller's span was. The next segment
    # kept those low bits, so the ratio sampler dropped the rest of the run.
    kit = Traced(ParentBased(TraceIdRatioBased(0.5)))
    exporter, provider = kit.exporter, kit.provider
    registry = _registry()
    nodes = [_waiting("ask", next="again"), _waiting("again", next="end"), terminal()]
    session = stageflow.Session(
        load(doc(nodes), registry), registry=registry, tracer_provider=provider
    )
    caller = trace.SpanContext(
        1 << 64 | (1 << 64) - 1,
        7,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    async with anyio.create_task_group() as tg:
        with trace.use_span(trace.NonRecordingSpan(caller)):
            tg.start_soon(session.run)
        for _ in ("ask", "again"):
            await wait_until_waiting(session, "go")
            session.send_input("go", {})
    provider.shutdown()
    roots = [s for s in exporter.get_finished_spans() if s.name == "run pipeline"]
    assert [_attr(s, "stageflow.segment") or 1 for s in roots] == [1, 2, 3]
    assert roots[0].context.trace_id == caller.trace_id
    assert roots[0].parent is not None
    assert roots[0].parent.span_id == caller.span_id
    assert roots[1].context.trace_id & (1 << 64) - 1 == 0  # sampled at any ratio
    assert roots[2].context.trace_id & (1 << 64) - 1 == 0
    # Not flagged random (W3C's random-trace-id, 0x02): they were, with low bits of 0.
    assert [s.context.trace_flags & 0x02 for s in roots[1:]] == [0, 0]


async def test_history_events_carry_the_ids_of_their_segment(traced: Traced) -> None:
    session, _ = _session(WAITING, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        session.send_input("go", {})
    result_events = {e.type: e for e in session.history}
    roots = [s for s in traced.spans() if s.name == "run pipeline"]
    assert result_events["session_started"].trace_id == f"{roots[0].context.trace_id:032x}"
    assert result_events["session_completed"].trace_id == f"{roots[1].context.trace_id:032x}"


@pytest.mark.parametrize(
    ("threshold", "error"),
    [("60", TypeError), (True, TypeError), (-1, ValueError), (math.nan, ValueError)],
)
async def test_a_threshold_that_is_not_seconds_is_refused(
    traced: Traced, threshold: Any, error: type[Exception]
) -> None:
    # It was kept as given: a traced run failed at its first timed input wait
    # with a TypeError comparing an int with a str.
    with pytest.raises(error, match="trace_wait_threshold"):
        _session(WAITING, traced, trace_wait_threshold=threshold)


async def test_no_threshold_no_segments(traced: Traced) -> None:
    session, _ = _session(WAITING, traced, trace_wait_threshold=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        assert traced.spans() == ()  # everything is open across the wait
        session.send_input("go", {})
    assert len({s.context.trace_id for s in traced.spans()}) == 1


async def test_a_wait_with_a_short_timeout_does_not_cut(traced: Traced) -> None:
    document = doc([_waiting("ask", next="end", timeout=30), terminal()])
    session, _ = _session(document, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        assert traced.spans() == ()
        session.send_input("go", {})
    assert len({s.context.trace_id for s in traced.spans()}) == 1


@pytest.mark.trio_only
@pytest.mark.parametrize(("seconds", "segments"), [(30, 1), (3600, 2)])
async def test_only_a_timer_longer_than_the_threshold_cuts(
    traced: Traced, seconds: int, segments: int
) -> None:
    document = doc([stage("nap", "Sleep", next="end", config={"seconds": seconds}), terminal()])
    session, _ = _session(document, traced)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    spans = traced.spans()
    assert len({s.context.trace_id for s in spans}) == segments
    assert orphans(spans) == []


async def test_a_working_branch_keeps_the_segment_open_until_it_ends(traced: Traced) -> None:
    document = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            _waiting("a"),
            stage("b", "Set", config={"values": {}, "delay": 5}),
            terminal(),
        ]
    )
    session, _ = _session(document, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        assert traced.spans() == ()  # branch b works: nothing is cut
        # Once b ends, only the wait is left: the segment ends.
        stream = session.events(buffer=0)
        async for event in stream:
            if event.type == "branch_finished":
                break
        await stream.aclose()
        names = sorted(s.name for s in traced.spans())
        assert "run pipeline" in names
        assert "stage a" in names
        assert orphans(traced.spans()) == []
        session.send_input("go", {})
    assert segment_tree(traced.spans())[1] == [
        "run pipeline",
        "parallel fan < run pipeline",
        "branch fan/a < parallel fan",
        "stage a < branch fan/a",
        "terminal end < run pipeline",
    ]
    assert orphans(traced.spans()) == []


@pytest.mark.parametrize("ending", ["cancel", "outside", "deadline"])
async def test_a_run_ended_in_a_cut_wait_ends_in_one_more_segment(
    traced: Traced, ending: str
) -> None:
    # The first wait torn down ended its branch while the other still
    # counted as waiting: that cut the trace again, so the teardown spread
    # over two more segments, the first of them ending "waiting".
    document = doc(
        [parallel("fan", ["a", "b"], next="end"), _waiting("a"), _waiting("b"), terminal()],
        limits={"timeout": scaled(10)} if ending == "deadline" else {},
    )
    session, _ = _session(document, traced, trace_wait_threshold=scaled(1))
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await session.run()

        tg.start_soon(run)
        await wait_until_waiting(session, "go", 2)
        assert len({s.context.trace_id for s in traced.spans()}) == 1  # cut
        if ending == "cancel":
            session.cancel()
        elif ending == "outside":
            tg.cancel_scope.cancel()
    spans = traced.spans()
    assert orphans(spans) == []
    roots = [s for s in spans if s.name == "run pipeline"]
    assert [_attr(s, "stageflow.outcome") for s in roots] == [
        "waiting",
        {"cancel": "cancelled", "outside": "cancelled", "deadline": "timed_out"}[ending],
    ]
    assert len({s.context.trace_id for s in spans}) == 2
    assert sorted(n for n in segment_tree(spans)[1] if n.startswith("stage")) == [
        "stage a < branch fan/a",
        "stage b < branch fan/b",
    ]


CRASHY = doc(
    [
        stage("first", "Set", next="fan", config={"values": {}}),
        parallel("fan", ["a", "b"], next="end"),
        _waiting("a"),
        stage("b", "Set", config={"values": {}, "delay": 5}),
        terminal(),
    ]
)


async def _until_started(
    session: stageflow.Session, node_id: str | None, event: str = "node_started"
) -> None:
    """Block until ``node_id`` has started (its ``event``, ``node_started``; no polling)."""
    stream = session.events(buffer=0)
    try:
        while not any(e.type == event and e.node_id == node_id for e in session.history):
            await stream.__anext__()
    finally:
        await stream.aclose()


async def _crashed(traced: Traced) -> tuple[dict[str, Any], Any, stageflow.StageRegistry]:
    """CRASHY's snapshot while b works (spans open), what was exported, then the "crash"."""
    session, registry = _session(CRASHY, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        await _until_started(session, "b")  # trio starts the branches in any order
        snapshot = json.loads(json.dumps(session.to_dict()))  # b still works: spans are open
        exported_before_crash = traced.spans()
        tg.cancel_scope.cancel()  # the process "dies": nothing it exports from here counts
    return snapshot, exported_before_crash, registry


async def test_a_restore_after_a_crash_rebuilds_the_open_spans(traced: Traced) -> None:
    snapshot, exported_before_crash, registry = await _crashed(traced)
    open_spans = snapshot["trace"]["open"]
    assert sorted(s["name"] for s in open_spans) == [
        "branch fan/a",
        "branch fan/b",
        "parallel fan",
        "run pipeline",
        "stage a",
        "stage b",
        "wait go",
    ]
    seen: set[str | None] = {None}
    for span in open_spans:  # parents first: a restore rebuilds them in this order
        assert span["parent_span_id"] in seen
        seen.add(span["span_id"])
    assert sorted(s.name for s in exported_before_crash) == ["stage first"]
    assert orphans(exported_before_crash) == [
        "stage first: parent"
    ]  # its run span died with the process

    after = Traced()
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, tracer_provider=after.provider
    )
    assert after.spans() == ()  # rebuilt when the restored session's run starts
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)
        await wait_until_waiting(restored, "go")
        restored.send_input("go", {})
    after.provider.shutdown()
    everything = exported_before_crash + after.spans()
    assert orphans(everything) == []
    # The exact tree: the crashed run's open spans rebuilt around the one it
    # exported, then the restored run, linked to the rebuilt root.
    assert span_tree(everything) == [
        "run pipeline [interrupted] rebuilt",
        "  parallel fan [interrupted] rebuilt",
        "    branch fan/a [interrupted] rebuilt",
        "      stage a [interrupted] rebuilt",
        "        wait go [interrupted] rebuilt",
        "    branch fan/b [interrupted] rebuilt",
        "      stage b [interrupted] rebuilt",
        "  stage first [succeeded]",
        "run pipeline [succeeded] links=restored_from",
        "  parallel fan [succeeded]",
        "    branch fan/a [succeeded]",
        "      stage a [succeeded]",
        "        wait go [succeeded]",
        "    branch fan/b [succeeded]",
        "      stage b [succeeded]",
        "  terminal end [succeeded]",
    ]
    rebuilt = [s for s in after.spans() if _attr(s, "stageflow.span.rebuilt")]
    assert [f"{s.context.span_id:016x}" for s in rebuilt] == [s["span_id"] for s in open_spans]
    assert {_attr(s, "stageflow.outcome") for s in rebuilt} == {"interrupted"}
    ids = [(s.context.trace_id, s.context.span_id) for s in everything]
    assert len(ids) == len(set(ids))  # each span exported once
    # The restored run links to the (rebuilt) root of the run that took the snapshot.
    new_root = next(
        s
        for s in after.spans()
        if s.name == "run pipeline" and not _attr(s, "stageflow.span.rebuilt")
    )
    assert [link.context.span_id for link in new_root.links] == [
        int(snapshot["trace"]["span_id"], 16)
    ]


async def test_a_crash_snapshot_restored_twice_rebuilds_its_spans_once(traced: Traced) -> None:
    # Each restore exported the open spans again: the same span ids twice.
    snapshot, exported_before_crash, registry = await _crashed(traced)
    after = Traced()
    for _ in range(2):  # the first restored run did not get far enough to be stored again
        restored = stageflow.Session.from_dict(
            snapshot, registry=registry, tracer_provider=after.provider
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(restored.run)
            await wait_until_waiting(restored, "go")
            restored.send_input("go", {})
    after.provider.shutdown()
    everything = exported_before_crash + after.spans()
    assert orphans(everything) == []
    rebuilt = [s for s in after.spans() if _attr(s, "stageflow.span.rebuilt")]
    assert len(rebuilt) == len(snapshot["trace"]["open"])
    ids = [(s.context.trace_id, s.context.span_id) for s in everything]
    assert len(ids) == len(set(ids))


async def test_a_snapshot_keeps_the_attributes_a_stage_set_that_it_can_restore(
    traced: Traced,
) -> None:
    # Any attribute a stage set on its span went into the snapshot as it was:
    # a list (a valid OpenTelemetry value), None or NaN made from_dict refuse
    # the engine's own snapshot, and bytes made it no JSON.
    started = [anyio.Event()]

    class Tagged(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            span = trace.get_current_span()
            span.set_attribute("app.tags", ["a", "b"])
            span.set_attribute("app.count", 3)
            for key, bad in [("app.none", None), ("app.raw", b"raw"), ("app.nan", math.nan)]:
                span.set_attribute(key, bad)  # type: ignore[arg-type]
            started[-1].set()
            await anyio.sleep_forever()
            raise AssertionError("cancelled")

    registry = _registry()
    registry.add(Tagged, name="Tagged")
    document = doc([stage("work", "Tagged", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=traced.provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await started[-1].wait()
        snapshot = json.loads(json.dumps(session.to_dict(), allow_nan=False))
        tg.cancel_scope.cancel()
    [kept] = [s["attributes"] for s in snapshot["trace"]["open"] if s["name"] == "stage work"]
    assert (kept["app.tags"], kept["app.count"]) == (["a", "b"], 3)
    assert not {"app.none", "app.raw", "app.nan"} & set(kept)
    after = Traced()
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, tracer_provider=after.provider
    )
    started.append(anyio.Event())
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)  # the rebuild is exported as it starts
        await started[-1].wait()
        tg.cancel_scope.cancel()
    [rebuilt] = [
        s for s in after.spans() if s.name == "stage work" and _attr(s, "stageflow.span.rebuilt")
    ]
    assert _attr(rebuilt, "app.tags") == ("a", "b")


async def test_a_run_nobody_samples_leaves_nothing_to_rebuild(traced: Traced) -> None:
    # Its open spans went into the snapshot with no parent (a non-recording
    # span has none), and a restore exported them as sampled roots of a trace
    # nobody had sampled.
    caller = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(0))
    session, _ = _session(CRASHY, traced)
    with trace.use_span(trace.NonRecordingSpan(caller)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await wait_until_waiting(session, "go")
            await _until_started(session, "b")
            snapshot = session.to_dict()
            tg.cancel_scope.cancel()
    assert snapshot["trace"]["trace_id"] == f"{0xABC:032x}"  # the ids are still known
    assert "open" not in snapshot["trace"]
    assert [(s.name, s.context.trace_id) for s in traced.spans()] == []


async def test_an_sdk_turned_off_by_the_environment_is_no_tracing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OTEL_SDK_DISABLED=true: every event, log line and snapshot carried the
    # all-zero ids of the SDK's no-op spans as if they were a trace.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    traced = Traced()
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    session, _ = _session(WAITING, traced, meter_provider=meters)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        snapshot = session.to_dict()
        session.send_input("go", {})
    assert snapshot["trace"] is None
    assert {(e.trace_id, e.span_id) for e in session.history} == {(None, None)}


async def test_a_snapshot_taken_in_a_cut_wait_has_nothing_to_rebuild(traced: Traced) -> None:
    session, _ = _session(WAITING, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        snapshot = session.to_dict()
        tg.cancel_scope.cancel()
    assert "open" not in snapshot["trace"]


@pytest.mark.parametrize("logged", [False, True])  # the tight path, or execute()
async def test_a_node_ended_after_a_cut_has_its_last_incarnation_as_exemplar(
    traced: Traced, logged: bool
) -> None:
    # Cancelled in a cut wait, the node was measured before its span started
    # again: the exemplar of its "cancelled" duration led to the incarnation
    # the cut ended, outcome "waiting", in the segment before.
    reader = InMemoryMetricReader()
    session, _ = _session(WAITING, traced, meter_provider=MeterProvider(metric_readers=[reader]))
    with structlog.testing.capture_logs() if logged else contextlib.nullcontext():
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await wait_until_waiting(session, "go")
            session.cancel()
    assert session.status is stageflow.SessionStatus.CANCELLED
    data = reader.get_metrics_data()
    assert data is not None
    [point] = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "stageflow.node.duration"
        for point in metric.data.data_points
    ]
    assert point.attributes is not None
    assert point.attributes["stageflow.outcome"] == "cancelled"
    [exemplar] = point.exemplars
    [span] = [
        s
        for s in traced.spans()
        if (s.context.trace_id, s.context.span_id) == (exemplar.trace_id, exemplar.span_id)
    ]
    assert (span.name, _attr(span, "stageflow.outcome")) == ("stage ask", "cancelled")


@pytest.mark.parametrize("reader", ["metrics", "subscriber"])
async def test_reading_the_current_span_in_a_cut_wait_starts_nothing(
    traced: Traced, reader: str
) -> None:
    # A metric's exemplar filter (or a subscriber's log line) read the current
    # span's context right after the cut: that started the cut spans again,
    # so they stayed open across the wait and a snapshot listed them.
    kw: dict[str, Any] = {}
    if reader == "metrics":
        kw["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    session, _ = _session(WAITING, traced, **kw)
    if reader == "subscriber":
        session.subscribe(lambda _: (trace.get_current_span().get_span_context(), None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        assert "open" not in session.to_dict()["trace"]
        session.send_input("go", {"ok": True})
    assert segment_tree(traced.spans()) == [
        ["run pipeline", "stage ask < run pipeline", "wait go < stage ask"],
        ["run pipeline", "stage ask < run pipeline", "terminal end < run pipeline"],
    ]


async def test_a_span_a_stage_starts_after_a_cut_sleep_is_in_the_new_segment(
    traced: Traced,
) -> None:
    # Its parent was the stage span's incarnation that the cut had ended.
    tracer = traced.provider.get_tracer("app")

    class NapThenSpan(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            await ctx.sleep(0.05)  # virtual on trio; past the threshold below
            with tracer.start_as_current_span("app.after"):
                return {}

    registry = _registry()
    registry.add(NapThenSpan, name="NapThenSpan")
    document = doc([stage("nap", "NapThenSpan", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        tracer_provider=traced.provider,
        trace_wait_threshold=0.01,
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    spans = traced.spans()
    assert segment_tree(spans) == [
        ["run pipeline", "stage nap < run pipeline"],
        [
            "run pipeline",
            "stage nap < run pipeline",
            "app.after < stage nap",
            "terminal end < run pipeline",
        ],
    ]
    assert orphans(spans) == []


async def test_without_the_id_generator_nothing_is_rebuilt(traced: Traced) -> None:
    session, registry = _session(CRASHY, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        snapshot = session.to_dict()
        tg.cancel_scope.cancel()
    exporter = InMemorySpanExporter()
    plain = TracerProvider()
    plain.add_span_processor(SimpleSpanProcessor(exporter))
    restored = stageflow.Session.from_dict(snapshot, registry=registry, tracer_provider=plain)
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)
        await wait_until_waiting(restored, "go")
        restored.send_input("go", {})
    plain.shutdown()
    assert not [s for s in exporter.get_finished_spans() if _attr(s, "stageflow.span.rebuilt")]


async def test_log_lines_carry_the_ids_of_the_segment_they_end_in(traced: Traced) -> None:
    session, _ = _session(WAITING, traced)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await wait_until_waiting(session, "go")
            session.send_input("go", {})
    spans = traced.spans()
    ask_after = [s for s in spans if s.name == "stage ask"][1]
    root_after = [s for s in spans if s.name == "run pipeline"][1]
    [ask_line] = [x for x in logs if x["event"] == "node.finished" and x["node_id"] == "ask"]
    assert ask_line["trace_id"] == f"{ask_after.context.trace_id:032x}"
    assert ask_line["span_id"] == f"{ask_after.context.span_id:016x}"
    [started] = [x for x in logs if x["event"] == "node.started" and x["node_id"] == "ask"]
    assert started["trace_id"] != ask_line["trace_id"]  # it started in the first segment
    [finished] = [x for x in logs if x["event"] == "session.finished"]
    assert finished["span_id"] == f"{root_after.context.span_id:016x}"


@pytest.mark.parametrize("short", ["input", "timer"])
async def test_a_short_wait_begun_beside_a_long_one_cuts_too(traced: Traced, short: str) -> None:
    # Only a long wait looked for a cut as it began: a short input wait or
    # timer begun after another position's long wait left the run's spans
    # open across both (or until the short one ended), and the stage went
    # on in the segment the cut had ended.
    tracer = traced.provider.get_tracer("app")
    gate = anyio.Event()

    class Then(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            await gate.wait()  # once a waits long
            if short == "input":
                await ctx.wait_input("other", timeout=30)  # under the threshold
            else:
                await ctx.sleep(scaled(30))
            with tracer.start_as_current_span("app.after"):
                return {}

    registry = _registry()
    registry.add(Then, name="Then")
    document = doc([parallel("fan", ["a", "b"], next="end"), _waiting("a"), stage("b", "Then")])
    document["nodes"].append(terminal())
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=traced.provider
    )
    session.subscribe(lambda e: gate.set() if e.type == "waiting_for_input" else None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        if short == "input":
            await wait_until_waiting(session, "other")
            assert {s.name for s in traced.spans()} >= {"run pipeline", "wait other"}
            session.send_input("other", {})
        await _until_started(session, "b", "node_finished")
        session.send_input("go", {})
    spans = traced.spans()
    assert orphans(spans) == []
    first, second, third = segment_tree(spans)
    assert "stage b < branch fan/b" in first
    assert second[-2:] == ["stage b < branch fan/b", "app.after < stage b"]
    assert "terminal end < run pipeline" in third


async def _crashed_in_segment_two(
    traced: Traced,
) -> tuple[dict[str, Any], tuple[ReadableSpan, ...], tuple[ReadableSpan, ...]]:
    """A snapshot taken working in segment 2, what was exported before the "crash",
    and what the restored session exported (the rebuilt spans) as it started."""
    document = doc([_waiting("ask", next="work"), stage("work", "Hang", next="end"), terminal()])
    session, registry = _session(document, traced)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        session.send_input("go", {})
        await _until_started(session, "work")  # in segment 2, working: spans are open
        snapshot = json.loads(json.dumps(session.to_dict()))
        exported_before_crash = traced.spans()
        tg.cancel_scope.cancel()  # the process "dies": nothing it exports from here counts
    after = Traced()
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, tracer_provider=after.provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)  # rebuilds as it starts; "work" hangs
        await _until_started(restored, None, "session_resumed")
        tg.cancel_scope.cancel()
    return snapshot, exported_before_crash, after.spans()


async def test_a_segment_root_rebuilt_after_a_crash_keeps_its_segment_number(
    traced: Traced,
) -> None:
    # The snapshot kept the root's attributes without stageflow.segment (set
    # on each incarnation only): the rebuilt root of segment 2 read as a
    # first segment.
    snapshot, _, rebuilt_spans = await _crashed_in_segment_two(traced)
    [root] = [s for s in snapshot["trace"]["open"] if s["name"] == "run pipeline"]
    assert root["attributes"]["stageflow.segment"] == 2
    [rebuilt] = [
        s for s in rebuilt_spans if s.name == "run pipeline" and _attr(s, "stageflow.span.rebuilt")
    ]
    assert f"{rebuilt.context.span_id:016x}" == root["span_id"]
    assert _attr(rebuilt, "stageflow.segment") == 2


async def test_a_span_rebuilt_after_a_crash_keeps_its_links(traced: Traced) -> None:
    # The snapshot kept no links: the rebuilt root of segment 2 lost its
    # previous_segment link, so the trace of a crashed run could not be
    # followed back to the segment before the wait.
    snapshot, exported_before_crash, rebuilt_spans = await _crashed_in_segment_two(traced)
    [first] = [s for s in exported_before_crash if s.name == "run pipeline"]
    [root] = [s for s in snapshot["trace"]["open"] if s["name"] == "run pipeline"]
    assert root["links"] == [
        {
            "trace_id": f"{first.context.trace_id:032x}",
            "span_id": f"{first.context.span_id:016x}",
            "attributes": ROOT_LINK,
        }
    ]
    assert snapshot["version"] == 6
    [rebuilt] = [
        s for s in rebuilt_spans if s.name == "run pipeline" and _attr(s, "stageflow.span.rebuilt")
    ]
    assert [(link.context.span_id, link.attributes) for link in rebuilt.links] == [
        (first.context.span_id, ROOT_LINK)
    ]
    assert orphans(exported_before_crash + rebuilt_spans) == []


@pytest.mark.parametrize("mode", ["no threshold", "suspend mode"])
async def test_a_run_that_is_never_cut_lists_its_open_spans_too(traced: Traced, mode: str) -> None:
    # Only a run whose waits could cut it kept its open spans: with
    # trace_wait_threshold=None, or under run(suspend=True), a live snapshot
    # listed none, and a crash left the exported spans without their parents
    # and the restored run's link without a target.
    kw: dict[str, Any] = {"trace_wait_threshold": None} if mode == "no threshold" else {}
    session, registry = _session(CRASHY, traced, **kw)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await session.run(suspend=mode == "suspend mode")

        tg.start_soon(run)
        await _until_started(session, "b")
        snapshot = json.loads(json.dumps(session.to_dict()))  # b works: spans are open
        exported_before_crash = traced.spans()
        tg.cancel_scope.cancel()  # the process "dies"
    assert "run pipeline" in [s["name"] for s in snapshot["trace"]["open"]]
    after = Traced()
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, tracer_provider=after.provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)
        await wait_until_waiting(restored, "go")
        restored.send_input("go", {})
    everything = exported_before_crash + after.spans()
    assert orphans(everything) == []
    ids = [(s.context.trace_id, s.context.span_id) for s in everything]
    assert len(ids) == len(set(ids))


async def test_a_span_used_after_its_end_is_not_started_again(traced: Traced) -> None:
    # A stage that kept its span and set an attribute on it after its node
    # ended started the span again: an incarnation nobody ended, listed
    # open by snapshots (a restore rebuilt it) and exported by the next cut.
    kept: list[trace.Span] = []

    class Keep(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            kept.append(trace.get_current_span())
            return {}

    registry = _registry()
    registry.add(Keep, name="Keep")
    document = doc([stage("keep", "Keep", next="ask"), _waiting("ask", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=traced.provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        kept[0].set_attribute("app.late", True)
        kept[0].end()
        assert "open" not in session.to_dict()["trace"]  # a cut wait: nothing open
        session.send_input("go", {})
    spans = traced.spans()
    assert [s.name for s in spans].count("stage keep") == 1
    assert orphans(spans) == []


@pytest.mark.parametrize("key", ["trace_id", "span_id", "parent_span_id"])
async def test_an_open_span_with_an_all_zero_id_is_refused(traced: Traced, key: str) -> None:
    # All zeros is no id to OpenTelemetry: the restore exported the rebuilt
    # span with an invalid trace or span id (or as a root, for its parent).
    snapshot, _, registry = await _crashed(traced)
    where = 1  # a span with a parent
    width = len(snapshot["trace"]["open"][where][key])
    snapshot["trace"]["open"][where][key] = "0" * width
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(snapshot, registry=registry, tracer_provider=traced.provider)
    [problem] = caught.value.problems
    assert problem.location == f"$.trace.open[{where}].{key}"
    assert "all zeros" in problem.message


@pytest.mark.parametrize("key", ["trace_id", "span_id"])
async def test_a_link_of_an_open_span_with_an_all_zero_id_is_refused(
    traced: Traced, key: str
) -> None:
    snapshot, _, registry = await _crashed(traced)
    link = {"trace_id": "ab" * 16, "span_id": "cd" * 8, "attributes": {}}
    snapshot["trace"]["open"][1]["links"] = [{**link, key: "0" * len(link[key])}]
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(snapshot, registry=registry, tracer_provider=traced.provider)
    [problem] = caught.value.problems
    assert problem.location == f"$.trace.open[1].links[0].{key}"
    assert "all zeros" in problem.message


async def test_a_rebuilt_root_sampled_out_takes_its_rebuilt_children_with_it(
    traced: Traced,
) -> None:
    # Each rebuilt child had a parent marked sampled, whatever the restoring
    # provider decided for that parent: a provider sampling nothing
    # (ParentBased(ALWAYS_OFF)) exported the children of a root it dropped.
    snapshot, _, registry = await _crashed(traced)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ParentBased(ALWAYS_OFF), id_generator=stageflow.tracing.RestoringIdGenerator()
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    restored = stageflow.Session.from_dict(snapshot, registry=registry, tracer_provider=provider)
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)
        await wait_until_waiting(restored, "go")
        restored.send_input("go", {})
    provider.shutdown()
    assert exporter.get_finished_spans() == ()
