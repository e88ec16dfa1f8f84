"""Subpipelines and map nodes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from conftest import live_tasks
from fakes import (
    doc,
    fake_registry,
    load,
    parallel,
    scaled,
    stage,
    terminal,
    types,
    wait_until_waiting,
)

import stageflow
import stageflow.builtins
from stageflow._guard import MAX_NESTING

pytestmark = pytest.mark.anyio

S = stageflow.SessionStatus


class Gauge:
    """Observes how many items run at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0


def work_registry(gauge: Gauge | None = None) -> stageflow.StageRegistry:
    registry = fake_registry()
    gauge = gauge or Gauge()

    @registry.register("Work")
    async def work(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        item = ctx.arguments["item"]
        gauge.active += 1
        gauge.peak = max(gauge.peak, gauge.active)
        try:
            await anyio.sleep(scaled(item.get("delay", 0)))
        finally:
            gauge.active -= 1
        if item.get("fail"):
            raise ValueError(f"item {item['v']} failed")
        return {"out": item["v"] * 10}

    return registry


def map_doc(**map_fields: Any) -> dict[str, Any]:
    node = {
        "id": "m",
        "type": "map",
        "items": "items",
        "body": "w",
        "collect": {"out": "outs"},
        "next": "end",
    }
    node.update(map_fields)
    return doc(
        [
            node,
            stage("w", "Work", arguments={"item": "item"}, outputs={"out": "out"}),
            terminal("end", "outs", "failed"),
        ]
    )


async def run_map(
    items: list[Any],
    registry: stageflow.StageRegistry | None = None,
    *,
    limits: stageflow.Limits | None = None,
    **fields: Any,
) -> stageflow.SessionResult:
    registry = registry or work_registry()
    session = stageflow.Session(
        load(map_doc(**fields), registry),
        registry=registry,
        payload={"items": items},
        limits=limits,
    )
    return await session.run()


async def test_collects_in_item_order_whatever_the_finish_order() -> None:
    rng = random.Random(4)
    items = [{"v": i, "delay": rng.randint(1, 9)} for i in range(20)]
    result = await run_map(items, concurrency=5)
    assert result.status is S.COMPLETED
    assert result.artifacts["outs"] == [i * 10 for i in range(20)]
    finish_order = [e.payload["index"] for e in result.history if e.type == "map_item_completed"]
    assert finish_order != sorted(finish_order)  # they really finished out of order


@pytest.mark.parametrize("limit", [1, 3])
async def test_concurrency_never_exceeds_the_limit(limit: int) -> None:
    gauge = Gauge()
    items = [{"v": i, "delay": 1 + i % 3} for i in range(12)]
    result = await run_map(items, work_registry(gauge), concurrency=limit)
    assert result.status is S.COMPLETED
    assert gauge.peak == limit


async def test_empty_list_gives_empty_collected_lists() -> None:
    result = await run_map([], concurrency=4)
    assert result.artifacts["outs"] == []


async def test_fail_fast_cancels_the_rest_and_leaves_no_task() -> None:
    items = [{"v": 0, "delay": 1, "fail": True}, *({"v": i, "delay": 100} for i in range(1, 6))]
    before = live_tasks()
    result = await run_map(items, concurrency=3)
    assert live_tasks() == before
    assert result.status is S.FAILED
    assert isinstance(result.error, stageflow.MapError)
    assert [i for i, _ in result.error.failures] == [0]
    assert isinstance(result.error.__cause__, stageflow.StageError)
    assert "map_item_cancelled" in types(result)
    assert types(result).count("map_item_started") == 3  # the others never started


@pytest.mark.parametrize("fields", [{"max_failures": 2}, {"max_failure_ratio": 0.5}])
async def test_tolerated_failures_are_reported(fields: dict[str, Any]) -> None:
    items = [{"v": i, "fail": i in (1, 3)} for i in range(4)]
    result = await run_map(items, concurrency=2, failures_path="failed", **fields)
    assert result.status is S.COMPLETED
    assert result.artifacts["outs"] == [0, None, 20, None]
    assert [f["index"] for f in result.artifacts["failed"]] == [1, 3]
    assert result.artifacts["failed"][0]["error"]["causes"][0]["message"] == "item 1 failed"


@pytest.mark.parametrize(("ratio", "total"), [(0.29, 100), (0.57, 100), (0.1, 30)])
async def test_a_failure_ratio_tolerates_its_decimal_fraction_of_the_items(
    ratio: float, total: int
) -> None:
    """0.29 of 100 items is 29, although the float 0.29 times 100 is 28.999999999999996."""
    tolerated = round(ratio * total)
    items = [{"v": i, "fail": i < tolerated} for i in range(total)]
    result = await run_map(items, concurrency=4, max_failure_ratio=ratio, failures_path="failed")
    assert result.status is S.COMPLETED, result.error
    assert len(result.artifacts["failed"]) == tolerated
    items[tolerated]["fail"] = True
    result = await run_map(items, concurrency=4, max_failure_ratio=ratio)
    assert f"{tolerated + 1} of {total} items failed (tolerated: {tolerated})" in str(result.error)


async def test_too_many_failures_fail_the_node() -> None:
    items = [{"v": i, "fail": True} for i in range(3)]
    result = await run_map(items, concurrency=1, max_failures=1)
    assert isinstance(result.error, stageflow.MapError)
    assert "2 of 3 items failed (tolerated: 1)" in str(result.error)


async def test_items_must_be_a_list() -> None:
    result = await run_map({"not": "a list"})  # type: ignore[arg-type]
    assert isinstance(result.error, stageflow.MapError)
    assert "holds an object, not a list" in str(result.error)


async def test_map_items_that_are_null_or_a_number_are_named_as_json_names_them() -> None:
    # The message said "holds a NoneType" and "holds a int".
    for items, found in ((None, "holds null, not a list"), (7, "holds an integer, not a list")):
        result = await run_map(items)  # type: ignore[arg-type]
        assert isinstance(result.error, stageflow.MapError)
        assert found in str(result.error)


async def test_map_items_are_isolated_and_only_collect_flows_back() -> None:
    registry = work_registry()
    document = map_doc(concurrency=2)
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"items": [{"v": 1}, {"v": 2}]}
    )
    await session.run()
    assert "out" not in session.payload
    assert "item" not in session.payload


