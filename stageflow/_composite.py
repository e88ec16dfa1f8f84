"""Composite nodes: ``subpipeline`` (a nested pipeline as one node) and ``map``.

Both run their inner nodes through the session's one choke point
(``_execute`` via ``_run_path``), in the same session: inputs, cancellation,
limits, events and spans reach inside.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from stageflow._snapshot import apply_writes, error_state, restore_error
from stageflow._telemetry import MAP_INDEX, NODE_ID, ActiveSpan, enter_span, exit_span

if TYPE_CHECKING:
    from stageflow._events import History
    from stageflow._session import _Frame, _Scope

__all__ = ["CompositeNodes"]


class CompositeNodes:
    """Handlers for ``subpipeline`` and ``map`` nodes, mixed into the session."""

    __slots__ = ()

    _history: History
    _limits: Limits
    _tracer: trace.Tracer | None
    _run_path: Callable[[str | None, _Frame, str | None], Awaitable[None]]
    _frame_type: type[_Frame]
    _open_task_group: Callable[[], Any]
    _scope_type: type[_Scope]
    _frame_state: Callable[[_Frame, str, bool], dict[str, Any]]
    _positions: Callable[[int], None]
    _not_rerun: Callable[[dict[str, Any]], None]

    def _check_depth(self, node_id: str, frame: _Frame) -> None:
        if frame.depth >= self._limits.max_depth:
            raise LimitExceededError(
                limit="max_depth", value=self._limits.max_depth, node_id=node_id
            )

    # ------------------------------------------------------------ subpipeline

    async def _run_subpipeline(self, node: SubpipelineNode, frame: _Frame) -> str | None:
        self._check_depth(node.id, frame)
        target = frame.scope.pipeline._targets[node.id]
        saved = frame.resume.get("subpipeline") if frame.resume is not None else None
        if saved is not None:
            child_ctx = Context(copy_json(saved["position"]["context"]))
        else:
            child_ctx = Context({})
            for child_path, parent_path in node.inputs.items():
                value = frame.ctx.get(parent_path)
                if value is not MISSING:
                    child_ctx.set(child_path, copy_json(value))
        scope = self._scope_type(target, frame.depth + 1)
        path = f"{frame.path}/{node.id}" if frame.path else node.id
        child = self._frame_type(child_ctx, path, frame.depth + 1, scope)
        if saved is not None:
            child.resume = saved["position"]
        frame.work = child
        ended = saved is not None and scope.ended_at(saved["position"].get("terminal"))
        with anyio.CancelScope() as cancel:
            scope.cancel = cancel
            if node.timeout is not None:
                cancel.deadline = anyio.current_time() + node.timeout
            if not ended:
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
        frame.work = run
        saved = frame.resume.get("map") if frame.resume is not None else None
        if saved is not None:
            self._restore_map(run, saved)
        workers = min(node.concurrency, len(run.resumes) + total - run.next)
        if len(run.failures) > node.tolerated(total):
            workers = 0  # it had already failed: only the error is left to raise
            for _, item in run.resumes:
                assert item.resume is not None
                self._not_rerun(item.resume)
        with anyio.CancelScope() as deadline:
            if node.timeout is not None:
                deadline.deadline = anyio.current_time() + node.timeout
            # A fixed pool of workers pulls item indexes in order: memory is
            # bounded by the concurrency, not by the number of items. Each
            # worker is a position of its own while this frame waits.
            self._positions(workers - 1)
            try:
                async with self._open_task_group() as tg:
                    run.cancel = tg.cancel_scope
                    for _ in range(workers):
                        tg.start_soon(self._map_worker, run)
            finally:
                self._positions(1)
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
        try:
            while True:
                item: _Frame | None = None
                if run.resumes:
                    index, item = run.resumes.pop(0)
                elif run.next < len(run.items):
                    index = run.next
                    run.next += 1
                else:
                    return
                failed = await self._map_item(run, index, item)
                if failed and len(run.failures) > run.node.tolerated(len(run.items)):
                    assert run.cancel is not None
                    run.cancel.cancel()  # fail fast: cancel the items still running
                    return
        finally:
            self._positions(-1)

    def _item_frame(self, run: _MapRun, index: int, ctx: Context) -> _Frame:
        frame = run.frame
        base = f"{frame.path}/{run.node.id}" if frame.path else run.node.id
        return self._frame_type(ctx, f"{base}/{index}", frame.depth + 1, frame.scope)

    async def _map_item(self, run: _MapRun, index: int, item: _Frame | None) -> bool:
        """Run one item (or go on with a restored one); return whether it failed."""
        node = run.node
        if item is None:
            ctx = run.frame.ctx.fork()
            ctx.set(node.item_path, copy_json(run.items[index]))
            ctx.set(node.index_path, index)
            item = self._item_frame(run, index, ctx)
        ctx = item.ctx
        run.running[index] = item
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
                del run.running[index]  # before the event: a snapshot must not run it again
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
            del run.running[index]
            outcome = "succeeded"
            record("map_item_completed", node.id, item.path, payload)
            return False
        finally:
            run.running.pop(index, None)
            if span is not None:
                exit_span(span, outcome, error)

    def _map_state(self, run: _MapRun) -> dict[str, Any]:
        """A map node in flight as a snapshot keeps it: done, failed, running, next."""
        running = [
            {"index": index, "position": self._frame_state(item, run.node.body, False)}
            for index, item in sorted([*run.running.items(), *run.resumes])
        ]
        return {
            "next": run.next,
            "done": run.done,
            "collected": copy_json(run.collected),
            "failures": [{"index": i, "error": error_state(e)} for i, e in run.failures],
            "running": running,
        }

    def _restore_map(self, run: _MapRun, saved: dict[str, Any]) -> None:
        """Set a map run up as the snapshot left it."""
        total = len(run.items)
        run.next = min(saved["next"], total)
        run.done = saved["done"]
        for source, values in saved["collected"].items():
            if source in run.collected and len(values) == total:
                run.collected[source] = copy_json(values)
        run.failures = [(f["index"], restore_error(f["error"])) for f in saved["failures"]]
        for running in saved["running"]:
            position = running["position"]
            ctx = run.frame.ctx.fork()
            apply_writes(ctx, position["writes"])
            item = self._item_frame(run, running["index"], ctx)
            item.resume = position
            run.resumes.append((running["index"], item))


class _MapRun:
    """The shared state of one map node execution."""

    __slots__ = (
        "cancel",
        "collected",
        "done",
        "failures",
        "frame",
        "items",
        "next",
        "node",
        "resumes",
        "running",
    )

    def __init__(self, node: MapNode, frame: _Frame, items: list[Any]) -> None:
        self.node = node
        self.frame = frame
        self.items = items
        self.next = 0  # the next item index to start
        self.running: dict[int, _Frame] = {}  # items in flight, by index
        self.resumes: list[tuple[int, _Frame]] = []  # restored items to go on with first
        self.collected: dict[str, list[Any]] = {s: [None] * len(items) for s in node.collect}
        self.failures: list[tuple[int, Exception]] = []
        self.done = 0
        self.cancel: Any = None  # the task group's cancel scope (anyio or trio)
