"""Cancellations that cross a task group are cancellations, not failures (trio's groups).

On trio a cancellation that leaves a parallel or map node's task group arrives
wrapped in an exception group. These tests run on both backends; before the
fix they failed on trio only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from fakes import (
    doc,
    fake_registry,
    load,
    parallel,
    stage,
    terminal,
    types,
    wait_again_after_cancellation,
    wait_until_waiting,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow

pytestmark = pytest.mark.anyio


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    return registry


def _waiting(node_id: str, *, next: str | None = None) -> dict[str, Any]:
    node = stage(node_id, "Wait", next=next, outputs={"payload": node_id})
    node["config"] = {"input": "go"}
    return node


PARALLEL = doc(
    [
        parallel("fan", ["a", "b"], next="end"),
        _waiting("a"),
        _waiting("b"),
        terminal(),
    ]
)

MAP = doc(
    [
        stage(
            "seed",
            "Set",
            next="each",
            config={"values": {"items": [1, 2]}},
            outputs={"items": "items"},
        ),
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "item",
            "concurrency": 2,
            "next": "end",
        },
        _waiting("item"),
        terminal(),
    ]
)


def _outcomes(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {
        span.name: span.attributes["stageflow.outcome"] for span in exporter.get_finished_spans()
    }


@pytest.mark.parametrize(
    ("document", "node", "child"), [(PARALLEL, "fan", "branch"), (MAP, "each", "map_item")]
)
async def test_cancel_mid_node_records_a_cancelled_node_and_children(
    document: dict[str, Any],
    node: str,
    child: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    async with anyio.create_task_group() as tg:
        result: list[stageflow.SessionResult] = []

        async def run() -> None:
            result.append(await session.run())

        tg.start_soon(run)
        await wait_until_waiting(session, "go", 2)
        session.cancel("stop")
    [outcome] = result
    assert outcome.status is stageflow.SessionStatus.CANCELLED
    types = [(e.type, e.node_id) for e in outcome.history]
    assert ("node_cancelled", node) in types
    assert [t for t, n in types if t == f"{child}_cancelled"] == [f"{child}_cancelled"] * 2
    assert not any(t.endswith("_failed") for t, _ in types)
    outcomes = _outcomes(exporter)
    assert outcomes[f"{'parallel' if node == 'fan' else 'map'} {node}"] == "cancelled"
    assert "failed" not in outcomes.values()


@pytest.mark.parametrize("document", [PARALLEL, MAP], ids=["parallel", "map"])
async def test_cancelling_the_task_running_the_session_ends_it_cancelled(
    document: dict[str, Any],
) -> None:
    registry = _registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go", 2)
        tg.cancel_scope.cancel()
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert session.history[-1].type == "session_cancelled"
    assert session.to_dict()["status"] == "cancelled"
    with pytest.raises(stageflow.SessionStateError, match="cancelled"):
        await session.run()


async def test_the_losing_branch_of_an_any_race_is_cancelled_not_failed(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    document = doc(
        [
            parallel("race", ["fast", "slow"], next="end", policy="any"),
            stage("fast", "Set", config={"values": {"x": 1}, "delay": 1}),
            parallel("slow", ["w1", "w2"]),
            _waiting("w1"),
            _waiting("w2"),
            terminal(),
        ]
    )
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    types = [(e.type, e.node_id) for e in result.history]
    assert ("node_cancelled", "slow") in types
    assert ("branch_cancelled", "race") in types
    outcomes = _outcomes(exporter)
    assert outcomes["parallel slow"] == "cancelled"
    assert outcomes["branch race/slow"] == "cancelled"
    assert "failed" not in outcomes.values()


# A subpipeline holding a parallel node, one of whose branches is a map: on
# trio the cancellation leaves both task groups, and then the subpipeline
# node, wrapped in exception groups.
INNER = {
    "entry": "seed",
    "nodes": [
        stage(
            "seed",
            "Set",
            next="fan",
            config={"values": {"items": [1, 2]}},
            outputs={"items": "items"},
        ),
        parallel("fan", ["a", "each"], next="done"),
        _waiting("a"),
        {"id": "each", "type": "map", "items": "items", "body": "item", "concurrency": 2},
        _waiting("item"),
        terminal("done"),
    ],
}
CALL = {"id": "call", "type": "subpipeline", "pipeline": "inner"}
CANCELLED_INSIDE = {"a", "item", "each", "fan", "call"}
# The subpipeline node's span and every span inside it.
CANCELLED_SPANS = {
    "subpipeline call",
    "parallel fan",
    "branch fan/a",
    "stage a",
    "wait go",
    "branch fan/each",
    "map each",
    "item each",
    "stage item",
}


def _cancelled_not_failed(
    result: stageflow.SessionResult,
    exporter: InMemorySpanExporter,
    reason: str,
    others: set[tuple[str, str]],
) -> None:
    """The subpipeline node and all in it ended cancelled for ``reason``; the rest: ``others``."""
    types = [(e.type, e.node_id) for e in result.history]
    assert not [t for t in types if t[0].endswith("_failed")]
    assert {n for t, n in types if t == "node_cancelled"} == CANCELLED_INSIDE
    assert [t for t, n in types if t == "map_item_cancelled"] == ["map_item_cancelled"] * 2
    spans = exporter.get_finished_spans()
    ended = {(span.name, (span.attributes or {})["stageflow.outcome"]) for span in spans}
    assert ended == {(name, "cancelled") for name in CANCELLED_SPANS} | others
    reasons = {
        (span.attributes or {}).get("stageflow.cancel.reason")
        for span in spans
        if span.name in CANCELLED_SPANS
    }
    assert reasons == {reason}


async def test_session_cancel_mid_subpipeline_cancels_it_and_everything_inside(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    document = doc([{**CALL, "next": "end"}, terminal()], subpipelines={"inner": INNER})
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        tracer_provider=provider,
        trace_wait_threshold=None,  # not cut: the spans are open when cancel() comes
    )
    result: list[stageflow.SessionResult] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            result.append(await session.run())

        tg.start_soon(run)
        await wait_until_waiting(session, "go", 3)  # a and both items
        session.cancel("stop")
    [outcome] = result
    assert outcome.status is stageflow.SessionStatus.CANCELLED
    ran = {("stage seed", "succeeded"), ("run pipeline", "cancelled")}
    _cancelled_not_failed(outcome, exporter, "session_cancelled", ran)


async def test_a_subpipeline_in_the_losing_branch_of_an_any_race_is_cancelled_not_failed(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    sessions: list[stageflow.Session] = []

    @registry.register("Win")
    async def win(ctx: stageflow.StageContext) -> dict[str, Any]:
        await wait_until_waiting(sessions[0], "go", 3)  # wins once a and both items wait
        return {}

    document = doc(
        [
            parallel("race", ["fast", "call"], next="end", policy="any"),
            stage("fast", "Win"),
            CALL,
            terminal(),
        ],
        subpipelines={"inner": INNER},
    )
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    sessions.append(session)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    ran = {
        ("stage seed", "succeeded"),
        ("branch race/call", "cancelled"),
        ("stage fast", "succeeded"),
        ("branch race/fast", "succeeded"),
        ("parallel race", "succeeded"),
        ("terminal end", "succeeded"),
        ("run pipeline", "succeeded"),
    }
    _cancelled_not_failed(result, exporter, "lost_race", ran)
    assert ("branch_cancelled", "race") in [(e.type, e.node_id) for e in result.history]


@pytest.mark.parametrize(
    ("document", "node", "child"),
    [(PARALLEL, "parallel fan", "branch fan/a"), (MAP, "map each", "item each")],
    ids=["branch", "map item"],
)
async def test_a_suspended_run_ends_its_branch_and_item_spans_suspended(
    document: dict[str, Any],
    node: str,
    child: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.WAITING
    outcomes = _outcomes(exporter)
    assert outcomes[node] == outcomes[child] == "suspended"
    assert "cancelled" not in outcomes.values()


def _counting_map(registry: stageflow.StageRegistry, concurrency: int) -> stageflow.Session:
    """A session mapping the registry's ``Count`` stage over 50 items."""
    document = doc(
        [
            {
                "id": "each",
                "type": "map",
                "items": "items",
                "body": "count",
                "item_path": "n",
                "concurrency": concurrency,
                "next": "end",
            },
            stage("count", "Count", arguments={"n": "n"}),
            terminal(),
        ]
    )
    return stageflow.Session(
        load(document, registry), registry=registry, payload={"items": list(range(50))}
    )


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_cancel_from_a_map_item_stops_the_map_before_its_next_item(
    concurrency: int,
) -> None:
    """Items that never await still stop at the next item once cancel() is called.

    A map worker reads the cancellation flags once for all its items (the
    "map item" benchmark row): the test it makes before each item must still
    see a cancel() made by an item's own stage.
    """
    registry = stageflow.StageRegistry()
    ran: list[int] = []
    sessions: list[stageflow.Session] = []

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> dict[str, Any]:
        n = ctx.arguments["n"]
        ran.append(n)
        if n == 4:
            sessions[0].cancel("enough")
        return {"n": n}  # never awaits

    session = _counting_map(registry, concurrency)
    sessions.append(session)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    # The item that cancelled ends; no stage runs after it (an item a worker
    # had already begun is recorded as cancelled before its node starts).
    assert ran == [0, 1, 2, 3, 4]
    started = [e.path for e in result.history if e.type == "node_started" and e.path]
    assert started == [f"each/{n}" for n in range(5)]
    assert result.history[-1].type == "session_cancelled"


