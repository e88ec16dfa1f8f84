"""Edges of a parallel node's branch tasks: trio and asyncio alike.

Each test is a scenario whose observable result must be the same on trio
(the reference) and on asyncio, where a parallel node's branches run in
asyncio's own tasks, each in an anyio cancel scope of its own: cancellations
from outside the session, deadlines, shields, nesting, failures and
interrupts in branches, suspension, and what is left behind afterwards.
Written to review a change that ran asyncio branches in tasks of the
engine's own (not merged: ``benchmarks/patches/asyncio-scoped-group.patch``);
the deadline tests are the ones it failed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import live_tasks
from fakes import (
    doc,
    fake_registry,
    load,
    parallel,
    scaled,
    stage,
    terminal,
    wait_until_waiting,
)

import stageflow

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("error")]

COMPLETED = stageflow.SessionStatus.COMPLETED
CANCELLED = stageflow.SessionStatus.CANCELLED
FAILED = stageflow.SessionStatus.FAILED
WAITING = stageflow.SessionStatus.WAITING


@pytest.fixture(autouse=True)
def _nothing_left_behind(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No task destroyed while pending, no coroutine never awaited (``-W error``)."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    gc.collect()
    destroyed = [r.getMessage() for r in caplog.records if "destroyed" in r.getMessage()]
    assert destroyed == []


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    import sniffio

    return sniffio.current_async_library() == "asyncio"


_BASE: list[int] = []


@pytest.fixture(autouse=True)
async def _baseline() -> None:
    """The tasks alive as the test starts (the test runner's own)."""
    _BASE[:] = [live_tasks() - 1]


def _others() -> int:
    """Tasks alive now but not at the test's start, plus the test's own: 1 if none left."""
    return live_tasks() - _BASE[0]


def _ended(history: Any) -> list[tuple[str, str]]:
    return sorted(
        (e.type, e.path)
        for e in history
        if e.type.startswith("branch_") and e.type != "branch_started"
    )


def _stage_error(result: stageflow.SessionResult) -> stageflow.StageError:
    """The StageError in ``result.error``'s chain of causes (a branch's or an item's is wrapped)."""
    error = result.error
    while not isinstance(error, stageflow.StageError):
        assert error is not None
        error = error.__cause__  # type: ignore[assignment]
    return error


def _registry(steps: list[str], started: anyio.Event | None = None) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Shielded")
    async def shielded(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        try:
            if started is not None:
                started.set()
            await anyio.sleep(scaled(10))
            steps.append(f"{ctx.node_id} not cancelled")
            return {}
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(scaled(2))
                steps.append(f"{ctx.node_id} cleanup done")

    @registry.register("Started")
    async def started_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if started is not None:
            started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return registry


# --- cancellation from outside the session ------------------------------------


@pytest.mark.parametrize("where", ["running", "in shielded cleanup"])
async def test_a_native_cancel_of_the_runner_task_waits_for_branch_cleanup(where: str) -> None:
    if not _on_asyncio():
        pytest.skip("asyncio's Task.cancel(); trio's equivalent is the scope tests below")
    steps: list[str] = []
    started = anyio.Event()
    registry = _registry(steps, started)
    pipeline = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Shielded"),
            stage("b", "Started"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    task = asyncio.get_running_loop().create_task(session.run())
    await started.wait()
    if where == "in shielded cleanup":
        task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()  # a second one while the shield holds
    else:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["a cleanup done"]
    assert session.status is CANCELLED
    assert _ended(session.history) == [("branch_cancelled", "fan/a"), ("branch_cancelled", "fan/b")]
    assert _others() == 1


@pytest.mark.parametrize("how", ["move_on_after", "fail_after"])
async def test_the_callers_deadline_mid_fan_out_in_a_nested_fan_out(how: str) -> None:
    steps: list[str] = []
    registry = _registry(steps)
    pipeline = doc(
        [
            parallel("outer", ["x", "inner"], next="end"),
            stage("x", "Shielded"),
            {"id": "inner", "type": "subpipeline", "pipeline": "sub"},
            terminal("end"),
        ],
        subpipelines={
            "sub": {
                "entry": "fan",
                "nodes": [
                    parallel("fan", ["p", "q"], next="done"),
                    stage("p", "Shielded"),
                    stage("q", "Hang"),
                    terminal("done"),
                ],
            }
        },
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    if how == "move_on_after":
        with anyio.move_on_after(scaled(1)) as scope:
            await session.run()
        assert scope.cancelled_caught
    else:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(scaled(1)):
                await session.run()
    assert sorted(steps) == ["p cleanup done", "x cleanup done"]
    assert session.status is CANCELLED
    assert ("branch_cancelled", "outer/x") in _ended(session.history)
    assert ("branch_cancelled", "outer/inner") in _ended(session.history)
    assert _others() == 1


async def test_the_callers_deadline_is_a_branch_stages_deadline_in_a_nested_fan_out() -> None:
    registry = fake_registry()
    seen: list[float] = []

    @registry.register("Deadline")
    async def deadline(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.lowlevel.checkpoint()
        seen.append(anyio.current_effective_deadline())
        return {}

    pipeline = doc(
        [
            parallel("outer", ["x", "inner"], next="end"),
            stage("x", "Deadline"),
            parallel("inner", ["p", "q"]),
            stage("p", "Deadline"),
            stage("q", "Deadline"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with anyio.fail_after(scaled(100)) as scope:
        result = await session.run()
    assert result.status is COMPLETED, result.error
    assert seen == [scope.deadline] * 3


async def test_a_deadline_the_caller_shortens_mid_fan_out_is_a_branch_stages_deadline() -> None:
    # The caller's scope is shortened after the branches started: on trio a
    # branch stage sees the new deadline (its task is in that scope).
    registry = fake_registry()
    seen: list[float] = []
    shortened = anyio.Event()
    outer: list[anyio.CancelScope] = []

    @registry.register("Shorten")
    async def shorten(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        outer[0].deadline = anyio.current_time() + scaled(50)
        shortened.set()
        return {}

    @registry.register("Deadline")
    async def deadline(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await shortened.wait()
        seen.append(anyio.current_effective_deadline())
        return {}

    pipeline = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Shorten"),
            stage("b", "Deadline"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with anyio.CancelScope() as scope:
        outer.append(scope)
        result = await session.run()
    assert result.status is COMPLETED, result.error
    assert seen == [scope.deadline]


@pytest.mark.parametrize("policy", ["all", "any"])
async def test_a_deadline_the_caller_extends_mid_fan_out_does_not_cancel_a_branch(
    policy: str,
) -> None:
    # The caller's scope is given more time after the branches started (a
    # watchdog that extends its deadline): no scope around a branch expires
    # at the old deadline, so no branch may be cancelled there.
    registry = fake_registry()
    outer: list[anyio.CancelScope] = []

    @registry.register("Extend")
    async def extend(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        outer[0].deadline = anyio.current_time() + scaled(1000)
        await anyio.sleep(scaled(20))
        return {"v": "extended"}

    pipeline = doc(
        [
            parallel("fan", ["a", "b"], next="end", policy=policy),
            stage("a", "Extend", outputs={"v": "a"}),
            stage("b", "Set", config={"values": {"v": "slow"}, "delay": 10}, outputs={"v": "b"}),
            terminal("end", "a", "b"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with anyio.CancelScope(deadline=anyio.current_time() + scaled(5)) as scope:
        outer.append(scope)
        result = await session.run()
    assert not scope.cancel_called
    assert result.status is COMPLETED, result.error
    if policy == "all":
        assert result.artifacts == {"a": "extended", "b": "slow"}
        assert _ended(result.history) == [
            ("branch_finished", "fan/a"),
            ("branch_finished", "fan/b"),
        ]
    else:
        assert result.artifacts == {"a": None, "b": "slow"}
        assert _ended(result.history) == [
            ("branch_cancelled", "fan/a"),
            ("branch_finished", "fan/b"),
        ]
    assert _others() == 1


@pytest.mark.parametrize("where", ["from outside", "from a subscriber", "from a branch"])
async def test_session_cancel_while_a_branch_is_in_shielded_cleanup(where: str) -> None:
    steps: list[str] = []
    started = anyio.Event()
    registry = _registry(steps, started)
    session: list[stageflow.Session] = []

    @registry.register("Canceller")
    async def canceller(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await started.wait()
        session[0].cancel("from a branch")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    pipeline = doc(
        [
            parallel("fan", ["a", "c"], next="end"),
            stage("a", "Shielded"),
            stage("c", "Canceller" if where == "from a branch" else "Hang"),
            terminal("end"),
        ]
    )
    session.append(stageflow.Session(load(pipeline, registry), registry=registry))
    results: list[stageflow.SessionResult] = []

    async def runner() -> None:
        results.append(await session[0].run())

    async with anyio.create_task_group() as tg:
        if where == "from a subscriber":
            stream = session[0].events(buffer=1024)

            async def subscriber() -> None:
                async for event in stream:
                    if event.type == "node_started" and event.node_id == "a":
                        session[0].cancel("from a subscriber")
                await stream.aclose()

            tg.start_soon(subscriber)
        tg.start_soon(runner)
        if where == "from outside":
            await started.wait()
            session[0].cancel("from outside")
    (result,) = results
    assert result.status is CANCELLED
    assert steps == ["a cleanup done"]
    assert _ended(result.history) == [("branch_cancelled", "fan/a"), ("branch_cancelled", "fan/c")]
    assert _others() == 1


# --- nesting and races ------------------------------------------------------------


@pytest.mark.parametrize("lost", ["outer", "inner"])
async def test_a_race_lost_in_a_subpipeline_inside_a_branch(lost: str) -> None:
    steps: list[str] = []
    registry = _registry(steps)
    outer_fast = lost == "outer"
    pipeline = doc(
        [
            parallel("outer", ["x", "call"], next="end", policy="any"),
            stage(
                "x",
                "Set",
                config={"values": {"v": "x"}, "delay": 1 if outer_fast else 30},
                outputs={"v": "a"},
            ),
            {"id": "call", "type": "subpipeline", "pipeline": "sub"},
            terminal("end", "a", "b"),
        ],
        subpipelines={
            "sub": {
                "entry": "fan",
                "nodes": [
                    parallel("fan", ["p", "q"], next="done", policy="any"),
                    stage("p", "Shielded"),
                    stage(
                        "q", "Set", config={"values": {"v": "q"}, "delay": 5}, outputs={"v": "b"}
                    ),
                    terminal("done", "b"),
                ],
            }
        },
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is COMPLETED, result.error
    assert steps == ["p cleanup done"]
    ended = _ended(result.history)
    if outer_fast:
        assert result.artifacts["a"] == "x"
        assert ("branch_cancelled", "outer/call") in ended
    else:
        assert result.artifacts["a"] is None
        assert ("branch_cancelled", "outer/x") in ended
        assert ("branch_finished", "outer/call") in ended
    assert _others() == 1


async def test_a_thousand_branches_race_with_one_winner() -> None:
    count = 1000
    children = [f"b{i}" for i in range(count)]
    pipeline = doc(
        [
            parallel("fan", children, next="end", policy="any"),
            *[
                stage(c, "Set", config={"values": {"v": c}}, outputs={"v": "a"})
                if c == "b537"
                else stage(c, "Hang")
                for c in children
            ],
            terminal("end", "a"),
        ]
    )
    registry = fake_registry()
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": "b537"}
    ended = _ended(result.history)
    assert ended.count(("branch_finished", "fan/b537")) == 1
    assert sum(1 for t, _ in ended if t == "branch_cancelled") == count - 1
    assert _others() == 1


async def test_a_terminal_in_one_branch_while_another_is_in_shielded_cleanup() -> None:
    steps: list[str] = []
    registry = _registry(steps)
    pipeline = doc(
        [
            parallel("fan", ["a", "t1"], next="end"),
            stage("a", "Shielded"),
            stage(
                "t1", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "x"}, next="t"
            ),
            terminal("t", "x"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"x": 1}
    assert steps == ["a cleanup done"]
    assert ("branch_cancelled", "fan/a") in _ended(result.history)
    assert _others() == 1


# --- failures and interrupts ---------------------------------------------------


async def test_a_branch_fails_while_a_sibling_is_in_shielded_cleanup() -> None:
    steps: list[str] = []
    registry = _registry(steps)
    pipeline = doc(
        [
            parallel("fan", ["a", "f"], next="end"),
            stage("a", "Shielded"),
            stage("f", "Fail", config={"delay": 1, "message": "first"}),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is FAILED
    assert "first" in str(result.error)
    assert steps == ["a cleanup done"]
    assert _ended(result.history) == [("branch_cancelled", "fan/a"), ("branch_failed", "fan/f")]


async def test_two_branches_failing_at_once_give_the_same_error_on_both_backends() -> None:
    pipeline = doc(
        [
            parallel("fan", ["f1", "f2", "ok"], next="end", cancel_on_error=False),
            stage("f1", "Fail", config={"delay": 1, "message": "one"}),
            stage("f2", "Fail", config={"delay": 1, "message": "two"}),
            stage("ok", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "a"}),
            terminal("end", "a"),
        ]
    )
    registry = fake_registry()
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is FAILED
    error = result.error
    assert str(error) == "parallel node 'fan': 2 branches failed (2 sub-exceptions)"
    assert [str(e) for e in error.exceptions] == [  # children's order
        "stage 'Fail' at node 'f1' failed on attempt 1 of 1: ValueError: one",
        "stage 'Fail' at node 'f2' failed on attempt 1 of 1: ValueError: two",
    ]
    assert _ended(result.history) == [
        ("branch_failed", "fan/f1"),
        ("branch_failed", "fan/f2"),
        ("branch_finished", "fan/ok"),
    ]


class _Own(BaseException):
    pass


@pytest.mark.parametrize("raised", [GeneratorExit, _Own, SystemExit, KeyboardInterrupt])
async def test_a_base_exception_from_a_branch_while_a_sibling_is_shielded(
    raised: type[BaseException],
) -> None:
    steps: list[str] = []
    started = anyio.Event()
    registry = _registry(steps, started)

    @registry.register("Raise")
    async def raise_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await started.wait()
        raise raised("stop here")

    pipeline = doc(
        [
            parallel("fan", ["a", "r"], next="end"),
            stage("a", "Shielded"),
            stage("r", "Raise"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    outcome: list[str] = []
    try:
        await session.run()
    except BaseException as exc:  # what reaches the caller, compared across backends
        outcome.append(f"{type(exc).__name__}: {exc}")
    else:
        outcome.append(f"returned {session.status}")
    assert outcome == [f"{raised.__name__}: stop here"]
    assert steps == ["a cleanup done"]
    # An interrupt cancels the session; another BaseException fails it (trio's result).
    interrupt = raised in (SystemExit, KeyboardInterrupt)
    assert session.status is (CANCELLED if interrupt else FAILED)
    assert _ended(session.history) == [
        ("branch_cancelled", "fan/a"),
        ("branch_cancelled" if interrupt else "branch_failed", "fan/r"),
    ]
    assert _others() == 1


@pytest.mark.parametrize("where", ["branch", "map item"])
async def test_a_native_cancel_of_its_own_task_by_a_stage_fails_its_node(where: str) -> None:
    # A stage cancels the task it runs in natively (asyncio's Task.cancel(),
    # as a library bridging to asyncio might). A branch's or a map item's
    # task is the run's own, which nothing but a cancel scope of the run
    # cancels: the stage's node fails, nothing is merged in silence. It used
    # to end both branches cancelled and the session completed with
    # artifacts {"a": None}.
    if not _on_asyncio():
        pytest.skip("asyncio's Task.cancel() has no trio equivalent")
    registry = fake_registry()

    @registry.register("SelfCancel")
    async def self_cancel(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return {}

    if where == "branch":
        nodes = [
            parallel("fan", ["s", "ok"], next="end"),
            stage("s", "SelfCancel"),
            stage("ok", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "a"}),
            terminal("end", "a"),
        ]
        failed = ("branch_failed", "fan/s")
    else:
        nodes = [
            {"id": "each", "type": "map", "items": "items", "body": "s", "next": "end"},
            stage("s", "SelfCancel"),
            terminal("end"),
        ]
        failed = ("map_item_failed", "each/0")
    session = stageflow.Session(
        load(doc(nodes), registry), registry=registry, payload={"items": [1, 2]}
    )
    result = await session.run()
    assert result.status is FAILED
    stage_error = _stage_error(result)
    assert stage_error.node_id == "s"
    assert isinstance(stage_error.__cause__, asyncio.CancelledError)
    assert "called cancel() on the task it runs in" in str(stage_error)
    assert failed in [(e.type, e.path) for e in result.history]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert _others() == 1


@pytest.mark.parametrize("where", ["branch", "map item"])
@pytest.mark.parametrize("retried", [False, True])
async def test_a_stage_that_cancels_its_own_task_and_returns_at_once_fails_its_own_node(
    where: str, retried: bool
) -> None:
    # As above, but the stage returns without awaiting anything after its
    # Task.cancel(): the request is still pending as it returns. It used to
    # fail whatever the task ran next (the next node of the branch, the next
    # item of the map's worker), blamed for a cancel() it never called.
    if not _on_asyncio():
        pytest.skip("asyncio's Task.cancel() has no trio equivalent")
    registry = fake_registry()
    cancelling: list[int] = []

    @registry.register("SelfCancel")
    async def self_cancel(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        cancelling.append(task.cancelling())
        if ctx.attempt == 1 and ctx.arguments.get("i", 0) == 0:
            task.cancel()
            task.cancel()  # twice: both requests are taken back
        return {}

    @registry.register("Next")
    async def next_one(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await asyncio.sleep(0)
        return {}

    # In the map, only item 0 cancels (each item is at ``item``); the
    # branch has no ``i``, and cancels.
    cancelled = stage(
        "s", "SelfCancel", next="t", arguments={"i": "i" if where == "branch" else "item.i"}
    )
    if retried:
        cancelled["retry"] = {"attempts": 2}
    if where == "branch":
        nodes = [
            parallel("fan", ["s"], next="end"),
            cancelled,
            stage("t", "Next"),
            terminal("end"),
        ]
        failed = ("branch_failed", "fan/s")
    else:
        # One worker: the item after the one that cancelled runs in its task.
        nodes = [
            {"id": "each", "type": "map", "items": "items", "body": "s", "next": "end"},
            cancelled,
            stage("t", "Next"),
            terminal("end"),
        ]
        nodes[0]["concurrency"] = 1
        failed = ("map_item_failed", "each/0")
    session = stageflow.Session(
        load(doc(nodes), registry), registry=registry, payload={"items": [{"i": 0}, {"i": 1}]}
    )
    result = await session.run()
    if retried:
        assert result.status is COMPLETED
        assert cancelling[1] == 0  # the retry runs in a task with no request left
    else:
        assert result.status is FAILED
        assert failed in [(e.type, e.path) for e in result.history]
        assert next(e.node_id for e in result.history if e.type == "node_failed") == "s"
        stage_error = _stage_error(result)
        assert stage_error.node_id == "s"
        assert isinstance(stage_error.__cause__, asyncio.CancelledError)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert _others() == 1


async def test_an_asyncio_timeout_around_run_mid_fan_out() -> None:
    if not _on_asyncio():
        pytest.skip("asyncio.timeout(): a native cancellation of the caller's task")
    steps: list[str] = []
    registry = _registry(steps)
    pipeline = doc(
        [
            parallel("fan", ["a", "h"], next="end"),
            stage("a", "Shielded"),
            stage("h", "Hang"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(scaled(1)):
            await session.run()
    assert steps == ["a cleanup done"]
    assert session.status is CANCELLED
    assert _ended(session.history) == [("branch_cancelled", "fan/a"), ("branch_cancelled", "fan/h")]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert _others() == 1


@pytest.mark.parametrize("kind", ["exception group", "base exception group"])
async def test_a_branch_stage_raising_its_own_group(kind: str) -> None:
    registry = fake_registry()

    @registry.register("Grouped")
    async def grouped(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(scaled(1))
        if kind == "exception group":
            raise ExceptionGroup("own", [ValueError("x"), KeyError("y")])
        raise BaseExceptionGroup("own", [_Own("x")])

    pipeline = doc(
        [
            parallel("fan", ["g", "h"], next="end"),
            stage("g", "Grouped"),
            stage("h", "Hang"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    outcome: list[str] = []
    try:
        result = await session.run()
    except BaseException as exc:
        outcome.append(f"raised {exc!r}")
    else:
        outcome.append(f"{result.status.value}: {result.error}")
    assert (
        outcome
        == {
            "exception group": [
                "failed: stage 'Grouped' at node 'g' failed on attempt 1 of 1: "
                "ExceptionGroup: own (2 sub-exceptions)"
            ],
            # Unwrapped on both backends, on main too.
            "base exception group": ["raised _Own('x')"],
        }[kind]
    )
    assert _others() == 1


@pytest.mark.parametrize("limit", ["steps", "events"])
async def test_a_limit_reached_in_a_one_node_branch(limit: str) -> None:
    # A one-node branch runs in its worker (Run.run_branch) on the branch:
    # the limit must end the session as it does in run_child's path.
    count = 12
    children = [f"b{i}" for i in range(count)]
    pipeline = doc(
        [
            parallel("fan", children, next="end", concurrency=3),
            # No two branches end at the same moment (asyncio's clock is real).
            *[
                stage(c, "Set", config={"values": {"v": 1}, "delay": 1 + i * 0.37})
                for i, c in enumerate(children)
            ],
            terminal("end"),
        ],
        limits={"max_steps": 8} if limit == "steps" else {"max_history": 30},
    )
    registry = fake_registry()
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    at = "b7" if limit == "steps" else "b8"
    assert f"reached at node '{at}'" in str(result.error)
    assert len(result.history) == (42 if limit == "steps" else 44)
    last = 4 if limit == "steps" else 5  # the last branch that finished
    ended = _ended(result.history)
    assert [p for t, p in ended if t == "branch_finished"] == [f"fan/b{i}" for i in range(last + 1)]
    assert [p for t, p in ended if t == "branch_cancelled"] == [
        f"fan/b{last + 1}",
        f"fan/b{last + 2}",
    ]
    assert _others() == 1


@pytest.mark.parametrize("cancel_on_error", [True, False])
async def test_failures_under_a_concurrency_bound_with_a_late_winner(cancel_on_error: bool) -> None:
    count = 20
    children = [f"b{i:02}" for i in range(count)]
    pipeline = doc(
        [
            parallel(
                "fan",
                children,
                next="end",
                concurrency=3,
                policy="any",
                cancel_on_error=cancel_on_error,
            ),
            *[
                stage(c, "Set", config={"values": {"v": c}, "delay": 0.5}, outputs={"v": "a"})
                if c == "b17"
                else stage(c, "Fail", config={"delay": 1, "message": c})
                for c in children
            ],
            terminal("end", "a"),
        ]
    )
    registry = fake_registry()
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    summary = (result.status.value, result.artifacts, str(result.error), _ended(result.history))
    assert summary[0] == "completed", summary
    assert summary[1] == {"a": "b17"}
    ended = summary[3]
    assert ended.count(("branch_finished", "fan/b17")) == 1
    assert [p for t, p in ended if t != "branch_failed"] == [
        "fan/b15",
        "fan/b16",
        "fan/b18",
        "fan/b17",
    ]
    assert _others() == 1


@pytest.mark.parametrize("read", ["deadline", "checkpoint_if_cancelled"])
async def test_a_sibling_reads_the_cancellation_a_branch_stage_made_without_yielding(
    read: str,
) -> None:
    # Branch a sets an event and cancels the session; branch b wakes on it
    # and, before yielding, reads anyio's cancellation state: it must see the
    # cancellation, as in trio (and main: anyio's task group). Held.
    registry = fake_registry()
    session: list[stageflow.Session] = []
    cancelled = anyio.Event()
    seen: list[object] = []

    @registry.register("Cancel")
    async def cancel(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.lowlevel.checkpoint()
        cancelled.set()  # b is rescheduled: the cancel below cannot abort its wait
        session[0].cancel("enough")
        return {}

    @registry.register("Read")
    async def read_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await cancelled.wait()
        if read == "deadline":
            seen.append(anyio.current_effective_deadline())
        else:
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except anyio.get_cancelled_exc_class():
                seen.append("cancelled")
                raise
            seen.append("went on")
        return {}

    pipeline = doc(
        [
            parallel("fan", ["b", "a"], next="end"),
            stage("a", "Cancel"),
            stage("b", "Read"),
            terminal("end"),
        ]
    )
    session.append(stageflow.Session(load(pipeline, registry), registry=registry))
    result = await session[0].run()
    assert result.status is CANCELLED
    assert seen == ([-float("inf")] if read == "deadline" else ["cancelled"])


async def test_the_callers_scope_cancelled_by_a_nested_branch_stage_runs_no_next_node() -> None:
    registry = fake_registry()
    ran: list[str] = []
    outer: list[anyio.CancelScope] = []

    @registry.register("Record")
    async def record(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        ran.append(ctx.node_id)
        return {}

    done = anyio.Event()

    @registry.register("CancelCaller")
    async def cancel_caller(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        ran.append(ctx.node_id)
        outer[0].cancel()
        done.set()
        return {}

    @registry.register("Yield")
    async def yield_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        ran.append(ctx.node_id)
        await done.wait()
        return {}

    pipeline = doc(
        [
            parallel("outer", ["o", "inner"], next="end"),
            stage("o", "Yield", next="o2"),
            stage("o2", "Record"),
            parallel("inner", ["i", "c"], next="after"),
            stage("i", "Yield", next="i2"),
            stage("i2", "Record"),
            stage("c", "CancelCaller", next="c2"),
            stage("c2", "Record"),
            stage("after", "Record"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with anyio.CancelScope() as scope:
        outer.append(scope)
        await session.run()
    assert scope.cancelled_caught
    assert session.status is CANCELLED
    assert sorted(ran) == ["c", "i", "o"]
    assert _others() == 1


@pytest.mark.parametrize("order", ["KI first", "SystemExit first"])
async def test_two_interrupts_from_two_branches_at_once(order: str) -> None:
    registry = fake_registry()
    go = anyio.Event()

    @registry.register("Raise")
    async def raise_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await go.wait()
        raise ctx.config["raised"] and {"ki": KeyboardInterrupt, "se": SystemExit}[
            ctx.config["raised"]
        ]("stop " + ctx.node_id)

    @registry.register("Go")
    async def go_(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(scaled(1))
        go.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    first, second = ("ki", "se") if order == "KI first" else ("se", "ki")
    pipeline = doc(
        [
            parallel("fan", ["x", "y", "g"], next="end"),
            stage("x", "Raise", config={"raised": first}),
            stage("y", "Raise", config={"raised": second}),
            stage("g", "Go"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    # Two at once come out in a group on both backends (on main too): not
    # "alone" as one interrupt does (tests/engine/test_interrupts.py).
    with pytest.raises(BaseExceptionGroup) as caught:
        await session.run()
    leaves = sorted(f"{type(e).__name__}: {e}" for e in caught.value.exceptions)
    names = {"ki": "KeyboardInterrupt", "se": "SystemExit"}
    assert leaves == sorted([f"{names[first]}: stop x", f"{names[second]}: stop y"])
    assert session.status is CANCELLED
    assert _ended(session.history) == [
        ("branch_cancelled", "fan/g"),
        ("branch_cancelled", "fan/x"),
        ("branch_cancelled", "fan/y"),
    ]
    assert _others() == 1


# --- timeouts, inputs, suspension ---------------------------------------------


def _input_registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Ask")
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"v": await ctx.wait_input(ctx.config["input"])}

    return registry


async def test_a_parallel_node_timeout_with_a_branch_waiting_for_input() -> None:
    registry = _input_registry()
    pipeline = doc(
        [
            parallel("fan", ["ask", "work"], next="end", timeout=scaled(3)),
            stage("ask", "Ask", config={"input": "x"}, outputs={"v": "a"}),
            stage("work", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "b"}),
            terminal("end", "a", "b"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.NodeTimeoutError)
    assert _ended(result.history) == [
        ("branch_cancelled", "fan/ask"),
        ("branch_finished", "fan/work"),
    ]
    assert _others() == 1


async def test_suspend_while_branches_wait_on_inputs_and_a_timer_then_resume() -> None:
    registry = _input_registry()

    @registry.register("Timer")
    async def timer(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"v": await ctx.wait_input("t", timeout=scaled(1000))}

    pipeline = doc(
        [
            parallel("fan", ["ask", "inner"], next="end"),
            stage("ask", "Ask", config={"input": "x"}, outputs={"v": "a"}),
            parallel("inner", ["t", "y"]),
            stage("t", "Timer", outputs={"v": "b"}),
            stage("y", "Ask", config={"input": "y"}, outputs={"v": "c"}),
            terminal("end", "a", "b", "c"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING, suspended.error
    assert _others() == 1
    restored = stageflow.Session.from_dict(session.to_dict(), registry=registry)
    restored.send_input("x", "X")
    restored.send_input("y", "Y")
    restored.send_input("t", "T")
    result = await restored.run()
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": "X", "b": "T", "c": "Y"}
    assert _others() == 1


async def test_a_live_session_whose_branches_wait_for_inputs_sent_from_outside() -> None:
    registry = _input_registry()
    pipeline = doc(
        [
            parallel("fan", ["p", "q"], next="end", policy="any"),
            stage("p", "Ask", config={"input": "p"}, outputs={"v": "a"}),
            stage("q", "Ask", config={"input": "q"}, outputs={"v": "b"}),
            terminal("end", "a", "b"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    results: list[stageflow.SessionResult] = []

    async def runner() -> None:
        results.append(await session.run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await wait_until_waiting(session, "q")
        session.send_input("q", "Q")
    (result,) = results
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": None, "b": "Q"}
    assert _others() == 1


# --- a stage's own anyio use in a branch ---------------------------------------


async def test_a_stage_task_group_in_a_losing_branch_is_cancelled_with_its_shields() -> None:
    registry = fake_registry()
    steps: list[str] = []

    @registry.register("Group")
    async def group(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        async def child(name: str) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(scaled(1))
                    steps.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "c1")
            tg.start_soon(child, "c2")
        return {}

    pipeline = doc(
        [
            parallel("fan", ["g", "win"], next="end", policy="any"),
            stage("g", "Group"),
            stage("win", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "a"}),
            terminal("end", "a"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is COMPLETED, result.error
    assert sorted(steps) == ["c1", "c2"]
    assert _others() == 1


async def test_checkpoint_if_cancelled_in_a_loser_once_the_winner_settled() -> None:
    # The winner never awaits; the loser polls checkpoint_if_cancelled()
    # between steps that do not yield to the event loop's cancellation.
    registry = fake_registry()
    polls: list[int] = []

    @registry.register("Poll")
    async def poll(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        for i in range(50):
            polls.append(i)
            await anyio.lowlevel.checkpoint_if_cancelled()
            await anyio.lowlevel.cancel_shielded_checkpoint()
        return {"v": "loser"}

    pipeline = doc(
        [
            parallel("fan", ["win", "poll"], next="end", policy="any"),
            stage("win", "Echo"),
            stage("poll", "Poll", outputs={"v": "a"}),
            terminal("end", "a"),
        ]
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": None}
    assert ("branch_cancelled", "fan/poll") in _ended(result.history)
    assert len(polls) < 50


async def test_map_nodes_inside_branches_when_the_session_is_cancelled() -> None:
    steps: list[str] = []
    started = anyio.Event()
    registry = _registry(steps, started)
    pipeline = doc(
        [
            parallel("fan", ["each", "other"], next="end"),
            {"id": "each", "type": "map", "items": "items", "body": "item", "concurrency": 2},
            stage("item", "Shielded"),
            stage("other", "Hang"),
            terminal("end"),
        ]
    )
    session = stageflow.Session(
        load(pipeline, registry), registry=registry, payload={"items": [1, 2, 3]}
    )
    results: list[stageflow.SessionResult] = []

    async def runner() -> None:
        results.append(await session.run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await started.wait()
        session.cancel("stop")
    (result,) = results
    assert result.status is CANCELLED
    assert steps == ["item cleanup done", "item cleanup done"]
    assert _others() == 1


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
@pytest.mark.parametrize("policy", ["all", "any"])
async def test_branches_under_an_eager_task_factory(policy: str) -> None:
    if not _on_asyncio():
        pytest.skip("an asyncio task factory")
    loop = asyncio.get_running_loop()
    old = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        pipeline = doc(
            [
                parallel("fan", ["a", "b", "c"], next="end", policy=policy),
                stage("a", "Set", config={"values": {"v": 1}}, outputs={"v": "a"}),
                stage("b", "Set", config={"values": {"v": 2}, "delay": 1}, outputs={"v": "b"}),
                stage("c", "Hang" if policy == "any" else "Echo"),
                terminal("end", "a", "b"),
            ]
        )
        registry = fake_registry()
        session = stageflow.Session(load(pipeline, registry), registry=registry)
        result = await session.run()
    finally:
        loop.set_task_factory(old)
    assert result.status is COMPLETED, result.error
    assert result.artifacts == ({"a": 1, "b": None} if policy == "any" else {"a": 1, "b": 2})
    assert _others() == 1


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
@pytest.mark.parametrize("scenario", ["nested race", "cancel from a branch", "fail fast", "race"])
async def test_harder_cases_under_an_eager_task_factory(scenario: str) -> None:
    # Under an eager factory a branch's task runs inside create_task, until
    # it first yields: a branch that never yields ends there, with the rest
    # of the group not started yet.
    if not _on_asyncio():
        pytest.skip("an asyncio task factory")
    steps: list[str] = []
    registry = _registry(steps)
    session: list[stageflow.Session] = []

    @registry.register("CancelNow")
    async def cancel_now(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        session[0].cancel("now")
        return {}

    @registry.register("FailNow")
    async def fail_now(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        raise ValueError("now")

    if scenario == "nested race":
        nodes = [
            parallel("fan", ["w", "inner"], next="end", policy="any"),
            stage("w", "Echo"),
            parallel("inner", ["s", "h"]),
            stage("s", "Shielded"),
            stage("h", "Hang"),
        ]
    elif scenario == "cancel from a branch":
        nodes = [
            parallel("fan", ["c", "s", "h"], next="end"),
            stage("c", "CancelNow", next="c2"),
            stage("c2", "Hang"),
            stage("s", "Shielded"),
            stage("h", "Hang"),
        ]
    elif scenario == "fail fast":
        nodes = [
            parallel("fan", ["f", "s", "h"], next="end"),
            stage("f", "FailNow"),
            stage("s", "Shielded"),
            stage("h", "Hang"),
        ]
    else:
        nodes = [
            parallel("fan", ["w", "s", *[f"h{i}" for i in range(50)]], next="end", policy="any"),
            stage("w", "Echo"),
            stage("s", "Shielded"),
            *[stage(f"h{i}", "Hang") for i in range(50)],
        ]
    pipeline = doc([*nodes, terminal("end")])
    loop = asyncio.get_running_loop()
    old = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        session.append(stageflow.Session(load(pipeline, registry), registry=registry))
        result = await session[0].run()
    finally:
        loop.set_task_factory(old)
    expected = {
        "nested race": COMPLETED,
        "cancel from a branch": CANCELLED,
        "fail fast": FAILED,
        "race": COMPLETED,
    }[scenario]
    assert result.status is expected, result.error
    # The first branch may end the fan-out inside create_task: the shielded
    # branch then never starts (its stage is not entered).
    assert steps in ([], ["s cleanup done"])
    if scenario != "nested race":
        assert ("branch_cancelled", "fan/s") in _ended(result.history)
    assert _others() == 1
