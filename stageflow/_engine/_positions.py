"""The position tree of a snapshot: every key it has, and the walks over it.

A snapshot's ``position`` is a tree of frames (:class:`FramePosition`): the
main path, and inside it the branches of a parallel node, the items of a map
node or the run of a subpipeline that were in flight. A frame names the node
it is at and carries its context: the whole context for the main path and a
subpipeline run (``context``), only what it wrote for a fork, a branch or a
map item (``writes``), so nothing is copied per node. A frame whose node had
finished says where it goes on (``next``); one whose node was in flight holds
that node's own record (``stage``, ``parallel``, ``map`` or ``subpipeline``).

The keys are declared here once, as ``TypedDict`` s: the executors build and
read their records through these types, so a misspelt key is a type error.
``schemas/session-snapshot.schema.json`` is the same tree as JSON Schema.
"""

from __future__ import annotations

import collections
import datetime
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, TypedDict

from stageflow._context import Context
from stageflow._errors import Problem, RestoredError, SnapshotMismatchError, describe_exception
from stageflow._json import copy_json
from stageflow._model import MapNode, ParallelNode, StageNode, SubpipelineNode
from stageflow._pipeline import Pipeline

__all__ = [
    "BranchPosition",
    "Call",
    "FramePosition",
    "MapPosition",
    "ParallelPosition",
    "StagePosition",
    "SubpipelinePosition",
    "TerminalPosition",
    "apply_writes",
    "awaited",
    "check_nodes",
    "count_positions",
    "error_state",
    "mismatch",
    "parked_waits",
    "restore_error",
    "parked_calls",
    "not_kept",
    "unseen_inputs",
    "writes_of",
]

Writes = list[list[Any]]
"""What a fork wrote: ``[path, value]`` pairs in write order."""


class Call(TypedDict, total=False):
    """One ``wait_input`` or ``sleep`` call in a stage attempt's journal.

    A wait has ``wait`` (the input type), ``deadline`` while it waits with a
    timeout, and ``payload`` once answered (``parked`` too until the stage
    sees it: answered while the session was suspended or stored, or
    delivered to a live wait whose stage has not woken yet); in a metered
    session, ``since`` (when it began) while it waits, and ``waited`` (the
    seconds it took) once parked; a sleep has ``sleep`` (its absolute
    deadline) and ``seconds`` (what the first call planned).
    """

    wait: str
    deadline: str | None
    payload: Any
    parked: bool
    since: str
    waited: float
    sleep: str
    seconds: float


class StagePosition(TypedDict):
    """A stage node in flight: the attempt, its journal, or the retry it waits for."""

    attempt: int
    calls: list[Call]
    retry_at: str | None


class BranchPosition(TypedDict, total=False):
    """One branch of a parallel node: ``finished``, ``failed``, ``cancelled`` or ``running``."""

    child: str
    state: str
    writes: Writes
    error: dict[str, Any]
    position: FramePosition


class ParallelPosition(TypedDict):
    """A parallel node in flight: each branch, and the ``any`` winner if decided."""

    branches: list[BranchPosition]
    winner: int | None


class ItemPosition(TypedDict):
    """A map item in flight."""

    index: int
    position: FramePosition


class FailurePosition(TypedDict):
    """A map item that failed."""

    index: int
    error: dict[str, Any]


class MapPosition(TypedDict):
    """A map node in flight: the next item to start, what is done, failed and running."""

    next: int
    done: int
    collected: dict[str, list[Any]]
    failures: list[FailurePosition]
    running: list[ItemPosition]


class SubpipelinePosition(TypedDict):
    """A subpipeline call in flight: the child run's own frame."""

    position: FramePosition


class TerminalPosition(TypedDict):
    """The terminal a run had reached (in a branch, while the rest was being cancelled)."""

    node: str
    artifacts: dict[str, Any]


class FramePosition(TypedDict, total=False):
    """One frame of the tree (see the module docstring)."""

    path: str
    node: str
    next: str | None
    context: dict[str, Any]
    writes: Writes
    terminal: TerminalPosition
    stage: StagePosition
    parallel: ParallelPosition
    map: MapPosition
    subpipeline: SubpipelinePosition
    visits: int


RECORDS: Final = ("stage", "parallel", "map", "subpipeline", "next")
"""The keys of which a frame holds at most one."""


def writes_of(ctx: Context) -> Writes:
    """What a fork wrote, as ``[path, value]`` pairs in write order (copies)."""
    return [[path, copy_json(value)] for path, value in ctx.written()]


def apply_writes(ctx: Context, writes: Writes) -> None:
    """Write a fork's recorded writes into ``ctx``, in order."""
    for path, value in writes:
        ctx.set(path, copy_json(value))