async def test_an_item_reads_the_parent_through_its_fork_and_collects_its_own_writes() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Scale")
    async def scale(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        arguments = ctx.arguments
        return {"out": arguments["item"] * arguments["factor"], "at": arguments["index"]}

    document = doc(
        [
            {
                "id": "m",
                "type": "map",
                "items": "items",
                "body": "w",
                "collect": {"out": "outs", "at": "ats"},
                "next": "end",
            },
            stage(
                "w",
                "Scale",
                arguments={"item": "item", "factor": "factor", "index": "index"},
                outputs={"out": "out", "at": "at"},
            ),
            terminal("end", "outs", "ats"),
        ]
    )
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        payload={"items": [1, 2, 3], "factor": 10, "out": "the parent's"},
    )
    result = await session.run()
    assert result.artifacts == {"outs": [10, 20, 30], "ats": [0, 1, 2]}
    assert session.payload["out"] == "the parent's"  # an item's writes stay in its fork


@pytest.mark.parametrize("source", ["summary", "summary.n"])
async def test_collect_takes_only_what_an_item_wrote_as_a_copy(source: str) -> None:
    # Items 0 and 2 write nothing at the collected path: null, as documented,
    # not the parent's value read through the fork. Item 1 writes summary.n,
    # so its summary is copied on write from the parent's, sharing "keep"
    # with it: the collected value must not change when the parent's "keep"
    # is later changed in place (nor differ after a snapshot and restore).
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "m",
                "type": "map",
                "items": "items",
                "body": "pick",
                "collect": {source: "sums"},
                "next": "touch",
            },
            {
                "id": "pick",
                "type": "condition",
                "conditions": [{"if": {">": [{"var": "item"}, 1]}, "then": "write"}],
                "else": "skip",
            },
            stage("write", "Echo", arguments={"n": "item"}, outputs={"n": "summary.n"}),
            stage("skip", "Set", config={"values": {"x": 1}}, outputs={"x": "other"}),
            stage("touch", "Set", config={"values": {"d": 2}}, outputs={"d": "summary.keep.d"}),
            terminal("end", "sums", "summary"),
        ]
    )
    document["nodes"][4]["next"] = "end"
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        payload={"items": [0, 5, 0], "summary": {"n": "parent", "keep": {"d": 1}}},
    )
    result = await session.run()
    written = {"n": 5, "keep": {"d": 1}} if source == "summary" else 5
    assert result.artifacts == {
        "sums": [None, written, None],
        "summary": {"n": "parent", "keep": {"d": 2}},
    }


