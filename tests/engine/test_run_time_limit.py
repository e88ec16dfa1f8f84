"""``limits.max_run_seconds``: the wall time of one ``run()`` (issue 16).

Past it the run stops like a step limit does: the session fails with
``LimitExceededError`` and keeps every position it had (branches included,
saved before anything is torn down), so a restore with the limit raised goes
on from there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fakes import doc, parallel, stage, terminal, wait_again_after_cancellation

import stageflow

pytestmark = pytest.mark.anyio

FAILED = stageflow.SessionStatus.FAILED
WAITING = stageflow.SessionStatus.WAITING
COMPLETED = stageflow.SessionStatus.COMPLETED


def registry_with(calls: list[str], hang_first: int) -> stageflow.StageRegistry:
    """``Slow`` hangs on its first ``hang_first`` calls, then returns; ``Quick`` returns."""
    registry = stageflow.StageRegistry()

    @registry.register("Slow")
    async def slow(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        calls.append("slow")
        if calls.count("slow") <= hang_first:
            await anyio.Event().wait()  # a stage that never returns
        return {"value": "S"}

    @registry.register("Quick")
    async def quick(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        calls.append("quick")
        return {"value": "Q"}

    return registry


CHAIN = doc(
    [
        stage("first", "Quick", next="slow", outputs={"value": "first"}),
        stage("slow", "Slow", next="end", outputs={"value": "slow"}),
        terminal("end", "first", "slow"),
    ]
)

FORK = doc(
    [
        parallel("both", ["quick", "slow"], next="end"),
        stage("quick", "Quick", outputs={"value": "quick"}),
        stage("slow", "Slow", outputs={"value": "slow"}),
        terminal("end", "quick", "slow"),
    ]
)


def limited(seconds: float | None) -> stageflow.Limits:
    return stageflow.Limits(max_run_seconds=seconds)


async def stopped(
    document: Mapping[str, Any], calls: list[str]
) -> tuple[stageflow.Session, stageflow.LimitExceededError]:
    registry = registry_with(calls, hang_first=1)
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, limits=limited(0.2))
    result = await session.run()
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_run_seconds"
    return session, result.error


async def test_a_run_past_its_wall_time_fails_with_advice_it_can_follow() -> None:
    session, error = await stopped(CHAIN, [])
    assert error.node_id == "slow"
    assert "max_run_seconds=0.2" in str(error)
    assert "Session.from_dict(session.to_dict(), limits=...)" in str(error)
    data = session.to_dict()
    assert data["stopped_by_limit"] == "max_run_seconds"
    # The stage in flight is kept, to run again; the teardown is not in the history.
    assert data["position"]["node"] == "slow"
    types = [e.type for e in session.history]
    assert "node_cancelled" not in types
    assert types[-1] == "session_failed"


async def test_restored_with_the_limit_raised_it_goes_on_where_it_stopped() -> None:
    calls: list[str] = []
    session, _ = await stopped(CHAIN, calls)
    data = json.loads(json.dumps(session.to_dict()))
    registry = registry_with(calls, hang_first=1)
    same = stageflow.Session.from_dict(data, registry=registry)
    assert same.status is FAILED  # the same limit: still failed
    resumed = stageflow.Session.from_dict(data, registry=registry, limits=limited(10))
    assert resumed.status is WAITING
    result = await resumed.run()
    assert result.status is COMPLETED
    assert result.artifacts == {"first": "Q", "slow": "S"}
    # "first" ran once; the stage in flight ran again.
    assert calls == ["quick", "slow", "slow"]


async def test_finished_branches_are_kept_when_the_limit_stops_a_parallel_node() -> None:
    calls: list[str] = []
    session, _ = await stopped(FORK, calls)
    branches = session.to_dict()["position"]["parallel"]["branches"]
    assert [b["state"] for b in branches] == ["finished", "running"]
    registry = registry_with(calls, hang_first=1)
    data = json.loads(json.dumps(session.to_dict()))
    resumed = stageflow.Session.from_dict(data, registry=registry, limits=limited(None))
    result = await resumed.run()
    assert result.artifacts == {"quick": "Q", "slow": "S"}
    assert calls == ["quick", "slow", "slow"]


@pytest.mark.parametrize("interruption", ["cancelled", "KeyboardInterrupt"])
async def test_an_interruption_that_comes_while_the_limit_stops_the_run_keeps_the_stop(
    interruption: str,
) -> None:
    # The task running the session was cancelled (or interrupted) while the
    # stop tore the run down: the session ended "cancelled" with its history
    # still muted (no final event, no inputs_discarded for the queued input).
    outer = anyio.CancelScope()

    class Stuck(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            await anyio.Event().wait()
            return {}

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            # As the stop tears the run down.
            if interruption == "KeyboardInterrupt":
                raise KeyboardInterrupt
            outer.cancel()
            await anyio.lowlevel.checkpoint()

    registry = stageflow.StageRegistry()
    registry.add(Stuck)
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("stuck", "Stuck", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry, limits=limited(0.01))
    session.send_input("later", 1)
    with outer:
        if interruption == "KeyboardInterrupt":
            # It crosses the limit's task group: on trio it went up in its
            # exception group, where it goes up alone as anywhere else.
            with pytest.raises(KeyboardInterrupt):
                await session.run()
        else:
            await session.run()
    assert outer.cancelled_caught is (interruption == "cancelled")  # it went on up
    assert session.status is FAILED
    assert session.history[-1].type == "session_failed"
    assert session.history[-1].payload["error"]["limit"] == "max_run_seconds"
    data = session.to_dict()
    assert data["stopped_by_limit"] == "max_run_seconds"
    assert data["backlog"] == {"later": [1]}  # kept for the restore
    resumed = stageflow.Session.from_dict(data, registry=registry, limits=limited(None))
    assert resumed.status is WAITING


@pytest.mark.parametrize("wait", ["wait_input", "sleep"])
async def test_a_stage_that_blocks_again_after_the_stop_in_suspend_mode_does_not_suspend(
    wait: str,
) -> None:
    # The stage caught the stop's cancellation and blocked again: every
    # position blocked, as at a suspension. On trio that wait raised
    # RunSuspended, which the run took for the end of its teardown and let
    # go up from run(); the session fails by the limit all the same.
    registry = stageflow.StageRegistry()
    seen: list[str] = []

    @registry.register("Stubborn")
    async def stubborn(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return await wait_again_after_cancellation(ctx, wait, seen)

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("s", "Stubborn", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry, limits=limited(0.01))
    result = await session.run(suspend=True)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert seen == ["cancelled", anyio.get_cancelled_exc_class().__name__]
    assert session.to_dict()["stopped_by_limit"] == "max_run_seconds"


async def test_a_run_within_its_wall_time_is_not_touched() -> None:
    calls: list[str] = []
    registry = registry_with(calls, hang_first=0)
    pipeline = stageflow.Pipeline.from_dict(FORK, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, limits=limited(5))
    result = await session.run()
    assert result.status is COMPLETED
    assert session.to_dict()["stopped_by_limit"] is None


async def test_the_limit_counts_per_run_not_over_the_sessions_life() -> None:
    # Two suspended turns of 0.15 s each under a 0.2 s limit: neither passes it.
    registry = stageflow.StageRegistry()

    @registry.register("Turn")
    async def turn(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        said = await ctx.wait_input("message")
        await anyio.sleep(0.15)  # work that takes time, not a wait for something
        return {"said": said}

    document = doc(
        [
            stage("one", "Turn", next="two", outputs={"said": "one"}),
            stage("two", "Turn", next="end", outputs={"said": "two"}),
            terminal("end", "one", "two"),
        ]
    )
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, limits=limited(0.2))
    assert (await session.run(suspend=True)).status is WAITING
    session.send_input("message", "hi")
    assert (await session.run(suspend=True)).status is WAITING
    session.send_input("message", "bye")
    result = await session.run()
    assert result.status is COMPLETED, result.error


def test_the_limit_is_checked_when_limits_are_made() -> None:
    with pytest.raises(ValueError, match="max_run_seconds"):
        stageflow.Limits(max_run_seconds=0)


async def test_a_pipeline_document_may_set_it() -> None:
    document = {**CHAIN, "limits": {"max_run_seconds": 0.2}}
    registry = registry_with([], hang_first=1)
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    assert pipeline.limits.max_run_seconds == 0.2
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_run_seconds"
