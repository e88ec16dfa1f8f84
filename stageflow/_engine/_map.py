"""Map nodes: one body path per list item, by a fixed pool of workers.

The executor of ``map`` nodes. Each item is a child position
(``Kernel.run_child``) on its own fork of the context; a fixed pool of
``concurrency`` workers pulls item indexes in order, so memory is bounded by
the concurrency, not by the number of items.

Hot path: "map item" benchmark rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio

from stageflow._context import MISSING, Context
from stageflow._engine._frames import MAP_ITEM, Frame, Kernel, MapRun
from stageflow._engine._positions import (
    ItemPosition,
    MapPosition,
    apply_writes,
    error_state,
    restore_error,
)
from stageflow._engine._subpipeline import check_depth
from stageflow._errors import LimitExceededError, MapError, NodeTimeoutError, describe_exception
from stageflow._json import copy_json
from stageflow._model import MapNode
from stageflow._telemetry import MAP_INDEX, NODE_ID

__all__ = ["MapExecutor"]

# Each worker task's name, given so that spawning one does not format the
# function's qualified name (trio and anyio both do when none is given).
_WORKER: Final = "stageflow map worker"


class MapExecutor:
    """Runs map nodes; saves and restores the items in flight.

    It holds no state: one instance serves every run, which passes itself as
    ``kernel`` (a paused session keeps no executor of its own).
    """

    __slots__ = ()

    async def run(self, kernel: Kernel, node: MapNode, frame: Frame) -> str | None:
        """Run the body once per item (or go on with restored items); return the next node."""
        check_depth(kernel, node.id, frame)
        items = frame.ctx.get(node.items)
        if not isinstance(items, list):
            found = "nothing" if items is MISSING else f"a {type(items).__name__}"
            raise MapError(
                f"map node {node.id!r}: 'items' path {node.items!r} holds {found}, not a list; "
                "write a list there before the map runs",
                node_id=node.id,
            )
        total = len(items)
        run = MapRun(node, frame, items)
        frame.work = run
        saved = frame.resume.get("map") if frame.resume is not None else None
        if saved is not None:
            self._restore(run, saved)
        workers = min(node.concurrency, len(run.resumes) + total - run.next)
        if len(run.failures) > node.tolerated(total):
            workers = 0  # it had already failed: only the error is left to raise
            for _, item in run.resumes:
                assert item.resume is not None
                kernel.not_rerun(item.resume)
        with anyio.CancelScope() as deadline:
            if node.timeout is not None:
                deadline.deadline = anyio.current_time() + node.timeout
            # A fixed pool of workers pulls item indexes in order: memory is
            # bounded by the concurrency, not by the number of items. Each
            # worker is a position of its own while this frame waits.
            kernel.positions(workers - 1)
            try:
                async with kernel.backend.open_task_group() as tg:
                    run.cancel = tg.cancel_scope
                    for _ in range(workers):
                        tg.start_soon(self._worker, kernel, run, name=_WORKER)
            finally:
                kernel.positions(1)
        if deadline.cancelled_caught:
            raise NodeTimeoutError(
                f"map node {node.id!r} ({frame.scope.pipeline.location(node.id)}) timed out "
                f'after {node.timeout:g} s with {run.done} of {total} items done; raise "timeout"',
                node_id=node.id,
                timeout=float(node.timeout or 0),
                attempt=1,
            )
        for _, error in run.failures:
            if isinstance(error, LimitExceededError):
                raise error  # a session limit, not an item's failure: never tolerated
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

    async def _worker(self, kernel: Kernel, run: MapRun) -> None:
        node = run.node
        try:
            while True:
                if run.resumes:
                    index, item = run.resumes.pop(0)  # go on with a restored item first
                elif run.next < len(run.items):
                    index = run.next
                    run.next += 1
                    item = self._new_item(run, index)
                else:
                    return
                run.running[index] = item
                # The item's run_child is awaited here, not in a coroutine of
                # its own per item ("map item" row).
                try:
                    succeeded = await kernel.run_child(
                        MAP_ITEM,
                        node.id,
                        item,
                        node.body,
                        None,
                        {"index": index},
                        # Made only for a span ("map item" row).
                        None
                        if kernel.tracing is None
                        else (f"item {node.id}", {NODE_ID: node.id, MAP_INDEX: index}),
                        self._settle(run, index, item),
                    )
                finally:
                    run.running.pop(index, None)
                if not succeeded and (
                    len(run.failures) > node.tolerated(len(run.items))
                    or isinstance(run.failures[-1][1], LimitExceededError)
                ):
                    assert run.cancel is not None
                    kernel.cancelling(run.base, "sibling_failed")
                    run.cancel.cancel()  # fail fast: cancel the items still running
                    return
        finally:
            kernel.positions(-1)

    @staticmethod
    def _item_frame(run: MapRun, index: int, ctx: Context) -> Frame:
        frame = run.frame
        return Frame(ctx, f"{run.base}/{index}", frame.depth + 1, frame.scope, frame, run.visit)

    @staticmethod
    def _new_item(run: MapRun, index: int) -> Frame:
        """The frame of item ``index``: a fork with the item and its index written."""
        node = run.node
        value = copy_json(run.items[index])
        if run.top:
            # Both paths are top-level keys: the fork is made with them ("map item" row).
            ctx = run.frame.ctx.fork({node.item_path: value, node.index_path: index})
        else:
            ctx = run.frame.ctx.fork()
            ctx.set(node.item_path, value)
            ctx.set(node.index_path, index)
        return MapExecutor._item_frame(run, index, ctx)

    @staticmethod
    def _settle(run: MapRun, index: int, item: Frame) -> Callable[[Exception | None, bool], None]:
        """What ``run_child`` calls as item ``index`` ends (see ``Kernel.run_child``)."""
        node = run.node

        def settle(error: Exception | None, cancelled: bool) -> None:
            if cancelled:
                return
            if error is not None:
                run.failures.append((index, error))
            else:
                for source in node.collect:
                    value = item.ctx.get(source)
                    run.collected[source][index] = None if value is MISSING else value
                run.done += 1
            del run.running[index]  # before the event: a snapshot must not run it again

        return settle

    def save(self, kernel: Kernel, run: MapRun) -> MapPosition:
        """A map node in flight as a snapshot keeps it: done, failed, running, next."""
        running: list[ItemPosition] = [
            {"index": index, "position": kernel.frame_state(item, run.node.body, False)}
            for index, item in sorted([*run.running.items(), *run.resumes])
        ]
        return {
            "next": run.next,
            "done": run.done,
            "collected": copy_json(run.collected),
            "failures": [{"index": i, "error": error_state(e)} for i, e in run.failures],
            "running": running,
        }

    def _restore(self, run: MapRun, saved: MapPosition) -> None:
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