@pytest.mark.parametrize("edge", [False, True])
async def test_an_item_path_under_a_scalar_fails_the_map_with_a_map_error(edge: bool) -> None:
    # Before: the path error came from the workers' task group, so run()
    # raised a bare exception group, and an error edge routed "ExceptionGroup".
    node: dict[str, Any] = {
        "id": "m",
        "type": "map",
        "items": "items",
        "body": "w",
        "item_path": "cur.item",
        "next": "end",
    }
    if edge:
        node["on_error"] = [{"errors": ["MapError"], "next": "end", "error_path": "err"}]
    document = doc([node, stage("w", "Echo", arguments={"y": "cur.item"}), terminal("end", "err")])
    registry = fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"items": [1, 2], "cur": 5}
    )
    result = await session.run()
    if edge:
        assert result.status is S.COMPLETED
        assert result.artifacts["err"]["type"] == "MapError"
        assert "item_path 'cur.item'" in result.artifacts["err"]["message"]
    else:
        assert result.status is S.FAILED
        assert isinstance(result.error, stageflow.MapError)
        assert "segment 'cur' holds an integer" in str(result.error)
        assert types(result)[-1] == "session_failed"


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"collect": {"out": "done.outs"}}, "the list collected from 'out'"),
        ({"failures_path": "done.failed", "max_failures": 1}, "its failures (failures_path)"),
    ],
)
async def test_a_collect_target_that_cannot_be_written_is_a_map_error_naming_it(
    fields: dict[str, Any], what: str
) -> None:
    # Before: a bare ContextPathError, with no node id and no word of the map.
    registry = work_registry()
    session = stageflow.Session(
        load(map_doc(**fields), registry),
        registry=registry,
        payload={"items": [{"v": 1}], "done": 5},
    )
    result = await session.run()
    assert isinstance(result.error, stageflow.MapError)
    assert result.error.node_id == "m"
    assert str(result.error).startswith(f"map node 'm': {what} cannot be written: ")
    assert "segment 'done' holds an integer" in str(result.error)
    assert isinstance(result.error.__cause__, stageflow.ContextPathError)
    assert session.payload["done"] == 5  # nothing written


@pytest.mark.trio_only
async def test_ten_thousand_items() -> None:
    items = [{"v": i} for i in range(10_000)]
    result = await run_map(items, concurrency=8, limits=stageflow.Limits(max_steps=20_000))
    assert result.artifacts["outs"][-1] == 99_990


async def test_error_edge_on_a_map() -> None:
    document = map_doc(concurrency=1, fallback="end")
    registry = work_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"items": [{"v": 1, "fail": True}]}
    )
    result = await session.run()
    assert result.status is S.COMPLETED
    assert session.payload["error"]["type"] == "MapError"


# ------------------------------------------------------------------ subpipelines

