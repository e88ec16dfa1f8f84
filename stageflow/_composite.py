"""Composite nodes: ``subpipeline`` (a nested pipeline as one node) and ``map``.

Both run their inner nodes through the session's one choke point
(``_execute`` via ``_run_path``), in the same session: inputs, cancellation,
limits, events and spans reach inside.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import trace

from stageflow._context import MISSING, Context
from stageflow._errors import (
    LimitExceededError,
    MapError,
    NodeTimeoutError,
    SubpipelineError,
    describe_exception,
)
from stageflow._json import copy_json
from stageflow._model import Limits, MapNode, SubpipelineNode
from stageflow._telemetry import MAP_INDEX, NODE_ID, ActiveSpan, enter_span, exit_span

if TYPE_CHECKING:
    from stageflow._events import History
    from stageflow._session import _Frame, _Scope

__all__ = ["CompositeNodes"]


class CompositeNodes:
    """Handlers for ``subpipeline`` and ``map`` nodes, mixed into the session."""

    _history: History
    _limits: Limits
    _tracer: trace.Tracer | None
    _run_path: Callable[[str | None, _Frame, str | None], Awaitable[None]]
    _frame_type: type[_Frame]
    _open_task_group: Callable[[], Any]
    _scope_type: type[_Scope]

    def _check_depth(self, node_id: str, frame: _Frame) -> None:
        if frame.depth >= self._limits.max_depth:
            raise LimitExceededError(
                limit="max_depth", value=self._limits.max_depth, node_id=node_id
            )

    # ------------------------------------------------------------ subpipeline

    async def _run_subpipeline(self, node: SubpipelineNode, frame: _Frame) -> str | None:
        self._check_depth(node.id, frame)
        target = frame.scope.pipeline._targets[node.id]
        child_ctx = Context({})
        for child_path, parent_path in node.inputs.items():
            value = frame.ctx.get(parent_path)
            if value is not MISSING:
                child_ctx.set(child_path, copy_json(value))
        scope = self._scope_type(target, frame.depth + 1)
        path = f"{frame.path}/{node.id}" if frame.path else node.id
        child = self._frame_type(child_ctx, path, frame.depth + 1, scope)
        with anyio.CancelScope() as cancel:
            scope.cancel = cancel
            if node.timeout is not None:
                cancel.deadline = anyio.current_time() + node.timeout
            await self._run_path(target.entry, child, None)
        if scope.terminal is None:
            if cancel.cancelled_caught:
                raise NodeTimeoutError(
                    f"subpipeline node {node.id!r} ({frame.scope.pipeline.location(node.id)}) "
                    f'timed out after {node.timeout:g} s; raise "timeout" or make '
                    f"{node.pipeline!r} faster",
                    node_id=node.id,
                    timeout=float(node.timeout or 0),
                    attempt=1,
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
        for parent_path, value in writes:
            frame.ctx.set(parent_path, value)
        return node.next

    # -------------------------------------------------------------------- map

    async def _run_map(self, node: MapNode, frame: _Frame) -> str | None:
        self._check_depth(node.id, frame)
        items = frame.ctx.get(node.items)
        if not isinstance(items, list):
            found = "nothing" if items is MISSING else f"a {type(items).__name__}"
            raise MapError(
                f"map node {node.id!r}: 'items' path {node.items!r} holds {found}, not a list; "
                "write a list there before the map runs",
                node_id=node.id,
            )
        total = len(items)
        run = _MapRun(node, frame, items)
        with anyio.CancelScope() as deadline:
            if node.timeout is not None:
                deadline.deadline = anyio.current_time() + node.timeout
            # A fixed pool of workers pulls item indexes in order: memory is
            # bounded by the concurrency, not by the number of items.
            async with self._open_task_group() as tg:
                run.cancel = tg.cancel_scope
                for _ in range(min(node.concurrency, total)):
                    tg.start_soon(self._map_worker, run)
        if deadline.cancelled_caught:
            raise NodeTimeoutError(
                f"map node {node.id!r} ({frame.scope.pipeline.location(node.id)}) timed out "
                f'after {node.timeout:g} s with {run.done} of {total} items done; raise "timeout"',
                node_id=node.id,
                timeout=float(node.timeout or 0),
                attempt=1,
            )
        failures = sorted(run.failures, key=lambda f: f[0])
        if len(failures) > node.tolerated(total):
            first_index, first = failures[0]
            error = MapError(
                f"map node {node.id!r}: {len(failures)} of {total} items failed (tolerated: "
                f"{node.tolerated(total)}); first, item {first_index}: {first}",
                node_id=node.id,
                failures=[(i, describe_exception(e)) for i, e in failures],
            )
            raise error from first
        for source, target in node.collect.items():
            frame.ctx.set(target, run.collected[source])
        if node.failures_path is not None:
            frame.ctx.set(
                node.failures_path,
                [{"index": i, "error": describe_exception(e)} for i, e in failures],
            )
        return node.next

    async def _map_worker(self, run: _MapRun) -> None:
        for index in run.indexes:
            failed = await self._map_item(run, index)
            if failed and len(run.failures) > run.node.tolerated(len(run.items)):
                assert run.cancel is not None
                run.cancel.cancel()  # fail fast: cancel the items still running
                return

    async def _map_item(self, run: _MapRun, index: int) -> bool:
        """Run one item; return whether it failed."""
        node, frame = run.node, run.frame
        ctx = frame.ctx.fork()
        ctx.set(node.item_path, copy_json(run.items[index]))
        ctx.set(node.index_path, index)
        base = f"{frame.path}/{node.id}" if frame.path else node.id
        item = self._frame_type(ctx, f"{base}/{index}", frame.depth + 1, frame.scope)
        span: ActiveSpan | None = None
        if self._tracer is not None:
            span = enter_span(
                self._tracer, f"item {node.id}[{index}]", {NODE_ID: node.id, MAP_INDEX: index}
            )
        record = self._history.record
        payload = {"index": index}
        outcome, error = "cancelled", None
        try:
            record("map_item_started", node.id, item.path, payload)
            try:
                await self._run_path(node.body, item, None)
            except anyio.get_cancelled_exc_class():
                record("map_item_cancelled", node.id, item.path, payload)
                raise
            except Exception as exc:
                outcome, error = "failed", exc
                run.failures.append((index, exc))
                record(
                    "map_item_failed",
                    node.id,
                    item.path,
                    {**payload, "error": describe_exception(exc)},
                )
                return True
            for source in node.collect:
                value = ctx.get(source)
                run.collected[source][index] = None if value is MISSING else value
            run.done += 1
            outcome = "succeeded"
            record("map_item_completed", node.id, item.path, payload)
            return False
        finally:
            if span is not None:
                exit_span(span, outcome, error)


class _MapRun:
    """The shared state of one map node execution."""

    __slots__ = ("cancel", "collected", "done", "failures", "frame", "indexes", "items", "node")

    def __init__(self, node: MapNode, frame: _Frame, items: list[Any]) -> None:
        self.node = node
        self.frame = frame
        self.items = items
        self.indexes: Iterator[int] = iter(range(len(items)))
        self.collected: dict[str, list[Any]] = {s: [None] * len(items) for s in node.collect}
        self.failures: list[tuple[int, Exception]] = []
        self.done = 0
        self.cancel: Any = None  # the task group's cancel scope (anyio or trio)
