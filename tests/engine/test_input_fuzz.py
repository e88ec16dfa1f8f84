"""A fuzzer for concurrent inputs (issue 19): from tasks, threads and subscriber
callbacks, under cancellation and suspend/restore.

Each plan sends numbered inputs while a session collects them in a loop.
Whatever the interleaving, a sender gets a receipt or a typed error, the run
ends in bounded (virtual) time with a result, and nothing accepted is lost:
each accepted input reached the collecting stage exactly once, or is still
in the backlog of the final snapshot (a cancelled or timed-out session drops at
most the one input its collecting stage had in hand).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import pytest
from fakes import doc, stage, terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow

pytestmark = [pytest.mark.anyio, pytest.mark.trio_only]

TYPED = (stageflow.InputRejectedError, stageflow.SessionStateError)


def _registry() -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    @registry.register("Collect")
    async def collect(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        got = list(ctx.arguments.get("got", []))
        payload = await ctx.wait_input("msg")
        got.append(payload["id"])
        return {"got": got}

    return registry


def _pipeline(need: int) -> stageflow.Pipeline:
    document = doc(
        [
            stage("collect", "Collect", next="more", arguments={"got": "got"}),
            {
                "id": "more",
                "type": "condition",
                "conditions": [{"if": {"<": [{"var": "count"}, need]}, "then": "count_it"}],
                "else": "end",
            },
            stage("count_it", "Count", next="collect", arguments={"got": "got"}),
            terminal("end", "got"),
        ]
    )
    document["nodes"][0]["outputs"] = {"got": "got"}
    document["nodes"][2]["outputs"] = {"count": "count"}
    registry = _registry()

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"count": len(ctx.arguments.get("got", []))}

    return stageflow.Pipeline.from_dict(document, registry=registry)


# One send: how it is sent, what, and when (virtual seconds, or the event count).
SEND = st.tuples(
    st.sampled_from(["task", "callback", "thread"]),
    st.sampled_from(["msg", "msg", "msg", "other", "bad"]),
    st.integers(min_value=0, max_value=5),
)
PLAN = st.fixed_dictionaries(
    {
        "sends": st.lists(SEND, min_size=1, max_size=8),
        "mode": st.sampled_from(["plain", "suspend", "cancel"]),
        "cancel_at": st.integers(min_value=0, max_value=6),
    }
)


class _Run:
    """Drives one plan: the session (replaced on each restore) and what happened."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.need = sum(1 for _, kind, _ in plan["sends"] if kind == "msg")
        self.pipeline = _pipeline(max(self.need, 1))
        self.session = stageflow.Session(self.pipeline, limits=stageflow.Limits(timeout=100))
        self.accepted: list[int] = []
        # Sends still to come from tasks and threads (a callback's may never come).
        self.pending = sum(1 for how, _, _ in plan["sends"] if how != "callback")
        self.sent = anyio.Event()
        self.callbacks: list[tuple[int, int, str]] = []  # (after n events, id, type)

    def payload(self, number: int, kind: str) -> Any:
        return {"id": number, "bad": float("nan")} if kind == "bad" else {"id": number}

    def send(self, number: int, kind: str, *, counted: bool = True) -> None:
        input_type = "msg" if kind == "bad" else kind
        try:
            receipt = self.session.send_input(input_type, self.payload(number, kind))
        except TYPED:
            pass
        else:
            if input_type == "msg":
                self.accepted.append(number)
            assert receipt.delivered or receipt.queued
        finally:
            if counted:
                self.pending -= 1
            self.sent.set()

    async def by_task(self, number: int, kind: str, delay: int) -> None:
        await anyio.sleep(delay)
        self.send(number, kind)

    async def by_thread(self, number: int, kind: str, delay: int) -> None:
        await anyio.sleep(delay)
        input_type = "msg" if kind == "bad" else kind
        try:
            receipt = await anyio.to_thread.run_sync(
                self.session.send_input_from_thread, input_type, self.payload(number, kind)
            )
        except TYPED:
            pass
        else:
            if input_type == "msg":
                self.accepted.append(number)
            assert receipt.delivered or receipt.queued
        finally:
            self.pending -= 1
            self.sent.set()

    def subscribe(self) -> None:
        seen = 0

        def on_event(event: stageflow.Event) -> None:
            nonlocal seen
            seen += 1
            for entry in [c for c in self.callbacks if c[0] == seen]:
                self.callbacks.remove(entry)
                self.send(entry[1], entry[2], counted=False)

        self.session.subscribe(on_event)

    async def drive(self) -> stageflow.SessionResult:
        self.subscribe()
        while True:
            result = await self.session.run(suspend=self.plan["mode"] == "suspend")
            if result.status is not stageflow.SessionStatus.WAITING:
                return result
            if self.pending == 0:
                return result  # nothing more will come: it stays waiting
            self.sent = anyio.Event()
            await self.sent.wait()
            # Stored and restored, as a service would between two requests.
            self.session = stageflow.Session.from_dict(
                self.session.to_dict(), pipeline=self.pipeline
            )
            self.subscribe()

    async def cancel_later(self) -> None:
        await anyio.sleep(self.plan["cancel_at"])
        self.session.cancel("the plan says so")


async def _check(plan: dict[str, Any]) -> None:
    run = _Run(plan)
    async with anyio.create_task_group() as tg:
        for number, (how, kind, when) in enumerate(plan["sends"]):
            if how == "task":
                tg.start_soon(run.by_task, number, kind, when)
            elif how == "thread":
                tg.start_soon(run.by_thread, number, kind, when)
            else:
                run.callbacks.append((when + 1, number, kind))
        if plan["mode"] == "cancel":
            tg.start_soon(run.cancel_later)
        result = await run.drive()
        tg.cancel_scope.cancel()  # senders still waiting for a moment that will not come
    snapshot = run.session.to_dict()
    got = snapshot["position"]["context"].get("got", []) if snapshot["position"] else []
    if result.status is stageflow.SessionStatus.COMPLETED:
        got = result.artifacts["got"]
    queued = [p["id"] for p in snapshot["backlog"].get("msg", [])]
    assert len(got) == len(set(got)), "an input reached the stage twice"
    assert set(got) <= set(run.accepted)
    missing = set(run.accepted) - set(got) - set(queued)
    if result.status in (stageflow.SessionStatus.CANCELLED, stageflow.SessionStatus.TIMED_OUT):
        # Cancelled work is dropped: at most the one input the collecting
        # stage had taken when the session was cancelled or timed out.
        assert len(missing) <= 1, "an accepted input was lost"
    else:
        assert missing == set(), "an accepted input was lost"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=PLAN)
def test_concurrent_inputs_are_delivered_once_or_kept_or_refused(plan: dict[str, Any]) -> None:
    import trio
    import trio.testing

    trio.run(_check, plan, clock=trio.testing.MockClock(autojump_threshold=0))
