"""Random pipelines and a recorder for the tight-path property test (``test_tight_path.py``).

A pipeline is a chain of *blocks* (a few nodes each: stage runs, error edges,
retries, timeouts, conditions, parallel branches, a map, a subpipeline, a
wait for an input, a ``cancel()`` from a stage) ending at one terminal. A
:class:`Recording` is everything observable of one run of it: the result,
the history, a snapshot at every event, the span tree and the metrics' data
points (counts, not durations), normalised only
where two runs inherently differ (wall-clock timestamps, random trace and
span ids; the session id, seed and clock are given to the session).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import attrs
import sniffio
from fakes import doc, fake_registry, parallel, scaled, stage, terminal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow._engine import _run

BLOCKS = (
    "set",
    "chain",
    "echo",
    "fail_routed",
    "fail",
    "flaky",
    "timeout",
    "cond",
    "parallel",
    "parallel_one",
    "parallel_end",
    "map",
    "map_one",
    "sub",
    "wait",
    "cancel",
)
"""The kinds of block a random pipeline is made of."""

_START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@contextlib.contextmanager
def general_path() -> Iterator[None]:
    """Every node through ``Run.execute`` (the tight path's private switch off)."""
    _run._TIGHT = False
    try:
        yield
    finally:
        _run._TIGHT = True


class Holder:
    """The session a ``Cancel`` stage cancels (replaced on each restore)."""

    session: stageflow.Session | None = None


def registry(holder: Holder) -> stageflow.StageRegistry:
    """The fakes' stages, ``Flaky`` (fails its first ``config.fails`` attempts), ``Cancel``."""
    stages = fake_registry()

    @stages.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if ctx.attempt <= ctx.config.get("fails", 0):
            raise ValueError(f"attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}

    @stages.register("FailOnObject")
    async def fail_on_object(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if isinstance(ctx.arguments["item"], dict):
            raise ValueError("an object")
        await anyio.sleep(scaled(1))  # cancelled there when a sibling item fails first
        return {}

    @stages.register("Cancel")
    async def cancel(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        assert holder.session is not None
        holder.session.cancel("from a stage")
        return {}

    return stages


def _set(node_id: str, key: str, value: Any, nxt: str | None, **extra: Any) -> dict[str, Any]:
    node = stage(node_id, "Set", config={"values": {key: value}}, outputs={key: key}, next=nxt)
    node.update(extra)
    return node


def _block(kind: str, i: int, nxt: str, fails: int) -> list[dict[str, Any]]:
    """The nodes of block ``i`` of ``kind``; its first node is ``b{i}``, it goes on to ``nxt``."""
    me = f"b{i}"
    if kind == "set":
        return [_set(me, f"v{i}", i, nxt)]
    if kind == "chain":
        return [
            _set(me, f"v{i}", i, f"{me}_2"),
            stage(
                f"{me}_2", "Echo", arguments={"x": f"v{i}"}, outputs={"x": f"w{i}"}, next=f"{me}_3"
            ),
            _set(f"{me}_3", f"u{i}", [i, {"deep": i}], nxt),
        ]
    if kind == "echo":
        return [
            stage(
                me,
                "Echo",
                arguments={"flag": "flag", "x": "v0"},
                outputs={"flag": f"e{i}"},
                next=nxt,
            )
        ]
    if kind in ("fail_routed", "fail"):
        node = stage(me, "Fail", config={"message": f"boom {i}"}, next=nxt)
        if kind == "fail_routed":
            node["on_error"] = [{"errors": ["ValueError"], "next": nxt, "error_path": f"err{i}"}]
        return [node]
    if kind == "flaky":
        node = stage(me, "Flaky", config={"fails": fails}, outputs={"attempt": f"a{i}"}, next=nxt)
        node["retry"] = {"attempts": 3, "delay": scaled(0.5)}
        return [node]
    if kind == "timeout":
        return [_set(me, f"t{i}", True, nxt, timeout=5)]
    if kind == "cond":
        return [
            {
                "id": me,
                "type": "condition",
                "conditions": [{"if": {"var": "flag"}, "then": f"{me}_yes"}],
                "else": nxt,
            },
            _set(f"{me}_yes", f"c{i}", "yes", nxt),
        ]
    if kind == "parallel":
        return [
            parallel(me, [f"{me}_l", f"{me}_r"], next=nxt),
            _set(f"{me}_l", f"l{i}", 1, f"{me}_l2"),
            _set(f"{me}_l2", f"l{i}b", 2, None),
            _set(f"{me}_r", f"r{i}", 3, None),
        ]
    if kind == "parallel_one":
        # Branches of one simple stage node each (the tight loop in a branch), by
        # ``fails``: echoing (a scalar and an object value); one failing,
        # with the other cancelled or not; a race; one cancelling the session.
        echo = stage(f"{me}_e", "Echo", arguments={"x": "items"}, outputs={"x": f"e{i}"})
        other = [
            stage(f"{me}_o", "Echo", arguments={"v": "v0"}, outputs={"v": f"o{i}"}),
            stage(f"{me}_o", "Fail"),
            stage(f"{me}_o", "FailOnObject", arguments={"item": "items"}),
            stage(f"{me}_o", "Cancel"),
        ][fails]
        extra: dict[str, Any] = {}
        if fails == 1:
            extra = {"cancel_on_error": False}
        elif fails == 2:
            extra = {"policy": "any"}
        return [parallel(me, [f"{me}_o", f"{me}_e"], next=nxt, **extra), other, echo]
    if kind == "parallel_end":
        # A terminal in a branch (the tight loop's terminal): it ends the whole
        # pipeline, and the other branch, still sleeping, is cancelled.
        return [
            parallel(me, [f"{me}_l", f"{me}_r"], next=nxt),
            _set(f"{me}_l", f"l{i}", 1, f"{me}_t"),
            terminal(f"{me}_t", f"l{i}", "v0"),
            stage(f"{me}_r", "Set", config={"values": {f"r{i}": 2}, "delay": 1}),
        ]
    if kind == "map":
        return [
            {
                "id": me,
                "type": "map",
                "items": "items",
                "body": f"{me}_w",
                "collect": {"item": f"outs{i}"},
                "next": nxt,
            },
            stage(
                f"{me}_w",
                "Echo",
                arguments={"item": "item"},
                outputs={"item": "item"},
                next=f"{me}_w2",
            ),
            _set(f"{me}_w2", "seen", True, None),
        ]
    if kind == "map_one":
        # A body of one simple stage node with no next (Run.run_items's case),
        # by ``fails``: echoing (a scalar and an object item) one at a time;
        # two at a time, failing (tolerated), failing fast (the object item
        # cancels the other in its stage), cancelling the session.
        body = me + "_w"
        bodies = [
            stage(body, "Echo", arguments={"item": "item", "i": "index"}, outputs={"item": "item"}),
            stage(body, "Fail"),
            stage(body, "FailOnObject", arguments={"item": "item"}),
            stage(body, "Cancel"),
        ]
        node = {
            "id": me,
            "type": "map",
            "items": "items",
            "body": body,
            "concurrency": 2 if fails else 1,
            "collect": {"item": f"outs{i}"},
            "next": nxt,
        }
        if fails == 1:
            node.update(max_failures=2, failures_path=f"failed{i}")
        return [node, bodies[fails]]
    if kind == "sub":
        return [
            {
                "id": me,
                "type": "subpipeline",
                "pipeline": "inner",
                "artifacts": {"v": f"sub{i}"},
                "next": nxt,
            }
        ]
    if kind == "wait":
        return [
            stage(
                me, "WaitStage", config={"input": f"msg{i}"}, outputs={"payload": f"m{i}"}, next=nxt
            )
        ]
    if kind == "cancel":
        return [stage(me, "Cancel", next=nxt)]
    raise AssertionError(kind)


_INNER = {
    "entry": "s1",
    "nodes": [
        _set("s1", "x", 1, "s2"),
        stage("s2", "Echo", arguments={"v": "x"}, outputs={"v": "v"}, next="t"),
        terminal("t", "v"),
    ],
}


def pipeline_document(blocks: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """A chain of ``blocks`` (kind, the ``fails`` of a flaky one) ending at ``end``."""
    nodes: list[dict[str, Any]] = []
    for i, (kind, fails) in enumerate(blocks):
        nxt = f"b{i + 1}" if i + 1 < len(blocks) else "end"
        nodes += _block(kind, i, nxt, fails)
    nodes.append(terminal("end", "v0", "flag"))
    return doc(nodes, subpipelines={"inner": _INNER})


def inputs_of(blocks: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The input each ``wait`` block is sent."""
    return {f"msg{i}": {"n": i} for i, (kind, _) in enumerate(blocks) if kind == "wait"}


# ------------------------------------------------------------- normalising

_WALL = {"timestamp", "seen", "start"}  # span starts: wall-clock ns
_IDS = {"trace_id", "span_id", "parent_span_id"}


class Ids:
    """Random ids (trace, span) replaced by their order of first appearance."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.real_time = sniffio.current_async_library() != "trio"

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        return self.seen.setdefault(str(value), f"id{len(self.seen)}")


# A time of the session clock: exact on trio (virtual time), but it moves with
# the real clock on asyncio.
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def normalised(data: Any, ids: Ids) -> Any:
    """``data`` (JSON) with wall-clock times blanked and random ids renamed.

    On asyncio the session clock's times are blanked too.
    """
    if isinstance(data, str) and _ISO_TIME.match(data) and ids.real_time:
        return "<time>"
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key in _WALL:
                out[key] = "<wall>"
            elif key in _IDS:
                out[key] = ids(value)
            else:
                out[key] = normalised(value, ids)
        return out
    if isinstance(data, list):
        return [normalised(value, ids) for value in data]
    return data


def event_record(event: stageflow.Event, ids: Ids) -> tuple[Any, ...]:
    """An event without its wall-clock time, its ids renamed."""
    return (
        event.seq,
        event.type,
        event.session_id,
        event.node_id,
        event.path,
        normalised(json.loads(json.dumps(event.payload)), ids),
        ids(event.trace_id),
        ids(event.span_id),
        ids(event.parent_span_id),
    )


# A frame of the engine in a traceback, with its source line: the two paths
# raise through different engine frames (the tight path has fewer).
_ENGINE_FRAME = re.compile(r'  File "[^"]*/stageflow/[^"]*", line \d+, in \w+\n(    .*\n)*')


def _attributes(attributes: Any, ids: Ids) -> list[tuple[str, str]]:
    """Attributes as text; durations blanked on asyncio (real time), engine frames dropped."""
    return sorted(
        (
            k,
            "<real>"
            if ids.real_time and isinstance(v, float)
            else _ENGINE_FRAME.sub("", v)
            if k == "exception.stacktrace"
            else str(v),
        )
        for k, v in (attributes or {}).items()
    )


def span_records(spans: Sequence[ReadableSpan], ids: Ids) -> list[tuple[Any, ...]]:
    """Finished spans in order: name, parent, attributes, status, events; ids renamed."""
    out = []
    for span in spans:
        context = span.get_span_context()
        assert context is not None
        parent = span.parent.span_id if span.parent is not None else None
        out.append(
            (
                span.name,
                ids(format(context.span_id, "016x")),
                ids(format(parent, "016x")) if parent is not None else None,
                _attributes(span.attributes, ids),
                span.status.status_code.name,
                span.status.description,
                [(e.name, _attributes(e.attributes, ids)) for e in span.events],
            )
        )
    return out


def metric_records(reader: InMemoryMetricReader) -> list[tuple[Any, ...]]:
    """Every data point: metric, attributes, and a histogram's count or a sum's value.

    A histogram's sum and buckets are durations in real time: left out.
    """
    data = reader.get_metrics_data()
    out: list[tuple[Any, ...]] = []
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = point.count if isinstance(point, HistogramDataPoint) else point.value
                    attributes = sorted((k, str(v)) for k, v in (point.attributes or {}).items())
                    out.append((metric.name, attributes, value))
    return sorted(out)


@attrs.define
class Recording:
    """Everything observable of one random run (see the module docstring)."""

    results: list[Any] = attrs.field(factory=list)
    events: list[Any] = attrs.field(factory=list)
    snapshots: list[Any] = attrs.field(factory=list)
    spans: list[Any] = attrs.field(factory=list)
    metrics: list[Any] = attrs.field(factory=list)


async def record_run(
    blocks: Sequence[tuple[str, int]],
    *,
    traced: bool,
    suspend: bool,
    max_steps: int | None,
    watched: bool = True,
    metered: bool = False,
) -> Recording:
    """Run the pipeline of ``blocks`` to its end (restoring each suspension) and record it.

    ``watched``: a subscriber takes a snapshot at every event and answers
    waits as they start; otherwise nothing subscribes (the history records
    quietly), the inputs are queued before the first run, and the history
    and a snapshot are taken when each run returns. ``metered``: the session
    has an SDK meter provider, whose data points are recorded at the end.
    """
    holder = Holder()
    stages = registry(holder)
    pipeline = stageflow.Pipeline.from_dict(pipeline_document(blocks), registry=stages)
    exporter = InMemorySpanExporter()
    provider: TracerProvider | None = None
    if traced:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader]) if metered else None
    limits = stageflow.Limits(max_steps=max_steps, timeout=10_000)
    to_send = inputs_of(blocks)
    recording = Recording()
    ids = Ids()

    def clock() -> datetime.datetime:
        return _START

    def watch(session: stageflow.Session) -> stageflow.Session:
        holder.session = session
        if not watched:
            for kind in sorted(to_send):
                session.send_input(kind, to_send.pop(kind))
            return session

        def on_event(event: stageflow.Event) -> None:
            recording.events.append(event_record(event, ids))
            recording.snapshots.append(normalised(json.loads(json.dumps(session.to_dict())), ids))
            if event.type == "waiting_for_input" and not suspend:
                kind = event.payload["input_type"]
                if kind in to_send:
                    session.send_input(kind, to_send.pop(kind))

        session.subscribe(on_event)
        return session

    session = watch(
        stageflow.Session(
            pipeline,
            registry=stages,
            payload={"flag": len(blocks) % 2 == 0, "items": [1, {"k": 2}], "v0": "zero"},
            session_id="s-1",
            limits=limits,
            seed=7,
            tracer_provider=provider,
            meter_provider=meters,
            clock=clock,
        )
    )
    try:
        for _ in range(len(blocks) + 2):
            result = await session.run(suspend=suspend)
            recording.results.append(
                (
                    result.status,
                    result.result,
                    json.loads(json.dumps(dict(result.artifacts))),
                    type(result.error).__name__,
                    str(result.error),
                    sorted(result.waiting_for),
                    [event_record(e, ids) for e in result.history],
                )
            )
            if result.status != stageflow.SessionStatus.WAITING:
                break
            snapshot = json.loads(json.dumps(session.to_dict()))
            recording.snapshots.append(normalised(snapshot, ids))
            session = watch(
                stageflow.Session.from_dict(
                    snapshot,
                    registry=stages,
                    tracer_provider=provider,
                    meter_provider=meters,
                    clock=clock,
                )
            )
            for kind in sorted(result.waiting_for):
                if kind in to_send:
                    session.send_input(kind, to_send.pop(kind))
    finally:
        if provider is not None:
            recording.spans = span_records(exporter.get_finished_spans(), ids)
            provider.shutdown()
        if meters is not None:
            recording.metrics = metric_records(reader)
            meters.shutdown()
    return recording