async def test_a_failing_map_item_stops_the_other_workers_before_their_next_item() -> None:
    """Fail fast reaches workers whose items never await (their flags are the task group's)."""
    registry = stageflow.StageRegistry()
    ran: list[int] = []

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> dict[str, Any]:
        n = ctx.arguments["n"]
        ran.append(n)
        if n == 4:
            raise ValueError("item 4 is bad")
        return {"n": n}  # never awaits

    session = _counting_map(registry, 3)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.MapError)
    assert 4 in ran
    assert len(ran) < 50
    # No stage starts once the failure has cancelled the items: the last
    # started stage is the one that failed or one already in flight.
    failed_at = next(i for i, e in enumerate(result.history) if e.type == "node_failed")
    assert not any(e.type == "node_started" for e in result.history[failed_at:])
    cancelled = [e for e in result.history if e.type == "map_item_cancelled"]
    assert all(e.payload["index"] > 4 for e in cancelled)


def _stray_registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Stray")
    async def stray(ctx: stageflow.StageContext) -> dict[str, Any]:
        # What a stage gets from a future or task of its own that was
        # cancelled (a client library's internal timeout, say).
        if ctx.attempt <= ctx.config.get("times", 1):
            raise asyncio.CancelledError
        return {"ok": ctx.attempt}

    return registry


