"""Snapshots: timers across restores, and suspend mode."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import sniffio
import trio
import trio.testing
from fakes import doc, fake_registry, load, parallel, stage, terminal
from snapshot_support import (
    T0,
    TIMED_REPLY,
    WAITING,
    chat_case,
    json_round_trip,
    nested_registry,
    reference_case,
)

import stageflow

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------- timers


def sleeper_registry() -> stageflow.StageRegistry:
    return stageflow.StageRegistry()


SLEEP = doc(
    [
        {
            "id": "nap",
            "type": "stage",
            "stage": "SleepStage",
            "config": {"seconds": 3600},
            "outputs": {"slept": "slept"},
            "next": "end",
        },
        terminal("end", "slept"),
    ]
)


def restore_at(
    data: Mapping[str, Any], registry: stageflow.StageRegistry, now: datetime.datetime
) -> stageflow.Session:
    """Restore in a process whose clock says ``now`` when the run starts."""
    return stageflow.Session.from_dict(json_round_trip(data), registry=registry, clock=lambda: now)


@pytest.mark.trio_only
async def test_a_sleep_restored_later_ends_at_its_original_deadline() -> None:
    registry = sleeper_registry()
    pipeline = load(SLEEP, registry)
    start = trio.current_time()

    def clock_from(base: datetime.datetime) -> Any:
        return lambda: base + datetime.timedelta(seconds=trio.current_time() - start)

    session = stageflow.Session(pipeline, registry=registry, clock=clock_from(T0))
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING
    assert suspended.waiting_for == ()
    assert suspended.wake_at == T0 + datetime.timedelta(hours=1)
    data = json_round_trip(session.to_dict())
    assert data["position"]["stage"]["calls"] == [
        {"sleep": (T0 + datetime.timedelta(hours=1)).isoformat(), "seconds": 3600.0}
    ]
    # Twenty minutes later, another process restores it.
    await trio.sleep(1200)
    restored = stageflow.Session.from_dict(data, registry=registry, clock=clock_from(T0))
    before = trio.current_time()
    result = await restored.run()
    assert trio.current_time() - before == pytest.approx(2400)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"slept": 3600.0}  # as planned, not as waited after the restore


@pytest.mark.trio_only
async def test_a_sleep_restored_after_its_deadline_ends_at_once() -> None:
    registry = sleeper_registry()
    pipeline = load(SLEEP, registry)
    session = stageflow.Session(pipeline, registry=registry, clock=lambda: T0)
    await session.run(suspend=True)
    later = T0 + datetime.timedelta(days=1)
    restored = restore_at(session.to_dict(), registry, later)
    before = trio.current_time()
    result = await restored.run()
    assert trio.current_time() == before
    assert result.status is stageflow.SessionStatus.COMPLETED


@pytest.mark.trio_only
async def test_an_input_timeout_keeps_its_absolute_deadline() -> None:
    registry = fake_registry()
    document = TIMED_REPLY
    pipeline = load(document, registry)
    session = stageflow.Session(pipeline, registry=registry, clock=lambda: T0)
    suspended = await session.run(suspend=True)
    assert suspended.waiting_for == ("reply",)
    assert suspended.wake_at == T0 + datetime.timedelta(seconds=600)
    later = T0 + datetime.timedelta(seconds=599)
    restored = restore_at(session.to_dict(), registry, later)
    before = trio.current_time()
    result = await restored.run()
    assert trio.current_time() - before == pytest.approx(1)
    assert result.result == {"on_time": False}


@pytest.mark.trio_only
async def test_the_session_deadline_survives_a_restore() -> None:
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "ask",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "reply"},
                "next": "end",
            },
            terminal("end"),
        ],
        limits={"timeout": 100},
    )
    session = stageflow.Session(load(document, registry), registry=registry, clock=lambda: T0)
    suspended = await session.run(suspend=True)
    assert suspended.wake_at == T0 + datetime.timedelta(seconds=100)
    later = T0 + datetime.timedelta(seconds=70)
    restored = restore_at(session.to_dict(), registry, later)
    before = trio.current_time()
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.TIMED_OUT
    assert trio.current_time() - before == pytest.approx(30)


@pytest.mark.parametrize("timeout", [None, 3600])
async def test_a_restore_that_changes_the_session_timeout_sets_the_deadline_anew(
    timeout: float | None,
) -> None:
    """The snapshot's deadline was kept whatever the new limits said.

    Lifting ``limits.timeout`` to let a long chat go on made its next run
    raise ``TypeError`` (from the timeout message) once the old deadline
    passed; raising it still timed out at the old deadline.
    """
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "ask",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "reply"},
                "next": "end",
            },
            terminal("end"),
        ],
        limits={"timeout": 600},
    )
    session = stageflow.Session(load(document, registry), registry=registry, clock=lambda: T0)
    await session.run(suspend=True)
    later = T0 + datetime.timedelta(seconds=900)  # past the deadline of 600 s
    restored = stageflow.Session.from_dict(
        json_round_trip(session.to_dict()),
        registry=registry,
        clock=lambda: later,
        limits=stageflow.Limits(timeout=timeout),
    )
    suspended = await restored.run(suspend=True)
    assert suspended.status is WAITING
    deadline = json_round_trip(restored.to_dict())["deadline"]
    if timeout is None:
        assert (suspended.wake_at, deadline) == (None, None)
    else:
        # From the restored run's start (on asyncio the clock moves on a little).
        assert suspended.wake_at is not None
        new = later + datetime.timedelta(seconds=timeout)
        assert datetime.timedelta(0) <= suspended.wake_at - new < datetime.timedelta(seconds=1)
        assert datetime.datetime.fromisoformat(deadline) == suspended.wake_at
    restored.send_input("reply", {})
    assert (await restored.run()).status is stageflow.SessionStatus.COMPLETED


@pytest.mark.trio_only
async def test_a_retry_delay_and_its_attempt_survive_a_restore() -> None:
    attempts: list[int] = []
    registry = stageflow.StageRegistry()

    @registry.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return {"attempt": ctx.attempt}

    document = doc(
        [
            {
                "id": "call",
                "type": "stage",
                "stage": "Flaky",
                "retry": {"attempts": 3, "delay": 60, "backoff": 1},
                "outputs": {"attempt": "attempt"},
                "next": "end",
            },
            terminal("end", "attempt"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry, clock=lambda: T0)
    suspended = await session.run(suspend=True)
    assert suspended.wake_at == T0 + datetime.timedelta(seconds=60)
    data = session.to_dict()
    assert data["position"]["stage"] == {
        "attempt": 2,
        "calls": [],
        "retry_at": (T0 + datetime.timedelta(seconds=60)).isoformat(),
    }
    # A service restores it early: it suspends again at once, with the same wake_at.
    early = T0 + datetime.timedelta(seconds=45)
    restored = stageflow.Session.from_dict(data, registry=registry, clock=lambda: early)
    again = await restored.run(suspend=True)
    assert again.wake_at == suspended.wake_at
    # At wake_at it goes on: attempt 2 fails, and the second delay suspends it.
    at = suspended.wake_at
    assert at is not None
    restored = restore_at(restored.to_dict(), registry, at)
    second = await restored.run(suspend=True)
    assert second.wake_at == T0 + datetime.timedelta(seconds=120)
    # Restored without suspend mode, the run sleeps out the rest of the delay itself.
    late = T0 + datetime.timedelta(seconds=100)
    restored = restore_at(restored.to_dict(), registry, late)
    before = trio.current_time()
    result = await restored.run()
    assert trio.current_time() - before == pytest.approx(20)
    assert result.artifacts == {"attempt": 3}
    assert attempts == [1, 2, 3]


async def test_seeded_jitter_draws_go_on_after_a_restore() -> None:
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "call",
                "type": "stage",
                "stage": "Fail",
                "retry": {"attempts": 4, "delay": 1, "jitter": 0.5},
                "next": "end",
            },
            terminal("end"),
        ]
    )
    pipeline = load(document, registry)

    def delays(result: stageflow.SessionResult) -> list[float]:
        return [e.payload["delay"] for e in result.history if e.type == "node_retrying"]

    straight = await stageflow.Session(pipeline, registry=registry, seed=7).run()
    session = stageflow.Session(pipeline, registry=registry, seed=7)
    first = await session.run(suspend=True)
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    second = await restored.run()
    assert delays(first) + delays(second)[len(delays(first)) :] == delays(straight)
    assert second.status is straight.status is stageflow.SessionStatus.FAILED


# ---------------------------------------------------------------- suspend mode


async def test_suspend_keeps_the_teardown_out_of_the_history_and_runs_on_in_place() -> None:
    case = chat_case(["bye"])
    session = case.session()
    events: list[str] = []
    session.subscribe(lambda e: events.append(e.type))
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING
    assert session.status is WAITING
    assert events[-2:] == ["waiting_for_input", "session_suspended"]
    assert [e.type for e in session.history] == events
    receipt = session.send_input("user_message", {"text": "bye"})
    # The saved wait takes it (issue 19): kept in its journal, not in the backlog.
    assert (receipt.delivered, receipt.queued) == (1, False)
    assert session.to_dict()["backlog"] == {}
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert "session_resumed" in [e.type for e in result.history]


async def test_a_suspended_stage_is_cleaned_up_with_outcome_suspended() -> None:
    outcomes: list[str] = []
    registry = stageflow.StageRegistry()

    @registry.register("Holder")
    class Holder(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            return {"got": await ctx.wait_input("go")}

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            outcomes.append(outcome)

    document = doc([stage("hold", "Holder", next="end"), terminal("end")])
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    assert outcomes == ["suspended"]


def _seeing_registry(
    seen: list[type[BaseException]], texts: list[str] | None = None
) -> stageflow.StageRegistry:
    """``Hold``: waits for ``go`` (or sleeps an hour), noting what ended the wait (and its text)."""
    registry = stageflow.StageRegistry()
    texts = [] if texts is None else texts

    @registry.register("Hold")
    async def hold(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        try:
            if ctx.config.get("sleep"):
                await ctx.sleep(3600)
                return {"got": "slept"}
            return {"got": await ctx.wait_input("go")}
        except BaseException as exc:
            seen.append(type(exc))
            texts.append(str(exc))
            raise

    return registry


@pytest.mark.parametrize("sleep", [False, True], ids=["wait_input", "sleep"])
async def test_the_wait_where_the_run_suspends_raises_run_suspended_on_trio(sleep: bool) -> None:
    # On trio that wait raises RunSuspended at once (trio delivered a
    # cancellation through a pass of its scheduler: a quarter of a pause); on
    # asyncio the run's cancellation ends it. The run ends waiting either way.
    seen: list[type[BaseException]] = []
    texts: list[str] = []
    registry = _seeing_registry(seen, texts)
    hold = stage("hold", "Hold", config={"sleep": sleep}, outputs={"got": "got"}, next="end")
    document = doc([hold, terminal("end", "got")])
    session = stageflow.Session(load(document, registry), registry=registry, clock=lambda: T0)
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING
    expected = (
        stageflow.RunSuspended
        if sniffio.current_async_library() == "trio"
        else anyio.get_cancelled_exc_class()
    )
    assert seen == [expected]
    if expected is stageflow.RunSuspended:
        # A stage that logs what ended its wait reads what it is.
        assert texts[0].startswith("run(suspend=True) suspends the session at this wait")
    assert [e.type for e in session.history][-1] == "session_suspended"
    # Restored an hour later (its sleep is due), on any backend.
    restored = restore_at(session.to_dict(), registry, T0 + datetime.timedelta(hours=1))
    if not sleep:
        restored.send_input("go", "now")
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"got": "slept" if sleep else "now"}


async def test_the_other_branches_of_a_suspending_run_are_cancelled() -> None:
    # The first branch to block is parked: the run's cancellation ends its wait.
    seen: list[type[BaseException]] = []
    registry = _seeing_registry(seen)
    document = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Hold", outputs={"got": "a"}),
            stage("b", "Hold", outputs={"got": "b"}),
            terminal("end", "a", "b"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    cancelled = anyio.get_cancelled_exc_class()
    expected = (
        {cancelled, stageflow.RunSuspended}
        if sniffio.current_async_library() == "trio"
        else {cancelled}
    )
    assert len(seen) == 2
    assert set(seen) == expected
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.send_input("go", "now")
    result = await restored.run()
    assert result.artifacts == {"a": "now", "b": "now"}


@pytest.mark.trio_only
async def test_a_shielded_wait_where_the_run_suspends_is_ended_by_run_suspended() -> None:
    # The run's cancellation cannot reach a wait in a shield: before
    # RunSuspended, run(suspend=True) never returned here (docs/snapshots.md).
    registry = stageflow.StageRegistry()

    @registry.register("Shielded")
    async def shielded(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        with trio.CancelScope(shield=True):
            return {"got": await ctx.wait_input("go")}

    document = doc(
        [stage("s", "Shielded", outputs={"got": "got"}, next="end"), terminal("end", "got")]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    session.send_input("go", "late")
    result = await session.run()
    assert result.artifacts == {"got": "late"}


@pytest.mark.trio_only
async def test_a_stage_that_swallows_run_suspended_is_cancelled_at_its_next_checkpoint() -> None:
    # The run's scope is cancelled all the same: the stage does not go on
    # with the run half torn down, and the snapshot is the one taken at its wait.
    after: list[str] = []
    registry = stageflow.StageRegistry()

    @registry.register("Swallow")
    async def swallow(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        try:
            got = await ctx.wait_input("go")
        except stageflow.RunSuspended:
            got = "swallowed"
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            after.append("cancelled")
            raise
        after.append("went on")
        return {"got": got}

    document = doc(
        [stage("s", "Swallow", outputs={"got": "got"}, next="end"), terminal("end", "got")]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    assert after == ["cancelled"]
    session.send_input("go", "real")
    result = await session.run()
    assert result.artifacts == {"got": "real"}


async def test_a_wait_in_a_task_group_of_the_stages_own_suspends_the_run() -> None:
    # On trio the group raises RunSuspended in a BaseExceptionGroup (where
    # anyio's task group raised one Cancelled): the run still ends waiting.
    seen: list[BaseException] = []
    registry = stageflow.StageRegistry()

    @registry.register("Both")
    async def both(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        got: dict[str, Any] = {}

        async def take(key: str) -> None:
            got[key] = await ctx.wait_input(key)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(take, "a")
                tg.start_soon(take, "b")
        except BaseException as exc:
            seen.append(exc)
            raise
        return {"got": got}

    document = doc([stage("s", "Both", outputs={"got": "got"}, next="end"), terminal("end", "got")])
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    assert len(seen) == 1
    if sniffio.current_async_library() == "trio":
        assert isinstance(seen[0], BaseExceptionGroup)
        assert seen[0].split(stageflow.RunSuspended)[0] is not None
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.send_input("a", 1)
    restored.send_input("b", 2)
    result = await restored.run()
    assert result.artifacts == {"got": {"a": 1, "b": 2}}


async def test_suspend_waits_for_every_position_to_block() -> None:
    # One branch waits at once, the other works a while first: no early suspension.
    registry = nested_registry()
    document = doc(
        [
            parallel("fan", ["ask", "work"], next="end"),
            stage("ask", "Ask", config={"input": "x"}, outputs={"answer": "x"}),
            stage("work", "Set", config={"values": {"y": 1}, "delay": 5}, outputs={"y": "y"}),
            terminal("end", "x", "y"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING
    branches = session.to_dict()["position"]["parallel"]["branches"]
    assert [b["state"] for b in branches] == ["running", "finished"]
    assert branches[1]["writes"] == [["y", 1]]
    restored = stageflow.Session.from_dict(session.to_dict(), registry=registry)
    restored.send_input("x", "X")
    result = await restored.run()
    assert result.artifacts == {"x": "X", "y": 1}


NAP: Mapping[str, Any] = stage("nap", "SleepStage", config={"seconds": 3600})
ENDS_EARLY = [
    parallel("fan", ["work", "nap"], next="join"),
    stage(
        "work", "Set", config={"values": {"y": 1}, "delay": 0.01}, outputs={"y": "y"}, next="early"
    ),
    terminal("early", "y", result={"early": True}),
    terminal("join", result={"early": False}),
    NAP,
]


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(ENDS_EARLY, id="branch"),
        pytest.param(
            [
                *ENDS_EARLY[:3],
                parallel("nap", ["nap1", "nap2"]),
                {**NAP, "id": "nap1"},
                {**NAP, "id": "nap2"},
                ENDS_EARLY[3],
            ],
            id="nested-parallel",
        ),
        pytest.param(
            [
                *ENDS_EARLY[:3],
                {"id": "nap", "type": "map", "items": "naps", "body": "nap1", "concurrency": 2},
                {**NAP, "id": "nap1"},
                ENDS_EARLY[3],
            ],
            id="map",
        ),
    ],
)
async def test_a_terminal_in_a_branch_completes_a_suspend_mode_run_while_a_sibling_sleeps(
    shape: list[dict[str, Any]],
) -> None:
    """The sibling's timers are cancelled with it: not a moment to suspend until they are due."""
    registry = fake_registry()
    session = stageflow.Session(
        load(doc(shape), registry), registry=registry, payload={"naps": [1, 2, 3]}
    )
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert (result.result, result.artifacts) == ({"early": True}, {"y": 1})


