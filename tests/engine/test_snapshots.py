"""Snapshots: crash-point equivalence, nested positions, timers, suspend mode, rejections."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing
from example_support import EXAMPLES, load_module
from fakes import doc, fake_registry, load, parallel, stage, terminal
from hypothesis import given, settings
from hypothesis import strategies as st
from snapshot_support import (
    WAITING,
    Case,
    Script,
    chat_case,
    cut_at_event,
    cut_at_waits,
    documents_case,
    every_cut,
    json_round_trip,
    nested_registry,
    reference_case,
    uninterrupted,
)

import stageflow

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------ examples


def durable_chat_case() -> Case:
    stages = load_module("durable_chat_stages", EXAMPLES / "durable-chat" / "stages.py")
    pipeline = stageflow.Pipeline.load(
        EXAMPLES / "durable-chat" / "pipeline.json", registry=stages.registry
    )
    inputs = {
        "user_name": [{"name": "Ada"}],
        "user_message": [{"text": "hello"}, {"text": "what is a pipeline?"}, {"text": "bye"}],
    }
    return Case(pipeline, stages.registry, {}, inputs)


async def test_durable_chat_restored_at_every_wait_and_every_event() -> None:
    case = durable_chat_case()
    expected = await uninterrupted(case)
    assert expected.result == {"ended": "bye"}
    cuts = await cut_at_waits(case)
    assert [sorted(w) for w, _ in cuts] == [["user_name"]] + [["user_message"]] * 3
    assert all(outcome == expected for _, outcome in cuts)
    await every_cut(case, expected)


async def test_stage_pack_example_snapshotted_at_every_event() -> None:
    registry = stageflow.StageRegistry()
    registry.load_plugins(["echo"], strict=True)  # the example pack, installed by `make test`
    pipeline = stageflow.Pipeline.load(EXAMPLES / "stage-pack" / "pipeline.json", registry=registry)
    case = Case(pipeline, registry, {"question": "what is stageflow?"})
    expected = await uninterrupted(case)
    assert expected.result == {"status": "answered"}
    assert await every_cut(case, expected) > 5


CHAT = ["hello", "can you help me?", "what is a pipeline?", "tell me more", "bye"]


async def test_chat_restored_at_every_wait_ends_like_the_uninterrupted_run() -> None:
    case = chat_case(CHAT)
    expected = await uninterrupted(case)
    assert expected.status is stageflow.SessionStatus.COMPLETED
    cuts = await cut_at_waits(case)
    assert len(cuts) == len(CHAT)  # the greeting's wait, then one per message but the last
    for waiting_for, outcome in cuts:
        assert waiting_for == ("user_message",)
        assert outcome == expected


async def test_chat_snapshotted_at_every_event_ends_like_the_uninterrupted_run() -> None:
    case = chat_case([*CHAT[:3], "bye"])
    expected = await uninterrupted(case)
    assert await every_cut(case, expected) > 30


async def test_reference_snapshotted_at_every_event_ends_like_the_uninterrupted_run() -> None:
    case = reference_case()
    expected = await uninterrupted(case)
    assert expected.result == {"status": "ok"}
    assert await every_cut(case, expected) > 15


@pytest.mark.trio_only
async def test_documents_snapshotted_at_every_event_ends_like_the_uninterrupted_run() -> None:
    # Map items in flight, inside them subpipeline runs: every cut restores them.
    case = documents_case()
    expected = await uninterrupted(case)
    assert expected.status is stageflow.SessionStatus.COMPLETED
    assert await every_cut(case, expected) > 100


async def test_documents_snapshotted_at_some_events_ends_like_the_uninterrupted_run() -> None:
    case = documents_case()
    expected = await uninterrupted(case)
    for seq in (5, 37, 90):
        assert await cut_at_event(case, seq) == expected, f"cut at event {seq}"


@settings(max_examples=25, deadline=None)
@given(
    messages=st.lists(st.sampled_from(["hi", "help", "why?", "ok"]), max_size=4),
    cut=st.integers(min_value=1, max_value=80),
)
def test_property_chat_cut_at_a_random_event(messages: list[str], cut: int) -> None:
    case = chat_case([*messages, "bye"])

    async def main() -> None:
        expected = await uninterrupted(case)
        outcome = await cut_at_event(case, cut)
        assert outcome is None or outcome == expected

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# ------------------------------------------------------------ nested positions


NESTED = doc(
    [
        parallel("fan", ["left", "right", "inner"], next="each"),
        stage("left", "Ask", config={"input": "left"}, outputs={"answer": "left"}),
        stage("right", "Ask", config={"input": "right"}, outputs={"answer": "right"}),
        {
            "id": "inner",
            "type": "subpipeline",
            "pipeline": "asker",
            "inputs": {"who": "name"},
            "artifacts": {"said": "inner"},
        },
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "item_ask",
            "concurrency": 2,
            "collect": {"said": "answers"},
            "next": "end",
        },
        {
            "id": "item_ask",
            "type": "stage",
            "stage": "Ask",
            "config": {"input": "item", "prefix": "item:"},
            "outputs": {"answer": "said"},
        },
        terminal("end", "left", "right", "inner", "answers"),
    ],
    subpipelines={
        "asker": {
            "entry": "ask_inner",
            "nodes": [
                stage(
                    "ask_inner",
                    "Ask",
                    config={"input": "inner"},
                    outputs={"answer": "said"},
                    next="done",
                ),
                terminal("done", "said"),
            ],
        }
    },
)
NESTED_INPUTS = {
    "left": ["L"],
    "right": ["R"],
    "inner": ["I"],
    "item": ["a", "b", "c"],
}


def nested_case() -> Case:
    registry = nested_registry()
    return Case(load(NESTED, registry), registry, {"name": "n", "items": [1, 2, 3]}, NESTED_INPUTS)


async def test_waits_in_branches_a_subpipeline_and_map_items_restore_and_complete() -> None:
    case = nested_case()
    expected = await uninterrupted(case)
    assert expected.artifacts == {
        "left": "L",
        "right": "R",
        "inner": "I",
        "answers": ["item:a", "item:b", "item:c"],
    }
    session = case.session()
    suspended = await session.run(suspend=True)
    assert suspended.status is WAITING
    assert suspended.waiting_for == ("inner", "left", "right")
    snapshot = session.to_dict()
    branches = snapshot["position"]["parallel"]["branches"]
    assert [b["state"] for b in branches] == ["running"] * 3
    inner = branches[2]["position"]["subpipeline"]["position"]
    assert inner["node"] == "ask_inner"
    assert inner["stage"]["calls"] == [{"wait": "inner", "deadline": None}]
    restored = case.restore(snapshot)
    restored.send_input("left", "L")  # queued before run(): the resumed wait takes it
    second = await restored.run(suspend=True)
    assert second.waiting_for == ("inner", "right")
    snapshot = restored.to_dict()
    assert [b["state"] for b in snapshot["position"]["parallel"]["branches"]] == [
        "finished",
        "running",
        "running",
    ]
    restored = case.restore(snapshot)
    restored.send_input("right", "R")
    restored.send_input("inner", "I")
    third = await restored.run(suspend=True)
    assert third.waiting_for == ("item",)
    items = restored.to_dict()["position"]["map"]
    assert [r["index"] for r in items["running"]] == [0, 1]
    assert items["next"] == 2
    restored = case.restore(restored.to_dict())
    # Both waiting items get it, as they would live (issue 19).
    assert restored.send_input("item", "a").delivered == 2
    fourth = await restored.run(suspend=True)
    assert fourth.status is WAITING
    items = restored.to_dict()["position"]["map"]
    assert items["done"] == 2
    assert [r["index"] for r in items["running"]] == [2]
    restored = case.restore(restored.to_dict())
    restored.send_input("item", "c")
    result = await restored.run()
    assert result.artifacts["answers"] == ["item:a", "item:a", "item:c"]


async def test_nested_case_restored_at_every_wait_and_every_event() -> None:
    case = nested_case()
    expected = await uninterrupted(case)
    for _, outcome in await cut_at_waits(case):
        assert outcome == expected
    await every_cut(case, expected)


# ------------------------------------------------------------- the re-run contract


def counting_registry(counter: list[str]) -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    @registry.register("TwoQuestions")
    async def two(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        counter.append("start")
        ctx.emit("asking", {"what": "first"})
        first = await ctx.wait_input("first")
        counter.append("between")
        second = await ctx.wait_input("second")
        return {"both": [first, second]}

    return registry


TWO = doc(
    [stage("two", "TwoQuestions", outputs={"both": "both"}, next="end"), terminal("end", "both")]
)


async def test_a_restored_stage_reruns_and_gets_its_consumed_inputs_replayed() -> None:
    counter: list[str] = []
    registry = counting_registry(counter)
    session = stageflow.Session(load(TWO, registry), registry=registry)
    session.send_input("first", {"n": 1})
    suspended = await session.run(suspend=True)
    assert suspended.waiting_for == ("second",)
    calls = session.to_dict()["position"]["stage"]["calls"]
    assert calls == [
        {"wait": "first", "payload": {"n": 1}},
        {"wait": "second", "deadline": None},
    ]
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.send_input("second", {"n": 2})
    result = await restored.run()
    assert result.artifacts == {"both": [{"n": 1}, {"n": 2}]}
    # Code before the waits ran again; the first input was not awaited again.
    assert counter == ["start", "between", "start", "between"]
    received = [e.payload["from"] for e in result.history if e.type == "input_received"]
    # The second was sent to the restored session's saved wait: from its sender.
    assert received == ["backlog", "replay", "sender"]
    assert [e.type for e in result.history].count("asking") == 2


async def test_a_diverging_replay_is_recorded_and_the_call_runs_live() -> None:
    registry = stageflow.StageRegistry()
    kinds = ["a", "b"]

    @registry.register("Fickle")
    async def fickle(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        first = await ctx.wait_input(kinds[0])
        second = await ctx.wait_input("last")
        return {"value": [first, second]}

    document = doc(
        [stage("f", "Fickle", outputs={"value": "value"}, next="end"), terminal("end", "value")]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    session.send_input("a", 1)
    assert (await session.run(suspend=True)).waiting_for == ("last",)
    kinds[0] = "b"
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.send_input("b", 2)
    restored.send_input("last", 3)
    result = await restored.run()
    assert result.artifacts == {"value": [2, 3]}
    diverged = [e for e in result.history if e.type == "replay_diverged"]
    assert [e.payload for e in diverged] == [
        {"expected": "wait_input('a')", "got": "wait_input('b')"}
    ]


# ------------------------------------------------------------ other states


async def test_a_pending_session_round_trips() -> None:
    case = chat_case(["bye"])
    session = case.session()
    session.send_input("user_message", {"text": "bye"})
    data = json_round_trip(session.to_dict())
    assert data["status"] == "pending"
    assert data["position"] == {"path": "", "node": "greet", "context": {"user": {"name": "Ada"}}}
    restored = case.restore(data)
    assert restored.status is stageflow.SessionStatus.PENDING
    result = await restored.run()
    assert result.result == {"ended": "bye"}


async def test_event_times_are_read_and_written_back_as_datetime_reads_and_writes_them() -> None:
    # A restore reads each event's time as datetime.fromisoformat() does, and
    # the next snapshot writes it as isoformat() does: on a second (no
    # fraction), before 1970, at years 1 and 9999, with "Z", with fewer or
    # more digits than six.
    texts = [
        "1969-12-31T23:59:59.999999+00:00",
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T00:00:00.000000+00:00",
        "2026-01-01T00:00:00.000001+00:00",
        "2026-06-30T23:59:59.5Z",
        "2026-06-30T23:59:59.250000Z",
        "2026-06-30T23:59:59.1234567+00:00",
        "0001-01-01T00:00:00.000001+00:00",
        "9999-12-31T23:59:59.999999+00:00",
    ]
    case = chat_case(["bye"])
    session = case.session()
    assert (await session.run(suspend=True)).status is WAITING
    data = json_round_trip(session.to_dict())
    size = len(data["history"])
    assert size >= 2
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        for event, text in zip(data["history"], chunk, strict=False):
            event["timestamp"] = text
        restored = case.restore(copy.deepcopy(data))
        times = [datetime.datetime.fromisoformat(text) for text in chunk]
        assert [event.timestamp for event in restored.history][: len(chunk)] == times
        written = [event["timestamp"] for event in restored.to_dict()["history"]]
        assert written[: len(chunk)] == [time.isoformat() for time in times]


async def test_a_finished_session_round_trips_with_its_outcome() -> None:
    registry = fake_registry()
    document = doc([stage("boom", "Fail", config={"message": "no"}, next="end"), terminal("end")])
    session = stageflow.Session(load(document, registry), registry=registry, payload={"k": 1})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    assert restored.status is stageflow.SessionStatus.FAILED
    assert dict(restored.payload) == {"k": 1}
    assert [e.to_dict() for e in restored.history] == [e.to_dict() for e in result.history]
    assert restored.to_dict()["outcome"]["error"]["type"] == "StageError"
    with pytest.raises(stageflow.SessionStateError):
        await restored.run()


async def test_a_failed_branch_is_restored_and_still_fails_the_join() -> None:
    registry = nested_registry()
    document = doc(
        [
            parallel("fan", ["bad", "ask"], next="end", cancel_on_error=False),
            stage("bad", "Fail", config={"message": "broken"}),
            stage("ask", "Ask", config={"input": "x"}, outputs={"answer": "x"}),
            terminal("end"),
        ]
    )
    document["nodes"][0]["on_error"] = [{"errors": ["ValueError"], "next": "handled"}]
    document["nodes"].append(terminal("handled", "error"))
    session = stageflow.Session(load(document, registry), registry=registry)
    assert (await session.run(suspend=True)).status is WAITING
    branches = session.to_dict()["position"]["parallel"]["branches"]
    assert branches[0]["state"] == "failed"
    assert "ValueError" in branches[0]["error"]["classes"]
    restored = stageflow.Session.from_dict(json_round_trip(session.to_dict()), registry=registry)
    restored.send_input("x", 1)
    result = await restored.run()
    # The error edge matched the restored failure by its original class.
    assert result.result == {"ok": True}
    assert result.artifacts["error"]["type"] == "StageError"
    assert result.artifacts["error"]["causes"][0] == {"type": "ValueError", "message": "broken"}


async def test_snapshot_size_does_not_grow_with_the_number_of_nodes() -> None:
    registry = fake_registry()

    def chain(length: int) -> dict[str, Any]:
        nodes = [
            stage(f"n{i}", "Set", config={"values": {"v": i}}, outputs={"v": "v"}, next=f"n{i + 1}")
            for i in range(length)
        ]
        nodes.append(
            {
                "id": f"n{length}",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "go"},
                "next": "end",
            }
        )
        return doc([*nodes, terminal("end")])

    sizes = {}
    for length in (10, 100):
        session = stageflow.Session(load(chain(length), registry), registry=registry)
        await session.run(suspend=True)
        data = session.to_dict()
        sizes[length] = {
            key: len(json.dumps(data[key])) for key in ("position", "history", "pipeline")
        }
    # The position holds one context, whatever ran before (only the node id "n10" /
    # "n100", the value 9 / 99 and the visit count 11 / 101 differ); the history
    # and the document grow.
    assert sizes[100]["position"] - sizes[10]["position"] == 3
    assert sizes[100]["history"] > 5 * sizes[10]["history"]


# ------------------------------------------------------------------ rejections


async def suspended_chat() -> tuple[Case, dict[str, Any]]:
    case = chat_case([])
    session = case.session()
    await session.run(suspend=True)
    return case, json_round_trip(session.to_dict())


async def test_another_format_version_is_rejected() -> None:
    case, data = await suspended_chat()
    data["version"] = 7  # 1 to 6 are read
    with pytest.raises(stageflow.SnapshotVersionError) as caught:
        stageflow.Session.from_dict(data, registry=case.registry)
    assert caught.value.found == 7
    assert "version 7" in str(caught.value)
    assert caught.value.problems[0].location == "$.version"


async def test_something_else_is_rejected_as_no_snapshot() -> None:
    with pytest.raises(stageflow.SnapshotError, match="not a stageflow session snapshot"):
        stageflow.Session.from_dict({"status": "waiting"})


async def test_text_instead_of_a_snapshot_says_to_parse_it() -> None:
    _, data = await suspended_chat()
    with pytest.raises(stageflow.SnapshotError, match=r"got a string; pass .*json\.loads it"):
        stageflow.Session.from_dict(json.dumps(data))  # type: ignore[arg-type]


async def test_a_version_that_is_no_number_is_called_damaged() -> None:
    case, data = await suspended_chat()
    data["version"] = "1"
    with pytest.raises(stageflow.SnapshotVersionError, match="not a format version number"):
        stageflow.Session.from_dict(data, registry=case.registry)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        (True, "is true,"),  # True == 1: it passed for version 1, then failed the schema
        (1.0, "is 1.0,"),
        (3.0, "is 3.0,"),  # was accepted as version 3
        (10**5000, "is an integer,"),  # was a ValueError: too many digits to print
        (nested(100_000), "is an array,"),  # was a RecursionError printing it
        ({"a": "x" * 10**6}, "is an object,"),
    ],
    ids=["true", "1.0", "3.0", "huge-int", "deep", "object"],
)
async def test_a_version_that_is_no_version_number_is_a_version_error(
    version: Any, shown: str
) -> None:
    case, data = await suspended_chat()
    data["version"] = version
    with pytest.raises(stageflow.SnapshotVersionError) as caught:
        stageflow.Session.from_dict(data, registry=case.registry)
    message = caught.value.problems[0].message
    assert shown in message
    assert "not a format version number" in message
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("format", "shown"),
    [(nested(100_000), "an array"), ("x" * 10**6, "a string"), (None, "null")],
    ids=["deep", "long", "null"],
)
async def test_a_format_that_is_no_snapshot_format_is_named_briefly(
    format: Any, shown: str
) -> None:
    _, data = await suspended_chat()
    data["format"] = format
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data)
    assert f"('format' is {shown}, not 'stageflow.session-snapshot')" in str(caught.value)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"pipeline": {"api_version": "1.0"}}, r"from_dict\(pipeline=\.\.\.\) was given a dict"),
        ({"registry": {}}, r"from_dict\(registry=\.\.\.\) was given a dict"),
    ],
    ids=["pipeline dict", "registry dict"],
)
async def test_restore_arguments_of_the_wrong_kind_are_named(
    arguments: dict[str, Any], says: str
) -> None:
    # A pipeline document instead of a Pipeline raised a bare AttributeError; a
    # dict registry was taken for none, so the default registry was searched.
    _, data = await suspended_chat()
    with pytest.raises(TypeError, match=says):
        stageflow.Session.from_dict(data, **arguments)


async def test_a_forgotten_registry_is_named() -> None:
    _, data = await suspended_chat()
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data)
    assert "no registry= was passed" in str(caught.value)
    assert "'Greet'" in str(caught.value)


async def test_a_malformed_snapshot_lists_its_problems() -> None:
    case, data = await suspended_chat()
    del data["history"]
    data["steps"] = "many"
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data, registry=case.registry)
    assert not isinstance(caught.value, stageflow.SnapshotMismatchError)
    locations = {p.location for p in caught.value.problems}
    assert "$.steps" in locations
    assert any("history" in p.message for p in caught.value.problems)


async def test_an_altered_pipeline_document_is_a_digest_mismatch() -> None:
    case, data = await suspended_chat()
    data["pipeline"]["document"]["limits"]["max_steps"] = 7
    with pytest.raises(stageflow.SnapshotMismatchError, match="digest"):
        stageflow.Session.from_dict(data, registry=case.registry)


async def test_a_changed_pipeline_passed_explicitly_is_accepted_when_its_nodes_exist() -> None:
    case, data = await suspended_chat()
    document = json.loads((EXAMPLES / "chat" / "pipeline.json").read_text())
    document["metadata"]["description"] = "version two"
    changed = stageflow.Pipeline.from_dict(document, registry=case.registry)
    assert changed.digest != data["pipeline"]["digest"]
    restored = stageflow.Session.from_dict(data, registry=case.registry, pipeline=changed)
    restored.send_input("user_message", {"text": "bye"})
    result = await restored.run()
    assert result.result == {"ended": "bye"}
    resumed = next(e for e in result.history if e.type == "session_resumed")
    assert resumed.payload["previous_digest"] == data["pipeline"]["digest"]
    assert restored.to_dict()["pipeline"]["digest"] == changed.digest


async def test_a_pipeline_without_the_active_node_is_rejected() -> None:
    case, data = await suspended_chat()
    document = json.loads((EXAMPLES / "chat" / "pipeline.json").read_text())
    for node in document["nodes"]:
        if node["id"] == "listen":
            node["id"] = "hear"
        for key in ("next",):
            if node.get(key) == "listen":
                node[key] = "hear"
    text = json.dumps(document).replace('"listen"', '"hear"')
    changed = stageflow.Pipeline.from_dict(json.loads(text), registry=case.registry)
    with pytest.raises(stageflow.SnapshotMismatchError) as caught:
        stageflow.Session.from_dict(data, registry=case.registry, pipeline=changed)
    assert [p.location for p in caught.value.problems] == ["$.position.node"]
    assert "'listen'" in str(caught.value)


async def test_a_changed_pipeline_that_cannot_have_the_position_is_a_mismatch() -> None:
    # A smaller retry policy than the attempt the session waits in: refused
    # as a plain SnapshotError before, which a service moving sessions to a
    # new pipeline version, catching SnapshotMismatchError, did not expect.
    registry = stageflow.StageRegistry()

    @registry.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> dict[str, Any]:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return {"got": await ctx.wait_input("go")}

    def pipeline(attempts: int) -> stageflow.Pipeline:
        nodes = [
            {
                **stage("f", "Flaky", outputs={"got": "got"}, next="end"),
                "retry": {"attempts": attempts, "delay": 0},
            },
            terminal("end", "got"),
        ]
        return stageflow.Pipeline.from_dict(doc(nodes), registry=registry)

    session = stageflow.Session(pipeline(3))
    assert (await session.run(suspend=True)).status is stageflow.SessionStatus.WAITING
    data = json.loads(json.dumps(session.to_dict()))
    with pytest.raises(stageflow.SnapshotMismatchError) as caught:
        stageflow.Session.from_dict(data, pipeline=pipeline(2))
    assert [p.location for p in caught.value.problems] == ["$.position.stage.attempt"]
    assert "attempt 3 is past the 2 attempt(s)" in str(caught.value)
    # The same position in a snapshot altered against its own pipeline is no
    # mismatch: the snapshot does not make sense.
    data["position"]["stage"]["attempt"] = 4
    with pytest.raises(stageflow.SnapshotError) as damaged:
        stageflow.Session.from_dict(data, pipeline=pipeline(2))
    assert not isinstance(damaged.value, stageflow.SnapshotMismatchError)


async def test_a_decided_race_moved_to_reordered_children_keeps_its_winner() -> None:
    # The saved winner is an index in the saved branches; it was read as an
    # index in the new pipeline's children, so with them reordered the loser
    # "won": the winner's writes were dropped (won: None), or the snapshot
    # was refused as having a cancelled winner.
    registry = fake_registry()

    def pipeline(children: list[str]) -> stageflow.Pipeline:
        nodes = [
            parallel("race", children, next="end", policy="any"),
            stage("fast", "Set", config={"values": {"v": "fast"}}, outputs={"v": "won"}),
            stage("slow", "WaitStage", config={"input": "never"}, outputs={"payload": "lost"}),
            terminal("end", "won", "lost"),
        ]
        return load(doc(nodes), registry)

    session = stageflow.Session(pipeline(["fast", "slow"]), registry=registry)
    taken: list[dict[str, Any]] = []

    def take(event: stageflow.Event) -> None:
        if event.type in ("branch_finished", "branch_cancelled"):
            taken.append(json.loads(json.dumps(session.to_dict())))

    session.subscribe(take)
    assert (await session.run()).artifacts == {"won": "fast", "lost": None}
    assert [s["position"]["parallel"]["winner"] for s in taken] == [0, 0]
    for data in taken:
        restored = stageflow.Session.from_dict(data, pipeline=pipeline(["slow", "fast"]))
        result = await restored.run()
        assert (result.status, result.artifacts) == (
            stageflow.SessionStatus.COMPLETED,
            {"won": "fast", "lost": None},
        )


async def test_unknown_node_ids_in_the_snapshot_are_rejected() -> None:
    case, data = await suspended_chat()
    data["position"]["node"] = "nowhere"
    data["current_node"] = "nowhere"
    with pytest.raises(stageflow.SnapshotMismatchError, match="'nowhere'"):
        stageflow.Session.from_dict(data, registry=case.registry)


async def test_a_node_of_another_type_is_rejected() -> None:
    case, data = await suspended_chat()
    data["position"]["node"] = "route"  # a condition node, but the frame holds a stage
    with pytest.raises(stageflow.SnapshotMismatchError, match="was a stage node"):
        stageflow.Session.from_dict(data, registry=case.registry)


async def test_running_a_restored_session_twice_is_refused() -> None:
    case = chat_case(["bye"])
    restored = case.restore((await suspended_chat())[1])
    Script({"user_message": [{"text": "bye"}]}).attach(restored)
    await restored.run()
    with pytest.raises(stageflow.SessionStateError):
        await restored.run()


def terminal_in_branch(*, inside_subpipeline: bool) -> Case:
    registry = nested_registry()
    race = [
        parallel("race", ["quick", "slow"], next="after"),
        stage("quick", "Set", config={"values": {"q": 1}}, outputs={"q": "q"}, next="early"),
        terminal("early", "q", result={"ended": "early"}),
        stage("slow", "Ask", config={"input": "never"}, outputs={"answer": "slow"}),
        terminal("after", result={"ended": "after"}),
    ]
    if not inside_subpipeline:
        return Case(load(doc(race), registry), registry, {})
    document = doc(
        [
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "racer",
                "result_output": "inner",
                "artifacts": {"q": "q"},
                "next": "end",
            },
            terminal("end", "inner", "q"),
        ],
        subpipelines={"racer": {"entry": "race", "nodes": race}},
    )
    return Case(load(document, registry), registry, {})


@pytest.mark.parametrize("inside_subpipeline", [False, True])
async def test_a_terminal_in_a_branch_still_ends_the_run_after_any_cut(
    inside_subpipeline: bool,
) -> None:
    case = terminal_in_branch(inside_subpipeline=inside_subpipeline)
    expected = await uninterrupted(case)
    assert expected.status is stageflow.SessionStatus.COMPLETED
    await every_cut(case, expected)


async def test_a_frame_with_both_contexts_or_two_records_is_explained_plainly() -> None:
    case, data = await suspended_chat()
    data["position"]["writes"] = []
    data["position"]["parallel"] = {"branches": [], "winner": None}
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(data, registry=case.registry)
    messages = {p.location: p.message for p in caught.value.problems}
    assert messages["$.position"].startswith("a frame has both 'context' and 'writes'")
    assert "'user'" not in messages["$.position"]  # the frame itself is not quoted
    assert messages["$.position.parallel"].startswith("a frame holds at most one of")


async def test_a_snapshot_without_a_session_id_says_so_without_naming_one() -> None:
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict({"format": "stageflow.session-snapshot", "version": 1})
    assert "in session" not in str(caught.value)
    assert "$" in {p.location for p in caught.value.problems}
