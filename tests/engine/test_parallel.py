"""Parallel nodes: branch scoping, policies, isolation, merge and cancellation."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from conftest import live_tasks
from fakes import (
    doc,
    fake_registry,
    load,
    parallel,
    run,
    scaled,
    stage,
    terminal,
    types,
    wait_until_waiting,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

import stageflow

pytestmark = pytest.mark.anyio

COMPLETED = stageflow.SessionStatus.COMPLETED
FAILED = stageflow.SessionStatus.FAILED


def set_node(node_id: str, path: str, value: object, *, delay: float = 0, next: str | None = None):
    return stage(
        node_id,
        "Set",
        config={"values": {"v": value}, "delay": delay},
        outputs={"v": path},
        next=next,
    )


def fan(children: list[dict], *, policy: str = "all", **extra: object) -> dict:
    return doc(
        [
            parallel("fan", [c["id"] for c in children], next="end", policy=policy, **extra),
            *children,
            terminal("end", "a", "b", "shared"),
        ]
    )


async def test_branch_runs_its_whole_subgraph_up_to_the_join() -> None:
    pipeline = doc(
        [
            parallel("fan", ["a1", "b1"], next="end"),
            set_node("a1", "a", 1, next="a2"),
            set_node("a2", "a", 2, next="end"),
            set_node("b1", "b", 3),
            terminal("end", "a", "b"),
        ]
    )
    result = await run(pipeline)
    assert result.status is COMPLETED
    assert result.artifacts == {"a": 2, "b": 3}
    # The join runs once, after the branches, on the main path.
    assert [e.path for e in result.history if e.node_id == "end" and e.type == "node_started"] == [
        ""
    ]


async def test_any_merges_only_the_winner() -> None:
    pipeline = fan(
        [set_node("fast", "a", 1, delay=1), set_node("slow", "b", 2, delay=5)], policy="any"
    )
    result = await run(pipeline)
    assert result.status is COMPLETED
    assert result.artifacts == {"a": 1, "b": None, "shared": None}
    assert ("branch_cancelled", "fan/slow") in [(e.type, e.path) for e in result.history]
    assert "node_failed" not in types(result)


async def test_any_loser_that_finishes_in_time_is_still_not_merged() -> None:
    pipeline = fan(
        [set_node("first", "a", 1, delay=1), set_node("second", "b", 2, delay=1)], policy="any"
    )
    result = await run(pipeline)
    # Both finish at the same moment; only the one that won is merged.
    merged = {k: v for k, v in result.artifacts.items() if v is not None}
    assert merged in ({"a": 1}, {"b": 2})


@pytest.mark.parametrize(("delay_a", "delay_b"), [(1, 2), (2, 1)])
async def test_merge_order_is_children_order_not_finish_order(
    delay_a: float, delay_b: float
) -> None:
    pipeline = fan(
        [
            set_node("x", "shared", "from-x", delay=delay_a),
            set_node("y", "shared", "from-y", delay=delay_b),
        ],
    )
    pipeline["reducers"] = {"shared": "append"}
    result = await run(pipeline, payload={"shared": ["before"]})
    assert result.artifacts["shared"] == ["before", "from-x", "from-y"]


@pytest.mark.parametrize(("strategy", "expected"), [("first", "from-x"), ("last", "from-y")])
async def test_merge_strategy_picks_by_children_order(strategy: str, expected: str) -> None:
    pipeline = fan(
        [set_node("x", "shared", "from-x", delay=2), set_node("y", "shared", "from-y", delay=1)],
        merge=strategy,
    )
    result = await run(pipeline)
    assert result.artifacts["shared"] == expected


@pytest.mark.parametrize(
    ("reducer", "base", "values", "expected"),
    [
        ("append", [0], [1, 2], [0, 1, 2]),
        ("extend", [0], [[1], [2, 3]], [0, 1, 2, 3]),
        ("merge", {"k": 0}, [{"a": 1}, {"k": 2}], {"k": 2, "a": 1}),
        ("sum", 10, [1, 2], 13),
        ("max", 1, [5, 3], 5),
        ("min", 4, [5, 3], 3),
    ],
)
async def test_reducers(reducer: str, base: object, values: list[object], expected: object) -> None:
    pipeline = fan([set_node("x", "shared", values[0]), set_node("y", "shared", values[1])])
    pipeline["reducers"] = {"shared": reducer}
    result = await run(pipeline, payload={"shared": base})
    assert result.artifacts["shared"] == expected


@pytest.mark.parametrize(
    ("reducer", "base", "values", "expected"),
    [
        ("append", [0], [1, 2, 3], [0, 1, [2, 3]]),
        ("extend", [0], [[1], [2], [3]], [0, 1, 2, 3]),
        ("merge", {"k": 0}, [{"k": 1}, {"b": 2}, {"c": 3}], {"k": 1, "b": 2, "c": 3}),
        ("sum", 10, [1, 2, 3], 16),
    ],
)
async def test_a_nested_join_folds_the_value_before_the_outer_node_in_once(
    reducer: str, base: object, values: list[object], expected: object
) -> None:
    """A branch's value at a reducer's path is its contribution, also when a join made it.

    The inner join folds ``y`` and ``z`` into what branch ``inner`` wrote (nothing),
    not into the parent's value it reads through: the outer join folds that in.
    """
    pipeline = doc(
        [
            parallel("fan", ["x", "inner"], next="end"),
            set_node("x", "shared", values[0]),
            parallel("inner", ["y", "z"]),
            set_node("y", "shared", values[1]),
            set_node("z", "shared", values[2]),
            terminal("end", "shared"),
        ]
    )
    pipeline["reducers"] = {"shared": reducer}
    result = await run(pipeline, payload={"shared": base})
    assert result.status is COMPLETED, result.error
    assert result.artifacts["shared"] == expected


async def test_a_nested_join_folds_into_what_its_branch_wrote_before() -> None:
    pipeline = doc(
        [
            parallel("fan", ["x", "own"], next="end"),
            set_node("x", "shared", 1),
            set_node("own", "shared", 5, next="inner"),
            parallel("inner", ["y", "z"]),
            set_node("y", "shared", 2),
            set_node("z", "shared", 3),
            terminal("end", "shared"),
        ]
    )
    pipeline["reducers"] = {"shared": "sum"}
    result = await run(pipeline, payload={"shared": 10})
    assert result.artifacts["shared"] == 10 + 1 + 5 + 2 + 3


@pytest.mark.parametrize("strategy", ["first", "last"])
async def test_a_reducer_folds_a_contribution_its_branch_wrote_inside_too(strategy: str) -> None:
    """The branch's later write inside its own contribution made one branch's be dropped."""
    pipeline = doc(
        [
            parallel("fan", ["x", "y"], next="end", merge=strategy),
            set_node("x", "shared", {"x": 1}, next="x2"),
            set_node("x2", "shared.y", 2),
            set_node("y", "shared", {"z": 3}),
            terminal("end", "shared"),
        ],
        reducers={"shared": "merge"},
    )
    result = await run(pipeline, payload={"shared": {"n0": 0}})
    assert result.status is COMPLETED, result.error
    assert result.artifacts["shared"] == {"n0": 0, "x": 1, "y": 2, "z": 3}


async def test_a_node_that_writes_inside_its_own_output_is_no_other_writer_at_a_join() -> None:
    """Its outputs ``shared`` and ``shared.y`` are written at once: ``shared.y`` is
    part of its branch's contribution at ``shared``. The load check took it for
    another writer, inside a path a reducer combines, and refused the pipeline."""
    pipeline = doc(
        [
            parallel("fan", ["x", "y"], next="end"),
            stage(
                "x",
                "Set",
                config={"values": {"v": {"x": 1}, "w": 2}},
                outputs={"v": "shared", "w": "shared.y"},
            ),
            set_node("y", "shared", {"z": 3}),
            terminal("end", "shared"),
        ],
        reducers={"shared": "merge"},
    )
    result = await run(pipeline, payload={"shared": {"n0": 0}})
    assert result.status is COMPLETED, result.error
    assert result.artifacts["shared"] == {"n0": 0, "x": 1, "y": 2, "z": 3}


async def test_reducer_that_cannot_combine_fails_the_node() -> None:
    pipeline = fan([set_node("x", "shared", "text"), set_node("y", "shared", 1)])
    pipeline["reducers"] = {"shared": "sum"}
    result = await run(pipeline)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.NodeError)
    assert result.error.node_id == "fan"
    assert "reducer 'sum'" in str(result.error)


@pytest.mark.parametrize(
    ("reducer", "base", "found"),
    [
        ("append", "abc", "a string, not an array"),
        ("extend", {"k": 1}, "an object, not an array"),
        ("merge", [["k", 1]], "an array, not an object"),
        ("merge", "ab", "a string, not an object"),
    ],
)
async def test_a_reducer_over_an_old_value_it_cannot_fold_into_fails_the_node(
    reducer: str, base: object, found: str
) -> None:
    """Not a string split into characters, a dict's keys, nor a raw ValueError from run()."""
    values = [["x"], ["y"]] if reducer == "extend" else [{"a": 1}, {"b": 2}]
    if reducer == "append":
        values = ["x", "y"]
    pipeline = fan([set_node("x", "shared", values[0]), set_node("y", "shared", values[1])])
    pipeline["reducers"] = {"shared": reducer}
    result = await run(pipeline, payload={"shared": base})
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.NodeError)
    assert result.error.node_id == "fan"
    assert f"the value before the parallel node is {found}" in str(result.error)


