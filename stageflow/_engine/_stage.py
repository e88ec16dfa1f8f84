"""Stage nodes: attempts, retries with backoff, per-attempt timeouts, outputs, cleanup.

The executor of ``stage`` nodes. Like every executor it is called by the
run's one choke point (``Run.execute``), which opens the node's span and
records its events; this module records only what is its own (retries,
cleanup failures).

Hot path: one call of :meth:`StageExecutor.run` per stage node ("sequential
stage node, per node" benchmark row).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import anyio
import anyio.lowlevel

from stageflow._context import MISSING, Context
from stageflow._deadlines import after
from stageflow._engine._backend import (
    deciding_leaf,
    is_cancellation,
    is_stray_cancellation,
    requested_task,
    stage_failure,
    take_stray_request,
    to_its_end,
)
from stageflow._engine._contracts import check_contract
from stageflow._engine._frames import Frame, Kernel, RetryWait, Work
from stageflow._engine._inputs import AttemptTimer
from stageflow._engine._positions import StagePosition
from stageflow._engine._runtime import StageWork, stage_work
from stageflow._errors import (
    ContextPathError,
    LimitExceededError,
    NodeError,
    NodeTimeoutError,
    StageError,
    StageOutputError,
    describe_exception,
    error_matches,
    error_text,
    shown,
)
from stageflow._graph import listing
from stageflow._guard import SAFE_INT_BITS, int_too_large
from stageflow._json import MAX_DEPTH, a_json_type, copy_json, find_non_json
from stageflow._log import get_logger
from stageflow._model import RetryPolicy, StageNode
from stageflow._stages import EMPTY_CONFIG, BaseStage, StageContext, StageEntry
from stageflow._telemetry import ATTEMPT, NODE_ID, PIPELINE_NAME

__all__ = ["EMPTY_MAPPING", "PLAIN_SCALARS", "StageExecutor"]

_log = get_logger("stageflow.session")
_EMPTY: Final[Mapping[str, Any]] = EMPTY_CONFIG
_NO_RETRY: Final = RetryPolicy()
# Immutable JSON values that need neither a check nor a copy (floats may be NaN).
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})
# For the tight path (``Run.run_path``), which does what context() does for simple nodes.
EMPTY_MAPPING: Final = _EMPTY
PLAIN_SCALARS: Final = _PLAIN_SCALARS


class StageExecutor:
    """Runs stage nodes; saves and restores a stage in flight.

    It holds no state: one instance serves every run, which passes itself as
    ``kernel`` (a paused session keeps no executor of its own: "paused
    session, memory each" benchmark row).
    """

    __slots__ = ()

    @staticmethod
    def save(work: Work) -> StagePosition:
        """A stage node in flight as a snapshot keeps it (``work`` is the frame's)."""
        if isinstance(work, StageWork):
            attempt, calls = work.saved()
            return {"attempt": attempt, "calls": copy_json(calls), "retry_at": None}
        if isinstance(work, RetryWait):
            return {"attempt": work.attempt, "calls": [], "retry_at": work.at}
        return {"attempt": 1, "calls": [], "retry_at": None}

    async def run(self, kernel: Kernel, node: StageNode, frame: Frame) -> str | None:
        """Run the node's attempts (or go on with a restored one); return the next node."""
        entry = kernel.entries[id(node)]
        policy = node.retry or entry.spec.retry or _NO_RETRY
        attempt = 1
        replay = None
        saved = frame.resume.get("stage") if frame.resume is not None else None
        if saved is not None:
            # Restored: go on with the attempt in flight, replaying its journal.
            attempt = saved["attempt"]
            replay = saved["calls"] or None
            retry_at = saved["retry_at"]
            if retry_at:
                frame.work = RetryWait(attempt, retry_at)
                await kernel.runtime.pause(kernel.runtime.seconds_until(retry_at))
        while True:
            # One attempt, written out here rather than in a coroutine of its
            # own: one coroutine level less per stage node and per waiting
            # session ("sequential stage node" and "paused session" rows).
            stage: BaseStage | None = None
            outcome = "failed"
            try:
                ctx = self.context(kernel, node, frame, entry, attempt, replay)
                try:
                    run = entry.function
                    if run is None:
                        stage = entry.factory()
                        run = stage.run
                    timeout = node.timeout if node.timeout is not None else entry.spec.timeout
                    if timeout is None:
                        outputs = await run(ctx)
                    else:
                        outputs = await self._timed(node, frame, run, ctx, timeout, attempt, policy)
                    if kernel.host is not None:
                        # A stage's own Task.cancel() of a branch's or an
                        # item's task fails this node (as in Run.run_path).
                        task = requested_task(kernel.host)
                        if task is not None:
                            await take_stray_request(task)
                    self.outputs(kernel, node, frame, entry, outputs)
                    outcome = "succeeded"
                except NodeError as exc:
                    if exc.node_id != node.id:
                        # Another node's error (a session the stage ran itself):
                        # this node's failure, as any other exception.
                        raise self.failure(node, attempt, policy.attempts, exc) from exc
                    raise
                except Exception as exc:
                    # Anything else (a stage's own error, or a StageflowError that
                    # does not name the node, such as a NonJsonValueError from
                    # ctx.emit) is wrapped so the failure names its node and
                    # attempt; the original is the cause.
                    raise self.failure(node, attempt, policy.attempts, exc) from exc
                except BaseException as exc:  # looked at and re-raised: a cancellation
                    failed = stage_failure(exc, kernel.backend, kernel.host)
                    if failed is not None:
                        raise self.failure(node, attempt, policy.attempts, failed) from failed
                    if is_cancellation(exc, kernel.backend.cancelled):
                        outcome = kernel.stop_outcome
                    elif isinstance(
                        deciding_leaf(exc, kernel.backend.cancelled), KeyboardInterrupt | SystemExit
                    ):
                        outcome = "cancelled"  # as the session ends (Ctrl-C, sys.exit())
                    raise
                finally:
                    if entry.has_cleanup and stage is not None:
                        await self._cleanup(kernel, stage, ctx, outcome, frame)
            except Exception as exc:
                replay = None
                delay = self._retry_delay(kernel, node, frame, policy, attempt, exc)
                if delay is None:
                    raise
                attempt += 1
                await kernel.runtime.pause(delay)
                continue
            if attempt > 1 and kernel.tracing is not None:
                kernel.tracing.set_attribute(ATTEMPT, attempt)
            return node.next

    @staticmethod
    def simple(node: StageNode, entry: StageEntry) -> bool:
        """Whether ``node`` runs one attempt with no timeout and no cleanup (the tight path's)."""
        policy = node.retry or entry.spec.retry or _NO_RETRY
        timeout = node.timeout if node.timeout is not None else entry.spec.timeout
        return policy.attempts == 1 and timeout is None and not entry.has_cleanup

    @staticmethod
    def failure(node: StageNode, attempt: int, attempts: int, exc: BaseException) -> StageError:
        """The error that names the node and attempt of a stage's own failure ``exc``.

        ``exc`` is an ``Exception``, or a ``CancelledError`` the stage raised
        though nothing cancelled it (:func:`is_stray_cancellation`).
        """
        what = (
            f"{type(exc).__name__}: {error_text(exc)}"
            if isinstance(exc, Exception)
            else f"it raised {type(exc).__name__} though nothing of the run cancelled it (a "
            "future or task of its own was cancelled, or it called cancel() on the task it runs "
            "in); catch it in the stage, or retry the node"
        )
        return StageError(
            f"stage {node.stage!r} at node {node.id!r} failed on attempt "
            f"{attempt} of {attempts}: {what}",
            node_id=node.id,
            stage=node.stage,
            attempt=attempt,
        )

    @staticmethod
    def _retry_delay(
        kernel: Kernel,
        node: StageNode,
        frame: Frame,
        policy: RetryPolicy,
        attempt: int,
        exc: Exception,
    ) -> float | None:
        """After a failed attempt: the delay before the next one, or ``None`` to give up."""
        if attempt > 1 and kernel.tracing is not None:
            kernel.tracing.set_attribute(ATTEMPT, attempt)
        if (
            attempt >= policy.attempts
            or isinstance(exc, LimitExceededError)
            or not error_matches(exc, policy.retry_on)
        ):
            return None
        # Retries are events too: they stop at the history limit.
        kernel.runtime.check_history(node.id)
        delay = policy.delay_before(attempt)
        if policy.jitter:
            delay *= 1 + policy.jitter * (2 * kernel.random() - 1)
        # The attempt to come, before the event: a snapshot from here on
        # waits out the delay instead of running the failed attempt again.
        deadline = after(kernel.runtime.clock(), delay)
        frame.work = RetryWait(attempt + 1, deadline.isoformat())
        kernel.history.record(
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
        if kernel.metrics is not None:
            kernel.metrics.retries.add(
                1, {PIPELINE_NAME: frame.scope.pipeline.name, NODE_ID: node.id}
            )
        if kernel.tracing is not None:
            kernel.tracing.add_event(
                "retry",
                {
                    ATTEMPT: attempt,
                    "exception.type": type(exc).__name__,
                    "exception.message": error_text(exc),
                },
            )
        return delay

    @staticmethod
    def context(
        kernel: Kernel,
        node: StageNode,
        frame: Frame,
        entry: StageEntry,
        attempt: int,
        replay: Any,
        pairs: tuple[tuple[str, str], ...] | None = None,
    ) -> StageWork:
        """An attempt's arguments, checked, and its fresh context (``frame.work`` is it).

        ``pairs`` is ``tuple(node.arguments.items())`` when the caller has it
        made once per node (the tight path's plan: iterating a tuple is
        cheaper than a read-only mapping's items, "sequential stage node" row).
        """
        context = frame.ctx
        arguments: dict[str, Any] = {}
        for name, path in node.arguments.items() if pairs is None else pairs:
            value = context.get(path)
            if value is not MISSING:
                # A copy: a stage that mutates an argument must not change the
                # context (or a sibling branch's view of it) behind the engine.
                arguments[name] = value if type(value) in _PLAIN_SCALARS else copy_json(value)
        spec = entry.spec
        if spec.arguments is not None:
            check_contract(
                kernel.mode, kernel.history, "argument", node, frame.path, spec.arguments, arguments
            )
        work = frame.work = stage_work(
            kernel.runtime,
            node,
            frame,
            # No arguments: the shared empty view ("paused session" rows).
            MappingProxyType(arguments) if arguments else _EMPTY,
            kernel.session_id,
            spec,
            copy_json(node.config) if node.config else _EMPTY,
            attempt,
            replay,
        )
        return work

    @staticmethod
    async def _timed(
        node: StageNode,
        frame: Frame,
        run: Any,
        ctx: StageWork,
        timeout: float,
        attempt: int,
        policy: RetryPolicy,
    ) -> Any:
        """Await the stage within its per-attempt timeout (the timer stops while it waits)."""
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            ctx.timed(AttemptTimer(scope))
            outputs = await run(ctx)
        if scope.cancelled_caught:
            raise NodeTimeoutError(
                f"stage {node.stage!r} at node {node.id!r} "
                f"({frame.scope.pipeline.location(node.id)}) timed out after "
                f'{timeout:g} s on attempt {attempt} of {policy.attempts}; raise "timeout" or '
                "make the stage faster",
                node_id=node.id,
                timeout=timeout,
                attempt=attempt,
            )
        return outputs

    @staticmethod
    def outputs(
        kernel: Kernel, node: StageNode, frame: Frame, entry: StageEntry, outputs: object
    ) -> None:
        """Check an attempt's outputs and write them (all of them, or none)."""
        spec = entry.spec
        if spec.outputs is not None:
            # None is no outputs at all: the outputs a schema requires are missing.
            check_contract(
                kernel.mode,
                kernel.history,
                "output",
                node,
                frame.path,
                spec.outputs,
                _EMPTY if outputs is None else outputs,
            )
        if node.outputs:
            if type(outputs) is dict:
                # The usual case first ("sequential stage node" benchmark row):
                # a dict whose outputs are all str, small int, bool or None
                # needs no check and no copy, and is written as returned. Any
                # other value (or a missing key: the sentinel is no scalar)
                # goes through _write_outputs, which checks everything anew.
                for key in node.outputs:
                    value = outputs.get(key, _EMPTY)
                    kind = type(value)
                    if not (
                        kind is str
                        or (kind is int and value.bit_length() < SAFE_INT_BITS)
                        or value is None
                        or kind is bool
                    ):
                        StageExecutor._write_outputs(node, outputs, frame.ctx)
                        return
                context = frame.ctx
                mapped = node.outputs
                try:
                    if len(mapped) == 1:
                        for key, path in mapped.items():
                            context.set(path, outputs[key])
                    else:  # a later path may cross a scalar: all of them or none
                        context.set_all([(path, outputs[key]) for key, path in mapped.items()])
                except ContextPathError as exc:
                    raise _unwritable(node, exc) from exc
                return
            StageExecutor._write_outputs(node, outputs, frame.ctx)
        elif outputs is not None and not isinstance(outputs, Mapping):
            raise _not_a_mapping(node, outputs)

    async def _cleanup(
        self, kernel: Kernel, stage: BaseStage, ctx: StageContext, outcome: str, frame: Frame
    ) -> None:
        """Run the stage's cleanup shielded from cancellation and bounded in time."""
        with anyio.CancelScope(shield=True):
            await to_its_end(
                kernel.backend, StageExecutor._bounded_cleanup, kernel, stage, ctx, outcome, frame
            )

    @staticmethod
    async def _bounded_cleanup(
        kernel: Kernel, stage: BaseStage, ctx: StageContext, outcome: str, frame: Frame
    ) -> None:
        """The stage's cleanup, stopped after ``limits.cleanup_timeout``; a failure is recorded."""
        try:
            timeout = kernel.limits.cleanup_timeout
            with anyio.move_on_after(timeout) as bound:
                await stage.cleanup(ctx, outcome)
            if bound.cancelled_caught:
                raise TimeoutError(
                    f"cleanup() of stage {ctx.stage!r} at node {ctx.node_id!r} took longer "
                    f"than limits.cleanup_timeout ({timeout:g} s) and was stopped; make it "
                    "faster, or raise the limit"
                )
        except BaseException as exc:  # looked at: all but a stage's own CancelledError re-raised
            if not isinstance(exc, Exception) and not is_stray_cancellation(exc, kernel.backend):
                raise
            _log.exception("stage.cleanup_failed", session_id=ctx.session_id, node_id=ctx.node_id)
            kernel.history.record(
                "cleanup_failed",
                ctx.node_id,
                frame.path,
                {"outcome": outcome, "error": describe_exception(exc)},
            )

    @staticmethod
    def _write_outputs(node: StageNode, outputs: object, ctx: Context) -> None:
        if type(outputs) is not dict and not isinstance(outputs, Mapping):
            raise _not_a_mapping(node, outputs)
        writes: list[tuple[str, Any]] = []
        for key, path in node.outputs.items():
            if key not in outputs:
                # Twenty keys and a count, each cut: a stage may return any dict.
                returned = listing((shown(k) for k in outputs), "nothing")
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
            # The value nests as deep below its path as in the context: the
            # levels above it count, or a snapshot holds a context too deep to restore.
            room = MAX_DEPTH - path.count(".") - 1
            bad = find_non_json(value, key, room)
            if bad is not None:
                if find_non_json(value, key) is None:
                    raise StageOutputError(
                        f"stage {node.stage!r} at node {node.id!r}: output {key!r} cannot be "
                        f"written at {path!r}: {bad.location!r} would nest the context more "
                        f"than {MAX_DEPTH} levels deep, more than a snapshot holds; write it "
                        "at a shorter path, or return a flatter value",
                        node_id=node.id,
                    )
                raise StageOutputError(
                    f"stage {node.stage!r} at node {node.id!r}: output {bad.location!r} is "
                    f"{a_json_type(bad.value)}, which is not a JSON value ({bad.reason}); "
                    "return only dict, list, str, int, finite float, bool or None",
                    node_id=node.id,
                )
            writes.append((path, copy_json(value)))
        # All outputs were checked: write them all (a failed attempt writes nothing).
        try:
            ctx.set_all(writes)
        except ContextPathError as exc:
            raise _unwritable(node, exc) from exc


def _unwritable(node: StageNode, exc: ContextPathError) -> StageOutputError:
    """An output whose path cannot hold it (it crosses a scalar, say): nothing was written."""
    key = next((k for k, path in node.outputs.items() if path == exc.path), None)
    return StageOutputError(
        f"stage {node.stage!r} at node {node.id!r}: output {key!r} cannot be written: {exc} "
        "(none of the node's outputs was written)",
        node_id=node.id,
    )


def _not_a_mapping(node: StageNode, outputs: object) -> StageOutputError:
    if outputs is None:  # None is fine only for a node that maps no outputs
        mapped = ", ".join(repr(key) for key in node.outputs)
        return StageOutputError(
            f"stage {node.stage!r} at node {node.id!r} returned None, but the node maps "
            f"its outputs {mapped}; return a dict with them, or remove them from the "
            "node's 'outputs'",
            node_id=node.id,
        )
    return StageOutputError(
        f"stage {node.stage!r} at node {node.id!r} returned {a_json_type(outputs)}; "
        "a stage returns a dict of outputs (or None)",
        node_id=node.id,
    )
