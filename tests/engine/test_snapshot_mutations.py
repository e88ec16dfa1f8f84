"""Mutated snapshots from real runs: refused with a SnapshotError, or restored and run to an end.

A corpus of valid snapshots is taken from real runs of one pipeline (timers,
an ``all`` parallel with a sleeping branch, an ``any`` race, a map whose items
wait, a subpipeline, a stage retrying on a timer), traced, with rejected
inputs recorded, at every event (live snapshots) and at every suspension,
with all, some and none of the history, and from runs a step limit stopped or
``cancel()`` ended. Each example edits one to three places of one snapshot
(a key dropped, a value of another JSON type, huge, negative or zero numbers,
NaN-like strings, two values swapped, a list entry duplicated, a list
reordered, references to nodes that do not exist, deep nesting, very long
strings, a value moved from elsewhere in the snapshot) and checks that
``Session.from_dict`` raises a ``SnapshotError`` or restores; and that a
restored session, snapshotted, sent the inputs it waits for and run on
(trio, autojumping ``MockClock``) or cancelled, ends with a session status
and raises nothing but the documented errors, keeping the history the
snapshot kept; and that a refusal's every problem names a location that
leads into the snapshot. Valid snapshots restored with ``pipeline=`` a
changed document that loads are held to the same.

To hunt with many more examples locally::

    STAGEFLOW_FUZZ_EXAMPLES=3000 PYTHONPATH=. .venv/bin/python -m pytest \
        tests/engine/test_snapshot_mutations.py -q -p no:cacheprovider --no-cov --timeout=0
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import anyio
import trio
import trio.testing
from fakes import fake_registry
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
import stageflow.tracing

S = stageflow.SessionStatus
BASE = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
WAIT = "WaitStage"
SLEEP = "SleepStage"

DOCUMENT: dict[str, Any] = {
    "api_version": "1.0",
    "entry": "nap",
    "nodes": [
        {"id": "nap", "type": "stage", "stage": SLEEP, "config": {"seconds": 30}, "next": "fan"},
        {"id": "fan", "type": "parallel", "children": ["left", "right", "snooze"], "next": "race"},
        {
            "id": "left",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "a", "timeout": 600},
            "outputs": {"payload": "left"},
        },
        {
            "id": "right",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "b"},
            "outputs": {"payload": "right"},
        },
        {"id": "snooze", "type": "stage", "stage": SLEEP, "config": {"seconds": 5}},
        {
            "id": "race",
            "type": "parallel",
            "policy": "any",
            "children": ["slow", "fast"],
            "next": "pages",
        },
        {"id": "slow", "type": "stage", "stage": WAIT, "config": {"input": "never"}},
        {
            "id": "fast",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "c"},
            "outputs": {"payload": "fast"},
        },
        {
            "id": "pages",
            "type": "map",
            "items": "items",
            "body": "page",
            "concurrency": 2,
            "collect": {"got": "pages_out"},
            "next": "sub",
        },
        {
            "id": "page",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "page"},
            "outputs": {"payload": "got"},
        },
        {"id": "sub", "type": "subpipeline", "pipeline": "inner", "next": "flaky"},
        {
            "id": "flaky",
            "type": "stage",
            "stage": "Fail",
            "retry": {"attempts": 3, "delay": 10},
            "fallback": "end",
            "next": "end",
        },
        {"id": "end", "type": "terminal", "artifacts": ["left", "right", "pages_out"]},
    ],
    "subpipelines": {
        "inner": {
            "entry": "ask",
            "nodes": [
                {
                    "id": "ask",
                    "type": "stage",
                    "stage": WAIT,
                    "config": {"input": "d"},
                    "next": "done",
                },
                {"id": "done", "type": "terminal"},
            ],
        }
    },
}
PAYLOAD = {"items": ["p1", "p2", "p3"]}
ANSWERS: dict[str, Any] = {"a": {"n": 1}, "b": {"n": 2}, "c": "c", "page": 7, "d": {}}
REGISTRY = fake_registry()
PIPELINE = stageflow.Pipeline.from_dict(DOCUMENT, registry=REGISTRY)


def clock() -> datetime.datetime:
    return BASE + datetime.timedelta(seconds=anyio.current_time())


def provider() -> TracerProvider:
    traced = TracerProvider(id_generator=stageflow.tracing.RestoringIdGenerator())
    traced.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))  # spans are exported
    return traced


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


async def _take(limits: stageflow.Limits, *, traced: bool, cancel_at: int | None) -> list[Any]:
    """Snapshots of one run: at every event (live) and every suspension."""
    taken: list[Any] = []
    session = stageflow.Session(
        PIPELINE,
        registry=REGISTRY,
        payload=PAYLOAD,
        seed=5,
        limits=limits,
        clock=clock,
        tracer_provider=provider() if traced else None,
    )
    events = 0

    def on_event(event: stageflow.Event) -> None:
        nonlocal events
        events += 1
        kept = events % 3  # all, none or the newest three events
        taken.append(
            _json(session.to_dict(history="all" if kept == 0 else "none" if kept == 1 else 3))
        )
        if cancel_at is not None and events == cancel_at:
            session.cancel("enough")

    session.subscribe(on_event)
    for bad in (math.nan, object()):  # rejected inputs are recorded
        with contextlib.suppress(stageflow.InputRejectedError):
            session.send_input("a", bad)
    for _ in range(60):
        result = await session.run(suspend=True)
        taken.append(_json(session.to_dict()))
        taken.append(_json(session.to_dict(history="none")))
        if result.status is not S.WAITING:
            break
        sendable = [t for t in result.waiting_for if t in ANSWERS]
        for input_type in sendable:
            session.send_input(input_type, ANSWERS[input_type])
        if not sendable:
            assert result.wake_at is not None
            await trio.sleep(max((result.wake_at - clock()).total_seconds(), 0))
    return taken


async def _corpus() -> list[Any]:
    taken = await _take(stageflow.Limits(timeout=10_000), traced=True, cancel_at=None)
    taken += await _take(stageflow.Limits(max_steps=7), traced=False, cancel_at=None)
    taken += await _take(stageflow.Limits(), traced=True, cancel_at=12)
    return taken


def skeleton(value: Any) -> Any:
    """The shape of a position: its records and nodes, not its values."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items() if k not in ("context", "writes")}
    if isinstance(value, list):
        return [skeleton(v) for v in value]
    return value if isinstance(value, str) else type(value).__name__