async def test_a_terminal_in_a_subpipeline_branch_does_not_suspend_the_session() -> None:
    registry = fake_registry()
    document = doc(
        [
            {"id": "call", "type": "subpipeline", "pipeline": "child", "next": "end"},
            {**ENDS_EARLY[3], "id": "end", "artifacts": ["got"]},
        ],
        subpipelines={"child": {"entry": "fan", "nodes": ENDS_EARLY}},
    )
    document["nodes"][0]["result_output"] = "got"
    session = stageflow.Session(load(document, registry), registry=registry)
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"got": {"early": True}}


HANGS = [
    parallel("fan", ["work", "nap"], next="join"),
    stage("work", "Hang"),
    NAP,
    terminal("join"),
]
TIMED_OUT = terminal("handled", "error.type", result={"timed_out": True})


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            doc(
                [
                    {**HANGS[0], "timeout": 0.01, "on_error": [{"next": "handled"}]},
                    *HANGS[1:],
                    TIMED_OUT,
                ]
            ),
            id="parallel",
        ),
        pytest.param(
            doc(
                [
                    {
                        "id": "call",
                        "type": "subpipeline",
                        "pipeline": "child",
                        "timeout": 0.01,
                        "on_error": [{"next": "handled"}],
                        "next": "end",
                    },
                    TIMED_OUT,
                    terminal("end"),
                ],
                subpipelines={"child": {"entry": "fan", "nodes": HANGS}},
            ),
            id="subpipeline",
        ),
    ],
)
async def test_a_node_timeout_cancelling_a_sleeping_branch_is_routed_in_suspend_mode(
    document: dict[str, Any],
) -> None:
    """Whichever branch is torn down first, the sleeping one is no reason to suspend.

    Both are cancelled at once, and the schedulers pick the order (trio at
    random): a few runs try both.
    """
    registry = fake_registry()
    pipeline = load(document, registry)
    for _ in range(16):
        session = stageflow.Session(pipeline, registry=registry)
        result = await session.run(suspend=True)
        assert result.status is stageflow.SessionStatus.COMPLETED
        assert result.artifacts == {"error.type": "NodeTimeoutError"}