STRAY_FAILS = {
    "main path": doc([stage("s", "Stray", next="end"), terminal()]),
    "branch": doc(
        [
            parallel("fan", ["s", "other"], next="end"),
            stage("s", "Stray"),
            stage("other", "Set", config={"values": {"x": 1}, "delay": 1}, outputs={"x": "x"}),
            terminal("end", "x"),
        ]
    ),
    "map item": doc(
        [
            {"id": "each", "type": "map", "items": "items", "body": "s", "next": "end"},
            stage("s", "Stray"),
            terminal(),
        ]
    ),
}


@pytest.mark.parametrize("document", STRAY_FAILS.values(), ids=STRAY_FAILS.keys())
async def test_a_stages_own_cancelled_error_fails_its_node(document: dict[str, Any]) -> None:
    # On asyncio a CancelledError that nothing cancelled was taken for the
    # run's cancellation: run() raised it (main path), and in a branch or an
    # item the task group swallowed it, cancelled the others, and the session
    # went on past the node and completed without their writes.
    registry = _stray_registry()
    session = stageflow.Session(load(document, registry), payload={"items": [1]})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    error = result.error
    while not isinstance(error, stageflow.StageError):
        assert error is not None
        error = error.__cause__
    assert error.node_id == "s"
    assert isinstance(error.__cause__, asyncio.CancelledError)
    assert "CancelledError" in str(error)
    assert types(result, node_id="s") == ["node_started", "node_failed"]


