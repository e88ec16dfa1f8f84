"""The session: events and subscribers."""

from __future__ import annotations

import datetime
import json
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, run, scaled, stage, terminal, types
from session_support import COMPLETED, fan_pipeline, loop_pipeline, session_for, set_node
from structlog.testing import capture_logs

import stageflow

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------------- events


async def test_events_have_gapless_seq_and_utc_timestamps() -> None:
    result = await run(fan_pipeline())
    assert result.status is COMPLETED
    assert [e.seq for e in result.history] == list(range(1, len(result.history) + 1))
    stamps = [e.timestamp for e in result.history]
    for stamp in stamps:
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == datetime.timedelta(0)
    assert stamps == sorted(stamps)
    assert {e.session_id for e in result.history} == {result.history[0].session_id}


async def test_node_events_name_their_node_and_branch_events_their_path() -> None:
    result = await run(fan_pipeline())
    by_type: dict[str, list[stageflow.Event]] = {}
    for event in result.history:
        by_type.setdefault(event.type, []).append(event)
    for event in by_type["node_started"] + by_type["node_finished"]:
        assert event.node_id is not None
        assert event.payload["node_type"] in {"stage", "parallel", "terminal"}
    for kind in ("session_started", "session_completed"):
        assert [(e.node_id, e.path) for e in by_type[kind]] == [(None, "")]
    starts = {(e.node_id, e.path) for e in by_type["node_started"]}
    assert starts == {
        ("first", ""),
        ("fan", ""),
        ("left", "fan/left"),
        ("right", "fan/right"),
        ("end", ""),
    }
    for kind in ("branch_started", "branch_finished"):
        assert sorted((e.node_id, e.path, e.payload["branch"]) for e in by_type[kind]) == [
            ("fan", "fan/left", "left"),
            ("fan", "fan/right", "right"),
        ]
    assert result.history[0].type == "session_started"
    assert result.history[-1].type == "session_completed"


async def test_event_to_dict_is_json() -> None:
    result = await run(fan_pipeline())
    first = result.history[0].to_dict()
    assert json.loads(json.dumps(first)) == first
    assert datetime.datetime.fromisoformat(first["timestamp"]).utcoffset() == datetime.timedelta(0)


async def test_subscribe_gets_every_event_until_unsubscribed() -> None:
    session = session_for(fan_pipeline())
    seen: list[stageflow.Event] = []
    session.subscribe(seen.append)
    stopped: list[stageflow.Event] = []
    unsubscribe = session.subscribe(stopped.append)
    unsubscribe()
    unsubscribe()  # twice is harmless
    result = await session.run()
    assert seen == list(result.history)
    assert stopped == []


async def test_a_callback_that_raises_is_detached_and_the_run_completes() -> None:
    session = session_for(fan_pipeline())
    calls: list[str] = []

    def broken(event: stageflow.Event) -> None:
        calls.append(event.type)
        raise RuntimeError("subscriber bug")

    healthy: list[stageflow.Event] = []
    session.subscribe(broken)
    session.subscribe(healthy.append)
    with capture_logs() as logs:
        result = await session.run()
    assert result.status is COMPLETED
    assert calls == ["session_started"]  # called once, then detached
    assert healthy == list(result.history)  # the others still get everything
    detached = [entry for entry in logs if entry["event"] == "subscriber.detached"]
    assert len(detached) == 1
    assert detached[0]["log_level"] == "error"
    assert detached[0]["exc_info"] is True
    assert detached[0]["session_id"] == session.session_id
    assert detached[0]["event_type"] == "session_started"


async def test_events_iterator_sees_everything_and_ends_with_the_session() -> None:
    session = session_for(fan_pipeline())
    stream = session.events()
    received: list[stageflow.Event] = []

    async def consume() -> None:
        async for event in stream:
            received.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        result = await session.run()
    # The task group exited, so the iterator ended on its own.
    assert received == list(result.history)


async def test_events_iterator_starts_at_the_moment_of_subscription() -> None:
    session = session_for(fan_pipeline())
    subscribed = anyio.Event()
    streams: list[stageflow.EventStream] = []

    def subscribe_at_fan(event: stageflow.Event) -> None:
        if event.type == "node_started" and event.node_id == "fan" and not streams:
            streams.append(session.events())
            subscribed.set()

    session.subscribe(subscribe_at_fan)
    received: list[stageflow.Event] = []

    async def consume() -> None:
        await subscribed.wait()
        async for event in streams[0]:
            received.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        result = await session.run()
    history = list(result.history)
    fan_started = next(
        i for i, e in enumerate(history) if e.type == "node_started" and e.node_id == "fan"
    )
    assert received == history[fan_started + 1 :]


async def test_events_after_the_session_finished_end_at_once() -> None:
    session = session_for(fan_pipeline())
    await session.run()
    with anyio.fail_after(scaled(10)):  # a guard against a hang, not a timing check
        assert [event async for event in session.events()] == []


async def test_a_stream_closed_early_stops_receiving() -> None:
    session = session_for(fan_pipeline())
    stream = session.events()
    await stream.aclose()
    result = await session.run()
    assert result.status is COMPLETED
    assert [event async for event in stream] == []


