"""Restoring inside parallel nodes and maps: any races, retries and error edges in
branches, failed branches and map items, cut at every event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting
from snapshot_support import (
    Case,
    Outcome,
    Script,
    cut_at_event,
    cut_at_event_pair,
    cut_at_waits,
    every_cut,
    json_round_trip,
    review_registry,
    uninterrupted,
)

import stageflow
from stageflow._errors import describe_exception

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------ any races

ANY_RACE = doc(
    [
        parallel("race", ["fast", "slow"], next="end", policy="any"),
        stage("fast", "Nap", config={"seconds": 1, "value": "F"}, outputs={"answer": "fast"}),
        stage("slow", "Nap", config={"seconds": 5, "value": "S"}, outputs={"answer": "slow"}),
        terminal("end", "fast", "slow"),
    ]
)


@pytest.mark.trio_only
async def test_an_any_race_cut_at_every_event_keeps_its_winner() -> None:
    registry = review_registry()
    case = Case(load(ANY_RACE, registry), registry, {})
    expected = await uninterrupted(case)
    assert expected.artifacts == {"fast": "F", "slow": None}
    await every_cut(case, expected)


def seq_of(result: stageflow.SessionResult, type: str, node_id: str | None = None) -> int:
    """The seq of the first event of ``type`` (at ``node_id``) in ``result``'s history."""
    for event in result.history:
        if event.type == type and (node_id is None or event.node_id == node_id):
            return event.seq
    raise AssertionError(f"no {type} event at {node_id}")


# --------------------------------------------------- retries and error edges in branches


def flaky_registry(calls: list[int]) -> stageflow.StageRegistry:
    registry = review_registry()

    @registry.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        calls.append(ctx.attempt)
        got = await ctx.wait_input("go")
        if ctx.attempt < ctx.config["succeed_on"]:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return {"answer": [ctx.attempt, got]}

    return registry


RETRIES_IN_BRANCHES = doc(
    [
        parallel("fan", ["a", "b"], next="end"),
        {
            "id": "a",
            "type": "stage",
            "stage": "Flaky",
            "config": {"succeed_on": 2},
            # 5 to 15 s: a's second attempt waits after b's (at 1 s) even when a
            # restore re-runs b's failing attempt seconds of real time later (the
            # restored clock starts at the wall clock; retry deadlines are absolute).
            "retry": {"attempts": 3, "delay": 10, "jitter": 0.5},
            "outputs": {"answer": "a"},
        },
        {
            "id": "b",
            "type": "stage",
            "stage": "Flaky",
            "config": {"succeed_on": 9},
            "retry": {"attempts": 2, "delay": 1},
            "outputs": {"answer": "b"},
            "on_error": [{"errors": ["ConnectionError"], "next": "b_fallback"}],
        },
        stage("b_fallback", "Ask", config={"input": "fallback"}, outputs={"answer": "b"}),
        terminal("end", "a", "b", "error"),
    ]
)


@pytest.mark.trio_only
async def test_retries_and_error_edges_in_branches_restore_at_every_wait_and_event() -> None:
    calls: list[int] = []
    registry = flaky_registry(calls)
    case = Case(
        load(RETRIES_IN_BRANCHES, registry),
        registry,
        {},
        {"go": ["g1", "g2", "g3", "g4"], "fallback": ["fb"]},
    )
    expected = await uninterrupted(case)
    assert expected.artifacts["b"] == "fb"
    assert expected.artifacts["a"][0] == 2
    # (cut_at_waits would stop at the retry delays, which only a clock ends: every_cut here.)
    await every_cut(case, expected)