CHILD = {
    "entry": "ask",
    "nodes": [
        {
            "id": "ask",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "approve"},
            "outputs": {"payload": "answer"},
            "next": "done",
        },
        {
            "id": "done",
            "type": "terminal",
            "result": {"approved": True},
            "artifacts": ["answer", "note"],
        },
    ],
}


def sub_node(node_id: str, *, next: str | None = None, **fields: Any) -> dict[str, Any]:
    node = {
        "id": node_id,
        "type": "subpipeline",
        "pipeline": "approval",
        "inputs": {"note": "note"},
        "result_output": f"{node_id}_result",
        "artifacts": {"answer": f"{node_id}_answer", "note": f"{node_id}_note"},
    }
    if next is not None:
        node["next"] = next
    node.update(fields)
    return node


async def test_input_reaches_a_stage_in_a_subpipeline_in_a_parallel_branch() -> None:
    document = doc(
        [
            parallel("fan", ["left", "right"], next="end"),
            sub_node("left"),
            sub_node("right"),
            terminal("end", "left_answer", "right_answer", "left_note", "left_result"),
        ],
        subpipelines={"approval": CHILD},
    )
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry, payload={"note": "hi"})
    async with anyio.create_task_group() as tg:

        async def approve() -> None:
            await wait_until_waiting(session, "approve", 2)
            assert session.send_input("approve", "yes").delivered == 2

        tg.start_soon(approve)
        result = await session.run()
    assert result.status is S.COMPLETED
    assert result.artifacts == {
        "left_answer": "yes",
        "right_answer": "yes",
        "left_note": "hi",
        "left_result": {"approved": True},
    }
    paths = {(e.path, e.node_id) for e in result.history if e.type == "waiting_for_input"}
    assert paths == {("fan/left/left", "ask"), ("fan/right/right", "ask")}


async def test_nested_subpipelines_and_event_paths() -> None:
    inner = {
        "entry": "s",
        "nodes": [
            stage("s", "Set", config={"values": {"v": 7}}, outputs={"v": "v"}, next="t"),
            terminal("t", "v"),
        ],
    }
    middle = {
        "entry": "call",
        "nodes": [
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "inner",
                "artifacts": {"v": "v"},
                "next": "t",
            },
            terminal("t", "v"),
        ],
        "subpipelines": {"inner": inner},
    }
    document = doc(
        [
            {
                "id": "outer",
                "type": "subpipeline",
                "pipeline": "middle",
                "artifacts": {"v": "v"},
                "next": "end",
            },
            terminal("end", "v"),
        ],
        subpipelines={"middle": middle},
    )
    result = await _run(document)
    assert result.artifacts == {"v": 7}
    started = [(e.path, e.node_id) for e in result.history if e.type == "node_started"]
    assert ("outer/call", "s") in started


async def _run(document: dict[str, Any]) -> stageflow.SessionResult:
    registry = fake_registry()
    return await stageflow.Session(load(document, registry), registry=registry).run()


async def test_missing_artifact_at_run_time_lists_the_existing_ones() -> None:
    child = {
        "entry": "c",
        "nodes": [
            {
                "id": "c",
                "type": "condition",
                "conditions": [{"if": True, "then": "short"}],
                "else": "long",
            },
            terminal("short", "a"),
            terminal("long", "a", "b"),
        ],
    }
    document = doc(
        [
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "child",
                "artifacts": {"b": "b"},
                "next": "end",
            },
            terminal("end"),
        ],
        subpipelines={"child": child},
    )
    result = await _run(document)
    assert isinstance(result.error, stageflow.SubpipelineError)
    assert "returns no artifact 'b' (it returns: 'a')" in str(result.error)


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"result_output": "done.result"}, "its result (result_output)"),
        ({"artifacts": {"a": "done.a"}}, "artifact 'a'"),
    ],
)
async def test_a_target_that_cannot_be_written_is_a_subpipeline_error_naming_it(
    fields: dict[str, Any], what: str
) -> None:
    # Before: a bare ContextPathError, with no node id and no word of the node.
    child = {"entry": "t", "nodes": [terminal("t", "a")]}
    node = {"id": "call", "type": "subpipeline", "pipeline": "child", "next": "end", **fields}
    document = doc([node, terminal("end")], subpipelines={"child": child})
    registry = fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry, payload={"done": 5})
    result = await session.run()
    assert isinstance(result.error, stageflow.SubpipelineError)
    assert result.error.node_id == "call"
    assert str(result.error).startswith(f"subpipeline node 'call': {what} cannot be written: ")
    assert isinstance(result.error.__cause__, stageflow.ContextPathError)
    assert session.payload == {"done": 5}  # nothing written


