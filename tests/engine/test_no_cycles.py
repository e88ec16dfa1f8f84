"""A run leaves no reference cycle: a session its caller drops is freed at once.

The run is its own stage runtime, and the main path's frame and the stage
attempt in flight refer to each other and to the run. Left so when the run
ends, a finished, suspended or cancelled session would be freed only by
Python's cyclic collector (its state, history and context with it), and every
run's objects would count toward the collector's next pass, which walks every
session a service holds ("paused session" benchmark rows). Each case runs
once to warm caches, then once with the collector off; what reference
counting did not free is then found by a collection that saves it.

A failed session too: its error's tracebacks held the engine's frames and
the stage's (whose context reaches the run); the run leaves its own frames
out of them and lets go of the session's state, and the stage's frames stay,
with their locals. A failure routed to an error edge leaves the engine's
frames out of its tracebacks too, once its node has reported it, and so do
the failures of branches and map items that their node outlives or does not
raise (tolerated, losers of an ``any`` race, passed over by a timeout).

Not covered, and left to the collector: on asyncio a
branch, a map item or a task of a stage's own task group torn down
mid-stage (anyio's task-done callback keeps the
task's ``CancelledError`` in a local of a frame of that error's own
traceback, a cycle in anyio 4.16 whose traceback reaches the run's frames).
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import anyio
import pytest
import sniffio
from fakes import doc, fake_registry, map_node, parallel, stage, terminal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow._engine import _run

pytestmark = pytest.mark.anyio

Scenario = Callable[[], Awaitable[None]]


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Await")
    async def await_go(ctx: Any) -> dict[str, Any]:
        return {"v": await ctx.wait_input("go")}

    @registry.register("Nap")
    async def nap(ctx: Any) -> dict[str, Any]:
        await ctx.sleep(3600)
        return {"v": "slept"}

    @registry.register("AwaitTwo")
    async def await_two(ctx: Any) -> dict[str, Any]:
        got: dict[str, Any] = {}

        async def take(key: str) -> None:
            got[key] = await ctx.wait_input(key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "a")
            tg.start_soon(take, "b")
        return {"v": got}

    @registry.register("Double")
    async def double(ctx: Any) -> dict[str, Any]:
        return {"out": ctx.arguments["item"] * 2}

    @registry.register("FailOrAwait")
    async def fail_or_await(ctx: Any) -> dict[str, Any]:
        if ctx.arguments["item"] == 1:
            raise ValueError("item 1 failed")
        return {"v": await ctx.wait_input("go")}

    @registry.register("Interrupt")
    async def interrupt(ctx: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    @registry.register("FailingClass")
    class FailingClass(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
            raise ValueError("a stage class failed")

    return registry


REGISTRY = _registry()

WAITING = stageflow.Pipeline.from_dict(
    doc([stage("wait", "Await", outputs={"v": "v"}, next="end"), terminal("end", "v")]),
    registry=REGISTRY,
)

EVERY_KIND = stageflow.Pipeline.from_dict(
    doc(
        [
            stage("first", "Set", config={"values": {"flag": True}}, outputs={"flag": "flag"},
                  next="choose"),
            {
                "id": "choose",
                "type": "condition",
                "conditions": [{"if": {"var": "flag"}, "then": "fan"}],
                "else": "end",
            },
            parallel("fan", ["a", "b"], next="each"),
            stage("a", "Set", config={"values": {"a": 1}}, outputs={"a": "a"}),
            stage("b", "Set", config={"values": {"b": 2}}, outputs={"b": "b"}),
            map_node("each", "double", {"out": "outs"}, next="call"),
            stage("double", "Double", arguments={"item": "item"}, outputs={"out": "out"}),
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "inner",
                "artifacts": {"v": "v"},
                "next": "end",
            },
            terminal("end", "a", "b", "outs", "v"),
        ],
        subpipelines={
            "inner": {
                "entry": "s",
                "nodes": [
                    stage("s", "Set", config={"values": {"v": 7}}, outputs={"v": "v"}, next="t"),
                    terminal("t", "v"),
                ],
            }
        },
    ),
    registry=REGISTRY,
)  # fmt: skip


def _failing_subpipeline(**edge: str) -> dict[str, Any]:
    """A subpipeline node whose one stage fails, then ``end`` (``edge``: its error edge)."""
    return doc(
        [
            {"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "end", **edge},
            terminal("end"),
        ],
        subpipelines={
            "inner": {"entry": "f", "nodes": [stage("f", "Fail", next="t"), terminal("t")]}
        },
    )


# A wait in a subpipeline, in both branches of a parallel node, in each item of a map.
NESTED_WAITS = {
    "subpipeline": doc(
        [
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "inner",
                "artifacts": {"v": "v"},
                "next": "end",
            },
            terminal("end", "v"),
        ],
        subpipelines={
            "inner": {
                "entry": "w",
                "nodes": [stage("w", "Await", outputs={"v": "v"}, next="t"), terminal("t", "v")],
            }
        },
    ),
    "parallel": doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Await", outputs={"v": "a"}),
            stage("b", "Await", outputs={"v": "b"}),
            terminal("end", "a", "b"),
        ]
    ),
    "map": doc(
        [
            map_node("each", "w", {"v": "vs"}, next="end"),
            stage("w", "Await", outputs={"v": "v"}),
            terminal("end", "vs"),
        ]
    ),
    # On trio the wait raises RunSuspended: in a sleep, and in a task group
    # of the stage's own (out of which it comes in an exception group).
    "sleep": doc([stage("nap", "Nap", outputs={"v": "v"}, next="end"), terminal("end", "v")]),
    "task_group": doc(
        [stage("two", "AwaitTwo", outputs={"v": "v"}, next="end"), terminal("end", "v")]
    ),
    # A branch or an item that failed while another waits: the node keeps
    # the failure (a snapshot describes it) as the run is torn down.
    "parallel_with_a_failed_branch": doc(
        [
            parallel("fan", ["a", "b"], next="end", cancel_on_error=False),
            stage("a", "Fail"),
            stage("b", "Await", outputs={"v": "b"}),
            terminal("end", "b"),
        ]
    ),
    "map_with_a_failed_item": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end", max_failures=1, concurrency=2),
            stage("f", "FailOrAwait", arguments={"item": "item"}, outputs={"v": "v"}),
            terminal("end", "vs"),
        ]
    ),
}

# Positions torn down mid-stage under a node whose frame then went on: the
# losing branch of an ``any`` race; a stage or the branches of a parallel node
# past their timeout, routed to an error edge; a branch cancelled by a
# terminal reached in its sibling, in a subpipeline the run then leaves.
TORN_DOWN = {
    "any_race": doc(
        [
            parallel("fan", ["a", "b"], next="end", policy="any"),
            stage("a", "Set", config={"values": {"a": 1}}, outputs={"a": "a"}),
            stage("b", "Hang"),
            terminal("end", "a"),
        ]
    ),
    "stage_timeout_routed": doc(
        [
            {**stage("slow", "Hang", next="end"), "timeout": 0.05, "fallback": "end"},
            terminal("end"),
        ]
    ),
    "parallel_timeout_routed": doc(
        [
            parallel("fan", ["a", "b"], next="end", timeout=0.05, fallback="end"),
            stage("a", "Set"),
            stage("b", "Hang"),
            terminal("end"),
        ]
    ),
    # A stage's failure routed to its error edge: the session completes.
    "stage_failure_routed": doc(
        [{**stage("a", "Fail", next="end"), "fallback": "end"}, terminal("end")]
    ),
    # A branch's, a map item's and a subpipeline's failure routed to the
    # node's error edge: the session completes.
    "branch_failure_routed": doc(
        [
            parallel("fan", ["a", "b"], next="end", fallback="end"),
            stage("a", "Set"),
            stage("b", "Fail"),
            terminal("end"),
        ]
    ),
    "map_item_failure_routed": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end", fallback="end"),
            stage("f", "Fail", outputs={"v": "v"}),
            terminal("end"),
        ]
    ),
    "subpipeline_failure_routed": _failing_subpipeline(fallback="end"),
    # Failures a node outlives or does not chain: map items' within its
    # tolerance; past it, all but the first (the MapError's cause), here
    # routed; a branch's before another won an ``any`` race; a branch's
    # before the node's timeout, routed. The session completes.
    "map_item_failures_tolerated": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end", max_failures=2),
            stage("f", "Fail", outputs={"v": "v"}),
            terminal("end"),
        ]
    ),
    "map_item_failures_past_tolerance_routed": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end", max_failures=1, fallback="end"),
            stage("f", "Fail", outputs={"v": "v"}),
            terminal("end"),
        ]
    ),
    "branch_failure_in_an_any_race": doc(
        [
            parallel("fan", ["a", "b"], next="end", policy="any"),
            stage("a", "Fail"),
            stage("b", "Set", config={"delay": 1}),
            terminal("end"),
        ]
    ),
    "branch_failure_before_a_timeout_routed": doc(
        [
            parallel(
                "fan", ["a", "b"], next="end", cancel_on_error=False, timeout=0.05, fallback="end"
            ),
            stage("a", "Fail"),
            stage("b", "Hang"),
            terminal("end"),
        ]
    ),
    "terminal_in_a_subpipeline_branch": doc(
        [
            {"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "end"},
            terminal("end"),
        ],
        subpipelines={
            "inner": {
                "entry": "fan",
                "nodes": [
                    parallel("fan", ["a", "b"], next="joined"),
                    stage("a", "Set", next="t"),
                    stage("b", "Hang"),
                    terminal("t"),
                    terminal("joined"),
                ],
            }
        },
    ),
}


# A session that fails (no error edge takes the failure): its error, kept in
# the session and its result, holds the tracebacks of the engine's frames and
# of the stage's (which holds its context).
FAILING = {
    "stage": doc([stage("a", "Fail", next="end"), terminal("end")]),
    "stage_class": doc([stage("a", "FailingClass", next="end"), terminal("end")]),
    "retried": doc([{**stage("a", "Fail", next="end"), "retry": {"attempts": 2}}, terminal("end")]),
    "timeout": doc([{**stage("a", "Hang", next="end"), "timeout": 0.05}, terminal("end")]),
    "step_limit": doc(
        [stage("a", "Set", next="b"), stage("b", "Set", next="end"), terminal("end")],
        limits={"max_steps": 1},
    ),
    "parallel": doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Set"),
            stage("b", "Fail"),
            terminal("end"),
        ]
    ),
    "map": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end"),
            stage("f", "Fail", outputs={"v": "v"}),
            terminal("end"),
        ]
    ),
    "subpipeline": _failing_subpipeline(),
    # Past its tolerance: the MapError chains the first failure, not the second.
    "map_past_tolerance": doc(
        [
            map_node("each", "f", {"v": "vs"}, next="end", max_failures=1),
            stage("f", "Fail", outputs={"v": "v"}),
            terminal("end"),
        ]
    ),
}


async def _suspended() -> stageflow.Session:
    session = stageflow.Session(WAITING, registry=REGISTRY)
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    return session


async def completed() -> None:
    session = stageflow.Session(EVERY_KIND, registry=REGISTRY, payload={"items": [1, 2, 3]})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED, result.error
    assert result.artifacts == {"a": 1, "b": 2, "outs": [2, 4, 6], "v": 7}


async def suspended() -> None:
    await _suspended()


async def resumed() -> None:
    session = await _suspended()
    session.send_input("go", {"x": 1})
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED


async def restored() -> None:
    snapshot = (await _suspended()).to_dict()
    session = stageflow.Session.from_dict(snapshot, registry=REGISTRY)
    session.send_input("go", {"x": 1})
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED


async def traced_and_metered() -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:
        session = stageflow.Session(
            WAITING,
            registry=REGISTRY,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        await session.run(suspend=True)
        session.send_input("go", {"x": 1})
        assert (await session.run()).status is stageflow.SessionStatus.COMPLETED
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def _ending(documents: dict[str, Any], kind: str, status: stageflow.SessionStatus) -> Scenario:
    """A run of ``documents[kind]`` that ends ``status`` (``waiting``: suspended)."""
    pipeline = stageflow.Pipeline.from_dict(documents[kind], registry=REGISTRY)
    waiting = status is stageflow.SessionStatus.WAITING

    async def scenario() -> None:
        session = stageflow.Session(pipeline, registry=REGISTRY, payload={"items": [1, 2]})
        result = await session.run(suspend=waiting)
        assert result.status is status, result.error
        assert (result.error is not None) == (status is stageflow.SessionStatus.FAILED)

    scenario.__name__ = kind
    return scenario


def _suspended_in(kind: str) -> Scenario:
    scenario = _ending(NESTED_WAITS, kind, stageflow.SessionStatus.WAITING)
    scenario.__name__ = f"suspended_in_{kind}"
    return scenario


def _cancelled_in(kind: str) -> Scenario:
    """A live run of ``NESTED_WAITS[kind]`` that ``cancel()`` ends while it waits."""
    pipeline = stageflow.Pipeline.from_dict(NESTED_WAITS[kind], registry=REGISTRY)

    async def scenario() -> None:
        session = stageflow.Session(pipeline, registry=REGISTRY, payload={"items": [1, 2]})
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await anyio.wait_all_tasks_blocked()
            session.cancel()
        assert session.status is stageflow.SessionStatus.CANCELLED

    scenario.__name__ = f"cancelled_in_{kind}"
    return scenario


def _torn_down_in(kind: str) -> Scenario:
    return _ending(TORN_DOWN, kind, stageflow.SessionStatus.COMPLETED)


def _failed_in(kind: str) -> Scenario:
    scenario = _ending(FAILING, kind, stageflow.SessionStatus.FAILED)
    scenario.__name__ = f"failed_{kind}"
    return scenario


async def live() -> None:
    session = stageflow.Session(WAITING, registry=REGISTRY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await anyio.wait_all_tasks_blocked()
        assert session.waiting_for() == ("go",)
        session.send_input("go", {"x": 1})
    assert session.status is stageflow.SessionStatus.COMPLETED


async def cancelled() -> None:
    session = stageflow.Session(WAITING, registry=REGISTRY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await anyio.wait_all_tasks_blocked()
        session.cancel()
    assert session.status is stageflow.SessionStatus.CANCELLED


async def cancelled_from_outside() -> None:
    # The scope around run() is cancelled: the cancellation goes up from
    # run(), its traceback through the run's frame.
    session = stageflow.Session(WAITING, registry=REGISTRY)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_blocked, scope)
            await session.run()
    assert session.status is stageflow.SessionStatus.CANCELLED


async def interrupted() -> None:
    # A KeyboardInterrupt goes up from run() (the session ends cancelled).
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("a", "Interrupt", next="end"), terminal("end")]), registry=REGISTRY
    )
    session = stageflow.Session(pipeline, registry=REGISTRY)
    with pytest.raises(KeyboardInterrupt):
        await session.run()
    assert session.status is stageflow.SessionStatus.CANCELLED


async def _cancel_when_blocked(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


async def _left_for_the_collector(scenario: Scenario) -> list[str]:
    """stageflow's types among what reference counting did not free after ``scenario``."""
    await scenario()  # caches and first-use work
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        await scenario()
        gc.collect()
    finally:
        gc.set_debug(0)
        gc.enable()
    found = sorted(
        {type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("stageflow")}
    )
    gc.garbage.clear()
    return found


