"""What the pages show of a session: read from its snapshot and its events.

A snapshot is the documented JSON of ``docs/snapshots.md``; this module reads
it as data (no session runs here). It is checked first by restoring it with
:meth:`stageflow.Session.from_dict`, which validates the whole document, so a
page never shows half of a broken snapshot.
"""

from __future__ import annotations

import datetime
import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

import stageflow
from stageflow.testing import measure_coverage

__all__ = [
    "REDACTED",
    "NodeState",
    "Position",
    "SessionView",
    "WaitForm",
    "event_objects",
    "inspect_session",
    "input_schema",
    "plain",
    "redact",
]

REDACTED: Final = "[redacted]"
"""What a redacted value is shown as."""

_ITEM = re.compile(r"\[\d+\]$")


def redact(value: Any, patterns: Sequence[str], prefix: str = "") -> Any:
    """``value`` with every entry whose dotted path matches a pattern replaced.

    Patterns are shell-style (``fnmatch``): ``*`` matches any text, dots
    included, so ``*password`` hides ``password`` and ``user.password`` alike,
    and ``secrets.*`` everything under ``secrets``. List items are paths too
    (``cards.0.number``).
    """
    if not patterns:
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            hidden = any(fnmatch.fnmatchcase(path, p) for p in patterns)
            out[key] = REDACTED if hidden else redact(item, patterns, path)
        return out
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for i, item in enumerate(value):
            path = f"{prefix}.{i}" if prefix else str(i)
            hidden = any(fnmatch.fnmatchcase(path, p) for p in patterns)
            items.append(REDACTED if hidden else redact(item, patterns, path))
        return items
    return value


@attrs.frozen
class Position:
    """One active position of a session: a path of execution at a node.

    Attributes:
        node: the node of the drawn pipeline it marks (for a position inside a
            subpipeline: the subpipeline node).
        inner: the node it is at, as ``subpipeline/node`` inside subpipelines.
        path: the execution path (``""`` main, ``fan/a`` a branch, ...).
        state: ``waiting`` (for an input), ``sleeping``, ``retrying``,
            ``running`` (a stage in flight), ``parallel``, ``map``,
            ``subpipeline`` (waiting on what runs inside), ``next`` (about to
            start the node).
        waits_for: the input type, for ``waiting``.
        until: the deadline of the wait, sleep or retry (ISO 8601), if any.
        detail: one line for people.
    """

    node: str
    inner: str
    path: str
    state: str
    waits_for: str | None = None
    until: str | None = None
    detail: str = ""


@attrs.frozen
class WaitForm:
    """An input the session waits for, with the schema its payload must match.

    Attributes:
        type: the input type.
        schema: the payload's JSON Schema, or ``None`` (any JSON value).
        nodes: the nodes waiting for it.
    """

    type: str
    schema: Mapping[str, Any] | None
    nodes: tuple[str, ...]


@attrs.frozen
class NodeState:
    """What one node of the drawn pipeline did in this session.

    Attributes:
        state: ``waiting``, ``running`` (any other active position),
            ``failed``, ``cancelled``, ``visited`` or ``unvisited``: the first
            that holds, in that order.
        visits: how many times it started.
        positions: the active positions at it.
        failures: how many of its executions failed.
        cancellations: how many were cancelled.
    """

    state: str
    visits: int
    positions: tuple[Position, ...]
    failures: int
    cancellations: int


_NO_SPAN: Final = {"trace_id": None, "span_id": None, "parent_span_id": None}


