"""Stage nodes: attempts, retries with backoff, per-attempt timeouts, outputs, cleanup.

Mixed into :class:`~stageflow.Session`; every stage node still runs through the
session's one choke point (``_execute``), which calls :meth:`_run_stage`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
from opentelemetry import trace

from stageflow._context import MISSING, Context
from stageflow._deadlines import after
from stageflow._errors import (
    LimitExceededError,
    NodeError,
    NodeTimeoutError,
    StageError,
    StageOutputError,
    describe_exception,
    error_matches,
)
from stageflow._guard import int_too_large
from stageflow._inputs import AttemptTimer
from stageflow._json import copy_json, find_non_json
from stageflow._log import get_logger
from stageflow._model import Limits, RetryPolicy, StageNode
from stageflow._snapshot import RetryWait
from stageflow._stages import BaseStage, StageContext, StageEntry
from stageflow._telemetry import ATTEMPT, add_event

if TYPE_CHECKING:
    from stageflow._desk import InputDesk
    from stageflow._events import History
    from stageflow._session import _Frame

__all__ = ["StageNodes"]

_log = get_logger("stageflow.session")
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_RETRY: Final = RetryPolicy()
# Immutable JSON values that need neither a check nor a copy (floats may be NaN).
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})


class StageNodes:
    """Handlers for stage nodes, mixed into the session."""

    __slots__ = ()

    session_id: str
    _entries: dict[int, StageEntry]
    _history: History
    _limits: Limits
    _tracer: trace.Tracer | None
    _random: Callable[[], float]

    _desk: InputDesk
    _stop_outcome: str

    def _stage_state(self, work: object) -> dict[str, Any]:
        """A stage node in flight as a snapshot keeps it (``work`` is the frame's)."""
        if isinstance(work, StageContext):
            calls = [*(work._calls or ()), *(work._replay or ())]
            return {"attempt": work.attempt, "calls": copy_json(calls), "retry_at": None}
        if isinstance(work, RetryWait):
            return {"attempt": work.attempt, "calls": [], "retry_at": work.at}
        return {"attempt": 1, "calls": [], "retry_at": None}

    async def _run_stage(self, node: StageNode, frame: _Frame) -> str | None:
        entry = self._entries[id(node)]
        policy = node.retry or entry.spec.retry or _NO_RETRY
        attempt = 1
        replay: list[dict[str, Any]] | None = None
        saved = frame.resume.get("stage") if frame.resume is not None else None
        if saved is not None:
            # Restored: go on with the attempt in flight, replaying its journal.
            attempt = saved["attempt"]
            replay = saved["calls"] or None
            if saved.get("retry_at"):
                frame.work = RetryWait(attempt, saved["retry_at"])
                await self._desk.pause(self._desk.seconds_until(saved["retry_at"]))
        while True:
            try:
                await self._stage_attempt(node, frame, entry, attempt, policy.attempts, replay)
                if attempt > 1 and self._tracer is not None:
                    trace.get_current_span().set_attribute(ATTEMPT, attempt)
                return node.next
            except Exception as exc:
                replay = None
                if attempt > 1 and self._tracer is not None:
                    trace.get_current_span().set_attribute(ATTEMPT, attempt)
                if (
                    attempt >= policy.attempts
                    or isinstance(exc, LimitExceededError)
                    or not error_matches(exc, policy.retry_on)
                ):
                    raise
                delay = policy.delay_before(attempt)
                if policy.jitter:
                    delay *= 1 + policy.jitter * (2 * self._random() - 1)
                # The attempt to come, before the event: a snapshot from here on
                # waits out the delay instead of running the failed attempt again.
                deadline = after(self._desk.clock(), delay)
                frame.work = RetryWait(attempt + 1, deadline.isoformat())
                self._history.record(
                    "node_retrying",
                    node.id,
                    frame.path,
                    {
                        "attempt": attempt,
                        "next_attempt": attempt + 1,
                        "delay": delay,
                        "error": describe_exception(exc),
                    },
                )
                if self._tracer is not None:
                    add_event(
                        "retry",
                        {
                            ATTEMPT: attempt,
                            "exception.type": type(exc).__name__,
                            "exception.message": str(exc),
                        },
                    )
                attempt += 1
                await self._desk.pause(delay)

    async def _stage_attempt(
        self,
        node: StageNode,
        frame: _Frame,
        entry: StageEntry,
        attempt: int,
        attempts: int,
        replay: list[dict[str, Any]] | None,
    ) -> None:
        """Run one attempt; write its outputs only if all of it succeeded."""
        get = frame.ctx.get
        arguments: dict[str, Any] = {}
        for name, path in node.arguments.items():
            value = get(path)
            if value is not MISSING:
                # A copy: a stage that mutates an argument must not change the
                # context (or a sibling branch's view of it) behind the engine.
                arguments[name] = value if type(value) in _PLAIN_SCALARS else copy_json(value)
        ctx = StageContext(
            arguments=MappingProxyType(arguments),
            config=copy_json(node.config) if node.config else _EMPTY,
            session_id=self.session_id,
            node_id=node.id,
            node_path=f"{frame.path}/{node.id}" if frame.path else node.id,
            stage=node.stage,
            attempt=attempt,
            runtime=self._desk,
            spec=entry.spec,
        )
        ctx._replay = replay
        frame.work = ctx
        stage: BaseStage | None = None
        timeout = node.timeout if node.timeout is not None else entry.spec.timeout
        outcome = "failed"
        try:
            run = entry.function
            if run is None:
                stage = entry.factory()
                run = stage.run
            if timeout is None:
                outputs = await run(ctx)
            else:
                with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                    ctx._timer = AttemptTimer(scope)
                    outputs = await run(ctx)
                if scope.cancelled_caught:
                    raise NodeTimeoutError(
                        f"stage {node.stage!r} at node {node.id!r} "
                        f"({frame.scope.pipeline.location(node.id)}) timed out after "
                        f'{timeout:g} s on attempt {attempt} of {attempts}; raise "timeout" or '
                        "make the stage faster",
                        node_id=node.id,
                        timeout=timeout,
                        attempt=attempt,
                    )
            if node.outputs:
                self._write_outputs(node, outputs, frame.ctx)
            elif outputs is not None and not isinstance(outputs, Mapping):
                raise _not_a_mapping(node, outputs)
            outcome = "succeeded"
        except anyio.get_cancelled_exc_class():
            outcome = self._stop_outcome
            raise
        except NodeError:
            raise
        except Exception as exc:
            # Anything else (a stage's own error, or a StageflowError that does not
            # name the node, such as a NonJsonValueError from ctx.emit) is wrapped
            # so the failure names its node and attempt; the original is the cause.
            raise StageError(
                f"stage {node.stage!r} at node {node.id!r} failed on attempt {attempt} of "
                f"{attempts}: {type(exc).__name__}: {exc}",
                node_id=node.id,
                stage=node.stage,
                attempt=attempt,
            ) from exc
        finally:
            if entry.has_cleanup and stage is not None:
                await self._cleanup(stage, ctx, outcome, frame)

    async def _cleanup(
        self, stage: BaseStage, ctx: StageContext, outcome: str, frame: _Frame
    ) -> None:
        """Run the stage's cleanup shielded from cancellation and bounded in time."""
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self._limits.cleanup_timeout):
                    await stage.cleanup(ctx, outcome)
            except Exception as exc:
                _log.exception(
                    "stage.cleanup_failed", session_id=self.session_id, node_id=ctx.node_id
                )
                self._history.record(
                    "cleanup_failed",
                    ctx.node_id,
                    frame.path,
                    {"outcome": outcome, "error": describe_exception(exc)},
                )

    def _write_outputs(self, node: StageNode, outputs: object, ctx: Context) -> None:
        if type(outputs) is not dict and not isinstance(outputs, Mapping):
            raise _not_a_mapping(node, outputs)
        writes: list[tuple[str, Any]] = []
        for key, path in node.outputs.items():
            if key not in outputs:
                returned = ", ".join(repr(k) for k in outputs) or "nothing"
                raise StageOutputError(
                    f"stage {node.stage!r} at node {node.id!r} returned no output {key!r} "
                    f"(it returned {returned}); return it, or remove it from the node's "
                    "'outputs'",
                    node_id=node.id,
                )
            value = outputs[key]
            if type(value) in _PLAIN_SCALARS and not (type(value) is int and int_too_large(value)):
                writes.append((path, value))
                continue
            bad = find_non_json(value, key)
            if bad is not None:
                raise StageOutputError(
                    f"stage {node.stage!r} at node {node.id!r}: output {bad.location!r} is a "
                    f"{type(bad.value).__name__}, which is not a JSON value ({bad.reason}); "
                    "return only dict, list, str, int, finite float, bool or None",
                    node_id=node.id,
                )
            writes.append((path, copy_json(value)))
        # All outputs were checked: write them all (a failed attempt writes nothing).
        for path, value in writes:
            ctx.set(path, value)


def _not_a_mapping(node: StageNode, outputs: object) -> StageOutputError:
    return StageOutputError(
        f"stage {node.stage!r} at node {node.id!r} returned a {type(outputs).__name__}; "
        "a stage returns a dict of outputs (or None)",
        node_id=node.id,
    )