async def test_inputs_that_cross_each_other_in_the_child_are_a_subpipeline_error() -> None:
    child = {"entry": "t", "nodes": [terminal("t")]}
    node = {
        "id": "call",
        "type": "subpipeline",
        "pipeline": "child",
        "inputs": {"a": "p", "a.b": "q"},
        "next": "end",
    }
    document = doc([node, terminal("end")], subpipelines={"child": child})
    registry = fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"p": 1, "q": 2}
    )
    result = await session.run()
    assert isinstance(result.error, stageflow.SubpipelineError)
    assert result.error.node_id == "call"
    assert "input 'a.b' (from 'q') cannot be written into the context of 'child'" in str(
        result.error
    )


async def test_terminal_in_a_branch_of_a_subpipeline_ends_only_the_subpipeline() -> None:
    child = {
        "entry": "fan",
        "nodes": [
            parallel("fan", ["quick", "hang"], next="t"),
            stage("quick", "Set", next="early"),
            terminal("early", result={"how": "early"}),
            stage("hang", "Hang"),
            terminal("t"),
        ],
    }
    document = doc(
        [
            {
                "id": "call",
                "type": "subpipeline",
                "pipeline": "child",
                "result_output": "r",
                "next": "end",
            },
            terminal("end", "r"),
        ],
        subpipelines={"child": child},
    )
    result = await _run(document)
    assert result.status is S.COMPLETED
    assert result.artifacts == {"r": {"how": "early"}}


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(document, work_registry())
    return {p.location: p.message for p in info.value.problems}


def test_unknown_subpipeline_id() -> None:
    found = problems(
        doc(
            [
                {"id": "call", "type": "subpipeline", "pipeline": "nope", "next": "end"},
                terminal("end"),
            ],
            subpipelines={"other": CHILD},
        )
    )
    assert "declared: other" in found["$.nodes[0].pipeline"]


def test_recursion_is_rejected() -> None:
    a = {
        "entry": "x",
        "nodes": [{"id": "x", "type": "subpipeline", "pipeline": "b", "next": "t"}, terminal("t")],
    }
    b = {
        "entry": "y",
        "nodes": [{"id": "y", "type": "subpipeline", "pipeline": "a", "next": "t"}, terminal("t")],
    }
    found = problems(
        doc(
            [
                {"id": "call", "type": "subpipeline", "pipeline": "a", "next": "end"},
                terminal("end"),
            ],
            subpipelines={"a": a, "b": b},
        )
    )
    assert any("recursive (a -> b -> a)" in message for message in found.values())


def test_a_long_chain_of_subpipelines_is_refused_for_its_depth() -> None:
    # 2,000 sibling subpipelines, each calling the next: the loader's walk of
    # the calls recursed once per link and raised a bare RecursionError.
    links = 2000
    subpipelines = {
        f"s{i}": {
            "entry": "c",
            "nodes": [
                {"id": "c", "type": "subpipeline", "pipeline": f"s{i + 1}", "next": "t"},
                terminal("t"),
            ],
        }
        for i in range(links - 1)
    }
    subpipelines[f"s{links - 1}"] = {"entry": "t", "nodes": [terminal("t")]}
    document = doc(
        [{"id": "c", "type": "subpipeline", "pipeline": "s0", "next": "end"}, terminal("end")],
        subpipelines=subpipelines,
    )
    assert f"nest {links} levels deep" in problems(document)["$.subpipelines"]