async def test_a_stages_own_cancelled_error_is_retried_and_routed_like_any_failure() -> None:
    registry = _stray_registry()
    document = doc(
        [
            {**stage("s", "Stray", next="t"), "retry": {"attempts": 2}},
            {**stage("t", "Stray", next="end", config={"times": 9}), "fallback": "handled"},
            terminal(),
            terminal("handled", "error.type", "error.causes.0.type"),
        ]
    )
    result = await stageflow.Session(load(document, registry)).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert types(result, node_id="s") == ["node_started", "node_retrying", "node_finished"]
    assert result.artifacts == {"error.type": "StageError", "error.causes.0.type": "CancelledError"}


async def test_cancel_from_another_thread_cancels_the_run() -> None:
    # On asyncio it raised "no running event loop" in the thread, halfway
    # through cancelling the run's scope, and the event loop hung for good.
    registry = _registry()
    document = doc([_waiting("w", next="end"), terminal()])
    session = stageflow.Session(load(document, registry), registry=registry)
    async with anyio.create_task_group() as tg:

        async def from_worker_thread() -> None:
            await wait_until_waiting(session, "go")
            await anyio.to_thread.run_sync(session.cancel, "the user left")

        tg.start_soon(from_worker_thread)
        result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert result.history[-1].payload["reason"] == "the user left"