@pytest.mark.trio_only
async def test_a_cut_at_node_retrying_does_not_run_the_failed_attempt_again() -> None:
    calls: list[int] = []
    registry = flaky_registry(calls)
    document = doc(
        [
            {
                "id": "call",
                "type": "stage",
                "stage": "Flaky",
                "config": {"succeed_on": 2},
                "retry": {"attempts": 2, "delay": 5, "jitter": 0.5},
                "outputs": {"answer": "got"},
                "next": "end",
            },
            terminal("end", "got"),
        ]
    )
    pipeline = load(document, registry)
    inputs = {"go": ["g1", "g2", "g3"]}

    def session() -> stageflow.Session:
        return stageflow.Session(pipeline, registry=registry, seed=7)

    plain = await Script(inputs).attach(session()).run()
    retrying = seq_of(plain, "node_retrying")
    calls.clear()
    cut = session()
    script = Script(inputs)
    taken: list[dict[str, Any]] = []
    cut.subscribe(
        lambda e: taken.append(json_round_trip(cut.to_dict())) if e.seq == retrying else None
    )
    script.attach(cut)
    await cut.run()
    calls.clear()
    restored = stageflow.Session.from_dict(taken[0], registry=registry)
    Script(script.remaining()).attach(restored)
    result = await restored.run()
    # Attempt 1 had failed and its retry was decided when the snapshot was taken:
    # the restored run goes on with attempt 2, drawing no second jitter number.
    assert calls == [2]
    assert [e.payload["delay"] for e in result.history if e.type == "node_retrying"] == [
        e.payload["delay"] for e in plain.history if e.type == "node_retrying"
    ]


# ------------------------------------------------------------- any race cuts


@pytest.mark.trio_only
async def test_an_any_race_cut_at_the_winners_branch_finished_keeps_the_winner() -> None:
    registry = review_registry()
    case = Case(load(ANY_RACE, registry), registry, {})
    plain = await case.session().run()
    outcome = await cut_at_event(case, seq_of(plain, "branch_finished"))
    assert outcome is not None
    assert outcome.artifacts == {"fast": "F", "slow": None}


@pytest.mark.trio_only
async def test_an_any_race_cut_while_the_loser_is_cancelled_counts_steps_once() -> None:
    registry = review_registry()
    case = Case(load(ANY_RACE, registry), registry, {})
    plain = await case.session().run()
    outcome = await cut_at_event(case, seq_of(plain, "node_cancelled", "slow"))
    assert outcome == Outcome.of(plain)


# ------------------------------------------------------------------------ maps

MAP_FAILURES = doc(
    [
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "item",
            "concurrency": 2,
            "max_failures": 1,
            "failures_path": "failed",
            "collect": {"answer": "answers"},
            "next": "end",
        },
        {
            "id": "item",
            "type": "stage",
            "stage": "ItemAsk",
            "arguments": {"n": "item"},
            "outputs": {"answer": "answer"},
        },
        terminal("end", "answers", "failed"),
    ]
)


def item_registry() -> stageflow.StageRegistry:
    registry = review_registry()

    @registry.register("ItemAsk")
    async def item_ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        got = await ctx.wait_input("item")
        if ctx.arguments["n"] == 2:
            raise ValueError(f"item 2 got {got}")
        return {"answer": got}

    return registry


async def test_a_map_with_a_tolerated_failure_restores_at_every_wait_and_event() -> None:
    registry = item_registry()
    case = Case(
        load(MAP_FAILURES, registry), registry, {"items": [1, 2, 3, 4]}, {"item": list("abcd")}
    )
    expected = await uninterrupted(case)
    assert expected.status is stageflow.SessionStatus.COMPLETED
    assert len(expected.artifacts["failed"]) == 1
    for _, outcome in await cut_at_waits(case):
        assert outcome == expected
    await every_cut(case, expected)


async def test_a_map_that_failed_fast_counts_its_cancelled_items_once_after_a_cut() -> None:
    registry = item_registry()
    document = json.loads(json.dumps(MAP_FAILURES))
    document["nodes"][0]["max_failures"] = 0
    case = Case(load(document, registry), registry, {"items": [1, 2, 3, 4]}, {"item": list("abcd")})
    plain = await Script(case.inputs).attach(case.session()).run()
    assert plain.status is stageflow.SessionStatus.FAILED
    # Cut when item 1 has failed and item 0 is about to be cancelled: the
    # restored map raises at once and does not run item 0 again, so its step
    # must not be taken off the counter.
    # Which items run before the failure depends on the scheduling order, so
    # the restore is compared with the very run it was cut from.
    compared = 0
    for _ in range(10):
        pair = await cut_at_event_pair(case, seq_of(plain, "map_item_failed"))
        if pair is None:
            continue  # this run was shorter than the first one
        original, restored = pair
        assert restored == original
        compared += 1
    assert compared


