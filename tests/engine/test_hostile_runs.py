"""Races in inputs and limits that must hold (issue 19, classes 6 and 7).

Each test failed before its fix: an input delivered at a wait's timeout
instant was lost, a subscriber sending an input broke the outer send, a
cancel() during suspension was lost, limits hit inside map items were
tolerated as item failures, retries and rejected inputs grew the history
without bound, and nodes that never await kept every other task out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting

import stageflow

pytestmark = pytest.mark.anyio

S = stageflow.SessionStatus


def _wait_registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")

    @registry.register(
        "Ask",
        spec=stageflow.StageSpec(
            allowed_inputs=(
                stageflow.InputSpec("answer", schema={"type": "object", "required": ["text"]}),
            )
        ),
    )
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"got": await ctx.wait_input("answer")}

    @registry.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        raise ValueError(f"attempt {ctx.attempt} failed")

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"n": ctx.arguments.get("n", 0) + 1}  # never awaits

    return registry


# ------------------------------------------------------------------ inputs


async def _race_an_input_with_its_timeout() -> None:
    registry = _wait_registry()
    node = stage("w", "Wait", next="end", outputs={"payload": "got"})
    node["config"] = {"input": "go", "timeout": 10}
    node["on_error"] = [{"errors": ["InputTimeoutError"], "next": "late"}]
    document = doc([node, terminal("end", "got"), terminal("late")])
    session = stageflow.Session(load(document, registry), registry=registry)
    outcomes: list[stageflow.InputReceipt | stageflow.SessionStateError] = []

    async def send_at_the_deadline() -> None:
        await wait_until_waiting(session, "go")
        await anyio.sleep(10)  # virtual: wakes in the same instant as the wait's deadline
        try:
            outcomes.append(session.send_input("go", {"v": 1}))
        except stageflow.SessionStateError as exc:
            outcomes.append(exc)  # the timeout won and the session ended: the sender is told

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_at_the_deadline)
        result = await session.run()
    # What the sender is told must match what the stage got.
    [outcome] = outcomes
    if isinstance(outcome, stageflow.InputReceipt) and outcome.delivered:
        assert result.artifacts == {"got": {"v": 1}}
    elif isinstance(outcome, stageflow.InputReceipt):
        assert outcome.queued
    else:
        assert result.history[-2].node_id == "late"


@pytest.mark.trio_only
async def test_an_input_sent_at_the_timeout_instant_is_either_delivered_or_kept() -> None:
    # trio runs the tasks woken in one instant in random order: enough rounds
    # to see both orders (before the fix, "delivered" then lost failed).
    for _ in range(30):
        await _race_an_input_with_its_timeout()


async def test_a_subscriber_that_sends_an_input_does_not_break_the_outer_send() -> None:
    registry = _wait_registry()
    document = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Ask", outputs={"got": "a"}),
            stage("b", "Ask", outputs={"got": "b"}),
            terminal("end", "a", "b"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry, validate_events="warn")

    def resend_a_valid_one(event: stageflow.Event) -> None:
        if event.type == "event_validation_failed":
            session.send_input("answer", {"text": "fixed"})

    session.subscribe(resend_a_valid_one)
    receipts: list[stageflow.InputReceipt] = []

    async def send() -> None:
        await wait_until_waiting(session, "answer", 2)
        receipts.append(session.send_input("answer", {"wrong": 1}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        result = await session.run()
    assert result.status is S.COMPLETED
    # The nested send reached both waiters first; the outer one found none left.
    assert result.artifacts == {"a": {"text": "fixed"}, "b": {"text": "fixed"}}
    assert receipts[0].delivered == 0


async def test_cancel_from_a_callback_while_suspending_ends_the_session_cancelled() -> None:
    registry = _wait_registry()
    node = stage("w", "Wait", next="end")
    node["config"] = {"input": "go"}
    session = stageflow.Session(load(doc([node, terminal()]), registry), registry=registry)

    def cancel_on_suspend(event: stageflow.Event) -> None:
        if event.type == "session_suspended":
            session.cancel("the user left")

    session.subscribe(cancel_on_suspend)
    result = await session.run(suspend=True)
    assert result.status is S.CANCELLED
    assert session.to_dict()["status"] == "cancelled"
    assert session.history[-1].type == "session_cancelled"
    assert session.history[-1].payload["reason"] == "the user left"


# ------------------------------------------------------------------ limits


async def test_a_limit_hit_inside_a_map_item_fails_the_session_not_the_item() -> None:
    registry = _wait_registry()
    document = doc(
        [
            stage("seed", "Set", next="each", config={"values": {"items": list(range(20))}}),
            {
                "id": "each",
                "type": "map",
                "items": "items",
                "body": "item",
                "max_failures": 100,
                "next": "end",
            },
            stage("item", "Count"),
            terminal(),
        ],
        limits={"max_steps": 10},
    )
    document["nodes"][0]["outputs"] = {"items": "items"}
    session = stageflow.Session(load(document, registry), registry=registry)
    result = await session.run()
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_steps"


async def test_a_limit_hit_inside_a_branch_fails_the_session() -> None:
    registry = _wait_registry()
    chain = [stage(f"n{i}", "Count", next=f"n{i + 1}") for i in range(20)]
    chain[-1].pop("next")
    document = doc(
        [
            parallel("race", ["n0", "quick"], next="end", policy="any"),
            stage("quick", "Wait", config={"input": "never"}),
            *chain,
            terminal(),
        ],
        limits={"max_steps": 10},
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    result = await session.run()
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)


@pytest.mark.parametrize("shape", ["parallel", "map"])
async def test_a_limit_two_positions_reach_at_once_resumes_when_raised(shape: str) -> None:
    # Both branches (or both items in flight) refuse a step before the first
    # refusal's stop cancels the other. The session must stay resumable from
    # the first stop: a second stop used to overwrite it, the run then ended
    # with the first error, and the snapshot (steps past max_steps + 1) was
    # refused by Session.from_dict.
    registry = _wait_registry()
    if shape == "parallel":
        nodes = [
            parallel("fan", ["left", "right"], next="end"),
            stage("left", "Count", outputs={"n": "left"}),
            stage("right", "Count", outputs={"n": "right"}),
            terminal("end", "left", "right"),
        ]
        done = {"left": 1, "right": 1}
    else:
        each = {"id": "fan", "type": "map", "items": "items", "body": "item", "next": "end"}
        nodes = [
            {**each, "concurrency": 2, "collect": {"n": "ns"}},
            stage("item", "Count", outputs={"n": "n"}),
            terminal("end", "ns"),
        ]
        done = {"ns": [1, 1]}
    document = doc(nodes, limits={"max_steps": 1})
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"items": [0, 0]}
    )
    result = await session.run()
    assert isinstance(result.error, stageflow.LimitExceededError)
    snapshot = json.loads(json.dumps(session.to_dict()))
    assert snapshot["steps"] == 2  # the first refused step, not one per position
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, limits=stageflow.Limits(max_steps=100)
    )
    resumed = await restored.run()
    assert resumed.status is S.COMPLETED
    assert resumed.artifacts == done


async def test_retries_do_not_grow_the_history_past_its_limit() -> None:
    registry = _wait_registry()
    node = stage("flaky", "Flaky", next="end")
    node["retry"] = {"attempts": 1000, "backoff": 1, "delay": 0}
    document = doc([node, terminal()], limits={"max_history": 50})
    session = stageflow.Session(load(document, registry), registry=registry)
    result = await session.run()
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_history"
    assert len(result.history) <= 50 + 2  # the failure and the final event


async def test_rejected_inputs_neither_grow_the_history_nor_kill_the_session() -> None:
    registry = _wait_registry()
    node = stage("w", "Wait", next="end", outputs={"payload": "got"})
    node["config"] = {"input": "go"}
    document = doc([node, terminal("end", "got")], limits={"max_history": 100})
    session = stageflow.Session(load(document, registry), registry=registry)
    rejected = 0

    async def spam_then_send() -> None:
        nonlocal rejected
        await wait_until_waiting(session, "go")
        for _ in range(1000):
            with pytest.raises(stageflow.InputRejectedError):
                session.send_input("go", {"bad": float("nan")})
            rejected += 1
        session.send_input("go", {"ok": True})

    async with anyio.create_task_group() as tg:
        tg.start_soon(spam_then_send)
        result = await session.run()
    assert rejected == 1000  # every sender was told
    assert result.status is S.COMPLETED
    assert result.artifacts == {"got": {"ok": True}}
    # Rejections have a budget of their own (limits.max_input_backlog, 100 by
    # default), outside max_history; the rest are counted, not recorded.
    recorded = [e for e in result.history if e.type == "input_rejected"]
    assert len(recorded) == 100
    assert len(result.history) - len(recorded) < 100
    assert result.history[-1].payload["unrecorded_rejections"] == 900


async def test_the_budget_for_recording_rejections_is_the_sessions_across_restores() -> None:
    # A restore counted the input_rejected events its snapshot kept: with the
    # history left out (as a worker saves each turn), every restore granted a
    # new budget, so a sender could grow the history turn after turn until
    # max_history ended the session; and the final count of those past the
    # budget started again at 0.
    registry = _wait_registry()
    node = stage("w", "Wait", next="end", outputs={"payload": "got"})
    node["config"] = {"input": "go"}
    document = doc([node, terminal("end", "got")], limits={"max_input_backlog": 2})
    pipeline = load(document, registry)
    session = stageflow.Session(pipeline, registry=registry)
    await session.run(suspend=True)
    for _ in range(5):  # turn after turn: spam, save without history, restore
        for _ in range(3):
            with pytest.raises(stageflow.InputRejectedError):
                session.send_input("go", {"bad": float("nan")})
        snapshot = json.loads(json.dumps(session.to_dict(history="none")))
        session = stageflow.Session.from_dict(snapshot, registry=registry, pipeline=pipeline)
        await session.run(suspend=True)
    recorded = sum(1 for e in session.history if e.type == "input_rejected")
    assert recorded == 0  # the first two were recorded before the first save
    session.send_input("go", {"ok": True})
    result = await session.run()
    assert result.status is S.COMPLETED
    assert result.history[-1].payload["unrecorded_rejections"] == 13
    assert snapshot["rejections"] == {"recorded": 2, "unrecorded": 13}


async def test_nodes_that_never_await_still_let_other_tasks_cancel_the_run() -> None:
    registry = _wait_registry()
    document = doc(
        [
            stage("count", "Count", next="again", arguments={"n": "n"}, outputs={"n": "n"}),
            {
                "id": "again",
                "type": "condition",
                "conditions": [{"if": {"<": [{"var": "n"}, 1_000_000]}, "then": "count"}],
                "else": "end",
            },
            terminal(),
        ],
        limits={"max_steps": 100_000, "max_history": 1_000_000},
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    started = anyio.Event()
    session.subscribe(lambda e: started.set() if e.type == "node_started" else None)

    async def cancel_once_started() -> None:
        await started.wait()
        session.cancel("another task stopped it")

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_once_started)
        result = await session.run()
    assert result.status is S.CANCELLED
    steps = sum(1 for e in result.history if e.type == "node_started")
    assert steps < 1_000  # it got in after a few nodes, not at the step limit


async def test_a_missing_output_is_said_with_a_few_of_the_keys_returned() -> None:
    # The message named every key the stage returned, each whole: a dict of
    # 100,000 keys made a message of a megabyte, kept in the history and logs.
    registry = stageflow.StageRegistry()

    @registry.register("Many")
    async def many(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {f"k{i:06d}": i for i in range(100_000)} | {"x" * 500: 1}

    document = doc([stage("s", "Many", next="end") | {"outputs": {"v": "v"}}, terminal("end")])
    result = await stageflow.Session(load(document, registry), registry=registry).run()
    assert isinstance(result.error, stageflow.StageOutputError)
    listed = ", ".join(repr(f"k{i:06d}") for i in range(20))
    assert str(result.error) == (
        f"stage 'Many' at node 's' returned no output 'v' (it returned {listed} and 99981 "
        "more); return it, or remove it from the node's 'outputs'"
    )
