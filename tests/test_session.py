"""The session: limits, state, bad payloads and outputs, failure, cancellation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from conftest import live_tasks
from fakes import doc, fake_registry, load, parallel, run, scaled, stage, terminal, types
from session_support import (
    CANCELLED,
    COMPLETED,
    FAILED,
    cond,
    fan_pipeline,
    hang_pipeline,
    loop_pipeline,
    session_for,
    set_node,
)

import stageflow

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------------- limits


async def test_the_step_limit_ends_a_loop() -> None:
    result = await run(loop_pipeline(limits={"max_steps": 10}))
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert (result.error.limit, result.error.value) == ("max_steps", 10)
    assert result.error.node_id in {"work", "again"}
    assert "limits.max_steps" in str(result.error)
    assert types(result).count("node_started") == 10
    assert result.history[-1].type == "session_failed"


async def test_session_limits_override_the_pipeline() -> None:
    session = session_for(loop_pipeline(), limits=stageflow.Limits(max_steps=3))
    result = await session.run()
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert types(result).count("node_started") == 3


async def test_the_step_limit_counts_branch_nodes() -> None:
    result = await run(fan_pipeline() | {"limits": {"max_steps": 3}})
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.status is FAILED


async def test_the_history_limit_ends_a_long_run() -> None:
    result = await run(loop_pipeline(limits={"max_steps": 1000, "max_history": 50}))
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_history"
    # Checked before each node starts: the history ends just past the limit.
    assert 50 <= len(result.history) <= 52


async def test_the_history_limit_bounds_what_a_stage_emits() -> None:
    registry = fake_registry()

    @registry.register("Chatty")
    async def chatty(ctx: stageflow.StageContext) -> None:
        for i in range(500):
            ctx.emit("progress", {"i": i})

    document = doc([stage("c", "Chatty", next="end"), terminal("end")], limits={"max_history": 50})
    result = await run(document, registry=registry)
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert len(result.history) <= 55


# ------------------------------------------------------------ session state


async def test_a_session_runs_once() -> None:
    session = session_for(fan_pipeline())
    await session.run()
    with pytest.raises(stageflow.SessionStateError, match="create a new Session"):
        await session.run()


async def test_run_checks_the_state_when_awaited_not_when_called() -> None:
    # Session.run returns the run's coroutine (issue 18): calling it does nothing yet.
    session = session_for(fan_pipeline())
    await session.run()
    again = session.run()
    with pytest.raises(stageflow.SessionStateError, match="create a new Session"):
        await again


async def test_a_running_session_cannot_be_run_again() -> None:
    session = session_for(hang_pipeline())
    started = anyio.Event()
    session.subscribe(
        lambda e: started.set() if (e.type, e.node_id) == ("node_started", "hang") else None
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await started.wait()
        with pytest.raises(stageflow.SessionStateError, match="is running"):
            await session.run()
        session.cancel()
    assert session.status is CANCELLED


async def test_status_moves_from_pending_to_running_to_done() -> None:
    session = session_for(hang_pipeline())
    seen: list[stageflow.SessionStatus] = []

    def watch(event: stageflow.Event) -> None:
        seen.append(session.status)
        if event.node_id == "hang" and event.type == "node_started":
            session.cancel()

    assert session.status is stageflow.SessionStatus.PENDING
    session.subscribe(watch)
    await session.run()
    assert seen[0] is stageflow.SessionStatus.RUNNING
    assert session.status is CANCELLED


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"x": {1, 2}}, "payload.x"),
        ({"x": [1, math.nan]}, "payload.x[1]"),
        ({"x": {"y": object()}}, "payload.x.y"),
        ({"x": {1: "a"}}, "payload.x key 1"),
        ({"x": math.inf}, "payload.x"),
    ],
)
def test_a_non_json_payload_is_a_typed_error(payload: dict[str, Any], where: str) -> None:
    with pytest.raises(stageflow.NonJsonValueError) as info:
        session_for(fan_pipeline(), payload=payload)
    assert info.value.where == where
    assert isinstance(info.value, TypeError)
    assert where in str(info.value)
    # The payload is passed, not returned (it said "return only ...").
    assert str(info.value).endswith("; pass only dict, list, str, int, float, bool or None")


@pytest.mark.parametrize(("payload", "kind"), [([1, 2], "an array"), ("text", "a string")])
def test_a_payload_that_is_not_an_object_is_a_typed_error(payload: Any, kind: str) -> None:
    # It said "is an array, which is not a JSON value (it must be an object);
    # return only dict, list, ...": an array is JSON, and a payload is passed.
    with pytest.raises(stageflow.NonJsonValueError) as info:
        session_for(fan_pipeline(), payload=payload)
    assert str(info.value) == (
        f"the session payload is {kind}, which is not a JSON object; pass a dict, "
        "or leave it out for an empty one"
    )


def test_the_payload_is_copied() -> None:
    mine = {"a": {"b": 1}}
    session = session_for(fan_pipeline(), payload=mine)
    assert session.payload == mine
    assert session.payload["a"] is not mine["a"]


def test_the_payload_view_is_read_only_at_its_top_level() -> None:
    # docs/concepts.md: a read-only view of the context's top level; the
    # values under it are the session's own (not copies, not frozen).
    session = session_for(fan_pipeline(), payload={"a": {"b": 1}})
    with pytest.raises(TypeError):
        session.payload["a"] = 2  # type: ignore[index]
    assert session.payload["a"] is session.payload["a"]


def test_a_stage_missing_from_the_session_registry_is_a_validation_error() -> None:
    pipeline = load(fan_pipeline())
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Session(pipeline, registry=stageflow.StageRegistry())
    assert [p.location for p in info.value.problems] == [
        "$.nodes[0].stage",
        "$.nodes[2].stage",
        "$.nodes[3].stage",
    ]


# ------------------------------------------------------------ stage outputs


def output_registry(value: object) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Produce")
    async def produce(ctx: stageflow.StageContext) -> Any:
        return value

    return registry


def produce_pipeline(outputs: Mapping[str, str]) -> dict[str, Any]:
    return doc(
        [
            set_node("before", {"kept": 1}, next="produce"),
            stage("produce", "Produce", outputs=outputs, next="end"),
            terminal("end"),
        ]
    )


async def failed_output(value: object, outputs: Mapping[str, str]) -> tuple[Any, Any]:
    registry = output_registry(value)
    session = session_for(produce_pipeline(outputs), registry, payload={"start": 0})
    result = await session.run()
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.StageOutputError)
    assert result.error.node_id == "produce"
    assert "'produce'" in str(result.error)
    # Nothing of the failed node reached the context; earlier writes are kept.
    assert dict(session.payload) == {"start": 0, "kept": 1}
    return result, session


@pytest.mark.parametrize(
    ("value", "kind"),
    [("text", "a string"), ([1, 2], "an array"), (3, "an integer"), (("a", 1), "a Python tuple")],
)
@pytest.mark.parametrize("outputs", [{}, {"a": "a"}])
async def test_a_stage_returning_a_non_mapping_fails(
    value: object, kind: str, outputs: dict
) -> None:
    result, _ = await failed_output(value, outputs)
    assert f"returned {kind};" in str(result.error)


@pytest.mark.parametrize(
    ("value", "key", "kind"),
    [
        ({"a": 1, "b": {1, 2}}, "'b'", "a Python set"),
        ({"a": 1, "b": math.nan}, "'b'", "a number"),
        ({"a": 1, "b": [1, math.inf]}, "'b[1]'", "a number"),
        ({"a": 1, "b": {"deep": object()}}, "'b.deep'", "a Python object"),
        ({"a": 1, "b": {2: "int key"}}, "'b key 2'", "an integer"),
    ],
)
async def test_a_non_json_output_value_fails_and_writes_nothing(
    value: dict[str, Any], key: str, kind: str
) -> None:
    result, _ = await failed_output(value, {"a": "out.a", "b": "out.b"})
    message = str(result.error)
    assert f"output {key}" in message
    assert f"is {kind}, which is not a JSON value" in message


async def test_a_missing_output_key_fails_naming_it_and_what_was_returned() -> None:
    result, _ = await failed_output({"a": 1, "other": 2}, {"a": "out.a", "b": "out.b"})
    message = str(result.error)
    assert "returned no output 'b'" in message
    assert "'a', 'other'" in message


async def test_unmapped_outputs_are_ignored() -> None:
    registry = output_registry({"a": 1, "junk": {1, 2}})
    session = session_for(produce_pipeline({"a": "out"}), registry)
    result = await session.run()
    assert result.status is COMPLETED
    assert session.payload["out"] == 1


async def test_a_stage_returning_none_writes_nothing() -> None:
    registry = output_registry(None)
    session = session_for(produce_pipeline({}), registry)
    result = await session.run()
    assert result.status is COMPLETED
    assert dict(session.payload) == {"kept": 1}


# ----------------------------------------------------------------- failures


async def test_a_stage_that_raises_is_a_stage_error_with_its_cause() -> None:
    document = doc(
        [stage("boom", "Fail", config={"message": "bad input"}, next="end"), terminal("end")]
    )
    result = await run(document)
    error = result.error
    assert isinstance(error, stageflow.StageError)
    assert (error.node_id, error.stage, error.attempt) == ("boom", "Fail", 1)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "bad input"
    assert "ValueError: bad input" in str(error)
    assert types(result, node_id="boom") == ["node_started", "node_failed"]


async def test_a_failed_session_keeps_its_history_and_context() -> None:
    document = doc(
        [
            set_node("ok", {"done": True}, next="boom"),
            stage("boom", "Fail", next="end"),
            terminal("end"),
        ]
    )
    session = session_for(document, payload={"input": 1})
    result = await session.run()
    assert result.status is FAILED
    assert result.history[-1].type == "session_failed"
    assert result.history[-1].payload["error"]["type"] == "StageError"
    assert session.history == result.history
    assert dict(session.payload) == {"input": 1, "done": True}
    assert session.status is FAILED


async def test_a_condition_without_match_or_else_fails() -> None:
    document = doc([cond("pick", {"==": [{"var": "tier"}, "gold"]}, "end"), terminal("end")])
    result = await run(document, payload={"tier": "silver"})
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.ConditionError)
    assert result.error.node_id == "pick"
    assert "add an 'else'" in str(result.error)
    assert "condition node 'pick' ($.nodes[0]): none of its 1 conditions" in str(result.error)


async def test_a_condition_reads_the_branch_context() -> None:
    document = doc(
        [
            parallel("fan", ["set"], next="end"),
            set_node("set", {"flag": True}, next="check"),
            cond("check", {"var": "flag"}, "mark", else_="unmarked"),
            set_node("mark", {"marked": "yes"}),
            set_node("unmarked", {"marked": "no"}),
            terminal("end", "marked"),
        ]
    )
    result = await run(document)
    assert result.artifacts == {"marked": "yes"}


@pytest.mark.parametrize("kind", ["completed", "failed", "cancelled", "parallel"])
async def test_result_to_dict_is_json(kind: str) -> None:
    document = {
        "completed": fan_pipeline(),
        "failed": doc([stage("boom", "Fail", next="end"), terminal("end")]),
        "cancelled": hang_pipeline(),
        "parallel": doc(
            [
                parallel("fan", ["x", "y"], next="end", cancel_on_error=False),
                stage("x", "Fail"),
                stage("y", "Fail"),
                terminal("end"),
            ]
        ),
    }[kind]
    session = session_for(document)
    session.subscribe(
        lambda e: session.cancel() if e.type == "node_started" and e.node_id == "hang" else None
    )
    result = await session.run()
    assert result.status.value == ("failed" if kind == "parallel" else kind)
    data = result.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["status"] == result.status.value
    assert len(data["history"]) == len(result.history)
    if kind == "parallel":
        assert [e["type"] for e in data["error"]["errors"]] == ["StageError", "StageError"]
    if kind == "failed":
        assert data["error"]["node_id"] == "boom"
        assert data["error"]["causes"][0]["type"] == "ValueError"


@pytest.mark.parametrize("kind", ["completed", "failed", "cancelled"])
async def test_result_is_a_dict_or_none_never_a_string(kind: str) -> None:
    document = {
        "completed": doc([terminal("end", result={"answer": 42})]),
        "failed": doc([stage("boom", "Fail", next="end"), terminal("end")]),
        "cancelled": hang_pipeline(),
    }[kind]
    session = session_for(document)
    session.subscribe(
        lambda e: session.cancel() if e.type == "node_started" and e.node_id == "hang" else None
    )
    result = await session.run()
    if kind == "completed":
        assert result.result == {"answer": 42}
        assert type(result.result) is dict
    else:
        assert result.result is None
        assert result.artifacts == {}
    assert result.status.value == kind


# ------------------------------------------------------------- cancellation


async def test_cancel_before_run_ends_cancelled_with_no_task_left() -> None:
    session = session_for(hang_pipeline())
    session.cancel("not needed")
    before = live_tasks()
    result = await session.run()
    assert live_tasks() == before
    assert result.status is CANCELLED
    assert result.error is None
    assert result.history[-1].type == "session_cancelled"
    assert result.history[-1].payload["reason"] == "not needed"


async def test_cancel_before_run_runs_no_node() -> None:
    session = session_for(doc([cond("pick", True, "end"), terminal("end")]))
    session.cancel()
    result = await session.run()
    assert result.status is CANCELLED
    assert "node_started" not in types(result)
    # No node ran, so no step is counted (it said 1: the entry's, refused).
    assert result.history[-1].payload["steps"] == 0
    assert session.to_dict()["steps"] == 0


async def test_cancel_while_running_ends_cancelled_with_no_task_left() -> None:
    session = session_for(hang_pipeline())
    session.subscribe(
        lambda e: (
            session.cancel("stop") if (e.type, e.node_id) == ("node_started", "hang") else None
        )
    )
    before = live_tasks()
    result = await session.run()
    assert live_tasks() == before
    assert result.status is CANCELLED
    assert types(result, node_id="hang") == ["node_started", "node_cancelled"]
    assert "node_failed" not in types(result)
    assert result.history[-1].payload["reason"] == "stop"
    session.cancel()  # after the end: nothing happens
    assert session.status is CANCELLED


async def test_cancel_during_a_parallel_node_cancels_every_branch() -> None:
    document = doc(
        [
            parallel("fan", ["h1", "h2"], next="end"),
            stage("h1", "Hang"),
            stage("h2", "Hang"),
            terminal("end"),
        ]
    )
    session = session_for(document)
    started = anyio.Event()
    session.subscribe(
        lambda e: started.set() if (e.type, e.node_id) == ("node_started", "h2") else None
    )
    before = live_tasks()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await started.wait()
        session.cancel()
    assert live_tasks() == before
    assert session.status is CANCELLED
    history = session.history
    assert sorted(e.path for e in history if e.type == "branch_cancelled") == [
        "fan/h1",
        "fan/h2",
    ]
    assert "branch_failed" not in [e.type for e in history]


async def test_cancelling_the_task_that_awaits_run_reraises_and_is_recorded() -> None:
    session = session_for(hang_pipeline())
    started = anyio.Event()
    session.subscribe(
        lambda e: started.set() if (e.type, e.node_id) == ("node_started", "hang") else None
    )
    outcome: list[str] = []

    async def runner() -> None:
        try:
            await session.run()
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    before = live_tasks()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await started.wait()
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    assert live_tasks() == before
    assert session.status is CANCELLED
    assert session.history[-1].type == "session_cancelled"
    assert "the task running it was cancelled" in session.history[-1].payload["reason"]
    assert types_of(session, "hang") == ["node_started", "node_cancelled"]


async def test_a_timeout_around_run_cancels_the_session() -> None:
    session = session_for(hang_pipeline())
    with anyio.move_on_after(scaled(5)) as scope:
        await session.run()
    assert scope.cancelled_caught
    assert session.status is CANCELLED


def types_of(session: stageflow.Session, node_id: str) -> list[str]:
    return [e.type for e in session.history if e.node_id == node_id]


# -------------------------------------------------- defects of _session.py


async def test_a_failed_stage_cannot_change_the_context_through_its_arguments() -> None:
    registry = fake_registry()

    @registry.register("Mutate")
    async def mutate(ctx: stageflow.StageContext) -> None:
        ctx.arguments["items"].append("sneaked in")
        raise ValueError("and then fails")

    document = doc(
        [stage("mutate", "Mutate", arguments={"items": "items"}, next="end"), terminal("end")]
    )
    session = session_for(document, registry, payload={"items": [1]})
    result = await session.run()
    assert result.status is FAILED
    assert session.payload["items"] == [1]


async def test_a_branch_cannot_change_its_siblings_through_its_arguments() -> None:
    registry = fake_registry()

    @registry.register("Mutate")
    async def mutate(ctx: stageflow.StageContext) -> None:
        ctx.arguments["items"].append("from left")

    @registry.register("Read")
    async def read(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(scaled(1))
        return {"seen": list(ctx.arguments["items"])}

    document = doc(
        [
            parallel("fan", ["left", "right"], next="end"),
            stage("left", "Mutate", arguments={"items": "items"}),
            stage("right", "Read", arguments={"items": "items"}, outputs={"seen": "seen"}),
            terminal("end", "items", "seen"),
        ]
    )
    result = await run(document, payload={"items": [1]}, registry=registry)
    assert result.artifacts == {"items": [1], "seen": [1]}


async def test_outputs_are_stored_as_copies() -> None:
    registry = fake_registry()
    shared = ["cached"]

    @registry.register("Cached")
    async def cached(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"value": shared}

    document = doc(
        [
            stage("one", "Cached", outputs={"value": "p1"}, next="two"),
            stage("two", "Cached", outputs={"value": "p2"}, next="edit"),
            stage(
                "edit",
                "Set",
                config={"values": {"v": "changed"}},
                outputs={"v": "p1.0"},
                next="end",
            ),
            terminal("end", "p1", "p2"),
        ]
    )
    result = await run(document, registry=registry)
    assert result.artifacts == {"p1": ["changed"], "p2": ["cached"]}
    assert shared == ["cached"]


async def test_a_stage_whose_constructor_raises_fails_the_session() -> None:
    registry = fake_registry()

    @registry.register("Broken")
    class Broken(stageflow.BaseStage):
        def __init__(self) -> None:
            raise RuntimeError("cannot connect")

        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

    result = await run(doc([stage("b", "Broken", next="end"), terminal("end")]), registry=registry)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.StageError)


async def test_an_error_from_the_stage_api_names_the_node() -> None:
    registry = fake_registry()

    @registry.register("BadEmit")
    async def bad_emit(ctx: stageflow.StageContext) -> None:
        ctx.emit("progress", {"done": {1, 2}})

    result = await run(doc([stage("e", "BadEmit", next="end"), terminal("end")]), registry=registry)
    assert result.status is FAILED
    assert getattr(result.error, "node_id", None) == "e"


async def test_a_terminal_in_the_last_running_branch_ends_the_session_on_every_backend(
    anyio_backend_name: str,
) -> None:
    # On trio, every branch could have finished before the terminal's
    # cancellation was delivered; the parallel node must not merge then.
    document = doc(
        [
            parallel("fan", ["a"], next="join"),
            set_node("a", {"x": 1}, next="branch_end"),
            terminal("branch_end", "x", result={"from": "branch"}),
            terminal("join", "x", result={"from": "join"}),
        ]
    )
    session = session_for(document)
    result = await session.run()
    assert result.result == {"from": "branch"}
    assert "join" not in [e.node_id for e in result.history]
    assert "x" not in session.payload  # nothing merged after the session ended


async def test_result_to_dict_leaves_the_history_out_when_asked() -> None:
    result = await run(fan_pipeline())
    data = result.to_dict(history=False)
    assert "history" not in data
    assert data == {k: v for k, v in result.to_dict().items() if k != "history"}


def test_waiting_for_is_a_sorted_tuple_that_json_can_carry() -> None:
    result = stageflow.SessionResult(
        status=stageflow.SessionStatus.WAITING,
        result=None,
        artifacts={},
        error=None,
        history=(),
        waiting_for=frozenset({"b", "a"}),
    )
    assert result.waiting_for == ("a", "b")
    assert json.loads(json.dumps(result.waiting_for)) == ["a", "b"]
