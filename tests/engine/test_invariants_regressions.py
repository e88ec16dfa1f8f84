"""Minimal reproductions of what ``test_invariants_fuzz.py`` found, one test each."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
import trio
from fakes import doc, fake_registry, load, parallel, stage, terminal

import stageflow

pytestmark = pytest.mark.anyio


def _received_or_discarded(result: stageflow.SessionResult, input_type: str) -> int:
    count = 0
    for event in result.history:
        if event.type == "input_received" and event.payload["input_type"] == input_type:
            count += 1
        elif event.type == "inputs_discarded":
            count += sum(1 for i in event.payload["inputs"] if i["input_type"] == input_type)
    return count


@pytest.mark.parametrize("same_callback", [True, False])
async def test_an_input_delivered_to_a_wait_cancelled_before_it_saw_it_is_discarded(
    same_callback: bool,
) -> None:
    """A live wait given an input (``delivered=1``) and torn down before its stage resumed.

    The input was in neither ``input_received`` nor ``inputs_discarded``: it
    was dropped in silence. It is listed in ``inputs_discarded`` now.
    """
    nodes: list[dict[str, Any]] = [
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "ask",
            "concurrency": 2,
            "next": "end",
        },
        stage("ask", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}),
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline, payload={"items": [0, 1]})
    receipts: list[stageflow.InputReceipt] = []
    waits = 0

    def on_event(event: stageflow.Event) -> None:
        nonlocal waits
        if event.type == "waiting_for_input":
            waits += 1
            if waits == 1:
                receipts.append(session.send_input("go", {"n": 1}))
                if same_callback:
                    session.cancel("now")
            elif waits == 2:
                session.cancel("now")

    session.subscribe(on_event)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert [r.delivered for r in receipts] == [1]
    assert _received_or_discarded(result, "go") == 1


@pytest.mark.parametrize("restored", [False, True])
async def test_an_input_given_to_a_wait_torn_down_is_discarded_after_a_restore_too(
    restored: bool,
) -> None:
    """A race decided while an input was on its way to the loser's wait.

    The input (``delivered=1``) is held by the session until it ends, then
    listed in ``inputs_discarded``. A snapshot taken in between (a worker
    saves one after every turn) did not carry it: the session restored from
    it ended without it, in neither event.
    """
    registry = fake_registry()
    nodes = [
        parallel("race", ["ask", "work"], next="after", policy="any"),
        stage("ask", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}),
        stage("work", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "v"}),
        stage("after", "WaitStage", config={"input": "z"}, outputs={"payload": "z"}, next="end"),
        terminal("end", "v"),
    ]
    pipeline = load(doc(nodes), registry)
    session = stageflow.Session(pipeline, registry=registry)
    receipts: list[stageflow.InputReceipt] = []

    def send_as_the_race_ends(event: stageflow.Event) -> None:
        if event.type == "branch_finished" and event.payload["branch"] == "work":
            receipts.append(session.send_input("go", {"n": 1}))

    session.subscribe(send_as_the_race_ends)
    first = await session.run(suspend=True)
    assert (first.status, first.waiting_for) == (stageflow.SessionStatus.WAITING, ("z",))
    assert [r.delivered for r in receipts] == [1]
    data = json.loads(json.dumps(session.to_dict()))
    assert data["unseen_inputs"] == [{"input_type": "go", "payload": {"n": 1}}]
    if restored:
        session = stageflow.Session.from_dict(data, registry=registry)
    session.send_input("z", {})
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert _received_or_discarded(result, "go") == 1
    assert "unseen_inputs" not in session.to_dict()


async def test_inputs_carried_by_a_snapshot_are_carried_again_next_to_a_parked_equal_one() -> None:
    """A restored session's ``unseen_inputs`` and an equal input sent to its saved wait since.

    The next snapshot took the parked input for the carried one (the same
    type and payload) and left ``unseen_inputs`` out: the session restored
    from it ended with one of the two inputs, the other in neither event.
    """
    registry = fake_registry()
    nodes = [
        parallel("race", ["ask", "work"], next="after", policy="any"),
        stage("ask", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}),
        stage("work", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "v"}),
        stage("after", "WaitStage", config={"input": "go"}, outputs={"payload": "z"}, next="end"),
        terminal("end", "v", "z"),
    ]
    pipeline = load(doc(nodes), registry)
    session = stageflow.Session(pipeline, registry=registry)

    def send_as_the_race_ends(event: stageflow.Event) -> None:
        if event.type == "branch_finished" and event.payload["branch"] == "work":
            session.send_input("go", {"n": 1})

    session.subscribe(send_as_the_race_ends)
    assert (await session.run(suspend=True)).waiting_for == ("go",)
    carried = [{"input_type": "go", "payload": {"n": 1}}]
    data = json.loads(json.dumps(session.to_dict()))
    assert data["unseen_inputs"] == carried
    restored = stageflow.Session.from_dict(data, registry=registry)
    assert restored.send_input("go", {"n": 1}).delivered == 1  # parked in "after"'s wait
    data = json.loads(json.dumps(restored.to_dict()))
    assert data["unseen_inputs"] == carried
    result = await stageflow.Session.from_dict(data, registry=registry).run(suspend=True)
    assert (result.status, result.artifacts) == (
        stageflow.SessionStatus.COMPLETED,
        {"v": 1, "z": {"n": 1}},
    )
    assert _received_or_discarded(result, "go") == 2


def _deliveries(result: stageflow.SessionResult, input_type: str) -> int:
    """Inputs of ``input_type`` received from a sender or the backlog, or discarded."""
    count = 0
    for event in result.history:
        if event.type == "input_received" and event.payload["input_type"] == input_type:
            count += event.payload["from"] != "replay"  # a replay was received before
        elif event.type == "inputs_discarded":
            count += sum(1 for i in event.payload["inputs"] if i["input_type"] == input_type)
    return count


@pytest.mark.trio_only
@pytest.mark.parametrize("order", range(12))
async def test_every_snapshot_as_a_wait_is_torn_down_holds_its_input_once(order: int) -> None:
    """One input delivered to two waits; one is torn down; a snapshot at every event.

    The wait torn down (its race decided) and one in another branch both got
    ``go``. A snapshot taken as the first was torn down while the second had
    not woken yet dropped the torn wait's input (matched by value to the
    other's): the session restored from it accounted for 1 of the 2
    deliveries. Which comes first is trio's scheduling order, seeded here
    (``order``), as the invariant fuzzer seeds it.
    """
    registry = fake_registry()
    nodes = [
        parallel("both", ["race", "other"], next="end"),
        parallel("race", ["ask", "work"], policy="any"),
        stage("ask", "WaitStage", config={"input": "go"}, outputs={"payload": "asked"}),
        stage("work", "Set", config={"values": {"v": 1}, "delay": 1}, outputs={"v": "v"}),
        stage("other", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}),
        terminal("end", "v", "got"),
    ]
    pipeline = load(doc(nodes), registry)
    trio._core._run._r.seed(order)
    session = stageflow.Session(pipeline, registry=registry)
    receipts: list[stageflow.InputReceipt] = []
    taken: list[dict[str, Any]] = []

    def watch(event: stageflow.Event) -> None:
        if event.type == "branch_finished" and event.payload["branch"] == "work":
            receipts.append(session.send_input("go", {"n": 1}))
        if receipts and session.status is stageflow.SessionStatus.RUNNING:
            taken.append(json.loads(json.dumps(session.to_dict())))

    session.subscribe(watch)
    result = await session.run()
    assert [r.delivered for r in receipts] == [2]
    assert _deliveries(result, "go") == 2
    for data in taken:
        restored = await stageflow.Session.from_dict(data, registry=registry).run()
        assert restored.status is stageflow.SessionStatus.COMPLETED
        assert _deliveries(restored, "go") == 2, [e.type for e in restored.history]


async def test_a_finished_session_with_inputs_no_stage_saw_is_refused() -> None:
    nodes = [stage("ask", "WaitStage", config={"input": "go"}, next="end"), terminal("end")]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline)
    session.cancel("done")
    await session.run()
    data = json.loads(json.dumps(session.to_dict()))
    data["unseen_inputs"] = [{"input_type": "go", "payload": 1}]
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data, pipeline=pipeline)
    assert [p.location for p in caught.value.problems] == ["$.unseen_inputs"]
    assert "a cancelled session keeps no inputs to discard later" in str(caught.value)


async def test_a_snapshot_taken_at_session_started_keeps_the_session_deadline() -> None:
    """``limits.timeout``'s deadline was set after ``session_started`` was recorded.

    A snapshot a subscriber took at that event had ``deadline: null``, and the
    session restored from it had no deadline at all: it waited for ever.
    """
    nodes = [stage("ask", "WaitStage", config={"input": "go"}, next="end"), terminal("end")]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline, limits=stageflow.Limits(timeout=1000))
    taken: list[dict[str, Any]] = []
    session.subscribe(
        lambda event: taken.append(session.to_dict()) if event.type == "session_started" else None
    )
    first = await session.run(suspend=True)
    assert first.wake_at is not None
    assert taken[0]["deadline"] == first.wake_at.isoformat()
    restored = stageflow.Session.from_dict(taken[0], pipeline=pipeline)
    again = await restored.run(suspend=True)
    assert again.status is stageflow.SessionStatus.WAITING
    assert again.wake_at == first.wake_at


def _race_registry() -> stageflow.StageRegistry:
    stages = stageflow.StageRegistry()

    @stages.register("Work")
    async def work(ctx: stageflow.StageContext) -> dict[str, Any]:
        await anyio.sleep(ctx.config["seconds"])  # work, not a timer: never suspended
        return {"done": True}

    return stages


@pytest.mark.trio_only
async def test_suspend_mode_does_not_suspend_a_race_its_winner_has_decided() -> None:
    """``policy: any``: a branch that works wins while the other waits for an input.

    As the winner's branch ended, the loser (still counted as waiting, its
    cancellation not yet delivered) made every position look blocked: the run
    suspended, ``waiting_for`` ``('go',)``, a wait that was being cancelled,
    and an input sent for it as the docs' service does was lost. The race is
    decided: the run goes on to the end.
    """
    stages = _race_registry()
    nodes: list[dict[str, Any]] = [
        {"id": "race", "type": "parallel", "policy": "any", "children": ["w", "a"], "next": "end"},
        stage("w", "Work", config={"seconds": 3}, outputs={"done": "done"}),
        stage("a", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}),
        terminal("end", "done", "got"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)
    session = stageflow.Session(pipeline, registry=stages)
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"done": True, "got": None}


async def test_an_input_delivered_but_not_yet_seen_at_a_snapshot_is_received_from_the_sender() -> (
    None
):
    """A snapshot between the delivery of an input and the moment its stage wakes.

    The journal held the payload as if the stage had consumed it: the
    restored stage got it as a ``replay``, so no ``input_received`` from the
    sender was ever recorded for an input the sender was told was delivered
    (and a restored session that ended first did not list it as discarded).
    """
    nodes = [
        stage("ask", "WaitStage", config={"input": "go"}, outputs={"payload": "got"}, next="end"),
        terminal("end", "got"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline)
    taken: list[dict[str, Any]] = []

    def on_event(event: stageflow.Event) -> None:
        if event.type == "waiting_for_input":
            assert session.send_input("go", {"n": 1}).delivered == 1
            taken.append(session.to_dict())

    session.subscribe(on_event)
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED

    restored = stageflow.Session.from_dict(taken[0], pipeline=pipeline)
    result = await restored.run()
    assert result.artifacts == {"got": {"n": 1}}
    froms = [e.payload["from"] for e in result.history if e.type == "input_received"]
    assert froms == ["sender"]

    ended = stageflow.Session.from_dict(taken[0], pipeline=pipeline)
    ended.cancel("before it ran again")  # a waiting session ends at once
    assert ended.status is stageflow.SessionStatus.CANCELLED
    (discarded,) = [e for e in ended.history if e.type == "inputs_discarded"]
    assert discarded.payload["inputs"] == [{"input_type": "go", "payload": {"n": 1}}]


@pytest.mark.parametrize("at", ["node_started", "node_finished"])
async def test_a_cancel_from_a_callback_at_the_terminal_ends_the_session_cancelled(at: str) -> None:
    """``cancel()`` from a subscriber while the terminal node runs.

    The terminal never yields, so the run reached it before the cancellation
    was delivered and ended ``completed``: the cancel() was accepted and
    ignored, where the docs say run() returns ``cancelled`` with its reason.
    """
    pipeline = stageflow.Pipeline.from_dict(doc([terminal("end")]))
    session = stageflow.Session(pipeline)

    def on_event(event: stageflow.Event) -> None:
        if (event.type, event.node_id) == (at, "end"):
            session.cancel("stop")

    session.subscribe(on_event)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert result.result is None
    assert result.history[-1].type == "session_cancelled"
    assert result.history[-1].payload["reason"] == "stop"


async def test_a_snapshot_taken_while_a_step_limit_stops_sibling_branches_restores() -> None:
    """Two branches reach ``max_steps``: each counted its refused step.

    ``steps`` went two past the limit, and a snapshot a subscriber took at
    ``branch_failed`` / ``node_failed`` was refused by ``from_dict`` ("past
    limits.max_steps; no session gets there"). Only the first refused step counts.
    """
    registry = fake_registry()
    nodes = [
        stage("a", "Set", config={"values": {"x": 1}}, outputs={"x": "x"}, next="p"),
        {"id": "p", "type": "parallel", "children": ["l", "r"], "next": "end"},
        stage("l", "Set", config={"values": {"l": 1}}, outputs={"l": "l"}),
        stage("r", "Set", config={"values": {"r": 1}}, outputs={"r": "r"}),
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=registry)
    session = stageflow.Session(pipeline, limits=stageflow.Limits(max_steps=2))
    snapshots: list[dict[str, Any]] = []
    session.subscribe(lambda event: snapshots.append(json.loads(json.dumps(session.to_dict()))))
    result = await session.run()
    assert isinstance(result.error, stageflow.LimitExceededError)
    for snapshot in snapshots:
        stageflow.Session.from_dict(snapshot, pipeline=pipeline)


async def test_a_cancel_from_a_callback_as_a_node_fails_ends_the_session_cancelled() -> None:
    """``cancel()`` at ``node_started`` of a node that fails without yielding.

    The failure reached the run before the cancellation was delivered: the
    session ended ``failed`` although cancel() had been called during the run.
    """
    nodes = [
        {"id": "c", "type": "condition", "conditions": [{"if": {"var": "flag"}, "then": "end"}]},
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline, payload={"flag": False})

    def on_event(event: stageflow.Event) -> None:
        if (event.type, event.node_id) == ("node_started", "c"):
            session.cancel("stop")

    session.subscribe(on_event)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert result.history[-1].payload["reason"] == "stop"


async def test_a_session_a_limit_stopped_keeps_its_backlog_and_discards_none_of_it() -> None:
    """Stopped by a limit, the session keeps its backlog for the restore that raises it.

    Its final events listed the backlog in ``inputs_discarded`` too, and the
    restored session then received the same input: counted twice, once as
    dropped. Nothing is discarded now; the restored run receives it once.
    """
    nodes = [
        stage("a", "WaitStage", config={"input": "answer"}, outputs={"payload": "first"}, next="b"),
        stage(
            "b", "WaitStage", config={"input": "answer"}, outputs={"payload": "second"}, next="end"
        ),
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes))
    session = stageflow.Session(pipeline, limits=stageflow.Limits(max_steps=1))
    session.send_input("answer", {"n": 1})
    session.send_input("answer", {"n": 2})
    stopped = await session.run()
    assert isinstance(stopped.error, stageflow.LimitExceededError)
    assert stopped.discarded_inputs == ()
    assert "inputs_discarded" not in [event.type for event in stopped.history]
    data = json.loads(json.dumps(session.to_dict()))
    assert data["backlog"] == {"answer": [{"n": 2}]}

    raised = stageflow.Limits(max_steps=None)
    resumed = stageflow.Session.from_dict(data, pipeline=pipeline, limits=raised)
    result = await resumed.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert resumed.to_dict()["position"]["context"]["second"] == {"n": 2}
    assert _received_or_discarded(result, "answer") == 2  # each of the two, once


async def test_an_input_sent_after_a_limit_stopped_the_run_is_kept_for_the_resume() -> None:
    """Sent while a step limit's stop unwinds the run, an input is queued, not delivered.

    It was delivered to a wait that the stop's saved position holds
    unanswered, and that stage saw it before it was cancelled: the session
    restored with the limit raised ran the stage again without the input,
    which was in no event of the resumed session: lost. It is kept in the
    backlog now, and the resumed session's stage receives it.
    """
    registry = fake_registry()
    nodes = [
        {"id": "m", "type": "map", "items": "items", "body": "e", "concurrency": 2, "next": "end"},
        stage("e", "Set", next="w", config={"values": {}}),
        stage("w", "WaitStage", config={"input": "go"}),
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=registry)
    # m, then e and w of item 0, then e of item 1: item 1's w is refused.
    session = stageflow.Session(
        pipeline, registry=registry, payload={"items": [0, 1]}, limits=stageflow.Limits(max_steps=4)
    )
    receipts: list[stageflow.InputReceipt] = []

    def on_event(event: stageflow.Event) -> None:
        if event.type == "map_item_failed":  # the stop is decided, item 0 waits
            receipts.append(session.send_input("go", {"n": 1}))

    session.subscribe(on_event)
    stopped = await session.run()
    assert isinstance(stopped.error, stageflow.LimitExceededError)
    assert receipts == [stageflow.InputReceipt("go", 0, True)]
    assert stopped.discarded_inputs == ()
    data = json.loads(json.dumps(session.to_dict()))
    assert data["backlog"] == {"go": [{"n": 1}]}

    raised = stageflow.Limits(max_steps=None)
    resumed = stageflow.Session.from_dict(data, pipeline=pipeline, registry=registry, limits=raised)
    resumed.send_input("go", {"n": 2})
    result = await resumed.run()
    assert result.status is stageflow.SessionStatus.COMPLETED, result.error
    received = [e.payload["from"] for e in result.history if e.type == "input_received"]
    assert sorted(received) == ["backlog", "sender"]  # item 1 takes the queued one
    assert result.discarded_inputs == ()


@pytest.mark.parametrize("restored", [False, True])
async def test_an_input_parked_in_a_wait_whose_race_is_decided_first_is_carried(
    restored: bool,
) -> None:
    """Inputs sent to saved waits, then a run (suspend mode) decides a race before one replays.

    ``go`` reaches two saved waits (``delivered=2``); the race's other
    branch wins before ``ask`` runs again. The suspension dropped ``ask``'s
    parked input (the new position no longer holds it) without carrying it
    in ``unseen_inputs``: the session ended with one of the two deliveries.
    """
    registry = fake_registry()
    nodes = [
        parallel("both", ["race", "other"], next="last"),
        parallel("race", ["work", "ask"], policy="any"),
        stage("work", "WaitStage", config={"input": "x"}),
        stage("ask", "WaitStage", config={"input": "go"}),
        stage("other", "WaitStage", config={"input": "go"}),
        stage("last", "WaitStage", config={"input": "done"}, next="end"),
        terminal("end"),
    ]
    pipeline = load(doc(nodes), registry)
    session = stageflow.Session(pipeline, registry=registry)
    assert (await session.run(suspend=True)).waiting_for == ("go", "x")
    delivered = session.send_input("x", {}).delivered + session.send_input("go", {}).delivered
    assert delivered == 3
    assert (await session.run(suspend=True)).waiting_for == ("done",)
    if restored:
        data = json.loads(json.dumps(session.to_dict()))
        session = stageflow.Session.from_dict(data, registry=registry)
    session.send_input("done", {})
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert _received_or_discarded(result, "go") + _received_or_discarded(result, "x") == 3