def test_problems_inside_subpipelines_are_located_there() -> None:
    child = {"entry": "s", "nodes": [stage("s", "Set", next="nowhere"), terminal("t")]}
    found = problems(
        doc(
            [
                {"id": "call", "type": "subpipeline", "pipeline": "child", "next": "end"},
                terminal("end"),
            ],
            subpipelines={"child": child},
        )
    )
    assert "$.subpipelines.child.nodes[0].next" in found


def test_nesting_deeper_than_the_limit() -> None:
    level3 = {"entry": "t", "nodes": [terminal("t")]}
    level2 = {
        "entry": "c",
        "nodes": [{"id": "c", "type": "subpipeline", "pipeline": "l3", "next": "t"}, terminal("t")],
        "subpipelines": {"l3": level3},
    }
    document = doc(
        [{"id": "c", "type": "subpipeline", "pipeline": "l2", "next": "end"}, terminal("end")],
        subpipelines={"l2": level2},
        limits={"max_depth": 1},
    )
    assert "nest 2 levels deep" in problems(document)["$.subpipelines"]


@pytest.mark.parametrize("outer", ["map", "parallel"])
async def test_maps_and_branches_nested_past_max_depth_fail_the_run(outer: str) -> None:
    """limits.max_depth counts map items as well as parallel branches (docs/errors.md)."""
    if outer == "map":
        top: dict[str, Any] = {"id": "outer", "type": "map", "items": "xs", "body": "mid"}
    else:
        top = parallel("outer", ["mid"])
    nodes = [
        {**top, "next": "end"},
        {"id": "mid", "type": "map", "items": "xs", "body": "inner"},
        {"id": "inner", "type": "map", "items": "xs", "body": "leaf"},
        stage("leaf", "Set"),
        terminal("end"),
    ]
    result = await stageflow.Session(
        load(doc(nodes, limits={"max_depth": 2})), payload={"xs": [1]}
    ).run()
    assert result.status == S.FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert (result.error.limit, result.error.value, result.error.node_id) == (
        "max_depth",
        2,
        "inner",
    )
    result = await stageflow.Session(
        load(doc(nodes, limits={"max_depth": 3})), payload={"xs": [1]}
    ).run()
    assert result.status == S.COMPLETED


def test_map_body_must_not_escape_its_region() -> None:
    document = map_doc()
    document["nodes"][1]["next"] = "end"
    found = problems(document)
    assert "closed region" in found["$.nodes[0].body"]


def test_collect_path_the_body_never_writes() -> None:
    found = problems(map_doc(collect={"nope": "x"}))
    assert "collects 'nope'" in found["$.nodes[0].collect.nope"]


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (
            {"collect": {"out": "x", "item": "x"}},
            "collect.item",
            "writes the list of 'out' and the list of 'item' both at 'x'",
        ),
        (
            {"collect": {"out": "x.y", "item": "x"}},
            "collect.out",
            "writes the list of 'out' at 'x.y', inside the list of 'item' at 'x'",
        ),
        (
            {"failures_path": "outs", "max_failures": 1},
            "failures_path",
            "the list of 'out' and the failures (failures_path) both at 'outs'",
        ),
        (
            {"item_path": "cur", "index_path": "cur"},
            "index_path",
            "the item (item_path) and the index (index_path) both at 'cur'",
        ),
        (
            {"item_path": "cur", "index_path": "cur.i"},
            "index_path",
            "at 'cur.i', inside the item (item_path) at 'cur'",
        ),
    ],
)
def test_a_map_writing_two_values_at_one_path_is_a_load_error(
    fields: dict[str, Any], field: str, says: str
) -> None:
    # Before: the later write replaced the earlier one in silence (a collected
    # list, the item replaced by its index), or every run failed on it.
    found = problems(map_doc(**fields))
    assert says in found[f"$.nodes[0].{field}"]