@attrs.frozen
class SessionView:
    """Everything the session page shows, already redacted.

    Attributes:
        session_id: the id.
        status: the session's status.
        pipeline: the pipeline it runs (rebuilt from the snapshot's document).
        positions: every active position, depth first.
        nodes: node id -> its state, for every node of the pipeline.
        taken: the edges taken, as (source, kind, target) with the tester's
            edge kinds (``next``, ``then``, ``branch`` ...).
        events: the history, oldest first, as ``Event.to_dict()`` gives it.
        recorded: how many events the session has recorded (the snapshot's
            ``history_seq``): more than ``events`` when the snapshot keeps
            only the newest or none (``to_dict(history=...)``) or the store
            holds more than the inspector reads.
        context: the main path's context, or ``None`` for a finished session.
        backlog: inputs waiting for a stage, by type.
        unseen: inputs given to waits torn down before their stage saw them
            (``input_type`` and ``payload``), which the session discards
            when it ends.
        outcome: result, artifacts and error of a finished session, else ``None``.
        forms: the inputs it waits for.
        wake_at: its earliest deadline (ISO 8601), if any.
        taken_at: when the snapshot was taken.
        version: the pipeline's ``metadata.version``, else its digest's start.
        stopped_by_limit: the limit that stopped it, if one did.
    """

    session_id: str
    status: str
    pipeline: stageflow.Pipeline
    positions: tuple[Position, ...]
    nodes: Mapping[str, NodeState]
    taken: frozenset[tuple[str, str, str]]
    events: tuple[Mapping[str, Any], ...]
    recorded: int
    context: Any
    backlog: Mapping[str, Any]
    unseen: tuple[Mapping[str, Any], ...]
    outcome: Mapping[str, Any] | None
    forms: tuple[WaitForm, ...]
    wake_at: str | None
    taken_at: str | None
    version: str
    stopped_by_limit: Any


def pipeline_version(pipeline: stageflow.Pipeline) -> str:
    """The pipeline's own ``metadata.version``, else the first 12 digits of its digest."""
    version = pipeline.metadata.get("version")
    return str(version) if isinstance(version, str) and version else pipeline.digest[:12]


