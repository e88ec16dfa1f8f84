"""Inputs never silently kept or dropped, and run-time contract checks (issue 16)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import pytest
from fakes import doc, load, stage, terminal
from snapshot_support import TIMED_REPLY

import stageflow

pytestmark = pytest.mark.anyio

MESSAGE = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
    "additionalProperties": False,
}


def chat_doc(mode: str, schema: Mapping[str, Any] | None = MESSAGE) -> dict[str, Any]:
    config: dict[str, Any] = {"input": "user_message"}
    if schema is not None:
        config["input_schema"] = dict(schema)
    return doc(
        [
            {
                "id": "listen",
                "type": "stage",
                "stage": "WaitStage",
                "config": config,
                "outputs": {"payload": "message"},
                "next": "end",
            },
            terminal("end", "message"),
        ],
        validate_events=mode,
    )


async def restored(mode: str) -> stageflow.Session:
    registry = stageflow.StageRegistry()
    pipeline = load(chat_doc(mode), registry)
    session = stageflow.Session(pipeline, registry=registry)
    await session.run(suspend=True)
    data = json.loads(json.dumps(session.to_dict(history="none")))
    return stageflow.Session.from_dict(data, registry=registry)


async def test_a_misspelt_input_is_rejected_in_strict_naming_what_is_accepted() -> None:
    session = await restored("strict")
    with pytest.raises(stageflow.InputRejectedError) as caught:
        session.send_input("user_mesage", {"text": "hi"})
    assert caught.value.reason == "unknown_type"
    assert caught.value.input_type == "user_mesage"
    assert "no wait in this pipeline accepts it" in str(caught.value)
    assert "it accepts 'user_message'" in str(caught.value)
    [event] = [e for e in session.history if e.type == "input_rejected"]
    assert event.payload["accepted"] == ["user_message"]


async def test_a_misspelt_input_is_a_warning_event_in_warn() -> None:
    session = await restored("warn")
    receipt = session.send_input("user_mesage", {"text": "hi"})
    assert receipt.queued
    [event] = [e for e in session.history if e.type == "input_unexpected"]
    assert dict(event.payload) == {"input_type": "user_mesage", "accepted": ["user_message"]}


async def test_a_misspelt_input_is_queued_silently_only_when_checks_are_off() -> None:
    session = await restored("off")
    assert session.send_input("user_mesage", {"text": "hi"}).queued
    assert not [e for e in session.history if e.type == "input_unexpected"]


async def test_a_malformed_wait_stage_payload_is_rejected_in_strict() -> None:
    session = await restored("strict")
    with pytest.raises(stageflow.InputRejectedError) as caught:
        session.send_input("user_message", {"txt": "hi"})
    assert caught.value.reason == "invalid"
    assert 'field "text" is required' in str(caught.value)
    session.send_input("user_message", {"text": "hi"})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"message": {"text": "hi"}}


async def test_a_malformed_wait_stage_payload_is_flagged_to_a_live_waiter_in_warn() -> None:
    registry = stageflow.StageRegistry()
    session = stageflow.Session(load(chat_doc("warn"), registry), registry=registry)

    def answer(event: stageflow.Event) -> None:
        if event.type == "waiting_for_input":
            session.send_input("user_message", {"txt": "hi"})

    session.subscribe(answer)
    result = await session.run()
    [flagged] = [e for e in result.history if e.type == "event_validation_failed"]
    assert flagged.node_id == "listen"
    assert flagged.payload["input_type"] == "user_message"


async def test_an_invalid_input_schema_in_wait_stage_config_is_located() -> None:
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        load(chat_doc("strict", {"type": "nope"}), registry)  # when loaded, not at Session()
    [problem] = caught.value.problems
    assert problem.location == "$.nodes[0].config.input_schema.type"
    assert "not a valid JSON Schema" in problem.message


async def test_inputs_left_in_the_backlog_are_reported_when_the_session_ends() -> None:
    registry = stageflow.StageRegistry()
    session = stageflow.Session(load(chat_doc("warn"), registry), registry=registry)
    session.send_input("user_message", {"text": "one"})
    session.send_input("user_message", {"text": "two"})
    session.send_input("user_message", {"text": "three"})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.discarded_inputs == (
        ("user_message", {"text": "two"}),
        ("user_message", {"text": "three"}),
    )
    [event] = [e for e in result.history if e.type == "inputs_discarded"]
    assert event.payload["count"] == 2
    assert event.payload["inputs"][0] == {"input_type": "user_message", "payload": {"text": "two"}}
    assert result.history[-1].type == "session_completed"
    assert result.history[-2] == event


async def test_a_session_cancelled_while_waiting_reports_its_backlog() -> None:
    registry = stageflow.StageRegistry()
    session = stageflow.Session(load(chat_doc("warn"), registry), registry=registry)
    await session.run(suspend=True)
    session.send_input("other", {})  # warned, queued, never taken
    session.cancel("bye")
    [event] = [e for e in session.history if e.type == "inputs_discarded"]
    assert event.payload["inputs"] == [{"input_type": "other", "payload": {}}]


@pytest.mark.parametrize("restored", [False, True], ids=["suspended", "restored"])
async def test_an_input_sent_to_a_saved_wait_is_reported_when_the_session_is_cancelled(
    restored: bool,
) -> None:
    # The input answered the stage's saved wait, which never ran again: the
    # cancelled session's history held no trace of it.
    registry = stageflow.StageRegistry()
    pipeline = load(chat_doc("warn"), registry)
    session = stageflow.Session(pipeline, registry=registry)
    await session.run(suspend=True)
    if restored:
        session = stageflow.Session.from_dict(session.to_dict(), registry=registry)
    assert session.send_input("user_message", {"text": "hi"}).delivered == 1
    session.send_input("other", {})
    session.cancel("bye")
    assert session.status is stageflow.SessionStatus.CANCELLED
    [event] = [e for e in session.history if e.type == "inputs_discarded"]
    assert event.payload["inputs"] == [
        {"input_type": "user_message", "payload": {"text": "hi"}},
        {"input_type": "other", "payload": {}},
    ]
    assert session.history[-1].type == "session_cancelled"
    again = stageflow.Session.from_dict(session.to_dict(), registry=registry)
    assert again.status is stageflow.SessionStatus.CANCELLED


async def test_nothing_is_reported_when_nothing_was_left() -> None:
    registry = stageflow.StageRegistry()
    session = stageflow.Session(load(chat_doc("warn"), registry), registry=registry)
    session.send_input("user_message", {"text": "one"})
    result = await session.run()
    assert result.discarded_inputs == ()
    assert "inputs_discarded" not in [e.type for e in result.history]


# --------------------------------------------------------- contract checks

TYPED = stageflow.StageSpec(
    arguments={
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer"}},
    },
    outputs={"type": "object", "properties": {"total": {"type": "integer"}}},
)


def typed_registry() -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    @registry.register("Total", spec=TYPED)
    async def total(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        count = ctx.arguments.get("count")
        return {"total": count * 2 if isinstance(count, int) else "xx"}

    return registry


def typed_doc(mode: str) -> dict[str, Any]:
    return doc(
        [
            stage("t", "Total", next="end", arguments={"count": "n"}, outputs={"total": "total"}),
            terminal("end", "total"),
        ],
        validate_events=mode,
    )


async def run_typed(mode: str, payload: Mapping[str, Any]) -> stageflow.SessionResult:
    registry = typed_registry()
    session = stageflow.Session(load(typed_doc(mode), registry), registry=registry, payload=payload)
    return await session.run()


async def test_a_wrong_argument_type_fails_in_strict_naming_node_key_expected_got() -> None:
    result = await run_typed("strict", {"n": "x"})
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert isinstance(error, stageflow.StageContractError)
    assert (error.node_id, error.kind, error.key) == ("t", "argument", "count")
    assert error.expected == 'type "integer"'
    assert error.got == '"x"'
    assert str(error) == (
        "stage 'Total' at node 't': argument 'count' does not match its declared schema: "
        'expected type "integer", got "x"; fix the context value the node maps to it, or the '
        "stage's declared arguments schema"
    )


async def test_a_contract_message_escapes_control_characters_and_cuts_long_values() -> None:
    # DEL and the C1 controls are escaped as JSON escapes the C0 ones (a log
    # line or terminal shows what the value holds), and a long value is cut.
    result = await run_typed("strict", {"n": "a\x7fb\x9bc"})
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert error.got == '"a\\u007fb\\u009bc"'
    result = await run_typed("strict", {"n": "x" * 500})
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert error.got == '"' + "x" * 76 + "..."


async def test_a_missing_required_argument_fails_in_strict() -> None:
    result = await run_typed("strict", {})
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert (error.key, error.expected, error.got) == (
        "count",
        "a value (it is required)",
        "nothing",
    )


async def test_a_float_for_an_integer_argument_fails_in_strict() -> None:
    registry = typed_registry()
    session = stageflow.Session(
        load(typed_doc("strict"), registry), registry=registry, payload={"n": 2.5}
    )
    result = await session.run()
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert error.kind == "argument"  # 2.5 is no integer
    result = await run_typed("strict", {"n": 2})
    assert result.status is stageflow.SessionStatus.COMPLETED


async def test_output_checks_catch_what_the_stage_returns() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Total", spec=TYPED)
    async def total(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"total": "xx"}

    session = stageflow.Session(
        load(typed_doc("strict"), registry), registry=registry, payload={"n": 2}
    )
    result = await session.run()
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert (error.kind, error.key, error.got) == ("output", "total", '"xx"')
    assert "total" not in session.payload


async def test_a_stage_returning_none_misses_the_outputs_its_schema_requires() -> None:
    registry = stageflow.StageRegistry()
    spec = stageflow.StageSpec(
        outputs={"type": "object", "required": ["total"], "properties": {"total": {}}}
    )

    @registry.register("Total", spec=spec)
    async def total(ctx: stageflow.StageContext) -> None:
        return None

    document = doc([stage("t", "Total", next="end"), terminal("end")], validate_events="strict")
    result = await stageflow.Session(load(document, registry), registry=registry).run()
    error = result.error
    assert isinstance(error, stageflow.StageSchemaError)
    assert (error.kind, error.key, error.got) == ("output", "total", "nothing")


async def test_violations_are_events_in_warn_and_nothing_in_off() -> None:
    warned = await run_typed("warn", {"n": "x"})
    assert warned.status is stageflow.SessionStatus.COMPLETED
    events = [e for e in warned.history if e.type == "contract_violation"]
    assert [e.payload["kind"] for e in events] == ["argument", "output"]
    assert events[0].payload["violations"] == [
        {"key": "count", "expected": 'type "integer"', "got": '"x"'}
    ]
    off = await run_typed("off", {"n": "x"})
    assert off.status is stageflow.SessionStatus.COMPLETED
    assert "contract_violation" not in [e.type for e in off.history]


async def test_the_test_kits_mocks_are_checked_like_real_stages() -> None:
    from stageflow.testing import StageMock, mock_registry

    registry = mock_registry(typed_registry(), {"Total": StageMock(outputs={"total": 4})})
    session = stageflow.Session(
        load(typed_doc("strict"), registry), registry=registry, payload={"n": "x"}
    )
    result = await session.run()
    real = await run_typed("strict", {"n": "x"})
    assert isinstance(result.error, stageflow.StageSchemaError)
    assert str(result.error) == str(real.error)


# ------------------------------------ an input sent to a suspended session


def two_waiters_doc(timeout: float | None = None) -> dict[str, Any]:
    def listen(node_id: str) -> dict[str, Any]:
        config: dict[str, Any] = {"input": "go"}
        if timeout is not None:
            config["timeout"] = timeout
        return {
            "id": node_id,
            "type": "stage",
            "stage": "WaitStage",
            "config": config,
            "outputs": {"payload": node_id},
        }

    return doc(
        [
            {"id": "both", "type": "parallel", "children": ["left", "right"], "next": "end"},
            listen("left"),
            listen("right"),
            terminal("end", "left", "right"),
        ]
    )


def journal_calls(snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every journal entry of the snapshot's position tree."""
    found: list[Mapping[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            found.extend(value.get("stage", {}).get("calls", []))
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(snapshot.get("position"))
    return found


async def suspended_two_waiters(timeout: float | None = None) -> stageflow.Session:
    pipeline = load(two_waiters_doc(timeout))
    session = stageflow.Session(pipeline)
    result = await session.run(suspend=True)
    assert result.waiting_for == ("go",)
    return session


async def test_an_input_sent_to_a_suspended_session_reaches_every_stage_that_waited() -> None:
    # Live, both waiting stages get one input; suspended, it is the same.
    session = await suspended_two_waiters()
    receipt = session.send_input("go", {"n": 1})
    assert (receipt.delivered, receipt.queued) == (2, False)
    assert session.waiting_for() == ()
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"left": {"n": 1}, "right": {"n": 1}}


async def test_an_input_sent_after_a_restore_reaches_every_stage_that_waited() -> None:
    session = await suspended_two_waiters()
    data = json.loads(json.dumps(session.to_dict()))
    restored = stageflow.Session.from_dict(data, pipeline=load(two_waiters_doc()))
    assert restored.send_input("go", {"n": 2}).delivered == 2
    # The delivery is kept in the snapshot: a second restore still has it.
    again = stageflow.Session.from_dict(
        json.loads(json.dumps(restored.to_dict())), pipeline=load(two_waiters_doc())
    )
    assert again.waiting_for() == ()
    assert [c.get("parked") for c in journal_calls(again.to_dict())] == [True, True]
    result = await again.run()
    assert result.artifacts == {"left": {"n": 2}, "right": {"n": 2}}
    received = [e for e in again.history if e.type == "input_received"]
    assert sorted(e.node_id or "" for e in received) == ["left", "right"]
    assert {e.payload["from"] for e in received} == {"sender"}
    assert all("parked" not in call for call in journal_calls(again.to_dict()))


async def test_a_suspended_wait_past_its_deadline_does_not_take_the_input() -> None:
    # Live, that stage would have timed out before the input arrived.
    clock = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    pipeline = load(two_waiters_doc(timeout=60))
    session = stageflow.Session(pipeline, clock=lambda: clock[0])
    await session.run(suspend=True)
    clock[0] += datetime.timedelta(minutes=5)
    receipt = session.send_input("go", {"n": 3})
    assert (receipt.delivered, receipt.queued) == (0, True)


@pytest.mark.parametrize("restore", [False, True])
async def test_a_wait_past_its_deadline_times_out_and_leaves_the_late_input(
    restore: bool,
) -> None:
    """Queued for being late, the input was then taken by that very wait.

    The saved wait took it from the backlog when the session ran, as if it
    had come in time: an idle timeout (a reminder, an expiry) of a chat
    restored late never happened. Live, the wait times out first, and the
    input is left for the next wait (here none: it is discarded).
    """
    clock = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    pipeline = load(TIMED_REPLY)
    session = stageflow.Session(pipeline, clock=lambda: clock[0])
    await session.run(suspend=True)
    clock[0] += datetime.timedelta(minutes=30)  # the wait's deadline was at 10 minutes
    if restore:
        data = json.loads(json.dumps(session.to_dict(history="none")))
        session = stageflow.Session.from_dict(data, pipeline=pipeline, clock=lambda: clock[0])
    assert session.send_input("reply", {"n": 1}).queued
    result = await session.run()
    assert result.result == {"on_time": False}
    assert [e.type for e in result.history if e.node_id == "ask"][-3:] == [
        "input_timeout",
        "node_failed",
        "error_routed",
    ]
    assert result.discarded_inputs == (("reply", {"n": 1}),)


def _late_doc() -> dict[str, Any]:
    """A wait, then stages that never await, under a one-minute session timeout."""
    nodes: list[dict[str, Any]] = [
        {
            "id": "listen",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "go"},
            "next": "s0",
        }
    ]
    nodes += [stage(f"s{i}", "Count", next=f"s{i + 1}" if i < 4 else "end") for i in range(5)]
    nodes.append(terminal("end"))
    document = doc(nodes)
    document["limits"] = {"timeout": 60}
    return document