def test_a_subpipeline_node_writing_two_values_at_one_path_is_a_load_error() -> None:
    # Before: the artifact replaced the result in silence.
    document = doc(
        [sub_node("call", next="end", result_output="r", artifacts={"answer": "r"}), terminal()],
        subpipelines={"approval": CHILD},
    )
    message = problems(document)["$.nodes[0].artifacts.answer"]
    assert "the result (result_output) and artifact 'answer' both at 'r'" in message


def test_a_subpipeline_input_written_around_an_earlier_one_is_a_load_error() -> None:
    # Before: the child's "a" replaced the "a.b" copied just before it, in silence.
    node = sub_node("call", next="end", inputs={"a.b": "q", "a": "p"})
    message = problems(doc([node, terminal()], subpipelines={"approval": CHILD}))[
        "$.nodes[0].inputs.a"
    ]
    assert "writes the input from 'p' at 'a', around the input from 'q'" in message


async def test_a_subpipeline_artifact_may_be_written_inside_its_result() -> None:
    node = sub_node("call", next="end", result_output="r", artifacts={"answer": "r.answer"})
    document = doc([node, terminal("end", "r")], subpipelines={"approval": CHILD})
    registry = work_registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    session.send_input("approve", {"yes": True})
    result = await session.run()
    assert result.artifacts == {"r": {"approved": True, "answer": {"yes": True}}}


def test_unmapped_child_artifact_is_a_load_error() -> None:
    document = doc(
        [sub_node("call", next="end", artifacts={"ghost": "g"}), terminal("end")],
        subpipelines={"approval": CHILD},
    )
    assert "returns artifact 'ghost'" in problems(document)["$.nodes[0].artifacts.ghost"]


_FAILING = {
    "entry": "f",
    "nodes": [
        {
            "id": "f",
            "type": "stage",
            "stage": "builtins.fail",
            "config": {"message": "no"},
            "next": "t",
        },
        terminal("t"),
    ],
}


def _recovering_branches(error_paths: tuple[str, str]) -> dict[str, Any]:
    branches: list[dict[str, Any]] = []
    for side, error_path in zip(("l", "r"), error_paths, strict=True):
        branches += [
            {
                "id": side,
                "type": "subpipeline",
                "pipeline": "failing",
                "on_error": [{"next": f"{side}_ok", "error_path": error_path}],
            },
            {
                "id": f"{side}_ok",
                "type": "stage",
                "stage": "builtins.set",
                "config": {"value": side},
                "outputs": {"value": side},
            },
        ]
    return doc(
        [
            {"id": "fan", "type": "parallel", "children": ["l", "r"], "next": "end"},
            *branches,
            terminal("end", "l", "r"),
        ],
        subpipelines={"failing": _FAILING},
    )


async def test_what_error_edges_write_counts_in_the_branch_write_check() -> None:
    # Two branches that each recovered through an error edge writing 'error'
    # passed the load check, then failed at the join with MergeConflictError.
    registry = stageflow.builtins.registry()
    with pytest.raises(stageflow.PipelineValidationError) as refused:
        stageflow.Pipeline.from_dict(_recovering_branches(("error", "error")), registry=registry)
    [problem] = refused.value.problems
    assert problem.location == "$.nodes[0].children"
    assert "branches 'l' and 'r' can both write 'error'" in problem.message
    pipeline = stageflow.Pipeline.from_dict(
        _recovering_branches(("l_error", "r_error")), registry=registry
    )
    result = await stageflow.Session(pipeline, registry=registry).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"l": "l", "r": "r"}


async def test_a_map_may_collect_what_its_bodys_error_edge_writes() -> None:
    # It was refused at load: "collects 'error', which no node of its body writes".
    document = doc(
        [
            {
                "id": "m",
                "type": "map",
                "items": "items",
                "body": "s",
                "collect": {"error.message": "messages"},
                "next": "end",
            },
            {"id": "s", "type": "subpipeline", "pipeline": "failing", "fallback": "noted"},
            {"id": "noted", "type": "stage", "stage": "builtins.log", "config": {}},
            terminal("end", "messages"),
        ],
        subpipelines={"failing": _FAILING},
    )
    registry = stageflow.builtins.registry()
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    result = await stageflow.Session(pipeline, registry=registry, payload={"items": [1, 2]}).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert [m.split(":")[-1].split("(")[0].strip() for m in result.artifacts["messages"]] == [
        "no",
        "no",
    ]