@pytest.mark.parametrize("wait", ["wait_input", "sleep"])
async def test_a_stage_that_waits_again_after_cancel_in_suspend_mode_is_cancelled(
    wait: str,
) -> None:
    # The stage caught cancel()'s cancellation and blocked again: every
    # position blocked, as at a suspension. On trio that wait raised
    # RunSuspended, though the run was cancelled, not suspended there.
    seen: list[str] = []
    registry = stageflow.StageRegistry()

    @registry.register("Stubborn")
    async def stubborn(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        session.cancel("the user left")  # the session below: run() is in progress
        return await wait_again_after_cancellation(ctx, wait, seen)

    session = stageflow.Session(
        load(doc([stage("s", "Stubborn", next="end"), terminal()]), registry)
    )
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert seen == ["cancelled", anyio.get_cancelled_exc_class().__name__]


def _cancel_on_suspend(session: stageflow.Session, cancel: Any) -> None:
    """Call ``cancel()`` as the session records ``session_suspended`` (its run tears down)."""

    def on_event(event: stageflow.Event) -> None:
        if event.type == "session_suspended":
            cancel()

    session.subscribe(on_event)


@pytest.mark.parametrize("branches", [False, True], ids=["one-wait", "two-branches"])
async def test_a_cancellation_from_outside_while_suspending_goes_up_and_the_session_waits(
    branches: bool,
) -> None:
    # run() returned the waiting result instead: the caller's cancellation
    # was swallowed (on asyncio a Task.cancel() was lost for good). On trio
    # the wait where the run suspends raises RunSuspended, which trio's scope
    # does not take for the caller's cancellation: that one still goes up
    # (with two branches, out of a group holding both).
    registry = _registry()
    document = (
        doc(
            [
                parallel("fan", ["a", "w"], next="end"),
                _waiting("a"),
                _waiting("w"),
                terminal("end", "w"),
            ]
        )
        if branches
        else doc([_waiting("w", next="end"), terminal("end", "w")])
    )
    session = stageflow.Session(load(document, registry))
    returned = False
    with anyio.CancelScope() as outer:
        _cancel_on_suspend(session, outer.cancel)
        await session.run(suspend=True)
        returned = True
    assert not returned
    assert outer.cancelled_caught
    assert session.status is stageflow.SessionStatus.WAITING
    assert session.history[-1].type == "session_suspended"
    snapshot = session.to_dict()
    assert snapshot["status"] == "waiting"
    restored = stageflow.Session.from_dict(snapshot, registry=registry)
    restored.send_input("go", {"ok": True})
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"w": {"ok": True}}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_cancel_while_suspending_is_not_lost() -> None:
    registry = _registry()
    session = stageflow.Session(load(doc([_waiting("w", next="end"), terminal()]), registry))
    task = asyncio.create_task(session.run(suspend=True))
    _cancel_on_suspend(session, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert session.status is stageflow.SessionStatus.WAITING
    assert session.to_dict()["status"] == "waiting"


def _messy_registry(started: Any) -> stageflow.StageRegistry:
    """``Messy``: a task of its own that raises ``ValueError`` as it is cancelled."""
    registry = fake_registry()

    @registry.register("Messy")
    async def messy(ctx: stageflow.StageContext) -> None:
        import trio

        async def child() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise ValueError("cleanup failed") from None

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            started.set()
            await trio.sleep_forever()

    return registry


_MESSY_PLACES = {
    "alone": [stage("a", "Messy", next="end"), terminal("end")],
    "retried": [{**stage("a", "Messy", next="end"), "retry": {"attempts": 2}}, terminal("end")],
    "map item": [
        {"id": "m", "type": "map", "items": "items", "body": "a", "next": "end"},
        stage("a", "Messy"),
        terminal("end"),
    ],
}


@pytest.mark.trio_only
@pytest.mark.parametrize("place", list(_MESSY_PLACES))
@pytest.mark.parametrize("how", ["session.cancel()", "an outer scope"])
async def test_a_stage_that_fails_as_it_is_cancelled_fails_its_node(
    place: str, how: str, autojump_clock: Any
) -> None:
    # On trio its error came out grouped with the cancellation: run() raised
    # an exception group, and the session ended failed with "internal error"
    # (or blamed the stage for a BaseException). On asyncio the stage's task
    # group leaves the cancellation out: a failure of the stage, as now here.
    import trio

    started = trio.Event()
    registry = _messy_registry(started)
    pipeline = load(doc(_MESSY_PLACES[place]), registry)
    session = stageflow.Session(pipeline, registry=registry, payload={"items": [1]})
    results: list[stageflow.SessionResult] = []
    with trio.CancelScope() as outer:

        async def run() -> None:
            results.append(await session.run())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await started.wait()
            if how == "session.cancel()":
                session.cancel("stop")
            else:
                outer.cancel()
    # The attempt's failure, in node_failed (or node_retrying: a retry
    # policy takes it as any failure, and the retry's delay is cancelled).
    ended = "node_retrying" if place == "retried" else "node_failed"
    failed = [e for e in session.history if e.type == ended and e.node_id == "a"]
    assert [e.payload["error"]["type"] for e in failed] == ["StageError"]
    assert "ValueError: cleanup failed" in failed[0].payload["error"]["message"]
    outcome = session.to_dict()["outcome"]
    assert "internal error" not in str(outcome)
    if how == "session.cancel()":
        [result] = results
        assert result.status is stageflow.SessionStatus.CANCELLED
    elif place == "retried":  # the retry's delay took the cancellation: it went up
        assert (results, session.status) == ([], stageflow.SessionStatus.CANCELLED)
    else:  # the error went up through the cancelled scope, as trio lets it
        assert session.status is stageflow.SessionStatus.FAILED
        assert "ValueError: cleanup failed" in outcome["error"]["message"]


@pytest.mark.parametrize("document", [PARALLEL, MAP], ids=["in a branch", "in a map item"])
async def test_a_cancellation_from_outside_comes_out_of_run_as_the_backends_own(
    document: dict[str, Any],
) -> None:
    # On trio, cancelled while its branches or items ran, run() raised the
    # task group's BaseExceptionGroup of trio.Cancelled: an
    # ``except anyio.get_cancelled_exc_class()`` around it, which catches the
    # cancellation on asyncio and on the main path, let it through.
    session = stageflow.Session(load(document, _registry()))
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        session.subscribe(
            lambda event: scope.cancel() if event.type == "waiting_for_input" else None
        )
        try:
            await session.run()
        except anyio.get_cancelled_exc_class() as exc:
            caught.append(exc)
            raise
    assert scope.cancelled_caught
    assert len(caught) == 1
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert session.history[-1].payload["reason"] == "the task running it was cancelled"
