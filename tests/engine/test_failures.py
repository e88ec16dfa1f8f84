"""Failure model: retries, timeouts, error edges, cancellation, limits (virtual time)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import trio
from conftest import live_tasks
from fakes import doc, fake_registry, load, map_node, parallel, stage, terminal, types
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import stageflow

pytestmark = pytest.mark.anyio

S = stageflow.SessionStatus


def flaky_registry(
    fail_times: int, exc: type[Exception] = ValueError
) -> tuple[stageflow.StageRegistry, list[Any]]:
    """A ``Flaky`` stage failing its first ``fail_times`` attempts.

    It logs (instance, attempt, virtual time) per call.
    """
    registry = fake_registry()
    calls: list[Any] = []

    @registry.register("Flaky")
    class Flaky(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            calls.append((self, ctx.attempt, anyio.current_time()))
            if ctx.attempt <= fail_times:
                raise exc(f"attempt {ctx.attempt}")
            return {"v": ctx.attempt}

    return registry, calls


def flaky_doc(retry: Mapping[str, Any] | None, **node: Any) -> dict[str, Any]:
    flaky = stage("f", "Flaky", next="end", outputs={"v": "v"})
    if retry is not None:
        flaky["retry"] = dict(retry)
    flaky.update(node)
    return doc([flaky, terminal("end", "v")])


async def run_with(
    document: Mapping[str, Any], registry: stageflow.StageRegistry, **kw: Any
) -> stageflow.SessionResult:
    return await stageflow.Session(load(document, registry), registry=registry, **kw).run()


@pytest.mark.trio
async def test_exact_backoff_schedule(autojump_clock: trio.testing.MockClock) -> None:
    registry, calls = flaky_registry(3)
    retry = {"attempts": 4, "delay": 1, "backoff": 2, "max_delay": 3}
    result = await run_with(flaky_doc(retry), registry)
    assert result.status is S.COMPLETED
    assert result.artifacts == {"v": 4}
    start = calls[0][2]
    assert [round(t - start, 6) for _, _, t in calls] == [0, 1, 3, 6]
    retries = [e.payload for e in result.history if e.type == "node_retrying"]
    assert [(r["attempt"], r["delay"]) for r in retries] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [r["error"]["causes"][0]["message"] for r in retries] == [
        "attempt 1",
        "attempt 2",
        "attempt 3",
    ]


@pytest.mark.trio
async def test_seeded_jitter_is_reproducible_and_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retry = {"attempts": 5, "delay": 10, "backoff": 1, "jitter": 0.5}
    delays = []
    for _ in range(2):
        registry, _ = flaky_registry(4)
        result = await run_with(flaky_doc(retry), registry, seed=7)
        delays.append([e.payload["delay"] for e in result.history if e.type == "node_retrying"])
    assert delays[0] == delays[1]
    assert all(5 <= d <= 15 for d in delays[0])
    assert len(set(delays[0])) > 1


@pytest.mark.trio
async def test_jitter_spreads_a_capped_delay_around_max_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # pipeline-format.md: min(max_delay, delay * backoff^(n-1)), times the
    # jitter factor: max_delay caps the delay before jitter spreads it.
    retry = {"attempts": 5, "delay": 10, "backoff": 3, "max_delay": 10, "jitter": 0.5}
    registry, _ = flaky_registry(4)
    result = await run_with(flaky_doc(retry), registry, seed=7)
    delays = [e.payload["delay"] for e in result.history if e.type == "node_retrying"]
    assert all(5 <= d <= 15 for d in delays)
    assert any(d > 10 for d in delays)


async def test_fresh_instance_per_attempt() -> None:
    registry, calls = flaky_registry(2)
    result = await run_with(flaky_doc({"attempts": 3}), registry)
    assert result.status is S.COMPLETED
    assert [attempt for _, attempt, _ in calls] == [1, 2, 3]
    assert len({id(instance) for instance, _, _ in calls}) == 3  # all kept alive by calls


async def test_attempts_exhausted_fails_with_last_error() -> None:
    registry, _ = flaky_registry(5)
    result = await run_with(flaky_doc({"attempts": 2}), registry)
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.StageError)
    assert result.error.attempt == 2
    assert "attempt 2 of 2" in str(result.error)
    assert isinstance(result.error.__cause__, ValueError)


@pytest.mark.parametrize(
    ("raised", "retried"), [(KeyError, True), (IndexError, True), (ValueError, False)]
)
async def test_retry_matches_by_class_hierarchy(raised: type[Exception], retried: bool) -> None:
    registry, calls = flaky_registry(1, raised)
    result = await run_with(flaky_doc({"attempts": 2, "retry_on": ["LookupError"]}), registry)
    assert len(calls) == (2 if retried else 1)
    assert result.status is (S.COMPLETED if retried else S.FAILED)


async def test_retry_defaults_come_from_the_stage_spec_and_node_overrides() -> None:
    registry = fake_registry()
    calls: list[int] = []

    @registry.register("Spec", spec=stageflow.StageSpec(retry=stageflow.RetryPolicy(attempts=3)))
    async def spec_stage(ctx: stageflow.StageContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("no")

    base = doc([stage("s", "Spec", next="end"), terminal("end")])
    await run_with(base, registry)
    assert calls == [1, 2, 3]
    calls.clear()
    base["nodes"][0]["retry"] = {"attempts": 1}
    await run_with(base, registry)
    assert calls == [1]


async def test_failed_attempt_writes_nothing() -> None:
    registry = fake_registry()

    @registry.register("HalfBad")
    async def half_bad(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"good": 1, "bad": {1, 2}}

    document = doc(
        [stage("h", "HalfBad", next="end", outputs={"good": "good", "bad": "bad"}), terminal("end")]
    )
    session = stageflow.Session(load(document, registry), registry=registry, payload={"keep": True})
    result = await session.run()
    assert isinstance(result.error, stageflow.StageOutputError)
    assert "'bad'" in str(result.error)
    assert dict(session.payload) == {"keep": True}


async def test_a_stage_returning_no_dict_is_told_what_it_returned_in_json_names() -> None:
    # The message said "returned a int" and "returned a list".
    registry = fake_registry()

    @registry.register("Number")
    async def number(ctx: stageflow.StageContext) -> Any:
        return ctx.config["value"]

    for value, found in ((1, "returned an integer;"), ([1], "returned an array;")):
        document = doc([stage("n", "Number", config={"value": value}, next="end"), terminal()])
        result = await run_with(document, registry)
        assert isinstance(result.error, stageflow.StageOutputError)
        assert found in str(result.error)


async def test_a_stage_returning_none_where_outputs_are_mapped_says_so() -> None:
    # The message used to say "returned a NoneType; a stage returns a dict of
    # outputs (or None)": None named as both the fault and the remedy.
    registry = fake_registry()

    @registry.register("Nothing")
    async def nothing(ctx: stageflow.StageContext) -> None:
        return None

    document = doc([stage("n", "Nothing", next="end", outputs={"v": "v"}), terminal("end")])
    result = await run_with(document, registry)
    assert isinstance(result.error, stageflow.StageOutputError)
    assert str(result.error) == (
        "stage 'Nothing' at node 'n' returned None, but the node maps its outputs 'v'; "
        "return a dict with them, or remove them from the node's 'outputs'"
    )


@pytest.mark.trio_only
async def test_node_timeout_is_typed_and_a_timeout_error() -> None:
    document = doc([stage("slow", "Set", next="end", config={"delay": 10}), terminal("end")])
    document["nodes"][0]["timeout"] = 2
    result = await run_with(document, fake_registry())
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.NodeTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert "'slow' ($.nodes[0]) timed out after 2 s on attempt 1 of 1" in str(result.error)


@pytest.mark.trio_only
@pytest.mark.parametrize(
    ("kind", "said"),
    [
        (
            "parallel",
            "parallel node 'n' ($.nodes[0]) timed out after 2 s; its branches were cancelled. "
            'Raise "timeout" or make the branches faster',
        ),
        (
            "map",
            "map node 'n' ($.nodes[0]) timed out after 2 s with 0 of 2 items done; "
            'raise "timeout"',
        ),
        (
            "subpipeline",
            "subpipeline node 'n' ($.nodes[0]) timed out after 2 s; raise \"timeout\" or make "
            "'child' faster",
        ),
    ],
)
async def test_a_node_over_its_own_timeout_says_where_what_was_cut_and_the_fix(
    kind: str, said: str
) -> None:
    slow = stage("slow", "Set", config={"delay": 10})
    if kind == "subpipeline":
        child = {"entry": "slow", "nodes": [{**slow, "next": "done"}, terminal("done")]}
        node = {"id": "n", "type": "subpipeline", "pipeline": "child", "next": "end"}
        document = doc([node, terminal("end")], subpipelines={"child": child})
    else:
        node = (
            parallel("n", ["slow"], next="end")
            if kind == "parallel"
            else map_node("n", "slow", {}, next="end")
        )
        document = doc([node, slow, terminal("end")])
    node["timeout"] = 2
    result = await run_with(document, fake_registry(), payload={"items": [1, 2]})
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.NodeTimeoutError)
    assert str(result.error) == said
    assert (result.error.node_id, result.error.timeout, result.error.attempt) == ("n", 2.0, 1)


@pytest.mark.trio_only
async def test_timeout_is_retried_when_asked() -> None:
    registry = fake_registry()
    calls: list[int] = []

    @registry.register("SlowThenFast")
    async def slow_then_fast(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.sleep_forever()
        return {}

    document = doc([stage("s", "SlowThenFast", next="end"), terminal("end")])
    document["nodes"][0].update(timeout=1, retry={"attempts": 2, "retry_on": ["TimeoutError"]})
    result = await run_with(document, registry)
    assert result.status is S.COMPLETED
    assert calls == [1, 2]


@pytest.mark.trio_only
async def test_wait_for_input_does_not_count_against_node_timeout() -> None:
    registry = fake_registry()

    @registry.register("Patient")
    async def patient(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"got": await ctx.wait_input("go")}

    document = doc(
        [stage("p", "Patient", next="end", outputs={"got": "got"}), terminal("end", "got")]
    )
    document["nodes"][0]["timeout"] = 0.5
    session = stageflow.Session(load(document, registry), registry=registry)
    async with anyio.create_task_group() as tg:

        async def send_late() -> None:
            await anyio.sleep(2)  # four times the node timeout, spent waiting for input
            session.send_input("go", 1)

        tg.start_soon(send_late)
        result = await session.run()
    assert result.status is S.COMPLETED
    assert result.artifacts == {"got": 1}


async def test_error_edge_routes_matching_failure_with_description() -> None:
    document = doc(
        [
            stage("bad", "Fail", next="end", config={"message": "broken"}),
            stage("handler", "Echo", arguments={"err": "err"}, outputs={"err": "seen"}, next="end"),
            terminal("end", "seen"),
        ]
    )
    document["nodes"][0]["on_error"] = [
        {"errors": ["KeyError"], "next": "end"},
        {"errors": ["ValueError"], "next": "handler", "error_path": "err"},
    ]
    result = await run_with(document, fake_registry())
    assert result.status is S.COMPLETED
    seen = result.artifacts["seen"]
    assert seen["type"] == "StageError"
    assert seen["node_id"] == "bad"
    assert seen["attempt"] == 1
    assert seen["causes"] == [{"type": "ValueError", "message": "broken"}]
    assert types(result, node_id="bad") == ["node_started", "node_failed", "error_routed"]


async def test_fallback_handles_any_error() -> None:
    document = doc(
        [stage("bad", "Fail", next="end"), stage("fb", "Set", next="end"), terminal("end", "error")]
    )
    document["nodes"][0]["fallback"] = "fb"
    result = await run_with(document, fake_registry())
    assert result.status is S.COMPLETED
    assert result.artifacts["error"]["type"] == "StageError"


async def test_error_edge_that_does_not_match_fails_the_session() -> None:
    document = doc([stage("bad", "Fail", next="end"), terminal("end"), terminal("other")])
    document["nodes"][0]["on_error"] = [{"errors": ["KeyError"], "next": "other"}]
    result = await run_with(document, fake_registry())
    assert result.status is S.FAILED


async def test_error_edge_on_a_parallel_node() -> None:
    document = doc(
        [
            parallel(
                "fan",
                ["ok", "bad"],
                next="end",
                on_error=[{"errors": ["ValueError"], "next": "recover"}],
            ),
            stage("ok", "Set", config={"values": {"v": 1}}, outputs={"v": "v"}),
            stage("bad", "Fail"),
            stage("recover", "Set", next="end"),
            terminal("end", "v", "error"),
        ]
    )
    result = await run_with(document, fake_registry())
    assert result.status is S.COMPLETED
    # The failed parallel node merged nothing; the handler saw the error.
    assert result.artifacts["v"] is None
    assert result.artifacts["error"]["node_id"] == "bad"


async def test_error_edge_targets_are_validated() -> None:
    document = doc([stage("bad", "Fail", next="end"), terminal("end")])
    document["nodes"][0]["on_error"] = [{"next": "nowhere"}]
    document["nodes"][0]["fallback"] = "gone"
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(document)
    assert {p.location for p in info.value.problems} == {
        "$.nodes[0].on_error[0].next",
        "$.nodes[0].fallback",
    }


@pytest.mark.trio_only
async def test_cancel_mid_fanout_cancels_every_branch_and_leaves_no_task() -> None:
    document = doc(
        [
            parallel("fan", ["a", "b", "c"], next="end"),
            *(stage(x, "Hang") for x in "abc"),
            terminal("end"),
        ]
    )
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    before = live_tasks()
    async with anyio.create_task_group() as tg:

        async def cancel_soon() -> None:
            await anyio.sleep(5)
            session.cancel("user left")

        tg.start_soon(cancel_soon)
        result = await session.run()
    assert live_tasks() == before
    assert result.status is S.CANCELLED
    assert result.result is None
    cancelled = sorted(e.path for e in result.history if e.type == "branch_cancelled")
    assert cancelled == ["fan/a", "fan/b", "fan/c"]
    assert "node_failed" not in types(result)
    assert result.history[-1].type == "session_cancelled"
    assert result.history[-1].payload["reason"] == "user left"


@pytest.mark.trio_only
async def test_cancelling_the_task_that_runs_the_session_reraises() -> None:
    document = doc([stage("h", "Hang", next="end"), terminal("end")])
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    with anyio.move_on_after(3) as scope:
        await session.run()
    assert scope.cancelled_caught
    assert session.status is S.CANCELLED
    assert session.history[-1].type == "session_cancelled"


@pytest.mark.trio_only
async def test_cleanup_runs_shielded_after_cancellation() -> None:
    registry = fake_registry()
    cleaned: list[str] = []

    @registry.register("Holder")
    class Holder(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            await anyio.sleep_forever()

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            await anyio.sleep(1)  # cleanup may await, despite the cancellation
            cleaned.append(outcome)

    document = doc([stage("h", "Holder", next="end"), terminal("end")])
    session = stageflow.Session(load(document, registry), registry=registry)
    async with anyio.create_task_group() as tg:

        async def cancel_soon() -> None:
            await anyio.sleep(1)
            session.cancel()

        tg.start_soon(cancel_soon)
        result = await session.run()
    assert result.status is S.CANCELLED
    assert cleaned == ["cancelled"]


@pytest.mark.trio_only
async def test_cleanup_that_hangs_is_bounded() -> None:
    registry = fake_registry()

    @registry.register("BadCleanup")
    class BadCleanup(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            await anyio.sleep_forever()

    document = doc(
        [stage("b", "BadCleanup", next="end"), terminal("end")], limits={"cleanup_timeout": 1}
    )
    result = await run_with(document, registry)
    assert result.status is S.COMPLETED
    [failed] = [e for e in result.history if e.type == "cleanup_failed"]
    # The error says what stopped it (it was a bare TimeoutError, message '').
    assert failed.payload["error"]["type"] == "TimeoutError"
    assert failed.payload["error"]["message"] == (
        "cleanup() of stage 'BadCleanup' at node 'b' took longer than "
        "limits.cleanup_timeout (1 s) and was stopped; make it faster, or raise the limit"
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cleanup_runs_to_its_end_through_an_asyncio_task_cancel() -> None:
    # anyio's shield does not hold off asyncio's own Task.cancel() (what
    # asyncio.timeout and a TaskGroup shutting down use): the cleanup was
    # stopped at its first await, and the stage's resources were never released.
    registry = fake_registry()
    started = asyncio.Event()
    cleaned: list[str] = []

    @registry.register("Holder")
    class Holder(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            started.set()
            await asyncio.sleep(0)  # the task running the session is cancelled here
            cleaned.append(outcome)

    document = doc([stage("h", "Holder", next="end"), terminal("end")])
    session = stageflow.Session(load(document, registry), registry=registry)
    task = asyncio.create_task(session.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["succeeded"]
    assert task.cancelled()  # the cancellation went up after the cleanup
    assert session.status is S.CANCELLED
    assert [e.type for e in session.history][-2:] == ["node_cancelled", "session_cancelled"]


async def test_a_cleanups_own_cancelled_error_is_a_cleanup_failure() -> None:
    # A CancelledError the cleanup raised though nothing cancelled it (a
    # future of its own that was cancelled) went up as the run's
    # cancellation: run() raised it and the session ended cancelled.
    registry = fake_registry()

    @registry.register("Holder")
    class Holder(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            raise asyncio.CancelledError("a future of its own was cancelled")

    result = await run_with(doc([stage("h", "Holder", next="end"), terminal("end")]), registry)
    assert result.status is S.COMPLETED
    [failed] = [e for e in result.history if e.type == "cleanup_failed"]
    assert failed.node_id == "h"
    assert failed.payload["outcome"] == "succeeded"
    assert failed.payload["error"]["type"] == "CancelledError"


async def test_step_limit_ends_a_loop() -> None:
    document = doc([stage("a", "Set", next="b"), stage("b", "Set", next="a"), terminal("end")])
    # A way out that is never taken: a loop with none is refused at load time.
    document["nodes"][1]["fallback"] = "end"
    document["limits"] = {"max_steps": 7}
    result = await run_with(document, fake_registry())
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_steps"
    assert types(result).count("node_started") == 7


async def test_history_limit() -> None:
    document = doc(
        [
            stage("a", "Set", next="b"),
            {**stage("b", "Set", next="a"), "fallback": "end"},
            terminal("end"),
        ],
        limits={"max_history": 20},
    )
    result = await run_with(document, fake_registry())
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_history"
    assert len(result.history) <= 22  # the limit plus the failure and the final event


async def test_limit_errors_are_not_routed_by_error_edges() -> None:
    document = doc(
        [
            stage(
                "a",
                "Set",
                next="a",
            ),
            terminal("end"),
        ],
        limits={"max_steps": 3},
    )
    document["nodes"][0]["fallback"] = "end"
    result = await run_with(document, fake_registry())
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)


@pytest.mark.trio_only
async def test_session_deadline_times_out() -> None:
    document = doc([stage("h", "Hang", next="end"), terminal("end")], limits={"timeout": 30})
    result = await run_with(document, fake_registry())
    assert result.status is S.TIMED_OUT
    assert isinstance(result.error, stageflow.SessionTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert result.history[-1].type == "session_timed_out"


async def test_depth_limit() -> None:
    document = doc(
        [
            parallel("p1", ["p2"], next="end"),
            parallel("p2", ["p3"]),
            parallel("p3", ["s"]),
            stage("s", "Set"),
            terminal("end"),
        ],
        limits={"max_depth": 2},
    )
    result = await run_with(document, fake_registry())
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert result.error.limit == "max_depth"


@pytest.mark.parametrize(
    ("nodes", "final"),
    [
        ([stage("a", "Set", next="end"), terminal("end")], "session_completed"),
        ([stage("a", "Fail", next="end"), terminal("end")], "session_failed"),
    ],
)
async def test_history_ends_with_a_final_event(nodes: list[dict[str, Any]], final: str) -> None:
    result = await run_with(doc(nodes), fake_registry())
    assert [e.type for e in result.history].count(final) == 1
    assert result.history[-1].type == final
    other = {"session_completed", "session_failed", "session_cancelled", "session_timed_out"} - {
        final
    }
    assert not other & set(types(result))


async def test_error_is_json_serializable() -> None:
    import json

    result = await run_with(doc([stage("a", "Fail", next="end"), terminal("end")]), fake_registry())
    text = json.dumps(result.to_dict())
    assert json.loads(text)["error"]["type"] == "StageError"


async def test_cancel_from_a_hook_stops_a_run_whose_stages_never_await() -> None:
    document = doc([stage("a", "Echo", next="b"), stage("b", "Echo", next="end"), terminal("end")])
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry)

    def cancel_after_a(event: stageflow.Event) -> None:
        if event.type == "node_finished" and event.node_id == "a":
            session.cancel("enough")

    session.subscribe(cancel_after_a)
    result = await session.run()
    assert result.status is S.CANCELLED
    assert "b" not in [e.node_id for e in result.history if e.type == "node_started"]


@pytest.mark.parametrize("shape", ["simple", "retried", "map body"])
async def test_another_nodes_error_raised_by_a_stage_is_this_nodes_failure(shape: str) -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Outer")
    async def outer(ctx: stageflow.StageContext) -> None:
        # As a stage re-raising the error of a session it ran itself.
        raise stageflow.StageError("inner failure", node_id="inner", stage="Inner", attempt=1)

    node = stage("outer", "Outer")
    if shape == "retried":
        node["retry"] = {"attempts": 2}
    if shape == "map body":
        nodes = [
            {"id": "each", "type": "map", "items": "xs", "body": "outer", "next": "end"},
            node,
            terminal(),
        ]
    else:
        nodes = [{**node, "next": "end"}, terminal()]
    result = await run_with(doc(nodes), registry, payload={"xs": [1]})
    if shape == "map body":
        assert isinstance(result.error, stageflow.MapError)
        [(_, item)] = result.error.failures
        assert (item["type"], item["node_id"], item["stage"]) == ("StageError", "outer", "Outer")
        assert item["causes"][0]["message"] == "inner failure"
        return
    error = result.error
    assert isinstance(error, stageflow.StageError)
    assert (error.node_id, error.stage) == ("outer", "Outer")
    assert error.attempt == (2 if shape == "retried" else 1)
    assert isinstance(error.__cause__, stageflow.StageError)
    assert error.__cause__.node_id == "inner"


async def test_error_routed_names_the_handler_index() -> None:
    document = doc([stage("bad", "Fail", next="end"), terminal("end"), terminal("other")])
    document["nodes"][0]["on_error"] = [{"errors": ["KeyError"], "next": "other"}, {"next": "end"}]
    result = await run_with(document, fake_registry())
    [routed] = [e for e in result.history if e.type == "error_routed"]
    assert routed.payload == {"next": "end", "error_path": "error", "handler": 1}


async def test_an_error_edge_that_cannot_write_its_error_path_says_so() -> None:
    document = doc([stage("bad", "Fail", next="end", config={"message": "broken"}), terminal()])
    document["nodes"][0]["fallback"] = "end"
    document["nodes"][0]["on_error"] = [
        {"errors": ["ValueError"], "next": "end", "error_path": "x.y"}
    ]
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry, payload={"x": 1})
    result = await session.run()
    assert result.status is S.FAILED
    error = result.error
    assert type(error) is stageflow.NodeError
    assert error.node_id == "bad"
    assert "($.nodes[0].on_error[0])" in str(error)
    assert "'x.y'" in str(error)
    # The failure the edge was to handle is kept, and the context is untouched.
    assert isinstance(error.__cause__, stageflow.StageError)
    assert str(error.__cause__.__cause__) == "broken"
    assert session.payload == {"x": 1}


class _RefusingRootSpans(SpanProcessor):
    """A span processor whose ``on_start`` raises for the run's own span."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name.startswith("run "):
            raise RuntimeError("span processor bug")


