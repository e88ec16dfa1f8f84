"""Checks of a session snapshot beyond its schema: within budget, and consistent.

The schema says what a snapshot looks like; it cannot say that a date exists,
that a map's next item is inside its list, that a winner is one the parallel
node can have, that the history counts 1, 2, 3, ... A snapshot can pass the
schema and still make a restore raise a raw exception, loop for ever, or run
differently. Two functions find all of that first, each problem located at
the field at fault:

- :func:`shape_problems`, before the schema: within the budgets of
  :mod:`stageflow._guard` (JSON values only, depth, frames nested), so the
  schema's own recursive validator only ever sees a bounded document;
- :func:`consistency_problems`, once at restore, against the pipeline: every
  frame, counter and time means something the engine can go on from.

The session turns the problems into a :class:`~stageflow.SnapshotError`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any, Final

from stageflow._context import Context
from stageflow._engine._limits import limits_of
from stageflow._engine._positions import FramePosition, count_positions
from stageflow._errors import ContextPathError, Problem
from stageflow._graph import all_edges, continuation_edges, region_edges, walk
from stageflow._guard import MAX_DEPTH, MAX_NESTING
from stageflow._json import copy_json, find_non_json, key_step
from stageflow._model import (
    MapNode,
    ParallelNode,
    ParallelPolicy,
    RetryPolicy,
    StageNode,
    SubpipelineNode,
)
from stageflow._pipeline import Pipeline
from stageflow._stages import StageRegistry

__all__ = [
    "INTEGER_FIELDS",
    "consistency_problems",
    "integer_problems",
    "shape_problems",
]

# A snapshot wraps values in frames: each nested frame adds up to four levels
# (frame, record, list, item) and a write three (writes, pair, value).
_SNAPSHOT_DEPTH: Final = MAX_DEPTH + 4 * MAX_NESTING + 8
# The ids of an open span in a snapshot (a link has the first two).
_SPAN_ID_KEYS: Final = ("trace_id", "span_id", "parent_span_id")


def shape_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Budget problems of a snapshot, found before the schema is applied (so it is bounded)."""
    nesting = _frame_nesting(data.get("position"))
    if nesting is not None:
        return [
            Problem(
                nesting,
                f"positions nest more than {MAX_NESTING} frames deep (branches, map items and "
                "subpipeline runs inside each other); no session nests so deep: the snapshot "
                "is damaged",
            )
        ]
    if find_non_json(data) is None:
        return []  # nothing in it nests past MAX_DEPTH, so no value inside does
    bad = find_non_json(data, "$", _SNAPSHOT_DEPTH)
    if bad is not None:
        return [
            Problem(
                bad.location,
                f"not a JSON value stageflow stores ({bad.reason}); the snapshot is damaged or "
                "was not written by session.to_dict()",
            )
        ]
    for where, value in _values(data):
        bad = find_non_json(value, where)
        if bad is not None:
            return [
                Problem(
                    bad.location,
                    f"not a value a session holds ({bad.reason}); the snapshot is damaged or "
                    "was not written by session.to_dict()",
                )
            ]
    return []