def plain(value: Any) -> Any:
    """Frozen JSON (read-only mappings, tuples) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def input_schema(pipeline: stageflow.Pipeline, node_id: str, type: str) -> Mapping[str, Any] | None:
    """The payload schema node ``node_id`` declares for input ``type`` (``None``: any JSON)."""
    if node_id not in pipeline:
        return None
    node = pipeline.node(node_id)
    if not isinstance(node, stageflow.StageNode) or node.stage not in pipeline.registry:
        return None
    spec = pipeline.registry.get(node.stage).spec
    for declared in spec.allowed_inputs:
        if declared.type == type:
            return plain(declared.schema) if declared.schema is not None else None
    if spec.input_from_config is not None and node.config.get(spec.input_from_config) == type:
        schema = node.config.get("input_schema")
        return plain(schema) if isinstance(schema, Mapping) else None
    return None


def _walk(
    frame: Mapping[str, Any], pipeline: stageflow.Pipeline, marks: str | None, prefix: str
) -> Iterator[tuple[Position, stageflow.Pipeline]]:
    """The positions of one frame of the position tree and of every frame inside it."""
    node_id = str(frame.get("node"))
    path = str(frame.get("path", ""))
    mark = marks or node_id
    inner = f"{prefix}{node_id}"
    if "next" in frame:
        target = frame["next"]
        if isinstance(target, str):
            yield (
                Position(marks or target, f"{prefix}{target}", path, "next", detail="starts next"),
                pipeline,
            )
        return
    stage = frame.get("stage")
    if isinstance(stage, Mapping):
        calls = [c for c in stage.get("calls") or () if isinstance(c, Mapping)]
        attempt = stage.get("attempt", 1)
        open_call = calls[-1] if calls and "payload" not in calls[-1] else None
        if stage.get("retry_at"):
            yield (
                Position(
                    mark,
                    inner,
                    path,
                    "retrying",
                    until=stage["retry_at"],
                    detail=f"attempt {attempt} failed; retries at {stage['retry_at']}",
                ),
                pipeline,
            )
        elif open_call is not None and "wait" in open_call:
            wanted = str(open_call["wait"])
            yield (
                Position(
                    mark,
                    inner,
                    path,
                    "waiting",
                    waits_for=wanted,
                    until=open_call.get("deadline"),
                    detail=f"waits for input {wanted!r} (attempt {attempt})",
                ),
                pipeline,
            )
        elif open_call is not None and "sleep" in open_call:
            yield (
                Position(
                    mark,
                    inner,
                    path,
                    "sleeping",
                    until=open_call.get("until"),
                    detail=f"sleeps {open_call.get('seconds')} s",
                ),
                pipeline,
            )
        else:
            yield Position(mark, inner, path, "running", detail=f"attempt {attempt}"), pipeline
        return
    parallel = frame.get("parallel")
    if isinstance(parallel, Mapping):
        branches = [b for b in parallel.get("branches") or () if isinstance(b, Mapping)]
        states = Counter(str(b.get("state")) for b in branches)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        yield Position(mark, inner, path, "parallel", detail=f"branches: {summary}"), pipeline
        for branch in branches:
            child = branch.get("position")
            if isinstance(child, Mapping):
                yield from _walk(child, pipeline, marks, prefix)
        return
    mapped = frame.get("map")
    if isinstance(mapped, Mapping):
        running = [r for r in mapped.get("running") or () if isinstance(r, Mapping)]
        detail = f"{mapped.get('done', 0)} item(s) done, {len(running)} running"
        yield Position(mark, inner, path, "map", detail=detail), pipeline
        for item in running:
            child = item.get("position")
            if isinstance(child, Mapping):
                yield from _walk(child, pipeline, marks, prefix)
        return
    sub = frame.get("subpipeline")
    if isinstance(sub, Mapping):
        yield Position(mark, inner, path, "subpipeline", detail="runs a subpipeline"), pipeline
        child = sub.get("position")
        if isinstance(child, Mapping) and node_id in pipeline:
            callee = pipeline.callee(node_id)
            yield from _walk(child, callee, mark, f"{inner}/")
        return
    # A frame with nothing in flight: its node has not started (a session no
    # worker has run yet is at its entry node). It was "running", with no detail.
    yield Position(mark, inner, path, "next", detail="starts next"), pipeline


def event_objects(events: Iterable[Mapping[str, Any]]) -> list[stageflow.Event]:
    """``Event.to_dict()`` records back as :class:`stageflow.Event` objects."""
    return [
        stageflow.Event(
            int(e["seq"]),
            str(e["type"]),
            datetime.datetime.fromisoformat(str(e["timestamp"])),
            str(e.get("session_id", "")),
            e.get("node_id"),
            str(e.get("path", "")),
            e.get("payload") or {},
            e.get("trace_id"),
            e.get("span_id"),
            e.get("parent_span_id"),
        )
        for e in events
    ]


def _main_path_events(
    pipeline: stageflow.Pipeline, events: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The events of the drawn pipeline's own nodes (not of the nodes of its subpipelines).

    A path is read a step at a time: a parallel node and its branch, a map
    node and its item, then the rest. A step through anything else is a
    subpipeline call. (Any segment naming a subpipeline node was taken for
    one: a branch is named after its child, so the events of a subpipeline
    node that starts a branch, at ``fan/sub``, were left out with its inside.)
    """
    forks = {n.id for n in pipeline.nodes if n.type in ("parallel", "map")}
    out = []
    for event in events:
        parts = [_ITEM.sub("", p) for p in str(event.get("path", "")).split("/") if p]
        steps = parts[::2]  # the forking nodes; parts[1::2] are their branches and items
        if all(step in forks for step in steps):
            out.append(event)
    return out


def _earliest(values: Iterable[Any]) -> str | None:
    found = sorted(str(v) for v in values if isinstance(v, str) and v)
    return found[0] if found else None