@pytest.mark.parametrize(
    "scenario",
    [
        completed,
        suspended,
        resumed,
        restored,
        traced_and_metered,
        live,
        cancelled,
        cancelled_from_outside,
        interrupted,
        _suspended_in("subpipeline"),
        _suspended_in("parallel"),
        _suspended_in("map"),
        _suspended_in("sleep"),
        _suspended_in("task_group"),
        _suspended_in("parallel_with_a_failed_branch"),
        _suspended_in("map_with_a_failed_item"),
        _cancelled_in("parallel_with_a_failed_branch"),
        _cancelled_in("map_with_a_failed_item"),
        _torn_down_in("any_race"),
        _torn_down_in("stage_timeout_routed"),
        _torn_down_in("parallel_timeout_routed"),
        _torn_down_in("terminal_in_a_subpipeline_branch"),
        _torn_down_in("stage_failure_routed"),
        _torn_down_in("branch_failure_routed"),
        _torn_down_in("map_item_failure_routed"),
        _torn_down_in("subpipeline_failure_routed"),
        _torn_down_in("map_item_failures_tolerated"),
        _torn_down_in("map_item_failures_past_tolerance_routed"),
        _torn_down_in("branch_failure_in_an_any_race"),
        _torn_down_in("branch_failure_before_a_timeout_routed"),
        *(_failed_in(kind) for kind in FAILING),
    ],
    ids=lambda scenario: scenario.__name__,
)
async def test_a_session_that_ends_or_suspends_is_freed_without_the_collector(
    scenario: Scenario,
) -> None:
    if scenario.__name__ in (
        "suspended_in_parallel",
        "suspended_in_map",
        "suspended_in_task_group",
        "suspended_in_parallel_with_a_failed_branch",
        "suspended_in_map_with_a_failed_item",
        "cancelled_in_parallel_with_a_failed_branch",
        "cancelled_in_map_with_a_failed_item",
        "any_race",
        "parallel_timeout_routed",
        "branch_failure_before_a_timeout_routed",
        "terminal_in_a_subpipeline_branch",
    ) and (sniffio.current_async_library() == "asyncio"):
        pytest.skip("anyio's task-done callback keeps a cancelled task's error in a cycle")
    assert await _left_for_the_collector(scenario) == []


