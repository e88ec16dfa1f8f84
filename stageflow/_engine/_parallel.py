"""Parallel nodes: branches in a task group, ``all`` / ``any``, and the join.

The executor of ``parallel`` nodes. Each branch is a child position
(``Kernel.run_child``) that runs its nodes through the run's choke point on
its own copy-on-write fork of the context; the join merges the forks in
``children`` order.

Hot path: "parallel branch, per branch" benchmark rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import anyio
import anyio.lowlevel

from stageflow._engine._frames import (
    BRANCH,
    Frame,
    Kernel,
    ParallelRun,
    node_timed_out,
    release,
)
from stageflow._engine._positions import (
    BranchPosition,
    ParallelPosition,
    apply_writes,
    error_state,
    restore_error,
    writes_of,
)
from stageflow._errors import LimitExceededError, ParallelRunError
from stageflow._merge import merge_branches
from stageflow._model import ParallelNode, ParallelPolicy
from stageflow._telemetry import BRANCH as BRANCH_ATTRIBUTE
from stageflow._telemetry import NODE_ID

__all__ = ["ParallelExecutor"]

# Each worker task's name, given so that spawning one does not format the
# function's qualified name (trio and anyio both do when none is given;
# "parallel branch" row: one worker per branch without a concurrency).
_WORKER: Final = "stageflow parallel worker"


class ParallelExecutor:
    """Runs parallel nodes; saves and restores their branches.

    It holds no state: one instance serves every run, which passes itself as
    ``kernel`` (a paused session keeps no executor of its own).
    """

    __slots__ = ()

    async def run(self, kernel: Kernel, node: ParallelNode, frame: Frame) -> str | None:
        """Run the branches (or go on with restored ones), join them; return the next node."""
        limits = kernel.limits
        if frame.depth >= limits.max_depth:
            raise LimitExceededError(limit="max_depth", value=limits.max_depth, node_id=node.id)
        # The branches' common path prefix and this node's visit key, made
        # once for every branch ("parallel branch" row).
        prefix = f"{frame.path}/{node.id}" if frame.path else node.id
        visit = frame.visit_key()
        fork, depth, scope = frame.ctx.fork, frame.depth + 1, frame.scope
        frames = [
            Frame(fork(), f"{prefix}/{child}", depth, scope, frame, visit, True)
            for child in node.children
        ]
        run = ParallelRun(node, frames, prefix)
        outcomes, winner = run.outcomes, run.winner
        frame.work = run
        saved = frame.resume.get("parallel") if frame.resume is not None else None
        todo = self._restore(kernel, run, saved) if saved is not None else range(len(frames))
        try:
            with anyio.CancelScope() as deadline:
                if node.timeout is not None:
                    deadline.deadline = anyio.current_time() + node.timeout
                # A pool of workers pulls branch indexes in ``children`` order (one
                # per branch without a concurrency); each worker is a position of
                # its own while this frame waits for them.
                workers = min(len(todo), node.concurrency or len(todo))
                pending = iter(todo)
                kernel.positions(workers - 1)
                try:
                    async with kernel.backend.open_task_group() as tg:
                        for _ in range(workers):
                            tg.start_soon(
                                self._worker, kernel, run, pending, tg.cancel_scope, name=_WORKER
                            )
                finally:
                    kernel.positions(1)
            if frame.scope.terminal is not None:
                # A terminal in a branch ended this pipeline. If every branch had
                # finished by then, trio does not deliver the pending cancellation at
                # the task group's exit: take it here, before anything is merged.
                await anyio.lowlevel.checkpoint()
            if deadline.cancelled_caught:
                raise node_timed_out(
                    frame,
                    node,
                    '; its branches were cancelled. Raise "timeout" or make the branches faster',
                )
            errors = [o.error for o in outcomes if o.error is not None]
            for error in errors:
                if isinstance(error, LimitExceededError):
                    raise error  # a session limit, not a branch's failure
            if node.policy is ParallelPolicy.ANY:
                if not winner:
                    raise _branch_failure(node, errors)
                chosen = [(node.children[winner[0]], frames[winner[0]].ctx)]
                # The losers, torn down mid-node, are saved as cancelled (see
                # save), and those that failed are over: their records, in a
                # cycle with their frames, go now.
                for loser, outcome in zip(frames, outcomes, strict=True):
                    if outcome.cancelled or outcome.error is not None:
                        release(loser)
            else:
                if errors:
                    raise _branch_failure(node, errors)
                chosen = [(child, f.ctx) for child, f in zip(node.children, frames, strict=True)]
            merge_branches(
                node.id,
                node.merge,
                frame.scope.pipeline.reducers,
                frame.ctx,
                chosen,
                contribution=frame.contributes,
            )
            return node.next
        finally:
            # However it ends (joined, failed, timed out, won, torn down), the
            # failures of its branches were each reported where raised: they leave
            # the engine's frames out of their tracebacks (see Kernel.let_go).
            kernel.let_go(o.error for o in outcomes if o.error is not None)

    async def _worker(
        self,
        kernel: Kernel,
        run: ParallelRun,
        pending: Iterator[int],
        scope: anyio.CancelScope,
    ) -> None:
        node = run.node
        try:
            for index in pending:
                # Once decided (a winner, a failure that cancels the rest), a
                # branch still to start starts and is cancelled at its first
                # node, as one started a moment earlier would be. Its
                # run_child is awaited here, not in a coroutine of its own
                # per branch ("parallel branch" row).
                child = node.children[index]
                succeeded = await kernel.run_child(
                    BRANCH,
                    node.id,
                    run.frames[index],
                    child,
                    node.next,
                    {"branch": child},
                    # Made only for a span ("parallel branch" row).
                    None
                    if kernel.tracing is None
                    else (f"branch {node.id}/{child}", {BRANCH_ATTRIBUTE: child, NODE_ID: node.id}),
                    self._settle(kernel, run, index, scope),
                )
                if not succeeded and (
                    (node.policy is ParallelPolicy.ALL and node.cancel_on_error)
                    or isinstance(run.outcomes[index].error, LimitExceededError)
                ):
                    kernel.cancelling(run.prefix, "sibling_failed")
                    scope.cancel()
        finally:
            kernel.positions(-1, scope.cancel_called)

    @staticmethod
    def _settle(
        kernel: Kernel, run: ParallelRun, index: int, scope: anyio.CancelScope
    ) -> Callable[[Exception | None, bool], None]:
        """What ``run_child`` calls as branch ``index`` ends (see ``Kernel.run_child``)."""
        outcome = run.outcomes[index]
        winner = run.winner
        race = run.node.policy is ParallelPolicy.ANY

        def settle(error: Exception | None, cancelled: bool) -> None:
            outcome.cancelled = cancelled
            outcome.error = error
            if error is None and not cancelled:
                outcome.finished = True
                if race and not winner:
                    winner.append(index)  # before the event: a snapshot taken there keeps it
                    kernel.cancelling(run.prefix, "lost_race")
                    scope.cancel()

        return settle

    def save(self, kernel: Kernel, run: ParallelRun) -> ParallelPosition:
        """A parallel node in flight as a snapshot keeps it: every branch's state."""
        branches: list[BranchPosition] = []
        decided = _decided(run)
        for child, frame, outcome in zip(run.node.children, run.frames, run.outcomes, strict=True):
            if outcome.finished:
                branches.append(
                    {"child": child, "state": "finished", "writes": writes_of(frame.ctx)}
                )
            elif outcome.error is not None:
                branches.append(
                    {"child": child, "state": "failed", "error": error_state(outcome.error)}
                )
            elif outcome.cancelled and decided:
                branches.append({"child": child, "state": "cancelled"})
            else:
                # Running; or cancelled before the join was decided, by a
                # timeout (this node's or an enclosing one's) that a restored
                # run starts again: kept where it was, to run on from there.
                position = kernel.frame_state(frame, child, False)
                branches.append({"child": child, "state": "running", "position": position})
        return {"branches": branches, "winner": run.winner[0] if run.winner else None}

    def _restore(self, kernel: Kernel, run: ParallelRun, saved: ParallelPosition) -> list[int]:
        """Set branches up as the snapshot left them; return those to run (again)."""
        node = run.node
        by_child = {branch["child"]: branch for branch in saved["branches"]}
        todo: list[int] = []
        for i, child in enumerate(node.children):
            branch = by_child.get(child)
            frame, outcome = run.frames[i], run.outcomes[i]
            if branch is None:
                todo.append(i)  # a branch the pipeline gained since
                continue
            state = branch["state"]
            if state == "finished":
                apply_writes(frame.ctx, branch["writes"])
                outcome.finished = True
            elif state == "failed":
                outcome.error = restore_error(branch["error"])
            elif state == "cancelled":
                # Run again from its start unless the join had been decided
                # (below). A snapshot of an earlier release kept a branch
                # cancelled by a timeout so (see ``save``).
                outcome.cancelled = True
                todo.append(i)
            else:
                apply_writes(frame.ctx, branch["position"]["writes"])
                frame.resume = branch["position"]
                todo.append(i)
        if saved["winner"] is not None:
            # An index in the saved branches, which are in the children order
            # of the pipeline the snapshot was taken with: found by its child.
            won = saved["branches"][saved["winner"]]["child"]
            run.winner.append(node.children.index(won))
        if not _decided(run):
            for i in todo:
                run.outcomes[i].cancelled = False
            return todo
        # The join had been decided (a winner, or a failure that cancels the
        # rest): the branches still running are not run again.
        for i in todo:
            resume = run.frames[i].resume
            if resume is not None:
                kernel.not_rerun(resume)
        return []


def _decided(run: ParallelRun) -> bool:
    """Whether the join was decided: an ``any`` winner, or a failure that cancels the rest."""
    return bool(run.winner) or (
        run.node.policy is ParallelPolicy.ALL
        and run.node.cancel_on_error
        and any(o.error is not None for o in run.outcomes)
    )


def _branch_failure(node: ParallelNode, errors: list[Exception]) -> Exception:
    if len(errors) == 1:
        return errors[0]
    return ParallelRunError(
        f"parallel node {node.id!r}: {len(errors)} branches failed", errors, node_id=node.id
    )