@pytest.mark.parametrize("reducer", ["sum", "max", "min"])
async def test_a_number_reducer_over_an_old_value_not_a_number_says_so(reducer: str) -> None:
    """It blamed the branches ("a branch wrote \"5\"") for the value the path had before."""
    pipeline = fan([set_node("x", "shared", 1), set_node("y", "shared", 2)])
    pipeline["reducers"] = {"shared": reducer}
    result = await run(pipeline, payload={"shared": "5"})
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.NodeError)
    message = str(result.error)
    assert "the value before the parallel node is a string, not a number" in message
    assert "wrote" not in message


async def test_a_value_a_reducer_cannot_combine_names_the_branch_that_wrote_it() -> None:
    pipeline = fan([set_node("x", "shared", [1]), set_node("y", "shared", {"k": 1})])
    pipeline["reducers"] = {"shared": "extend"}
    result = await run(pipeline)
    assert result.status is FAILED
    assert "(branch 'y' wrote an object, not an array)" in str(result.error)


async def test_a_join_whose_reducer_fails_merges_nothing() -> None:
    """The paths before the one a reducer cannot combine are not written either."""
    both = stage(
        "x",
        "Set",
        config={"values": {"a": 1, "s": "text"}},
        outputs={"a": "a", "s": "shared"},
    )
    pipeline = doc(
        [
            parallel(
                "fan",
                ["x", "y"],
                next="end",
                on_error=[{"errors": ["NodeError"], "next": "handled"}],
            ),
            both,
            set_node("y", "shared", 1),
            terminal("end", "a", "shared"),
            terminal("handled", "a", "shared", "error.node_id", result={"ok": False}),
        ],
        reducers={"shared": "sum"},
    )
    result = await run(pipeline)
    assert result.status is COMPLETED
    assert result.result == {"ok": False}
    assert result.artifacts == {"a": None, "shared": None, "error.node_id": "fan"}


