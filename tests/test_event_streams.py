"""What docs/inputs.md promises about ``events()`` and ``send_input_from_thread``."""

from __future__ import annotations

import contextlib

import anyio
import pytest
import trio.testing
from fakes import doc, fake_registry, load, stage, terminal, wait_until_waiting

import stageflow


def chatty_registry() -> stageflow.StageRegistry:
    """``Chatty`` emits five ``tick`` events without awaiting, then waits for ``go``."""
    registry = fake_registry()

    @registry.register("Chatty")
    async def chatty(ctx: stageflow.StageContext) -> None:
        for n in range(5):
            ctx.emit("tick", {"n": n})
        await ctx.wait_input("go")

    return registry


def session_of(*nodes: dict[str, object], registry: stageflow.StageRegistry) -> stageflow.Session:
    return stageflow.Session(load(doc(list(nodes)), registry), registry=registry)


@pytest.mark.anyio
async def test_slow_subscriber_gets_an_overflow_marker_then_resumes() -> None:
    session = session_of(
        stage("talk", "Chatty", next="end"), terminal("end"), registry=chatty_registry()
    )
    stream = session.events(buffer=2)
    waiting = anyio.Event()
    session.subscribe(lambda e: waiting.set() if e.type == "waiting_for_input" else None)
    got: list[stageflow.Event] = []
    async with anyio.create_task_group() as tg:

        async def slow_reader() -> None:
            await waiting.wait()  # read nothing until the stage waits
            got.append(await stream.__anext__())
            got.append(await stream.__anext__())
            session.send_input("go", None)
            got.append(await stream.__anext__())
            got.append(await stream.__anext__())
            await stream.aclose()

        tg.start_soon(slow_reader)
        result = await session.run()
    assert [(e.seq, e.type) for e in got] == [
        (1, "session_started"),
        (2, "node_started"),
        (9, "subscriber_overflow"),
        (9, "input_received"),
    ]
    # Five ticks and waiting_for_input were dropped for this reader only.
    assert dict(got[2].payload) == {"dropped": 6, "next_seq": 9}
    assert [e.type for e in result.history[2:8]] == ["tick"] * 5 + ["waiting_for_input"]


@pytest.mark.anyio
async def test_gap_at_the_end_of_the_run_is_still_marked() -> None:
    registry = fake_registry()
    session = session_of(
        stage("a", "Set", next="b"),
        stage("b", "Set", next="end"),
        terminal("end"),
        registry=registry,
    )
    stream = session.events(buffer=2)
    result = await session.run()
    got = [event async for event in stream]
    markers = [e for e in got if e.type == "subscriber_overflow"]
    assert len(markers) == 1
    delivered = len(got) - 1
    assert delivered + markers[0].payload["dropped"] == len(result.history)


@pytest.mark.trio
async def test_events_of_a_finished_session_end_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = session_of(terminal("end"), registry=fake_registry())
    await session.run()
    stream = session.events()
    try:
        with anyio.fail_after(60):  # virtual time: a hang shows up as TimeoutError at once
            assert [event async for event in stream] == []
    finally:
        await stream.aclose()


@pytest.mark.trio
async def test_send_input_from_thread_on_the_loop_thread_is_a_typed_error() -> None:
    registry = fake_registry()
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=registry)
    stream = session.events()
    async with anyio.create_task_group() as tg:

        async def misuse() -> None:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if event.type == "waiting_for_input":
                        try:
                            with pytest.raises(stageflow.SessionStateError, match="send_input"):
                                session.send_input_from_thread("go", 1)
                        finally:
                            session.send_input("go", 1)

        tg.start_soon(misuse)
        await session.run()


@pytest.mark.anyio
async def test_a_stream_made_while_a_suspended_session_waits_gets_its_next_run() -> None:
    # A suspended session has not finished: a stream made between its runs
    # ended at once (a restored one's did not), so a driver watching the
    # resumed run saw nothing, nor the cancellation of the waiting session.
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=fake_registry())
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    resumed = session.events()
    session.send_input("go", 1)
    result = await session.run()
    with anyio.fail_after(60):
        got = [event async for event in resumed]
    started = next(i for i, e in enumerate(result.history) if e.type == "session_resumed")
    assert got == list(result.history[started:])
    assert got[-1].type == "session_completed"

    waiting = session_of(node, terminal("end"), registry=fake_registry())
    await waiting.run(suspend=True)
    cancelled = waiting.events()
    waiting.cancel("gave up")
    with anyio.fail_after(60):
        assert [event.type async for event in cancelled] == ["session_cancelled"]


