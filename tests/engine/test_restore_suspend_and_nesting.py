"""Restoring around suspension and nesting: due input deadlines, suspend edges,
inputs to suspended sessions, nested parallels, subpipelines, map items and loops.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import anyio
import pytest
from fakes import doc, load, parallel, stage, terminal
from snapshot_support import (
    T0,
    TIMED_REPLY,
    WAITING,
    Case,
    Outcome,
    Script,
    cut_at_waits,
    every_cut,
    json_round_trip,
    review_registry,
    uninterrupted,
)

import stageflow

pytestmark = pytest.mark.anyio


# ------------------------------------------------- an input timeout already due


@pytest.mark.trio_only
async def test_suspend_mode_at_a_passed_input_deadline_times_the_wait_out() -> None:
    registry = review_registry()
    document = TIMED_REPLY
    session = stageflow.Session(load(document, registry), registry=registry, clock=lambda: T0)
    first = await session.run(suspend=True)
    assert first.wake_at == T0 + datetime.timedelta(seconds=600)
    due = first.wake_at
    restored = stageflow.Session.from_dict(
        json_round_trip(session.to_dict()), registry=registry, clock=lambda: due
    )
    # The service pattern of docs/snapshots.md: restore at wake_at, run(suspend=True).
    result = await restored.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED, (result.status, result.wake_at)
    assert result.result == {"on_time": False}


# ------------------------------------------------------------- suspend edges

TWO_ASKS = doc(
    [
        parallel("fan", ["left", "right"], next="end"),
        stage("left", "Ask", config={"input": "left"}, outputs={"answer": "left"}),
        stage("right", "Ask", config={"input": "right"}, outputs={"answer": "right"}),
        terminal("end", "left", "right"),
    ]
)


async def test_an_input_sent_as_the_session_suspends_is_not_lost() -> None:
    registry = review_registry()
    session = stageflow.Session(load(TWO_ASKS, registry), registry=registry)
    session.send_input("left", "L")  # in the backlog: the left wait takes it at once

    def on_event(event: stageflow.Event) -> None:
        if event.type == "session_suspended":
            # A sender (another task, a callback) gets its input in as the run stops.
            session.send_input("right", "R")

    session.subscribe(on_event)
    first = await session.run(suspend=True)
    assert first.status is WAITING
    assert first.waiting_for == ("right",)
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    with anyio.fail_after(60):
        result = await restored.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED, result.waiting_for
    assert result.artifacts == {"left": "L", "right": "R"}


async def test_suspend_with_one_of_two_inputs_already_in_the_backlog() -> None:
    registry = review_registry()
    case = Case(load(TWO_ASKS, registry), registry, {})
    session = case.session()
    session.send_input("right", "R")
    first = await session.run(suspend=True)
    assert first.waiting_for == ("left",)
    data = session.to_dict()
    branches = data["position"]["parallel"]["branches"]
    assert [b["state"] for b in branches] == ["running", "finished"]
    assert data["backlog"] == {}
    restored = case.restore(data)
    restored.send_input("left", "L")
    result = await restored.run()
    assert result.artifacts == {"left": "L", "right": "R"}


async def test_inputs_sent_to_a_suspended_session_before_run_go_on_in_place() -> None:
    registry = review_registry()
    session = stageflow.Session(load(TWO_ASKS, registry), registry=registry)
    assert (await session.run(suspend=True)).waiting_for == ("left", "right")
    # The saved wait takes it at once (issue 19): not queued, kept in its journal.
    assert session.send_input("left", "L").delivered == 1
    assert session.waiting_for() == ("right",)
    assert session.to_dict()["backlog"] == {}
    second = await session.run(suspend=True)
    assert second.waiting_for == ("right",)
    data = json_round_trip(session.to_dict())
    assert [b["state"] for b in data["position"]["parallel"]["branches"]] == [
        "finished",
        "running",
    ]
    session.send_input("right", "R")
    result = await session.run()
    assert result.artifacts == {"left": "L", "right": "R"}
    # A session suspended then run to its end: its snapshot is the finished one.
    final = json_round_trip(session.to_dict())
    assert final["status"] == "completed"
    assert final["outcome"]["artifacts"] == {"left": "L", "right": "R"}
    again = stageflow.Session.from_dict(final, registry=registry)
    assert again.status is stageflow.SessionStatus.COMPLETED


async def test_cancel_of_a_waiting_session_ends_it_at_once_and_the_snapshot_says_so() -> None:
    registry = review_registry()
    session = stageflow.Session(load(TWO_ASKS, registry), registry=registry)
    await session.run(suspend=True)
    session.cancel("user left")
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert session.history[-1].type == "session_cancelled"
    assert session.history[-1].payload["reason"] == "user left"
    with pytest.raises(stageflow.SessionStateError):
        await session.run()
    data = json_round_trip(session.to_dict())
    assert data["status"] == "cancelled"
    restored = stageflow.Session.from_dict(data, registry=registry)
    assert restored.status is stageflow.SessionStatus.CANCELLED


async def test_cancel_of_a_restored_waiting_session_ends_it() -> None:
    registry = review_registry()
    session = stageflow.Session(load(TWO_ASKS, registry), registry=registry)
    await session.run(suspend=True)
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.cancel("timed out by the service")
    assert restored.status is stageflow.SessionStatus.CANCELLED
    assert restored.history[-1].payload["reason"] == "timed out by the service"


async def test_send_input_from_thread_reaches_a_restored_running_session() -> None:
    registry = review_registry()
    case = Case(load(TWO_ASKS, registry), registry, {})
    session = case.session()
    await session.run(suspend=True)
    restored = case.restore(session.to_dict())
    with pytest.raises(stageflow.SessionStateError):
        restored.send_input_from_thread("left", "L")
    results: list[stageflow.SessionResult] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            results.append(await restored.run())

        tg.start_soon(run)
        stream = restored.events(buffer=0)
        async for event in stream:
            if event.type == "waiting_for_input" and len(restored.waiting_for()) == 2:
                break
        await stream.aclose()
        await anyio.to_thread.run_sync(restored.send_input_from_thread, "left", "L")
        await anyio.to_thread.run_sync(restored.send_input_from_thread, "right", "R")
    assert results[0].artifacts == {"left": "L", "right": "R"}


# ------------------------------------------------------- nesting, loops, modes

NESTED_DEEP = doc(
    [
        parallel("outer", ["inner", "side"], next="each"),
        parallel("inner", ["x", "y"]),
        stage("x", "Ask", config={"input": "x"}, outputs={"answer": "x"}),
        stage("y", "Ask", config={"input": "y", "timeout": 500}, outputs={"answer": "y"}),
        stage("side", "Ask", config={"input": "side"}, outputs={"answer": "side"}),
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "call",
            "concurrency": 2,
            "collect": {"said": "said"},
            "next": "loop",
        },
        {
            "id": "call",
            "type": "subpipeline",
            "pipeline": "asker",
            "inputs": {"n": "item"},
            "artifacts": {"said": "said"},
        },
        stage("loop", "Ask", config={"input": "more"}, outputs={"answer": "more"}, next="again"),
        {
            "id": "again",
            "type": "condition",
            "conditions": [{"if": {"==": [{"var": "more"}, "yes"]}, "then": "loop"}],
            "else": "end",
        },
        terminal("end", "x", "y", "side", "said", "more"),
    ],
    subpipelines={
        "asker": {
            "entry": "ask",
            "nodes": [
                stage(
                    "ask", "Ask", config={"input": "item"}, outputs={"answer": "said"}, next="done"
                ),
                terminal("done", "said"),
            ],
        }
    },
)


def deep_case(mode: str = "warn") -> Case:
    registry = review_registry()
    document = json.loads(json.dumps(NESTED_DEEP))
    document["validate_events"] = mode
    return Case(
        load(document, registry),
        registry,
        {"items": [1, 2, 3]},
        {
            "x": ["X"],
            "y": ["Y"],
            "side": ["S"],
            "item": ["i1", "i2", "i3"],
            "more": ["yes", "yes", "no"],
        },
    )


@pytest.mark.parametrize("mode", ["off", "strict"])
async def test_nested_parallels_subpipelines_in_map_items_and_a_loop_restore_everywhere(
    mode: str,
) -> None:
    case = deep_case(mode)
    expected = await uninterrupted(case)
    assert expected.artifacts["more"] == "no"
    assert sorted(expected.artifacts["said"]) == ["i1", "i2", "i3"]
    cuts = await cut_at_waits(case)
    assert len(cuts) >= 6
    for _, outcome in cuts:
        assert outcome == expected
    await every_cut(case, expected)


async def test_a_stage_with_a_timeout_that_waits_restores_at_every_event() -> None:
    registry = review_registry()
    document = doc(
        [
            {
                "id": "ask",
                "type": "stage",
                "stage": "Ask",
                "timeout": 5,
                "config": {"input": "a"},
                "outputs": {"answer": "a"},
                "next": "end",
            },
            terminal("end", "a"),
        ]
    )
    case = Case(load(document, registry), registry, {}, {"a": ["A"]})
    expected = await uninterrupted(case)
    assert expected.artifacts == {"a": "A"}
    for _, outcome in await cut_at_waits(case):
        assert outcome == expected
    await every_cut(case, expected)


async def test_snapshots_taken_from_another_task_while_stages_run_all_restore() -> None:
    case = deep_case()
    expected = await uninterrupted(case)
    script = Script(case.inputs)
    session = script.attach(case.session())
    snapshots: list[tuple[dict[str, Any], dict[str, list[Any]]]] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await session.run()
            tg.cancel_scope.cancel()

        async def watch() -> None:
            while True:
                snapshots.append((json_round_trip(session.to_dict()), script.remaining()))
                await anyio.lowlevel.checkpoint()

        tg.start_soon(run)
        tg.start_soon(watch)
    running = [(data, left) for data, left in snapshots if data["status"] == "running"]
    assert len(running) > 3
    for data, left in running:
        restored = Script(left).attach(case.restore(data))
        with anyio.fail_after(60):
            assert Outcome.of(await restored.run()) == expected