def inspect_session(
    snapshot: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    pipeline: stageflow.Pipeline,
    *,
    redact_paths: Sequence[str] = (),
) -> SessionView:
    """Read a validated snapshot and its history into what the session page shows.

    Args:
        snapshot: ``Session.to_dict()`` (already checked by ``Session.from_dict``).
        events: its history (the snapshot's own, or the store's events table).
        pipeline: the pipeline rebuilt from the snapshot's document.
        redact_paths: patterns of paths to hide (see :func:`redact`).
    """
    root = snapshot.get("position")
    # A finished session may keep where it stopped (for a restore with a raised
    # limit), but nothing of it is active any more.
    active = isinstance(root, Mapping) and snapshot.get("status") in ("pending", "waiting")
    found = list(_walk(root, pipeline, None, "")) if active and root else []
    positions = tuple(p for p, _ in found)
    own = _main_path_events(pipeline, events)
    # A node restored in flight starts again as the same visit (``resumed``): not counted.
    visits = Counter(
        e.get("node_id")
        for e in own
        if e.get("type") == "node_started" and not (e.get("payload") or {}).get("resumed")
    )
    failures = Counter(e.get("node_id") for e in own if e.get("type") == "node_failed")
    cancels = Counter(e.get("node_id") for e in own if e.get("type") == "node_cancelled")
    last_end: dict[str, str] = {}
    for e in own:
        if e.get("type") in ("node_finished", "node_failed", "node_cancelled"):
            last_end[str(e.get("node_id"))] = str(e["type"])
    states: dict[str, NodeState] = {}
    for node in pipeline.nodes:
        here = tuple(p for p in positions if p.node == node.id)
        if any(p.state == "waiting" for p in here):
            state = "waiting"
        elif here:
            state = "running"
        elif last_end.get(node.id) == "node_failed":
            state = "failed"
        elif last_end.get(node.id) == "node_cancelled":
            state = "cancelled"
        elif visits[node.id]:
            state = "visited"
        else:
            state = "unvisited"
        states[node.id] = NodeState(
            state, visits[node.id], here, failures[node.id], cancels[node.id]
        )
    coverage = measure_coverage(pipeline, [event_objects(own)])
    taken = frozenset(
        (edge.source, edge.kind.value, edge.target)
        for edge, hits in coverage.edge_hits.items()
        if hits
    )
    forms: dict[str, WaitForm] = {}
    for position, owner in found:
        if position.state != "waiting" or position.waits_for is None:
            continue
        node_id = position.inner.rpartition("/")[2]
        known = forms.get(position.waits_for)
        schema = input_schema(owner, node_id, position.waits_for)
        if known is None:
            forms[position.waits_for] = WaitForm(position.waits_for, schema, (position.inner,))
        else:
            forms[position.waits_for] = attrs.evolve(
                known, nodes=(*known.nodes, position.inner), schema=known.schema or schema
            )
    context = root.get("context") if isinstance(root, Mapping) else None
    outcome = snapshot.get("outcome")
    if isinstance(outcome, Mapping):
        outcome = {
            "result": redact(outcome.get("result"), redact_paths),
            "artifacts": redact(outcome.get("artifacts"), redact_paths),
            "error": outcome.get("error"),
        }
    # history_seq is the seq the next event gets (snapshot format 2 on).
    next_seq = snapshot.get("history_seq")
    recorded = max(len(events), next_seq - 1) if isinstance(next_seq, int) else len(events)
    wake = [p.until for p in positions]
    wake.append(snapshot.get("deadline"))
    return SessionView(
        session_id=str(snapshot["session_id"]),
        status=str(snapshot["status"]),
        pipeline=pipeline,
        positions=positions,
        nodes=states,
        taken=taken,
        events=tuple(
            {
                # A snapshot's own history (format 3) leaves out each event's
                # session_id and its null span ids: Event.to_dict() has them all.
                "session_id": snapshot["session_id"],
                **_NO_SPAN,
                **e,
                "payload": redact(e.get("payload") or {}, redact_paths),
            }
            for e in events
        ),
        recorded=recorded,
        context=redact(context, redact_paths) if context is not None else None,
        backlog={
            k: [redact(item, redact_paths) for item in v] if isinstance(v, list) else v
            for k, v in (snapshot.get("backlog") or {}).items()
        },
        unseen=tuple(
            {**item, "payload": redact(item.get("payload"), redact_paths)}
            for item in snapshot.get("unseen_inputs") or ()
        ),
        outcome=outcome if isinstance(outcome, Mapping) else None,
        forms=tuple(forms.values()),
        wake_at=_earliest(wake),
        taken_at=snapshot.get("taken_at"),
        version=pipeline_version(pipeline),
        stopped_by_limit=snapshot.get("stopped_by_limit"),
    )