@pytest.mark.anyio
async def test_a_waiting_session_given_an_input_or_cancelled_from_a_thread_wakes_its_stream() -> (
    None
):
    # A session that does not run records what a worker thread's call does
    # in that thread, and handed the events to the stream's reader there: on
    # trio waking it raised RuntimeError into the thread halfway (the input
    # kept though its sender was told it failed), and the reader waited for good.
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=fake_registry())
    await session.run(suspend=True)
    stream = session.events()
    got: list[str] = []
    receipts: list[stageflow.InputReceipt] = []
    async with anyio.create_task_group() as tg:

        async def read() -> None:
            got.extend([event.type async for event in stream])

        tg.start_soon(read)
        await anyio.wait_all_tasks_blocked()  # the reader waits for an event
        receipts.append(await anyio.to_thread.run_sync(session.send_input, "later", 1))
        await anyio.wait_all_tasks_blocked()
        await anyio.to_thread.run_sync(session.cancel, "the user left")
    assert receipts == [stageflow.InputReceipt("later", delivered=0, queued=True)]
    assert got == ["input_unexpected", "input_queued", "inputs_discarded", "session_cancelled"]
    assert session.status is stageflow.SessionStatus.CANCELLED


@pytest.mark.anyio
@pytest.mark.parametrize("run_backend", ["trio", "asyncio"])
async def test_a_stream_read_on_another_threads_loop_gets_every_event_of_the_run(
    run_backend: str,
) -> None:
    # A run on one thread's event loop handed its events to a stream read on
    # another thread's loop from its own thread: on trio the send raised
    # inside the run (the stage failed with an AssertionError), on asyncio
    # the reader was never woken and waited for good.
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=fake_registry())
    stream = session.events()
    got: list[str] = []
    results: list[stageflow.SessionResult] = []

    def run_in_its_own_loop() -> None:
        results.append(anyio.run(session.run, backend=run_backend))

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, run_in_its_own_loop)
        async for event in stream:
            got.append(event.type)
            if event.type == "waiting_for_input":
                await anyio.to_thread.run_sync(session.send_input_from_thread, "go", 1)
    assert [result.status for result in results] == [stageflow.SessionStatus.COMPLETED]
    assert got == [event.type for event in session.history]
    assert got[-1] == "session_completed"


@pytest.mark.anyio
@pytest.mark.parametrize("run_backend", ["trio", "asyncio"])
async def test_a_snapshot_asked_for_on_another_threads_loop_is_taken_on_the_runs_loop(
    run_backend: str,
) -> None:
    # A reader on one thread's trio loop asking a run on another thread's
    # trio loop for its snapshot got trio's RuntimeError "this is a blocking
    # function; call it from a thread" (on asyncio, or from a plain thread,
    # the snapshot was taken on the run's loop).
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=fake_registry())
    stream = session.events()
    snapshots: list[dict[str, object]] = []
    results: list[stageflow.SessionResult] = []

    def run_in_its_own_loop() -> None:
        results.append(anyio.run(session.run, backend=run_backend))

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, run_in_its_own_loop)
        async for event in stream:
            if event.type == "waiting_for_input":
                try:
                    snapshots.append(session.to_dict())
                finally:  # the run goes on to its end whatever happened here
                    await anyio.to_thread.run_sync(session.send_input_from_thread, "go", 1)
    assert [result.status for result in results] == [stageflow.SessionStatus.COMPLETED]
    assert [snapshot["status"] for snapshot in snapshots] == ["running"]


@pytest.mark.anyio
async def test_a_reader_that_leaves_without_aclose_is_unsubscribed() -> None:
    # A reader that broke out of its loop (or whose task was cancelled)
    # without aclose() stayed subscribed for as long as the session lived:
    # it kept up to `buffer` events and was handed a copy of every later one.
    node = stage("w", "WaitStage", config={"input": "go"}, next="end")
    session = session_of(node, terminal("end"), registry=fake_registry())
    # The first one's buffer overflows before it reads.
    streams = [session.events(buffer=2), session.events(buffer=0)]
    left: list[str] = []

    async def leave_early(stream: stageflow.EventStream) -> None:
        async for event in stream:
            left.append(event.type)
            break

    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        async with anyio.create_task_group() as readers:
            while streams:
                readers.start_soon(leave_early, streams.pop())
        await wait_until_waiting(session, "go")
        session.send_input("later", 1)  # events recorded after the readers left
        assert not session._state.history._subscriptions
        session.send_input("go", 1)
    assert left == ["session_started", "session_started"]
    assert session.status is stageflow.SessionStatus.COMPLETED