def _error_classes(exc: BaseException) -> list[str]:
    """Class names of ``exc``, its causes and group members, for a snapshot."""
    names: dict[str, None] = {}
    todo: list[BaseException] = [exc]
    seen = 0
    while todo and seen < 64:
        current = todo.pop()
        seen += 1
        if isinstance(current, RestoredError):
            names.update(dict.fromkeys(current.classes))
        else:
            names.update(dict.fromkeys(c.__name__ for c in type(current).__mro__))
        if current.__cause__ is not None:
            todo.append(current.__cause__)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
    names.pop("object", None)
    names.pop("BaseException", None)
    return list(names)


def error_state(exc: BaseException) -> dict[str, Any]:
    """A failure as the snapshot keeps it: its description and its class names."""
    return {**describe_exception(exc), "classes": _error_classes(exc)}


def restore_error(state: Mapping[str, Any]) -> RestoredError:
    """The stand-in for a failure recorded in a snapshot."""
    description = {k: copy_json(v) for k, v in state.items() if k != "classes"}
    return RestoredError(description, state.get("classes", ()))


def children(position: FramePosition) -> Iterator[FramePosition]:
    """The frames nested directly inside ``position``."""
    if "parallel" in position:
        for branch in position["parallel"]["branches"]:
            if branch["state"] == "running":
                yield branch["position"]
    elif "map" in position:
        for item in position["map"]["running"]:
            yield item["position"]
    elif "subpipeline" in position:
        yield position["subpipeline"]["position"]


def count_positions(position: FramePosition | None) -> int:
    """How many node executions in flight (to run again) the tree holds."""
    if position is None or "terminal" in position:
        return 0  # (a run that had reached its terminal runs nothing again)
    own = 0 if "next" in position else 1
    return own + sum(count_positions(child) for child in children(position))


def awaited(
    position: FramePosition | None, session_deadline: str | None
) -> tuple[frozenset[str], str | None]:
    """What a saved session waits for: the input types, and the earliest deadline.

    The deadline (ISO 8601) is the earliest of every sleep, retry delay and
    input timeout in the tree and the session deadline, or ``None``.
    """
    types: set[str] = set()
    deadlines = [] if session_deadline is None else [session_deadline]
    for type, deadline in _blocked(position):
        if type is not None:
            types.add(type)
        if deadline is not None:
            deadlines.append(deadline)
    earliest = min(deadlines, key=datetime.datetime.fromisoformat) if deadlines else None
    return frozenset(types), earliest


def _blocked(position: FramePosition | None) -> Iterator[tuple[str | None, str | None]]:
    """``(input type or None, deadline or None)`` for every stage that waits or sleeps."""
    if position is None:
        return
    stage = position.get("stage")
    if stage is not None:
        if stage.get("retry_at"):
            yield None, stage["retry_at"]
        elif stage["calls"]:
            last = stage["calls"][-1]
            if "sleep" in last:
                yield None, last["sleep"]
            elif "payload" not in last:
                yield last["wait"], last.get("deadline")
    for child in children(position):
        yield from _blocked(child)


def parked_waits(position: FramePosition | None, type: str, now: datetime.datetime) -> list[Call]:
    """The saved, unanswered waits for ``type`` whose deadline has not passed.

    These are the stages a suspended or restored session waits in: an input
    sent now reaches each of them (the journal entry is answered in place), as
    it reaches every live waiter. A wait past its deadline would have timed
    out first, so it is left to time out when the session runs.
    """
    found: list[Call] = []
    if position is None:
        return found
    stage = position.get("stage")
    if stage is not None and not stage.get("retry_at") and stage["calls"]:
        last = stage["calls"][-1]
        if last.get("wait") == type and "payload" not in last:
            deadline = last.get("deadline")
            if deadline is None or datetime.datetime.fromisoformat(deadline) > now:
                found.append(last)
    for child in children(position):
        found.extend(parked_waits(child, type, now))
    return found


def parked_calls(position: FramePosition | None) -> list[Call]:
    """The journal entries of saved waits that were sent an input (``parked``), not copied.

    A restored stage takes its parked input when its journal replays that
    entry; a session that ends before (cancelled while waiting, or a run
    that stops before the stage runs again) lists them with the backlog it
    discards, so none is lost in silence (:func:`unseen_inputs`).
    """
    found: list[Call] = []
    if position is None:
        return found
    stage = position.get("stage")
    if stage is not None and stage["calls"]:
        last = stage["calls"][-1]
        if last.get("parked") and "payload" in last:
            found.append(last)
    for child in children(position):
        found.extend(parked_calls(child))
    return found