@pytest.mark.parametrize(
    ("first_writes", "second_writes", "strategy", "expected"),
    [
        (("a", 5), ("a.b", 1), "first", 5),
        (("a", 5), ("a.b", 1), "last", {"b": 1}),
        (("a.b", 1), ("a", {"c": 2}), "first", {"b": 1}),
        (("a.b", 1), ("a", {"c": 2}), "last", {"c": 2}),
    ],
)
async def test_first_and_last_keep_one_branch_where_one_wrote_inside_the_others_path(
    first_writes: tuple[str, object],
    second_writes: tuple[str, object],
    strategy: str,
    expected: object,
) -> None:
    """Paths a and a.b from two branches conflict; first / last settle it by children order."""
    pipeline = doc(
        [
            parallel("fan", ["x", "y"], next="end", merge=strategy),
            set_node("x", first_writes[0], first_writes[1]),
            set_node("y", second_writes[0], second_writes[1], delay=1),
            terminal("end", "a"),
        ]
    )
    result = await run(pipeline)
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": expected}


async def test_branches_see_the_parent_but_not_each_other() -> None:
    registry_doc = fan(
        [
            stage("x", "Echo", arguments={"seen": "b"}, outputs={"seen": "a"}),
            set_node("y", "b", "from-y", delay=1),
        ]
    )
    result = await run(registry_doc, payload={"b": "parent"})
    # x read the parent's b; y's write is not visible to its sibling.
    assert result.artifacts == {"a": "parent", "b": "from-y", "shared": None}


