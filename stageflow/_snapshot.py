"""Session snapshots: the JSON format, its checks, and the pieces shared by every node type.

A snapshot is plain JSON (``schemas/session-snapshot.schema.json``). Its
``position`` is a tree of frames: the main path, and inside it the branches
of a parallel node, the items of a map node or the run of a subpipeline that
were in flight. A frame names the node it is at and carries its context: the
whole context for the main path and a subpipeline run, only what it wrote
for a fork (a branch or a map item), so nothing is copied per node. The
session (``_session.py`` and the node mixins) builds the tree and resumes
from it; this module holds the format, validation and the helpers they share.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final

import jsonschema

from stageflow._context import Context
from stageflow._errors import (
    Problem,
    RestoredError,
    SnapshotError,
    SnapshotMismatchError,
    SnapshotVersionError,
    describe_exception,
)
from stageflow._events import Event
from stageflow._json import copy_json
from stageflow._model import MapNode, ParallelNode, StageNode, SubpipelineNode
from stageflow._pipeline import Pipeline, load_schema, schema_error_message
from stageflow._snapshot_check import shape_problems
from stageflow._specs import DocumentSchema

__all__ = [
    "DONE",
    "FORMAT",
    "VERSION",
    "RetryWait",
    "apply_writes",
    "awaited",
    "check_document",
    "check_nodes",
    "count_positions",
    "error_state",
    "event_from_dict",
    "mismatch",
    "restore_error",
    "writes_of",
]

FORMAT: Final = "stageflow.session-snapshot"
VERSION: Final = 1


@functools.cache
def _validator() -> DocumentSchema:
    return DocumentSchema(load_schema("session-snapshot"))


DONE: Final = "done"
"""A frame's ``work`` once its node has finished and the frame has not moved on."""


class RetryWait:
    """A stage node waiting out a retry delay: the attempt to come and when."""

    __slots__ = ("at", "attempt")

    def __init__(self, attempt: int, at: str) -> None:
        self.attempt = attempt
        self.at = at


def writes_of(ctx: Context) -> list[list[Any]]:
    """What a fork wrote, as ``[path, value]`` pairs in write order (copies)."""
    return [[path, copy_json(value)] for path, value in ctx.written()]


def apply_writes(ctx: Context, writes: list[list[Any]]) -> None:
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


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an :class:`Event` from its ``to_dict()`` form."""
    return Event(
        data["seq"],
        data["type"],
        datetime.datetime.fromisoformat(data["timestamp"]),
        data["session_id"],
        data["node_id"],
        data["path"],
        data["payload"],
        data.get("trace_id"),
        data.get("span_id"),
        data.get("parent_span_id"),
    )


def _children(position: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
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


def count_positions(position: Mapping[str, Any] | None) -> int:
    """How many node executions in flight (to run again) the tree holds."""
    if position is None or "terminal" in position:
        return 0  # (a run that had reached its terminal runs nothing again)
    own = 0 if "next" in position else 1
    return own + sum(count_positions(child) for child in _children(position))


def awaited(
    position: Mapping[str, Any] | None, session_deadline: str | None
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


def _blocked(
    position: Mapping[str, Any] | None,
) -> Iterator[tuple[str | None, str | None]]:
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
    for child in _children(position):
        yield from _blocked(child)


def check_document(data: object) -> Mapping[str, Any]:
    """Check a snapshot's format, version and shape; return it.

    Raises:
        SnapshotVersionError: another format version.
        SnapshotError: not a snapshot, or not a valid one.
    """
    if not isinstance(data, Mapping):
        raise SnapshotError(
            [
                Problem(
                    "$",
                    f"a session snapshot is a JSON object, got a {type(data).__name__}; pass "
                    "what session.to_dict() returned (json.loads it first if you stored it "
                    "as text)",
                )
            ]
        )
    if data.get("format") != FORMAT:
        raise SnapshotError(
            [
                Problem(
                    "$.format",
                    f"this is not a stageflow session snapshot ('format' is "
                    f"{data.get('format')!r}, not {FORMAT!r}); pass what session.to_dict() "
                    "returned",
                )
            ]
        )
    if data.get("version") != VERSION:
        raise SnapshotVersionError(data.get("version"), (VERSION,))
    session_id = data.get("session_id")
    source = f"session {session_id!r}" if isinstance(session_id, str) else None
    over_budget = shape_problems(data)
    if over_budget:
        raise SnapshotError(over_budget, source=source)
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise SnapshotError(
            [Problem(e.json_path, _message(e)) for e in errors[:20]],
            source=f"session {session_id!r}" if isinstance(session_id, str) else None,
        )
    return data


_RECORDS: Final = ("stage", "parallel", "map", "subpipeline", "next")


def _message(error: jsonschema.ValidationError) -> str:
    """What a schema error in a snapshot means, without quoting whole frames."""
    if error.validator == "oneOf" and isinstance(error.instance, Mapping):
        both = "context" in error.instance and "writes" in error.instance
        return (
            f"a frame has {'both' if both else 'neither of'} 'context' and 'writes'; it needs "
            "exactly one: 'context' for the main path and subpipeline runs, 'writes' for "
            "branches and map items"
        )
    if error.validator == "not" and error.path and error.path[-1] in _RECORDS:
        return (
            f"a frame holds at most one of {', '.join(map(repr, _RECORDS))}; "
            f"remove {error.path[-1]!r} or the other one"
        )
    return schema_error_message(error, "the snapshot")


def check_nodes(position: Mapping[str, Any] | None, pipeline: Pipeline) -> list[Problem]:
    """Every frame of the tree must name an existing node of the right kind."""
    problems: list[Problem] = []
    _check_frame(position, pipeline, "$.position", problems)
    return problems


_KINDS: Final = {
    "stage": StageNode,
    "parallel": ParallelNode,
    "map": MapNode,
    "subpipeline": SubpipelineNode,
}


def _check_frame(
    position: Mapping[str, Any] | None, pipeline: Pipeline, where: str, problems: list[Problem]
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
            pipeline._targets[node_id],
            f"{where}.subpipeline.position",
            problems,
        )


def _graph_name(pipeline: Pipeline) -> str:
    """``pipeline 'x'``, or ``subpipeline 'page' of pipeline 'x'`` (its document location)."""
    if pipeline._prefix == "$":
        return f"pipeline {pipeline.name!r}"
    return f"the subpipeline at {pipeline._prefix} of the pipeline"


def mismatch(problems: list[Problem], session_id: str) -> SnapshotMismatchError:
    """The error for a snapshot that does not fit the pipeline."""
    return SnapshotMismatchError(problems, source=f"session {session_id!r}")
