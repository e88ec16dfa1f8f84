"""``ctx.emit()`` refuses event types that no history can hold (issue 19, class 8).

An empty type, ``None``, a number or one of the engine's own types (such as
``session_completed``) was recorded, after which every snapshot of the
session was refused by ``Session.from_dict``. The emit now fails at the
source with a ``StageContractError``, and the session's snapshots restore.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import doc, fake_registry, stage, terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._specs import ENGINE_EVENT_TYPES

pytestmark = pytest.mark.anyio


def emitting_registry(event_type: Any) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Emit")
    async def emit(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.emit(event_type, {"n": 1})
        return {}

    return registry


async def emit_once(event_type: Any) -> tuple[stageflow.SessionResult, stageflow.Session]:
    registry = emitting_registry(event_type)
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("e", "Emit", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry)
    result = await session.run()
    # Whatever the stage emitted, the session's snapshot restores.
    snapshot = json.loads(json.dumps(session.to_dict()))
    stageflow.Session.from_dict(snapshot, registry=registry)
    return result, session


@pytest.mark.parametrize(
    "event_type",
    ["", "   ", None, 3, 1.5, ["list"], "session_completed", "node_started", "input_received"],
)
async def test_an_event_type_no_history_can_hold_fails_the_stage(event_type: Any) -> None:
    result, _ = await emit_once(event_type)
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageContractError)
    assert result.error.node_id == "e"
    assert "emitted an event of type" in str(result.error)
    assert not any(e.node_id == "e" and e.payload == {"n": 1} for e in result.history)


@pytest.mark.parametrize(
    "event_type",
    [
        "error_routed",
        "cleanup_failed",
        "contract_violation",
        "input_unexpected",
        "inputs_discarded",
        "subscriber_overflow",
    ],
)
async def test_the_engines_other_event_types_are_refused_too(event_type: str) -> None:
    # They were missing from the engine's types: a stage could record an
    # error_routed of its own, which coverage counts as an error edge taken.
    result, _ = await emit_once(event_type)
    assert isinstance(result.error, stageflow.StageContractError)
    assert "the engine records itself" in str(result.error)


async def test_a_stage_event_type_is_recorded() -> None:
    result, _ = await emit_once("order_priced")
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert [e.payload for e in result.history if e.type == "order_priced"] == [{"n": 1}]


@pytest.mark.parametrize("event_type", ["", "session_completed"])
def test_an_event_spec_cannot_declare_such_a_type(event_type: str) -> None:
    with pytest.raises(stageflow.DefinitionError, match="cannot be declared"):
        stageflow.EventSpec(event_type)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    event_type=st.one_of(
        st.text(max_size=12),
        st.sampled_from(sorted(ENGINE_EVENT_TYPES)),
        st.none(),
        st.integers(),
        st.booleans(),
    )
)
async def test_fuzz_emitted_types_are_recorded_or_refused(event_type: Any) -> None:
    result, _ = await emit_once(event_type)
    if result.status is stageflow.SessionStatus.FAILED:
        assert isinstance(result.error, stageflow.StageContractError)
    else:
        assert result.status is stageflow.SessionStatus.COMPLETED
        assert isinstance(event_type, str)
        assert event_type.strip()
        assert event_type not in ENGINE_EVENT_TYPES


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1], "event 'noted' payload is an array, which is not a JSON object; emit a dict"),
        (
            {"at": {1, 2}},
            "event 'noted' payload.at is a Python set, which is not a JSON value (not a JSON "
            "type); emit only dict, list, str, int, float, bool or None",
        ),
    ],
)
async def test_an_event_payload_json_cannot_carry_says_what_to_emit(
    payload: Any, message: str
) -> None:
    # It said "... which is not a JSON value (it must be an object); return
    # only ...": an array is JSON, and a stage emits an event, it returns outputs.
    registry = fake_registry()

    @registry.register("Note")
    async def note(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.emit("noted", payload)
        return {}

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("n", "Note", next="end"), terminal("end")]), registry=registry
    )
    result = await stageflow.Session(pipeline).run()
    assert isinstance(result.error, stageflow.StageError)
    assert str(result.error.__cause__) == message