async def test_a_run_whose_root_span_cannot_start_ends_failed() -> None:
    # run() raised, and the session stayed "running" with no run: it could
    # never run, end or be cancelled again, and its snapshot said running.
    provider = TracerProvider()
    provider.add_span_processor(_RefusingRootSpans())
    registry = fake_registry()
    document = doc([stage("s", "Set", next="end", config={"values": {}}), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    with pytest.raises(RuntimeError, match="span processor bug"):
        await session.run()
    assert session.status is stageflow.SessionStatus.FAILED
    snapshot = session.to_dict()
    assert snapshot["status"] == "failed"
    assert snapshot["outcome"]["error"]["message"].startswith("internal error: RuntimeError")
    restored = stageflow.Session.from_dict(snapshot, registry=registry)
    assert restored.status is stageflow.SessionStatus.FAILED


_CHILD = {"entry": "t", "nodes": [{"id": "t", "type": "terminal", "result": {"ok": True}}]}


def _set(node_id: str, values: Mapping[str, Any], outputs: Mapping[str, str]) -> dict[str, Any]:
    node = stage(node_id, "Set", outputs=outputs)
    node["config"] = {"values": dict(values)}
    return node


@pytest.mark.parametrize(
    ("node", "body", "error"),
    [
        (
            {**_set("n", {"a": 1, "b": 2}, {"a": "written", "b": "scalar.x"}), "next": "end"},
            [],
            "StageOutputError",
        ),
        (
            {**_set("n", {"a": 1, "b": [2]}, {"a": "written", "b": "scalar.x"}), "next": "end"},
            [],
            "StageOutputError",
        ),
        (
            {
                "id": "n",
                "type": "subpipeline",
                "pipeline": "child",
                "result_output": "written",
                "artifacts": {"ok": "scalar.x"},
                "next": "end",
            },
            [],
            "SubpipelineError",
        ),
        (
            {
                "id": "n",
                "type": "map",
                "items": "lists",
                "body": "item_body",
                "collect": {"a": "written", "b": "scalar.x"},
                "next": "end",
            },
            [_set("item_body", {"a": 1, "b": 2}, {"a": "a", "b": "b"})],
            "MapError",
        ),
    ],
    ids=["stage, scalar outputs", "stage, a list output", "subpipeline", "map"],
)
async def test_a_node_whose_later_output_cannot_be_written_writes_none(
    node: dict[str, Any], body: list[dict[str, Any]], error: str
) -> None:
    # The outputs were written one by one: those before the path that crosses
    # a scalar stayed in the context, and the error edge ran with them there.
    # A stage's failure was a StageError, not the documented StageOutputError.
    child = {**_CHILD, "nodes": [{**_CHILD["nodes"][0], "artifacts": ["ok"]}]}
    recover = {"id": "recover", "type": "terminal", "artifacts": ["error.type"]}
    document = doc(
        [{**node, "fallback": "recover"}, *body, recover, terminal()],
        subpipelines={"child": child},
    )
    registry = fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"scalar": 3, "lists": [[1]]}
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"error.type": error}
    assert "written" not in session.to_dict()["position"]["context"]


