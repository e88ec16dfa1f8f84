"""Checking a run against a case's expectations; every failed check is kept."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from stageflow import (
    Event,
    Pipeline,
    Problem,
    SessionStatus,
    StageflowError,
    StageNode,
    StageRegistry,
)
from stageflow._errors import describe_exception
from stageflow._graph import listing
from stageflow._specs import ENGINE_EVENT_TYPES
from stageflow.testing._diff import (
    SHOWN_WHOLE,
    json_equal,
    json_text,
    list_diff,
    short_text,
    subset_mismatches,
    text_diff,
)
from stageflow.testing._model import Case, ErrorExpectation, EventExpectation
from stageflow.testing._result import Failure, InputRecord

__all__ = ["Observed", "check", "unknown_event_types", "unknown_nodes"]

_SHOWN = 5  # candidate events listed under a failed event expectation


@attrs.frozen
class Observed:
    """What a run produced, as the checks see it."""

    status: SessionStatus
    result: Mapping[str, Any] | None
    artifacts: Mapping[str, Any]
    error: StageflowError | None
    history: Sequence[Event]
    elapsed: float
    limit_exceeded: str | None
    limit_detail: str
    inputs: tuple[InputRecord, ...]
    discarded: tuple[tuple[str, Any], ...] = ()  # SessionResult.discarded_inputs

    @property
    def visited(self) -> list[str]:
        return [e.node_id for e in self.history if e.type == "node_started" and e.node_id]


def _node_ids(pipeline: Pipeline, into: set[str]) -> set[str]:
    into.update(pipeline.node_index)
    for sub in pipeline.subpipelines.values():
        _node_ids(sub, into)
    return into


def unknown_nodes(case: Case, pipeline: Pipeline) -> list[Problem]:
    """A problem for each node id in ``case.expect`` that no node of ``pipeline`` has.

    Subpipelines' nodes count: their ids are in the history too. Without
    this, ``not_visited`` or an event ``count: 0`` naming a misspelt node
    would hold whatever the pipeline does.
    """
    expect = case.expect
    named: list[tuple[str, str]] = []
    for key in ("path", "path_in_order", "not_visited"):
        ids: tuple[str, ...] | None = getattr(expect, key)
        named.extend((f"{key}[{i}]", node_id) for i, node_id in enumerate(ids or ()))
    named.extend(
        (f"events[{i}].node_id", e.node_id)
        for i, e in enumerate(expect.events)
        if e.node_id is not None
    )
    if expect.error is not None and expect.error.node_id is not None:
        named.append(("error.node_id", expect.error.node_id))
    known = _node_ids(pipeline, set())
    return [
        Problem(
            f"{case.location}.expect.{where}",
            f"{node_id!r} is not a node of pipeline {pipeline.name!r}, so this expectation "
            f"does not test the run; use one of {listing(known)}",
        )
        for where, node_id in named
        if node_id not in known
    ]


def _pipelines(pipeline: Pipeline) -> Iterator[Pipeline]:
    yield pipeline
    for sub in pipeline.subpipelines.values():
        yield from _pipelines(sub)


def _emitted_types(
    pipeline: Pipeline, registry: StageRegistry, node_id: str | None
) -> frozenset[str] | None:
    """The event types the stage nodes (those with ``node_id``, or all) may emit.

    ``None`` when any of them declares no events: a stage without
    ``allowed_events`` may emit any type.
    """
    types: set[str] = set()
    for each in _pipelines(pipeline):
        for node in each.node_index.values():
            if node_id is not None and node.id != node_id:
                continue
            if isinstance(node, StageNode):
                declared = registry.get(node.stage).spec.allowed_events
                if not declared:
                    return None
                types.update(spec.type for spec in declared)
    return frozenset(types)


def unknown_event_types(case: Case, pipeline: Pipeline, registry: StageRegistry) -> list[Problem]:
    """A problem for each expected event type no node it names can have in its history.

    A type is possible when it is one of the engine's or one that a stage
    declares in ``StageSpec.allowed_events``; a stage that declares none may
    emit anything, and then no type is refused. Without this, an expectation
    ``count: 0`` of a misspelt type would hold whatever the stages emit.
    """
    problems: list[Problem] = []
    for i, expected in enumerate(case.expect.events):
        if expected.type in ENGINE_EVENT_TYPES:
            continue
        emitted = _emitted_types(pipeline, registry, expected.node_id)
        if emitted is None or expected.type in emitted:
            continue
        where = "its stages" if expected.node_id is None else f"node {expected.node_id!r}"
        declared = f"declare only {listing(emitted)}" if emitted else "emit no events of their own"
        problems.append(
            Problem(
                f"{case.location}.expect.events[{i}].type",
                f"no event of type {expected.type!r} can be in the history: it is not an engine "
                f"event, and {where} of pipeline {pipeline.name!r} {declared} (in "
                "StageSpec.allowed_events); fix the type or the node",
            )
        )
    return problems


def check(case: Case, run: Observed) -> tuple[list[Failure], int]:
    """Check ``run`` against ``case.expect``; return the failures and the number of checks."""
    failures: list[Failure] = []
    checks = 0
    for failure in _checks(case, run):
        checks += 1
        if failure is not None:
            failures.append(failure)
    return failures, checks


def _checks(case: Case, run: Observed) -> Iterator[Failure | None]:
    expect = case.expect
    status = expect.effective_status
    if status is not None:
        yield _check_status(status, run)
    yield _check_limit(expect.limit_exceeded, run)
    if expect.has_result:
        yield _check_exact("result", expect.result, run.result)
    if expect.artifacts is not None:
        yield _check_exact("artifacts", expect.artifacts, run.artifacts)
    if expect.artifacts_subset is not None:
        yield _check_subset("artifacts_subset", expect.artifacts_subset, run.artifacts)
    if expect.path is not None:
        yield _check_path(expect.path, run.visited)
    if expect.path_in_order is not None:
        yield _check_path_in_order(expect.path_in_order, run.visited)
    if expect.not_visited is not None:
        yield _check_not_visited(expect.not_visited, run.visited)
    for i, event in enumerate(expect.events):
        yield _check_event(f"events[{i}]", event, run.history)
    if expect.error is not None:
        yield _check_error(expect.error, run)
    if case.inputs:
        # A case about discarded (rejected) inputs expects their event; the
        # others must have every input taken.
        expected = {e.type for e in expect.events}
        discarded = () if "inputs_discarded" in expected else run.discarded
        yield _check_inputs(run, discarded, rejections="input_rejected" in expected)


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    return f"error: {type(error).__name__}: {error}"


def _check_status(expected: str, run: Observed) -> Failure | None:
    if run.status.value == expected:
        return None
    details = [_error_line(run.error)] if run.error is not None else []
    if run.limit_exceeded is not None:
        details.append(f"the run was ended by {run.limit_detail}")
    return Failure("status", f"expected {expected!r}, got {run.status.value!r}", "\n".join(details))


def _check_limit(expected: str | None, run: Observed) -> Failure | None:
    if run.limit_exceeded == expected:
        return None
    if expected is None:
        return Failure(
            "limit",
            f"the run was ended by {run.limit_detail}",
            "raise the limit in the case's 'limits', or expect it with "
            f'"limit_exceeded": "{run.limit_exceeded}"',
        )
    if run.limit_exceeded is None:
        return Failure(
            "limit_exceeded",
            f"expected the run to be ended by {expected}, but it ended with status "
            f"{run.status.value!r} after {run.elapsed:g} virtual seconds "
            f"and {len(run.history)} events",
        )
    return Failure(
        "limit_exceeded", f"expected the run to be ended by {expected}, not {run.limit_detail}"
    )


def _check_exact(field: str, expected: Any, actual: Any) -> Failure | None:
    if json_equal(expected, actual):
        return None
    short = len(json_text(expected)) + len(json_text(actual)) <= 60
    if short:
        return Failure(field, f"expected {json_text(expected)}, got {json_text(actual)}")
    return Failure(field, "differs from the expected value", text_diff(expected, actual))


def _check_subset(field: str, expected: Mapping[str, Any], actual: Any) -> Failure | None:
    mismatches = subset_mismatches(expected, actual, "")
    if not mismatches:
        return None
    return Failure(
        field,
        f"{len(mismatches)} expected value(s) not found",
        "\n".join(mismatches) + f"\nactual: {short_text(actual, SHOWN_WHOLE)}",
    )


def _arrow(path: Sequence[str]) -> str:
    return " -> ".join(path) or "(no nodes)"


def _check_path(expected: Sequence[str], actual: Sequence[str]) -> Failure | None:
    if list(expected) == list(actual):
        return None
    details = f"expected: {_arrow(expected)}\nactual:   {_arrow(actual)}\n" + list_diff(
        expected, actual
    )
    return Failure("path", "the visited nodes differ", details)


def _check_path_in_order(expected: Sequence[str], actual: Sequence[str]) -> Failure | None:
    position = 0
    for matched, node_id in enumerate(expected):
        try:
            position = actual.index(node_id, position) + 1
        except ValueError:
            if node_id not in actual:
                why = f"{node_id!r} was never started"
            else:
                after = expected[matched - 1]
                why = f"{node_id!r} was started, but not after {after!r}"
            return Failure(
                "path_in_order",
                f"{why} (matched {matched} of {len(expected)})",
                f"expected in order: {_arrow(expected)}\nactual:            {_arrow(actual)}",
            )
    return None


def _check_not_visited(expected: Sequence[str], actual: Sequence[str]) -> Failure | None:
    seen = [n for n in expected if n in actual]
    if not seen:
        return None
    listed = ", ".join(f"{n!r} (step {actual.index(n) + 1})" for n in seen)
    return Failure("not_visited", f"started {listed}", f"actual: {_arrow(actual)}")


def _matches(expected: EventExpectation, event: Event) -> bool:
    if event.type != expected.type:
        return False
    if expected.node_id is not None and event.node_id != expected.node_id:
        return False
    return expected.payload is None or not subset_mismatches(expected.payload, event.payload, "")


def _show(event: Event) -> str:
    node = f" node {event.node_id!r}" if event.node_id else ""
    return f"#{event.seq} {event.type}{node} {short_text(event.payload)}"


def _check_event(
    field: str, expected: EventExpectation, history: Sequence[Event]
) -> Failure | None:
    matching = [e for e in history if _matches(expected, e)]
    if expected.count is not None:
        if len(matching) == expected.count:
            return None
        shown = "\n".join(_show(e) for e in matching[:_SHOWN])
        return Failure(
            field,
            f"expected {expected.count} x {expected.describe()}, found {len(matching)}",
            shown,
        )
    if matching:
        return None
    same_type = [e for e in history if e.type == expected.type]
    if same_type:
        # The payload is compared with an event of the expected node, not
        # with another node's (which said "differs" about the wrong event).
        node_id = expected.node_id
        of_node = [e for e in same_type if node_id is None or e.node_id == node_id]
        listed = of_node or same_type
        more = len(listed) - _SHOWN
        where = f" at node {node_id!r}" if of_node and node_id is not None else ""
        details = f"events of that type{where}:\n" + "\n".join(_show(e) for e in listed[:_SHOWN])
        if more > 0:
            details += f"\n... and {more} more"
        if not of_node:
            details += f"\nnone of them at node {node_id!r}"
        elif expected.payload is not None:
            closest = subset_mismatches(expected.payload, of_node[0].payload, "payload")
            details += f"\nfirst one differs: {'; '.join(closest)}"
    else:
        types = sorted({e.type for e in history})
        details = f"no {expected.type!r} event at all; types seen: {', '.join(types)}"
    return Failure(field, f"no {expected.describe()}", details)


def _cause_types(error: StageflowError) -> list[str]:
    out: list[str] = []
    todo = [describe_exception(error)]
    while todo:
        described = todo.pop(0)
        out.extend(c["type"] for c in described.get("causes", ()))
        for sub in described.get("errors", ()):
            out.append(sub["type"])
            todo.append(sub)
    return out


def _check_error(expected: ErrorExpectation, run: Observed) -> Failure | None:
    error = run.error
    if error is None:
        return Failure("error", f"expected an error, but the run has none (status {run.status})")
    problems: list[str] = []
    actual_type = type(error).__name__
    if expected.type is not None and actual_type != expected.type:
        problems.append(f"type: expected {expected.type!r}, got {actual_type!r}")
    if expected.message_contains is not None and expected.message_contains not in str(error):
        problems.append(f"message does not contain {expected.message_contains!r}")
    for attr in ("node_id", "stage", "attempt"):
        want = getattr(expected, attr)
        got = getattr(error, attr, None)
        if want is not None and want != got:
            problems.append(f"{attr}: expected {want!r}, got {got!r}")
    if expected.cause_type is not None:
        causes = _cause_types(error)
        if expected.cause_type not in causes:
            listed = ", ".join(causes) or "none"
            problems.append(f"no {expected.cause_type!r} among the causes (causes: {listed})")
    if not problems:
        return None
    return Failure(
        "error",
        f"{len(problems)} mismatch(es)",
        "\n".join(problems) + f"\nactual {_error_line(error)}",
    )


def _unreceived(
    records: Sequence[InputRecord], discarded: Sequence[tuple[str, Any]]
) -> list[InputRecord]:
    """The sent inputs that ``discarded`` shows no stage took, matched by type and payload.

    An input is discarded when it was kept and no wait took it, or when a
    wait it was given to was torn down before its stage took it (its branch
    lost an ``any`` race, say): one given to several waits was taken unless
    each of them was torn down. Of equal kept inputs, the last ones are
    taken first (queues are FIFO).
    """
    sent = sorted(
        (r for r in records if r.sent_at is not None and r.error is None),
        key=lambda r: (not r.queued, -(r.sent_at or 0.0)),
    )
    # A kept input is one copy; one given to waits, a copy per wait.
    left = {id(r): 1 if r.queued else r.delivered for r in sent}
    for input_type, payload in discarded:
        for record in sent:
            scripted = record.input
            if (
                left[id(record)] > 0
                and scripted.type == input_type
                and json_equal(scripted.payload, payload)
            ):
                left[id(record)] -= 1
                break
    return [r for r in sent if left[id(r)] == 0 and (r.queued or r.delivered)]


def _broadcast_note(records: Sequence[InputRecord], input_type: str) -> str:
    """Why waits that came at once left an input unsent: one input went to all of them."""
    shared = next((r for r in records if r.input.type == input_type and r.delivered > 1), None)
    if shared is None:
        return ""
    return (
        f" (the one sent at t={shared.sent_at or 0.0:g}s reached {shared.delivered} waiting "
        "stages at once: an input goes to every stage waiting for its type)"
    )


def _check_inputs(
    run: Observed, discarded: Sequence[tuple[str, Any]], *, rejections: bool
) -> Failure | None:
    unsent = [r for r in run.inputs if r.sent_at is None]
    unreceived = {id(r) for r in _unreceived(run.inputs, discarded)}
    rejected = 0 if rejections else sum(r.error is not None for r in run.inputs)
    if not unsent and not unreceived and not rejected:
        return None
    lines = []
    for record in run.inputs:
        scripted = record.input
        if record.error is not None and not rejections:
            why = f"sent at t={record.sent_at:g}s; the session said: {record.error}"
        elif id(record) in unreceived and record.queued:
            why = (
                f"sent at t={record.sent_at:g}s and kept for a wait, but no wait took it: "
                "the session discarded it when it ended"
            )
        elif id(record) in unreceived:
            why = (
                f"sent at t={record.sent_at:g}s to a waiting stage, whose branch ended before "
                "the stage took it: the session discarded it when it ended"
            )
        elif record.sent_at is not None:
            continue
        elif scripted.at is None:
            why = f"the session never waited for {scripted.type!r} while this input was next"
            why += _broadcast_note(run.inputs, scripted.type)
        else:
            why = f"the run ended at t={run.elapsed:g}s, before it was due"
            if scripted.at <= run.elapsed:
                # Sent after what the run does at its time: the run ended then.
                why = f"the run ended at t={run.elapsed:g}s, the time it is sent at"
        lines.append(f"{scripted.describe()}: {why}")
    parts = [f"{len(unsent)} scripted input(s) never sent"] if unsent else []
    if unreceived:
        parts.append(f"{len(unreceived)} sent but never received")
    hint = "remove them from the case, or fix the pipeline so it waits for them"
    if rejected:
        parts.append(f"{rejected} rejected by the session")
        hint += "; a case that tests rejections expects the input_rejected event"
    return Failure("inputs", ", ".join(parts), "\n".join(lines) + "\n" + hint)
