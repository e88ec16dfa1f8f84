"""The join's merge, exercised directly on contexts (runtime conflicts)."""

from __future__ import annotations

import pytest

import stageflow
from stageflow._context import Context
from stageflow._merge import merge_branches

ERROR = stageflow.MergeStrategy.ERROR


def branches(parent: Context, *writes: dict[str, object]) -> list[tuple[str, Context]]:
    out = []
    for i, values in enumerate(writes):
        fork = parent.fork()
        for path, value in values.items():
            fork.set(path, value)
        out.append((f"b{i}", fork))
    return out


def test_equal_values_merge_without_conflict() -> None:
    parent = Context({})
    merge_branches("p", ERROR, {}, parent, branches(parent, {"x": 1}, {"x": 1}))
    assert parent.get("x") == 1


def test_different_values_conflict_names_path_and_branches() -> None:
    parent = Context({})
    with pytest.raises(stageflow.MergeConflictError) as info:
        merge_branches("p", ERROR, {}, parent, branches(parent, {"x": 1}, {"x": 2}))
    assert info.value.path == "x"
    assert info.value.branches == ("b0", "b1")
    assert "reducer" in str(info.value)
    assert parent.get("x") is stageflow.MISSING


def test_parent_and_child_path_from_two_branches_conflict() -> None:
    parent = Context({})
    with pytest.raises(stageflow.MergeConflictError) as info:
        merge_branches("p", ERROR, {}, parent, branches(parent, {"a": {"b": 1}}, {"a.b": 2}))
    assert info.value.path == "a"


@pytest.mark.parametrize("outer_first", [True, False])
def test_a_reducer_on_a_nested_path_does_not_cover_another_branch_writing_above_it(
    outer_first: bool,
) -> None:
    """Neither the reducer's contribution lost under "a", nor a raw ContextPathError."""
    parent = Context({})
    reducers = {"a.b": stageflow.Reducer.APPEND}
    writes = [{"a": 5}, {"a.b": 1}] if outer_first else [{"a.b": 1}, {"a": 5}]
    with pytest.raises(stageflow.MergeConflictError) as info:
        merge_branches("p", ERROR, reducers, parent, branches(parent, *writes))
    assert info.value.path == "a"
    assert sorted(info.value.branches) == ["b0", "b1"]
    assert parent.get("a") is stageflow.MISSING


def test_an_overlap_names_the_two_branches_that_wrote_it() -> None:
    parent = Context({})
    forks = branches(parent, {"a": {"b": 1}, "a.b": 1}, {"a.b": 1})
    with pytest.raises(stageflow.MergeConflictError) as info:
        merge_branches("p", ERROR, {}, parent, forks)
    assert info.value.path == "a"
    assert info.value.branches == ("b0", "b1")


def test_reducer_covers_a_conflicting_path() -> None:
    parent = Context({})
    reducers = {"x": stageflow.Reducer.APPEND}
    merge_branches("p", ERROR, reducers, parent, branches(parent, {"x": 1}, {"x": 2}))
    assert parent.get("x") == [1, 2]


@pytest.mark.parametrize("strategy", list(stageflow.MergeStrategy))
def test_a_write_inside_a_reduced_path_the_branch_wrote_is_part_of_its_contribution(
    strategy: stageflow.MergeStrategy,
) -> None:
    """It was taken for another writer: a conflict, or ``first`` / ``last`` dropped a branch."""
    parent = Context({"notes": {"n0": 0}})
    reducers = {"notes": stageflow.Reducer.MERGE}
    forks = branches(parent, {"notes": {"x": 1}, "notes.y": 2}, {"notes": {"z": 3}})
    merge_branches("p", strategy, reducers, parent, forks)
    assert parent.get("notes") == {"n0": 0, "x": 1, "y": 2, "z": 3}


def test_a_write_inside_a_path_the_branch_wrote_still_overlaps_another_branch() -> None:
    parent = Context({})
    forks = branches(parent, {"a": {"b": 1}, "a.b": 2}, {"a.c": 3})
    with pytest.raises(stageflow.MergeConflictError) as info:
        merge_branches("p", ERROR, {}, parent, forks)
    assert info.value.path == "a"
    assert info.value.branches == ("b0", "b1")


def test_merge_costs_what_branches_wrote() -> None:
    big = {f"k{i}": {"v": i} for i in range(10_000)}
    parent = Context(big)
    forks = branches(parent, {"k1.v": -1}, {"new": 1})
    # The forks did not copy the big context: the untouched values are shared.
    assert forks[0][1].get("k2") is big["k2"]
    assert len(forks[0][1].data.maps[0]) == 1  # type: ignore[attr-defined]
    merge_branches("p", ERROR, {}, parent, forks)
    assert parent.get("k1.v") == -1
    assert parent.get("new") == 1
