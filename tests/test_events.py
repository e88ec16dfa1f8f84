"""The history and its streams, driven directly (no session)."""

from __future__ import annotations

import copy
import datetime
import pickle

import anyio
import pytest
from fakes import run
from session_support import COMPLETED, fan_pipeline

import stageflow
from stageflow._events import History, node_started_payload

pytestmark = pytest.mark.anyio


def record(history: History, count: int) -> None:
    for _ in range(count):
        history.record("tick", None, "", {})


async def take(stream: stageflow.EventStream, count: int) -> list[stageflow.Event]:
    return [await stream.__anext__() for _ in range(count)]


async def test_a_marker_always_announces_the_event_that_follows_it() -> None:
    history = History("s")
    stream = history.stream(2)
    record(history, 3)  # 1 and 2 buffered, 3 dropped
    assert [e.seq for e in await take(stream, 1)] == [1]
    record(history, 1)  # one free slot: not enough for a marker and event 4
    assert [e.seq for e in await take(stream, 1)] == [2]
    record(history, 1)  # now the marker and event 5 fit
    marker, event = await take(stream, 2)
    assert (marker.type, dict(marker.payload), marker.seq) == (
        "subscriber_overflow",
        {"dropped": 2, "next_seq": 5},
        5,
    )
    assert event.seq == 5
    history.close()
    assert [e async for e in stream] == []


async def test_a_stream_whose_reader_is_gone_does_not_starve_the_next_one() -> None:
    history = History("s")
    gone, alive = history.stream(8), history.stream(8)
    gone._sub.receive.close()  # as if the reader vanished without aclose()
    record(history, 2)
    history.close()
    assert [e.seq async for e in alive] == [1, 2]


async def test_close_ends_every_stream_and_later_ones() -> None:
    history = History("s")
    early = history.stream(0)
    record(history, 1)
    history.close()
    assert [e.seq async for e in early] == [1]
    with anyio.fail_after(5):  # a guard against a hang, not a timing check
        assert [e async for e in history.stream(0)] == []


# ------------------------------------------------------------- the Event type

UTC = datetime.UTC
WHEN = datetime.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def event_at(timestamp: datetime.datetime, **fields: object) -> stageflow.Event:
    event = stageflow.Event(1, "tick", timestamp, "s", "n", "", {"k": 1})
    return event._replace(**fields) if fields else event


def test_an_event_gives_its_timestamp_back_in_every_view() -> None:
    event = event_at(WHEN)
    assert event.timestamp == WHEN
    assert event.timestamp.isoformat() == WHEN.isoformat()
    assert event[2] == WHEN
    assert event[-8] == WHEN
    assert event[1:3] == ("tick", WHEN)
    seq, type_, timestamp, *_ = event
    assert (seq, type_, timestamp) == (1, "tick", WHEN)
    assert event._asdict()["timestamp"] == WHEN
    assert f"timestamp={WHEN!r}" in repr(event)
    assert event.to_dict()["timestamp"] == "2026-03-01T12:30:45.123456+00:00"


def test_a_recorded_event_is_utc_and_survives_a_json_round_trip() -> None:
    history = History("s")
    before = datetime.datetime.now(UTC)
    history.record("tick", "n", "", {"k": 1})
    event = history.events[-1]
    after = datetime.datetime.now(UTC)
    assert event.timestamp.tzinfo is UTC
    assert before <= event.timestamp <= after
    data = event.to_dict()
    again = stageflow.Event(
        data["seq"],
        data["type"],
        datetime.datetime.fromisoformat(data["timestamp"]),
        data["session_id"],
        data["node_id"],
        data["path"],
        data["payload"],
    )
    assert again == event
    assert again.to_dict() == data


def test_copies_and_replaced_events_compare_equal() -> None:
    history = History("s")
    history.record("tick", None, "", {"k": [1]})
    event = history.events[-1]
    assert copy.copy(event) == event
    assert copy.deepcopy(event) == event
    assert pickle.loads(pickle.dumps(event)) == event
    assert event._replace(seq=1) == event
    assert event._replace(seq=2) != event
    assert stageflow.Event._make(event) == event
    assert event._replace(timestamp=WHEN).timestamp == WHEN


