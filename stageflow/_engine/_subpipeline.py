"""Subpipeline nodes: a nested pipeline run as one node, in the same session.

The executor of ``subpipeline`` nodes. The called pipeline runs in a scope
of its own (its terminal ends it, not the session) on a fresh context built
from the node's ``inputs``; its nodes go through the run's choke point, so
inputs, cancellation, limits, events and spans reach inside.
"""

from __future__ import annotations

from typing import Any

import anyio

from stageflow._context import MISSING, Context
from stageflow._engine._frames import (
    Frame,
    Kernel,
    Scope,
    SubpipelineRun,
    node_timed_out,
    release,
)
from stageflow._engine._positions import SubpipelinePosition
from stageflow._errors import (
    ContextPathError,
    LimitExceededError,
    SubpipelineError,
)
from stageflow._json import copy_json
from stageflow._model import SubpipelineNode

__all__ = ["SubpipelineExecutor", "check_depth"]


def check_depth(kernel: Kernel, node_id: str, frame: Frame) -> None:
    """Refuse to nest a frame deeper than ``limits.max_depth``."""
    if frame.depth >= kernel.limits.max_depth:
        raise LimitExceededError(limit="max_depth", value=kernel.limits.max_depth, node_id=node_id)


class SubpipelineExecutor:
    """Runs subpipeline nodes; saves and restores the call in flight.

    It holds no state: one instance serves every run, which passes itself as
    ``kernel`` (a paused session keeps no executor of its own).
    """

    __slots__ = ()

    async def run(self, kernel: Kernel, node: SubpipelineNode, frame: Frame) -> str | None:
        """Run the called pipeline to its terminal; map its result back; return the next node."""
        check_depth(kernel, node.id, frame)
        target = frame.scope.pipeline.callee(node.id)
        saved = frame.resume.get("subpipeline") if frame.resume is not None else None
        if saved is not None:
            child_ctx = Context(copy_json(saved["position"]["context"]))
        else:
            child_ctx = Context({})
            for child_path, parent_path in node.inputs.items():
                value = frame.ctx.get(parent_path)
                if value is not MISSING:
                    try:
                        child_ctx.set(child_path, copy_json(value))
                    except ContextPathError as exc:
                        raise SubpipelineError(
                            f"subpipeline node {node.id!r}: input {child_path!r} (from "
                            f"{parent_path!r}) cannot be written into the context of "
                            f"{node.pipeline!r}: {exc}; map the inputs to child paths that do "
                            "not cross each other's values",
                            node_id=node.id,
                        ) from exc
        scope = Scope(target, frame.depth + 1)
        path = f"{frame.path}/{node.id}" if frame.path else node.id
        child = Frame(child_ctx, path, frame.depth + 1, scope, frame)
        if saved is not None:
            child.resume = saved["position"]
        frame.work = SubpipelineRun(child)
        ended = saved is not None and scope.ended_at(saved["position"].get("terminal"))
        with anyio.CancelScope() as cancel:
            scope.cancel = cancel
            if node.timeout is not None:
                cancel.deadline = anyio.current_time() + node.timeout
            if not ended:
                await kernel.run_path(target.entry, child, None)
        if scope.terminal is None:
            if cancel.cancelled_caught:
                raise node_timed_out(
                    frame, node, f'; raise "timeout" or make {node.pipeline!r} faster'
                )
            raise SubpipelineError(
                f"subpipeline node {node.id!r}: {node.pipeline!r} ended without reaching a "
                "terminal node; end every path of it with a terminal",
                node_id=node.id,
            )
        writes: list[tuple[str, Any]] = []
        if node.result_output is not None:
            writes.append((node.result_output, copy_json(scope.terminal.result)))
        for artifact, parent_path in node.artifacts.items():
            if artifact not in scope.artifacts:
                returned = ", ".join(repr(a) for a in scope.artifacts) or "none"
                raise SubpipelineError(
                    f"subpipeline node {node.id!r}: {node.pipeline!r} ended at terminal "
                    f"{scope.terminal.id!r}, which returns no artifact {artifact!r} (it returns: "
                    f"{returned}); list it in that terminal's 'artifacts' or fix the mapping",
                    node_id=node.id,
                )
            writes.append((parent_path, scope.artifacts[artifact]))
        try:
            frame.ctx.set_all(writes)  # a path that crosses a scalar: none is written
        except ContextPathError as exc:
            if exc.path == node.result_output:
                what = "its result (result_output)"
            else:
                artifact = next(a for a, target in node.artifacts.items() if target == exc.path)
                what = f"artifact {artifact!r}"
            raise SubpipelineError(
                f"subpipeline node {node.id!r}: {what} cannot be written: {exc} (nothing of "
                f"what {node.pipeline!r} returned was written)",
                node_id=node.id,
            ) from exc
        # A terminal in a branch or map item ended it: the positions it tore
        # down keep the run in a cycle (see release) unless dropped now.
        release(child)
        return node.next

    def save(self, kernel: Kernel, run: SubpipelineRun) -> SubpipelinePosition:
        """A subpipeline call in flight as a snapshot keeps it: the child run's frame."""
        child = run.child
        return {"position": kernel.frame_state(child, child.scope.pipeline.entry, True)}