async def test_a_session_restored_past_its_deadline_runs_nothing_and_keeps_its_input() -> None:
    """Restored after its deadline: timed out before any node runs, on trio as on asyncio.

    On trio the run's cancel scope noticed a deadline already past only at
    the next yield, so the stages that never await all ran and the session
    completed; on both backends the input sent to the saved wait was in no
    event.
    """
    ran: list[str] = []
    registry = stageflow.StageRegistry()

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> dict[str, Any]:
        ran.append(ctx.node_id)
        return {}

    clock = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    pipeline = load(_late_doc(), registry)
    session = stageflow.Session(pipeline, registry=registry, clock=lambda: clock[0])
    await session.run(suspend=True)
    clock[0] += datetime.timedelta(minutes=5)
    data = json.loads(json.dumps(session.to_dict()))
    late = stageflow.Session.from_dict(
        data, pipeline=pipeline, registry=registry, clock=lambda: clock[0]
    )
    assert late.send_input("go", {"n": 1}).delivered == 1  # to the saved wait
    result = await late.run()
    assert result.status is stageflow.SessionStatus.TIMED_OUT
    assert ran == []
    assert [e.type for e in result.history][-3:] == [
        "session_resumed",
        "inputs_discarded",
        "session_timed_out",
    ]
    assert result.discarded_inputs == (("go", {"n": 1}),)


async def test_a_run_cancelled_before_a_restored_wait_runs_again_keeps_its_input() -> None:
    pipeline = load(two_waiters_doc())
    session = stageflow.Session(pipeline)
    await session.run(suspend=True)
    restored = stageflow.Session.from_dict(
        json.loads(json.dumps(session.to_dict())), pipeline=pipeline
    )
    # The first input reaches both saved waits; the second waits in the backlog.
    assert restored.send_input("go", {"n": 1}).delivered == 2
    assert restored.send_input("go", {"n": 2}).queued

    def cancel_at_resume(event: stageflow.Event) -> None:
        if event.type == "session_resumed":
            restored.cancel("not now")

    restored.subscribe(cancel_at_resume)
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert not [e for e in result.history if e.type == "input_received"]
    # Before: only the backlog's input was listed.
    assert sorted(p["n"] for _, p in result.discarded_inputs) == [1, 1, 2]
    [discarded] = [e for e in result.history if e.type == "inputs_discarded"]
    assert discarded.payload["count"] == 3