async def test_the_default_retry_on_retries_a_broken_output_contract_and_a_timeout() -> None:
    # docs/pipeline-format.md: with the default retry_on, a StageSchemaError
    # (strict) and a NodeTimeoutError are retried like any other failure.
    registry = fake_registry()
    calls = {"Shape": 0, "Slow": 0}
    outputs = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}

    @registry.register("Shape", spec=stageflow.StageSpec(outputs=outputs))
    async def shape(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        calls["Shape"] += 1
        return {"x": "not yet"} if ctx.attempt == 1 else {"x": 1}

    @registry.register("Slow")
    async def slow(ctx: stageflow.StageContext) -> None:
        calls["Slow"] += 1
        if ctx.attempt == 1:
            await anyio.sleep(10)

    retry = {"retry": {"attempts": 2}}
    document = doc(
        [
            {**stage("shape", "Shape", outputs={"x": "x"}, next="slow"), **retry},
            {**stage("slow", "Slow", next="end"), **retry, "timeout": 0.01},
            terminal("end", "x"),
        ],
        validate_events="strict",
    )
    result = await run_with(document, registry)
    assert result.status is S.COMPLETED, result.error
    assert calls == {"Shape": 2, "Slow": 2}
    retried = [e.payload["error"]["type"] for e in result.history if e.type == "node_retrying"]
    assert retried == ["StageSchemaError", "NodeTimeoutError"]