async def test_a_failed_session_keeps_the_stage_s_traceback_and_locals() -> None:
    # The engine's frames are left out of the error's tracebacks; the
    # stage's frames, which a post-mortem debugger would look at, stay with
    # their locals, and the traceback still says where the stage failed.
    registry = stageflow.StageRegistry()

    @registry.register("Broken")
    async def broken(ctx: stageflow.StageContext) -> dict[str, Any]:
        marker = {"seen": ctx.node_id}
        raise KeyError(marker["missing"])

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("a", "Broken", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert session.status is stageflow.SessionStatus.FAILED
    assert [e.type for e in session.history][-2:] == ["node_failed", "session_failed"]
    cause = result.error.__cause__ if result.error is not None else None
    assert isinstance(cause, KeyError)
    stage_frames = [
        tb.tb_frame for tb in _walk(cause.__traceback__) if tb.tb_frame.f_code is broken.__code__
    ]
    assert len(stage_frames) == 1
    engine = os.path.dirname(_run.__file__)
    for error in (result.error, cause):
        assert error is not None
        assert not [
            tb
            for tb in _walk(error.__traceback__)
            if tb.tb_frame.f_code.co_filename.startswith(engine)
        ]
    assert stage_frames[0].f_locals["marker"] == {"seen": "a"}
    assert type(stage_frames[0].f_locals["ctx"]).__name__ == "StageWork"
    text = "".join(traceback.format_exception(result.error))
    assert 'raise KeyError(marker["missing"])' in text
    assert "The above exception was the direct cause" in text
    # The context the stage kept says its attempt is over.
    with pytest.raises(stageflow.StageContractError, match="after its attempt 1 ended"):
        stage_frames[0].f_locals["ctx"].emit("late")


def _walk(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


@pytest.mark.parametrize(
    ("document", "status"),
    [
        (FAILING["stage"], stageflow.SessionStatus.FAILED),
        # Routed at the subpipeline node: its error edge's routing lets go
        # of the engine's frames too, as the session completes.
        (TORN_DOWN["subpipeline_failure_routed"], stageflow.SessionStatus.COMPLETED),
    ],
    ids=["failed", "routed"],
)
async def test_the_caller_s_own_exception_keeps_its_traceback(
    document: dict[str, Any], status: stageflow.SessionStatus
) -> None:
    # run() awaited in an except block: the stage's error has the caller's
    # exception as its context, and that exception's traceback (here through
    # the engine's Run.run, which raised it) is the caller's, left as it was.
    pipeline = stageflow.Pipeline.from_dict(document, registry=REGISTRY)
    finished = stageflow.Session(pipeline, registry=REGISTRY)
    await finished.run()
    try:
        await finished.run()
    except stageflow.SessionStateError as exc:
        caller = exc
        before = list(_walk(caller.__traceback__))
        result = await stageflow.Session(pipeline, registry=REGISTRY).run()
    assert result.status is status
    if result.error is not None:
        assert result.error.__cause__ is not None
        assert result.error.__cause__.__context__ is caller
    assert list(_walk(caller.__traceback__)) == before
    assert before[-1].tb_frame.f_code.co_filename == _run.__file__