def not_kept(calls: Iterable[Call], kept: Iterable[Call]) -> list[Call]:
    """Those of ``calls`` that no entry of ``kept`` holds, as a multiset.

    ``kept`` are the parked entries a saved position keeps (copies): each
    matches one entry of ``calls`` with the same input type and payload. An
    entry that is not parked (the ``unseen_inputs`` a session was restored
    with) no position holds: an equal input parked in a wait is another one.
    """
    left = collections.Counter(_input_key(call) for call in kept)
    found: list[Call] = []
    for call in calls:
        key = _input_key(call)
        if call.get("parked") and left[key]:
            left[key] -= 1
        else:
            found.append(call)
    return found


def _input_key(call: Call) -> tuple[str, str]:
    return call["wait"], json.dumps(call["payload"], sort_keys=True)


def unseen_inputs(calls: Iterable[Call]) -> list[tuple[str, Any]]:
    """The (type, payload) of parked entries (:func:`parked_calls`), as discarded inputs."""
    return [(call["wait"], copy_json(call["payload"])) for call in calls]


# ------------------------------------------------------- against a pipeline

_KINDS: Final = {
    "stage": StageNode,
    "parallel": ParallelNode,
    "map": MapNode,
    "subpipeline": SubpipelineNode,
}


def check_nodes(position: FramePosition | None, pipeline: Pipeline) -> list[Problem]:
    """Every frame of the tree must name an existing node of the right kind."""
    problems: list[Problem] = []
    _check_frame(position, pipeline, "$.position", problems)
    return problems


def _check_frame(
    position: FramePosition | None, pipeline: Pipeline, where: str, problems: list[Problem]
) -> None:
    if position is None:
        return
    node_id = position["node"]
    if node_id not in pipeline:
        problems.append(
            Problem(
                f"{where}.node",
                f"the session is at node {node_id!r}, which {_graph_name(pipeline)} does not "
                "have; restore with the pipeline the snapshot was taken with (or one that "
                "still has that node)",
            )
        )
        return
    node = pipeline.node(node_id)
    terminal = position.get("terminal")
    if terminal is not None and (
        terminal["node"] not in pipeline or pipeline.node(terminal["node"]).type != "terminal"
    ):
        problems.append(
            Problem(
                f"{where}.terminal.node",
                f"the run had ended at terminal {terminal['node']!r}, which "
                f"{_graph_name(pipeline)} does not have as a terminal node; restore with a "
                "pipeline that still has it",
            )
        )
    following = position.get("next")
    if following is not None and following not in pipeline:
        problems.append(
            Problem(
                f"{where}.next",
                f"the session goes on at node {following!r}, which {_graph_name(pipeline)} does "
                "not have; restore with a pipeline that still has it",
            )
        )
    for key, kind in _KINDS.items():
        if key in position and not isinstance(node, kind):
            problems.append(
                Problem(
                    f"{where}.node",
                    f"node {node_id!r} was a {key} node when the snapshot was taken and is a "
                    f"{node.type} node in this pipeline; restore with the pipeline it was taken "
                    "with",
                )
            )
            return
    if "parallel" in position:
        assert isinstance(node, ParallelNode)
        for i, branch in enumerate(position["parallel"]["branches"]):
            if branch["child"] not in node.children:
                problems.append(
                    Problem(
                        f"{where}.parallel.branches[{i}]",
                        f"branch {branch['child']!r} of parallel node {node_id!r} is not one of "
                        f"its children now ({', '.join(node.children)})",
                    )
                )
            elif branch["state"] == "running":
                _check_frame(
                    branch["position"],
                    pipeline,
                    f"{where}.parallel.branches[{i}].position",
                    problems,
                )
    elif "map" in position:
        for i, item in enumerate(position["map"]["running"]):
            _check_frame(item["position"], pipeline, f"{where}.map.running[{i}].position", problems)
    elif "subpipeline" in position:
        _check_frame(
            position["subpipeline"]["position"],
            pipeline.callee(node_id),
            f"{where}.subpipeline.position",
            problems,
        )


def _graph_name(pipeline: Pipeline) -> str:
    """``pipeline 'x'``, or ``the subpipeline at $.subpipelines.page`` (its document location)."""
    if pipeline.document_path == "$":
        return f"pipeline {pipeline.name!r}"
    return f"the subpipeline at {pipeline.document_path} of the pipeline"


def mismatch(problems: list[Problem], session_id: str) -> SnapshotMismatchError:
    """The error for a snapshot that does not fit the pipeline."""
    return SnapshotMismatchError(problems, source=f"session {session_id!r}")