MAP_OF_WAITS = doc(
    [
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "ask",
            "concurrency": 2,
            "collect": {"answer": "answers"},
            "next": "end",
        },
        stage("ask", "Ask", config={"input": "a"}, outputs={"answer": "answer"}),
        terminal("end", "answers"),
    ]
)


@pytest.mark.parametrize("event", ["map_item_cancelled", "node_cancelled"])
async def test_a_map_snapshotted_while_a_cancellation_tears_it_down_runs_its_items_again(
    event: str,
) -> None:
    # A snapshot taken by a subscriber while the task running the session is
    # cancelled (a process shutting down, say): the items already cancelled
    # were in no list of the map's, so the restored map completed with null
    # for them instead of running them again.
    registry = review_registry()
    pipeline = load(MAP_OF_WAITS, registry)
    session = stageflow.Session(pipeline, registry=registry, payload={"items": [1, 2]})
    taken: list[dict[str, Any]] = []

    def snapshot(e: stageflow.Event) -> None:
        if e.type == event and e.node_id == "each":
            taken.append(json_round_trip(session.to_dict()))

    session.subscribe(snapshot)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "a", 2)
        tg.cancel_scope.cancel()
    assert session.status is stageflow.SessionStatus.CANCELLED
    restored = stageflow.Session.from_dict(taken[-1], registry=registry)
    restored.send_input("a", "yes")  # to both waits, as in a run never cut
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"answers": ["yes", "yes"]}


# ------------------------------------------------------------- failed branches


FAILED_BRANCH = doc(
    [
        parallel("fan", ["bad", "wait"], next="end", cancel_on_error=False),
        stage("bad", "Fail", config={"message": "no"}),
        stage("wait", "Ask", config={"input": "w"}, outputs={"answer": "w"}),
        terminal("end", "w"),
    ]
)


async def test_a_branch_failure_restored_fails_the_session_with_the_same_error() -> None:
    registry = review_registry()
    case = Case(load(FAILED_BRANCH, registry), registry, {}, {"w": ["x"]})
    plain = await Script(case.inputs).attach(case.session()).run()
    assert isinstance(plain.error, stageflow.StageError)
    session = case.session()
    assert (await session.run(suspend=True)).waiting_for == ("w",)
    restored = case.restore(session.to_dict())
    restored.send_input("w", "x")
    result = await restored.run()
    assert result.status is plain.status
    assert describe(result.error) == describe(plain.error)
    # The stand-in class is documented (RestoredError); its message should not change.
    assert str(result.error) == str(plain.error)


def describe(error: BaseException | None) -> Any:
    return None if error is None else describe_exception(error)


async def test_a_tolerated_map_failure_restored_gives_the_same_map_error_message() -> None:
    registry = item_registry()
    document = json.loads(json.dumps(MAP_FAILURES))
    document["nodes"][0]["max_failures"] = 0
    document["nodes"][0]["concurrency"] = 1
    case = Case(load(document, registry), registry, {"items": [2, 1]}, {"item": ["a", "b"]})
    plain = await Script(case.inputs).attach(case.session()).run()
    assert isinstance(plain.error, stageflow.MapError)
    outcome_seq = seq_of(plain, "map_item_failed")
    session = case.session()
    script = Script(case.inputs)
    taken: list[dict[str, Any]] = []
    session.subscribe(
        lambda e: taken.append(json_round_trip(session.to_dict())) if e.seq == outcome_seq else None
    )
    script.attach(session)
    await session.run()
    restored = case.restore(taken[0])
    result = await restored.run()
    assert str(result.error) == str(plain.error)
    # Its causes too: the restored failure it is chained to is described as
    # the original was (StageError, then ValueError), not as a RestoredError.
    assert describe(result.error) == describe(plain.error)