async def test_terminal_inside_a_branch_ends_the_session() -> None:
    pipeline = doc(
        [
            parallel("fan", ["quick", "hang"], next="end"),
            set_node("quick", "a", 1, next="early"),
            terminal("early", "a", result={"ended": "early"}),
            stage("hang", "Hang"),
            terminal("end"),
        ]
    )
    before = live_tasks()
    result = await run(pipeline)
    assert live_tasks() == before
    assert result.status is COMPLETED
    assert result.result == {"ended": "early"}
    assert result.artifacts == {"a": 1}
    assert ("branch_cancelled", "fan/hang") in [(e.type, e.path) for e in result.history]
    assert "end" not in [e.node_id for e in result.history]


@pytest.mark.parametrize("extra", [{"cancel_on_error": False}, {"policy": "any"}])
async def test_a_terminal_after_a_sibling_failed_still_completes_the_session(
    extra: dict[str, object],
) -> None:
    """The node never ends, so neither its error nor its error edges are reached."""
    pipeline = doc(
        [
            parallel("fan", ["bad", "slow"], next="end", on_error=[{"next": "handled"}], **extra),
            stage("bad", "Fail", config={"delay": 1}),
            set_node("slow", "a", 1, delay=2, next="early"),
            terminal("early", "a", result={"ended": "early"}),
            terminal("handled", result={"ended": "handled"}),
            terminal("end"),
        ]
    )
    result = await run(pipeline)
    assert (result.status, result.result, result.error) == (COMPLETED, {"ended": "early"}, None)
    assert ("branch_failed", "fan/bad") in [(e.type, e.path) for e in result.history]


async def test_a_branch_leading_back_to_its_parallel_node_nests_until_max_depth() -> None:
    pipeline = doc(
        [
            parallel("fan", ["again", "other"], next="end"),
            stage("again", "Set", config={"values": {}}, next="fan"),
            stage("other", "Set", config={"values": {}}),
            terminal("end"),
        ],
        limits={"max_depth": 5},
    )
    before = live_tasks()
    result = await run(pipeline)
    assert live_tasks() == before
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.LimitExceededError)
    assert (result.error.limit, result.error.node_id) == ("max_depth", "fan")
    deepest = max(e.path.count("/") for e in result.history if e.type == "branch_started")
    assert deepest == 2 * 5 - 1  # fan/again/fan/again/.../fan/other: five levels


async def test_cancel_on_error_cancels_siblings() -> None:
    pipeline = fan([stage("bad", "Fail", config={"delay": 1}), stage("hang", "Hang")])
    before = live_tasks()
    result = await run(pipeline)
    assert live_tasks() == before
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.StageError)
    assert result.error.node_id == "bad"
    events = [(e.type, e.path) for e in result.history if e.type.startswith("branch_")]
    assert ("branch_failed", "fan/bad") in events
    assert ("branch_cancelled", "fan/hang") in events
    assert ("node_cancelled", "hang") in [(e.type, e.node_id) for e in result.history]


