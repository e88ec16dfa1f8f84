"""A cancel() the session has not acted on yet is kept in its snapshot (`cancel_requested`)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from fakes import doc, load, stage, terminal, wait_until_waiting

import stageflow

pytestmark = pytest.mark.anyio


def _waiting_pipeline() -> stageflow.Pipeline:
    registry = stageflow.StageRegistry()
    registry.add(stageflow.WaitStage, name="Wait")
    node = stage("listen", "Wait", next="end", outputs={"payload": "message"})
    node["config"] = {"input": "go"}
    return load(doc([node, terminal("end", "message")]), registry)


def _round_trip(session: stageflow.Session) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(session.to_dict()))
    return data


async def test_a_pending_session_cancelled_before_its_snapshot_is_restored_cancelled() -> None:
    """Before, the restored session ran and completed: the cancel was not in the snapshot."""
    pipeline = _waiting_pipeline()
    session = stageflow.Session(pipeline)
    session.cancel("changed my mind")
    data = _round_trip(session)
    assert data["status"] == "pending"
    assert data["cancel_requested"] == "changed my mind"
    restored = stageflow.Session.from_dict(data, pipeline=pipeline)
    restored.send_input("go", {"n": 1})
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert result.history[-1].payload["reason"] == "changed my mind"
    assert not [e for e in result.history if e.type == "node_started"]


async def test_a_cancel_a_running_session_has_not_reached_is_kept_in_its_snapshot() -> None:
    pipeline = _waiting_pipeline()
    session = stageflow.Session(pipeline)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        session.cancel("stop")
        data = _round_trip(session)  # in this task, before the run acts on it
    assert data["status"] == "running"
    assert data["cancel_requested"] == "stop"
    restored = stageflow.Session.from_dict(data, pipeline=pipeline)
    # Restored waiting with a cancel to act on: it ends now, as cancel() on a waiting session.
    assert restored.status is stageflow.SessionStatus.CANCELLED
    assert restored.history[-1].type == "session_cancelled"
    assert restored.history[-1].payload["reason"] == "stop"


async def test_only_an_unfinished_session_has_a_cancel_requested() -> None:
    pipeline = _waiting_pipeline()
    session = stageflow.Session(pipeline)
    plain = _round_trip(session)
    assert "cancel_requested" not in plain  # absent unless a cancel waits to be acted on
    session.cancel("done")
    result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    data = _round_trip(session)
    assert "cancel_requested" not in data
    data["cancel_requested"] = "again"
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data, pipeline=pipeline)
    assert [p.location for p in caught.value.problems] == ["$.cancel_requested"]