def _values(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The values a session holds, each checked on its own against :data:`MAX_DEPTH`.

    The whole snapshot is checked against a depth with room for its frames;
    each value inside must be as bounded as the guard makes it in a live
    session (a context, an input waiting in the backlog, an event's payload).
    Tolerates any shape: the schema has not been applied yet.
    """
    backlog = data.get("backlog")
    if isinstance(backlog, Mapping):
        for input_type, payloads in backlog.items():
            if isinstance(payloads, list):
                for i, payload in enumerate(payloads):
                    yield f"$.backlog{key_step(input_type)}[{i}]", payload
    unseen = data.get("unseen_inputs")
    if isinstance(unseen, list):
        for i, item in enumerate(unseen):
            if isinstance(item, Mapping) and "payload" in item:
                yield f"$.unseen_inputs[{i}].payload", item["payload"]
    history = data.get("history")
    if isinstance(history, list):
        for i, event in enumerate(history):
            if isinstance(event, Mapping) and "payload" in event:
                yield f"$.history[{i}].payload", event["payload"]
    for where, frame in _frames(data.get("position")):
        if "context" in frame:
            yield f"{where}.context", frame["context"]
        writes = frame.get("writes")
        if isinstance(writes, list):
            for i, write in enumerate(writes):
                if isinstance(write, list) and len(write) == 2:
                    yield f"{where}.writes[{i}][1]", write[1]


def _frames(position: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(location, frame)`` of every frame in a position of unchecked shape."""
    todo: list[tuple[str, Any]] = [("$.position", position)]
    while todo:
        where, frame = todo.pop()
        if isinstance(frame, Mapping):
            yield where, frame
            todo.extend((f"{where}{sub}", child) for sub, child in _raw_children(frame))


_LIMIT_INTEGERS: Final = (
    "max_steps",
    "max_history",
    "max_depth",
    "max_input_backlog",
    "max_input_bytes",
    "max_run_steps",
    "max_run_events",
)
_TOP_INTEGERS: Final = ("seed", "rng_draws", "steps", "history_seq")

INTEGER_FIELDS: Final = frozenset(
    (
        *_LIMIT_INTEGERS,
        *_TOP_INTEGERS,
        "start",  # trace.open[].start
        "seen",  # trace.seen
        "seq",  # history[].seq
        "visits",  # a frame's
        "attempt",  # a stage's
        "winner",  # a parallel node's
        "next",  # a map's
        "done",  # a map's
        "index",  # a map's failures[] and running[]
        "recorded",  # rejections
        "unrecorded",  # rejections
    )
)
"""The names of the fields :func:`integer_problems` checks: every field the
snapshot schema types ``integer`` (a test holds the two equal)."""


def integer_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Integer fields of a schema-valid snapshot written as floats (``2.0``).

    JSON Schema counts ``2.0`` as an integer, and ``json.loads`` of a text
    another program wrote can give one; the engine indexes, counts and
    numbers events with these fields, where a float raises a raw
    ``TypeError`` mid-run or numbers events ``1.0, 2.0, ...``.
    """
    found: list[Problem] = []
    # Locations are made only for a float found: a snapshot is checked at
    # every restore ("paused session, as snapshot text" rows). Each record is
    # (where, what to add to it, the record, its integer keys).
    records: list[tuple[str, str, Any, tuple[str, ...]]] = [
        ("$.limits", "", data.get("limits"), _LIMIT_INTEGERS),
        ("$", "", data, _TOP_INTEGERS),
    ]
    trace = data.get("trace")
    if trace is not None and isinstance(trace, Mapping):
        records.append(("$.trace", "", trace, ("seen",)))
        records.extend(
            (f"$.trace.open[{i}]", "", span, ("start",))
            for i, span in enumerate(trace.get("open") or ())
        )
    for i, event in enumerate(data.get("history") or ()):
        if type(event.get("seq")) is float:
            records.append((f"$.history[{i}]", "", event, ("seq",)))
    for at, frame in _frames(data.get("position")):
        records.append((at, "", frame, ("visits",)))
        records.append((at, ".stage", frame.get("stage"), ("attempt",)))
        records.append((at, ".parallel", frame.get("parallel"), ("winner",)))
        state = frame.get("map")
        if state is not None and isinstance(state, Mapping):
            records.append((at, ".map", state, ("next", "done")))
            for listing in ("failures", "running"):
                for i, item in enumerate(state.get(listing) or ()):
                    records.append((at, f".map.{listing}[{i}]", item, ("index",)))
    for where, more, record, keys in records:
        if record is not None and (type(record) is dict or isinstance(record, Mapping)):
            for key in keys:
                value = record.get(key)
                if type(value) is float:
                    found.append(
                        Problem(
                            f"{where}{more}.{key}",
                            f"{value!r} is a float; write the integer {int(value)}",
                        )
                    )
    return found


def _frame_nesting(position: Any) -> str | None:
    """Where frames nest past :data:`MAX_NESTING`, or ``None``. Tolerates any shape."""
    todo: list[tuple[str, Any, int]] = [("$.position", position, 1)]
    while todo:
        where, frame, level = todo.pop()
        if not isinstance(frame, Mapping):
            continue
        if level > MAX_NESTING:
            return where
        todo.extend((f"{where}{sub}", child, level + 1) for sub, child in _raw_children(frame))
    return None


def _raw_children(frame: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(location suffix, frame)`` nested in a frame of unchecked shape."""
    # (None, the usual value of each, is tested first: an isinstance on the
    # Mapping ABC costs more: "paused session, as snapshot text" rows.)
    for key, listing in (("parallel", "branches"), ("map", "running")):
        record = frame.get(key)
        if record is None:
            continue
        items = record.get(listing) if isinstance(record, Mapping) else None
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, Mapping) and "position" in item:
                    yield f".{key}.{listing}[{i}].position", item["position"]
    record = frame.get("subpipeline")
    if record is not None and isinstance(record, Mapping) and "position" in record:
        yield ".subpipeline.position", record["position"]


def consistency_problems(
    snapshot: Mapping[str, Any], pipeline: Pipeline, registry: StageRegistry
) -> list[Problem]:
    """Everything in a schema-valid snapshot that the engine could not go on from.

    Times that are no real date, a history not numbered 1..n or of another
    session, counters past their limits, and positions the pipeline cannot
    have: nodes outside the branch or map body they are in, map items past
    the list or not started, listed twice or unaccounted for, winners a
    parallel node cannot have, attempts past the retry policy, writes that
    cannot be applied, open spans (``trace.open``) with an all-zero id.
    Frames are checked only when the session is active or stopped by a
    limit (the others are not run again).
    """
    checker = _Checker(snapshot, pipeline, registry)
    checker.check()
    return checker.problems


_ACTIVE: Final = ("running", "waiting")
# The policy of a stage node without one: made once, not per frame checked.
_NO_RETRY: Final = RetryPolicy()


class _Checker:
    def __init__(
        self, snapshot: Mapping[str, Any], pipeline: Pipeline, registry: StageRegistry
    ) -> None:
        self.snapshot = snapshot
        self.pipeline = pipeline
        self.registry = registry
        self.problems: list[Problem] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def check(self) -> None:
        snapshot = self.snapshot
        self.time("$.taken_at", snapshot["taken_at"])
        if snapshot["deadline"] is not None:
            self.time("$.deadline", snapshot["deadline"])
        self.history(snapshot["history"], snapshot["session_id"], snapshot.get("history_seq"))
        self.document_name()
        self.counters()
        self.open_spans(snapshot["trace"])
        position = snapshot["position"]
        active = snapshot["status"] in _ACTIVE
        if "cancel_requested" in snapshot and snapshot["status"] not in (*_ACTIVE, "pending"):
            self.add(
                "$.cancel_requested",
                f"a {snapshot['status']} session has no cancel to act on; only a pending, "
                "running or waiting one has",
            )
        if "unseen_inputs" in snapshot and not active:
            self.add(
                "$.unseen_inputs",
                f"a {snapshot['status']} session keeps no inputs to discard later; only a "
                "running or waiting one does (a finished one listed them in inputs_discarded)",
            )
        # A session a limit stopped goes on from its position once restored
        # with that limit raised: it is checked as an active one's.
        stopped = snapshot.get("stopped_by_limit")
        if stopped is not None and snapshot["status"] != "failed":
            self.add(
                "$.stopped_by_limit",
                f"a {snapshot['status']} session was not stopped by a limit; only a failed "
                "one is; write null",
            )
            stopped = None
        if active and position is None:
            self.add(
                "$.position",
                f"the session is {snapshot['status']} but has no position to go on from",
            )
        elif stopped is not None and position is None:
            self.add(
                "$.position",
                f"the session was stopped by limits.{stopped} but has no position to go on "
                "from once that limit is raised",
            )
        if (active or stopped is not None) and position is not None:
            if active and snapshot["current_node"] != position["node"]:
                self.add(
                    "$.current_node",
                    f"{snapshot['current_node']!r} is not the node of the position "
                    f"({position['node']!r})",
                )
            try:
                # Read, never written: the checks fork it (a fork writes into a
                # layer of its own, and copies a nested container before it
                # changes one), so the snapshot's own dict serves, uncopied.
                ctx = Context(position["context"])
            except (KeyError, TypeError):
                return  # the schema requires the root frame's context
            self.frame(position, self.pipeline, ctx, "$.position", None)

    def open_spans(self, trace: Mapping[str, Any] | None) -> None:
        """The open spans a restore exports (``trace.open``) have valid OpenTelemetry ids."""
        for i, span in enumerate((trace or {}).get("open") or ()):
            ids = [(f"$.trace.open[{i}].{key}", span[key]) for key in _SPAN_ID_KEYS]
            ids += [
                (f"$.trace.open[{i}].links[{j}].{key}", link[key])
                for j, link in enumerate(span.get("links") or ())
                for key in _SPAN_ID_KEYS[:2]
            ]
            for where, value in ids:
                if value is not None and not value.strip("0"):
                    self.add(
                        where,
                        f"{value!r} is all zeros, which OpenTelemetry reads as no id (a "
                        "restore would export the span with it); write the id the span had, "
                        "or remove the span from trace.open",
                    )

    # ------------------------------------------------------------- scalars

    def time(self, where: str, text: str) -> None:
        try:
            datetime.datetime.fromisoformat(text)
        except ValueError as exc:
            self.add(where, f"{text!r} is not a real date and time ({exc})")

    def history(
        self, events: list[Mapping[str, Any]], session_id: str, next_seq: int | None
    ) -> None:
        # Version 1 keeps every event (1, 2, 3, ...); version 2 the newest ones
        # (none, a tail or all), numbered up to history_seq - 1.
        first = 1 if next_seq is None else next_seq - len(events)
        if first < 1:
            self.add(
                "$.history_seq",
                f"history_seq {next_seq} comes before the {len(events)} events the snapshot "
                "keeps; it is the seq of the next event",
            )
            return
        fromisoformat = datetime.datetime.fromisoformat
        # Locations are made only for a problem: a snapshot is checked at every
        # restore ("paused session, as snapshot text" rows).
        for i, event in enumerate(events):
            if event["seq"] != first + i:
                self.add(
                    f"$.history[{i}].seq",
                    f"event {i + 1} of the kept history has seq {event['seq']}, not "
                    f"{first + i}; a history is numbered without gaps up to history_seq - 1",
                )
            if event.get("session_id", session_id) != session_id:
                self.add(
                    f"$.history[{i}].session_id",
                    f"event of session {event['session_id']!r} in the history of session "
                    f"{session_id!r}",
                )
            try:
                fromisoformat(event["timestamp"])
            except ValueError:
                self.time(f"$.history[{i}].timestamp", event["timestamp"])

    def document_name(self) -> None:
        embedded = self.snapshot["pipeline"]
        metadata = embedded["document"].get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        expected = name if isinstance(name, str) and name else "pipeline"
        if embedded["name"] != expected:
            self.add(
                "$.pipeline.name",
                f"{embedded['name']!r} is not the name of the pipeline document it carries "
                f"({expected!r})",
            )

    def counters(self) -> None:
        snapshot = self.snapshot
        # Version 3 keeps only the limits that differ from their defaults.
        limits = limits_of(snapshot)
        # Every node in flight is counted, one refused by max_steps too (a
        # session stopped at the limit, or a live snapshot as the stop tears
        # the run down, when several positions may each have been refused):
        # those that finished are at most max_steps.
        max_steps = limits.max_steps
        position: FramePosition | None = snapshot.get("position")
        in_flight = count_positions(position)
        if max_steps is not None and snapshot["steps"] - in_flight > max_steps:
            self.add(
                "$.steps",
                f"{snapshot['steps']} node executions is past limits.max_steps="
                f"{max_steps}; no session gets there",
            )
        for input_type, payloads in snapshot["backlog"].items():
            if len(payloads) > limits.max_input_backlog:
                self.add(
                    f"$.backlog{key_step(input_type)}",
                    f"{len(payloads)} queued inputs is over limits.max_input_backlog="
                    f"{limits.max_input_backlog}",
                )

    # -------------------------------------------------------------- frames

    def frame(
        self,
        frame: Mapping[str, Any],
        pipeline: Pipeline,
        ctx: Context,
        where: str,
        region: set[str] | None,
    ) -> None:
        """Check one frame; ``region`` is the set of nodes it may be at (``None``: any)."""
        node_id = frame["node"]
        if node_id not in pipeline:
            return  # check_nodes reports it
        if region is not None and node_id not in region:
            self.add(
                f"{where}.node",
                f"node {node_id!r} is not in the branch or map body this position is in "
                f"(those are: {', '.join(sorted(region))})",
            )
            return
        node = pipeline.node(node_id)
        if "next" in frame:
            following = frame["next"]
            allowed = {*continuation_edges(node), node_id, None}
            if following not in allowed:
                self.add(
                    f"{where}.next",
                    f"the path goes on at {following!r}, which node {node_id!r} does not lead to",
                )
        if "stage" in frame and isinstance(node, StageNode):
            self.stage(frame["stage"], node, f"{where}.stage")
        elif "parallel" in frame and isinstance(node, ParallelNode):
            self.parallel(frame["parallel"], node, pipeline, ctx, f"{where}.parallel")
        elif "map" in frame and isinstance(node, MapNode):
            self.map(frame["map"], node, pipeline, ctx, f"{where}.map")
        elif "subpipeline" in frame and isinstance(node, SubpipelineNode):
            inner = frame["subpipeline"]["position"]
            sub = Context(inner["context"])  # read, never written (see check())
            self.frame(inner, pipeline.callee(node_id), sub, f"{where}.subpipeline.position", None)

    def stage(self, state: Mapping[str, Any], node: StageNode, where: str) -> None:
        entry = self.registry.get(node.stage) if node.stage in self.registry else None
        policy = node.retry or (entry.spec.retry if entry is not None else None) or _NO_RETRY
        if state["attempt"] > policy.attempts:
            self.add(
                f"{where}.attempt",
                f"attempt {state['attempt']} is past the {policy.attempts} attempt(s) the retry "
                f"policy of node {node.id!r} allows",
            )
        if state["retry_at"] is not None:
            self.time(f"{where}.retry_at", state["retry_at"])
            if state["attempt"] < 2:
                self.add(
                    f"{where}.retry_at",
                    "a retry delay before attempt 1; only attempts from 2 on wait for one",
                )
        for i, call in enumerate(state["calls"]):
            if call.get("deadline") is not None:
                self.time(f"{where}.calls[{i}].deadline", call["deadline"])
            if call.get("since") is not None:
                self.time(f"{where}.calls[{i}].since", call["since"])
            if call.get("sleep") is not None:
                self.time(f"{where}.calls[{i}].sleep", call["sleep"])

    def fork(self, parent: Context, writes: list[list[Any]], where: str) -> Context | None:
        ctx = parent.fork()
        for i, (path, value) in enumerate(writes):
            try:
                ctx.set(path, copy_json(value))
            except ContextPathError as exc:
                self.add(f"{where}[{i}]", f"the write cannot be applied: {exc}")
                return None
        return ctx

    def parallel(
        self,
        state: Mapping[str, Any],
        node: ParallelNode,
        pipeline: Pipeline,
        ctx: Context,
        where: str,
    ) -> None:
        index = pipeline.node_index
        seen: set[str] = set()
        for i, branch in enumerate(state["branches"]):
            child = branch["child"]
            if child in seen:
                self.add(f"{where}.branches[{i}].child", f"branch {child!r} is listed twice")
            seen.add(child)
            if child not in node.children:
                continue  # check_nodes reports it
            if branch["state"] == "finished":
                self.fork(ctx, branch["writes"], f"{where}.branches[{i}].writes")
            elif branch["state"] == "running":
                position = branch["position"]
                forked = self.fork(
                    ctx, position["writes"], f"{where}.branches[{i}].position.writes"
                )
                if forked is not None:
                    region = walk([child], index, region_edges, node.next)
                    self.frame(
                        position, pipeline, forked, f"{where}.branches[{i}].position", region
                    )
        winner = state["winner"]
        if winner is None:
            return
        if node.policy is not ParallelPolicy.ANY:
            self.add(
                f"{where}.winner",
                f"parallel node {node.id!r} has policy {node.policy.value!r}: only an 'any' "
                "node has a winner",
            )
        elif winner >= len(state["branches"]):
            self.add(
                f"{where}.winner",
                f"winner {winner} is past the {len(state['branches'])} branches listed for "
                f"parallel node {node.id!r}",
            )
        else:
            # An index in the listed branches (not in the node's children,
            # which a changed pipeline may have reordered).
            won = state["branches"][winner]
            if won["state"] in ("failed", "cancelled"):
                self.add(
                    f"{where}.winner",
                    f"the winner, branch {won['child']!r}, {won['state']}: a winner succeeded",
                )

    def map(
        self,
        state: Mapping[str, Any],
        node: MapNode,
        pipeline: Pipeline,
        ctx: Context,
        where: str,
    ) -> None:
        items = ctx.get(node.items)
        if not isinstance(items, list):
            self.add(
                where,
                f"map node {node.id!r} is in flight but its items ({node.items!r}) are not a "
                "list in the context",
            )
            return
        total = len(items)
        if state["next"] > total:
            self.add(
                f"{where}.next",
                f"next item {state['next']} is past the {total} items of map node {node.id!r}",
            )
        if state["done"] > state["next"]:
            self.add(
                f"{where}.done",
                f"{state['done']} items done, more than the {state['next']} started",
            )
        # (An item cancelled with the map stays running: MapExecutor._worker.)
        started = state["done"] + len(state["failures"]) + len(state["running"])
        if started != state["next"]:
            self.add(
                where,
                f"{state['done']} items done, {len(state['failures'])} failed and "
                f"{len(state['running'])} running make {started}, not the "
                f"{state['next']} started (next); every started item of map node "
                f"{node.id!r} is one of these",
            )
        for source in node.collect:
            if source not in state["collected"]:
                self.add(
                    f"{where}.collected",
                    f"map node {node.id!r} collects {source!r}, of which the snapshot keeps "
                    "no values (the items done would lose theirs); restore with the pipeline "
                    "the snapshot was taken with",
                )
        for source, values in state["collected"].items():
            if source not in node.collect:
                self.add(
                    f"{where}.collected{key_step(source)}",
                    f"map node {node.id!r} does not collect {source!r}",
                )
            elif len(values) != total:
                self.add(
                    f"{where}.collected{key_step(source)}",
                    f"{len(values)} values collected for {total} items; one per item",
                )
        listed: set[int] = set()
        for i, failure in enumerate(state["failures"]):
            if failure["index"] >= state["next"]:
                self.add(
                    f"{where}.failures[{i}].index",
                    f"item {failure['index']} failed but is not started (next is "
                    f"{state['next']}, of {total} items of map node {node.id!r})",
                )
            elif failure["index"] in listed:
                self.add(f"{where}.failures[{i}].index", "a failed item is listed once")
            listed.add(failure["index"])
        region = walk([node.body], pipeline.node_index, all_edges)
        previous = -1
        for i, item in enumerate(state["running"]):
            at = f"{where}.running[{i}]"
            if item["index"] >= state["next"]:
                # It would run twice: restored, and started again as the next item.
                self.add(
                    f"{at}.index",
                    f"item {item['index']} is running but is not started (next is "
                    f"{state['next']}, of {total} items of map node {node.id!r})",
                )
                continue
            if item["index"] <= previous:
                self.add(f"{at}.index", "running items are listed once each, in item order")
            elif item["index"] in listed:
                self.add(f"{at}.index", f"item {item['index']} is listed as failed too")
            previous = item["index"]
            position = item["position"]
            forked = self.fork(ctx, position["writes"], f"{at}.position.writes")
            if forked is not None:
                self.frame(position, pipeline, forked, f"{at}.position", region)