async def test_without_cancel_on_error_all_branches_finish_and_errors_are_grouped() -> None:
    pipeline = fan(
        [
            stage("bad1", "Fail", config={"delay": 1, "message": "one"}),
            set_node("ok", "a", 1, delay=2),
            stage("bad2", "Fail", config={"delay": 3, "message": "two"}),
        ],
        cancel_on_error=False,
    )
    result = await run(pipeline)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.ParallelRunError)
    assert isinstance(result.error, ExceptionGroup)
    assert [e.node_id for e in result.error.exceptions] == ["bad1", "bad2"]  # type: ignore[attr-defined]
    assert result.error.node_id == "fan"
    assert result.to_dict()["error"]["node_id"] == "fan"
    assert ("branch_finished", "fan/ok") in [(e.type, e.path) for e in result.history]
    # A failed session keeps its history, ending with session_failed.
    assert result.history[-1].type == "session_failed"


async def test_any_fails_only_when_every_branch_failed() -> None:
    one_ok = fan([stage("bad", "Fail"), set_node("ok", "a", 1, delay=1)], policy="any")
    assert (await run(one_ok)).status is COMPLETED
    all_bad = fan(
        [stage("bad1", "Fail", config={"delay": 1}), stage("bad2", "Fail", config={"delay": 2})],
        policy="any",
    )
    result = await run(all_bad)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.ParallelRunError)
    assert len(result.error.exceptions) == 2


@pytest.mark.parametrize("policy", ["all", "any"])
async def test_no_task_survives_run(policy: str) -> None:
    pipeline = fan(
        [set_node("x", "a", 1, delay=1), stage("hang", "Hang" if policy == "any" else "Set")],
        policy=policy,
    )
    before = live_tasks()
    result = await run(pipeline)
    assert result.status is COMPLETED
    assert live_tasks() == before


async def test_nested_parallel_paths() -> None:
    pipeline = doc(
        [
            parallel("outer", ["inner", "b"], next="end"),
            parallel("inner", ["a"]),
            set_node("a", "a", 1),
            set_node("b", "b", 2),
            terminal("end", "a", "b"),
        ]
    )
    result = await run(pipeline)
    assert result.artifacts == {"a": 1, "b": 2}
    paths = {e.node_id: e.path for e in result.history if e.type == "node_started"}
    assert paths == {
        "outer": "",
        "inner": "outer/inner",
        "a": "outer/inner/inner/a",
        "b": "outer/b",
        "end": "",
    }


@pytest.mark.parametrize(("value", "branch"), [(1, 0), (2, 1), (3, "else")])
async def test_condition_records_which_branch_matched(value: int, branch: object) -> None:
    conditions = [
        {"if": {"==": [{"var": "x"}, 1]}, "then": "end"},
        {"if": {"==": [{"var": "x"}, 2]}, "then": "end"},
    ]
    document = doc(
        [{"id": "c", "type": "condition", "conditions": conditions, "else": "end"}, terminal("end")]
    )
    result = await run(document, payload={"x": value})
    [finished] = [e for e in result.history if e.type == "node_finished" and e.node_id == "c"]
    assert finished.payload["branch"] == branch