# A branch writes a.b, then replaces a with an object without b, then waits:
# the snapshot's record of the branch's writes must not carry a.b as MISSING.
REPLACED_PARENT = doc(
    [
        parallel("p", ["inner", "other"], next="end"),
        stage("inner", "Set", config={"values": {"v": 1}}, outputs={"v": "a.b"}, next="replace"),
        stage("replace", "Set", config={"values": {"v": {"c": 3}}}, outputs={"v": "a"}, next="ask"),
        stage("ask", "Ask", config={"input": "go"}, outputs={"answer": "got"}),
        stage("other", "Set", config={"values": {"v": 2}}, outputs={"v": "b"}),
        terminal("end", "a", "b", "got"),
    ]
)


async def test_a_branch_that_replaced_what_it_wrote_into_snapshots_as_json() -> None:
    registry = review_registry()
    case = Case(load(REPLACED_PARENT, registry), registry, {"a": {"b": 0}}, {"go": ["yes"]})
    plain = await Script(case.inputs).attach(case.session()).run()
    assert plain.artifacts == {"a": {"c": 3}, "b": 2, "got": "yes"}
    session = case.session()
    assert (await session.run(suspend=True)).waiting_for == ("go",)
    text = json.dumps(session.to_dict())  # raised TypeError on MISSING before
    restored = case.restore(json.loads(text))
    restored.send_input("go", "yes")
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == plain.artifacts


# ------------------------------------------------- first / last over overlapping writes


@pytest.mark.parametrize(("strategy", "a"), [("first", {"k": 1}), ("last", {"c": 9})])
async def test_first_and_last_settle_overlapping_writes_alike_at_every_cut(
    strategy: str, a: Any
) -> None:
    """Branches writing "a", "a.b" and "a.c" (one keeps its writes there), a reducer beside."""
    stages = fake_registry()

    def wait(node_id: str, input_type: str, path: str, nxt: str | None = None) -> dict[str, Any]:
        config = {"input": input_type}
        return stage(node_id, "WaitStage", config=config, outputs={"payload": path}, next=nxt)

    def put(node_id: str, path: str, value: Any, nxt: str | None = None) -> dict[str, Any]:
        config = {"values": {"v": value}}
        return stage(node_id, "Set", config=config, outputs={"v": path}, next=nxt)

    document = doc(
        [
            parallel("p", ["x", "y", "z"], next="end", merge=strategy),
            wait("x", "gx", "a", "x2"),
            put("x2", "n", 1),
            put("y", "a.b", 2, "y2"),
            wait("y2", "gy", "q"),
            wait("z", "gz", "a.c", "z2"),
            put("z2", "s", 3),
            terminal("end", "a", "n", "q", "s"),
        ],
        reducers={"s": "sum"},
    )
    case = Case(
        load(document, stages),
        stages,
        {"s": 10},
        inputs={"gx": [{"k": 1}], "gy": ["qq"], "gz": [9]},
    )
    expected = await uninterrupted(case)
    assert expected.artifacts == {"a": a, "n": 1, "q": "qq", "s": 13}
    assert await every_cut(case, expected) > 20
    assert all(outcome == expected for _, outcome in await cut_at_waits(case))


# A parallel node nested in a branch, folding into the branch's contribution
# (not into the parent's value it reads through), cut at every event.
NESTED_REDUCER = doc(
    [
        parallel("fan", ["a", "inner"], next="end"),
        stage("a", "Ask", config={"input": "qa"}, outputs={"answer": "n"}),
        parallel("inner", ["b", "c"]),
        stage("b", "Ask", config={"input": "qb"}, outputs={"answer": "n"}),
        stage("c", "Nap", config={"seconds": 3, "value": ["c"]}, outputs={"answer": "n"}),
        terminal("end", "n"),
    ],
    reducers={"n": "extend"},
)


