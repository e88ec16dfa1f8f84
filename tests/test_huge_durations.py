"""Durations of any size become deadlines without overflowing (issue 19, class 3).

``backoff ** (n - 1)`` raised ``OverflowError`` before ``max_delay`` capped it,
and ``limits.timeout`` of 1e12 s overflowed the deadline's ``datetime`` and
left the session ``running``. One function adds seconds to a time
(``stageflow._deadlines``); a duration past year 9999 means "never".
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest
from fakes import doc, fake_registry, load, stage, terminal
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._deadlines import LATEST, after, retry_delay
from stageflow._model import RetryPolicy

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_a_retry_delay_that_overflows_a_float_is_max_delay() -> None:
    policy = RetryPolicy(attempts=2000, delay=1, backoff=2.5, max_delay=10)
    assert policy.delay_before(1500) == 10.0


def test_an_integer_backoff_to_a_huge_power_is_not_computed_exactly() -> None:
    assert retry_delay(1, 10, 60, 10**9) == 60.0


@pytest.mark.parametrize("seconds", [1e12, 1e20, 1e300, math.inf])
def test_a_deadline_past_year_9999_is_the_latest_time(seconds: float) -> None:
    assert after(NOW, seconds) == LATEST


@pytest.mark.parametrize("seconds", [0, -5, math.nan])
def test_no_duration_is_no_time_at_all(seconds: float) -> None:
    assert after(NOW, seconds) == NOW


@settings(max_examples=300, deadline=None)
@given(
    delay=st.floats(0, 1e308),
    backoff=st.floats(1, 1e308),
    max_delay=st.floats(0, 1e308),
    retry=st.integers(1, 10**12),
)
def test_fuzz_retry_delays_stay_between_zero_and_max_delay(
    delay: float, backoff: float, max_delay: float, retry: int
) -> None:
    got = retry_delay(delay, backoff, max_delay, retry)
    assert 0 <= got <= max_delay
    try:
        naive = min(max_delay, delay * backoff ** (retry - 1))
    except OverflowError:  # no delay stays none; any other is capped
        assert got == (0 if delay == 0 else max_delay)
    else:
        assert got == pytest.approx(naive)


@settings(max_examples=200, deadline=None)
@given(seconds=st.floats(allow_nan=True, allow_infinity=True))
def test_fuzz_any_duration_gives_a_deadline(seconds: float) -> None:
    deadline = after(NOW, seconds)
    assert NOW <= deadline <= LATEST
    datetime.datetime.fromisoformat(deadline.isoformat())


def flaky_registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("FailThrice")
    async def fail_thrice(ctx: stageflow.StageContext) -> dict[str, Any]:
        if ctx.attempt < 4:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}

    return registry


@pytest.mark.anyio
async def test_a_retry_whose_backoff_overflows_waits_max_delay() -> None:
    registry = flaky_registry()
    node = stage("flaky", "FailThrice", outputs={"attempt": "attempt"}, next="end")
    # Retry 2 waits 1e-200 * 1e200 = 1 s, capped; retry 3's power (1e400) overflows.
    node["retry"] = {"attempts": 4, "delay": 1e-200, "backoff": 1e200, "max_delay": 0.001}
    pipeline = load(doc([node, terminal("end", "attempt")]), registry)
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"attempt": 4}
    delays = [e.payload["delay"] for e in result.history if e.type == "node_retrying"]
    assert delays == [1e-200, 0.001, 0.001]


@pytest.mark.anyio
async def test_a_session_timeout_of_1e12_seconds_runs_and_snapshots() -> None:
    nodes = [stage("a", "Echo", next="end"), terminal("end")]
    pipeline = load(doc(nodes, limits={"timeout": 1e12}))
    session = stageflow.Session(pipeline, registry=fake_registry())
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    json.dumps(session.to_dict())


@pytest.mark.anyio
async def test_a_waiting_session_with_huge_timeouts_suspends_and_restores() -> None:
    pipeline = load(
        doc(
            [
                stage("w", "WaitStage", config={"input": "go", "timeout": 1e12}, next="end"),
                terminal("end"),
            ],
            limits={"timeout": 1e15},
        )
    )
    session = stageflow.Session(pipeline, registry=fake_registry())
    waiting = await session.run(suspend=True)
    assert waiting.status is stageflow.SessionStatus.WAITING
    assert waiting.wake_at == LATEST
    snapshot = json.loads(json.dumps(session.to_dict()))
    assert snapshot["deadline"] == LATEST.isoformat()
    restored = stageflow.Session.from_dict(snapshot, registry=fake_registry())
    restored.send_input("go", {})
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "seconds"), [("sleep", math.inf), ("sleep", 10**400), ("wait_input", math.inf)]
)
async def test_an_endless_stage_sleep_or_wait_snapshots_as_json(call: str, seconds: float) -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Block")
    async def block(ctx: stageflow.StageContext) -> None:
        if call == "sleep":
            await ctx.sleep(seconds)
        else:
            await ctx.wait_input("go", timeout=seconds)

    session = stageflow.Session(
        load(doc([stage("b", "Block", next="end"), terminal("end")]), registry), registry=registry
    )
    waiting = await session.run(suspend=True)
    assert waiting.status is stageflow.SessionStatus.WAITING
    text = json.dumps(session.to_dict(), allow_nan=False)  # no Infinity: plain JSON
    restored = stageflow.Session.from_dict(json.loads(text), registry=registry)
    assert restored.status is stageflow.SessionStatus.WAITING


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", [-math.inf, -(10**400)])
async def test_a_wait_past_its_deadline_already_is_a_poll(seconds: float) -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Poll")
    async def poll(ctx: stageflow.StageContext) -> None:
        await ctx.wait_input("go", timeout=seconds)

    pipeline = load(doc([stage("p", "Poll", next="end"), terminal("end")]), registry)
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert isinstance(result.error, stageflow.InputTimeoutError)
    assert result.error.timeout == 0
    json.dumps(result.to_dict(), allow_nan=False)  # no -Infinity in the history


@pytest.mark.anyio
@pytest.mark.trio_only
async def test_a_sleep_of_1e12_seconds_in_virtual_time_ends() -> None:
    pipeline = load(
        doc(
            [
                stage("s", "SleepStage", config={"seconds": 1e12}, next="end"),
                terminal("end"),
            ]
        )
    )
    session = stageflow.Session(pipeline, registry=fake_registry())
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    json.dumps(session.to_dict())


def test_a_policy_of_more_attempts_than_can_be_written_is_refused_when_made() -> None:
    # It was taken; the first failure's message ("attempt 1 of ...") then
    # raised a raw ValueError out of run().
    with pytest.raises(stageflow.DefinitionError, match="RetryPolicy\\(attempts="):
        RetryPolicy(attempts=10**4300)
    with pytest.raises(stageflow.DefinitionError, match="RetryPolicy\\(attempts=0\\)"):
        RetryPolicy(attempts=0)


@pytest.mark.anyio
async def test_a_policy_with_the_most_attempts_that_can_be_written_fails_normally() -> None:
    registry = fake_registry()
    spec = stageflow.StageSpec(retry=RetryPolicy(attempts=10**4300 - 1, retry_on=("KeyError",)))
    registry.register("Fails", spec=spec)(registry.get("Fail").target)
    pipeline = load(doc([stage("a", "Fails", next="end"), terminal()]), registry)
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageError)
    json.dumps(result.to_dict())
