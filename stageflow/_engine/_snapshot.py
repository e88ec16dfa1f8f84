"""Session snapshots: the JSON document, its checks, and reading and writing it.

A snapshot is plain JSON (``schemas/session-snapshot.schema.json``): the
session's identity, its pipeline document and digest, limits, counters,
deadlines, its position tree (:mod:`stageflow._engine._positions`), the
input backlog, its outcome once finished, the next event ``seq``
(``history_seq``) and as much of its history as the caller asks for (all of
it, a tail, or none). :func:`dump` writes one from a session's state (and its
run, if one is in progress); :func:`check_document`, :func:`restore_pipeline`
and :func:`load` read one, of this format version or an older one.

Version history: 1 always carried the whole history and no ``history_seq``;
2 added ``history_seq`` (events may be left out) and ``stopped_by_limit``;
3 writes ``limits`` with only the limits that differ from their defaults,
and its events without ``session_id`` (the snapshot's) and without the span
ids that are null: a waiting session's snapshot is about a fifth shorter
(the "paused session, as snapshot text" benchmark row). All three are read.

Hot path: :func:`dump` and :func:`load` run once per snapshot and restore
of a stored waiting session ("paused session, as snapshot text" rows).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs
import jsonschema

from stageflow._context import Context
from stageflow._engine._limits import DEFAULT_LIMITS, limits_of, raised
from stageflow._engine._positions import (
    RECORDS,
    FramePosition,
    check_nodes,
    mismatch,
    not_kept,
    parked_calls,
    restore_error,
    unseen_inputs,
)
from stageflow._engine._snapshot_check import (
    consistency_problems,
    integer_problems,
    shape_problems,
)
from stageflow._engine._state import FINISHED, SessionState, TraceIds
from stageflow._errors import (
    LimitExceededError,
    PipelineValidationError,
    Problem,
    SnapshotError,
    SnapshotVersionError,
    shown_scalar,
)
from stageflow._events import Event
from stageflow._identity import IdentityCache
from stageflow._json import a_json_type, copy_json
from stageflow._model import Limits
from stageflow._pipeline import Pipeline, load_schema, schema_error_message
from stageflow._result import SessionStatus
from stageflow._specs import DocumentSchema
from stageflow._stages import StageRegistry
from stageflow._version import __version__

__all__ = [
    "FORMAT",
    "READABLE",
    "VERSION",
    "HistoryChoice",
    "check_document",
    "dump",
    "event_from_dict",
    "event_to_snapshot",
    "limits_of",
    "limits_to_snapshot",
    "load",
    "restore_pipeline",
]

FORMAT: Final = "stageflow.session-snapshot"
VERSION: Final = 6
READABLE: Final = (1, 2, 3, 4, 5, 6)
"""The format versions :func:`load` reads (older ones are migrated as they are read)."""

HistoryChoice = Literal["all", "none"] | int
"""How much history a snapshot keeps: ``"all"``, ``"none"`` or the last ``n`` events."""


@functools.cache
def _validator() -> DocumentSchema:
    return DocumentSchema(load_schema("session-snapshot"))


_SPAN_KEYS: Final = ("trace_id", "span_id", "parent_span_id")
# A checked snapshot's status text -> the status: a dict lookup, not an enum
# call, per restore ("paused session, as snapshot text" rows).
_STATUSES: Final = {status.value: status for status in SessionStatus}


def event_from_dict(data: Mapping[str, Any], session_id: str | None = None) -> Event:
    """Rebuild an :class:`Event` from its ``to_dict()`` form, or a snapshot's (since version 3).

    A snapshot (since version 3) leaves out each event's ``session_id`` (``session_id``,
    the snapshot's, is taken) and the span ids that are null.
    """
    return Event(
        data["seq"],
        data["type"],
        datetime.datetime.fromisoformat(data["timestamp"]),
        data["session_id"] if session_id is None or "session_id" in data else session_id,
        data["node_id"],
        data["path"],
        data["payload"],
        data.get("trace_id"),
        data.get("span_id"),
        data.get("parent_span_id"),
    )


def event_to_snapshot(event: Event) -> dict[str, Any]:
    """An event as a snapshot keeps it since version 3: no ``session_id``, no null span ids."""
    out = event.to_dict()
    del out["session_id"]
    for key in _SPAN_KEYS:
        if out[key] is None:
            del out[key]
    return out


_LIMIT_DEFAULTS: Final = attrs.asdict(DEFAULT_LIMITS)

# What a snapshot keeps of each Limits: sessions share their pipeline's
# Limits, and attrs.asdict per snapshot cost a tenth of one ("paused session,
# as snapshot text" row).
_KEPT_LIMITS: Final[IdentityCache[dict[str, Any]]] = IdentityCache()


def limits_to_snapshot(limits: Limits) -> dict[str, Any]:
    """The limits that differ from their defaults, as a snapshot keeps them since version 3."""
    kept = _KEPT_LIMITS.get(limits)
    if kept is None:
        kept = _KEPT_LIMITS.put(
            limits,
            {
                name: value
                for name, value in attrs.asdict(limits).items()
                if name not in _LIMIT_DEFAULTS
                or value != _LIMIT_DEFAULTS[name]
                or type(value) is not type(_LIMIT_DEFAULTS[name])
            },
        )
    return dict(kept)


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
                    f"a session snapshot is a JSON object, got {a_json_type(data)}; pass "
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
                    f"{shown_scalar(data.get('format'))}, not {FORMAT!r}); pass what "
                    "session.to_dict() returned",
                )
            ]
        )
    version = data.get("version")
    if type(version) is not int or version not in READABLE:  # (True == 1, 1.0 == 1)
        raise SnapshotVersionError(version, READABLE)
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
    floats = integer_problems(data)
    if floats:
        raise SnapshotError(floats[:20], source=source)
    return data


def _message(error: jsonschema.ValidationError) -> str:
    """What a schema error in a snapshot means, without quoting whole frames."""
    if error.validator == "oneOf" and isinstance(error.instance, Mapping):
        both = "context" in error.instance and "writes" in error.instance
        return (
            f"a frame has {'both' if both else 'neither of'} 'context' and 'writes'; it needs "
            "exactly one: 'context' for the main path and subpipeline runs, 'writes' for "
            "branches and map items"
        )
    if error.validator == "not" and error.path and error.path[-1] in RECORDS:
        return (
            f"a frame holds at most one of {', '.join(map(repr, RECORDS))}; "
            f"remove {error.path[-1]!r} or the other one"
        )
    return schema_error_message(error, "the snapshot")


def kept_events(history: HistoryChoice) -> int | None:
    """How many of the newest events a snapshot keeps (``None``: all of them).

    Raises:
        SnapshotError: ``history`` is not ``"all"``, ``"none"`` or a count.
    """
    if history == "all":
        return None
    if history == "none":
        return 0
    if type(history) is int and history >= 0:
        return history
    raise SnapshotError(
        [
            Problem(
                "history",
                f'to_dict(history={history!r}) is not a choice; pass "all" (every event), '
                '"none" (no events, only the next seq) or a count n >= 0 (the last n events)',
            )
        ]
    )


def dump(state: SessionState, history: HistoryChoice = "all") -> dict[str, Any]:
    """A snapshot of the session as plain JSON, at any moment (see ``Session.to_dict``)."""
    keep = kept_events(history)
    status = state.status
    run = state.run
    suspending = run is not None and run.suspending
    position: FramePosition | None
    stopped = state.stopped_by_limit.limit if state.stopped_by_limit is not None else None
    # Read once: a run that starts meanwhile (a to_dict() from another thread
    # before the run took the loop's token) lets go of it (Run._enter_root).
    saved = state.saved
    if stopped is not None and saved is not None and status is SessionStatus.FAILED:
        # Stopped by a limit: the positions it would go on from once the limit is raised.
        position, steps, trace = saved["position"], saved["steps"], saved["trace"]
    elif saved is not None and (status is SessionStatus.WAITING or suspending):
        # Suspended (or being torn down for it) or restored: the saved
        # positions, with what arrived since.
        status = SessionStatus.WAITING
        position, steps, trace = saved["position"], saved["steps"], saved["trace"]
    elif status is SessionStatus.RUNNING and run is not None:
        saved = run.saved_state()  # a live snapshot, taken mid-run
        position, steps, trace = saved["position"], saved["steps"], saved["trace"]
    elif run is None and state.final is not None:
        # Restored and not active: what it was restored from, unchanged.
        position, steps, trace = state.final["position"], state.steps, state.final["trace"]
    else:
        node = run.current_node if run is not None else state.last_node
        position = {
            "path": "",
            "node": node or state.pipeline.entry,
            "context": copy_json(dict(state.ctx.data)),
        }
        steps = state.steps
        trace = _trace_ids(state)
    running = status is SessionStatus.RUNNING and run is not None
    now = run.clock() if running and run is not None else state.clock()
    active = status is SessionStatus.RUNNING or status is SessionStatus.WAITING
    position = copy_json(position)
    pipeline = state.pipeline
    snapshot: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "stageflow_version": __version__,
        "session_id": state.session_id,
        "status": status.value,
        "taken_at": now.astimezone(datetime.UTC).isoformat(),
        "pipeline": {
            "name": pipeline.name,
            "digest": pipeline.digest,
            "document": pipeline.to_dict(),
        },
        "limits": limits_to_snapshot(state.limits),
        "validate_events": state.mode.value,
        "seed": state.seed,
        "rng_draws": state.draws,
        "steps": steps,
        "deadline": state.deadline,
        "trace": copy_json(trace),
        "current_node": position["node"] if active and position is not None else None,
        "position": position,
        "backlog": state.desk.broker.backlog(),
        "outcome": copy_json(state.outcome) if status in FINISHED else None,
        "stopped_by_limit": stopped if status is SessionStatus.FAILED else None,
        "history_seq": state.history.next_seq,
        "history": state.history.snapshot_events(keep),
    }
    desk = state.desk
    if desk.recorded_rejections or desk.unrecorded_rejections:
        # Its budget for recording rejections is the session's, not a run's: a
        # history kept in part ("none" in a worker) no longer counts them.
        snapshot["rejections"] = {
            "recorded": desk.recorded_rejections,
            "unrecorded": desk.unrecorded_rejections,
        }
    if state.cancel_reason is not None and status not in FINISHED:
        # A cancel() the run has not acted on yet: the restored session is cancelled too.
        snapshot["cancel_requested"] = state.cancel_reason
    if active:
        unseen = _unseen(state, position)
        if unseen:
            snapshot["unseen_inputs"] = unseen
    return snapshot


def _unseen(state: SessionState, position: FramePosition | None) -> list[dict[str, Any]]:
    """The inputs given to waits that are gone, which no stage saw and ``position`` does not keep.

    A live wait torn down after its input arrived (``state.unseen``): its
    input left the torn attempt's journal (``StageRuntime._torn_down``), so
    no position holds it and each is carried (matched against the position
    by type and payload, it would be taken for an equal input another wait
    got). And a restored wait whose
    stage has not replayed it (``state.parked``), where the position no
    longer holds it. The session discards them when it ends, so its snapshot
    carries them to the session restored from it.
    """
    parked = (state.parked or {}).values()
    left = [*(state.unseen or ()), *(not_kept(parked, parked_calls(position)) if parked else ())]
    return [{"input_type": t, "payload": p} for t, p in unseen_inputs(left)]


def _trace_ids(state: SessionState) -> TraceIds | None:
    ids = state.root_ids
    return None if ids is None else {"trace_id": ids["trace_id"], "span_id": ids["span_id"]}


def restore_pipeline(
    snapshot: Mapping[str, Any], registry: StageRegistry | None, pipeline: Pipeline | None
) -> Pipeline:
    """The pipeline a snapshot goes on with: ``pipeline``, or the one it carries.

    Raises:
        SnapshotMismatchError: the carried document does not match its digest,
            or the session is at nodes that the pipeline does not have.
        SnapshotError: the carried document no longer loads.
    """
    session_id = snapshot["session_id"]
    embedded = snapshot["pipeline"]
    if pipeline is None:
        try:
            pipeline = Pipeline.from_dict(
                embedded["document"], registry=registry, source=f"snapshot of {session_id!r}"
            )
        except PipelineValidationError as exc:
            problems = [
                Problem(f"$.pipeline.document{p.location[1:]}", p.message) for p in exc.problems
            ]
            if registry is None:
                problems.append(
                    Problem(
                        "$.pipeline.document",
                        "no registry= was passed, so the default registry was searched; "
                        "pass the registry that has the pipeline's stages",
                    )
                )
            raise SnapshotError(problems, source=f"session {session_id!r}") from exc
        if pipeline.digest != embedded["digest"]:
            raise mismatch(
                [
                    Problem(
                        "$.pipeline.digest",
                        f"the snapshot's pipeline document has digest {pipeline.digest}, "
                        f"not {embedded['digest']} as recorded: the snapshot was altered. "
                        "Restore an unaltered snapshot; to move a session to a changed "
                        "pipeline, pass it as from_dict(..., pipeline=)",
                    )
                ],
                session_id,
            )
    status = _STATUSES[snapshot["status"]]
    active = status is SessionStatus.RUNNING or status is SessionStatus.WAITING
    active = active or snapshot.get("stopped_by_limit") is not None
    problems = check_nodes(snapshot["position"], pipeline) if active else []
    if problems:
        raise mismatch(problems, session_id)
    stages = registry if registry is not None else pipeline.registry
    problems = consistency_problems(snapshot, pipeline, stages)
    if problems:
        if pipeline.digest != embedded["digest"] and _fits_its_own(snapshot, stages):
            # Moved to a changed pipeline that cannot have the session where
            # it is (an attempt past a smaller retry policy, ...): a mismatch.
            raise mismatch(problems[:20], session_id)
        raise SnapshotError(problems[:20], source=f"session {session_id!r}")
    return pipeline


def _fits_its_own(snapshot: Mapping[str, Any], registry: StageRegistry) -> bool:
    """Whether the snapshot is consistent with the pipeline it was taken with."""
    embedded = snapshot["pipeline"]
    try:
        own = Pipeline.from_dict(embedded["document"], registry=registry)
    except PipelineValidationError:
        return False
    return own.digest == embedded["digest"] and not consistency_problems(snapshot, own, registry)


def load(state: SessionState, snapshot: Mapping[str, Any]) -> None:
    """Give a new session's state what the snapshot kept.

    A session a limit had stopped (``stopped_by_limit``) is restored
    ``waiting`` at the node it stopped at when the new session's limits raise
    that limit; otherwise ``failed``, as it was.
    """
    status = _STATUSES[snapshot["status"]]
    stopped = snapshot.get("stopped_by_limit")
    if stopped is not None and raised(stopped, limits_of(snapshot), state.limits):
        status = SessionStatus.WAITING
    events = snapshot["history"]
    # Version 1 kept every event and no counter; version 2 says where to go on.
    next_seq = snapshot.get("history_seq", len(events) + 1)
    state.history.restore_snapshot(events, next_seq)
    rejections = snapshot.get("rejections")  # version 5
    if rejections is not None:
        state.desk.recorded_rejections = rejections["recorded"]
        state.desk.unrecorded_rejections = rejections["unrecorded"]
    else:  # before version 5, as many as the history kept
        state.desk.recorded_rejections = sum(
            1 for event in events if event["type"] == "input_rejected"
        )
    state.desk.broker.restore_backlog(copy_json(snapshot["backlog"]))
    unseen = snapshot.get("unseen_inputs")  # version 4
    if unseen:
        state.unseen = [
            {"wait": i["input_type"], "payload": copy_json(i["payload"])} for i in unseen
        ]
    if state.limits.timeout == limits_of(snapshot).timeout:
        state.deadline = snapshot["deadline"]
    # Else the new limits changed limits.timeout: the deadline is set anew
    # when the session's next run starts (none for null).
    state.draws = snapshot["rng_draws"]
    if status is SessionStatus.RUNNING or status is SessionStatus.WAITING:
        # The main context is the saved position's own (checked with the
        # snapshot; SessionState.wait_at): "paused session, as snapshot text" rows.
        state.wait_at(
            {
                "position": copy_json(snapshot["position"]),
                "steps": snapshot["steps"],
                "trace": copy_json(snapshot["trace"]),
                "digest": snapshot["pipeline"]["digest"],
            }
        )
        state.steps = snapshot["steps"]
    else:
        if snapshot["position"] is not None:
            # The main context, a copy of its own (checked with the snapshot):
            # a pending session's run writes it, its final position stays.
            state.ctx = Context(copy_json(snapshot["position"]["context"]))
        state.final = {
            "position": copy_json(snapshot["position"]),
            "trace": copy_json(snapshot["trace"]),
        }
    if status not in (SessionStatus.RUNNING, SessionStatus.WAITING, SessionStatus.PENDING):
        state.status = status
        state.steps = snapshot["steps"]
        state.outcome = copy_json(snapshot["outcome"])
        error = state.outcome.get("error") if state.outcome else None
        if error is not None:
            state.error = restore_error(error)
        state.history.close()
        if stopped is not None and status is SessionStatus.FAILED:
            # Still stopped (restored without raising that limit): its snapshot
            # says so again, so that a later restore with the limit raised goes on.
            state.stopped_by_limit = LimitExceededError(
                limit=stopped,
                value=getattr(limits_of(snapshot), stopped),
                node_id=getattr(state.error, "node_id", None) or "",
            )