def test_a_subpipeline_id_that_spells_another_ones_location_is_refused() -> None:
    # Both got the key $.subpipelines.a.subpipelines.b: the node naming the
    # top-level one ran the one nested in 'a', and the other was never checked.
    leaf = {"entry": "t", "nodes": [terminal("t")]}
    found = problems(
        doc(
            [
                {
                    "id": "call",
                    "type": "subpipeline",
                    "pipeline": "a.subpipelines.b",
                    "next": "end",
                },
                terminal("end"),
            ],
            subpipelines={
                "a.subpipelines.b": leaf,
                "a": {**leaf, "subpipelines": {"b": leaf}},
            },
        )
    )
    assert (
        "two subpipelines are declared at this location" in found["$.subpipelines.a.subpipelines.b"]
    )


@pytest.mark.parametrize("kind", ["map", "parallel"])
def test_maps_and_branches_nested_deeper_than_any_run_may_are_refused(kind: str) -> None:
    # 2,000 nested maps (or parallels) loaded, in time quadratic in their number
    # (11 s here), though no run could nest them: limits.max_depth is at most 64.
    def nested(levels: int) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = []
        for i in range(levels):
            inner = f"n{i + 1}"
            node: dict[str, Any] = (
                {"id": f"n{i}", "type": "map", "items": "xs", "body": inner}
                if kind == "map"
                else {"id": f"n{i}", "type": "parallel", "children": [inner]}
            )
            if i == 0:
                node["next"] = "end"
            nodes.append(node)
        return doc([*nodes, stage(f"n{levels}", "Set"), terminal("end")])

    load(nested(MAX_NESTING), work_registry())  # as deep as a run may nest: fine
    found = problems(nested(2000))
    assert list(found) == ["$.nodes[2000]"]
    assert "nest 2000 levels deep here, more than any run may nest (64" in found["$.nodes[2000]"]


def _waiting_child_doc(kind: str) -> dict[str, Any]:
    wait = {
        "id": "w",
        "type": "stage",
        "stage": "WaitStage",
        "config": {"input": "go"},
        "outputs": {"payload": "answer"},
    }
    if kind == "stage":
        first: list[dict[str, Any]] = [{**wait, "id": "n", "timeout": 1, "next": "end"}]
    else:
        first = [{"id": "n", "type": "subpipeline", "pipeline": "c", "timeout": 1, "next": "end"}]
    child = {"entry": "w", "nodes": [{**wait, "next": "t"}, terminal("t")]}
    return doc([*first, terminal("end")], subpipelines={"c": child})


@pytest.mark.trio_only
@pytest.mark.parametrize(("kind", "status"), [("stage", S.COMPLETED), ("subpipeline", S.FAILED)])
async def test_a_subpipelines_timeout_counts_input_waits_and_a_stages_does_not(
    kind: str, status: stageflow.SessionStatus
) -> None:
    # What docs/snapshots.md said ("time spent waiting for input never counts
    # against them") was true of a stage's timeout only; the docs now say so.
    registry = stageflow.StageRegistry()
    session = stageflow.Session(
        stageflow.Pipeline.from_dict(_waiting_child_doc(kind), registry=registry),
        registry=registry,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await anyio.sleep(5)  # virtual time: a person answering late
        if session.status is S.RUNNING:
            session.send_input("go", "hi")
    assert session.status is status
    if status is S.FAILED:
        [event] = [e for e in session.history if e.type == "node_failed"]
        assert event.payload["error"]["type"] == "NodeTimeoutError"
