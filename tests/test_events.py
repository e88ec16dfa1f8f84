"""The history and its streams, driven directly (no session)."""

from __future__ import annotations

import anyio
import pytest

import stageflow
from stageflow._events import History

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