async def test_the_session_deadline_cancelling_a_sleeping_branch_times_out_in_suspend_mode() -> (
    None
):
    registry = fake_registry()
    pipeline = load(doc(HANGS, limits={"timeout": 0.01}), registry)
    for _ in range(16):  # the teardown order varies (trio picks it at random)
        session = stageflow.Session(pipeline, registry=registry)
        result = await session.run(suspend=True)
        assert result.status is stageflow.SessionStatus.TIMED_OUT
        assert isinstance(result.error, stageflow.SessionTimeoutError)


async def test_a_run_without_waits_completes_in_suspend_mode() -> None:
    case = reference_case()
    result = await case.session().run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED


async def test_a_wait_already_due_times_out_in_suspend_mode_without_suspending() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Poll")
    async def poll(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        try:
            return {"got": await ctx.wait_input("go", timeout=0)}
        except stageflow.InputTimeoutError:
            return {"got": None}

    document = doc([stage("p", "Poll", outputs={"got": "got"}, next="end"), terminal("end", "got")])
    result = await stageflow.Session(load(document, registry), registry=registry).run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED  # as a due timer goes on
    assert result.artifacts == {"got": None}
    assert "session_suspended" not in [e.type for e in result.history]


async def test_streams_end_at_a_suspension() -> None:
    case = chat_case([])
    session = case.session()
    seen: list[str] = []

    async def read(stream: stageflow.EventStream) -> None:
        async for event in stream:
            seen.append(event.type)

    stream = session.events()
    async with anyio.create_task_group() as tg:
        tg.start_soon(read, stream)
        await session.run(suspend=True)
    assert seen[-1] == "session_suspended"