def corpus() -> list[Any]:
    """One snapshot of each shape (status, position, history kept or not, spans open or not)."""
    taken = trio.run(_corpus, clock=trio.testing.MockClock(autojump_threshold=0))
    shapes: dict[str, Any] = {}
    for snapshot in taken:
        shape = (
            snapshot["status"],
            skeleton(snapshot["position"]),
            bool(snapshot["history"]),
            bool((snapshot["trace"] or {}).get("open")),
        )
        shapes.setdefault(json.dumps(shape), snapshot)
    return list(shapes.values())


CORPUS = corpus()


# ----------------------------------------------------------------------- mutations

NODE_IDS = ["nap", "fan", "left", "race", "slow", "pages", "page", "sub", "ask", "end", "ghost"]
ODD: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    2**63,
    -(10**18),
    10**40,
    1e308,
    -0.0,
    0.5,
    "",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "null",
    "x" * 20_000,
    "2025-02-30T00:00:00+00:00",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2030-01-01T00:00:00",
    "00000000000000000000000000000000",
    "ffffffffffffffff",
    [],
    {},
    [None],
    {"": None},
]


def locations(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield where
    if len(where) > 60:
        return  # inside a deep mutation
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from locations(sub, (*where, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from locations(sub, (*where, i))


def get(snapshot: Any, where: tuple[Any, ...]) -> Any:
    for part in where:
        snapshot = snapshot[part]
    return snapshot


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


ENUMS: dict[Any, list[Any]] = {
    "status": ["pending", "running", "waiting", "completed", "failed", "cancelled", "timed_out"],
    "state": ["running", "finished", "failed", "cancelled"],
    "stopped_by_limit": [None, "max_steps", "max_history"],
    "validate_events": ["off", "warn", "strict"],
    "parked": [True, False],
    "winner": [None, 0, 1, 2],
}
AIMED = {
    "enum": ENUMS,
    "node": {"node", "next", "child", "current_node", "terminal"},
    "number": {"index", "next", "done", "attempt", "visits", "steps", "history_seq", "seq"},
}
PARTS = ["position", "trace", "history", "backlog", "rejections", "limits", "unseen_inputs"]


def mutate(
    snapshot: dict[str, Any], kind: str, inside: int, spot: int, choice: int, other: int
) -> None:
    spots = [w for w in locations(snapshot) if w]
    part = PARTS[inside] if inside < len(PARTS) else None  # mostly in one part
    near = [w for w in spots if w[0] == part] or spots
    if kind in AIMED:  # at the fields it is made for, wherever they are
        near = [w for w in spots if w[-1] in AIMED[kind]] or near
    where = near[spot % len(near)]
    parent = get(snapshot, where[:-1])
    key = where[-1]
    value = parent[key]
    if kind == "drop":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif kind == "odd":
        parent[key] = copy.deepcopy(ODD[choice % len(ODD)])
    elif kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            parent[key] = [0, -1, -value, value + 1, value - 1, value * 10**12, 2**64][choice % 7]
        else:
            parent[key] = [0, -1, 10**20][choice % 3]
    elif kind == "node":
        parent[key] = NODE_IDS[choice % len(NODE_IDS)]
    elif kind == "enum":  # another value the schema allows there
        values = ENUMS.get(key, NODE_IDS)
        parent[key] = values[choice % len(values)]
    elif kind == "swap":
        second = spots[other % len(spots)]
        if second[: len(where)] == where or where[: len(second)] == second:
            return  # one inside the other
        other_parent = get(snapshot, second[:-1])
        parent[key], other_parent[second[-1]] = other_parent[second[-1]], value
    elif kind == "sibling":  # swapped with a value of the same name elsewhere (ids, indexes)
        same = [w for w in spots if w[-1] == key and w != where]
        if same:
            second = same[other % len(same)]
            if second[: len(where)] == where or where[: len(second)] == second:
                return
            other_parent = get(snapshot, second[:-1])
            parent[key], other_parent[second[-1]] = other_parent[second[-1]], value
    elif kind == "transplant":
        source = spots[other % len(spots)]
        if where[: len(source)] != source:  # not into itself: shared, not copied (deep ones)
            parent[key] = get(snapshot, source)
    elif kind == "duplicate":
        if isinstance(value, list) and value:
            value.insert(choice % len(value), value[other % len(value)])  # shared
        elif isinstance(parent, list):
            parent.insert(key, value)
    elif kind == "reorder":
        if isinstance(value, list):
            if choice % 2:
                value.reverse()
            elif value:
                value.append(value.pop(0))
        elif isinstance(value, dict):
            items = list(value.items())
            value.clear()
            value.update(reversed(items))
    elif kind == "deep":
        parent[key] = deep([40, 200, 1100][choice % 3])
    elif kind == "long":
        parent[key] = (value[:40] if isinstance(value, str) and value else "x") * 5000
    elif kind == "add" and isinstance(value, dict):
        value[["ghost", "next", "winner", "terminal", "position"][choice % 5]] = copy.deepcopy(
            ODD[other % len(ODD)]
        )


KINDS = [
    "drop",
    "odd",
    "number",
    "node",
    "enum",
    "enum",
    "swap",
    "sibling",
    "sibling",
    "transplant",
    "duplicate",
    "reorder",
    "deep",
    "long",
    "add",
]


# -------------------------------------------------------------------------- driving


def resolves(snapshot: Any, location: str) -> bool:
    """Whether a problem's location leads into the snapshot (its last step may be absent)."""
    if not location.startswith("$"):
        return False
    steps = re.findall(r"\.([^.\[]+)|\[(\d+)\]|\['(.*?)'\]", location[1:])
    value = snapshot
    for n, (key, index, quoted) in enumerate(steps):
        try:
            value = value[int(index)] if index else value[key or quoted]
        except (KeyError, IndexError, TypeError):
            return n == len(steps) - 1  # a missing last step: a field to add
    return True


REFUSED = (stageflow.InputRejectedError, stageflow.SessionStateError)


def restore(
    snapshot: dict[str, Any], pipeline: stageflow.Pipeline | None = None
) -> stageflow.Session | stageflow.SnapshotError:
    try:
        return stageflow.Session.from_dict(
            snapshot,
            registry=None if pipeline else REGISTRY,
            pipeline=pipeline,
            clock=clock,
            tracer_provider=provider(),
        )
    except stageflow.SnapshotError as exc:
        return exc


async def drive(
    snapshot: dict[str, Any], cancel: bool, pipeline: stageflow.Pipeline | None = None
) -> None:
    """Restore, snapshot again, send what it waits for, run on (or cancel) to an end."""
    session = restore(snapshot, pipeline)
    if isinstance(session, stageflow.SnapshotError):  # refused, saying where
        assert session.problems, session
        for problem in session.problems:
            assert resolves(snapshot, problem.location), problem
        return
    json.dumps(session.to_dict())
    session.waiting_for()
    kept = [event["seq"] for event in snapshot["history"]]
    restored = [event.seq for event in session.history]
    assert restored[: len(kept)] == kept, "the restore changed the history"
    with trio.fail_after(10**7):  # virtual time: only a hang reaches it
        for turn in range(40):
            if cancel and turn == 1:
                session.cancel("fuzz")
            if session.status is not S.WAITING and session.status is not S.PENDING:
                return
            for input_type in session.waiting_for():
                if input_type in ANSWERS:
                    with contextlib.suppress(*REFUSED):
                        session.send_input(input_type, ANSWERS[input_type])
            result = await session.run(suspend=True)
            assert result.status in set(S)
            assert result.error is None or isinstance(result.error, stageflow.StageflowError), repr(
                result.error
            )
            json.dumps(session.to_dict())
            seqs = [event.seq for event in session.history]
            assert seqs[: len(kept)] == kept, "the run lost events the snapshot kept"
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, seqs
            if result.status is not S.WAITING:
                return
            if not any(t in ANSWERS for t in result.waiting_for):
                if result.wake_at is None:
                    return  # waits for an input nobody sends
                await trio.sleep(max((result.wake_at - clock()).total_seconds(), 0))
    raise AssertionError("the restored session did not end in 40 runs")


def examine(
    snapshot: dict[str, Any], cancel: bool, pipeline: stageflow.Pipeline | None = None
) -> None:
    trio._core._run._r.seed(0)  # the same order of runnable tasks in every example
    trio.run(drive, snapshot, cancel, pipeline, clock=trio.testing.MockClock(autojump_threshold=0))


def test_every_snapshot_of_the_corpus_restores_and_runs_to_an_end() -> None:
    statuses = {s["status"] for s in CORPUS}
    assert statuses >= {"waiting", "running", "failed", "cancelled", "completed", "pending"}
    assert any(s.get("stopped_by_limit") for s in CORPUS)
    assert any(s.get("rejections") for s in CORPUS)
    assert any((s.get("trace") or {}).get("open") for s in CORPUS)
    for snapshot in CORPUS[::7]:
        examine(copy.deepcopy(snapshot), cancel=False)


@settings(
    max_examples=int(os.environ.get("STAGEFLOW_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize="STAGEFLOW_FUZZ_EXAMPLES" not in os.environ,  # the suite: the same examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # explain is slow here
)
@given(
    pick=st.integers(0, 10**6),
    edits=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.integers(0, len(PARTS) + 1),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=3,
    ),
    cancel=st.booleans(),
)
def test_mutated_snapshots_are_refused_or_restore_and_run_to_an_end(
    pick: int, edits: list[tuple[str, int, int, int, int]], cancel: bool
) -> None:
    snapshot = copy.deepcopy(CORPUS[pick % len(CORPUS)])
    for kind, inside, spot, choice, other in edits:
        mutate(snapshot, kind, inside, spot, choice, other)
    examine(snapshot, cancel)


@settings(
    max_examples=int(os.environ.get("STAGEFLOW_FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize="STAGEFLOW_FUZZ_EXAMPLES" not in os.environ,  # the suite: the same examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
@given(
    pick=st.integers(0, 10**6),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop", "node", "swap", "sibling", "duplicate", "reorder", "number"]),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=2,
    ),
)
def test_snapshots_moved_to_changed_pipelines_are_refused_or_run_to_an_end(
    pick: int, edits: list[tuple[str, int, int, int]]
) -> None:
    """A valid snapshot restored with ``pipeline=`` a changed document that loads."""
    snapshot = copy.deepcopy(CORPUS[pick % len(CORPUS)])
    document = copy.deepcopy(DOCUMENT)
    for kind, spot, choice, other in edits:
        mutate(document, kind, len(PARTS), spot, choice, other)
    try:
        pipeline = stageflow.Pipeline.from_dict(document, registry=REGISTRY)
    except stageflow.PipelineValidationError:
        return
    examine(snapshot, False, pipeline)