@pytest.mark.parametrize(
    "timestamp",
    [
        datetime.datetime(
            2026, 3, 1, 14, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        datetime.datetime(2026, 3, 1, 12, 30),  # naive: not what the engine makes, kept anyway
        datetime.datetime(1, 1, 1, tzinfo=UTC),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_a_timestamp_comes_back_exactly_as_given(timestamp: datetime.datetime) -> None:
    event = event_at(timestamp)
    assert event.timestamp == timestamp
    assert event.timestamp.tzinfo == timestamp.tzinfo
    assert event.to_dict()["timestamp"] == timestamp.isoformat()


def test_a_recorded_event_has_each_field_where_its_name_says() -> None:
    # History.record builds the tuple positionally for speed: each value must
    # land under its own name, read by name, by index and from the end.
    history = History("s", tracing=None)
    before = datetime.datetime.now(UTC)
    history.record("tick", "node", "a/b", {"k": 1}, ("t" * 32, "s" * 16, "p" * 16))
    event = history.events[-1]
    expected = {
        "seq": 1,
        "type": "tick",
        "session_id": "s",
        "node_id": "node",
        "path": "a/b",
        "payload": {"k": 1},
        "trace_id": "t" * 32,
        "span_id": "s" * 16,
        "parent_span_id": "p" * 16,
    }
    fields = stageflow.Event._fields
    for name, value in expected.items():
        index = fields.index(name)
        assert getattr(event, name) == value
        assert event[index] == value
        assert event[index - len(fields)] == value
    stamp = fields.index("timestamp")
    assert event[stamp] == event[stamp - len(fields)] == event.timestamp
    assert isinstance(event.timestamp, datetime.datetime)
    assert before - datetime.timedelta(seconds=1) <= event.timestamp
    assert list(event)[stamp] == event.timestamp


# ------------------------------------------------- the event log (made when read)


def test_an_event_log_is_what_the_history_held_when_asked() -> None:
    history = History("s")
    record(history, 2)
    log = history.events
    record(history, 1)
    assert len(log) == 2
    assert [e.seq for e in log] == [1, 2]
    assert [e.seq for e in history.events] == [1, 2, 3]
    assert log[-1].seq == 2
    assert log[0:1] == (log[0],)
    assert [e.seq for e in reversed(log)] == [2, 1]
    with pytest.raises(IndexError):
        log[2]


def test_an_event_log_equals_the_tuple_or_list_of_its_events() -> None:
    history = History("s")
    record(history, 3)
    log = history.events
    as_tuple = tuple(log)
    assert log == as_tuple
    assert as_tuple == log
    assert log == list(log)
    assert log == history.events
    assert log != as_tuple[:2]
    assert log != (*as_tuple[:2], as_tuple[2]._replace(type="other"))
    assert pickle.loads(pickle.dumps(log)) == as_tuple
    assert copy.copy(log) == log


def test_changing_a_read_payload_changes_nothing_kept() -> None:
    history = History("s")
    shared = node_started_payload("stage")
    history.record("node_started", "a", "", shared)
    history.record("node_started", "b", "", shared)
    seen: list[stageflow.Event] = []
    history.subscribe(seen.append)
    history.record("node_started", "c", "", shared)
    first = history.events[0]
    first.payload["node_type"] = "changed"  # type: ignore[index]
    seen[0].payload["node_type"] = "changed"  # type: ignore[index]
    assert [e.payload for e in history.events] == [{"node_type": "stage"}] * 3
    assert node_started_payload("stage") == {"node_type": "stage"}


def test_restored_events_come_back_as_they_were_recorded() -> None:
    history = History("s")
    history.record("tick", "node", "a/b", {"k": 1}, ("t" * 32, "s" * 16, None))
    history.record("tock", None, "", {})
    kept = [*history.events, event_at(WHEN)._replace(seq=3, session_id="s")]
    restored = History("s")
    restored.restore(kept[1:], 4)  # a snapshot that kept the newest two
    assert restored.events == kept[1:]
    assert restored.next_seq == 4
    restored.record("tick", None, "", {})
    assert [e.seq for e in restored.events] == [2, 3, 4]
    assert restored.events[1].timestamp == WHEN
    assert History("s", kept).events == kept
    assert History("s", kept).events[0].span_id == "s" * 16


async def test_session_results_keep_their_own_events_and_payloads() -> None:
    # Node events of every session share their payload dicts in the history:
    # a caller changing what it read must not reach another session.
    first, second = await run(fan_pipeline()), await run(fan_pipeline())
    assert first.status is second.status is COMPLETED
    started = next(e for e in first.history if e.type == "node_started")
    started.payload["node_type"] = "changed"  # type: ignore[index]
    assert {e.payload["node_type"] for e in second.history if e.type == "node_started"} == {
        "stage",
        "parallel",
        "terminal",
    }
    assert [e.to_dict() for e in first.history] == first.to_dict()["history"]
    assert first.history == tuple(first.history)


def test_a_history_is_quiet_only_while_record_would_only_append() -> None:
    history = History("s")
    assert history.quiet
    unsubscribe = history.subscribe(lambda event: None)
    assert not history.quiet
    unsubscribe()
    assert history.quiet
    stream = history.stream(4)
    assert not history.quiet
    history._unsubscribe(stream._sub)
    stream._sub.receive.close()
    assert history.quiet
    history.muted = True
    assert not history.quiet
    history.muted = False
    assert history.quiet
    late = history.stream(4)
    history.close()
    late._sub.receive.close()
    assert history.quiet


def test_a_history_with_a_failing_callback_is_quiet_again_once_it_is_detached() -> None:
    history = History("s")

    def failing(event: stageflow.Event) -> None:
        raise RuntimeError("boom")

    history.subscribe(failing)
    record(history, 1)
    assert history.quiet


def test_a_quiet_history_records_the_same_events() -> None:
    history = History("s")
    history.records.extend(("tick", 0, "n", "", node_started_payload("stage")))
    (event,) = history.events
    assert (event.seq, event.type, event.node_id, dict(event.payload)) == (
        1,
        "tick",
        "n",
        {"node_type": "stage"},
    )
    assert event.timestamp == datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def test_events_are_equal_by_their_instant_whatever_its_zone() -> None:
    # Equality compared the stored forms: integer microseconds for a UTC time,
    # the datetime itself for any other zone, so the same instant differed.
    utc = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)
    plus_two = utc.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    event = stageflow.Event(1, "x", utc, "s", None, "", {})
    same = stageflow.Event(1, "x", plus_two, "s", None, "", {})
    assert event == same
    assert (event != same) is False
    assert event == tuple(same)
    assert event != event._replace(timestamp=utc + datetime.timedelta(microseconds=1))
    assert event != "an event"
