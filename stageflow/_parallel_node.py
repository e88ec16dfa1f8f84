"""Parallel nodes: branches in a task group, ``all`` / ``any``, and the join.

Mixed into :class:`~stageflow.Session`. Each branch runs its nodes through the
session's choke point on its own copy-on-write fork of the context; the join
merges the forks in ``children`` order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from opentelemetry import trace

from stageflow._errors import (
    LimitExceededError,
    NodeTimeoutError,
    ParallelRunError,
    describe_exception,
)
from stageflow._merge import merge_branches
from stageflow._model import Limits, ParallelNode, ParallelPolicy
from stageflow._snapshot import apply_writes, error_state, restore_error, writes_of
from stageflow._telemetry import BRANCH, NODE_ID, ActiveSpan, enter_span, exit_span

if TYPE_CHECKING:
    from collections.abc import Callable

    from stageflow._events import History
    from stageflow._session import _Frame

__all__ = ["ParallelNodes"]


class _BranchOutcome:
    __slots__ = ("cancelled", "error", "finished")

    def __init__(self) -> None:
        self.finished = False
        self.cancelled = False
        self.error: Exception | None = None


class _ParallelRun:
    """One parallel node execution: its branch frames, outcomes and the ``any`` winner."""

    __slots__ = ("frames", "node", "outcomes", "winner")

    def __init__(self, node: ParallelNode, frames: list[_Frame]) -> None:
        self.node = node
        self.frames = frames
        self.outcomes = [_BranchOutcome() for _ in frames]
        self.winner: list[int] = []


class ParallelNodes:
    """Handlers for parallel nodes, mixed into the session."""

    __slots__ = ()

    _history: History
    _limits: Limits
    _tracer: trace.Tracer | None
    _open_task_group: Callable[[], Any]
    _frame_type: type[_Frame]
    _run_path: Callable[[str | None, _Frame, str | None], Any]
    _frame_state: Callable[[_Frame, str, bool], dict[str, Any]]
    _positions: Callable[[int], None]
    _not_rerun: Callable[[dict[str, Any]], None]

    async def _run_parallel(self, node: ParallelNode, frame: _Frame) -> str | None:
        if frame.depth >= self._limits.max_depth:
            raise LimitExceededError(
                limit="max_depth", value=self._limits.max_depth, node_id=node.id
            )
        frames = [
            self._frame_type(
                frame.ctx.fork(),
                f"{frame.path}/{node.id}/{child}" if frame.path else f"{node.id}/{child}",
                frame.depth + 1,
                frame.scope,
            )
            for child in node.children
        ]
        run = _ParallelRun(node, frames)
        outcomes, winner = run.outcomes, run.winner
        frame.work = run
        saved = frame.resume.get("parallel") if frame.resume is not None else None
        todo = self._restore_branches(run, saved) if saved is not None else range(len(frames))
        with anyio.CancelScope() as deadline:
            if node.timeout is not None:
                deadline.deadline = anyio.current_time() + node.timeout
            # Each branch is a position of its own while this frame waits for them.
            self._positions(len(todo) - 1)
            try:
                async with self._open_task_group() as tg:
                    for i in todo:
                        tg.start_soon(
                            self._run_branch,
                            node,
                            i,
                            node.children[i],
                            frames[i],
                            outcomes[i],
                            winner,
                            tg.cancel_scope,
                        )
            finally:
                self._positions(1)
        if frame.scope.terminal is not None:
            # A terminal in a branch ended this pipeline. If every branch had
            # finished by then, trio does not deliver the pending cancellation at
            # the task group's exit: take it here, before anything is merged.
            await anyio.lowlevel.checkpoint()
        if deadline.cancelled_caught:
            raise NodeTimeoutError(
                f"parallel node {node.id!r} ({frame.scope.pipeline.location(node.id)}) timed "
                f'out after {node.timeout:g} s; its branches were cancelled. Raise "timeout" or '
                "make the branches faster",
                node_id=node.id,
                timeout=float(node.timeout or 0),
                attempt=1,
            )
        errors = [o.error for o in outcomes if o.error is not None]
        if node.policy is ParallelPolicy.ANY:
            if not winner:
                raise _branch_failure(node, errors)
            chosen = [(node.children[winner[0]], frames[winner[0]].ctx)]
        else:
            if errors:
                raise _branch_failure(node, errors)
            chosen = [(child, f.ctx) for child, f in zip(node.children, frames, strict=True)]
        merge_branches(node.id, node.merge, frame.scope.pipeline.reducers, frame.ctx, chosen)
        return node.next

    async def _run_branch(
        self,
        node: ParallelNode,
        index: int,
        child: str,
        frame: _Frame,
        outcome: _BranchOutcome,
        winner: list[int],
        scope: anyio.CancelScope,
    ) -> None:
        span: ActiveSpan | None = None
        if self._tracer is not None:
            span = enter_span(
                self._tracer, f"branch {node.id}/{child}", {BRANCH: child, NODE_ID: node.id}
            )
        record = self._history.record
        payload = {"branch": child}
        span_outcome = "cancelled"
        try:
            record("branch_started", node.id, frame.path, payload)
            try:
                await self._run_path(child, frame, node.next)
            except anyio.get_cancelled_exc_class():
                outcome.cancelled = True
                record("branch_cancelled", node.id, frame.path, payload)
                raise
            except Exception as exc:
                outcome.error = exc
                span_outcome = "failed"
                record(
                    "branch_failed",
                    node.id,
                    frame.path,
                    {**payload, "error": describe_exception(exc)},
                )
                if node.policy is ParallelPolicy.ALL and node.cancel_on_error:
                    scope.cancel()
                return
            outcome.finished = True
            span_outcome = "succeeded"
            if node.policy is ParallelPolicy.ANY and not winner:
                winner.append(index)  # before the event: a snapshot taken there keeps it
                scope.cancel()
            record("branch_finished", node.id, frame.path, payload)
        finally:
            if span is not None:
                exit_span(span, span_outcome, outcome.error)
            self._positions(-1)

    def _parallel_state(self, run: _ParallelRun) -> dict[str, Any]:
        """A parallel node in flight as a snapshot keeps it: every branch's state."""
        branches: list[dict[str, Any]] = []
        for child, frame, outcome in zip(run.node.children, run.frames, run.outcomes, strict=True):
            if outcome.finished:
                branches.append(
                    {"child": child, "state": "finished", "writes": writes_of(frame.ctx)}
                )
            elif outcome.error is not None:
                branches.append(
                    {"child": child, "state": "failed", "error": error_state(outcome.error)}
                )
            elif outcome.cancelled:
                branches.append({"child": child, "state": "cancelled"})
            else:
                position = self._frame_state(frame, child, False)
                branches.append({"child": child, "state": "running", "position": position})
        return {"branches": branches, "winner": run.winner[0] if run.winner else None}

    def _restore_branches(self, run: _ParallelRun, saved: dict[str, Any]) -> list[int]:
        """Set branches up as the snapshot left them; return those to run (again)."""
        node = run.node
        by_child = {branch["child"]: branch for branch in saved["branches"]}
        todo: list[int] = []
        for i, child in enumerate(node.children):
            branch = by_child.get(child)
            frame, outcome = run.frames[i], run.outcomes[i]
            state = branch["state"] if branch is not None else "running"
            if branch is None:
                todo.append(i)  # a branch the pipeline gained since
            elif state == "finished":
                apply_writes(frame.ctx, branch["writes"])
                outcome.finished = True
            elif state == "failed":
                outcome.error = restore_error(branch["error"])
            elif state == "cancelled":
                outcome.cancelled = True
            else:
                apply_writes(frame.ctx, branch["position"]["writes"])
                frame.resume = branch["position"]
                todo.append(i)
        if saved["winner"] is not None:
            run.winner.append(saved["winner"])
        stopped = bool(run.winner) or (
            node.policy is ParallelPolicy.ALL
            and node.cancel_on_error
            and any(o.error is not None for o in run.outcomes)
        )
        if not stopped:
            return todo
        # The join had been decided (a winner, or a failure that cancels the
        # rest): the branches still running are not run again.
        for i in todo:
            resume = run.frames[i].resume
            if resume is not None:
                self._not_rerun(resume)
        return []


def _branch_failure(node: ParallelNode, errors: list[Exception]) -> Exception:
    if len(errors) == 1:
        return errors[0]
    return ParallelRunError(
        f"parallel node {node.id!r}: {len(errors)} branches failed", errors, node_id=node.id
    )