async def test_concurrency_bounds_how_many_branches_run_at_once() -> None:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    children = [
        stage(name, "Wait", config={"input": "go"}, outputs={"payload": name})
        for name in ("a", "b", "c", "d")
    ]
    document = doc(
        [
            parallel("fan", ["a", "b", "c", "d"], next="end", concurrency=2),
            *children,
            terminal("end", "a", "b", "c", "d"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    rounds: list[list[str | None]] = []

    async def answer_two_at_a_time() -> None:
        for n in (1, 2):
            await wait_until_waiting(session, "go", 2)
            waiting = [e.node_id for e in session.history if e.type == "waiting_for_input"]
            rounds.append(waiting[2 * (n - 1) :])
            assert session.send_input("go", n).delivered == 2

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer_two_at_a_time)
        result = await session.run()
    assert result.status is COMPLETED
    # Two at a time, started in `children` order as others end.
    assert [sorted(r) for r in rounds] == [["a", "b"], ["c", "d"]]
    assert result.artifacts == {"a": 1, "b": 1, "c": 2, "d": 2}


async def test_a_sum_over_a_text_value_quotes_it_as_json_and_briefly() -> None:
    # It said "('x' * 100_000)!r is not a number": the whole value, in Python's repr.
    pipeline = fan([set_node("x", "shared", "y" * 100_000), set_node("y", "shared", 1)])
    pipeline["reducers"] = {"shared": "sum"}
    result = await run(pipeline)
    assert result.status is FAILED
    message = str(result.error)
    assert "(branch 'x' wrote \"yyyy" in message
    assert "..., not a number)" in message
    assert len(message) < 400


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize("path", ["shared", "deep.shared"])
@pytest.mark.parametrize("spare", [0, 1])
async def test_an_append_never_nests_the_context_deeper_than_a_snapshot_holds(
    path: str, spare: int
) -> None:
    """A contribution as deep as its path takes went one level deeper in the list:
    the session completed with a snapshot that could not be restored."""
    registry = fake_registry()
    # As deep as a stage may write at ``path`` (or a level less): a context
    # nests at most 256 levels (docs/pipeline-format.md, "Context paths").
    levels = 256 - path.count(".") - 1 - spare

    @registry.register("Deep")
    async def deep(ctx: stageflow.StageContext) -> dict[str, object]:
        return {"v": nested(levels)}

    pipeline = doc(
        [
            parallel("fan", ["x", "y"], next="end"),
            stage("x", "Deep", outputs={"v": path}),
            set_node("y", path, 2),
            terminal("end"),
        ],
        reducers={path: "append"},
    )
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    result = await session.run()
    stageflow.Session.from_dict(session.to_dict(), registry=registry)  # restores
    if spare:
        assert result.status is COMPLETED, result.error
    else:
        assert result.status is FAILED
        assert isinstance(result.error, stageflow.NodeError)
        assert "reducer 'append'" in str(result.error)
        assert "more than 256 levels deep" in str(result.error)


# A branch's worker task is cancelled with the cancel scopes around it as a
# ``start_soon`` task is, with their deadlines and shields. They guard any
# other way of starting branch tasks on asyncio (two were tried and not merged:
# benchmarks/patches/, and "Fan-out on asyncio" in benchmarks/RESULTS.md).


async def test_a_branch_stage_sees_the_parallel_nodes_timeout_as_its_deadline() -> None:
    registry = fake_registry()
    deadlines: list[float] = []

    @registry.register("Deadline")
    async def deadline(ctx: stageflow.StageContext) -> dict[str, object]:
        deadlines.append(anyio.current_effective_deadline())
        return {}

    timeout = scaled(30)
    pipeline = doc(
        [
            parallel("fan", ["a", "b"], next="end", timeout=timeout),
            stage("a", "Deadline"),
            stage("b", "Deadline"),
            terminal("end"),
        ]
    )
    start = anyio.current_time()
    result = await run(pipeline, registry=registry)
    end = anyio.current_time()
    assert result.status is COMPLETED, result.error
    assert len(deadlines) == 2
    assert all(start + timeout <= d <= end + timeout for d in deadlines), deadlines


async def test_a_shield_in_a_losing_branch_holds_off_its_cancellation_until_it_ends() -> None:
    registry = fake_registry()
    steps: list[str] = []

    @registry.register("Shielded")
    async def shielded(ctx: stageflow.StageContext) -> dict[str, object]:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(scaled(2))
            steps.append("shielded part done")
        await anyio.sleep(scaled(10))
        steps.append("not cancelled")
        return {"b": 2}

    pipeline = fan(
        [set_node("fast", "a", 1, delay=1), stage("slow", "Shielded", outputs={"b": "b"})],
        policy="any",
    )
    result = await run(pipeline, registry=registry)
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": 1, "b": None, "shared": None}
    assert steps == ["shielded part done"]
    assert ("branch_cancelled", "fan/slow") in [(e.type, e.path) for e in result.history]


class _Stop(BaseException):
    """A ``BaseException`` of a stage's own: not a failure, it goes up to the caller."""


async def test_a_base_exception_from_a_branch_stage_goes_up_through_the_parallel_node() -> None:
    registry = fake_registry()

    @registry.register("Stop")
    async def stop(ctx: stageflow.StageContext) -> None:
        raise _Stop

    pipeline = fan([stage("a", "Stop"), set_node("b", "b", 2, delay=5)])
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    # Alone, as on the main path (test_interrupts.py), the sibling cancelled on its way.
    with pytest.raises(_Stop):
        await session.run()
    assert ("branch_cancelled", "fan/b") in [(e.type, e.path) for e in session.history]


# Were a branch's task on asyncio asyncio's own, in an anyio cancel scope of
# its own (benchmarks/patches/asyncio-scoped-group.patch), the scopes around
# the parallel node would not know it. These tests cancel those scopes while
# a branch is shielded, or give them a deadline, and look in the branch: a cancellation that reached
# the branch's task natively (asyncio's ``Task.cancel()``, as an
# ``asyncio.TaskGroup`` shutting down does) would cut the shield short.


def _shielded_registry(steps: list[str]) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Shielded")
    async def shielded(ctx: stageflow.StageContext) -> dict[str, object]:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(scaled(2))
            steps.append("shielded part done")
        await anyio.sleep(scaled(10))
        steps.append("not cancelled")
        return {"b": 2}

    return registry


async def test_a_shield_in_a_branch_holds_when_the_session_is_cancelled() -> None:
    steps: list[str] = []
    registry = _shielded_registry(steps)
    session: list[stageflow.Session] = []

    @registry.register("CancelSession")
    async def cancel_session(ctx: stageflow.StageContext) -> dict[str, object]:
        await anyio.sleep(scaled(1))
        session[0].cancel("enough")
        await anyio.sleep(scaled(10))
        return {}

    pipeline = fan([stage("canceller", "CancelSession"), stage("slow", "Shielded")])
    session.append(stageflow.Session(load(pipeline, registry), registry=registry))
    result = await session[0].run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert steps == ["shielded part done"]
    ended = [(e.type, e.path) for e in result.history if e.type.startswith("branch_")]
    assert ("branch_cancelled", "fan/slow") in ended
    assert ("branch_cancelled", "fan/canceller") in ended


async def test_a_shield_in_a_branch_holds_when_the_caller_stops_waiting() -> None:
    steps: list[str] = []
    registry = _shielded_registry(steps)
    pipeline = fan([set_node("a", "a", 1, delay=20), stage("slow", "Shielded")])
    session = stageflow.Session(load(pipeline, registry), registry=registry)
    with anyio.move_on_after(scaled(1)) as outer:
        await session.run()
    assert outer.cancelled_caught
    assert steps == ["shielded part done"]
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert ("branch_cancelled", "fan/slow") in [(e.type, e.path) for e in session.history]


async def test_a_shield_in_a_branch_holds_past_the_parallel_nodes_timeout() -> None:
    steps: list[str] = []
    registry = _shielded_registry(steps)
    pipeline = fan([stage("slow", "Shielded")], timeout=scaled(1))
    result = await run(pipeline, registry=registry)
    assert result.status is FAILED
    assert isinstance(result.error, stageflow.NodeTimeoutError)
    assert steps == ["shielded part done"]


async def test_a_shield_in_a_nested_branch_holds_when_the_outer_race_is_lost() -> None:
    steps: list[str] = []
    registry = _shielded_registry(steps)
    pipeline = doc(
        [
            parallel("outer", ["fast", "inner"], next="end", policy="any"),
            set_node("fast", "a", 1, delay=1),
            parallel("inner", ["slow", "other"]),
            stage("slow", "Shielded"),
            set_node("other", "shared", 3, delay=20),
            terminal("end", "a", "b", "shared"),
        ]
    )
    result = await run(pipeline, registry=registry)
    assert result.status is COMPLETED, result.error
    assert result.artifacts == {"a": 1, "b": None, "shared": None}
    assert steps == ["shielded part done"]
    ended = [(e.type, e.path) for e in result.history if e.type.startswith("branch_")]
    assert ("branch_cancelled", "outer/inner/inner/slow") in ended
    assert ("branch_cancelled", "outer/inner/inner/other") in ended


async def test_a_branch_stage_sees_the_session_deadline_as_its_deadline() -> None:
    registry = fake_registry()
    deadlines: list[float] = []

    @registry.register("Deadline")
    async def deadline(ctx: stageflow.StageContext) -> dict[str, object]:
        deadlines.append(anyio.current_effective_deadline())
        return {}

    timeout = scaled(30)
    pipeline = {
        **doc(
            [
                parallel("fan", ["a", "b"], next="end"),
                stage("a", "Deadline"),
                stage("b", "Deadline"),
                terminal("end"),
            ]
        ),
        "limits": {"timeout": timeout},
    }
    start = anyio.current_time()
    result = await run(pipeline, registry=registry)
    end = anyio.current_time()
    assert result.status is COMPLETED, result.error
    assert len(deadlines) == 2
    assert all(start + timeout <= d <= end + timeout for d in deadlines), deadlines


@pytest.mark.parametrize("nested", [False, True], ids=["in the branch", "in a subpipeline"])
@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
@pytest.mark.parametrize("retried", [False, True], ids=["simple", "retried"])
async def test_a_session_cancelled_by_a_branch_stage_runs_no_next_node_in_any_branch(
    traced: bool, nested: bool, retried: bool, provider: TracerProvider
) -> None:
    # A cancel() takes effect before the next node even when no stage
    # awaits, in the branch that called it and in its siblings. On asyncio
    # the branches' tasks are in scopes of their own, which the task that
    # waits for them cancels when the session's scope is cancelled; a
    # branch's test before a node must not wait for that (the tight path's
    # ScopeFlags, GroupStatus under it; execute()'s checkpoint for a node
    # with a retry policy, which the tight path leaves to execute()).
    registry = fake_registry()
    ran: list[str] = []
    session: list[stageflow.Session] = []

    @registry.register("Record")
    async def record(ctx: stageflow.StageContext) -> dict[str, object]:
        ran.append(ctx.node_id)
        return {}

    @registry.register("CancelSession")
    async def cancel_session(ctx: stageflow.StageContext) -> dict[str, object]:
        ran.append(ctx.node_id)
        session[0].cancel("enough")
        return {}

    @registry.register("Yield")
    async def yield_(ctx: stageflow.StageContext) -> dict[str, object]:
        ran.append(ctx.node_id)
        await anyio.lowlevel.checkpoint()  # lets the canceller run first
        return {}

    if nested:
        # The canceller's path is a subpipeline's, under the branch's task.
        inner = {
            "entry": "a",
            "nodes": [
                stage("a", "CancelSession", next="a2"),
                stage("a2", "Record", next="done"),
                terminal("done"),
            ],
        }
        call = {"id": "a", "type": "subpipeline", "pipeline": "inner", "next": "a3"}
        branch = [call, stage("a3", "Record")]
    else:
        inner = None
        branch = [stage("a", "CancelSession", next="a2"), stage("a2", "Record")]
    if retried:
        for node in [*branch, *(inner["nodes"] if inner else [])]:
            if node["id"] in ("a2", "a3"):
                node["retry"] = {"attempts": 2}
    pipeline = doc(
        [
            parallel("fan", ["b", "a"], next="end"),
            *branch,
            stage("b", "Yield", next="b2"),
            stage("b2", "Record"),
            terminal("end"),
        ],
        **({"subpipelines": {"inner": inner}} if inner else {}),
    )
    session.append(
        stageflow.Session(
            load(pipeline, registry),
            registry=registry,
            tracer_provider=provider if traced else NoOpTracerProvider(),
        )
    )
    result = await session[0].run()
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert "a2" not in ran
    assert "a3" not in ran
    assert "b2" not in ran
    ended = [(e.type, e.path) for e in result.history if e.type.startswith("branch_")]
    assert ("branch_cancelled", "fan/a") in ended
    assert ("branch_cancelled", "fan/b") in ended
