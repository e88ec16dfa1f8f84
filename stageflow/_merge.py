"""Joining parallel branches: merge each branch's writes into the parent context.

Writes are merged in ``children`` order, never by finishing time, so a join
is deterministic. A path written by several branches needs equal values, a
declared reducer, or a node merge strategy other than ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from stageflow._context import MISSING, Context
from stageflow._errors import MergeConflictError, NodeError
from stageflow._json import MAX_DEPTH, a_json_type, find_non_json
from stageflow._model import MergeStrategy, Reducer
from stageflow._specs import json_text

__all__ = ["merge_branches"]


def merge_branches(
    node_id: str,
    strategy: MergeStrategy,
    reducers: Mapping[str, Reducer],
    target: Context,
    branches: Sequence[tuple[str, Context]],
    *,
    contribution: bool = False,
) -> None:
    """Write the changes of each ``(branch name, branch context)`` into ``target``.

    A reducer folds the branches' values into the value its path had in
    ``target``. With ``contribution`` (``target`` is itself a parallel
    branch, whose value there is its own contribution to an outer join), it
    folds into what ``target`` wrote there, or into nothing: the parent's
    value ``target`` reads through is folded in once, at the outer join.

    Raises:
        MergeConflictError: two branches wrote one path (or a path and a path
            inside it) with different values, and neither a reducer nor the
            strategy says how to combine them.
        NodeError: a reducer cannot combine the values the branches wrote, or
            combines them into a value JSON cannot carry (a ``sum`` that overflows
            to an infinity, an integer of too many digits, a list nested too deep).
    """
    # Once per branch and per path written: a join of many branches spends
    # here ("parallel branch" row), so no list is made for a path until a
    # second branch writes it.
    contributions: dict[str, list[tuple[str, Any]]] = {}
    get = contributions.get
    for branch, ctx in branches:
        for path, value in ctx.written():
            found = get(path)
            if found is None:
                contributions[path] = [(branch, value)]
            else:
                found.append((branch, value))
    first = strategy is MergeStrategy.FIRST
    if len(branches) > 1:
        _drop_writes_inside_own(contributions)
    if strategy is MergeStrategy.ERROR:
        _check_conflicts(node_id, contributions, reducers)
    elif len(branches) > 1:
        _keep_one_writer_per_overlap(contributions, [branch for branch, _ in branches], first)
    # Every value is made before any is written: a reducer that cannot combine
    # what it got fails the node with nothing merged, as a failed branch does.
    # The writes cannot fail: no two branches' writes overlap any more (checked
    # or settled above), and each branch's fit the context it forked from.
    writes: list[tuple[str, Any]] = []
    for path, values in contributions.items():
        reducer = reducers.get(path) if reducers else None
        if reducer is not None:
            base = target.get(path) if not contribution or target.wrote(path) else MISSING
            writes.append((path, _checked(node_id, path, reducer, base, values)))
        else:
            # FIRST; or LAST, or ERROR where every value is equal (checked above).
            writes.append((path, values[0][1] if first else values[-1][1]))
    set_ = target.set
    for path, value in writes:
        set_(path, value)


def _drop_writes_inside_own(contributions: dict[str, list[tuple[str, Any]]]) -> None:
    """Leave out a branch's writes inside a path that branch also wrote.

    The value the branch left at the outer path holds them already (a stage
    wrote ``notes``, a later one ``notes.y``), and whatever they overlap the
    outer path overlaps too; a reducer of the outer path folds that whole
    value in. Taken for another writer there, they made a reducer's
    contribution a conflict, or made ``first`` / ``last`` drop it.
    """
    for path in [path for path in contributions if "." in path]:
        parts = path.split(".")
        above: set[str] = set()
        for cut in range(1, len(parts)):
            for branch, _ in contributions.get(".".join(parts[:cut]), ()):
                above.add(branch)
        if not above:
            continue
        kept = [(branch, value) for branch, value in contributions[path] if branch not in above]
        if kept:
            contributions[path] = kept
        else:
            del contributions[path]


def _keep_one_writer_per_overlap(
    contributions: dict[str, list[tuple[str, Any]]], order: Sequence[str], first: bool
) -> None:
    """For ``first`` / ``last``: where branches wrote a path and a path inside it, keep one.

    Paths that overlap (``a`` and ``a.b``, written by different branches) are
    one conflict: the first (or last) branch, in ``children`` order, that
    wrote any of them keeps its writes there, the others' are dropped, as
    for two branches writing the same path. Writing both would put one
    branch's value inside another's (or fail, where ``a`` is a number).
    """
    roots: dict[str, str] = {}  # a nested path -> the outermost written path above it
    for path in contributions:
        if "." not in path:
            continue
        parts = path.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut])
            if prefix in contributions:
                roots[path] = prefix
                break
    if not roots:
        return
    groups: dict[str, list[str]] = {}
    for path, root in roots.items():
        groups.setdefault(root, [root]).append(path)
    rank = {branch: i for i, branch in enumerate(order)}
    for paths in groups.values():
        writers = {branch for path in paths for branch, _ in contributions[path]}
        if len(writers) < 2:
            continue  # one branch wrote a path and a path inside it: no conflict
        keep = (min if first else max)(writers, key=rank.__getitem__)
        for path in paths:
            kept = [(branch, value) for branch, value in contributions[path] if branch == keep]
            if kept:
                contributions[path] = kept
            else:
                del contributions[path]


def _check_conflicts(
    node_id: str,
    contributions: Mapping[str, list[tuple[str, Any]]],
    reducers: Mapping[str, Reducer],
) -> None:
    for path, values in contributions.items():
        if len(values) == 1 and "." not in path:
            # One writer of a top-level key: nothing to compare, and an
            # overlap with a path inside it is found from that path's side.
            continue
        if path not in reducers:
            # A reducer combines the writes of exactly its path; a write above
            # or inside it by another branch is still a conflict (below).
            first_branch, first = values[0]
            for branch, value in values[1:]:
                if value != first:
                    raise MergeConflictError(
                        node_id=node_id, path=path, branches=(first_branch, branch)
                    )
        if "." not in path:
            continue
        # Another branch writing a parent of this path overlaps it.
        parts = path.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut])
            for other, _ in contributions.get(prefix, ()):
                for branch, _ in values:
                    if branch != other:
                        raise MergeConflictError(
                            node_id=node_id, path=prefix, branches=(other, branch)
                        )


def _checked(
    node_id: str, path: str, reducer: Reducer, base: Any, values: list[tuple[str, Any]]
) -> Any:
    """The reduced value, refused when it is not JSON (the snapshot could not hold it).

    A number is checked whole; for the container reducers the new contributions are
    (wrapped in a list, for the level they nest at), not the whole value again at
    every join. They nest as deep below ``path`` as in the context: the levels
    above it count, as for a stage's output, and ``append`` puts each one a level
    deeper than its branch wrote it.
    """
    reduced = _reduce(node_id, path, reducer, base, values)
    numeric = reducer in (Reducer.SUM, Reducer.MAX, Reducer.MIN)
    if numeric:
        bad = find_non_json(reduced, path)
    else:
        # The list wrapping extend's and merge's contributions is not in the result.
        room = MAX_DEPTH - path.count(".") - (1 if reducer is Reducer.APPEND else 0)
        contributions = [v for _, v in values]
        bad = find_non_json(contributions, path, room)
        if bad is not None and find_non_json(contributions, path) is None:
            raise NodeError(
                f"parallel node {node_id!r}: reducer {reducer.value!r} for path {path!r} "
                f"would nest the context more than {MAX_DEPTH} levels deep at {bad.location}, "
                "more than a snapshot holds; make the branches write flatter values, or "
                "pick another reducer",
                node_id=node_id,
            )
    if bad is not None:
        raise NodeError(
            f"parallel node {node_id!r}: reducer {reducer.value!r} for path {path!r} made "
            f"{bad.location} a value JSON cannot carry ({bad.reason}); keep the branch values "
            "smaller, or pick another reducer",
            node_id=node_id,
        )
    return reduced


# What a container reducer folds into: the value the path had before the node.
_CONTAINER: Final[Mapping[Reducer, type]] = {
    Reducer.APPEND: list,
    Reducer.EXTEND: list,
    Reducer.MERGE: dict,
}


def _reduce(
    node_id: str, path: str, reducer: Reducer, base: Any, values: list[tuple[str, Any]]
) -> Any:
    numeric = reducer not in _CONTAINER
    try:
        if base is not MISSING and (
            _not_a_number(base) if numeric else not isinstance(base, _CONTAINER[reducer])
        ):
            raise TypeError(
                f"the value before the parallel node is {a_json_type(base)}, not "
                f"{_WANTED[reducer]}: write one there before the parallel node, or leave the "
                "path unset"
            )
        if reducer is Reducer.APPEND:
            return [*(base if base is not MISSING else []), *(value for _, value in values)]
        wanted = list if reducer is Reducer.EXTEND else dict
        for branch, value in values:
            if _not_a_number(value) if numeric else not isinstance(value, wanted):
                shown = json_text(value) if numeric else a_json_type(value)
                raise TypeError(f"branch {branch!r} wrote {shown}, not {_WANTED[reducer]}")
        items = [value for _, value in values]
        if reducer is Reducer.EXTEND:
            out = list(base) if base is not MISSING else []
            for item in items:
                out.extend(item)
            return out
        if reducer is Reducer.MERGE:
            merged = dict(base) if base is not MISSING else {}
            for item in items:
                merged.update(item)
            return merged
        numbers = items if base is MISSING else [base, *items]
        if reducer is Reducer.SUM:
            return sum(numbers)
        if reducer is Reducer.MAX:
            return max(numbers)
        return min(numbers)
    except TypeError as exc:
        raise NodeError(
            f"parallel node {node_id!r}: reducer {reducer.value!r} for path {path!r} cannot "
            f"combine the branch values ({exc}); make the branches write values the reducer "
            "accepts, or pick another reducer",
            node_id=node_id,
        ) from exc


# What each reducer needs the old value (and, but for append, each contribution) to be.
_WANTED: Final[Mapping[Reducer, str]] = {
    Reducer.APPEND: "an array",
    Reducer.EXTEND: "an array",
    Reducer.MERGE: "an object",
    Reducer.SUM: "a number",
    Reducer.MAX: "a number",
    Reducer.MIN: "a number",
}


def _not_a_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)