@pytest.mark.trio_only
async def test_a_nested_join_restored_at_every_event_folds_the_old_value_in_once() -> None:
    registry = review_registry()
    case = Case(
        load(NESTED_REDUCER, registry), registry, {"n": [0]}, {"qa": [["a"]], "qb": [["b"]]}
    )
    expected = await uninterrupted(case)
    assert expected.artifacts == {"n": [0, "a", "b", "c"]}
    await every_cut(case, expected)


# ------------------------------------------------- branches a timeout cancels

# A timeout cancels the branches: cut while it does, the restored run must not
# take a cancelled branch for one that ended, nor fail on a join with no error.
TIMED_OUT = {"errors": ["NodeTimeoutError"], "next": "late", "error_path": "err"}
NEVER = {"input": "never"}
TIMEOUTS = {
    "all": doc(
        [
            parallel("fan", ["x", "y"], next="end", timeout=100, on_error=[TIMED_OUT]),
            stage("x", "Ask", config=NEVER, outputs={"answer": "a"}),
            stage("y", "Nap", config={"seconds": 5, "value": 1}, outputs={"answer": "b"}),
            terminal("end", "a", "b"),
            terminal("late", "err", "a", "b"),
        ]
    ),
    "any": doc(
        [
            parallel(
                "fan", ["x", "y"], next="end", timeout=100, policy="any", on_error=[TIMED_OUT]
            ),
            stage("x", "Ask", config=NEVER, outputs={"answer": "a"}),
            stage("y", "Ask", config={"input": "never2"}, outputs={"answer": "b"}),
            terminal("end", "a", "b"),
            terminal("late", "err", "a", "b"),
        ]
    ),
    "enclosing": doc(
        [
            parallel("outer", ["x", "inner"], next="end", timeout=50, on_error=[TIMED_OUT]),
            stage("x", "Ask", config=NEVER, outputs={"answer": "a"}),
            parallel("inner", ["i1", "i2"]),
            stage("i1", "Ask", config={"input": "never2"}, outputs={"answer": "c"}),
            stage("i2", "Nap", config={"seconds": 5, "value": 1}, outputs={"answer": "d"}),
            terminal("end", "a", "c", "d"),
            terminal("late", "err", "a", "c", "d"),
        ]
    ),
}


@pytest.mark.trio_only
@pytest.mark.parametrize("shape", sorted(TIMEOUTS))
async def test_branches_cancelled_by_a_timeout_restore_at_every_event(shape: str) -> None:
    """Cut while they were cancelled, an ``all`` join went on at ``next`` and an ``any``
    join failed with a ValueError (an empty ParallelRunError)."""
    registry = review_registry()
    case = Case(load(TIMEOUTS[shape], registry), registry, {})
    expected = await uninterrupted(case)
    assert expected.result == {"ok": True}
    assert expected.artifacts["err"]["type"] == "NodeTimeoutError"
    assert await every_cut(case, expected) > 10


@pytest.mark.trio_only
async def test_a_snapshot_keeping_a_branch_cancelled_by_a_timeout_runs_it_again() -> None:
    """As an earlier release saved it: ``cancelled``, though the join was not decided."""
    registry = review_registry()
    case = Case(load(TIMEOUTS["all"], registry), registry, {})
    expected = await uninterrupted(case)
    session = case.session()
    taken: list[dict[str, Any]] = []

    def snapshot(event: stageflow.Event) -> None:
        if event.type == "branch_cancelled":
            taken.append(case.snapshot(session))

    session.subscribe(snapshot)
    await session.run()
    data = taken[0]
    branches = data["position"]["parallel"]["branches"]
    assert [b["state"] for b in branches] == ["running", "finished"]
    branches[0] = {"child": "x", "state": "cancelled"}
    restored = Outcome.of(await case.restore(data).run())
    # Run again from its start: its node counts as a step once more.
    assert (restored.status, restored.result, restored.artifacts) == (
        expected.status,
        expected.result,
        expected.artifacts,
    )