async def test_events_stream_as_a_context_manager_closes_on_exit() -> None:
    session = session_for(fan_pipeline())
    async with session.events() as stream, anyio.create_task_group() as tg:
        first: list[stageflow.Event] = []

        async def take_one() -> None:
            async for event in stream:
                first.append(event)
                break

        tg.start_soon(take_one)
        await session.run()
    assert [e.type for e in first] == ["session_started"]


def check_stream_accounts_for_every_event(
    received: list[stageflow.Event], history: list[stageflow.Event]
) -> int:
    """Every event of the history is either received or counted by an overflow marker."""
    expected_seq = 1
    dropped_total = 0
    for event in received:
        if event.type == "subscriber_overflow":
            dropped = event.payload["dropped"]
            assert dropped > 0
            dropped_total += dropped
            expected_seq += dropped
            assert event.seq == expected_seq
            assert event.payload["next_seq"] == (
                expected_seq if expected_seq <= len(history) else None
            )
        else:
            assert event == history[expected_seq - 1]
            expected_seq += 1
    assert expected_seq == len(history) + 1
    return dropped_total


async def test_a_subscriber_that_never_reads_during_the_run_learns_what_it_missed() -> None:
    session = session_for(fan_pipeline())
    stream = session.events(buffer=2)
    result = await session.run()
    received = [event async for event in stream]
    history = list(result.history)
    assert received[:2] == history[:2]
    assert received[2].type == "subscriber_overflow"
    assert received[2].payload == {"dropped": len(history) - 2, "next_seq": None}
    assert len(received) == 3
    assert check_stream_accounts_for_every_event(received, history) == len(history) - 2


async def test_a_slow_subscriber_gets_an_overflow_marker_with_the_dropped_count() -> None:
    registry = fake_registry()
    gate = anyio.Event()

    @registry.register("Gate")
    async def wait_for_gate(ctx: stageflow.StageContext) -> None:
        await gate.wait()

    document = doc(
        [
            set_node("a", {"a": 1}, next="b"),
            set_node("b", {"b": 1}, next="gate"),
            stage("gate", "Gate", next="c"),
            set_node("c", {"c": 1}, next="end"),
            terminal("end"),
        ]
    )
    session = session_for(document, registry)
    stream = session.events(buffer=2)
    at_gate = anyio.Event()
    session.subscribe(
        lambda e: at_gate.set() if (e.type, e.node_id) == ("node_started", "gate") else None
    )
    received: list[stageflow.Event] = []

    async def slow_reader() -> None:
        await at_gate.wait()  # read nothing until the engine stops at the gate
        received.append(await stream.__anext__())
        received.append(await stream.__anext__())
        gate.set()
        async for event in stream:
            received.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_reader)
        result = await session.run()
    history = list(result.history)
    gate_started = next(e.seq for e in history if (e.type, e.node_id) == ("node_started", "gate"))
    # Buffered: the first two events. Dropped: everything else up to the gate.
    assert received[:2] == history[:2]
    marker = received[2]
    assert marker.type == "subscriber_overflow"
    assert marker.payload["dropped"] == gate_started - 2
    assert marker.node_id is None
    assert check_stream_accounts_for_every_event(received, history) >= gate_started - 2
    # The history itself always keeps every event.
    assert "subscriber_overflow" not in types(result)


async def test_unbounded_stream_never_drops() -> None:
    session = session_for(loop_pipeline(limits={"max_steps": 200}))
    stream = session.events(buffer=0)
    result = await session.run()
    assert [event async for event in stream] == list(result.history)


async def test_no_reader_of_an_event_can_change_the_history_a_snapshot_keeps() -> None:
    # Events handed out (a subscriber's, a history read's), a snapshot's
    # events and the snapshot a session was restored from shared the nested
    # values of the payloads the history keeps: changing one changed the
    # history, and so every later snapshot.
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")

    @registry.register(
        "Note", spec=stageflow.StageSpec(allowed_events=[stageflow.EventSpec("note")])
    )
    async def note(ctx: stageflow.StageContext) -> None:
        ctx.emit("note", {"items": [1, 2], "inner": {"a": 1}})

    document = doc(
        [
            stage("n", "Note", next="w"),
            stage("w", "Wait", config={"input": "go"}, next="end"),
            terminal(),
        ]
    )
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, registry=registry)
    heard: list[stageflow.Event] = []
    session.subscribe(heard.append)
    await session.run(suspend=True)
    kept = {"items": [1, 2], "inner": {"a": 1}}

    def noted(events: Any) -> Any:
        return next(e for e in events if e["type"] == "note")["payload"]

    next(e for e in heard if e.type == "note").payload["inner"]["a"] = "subscriber"
    next(e for e in session.history if e.type == "note").payload["items"].append("reader")
    first = session.to_dict()
    assert noted(first["history"]) == kept
    noted(first["history"])["items"].append("snapshot")
    assert noted(session.to_dict()["history"]) == kept
    snapshot = json.loads(json.dumps(first))
    noted(snapshot["history"])["items"] = kept["items"]  # undo the change above
    restored = stageflow.Session.from_dict(snapshot, registry=registry)
    noted(snapshot["history"])["inner"]["a"] = "after the restore"
    assert next(e for e in restored.history if e.type == "note").payload == kept
