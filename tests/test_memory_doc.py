"""What docs/memory.md says a waiting session holds, counted (not timed).

The page's figures come from ``benchmarks/`` on CPython 3.11 and trio; here
each way of keeping a waiting session is counted in GC-tracked objects, with a
little room, so that a change that makes waiting sessions heavier for the
collector is seen, and stageflow is checked to leave the collector's settings
alone.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
import trio
import trio.testing

import stageflow

COUNT = 500


def _pipeline() -> stageflow.Pipeline:
    registry = stageflow.StageRegistry()

    @registry.register("Wait", spec=stageflow.StageSpec(allowed_inputs=[stageflow.InputSpec("go")]))
    async def wait(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": await ctx.wait_input("go")}

    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "a",
            "nodes": [
                {"id": "a", "type": "stage", "stage": "Wait", "next": "end"},
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=registry,
    )


def _tracked_each(kind: str, payload: dict[str, Any] | None = None) -> float:
    """GC-tracked objects each waiting session adds, kept as ``kind``, started with ``payload``."""
    pipeline = _pipeline()
    per_session = 0.0

    async def main() -> None:
        nonlocal per_session
        for _ in range(2):  # caches and first-use objects, before counting
            warm = stageflow.Session(pipeline)
            await warm.run(suspend=True)
            json.dumps(warm.to_dict())
        kept: list[object] = []
        async with trio.open_nursery() as nursery:
            gc.collect()
            before = len(gc.get_objects())
            for _ in range(COUNT):
                session = stageflow.Session(pipeline, payload=payload)
                if kind == "live":
                    nursery.start_soon(session.run)
                    kept.append(session)
                elif kind == "suspended":
                    await session.run(suspend=True)
                    kept.append(session)
                else:
                    await session.run(suspend=True)
                    kept.append(json.dumps(session.to_dict()))
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            per_session = (len(gc.get_objects()) - before) / COUNT
            nursery.cancel_scope.cancel()

    trio.run(main)
    return per_session


@pytest.mark.parametrize(("kind", "documented"), [("live", 27), ("suspended", 10), ("stored", 0)])
def test_a_waiting_session_holds_what_the_memory_page_says(kind: str, documented: int) -> None:
    assert _tracked_each(kind) <= documented + 0.5


def test_a_suspended_session_holds_its_context_once() -> None:
    # 102 containers: the object, its list, 50 messages and their tag lists.
    # The saved position's copy is the session's context: not held twice
    # (204 more before), however long the session waits.
    payload = {"messages": [{"role": "user", "tags": ["a"]} for _ in range(50)]}
    added = _tracked_each("suspended", payload) - _tracked_each("suspended")
    assert 102 - 0.5 <= added <= 102 + 0.5


def _tracked_completed(resumed: bool) -> float:
    """GC-tracked objects each completed session keeps: resumed after a suspension, or live."""
    pipeline = _pipeline()
    per_session = 0.0

    async def main() -> None:
        nonlocal per_session
        warm = stageflow.Session(pipeline)
        await warm.run(suspend=True)
        warm.send_input("go", {})
        await warm.run()
        kept: list[stageflow.Session] = []
        gc.collect()
        before = len(gc.get_objects())
        async with trio.open_nursery() as nursery:
            for _ in range(COUNT):
                session = stageflow.Session(pipeline)
                kept.append(session)
                if resumed:
                    await session.run(suspend=True)
                    session.send_input("go", {})
                    await session.run()
                else:
                    nursery.start_soon(session.run)
            await trio.testing.wait_all_tasks_blocked()
            if not resumed:
                for session in kept:
                    session.send_input("go", {})
        assert {s.status for s in kept} == {stageflow.SessionStatus.COMPLETED}
        gc.collect()
        per_session = (len(gc.get_objects()) - before) / COUNT

    trio.run(main)
    return per_session


def test_a_resumed_session_lets_go_of_the_position_it_resumed_from() -> None:
    # Its run took the saved position: once completed, it keeps what a session
    # that never suspended keeps (4 objects more before: the saved record,
    # the position, its stage's record and journal).
    assert _tracked_completed(resumed=True) <= _tracked_completed(resumed=False) + 0.5


def test_stageflow_leaves_the_collector_settings_alone() -> None:
    settings = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())
    _tracked_each("suspended")
    assert (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()) == settings
