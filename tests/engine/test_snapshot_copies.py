"""What a session shares between its snapshot, its result and its restored state.

A restored waiting session's context is the saved position's own copy (not a
second one), and a finished session's kept outcome is its terminal's plain
result itself (not a copy of the copy handed out): neither may let a change
made by the caller, or by the run that goes on, reach the other.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

import stageflow

pytestmark = pytest.mark.anyio

RESULT = {"answer": {"items": [1, {"deep": "yes"}]}}


def _waiting_pipeline() -> tuple[stageflow.Pipeline, stageflow.StageRegistry]:
    registry = stageflow.StageRegistry()

    @registry.register("Await")
    async def await_go(ctx: Any) -> dict[str, Any]:
        return {"v": await ctx.wait_input("go")}

    document = {
        "api_version": "1.0",
        "entry": "wait",
        "nodes": [
            {
                "id": "wait",
                "type": "stage",
                "stage": "Await",
                "outputs": {"v": "v"},
                "next": "end",
            },
            {"id": "end", "type": "terminal", "artifacts": ["v"], "result": RESULT},
        ],
    }
    return stageflow.Pipeline.from_dict(document, registry=registry), registry


async def test_a_restored_waiting_session_keeps_its_context_apart() -> None:
    pipeline, registry = _waiting_pipeline()
    payload = {"k": {"n": [1, 2]}}
    session = stageflow.Session(pipeline, registry=registry, payload=payload)
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    data = session.to_dict()
    kept = copy.deepcopy(data)
    restored = stageflow.Session.from_dict(data, registry=registry)
    # The caller's snapshot changed after the restore: the session is not.
    data["position"]["context"]["k"]["n"].append(3)
    data["position"]["context"]["late"] = True
    assert dict(restored.payload) == payload
    before = restored.to_dict()
    assert before["position"] == kept["position"]
    assert before["position"]["context"] == payload
    # The run goes on with that context and writes to it: the snapshot taken
    # before it, and the one the caller holds, stay as they were.
    restored.send_input("go", {"x": 1})
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert dict(restored.payload) == {**payload, "v": {"x": 1}}
    assert before["position"]["context"] == payload
    assert restored.to_dict()["outcome"]["artifacts"] == {"v": {"x": 1}}
    assert payload == {"k": {"n": [1, 2]}}


async def test_a_finished_sessions_outcome_and_result_are_apart() -> None:
    pipeline, registry = _waiting_pipeline()
    results = []
    for _ in range(2):
        session = stageflow.Session(pipeline, registry=registry)
        await session.run(suspend=True)
        session.send_input("go", {"x": 1})
        result = await session.run()
        assert result.result == RESULT
        results.append((session, result))
    (first, first_result), (second, second_result) = results
    assert first_result.result is not second_result.result
    # The caller changes the result it was handed: the snapshots do not move.
    assert first_result.result is not None
    first_result.result["answer"]["items"].append("mine")
    first_result.result["other"] = 1
    snapshot = first.to_dict()
    assert snapshot["outcome"]["result"] == RESULT
    # ... nor when the snapshot's own copy is changed, for any session of the node.
    snapshot["outcome"]["result"]["answer"]["items"].clear()
    assert first.to_dict()["outcome"]["result"] == RESULT
    assert second.to_dict()["outcome"]["result"] == RESULT
    assert second_result.result == RESULT
    third = stageflow.Session(pipeline, registry=registry)
    await third.run(suspend=True)
    third.send_input("go", {"x": 1})
    assert (await third.run()).result == RESULT
    assert third.to_dict()["outcome"]["result"] == RESULT
