"""Map nodes: one body path per list item, by a fixed pool of workers.

The executor of ``map`` nodes. Each item is a child position
(``Kernel.run_child``; ``Kernel.run_items`` for a new item of a body of one
simple stage node) on its own fork of the context; a fixed pool of
``concurrency`` workers pulls item indexes in order, so memory is bounded by
the concurrency, not by the number of items.

Hot path: "map item" benchmark rows.
"""

from __future__ import annotations

from typing import Any, Final

import anyio

from stageflow._context import MISSING, Context
from stageflow._engine._backend import NO_FLAGS, cancel_flags
from stageflow._engine._frames import MAP_ITEM, Frame, Kernel, MapRun, node_timed_out, release
from stageflow._engine._positions import (
    ItemPosition,
    MapPosition,
    apply_writes,
    error_state,
    restore_error,
)
from stageflow._engine._stage import PLAIN_SCALARS
from stageflow._engine._subpipeline import check_depth
from stageflow._errors import (
    ContextPathError,
    LimitExceededError,
    MapError,
    describe_exception,
)
from stageflow._json import a_json_type, copy_json
from stageflow._model import MapNode
from stageflow._telemetry import MAP_INDEX, NODE_ID

__all__ = ["MapExecutor"]

# Each worker task's name, given so that spawning one does not format the
# function's qualified name (trio and anyio both do when none is given).
_WORKER: Final = "stageflow map worker"
_new: Final = object.__new__


def _check_item_paths(node: MapNode, ctx: Context) -> None:
    """Fail the map node, before any item runs, if an item cannot be written where it goes.

    An item's fork is made by the workers; a nested ``item_path`` or
    ``index_path`` under a value that is not an object would fail there,
    outside any item, so it is tried here on a throwaway fork.
    """
    probe = ctx.fork()
    try:
        probe.set(node.item_path, None)
        probe.set(node.index_path, 0)
    except ContextPathError as exc:
        raise MapError(
            f"map node {node.id!r} cannot write its items at item_path {node.item_path!r} "
            f"and index_path {node.index_path!r}: {exc}; make the paths' parents objects "
            "before the map runs, or use top-level item_path and index_path",
            node_id=node.id,
        ) from exc


def _unwritable(node: MapNode, exc: ContextPathError) -> MapError:
    """A collected list (or the failures) whose path cannot hold it: nothing was written."""
    source = next((s for s, target in node.collect.items() if target == exc.path), None)
    what = (
        f"the list collected from {source!r}"
        if source is not None
        else "its failures (failures_path)"
    )
    return MapError(
        f"map node {node.id!r}: {what} cannot be written: {exc} (the map wrote nothing)",
        node_id=node.id,
    )


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
            found = "nothing" if items is MISSING else a_json_type(items)
            raise MapError(
                f"map node {node.id!r}: 'items' path {node.items!r} holds {found}, not a list; "
                "write a list there before the map runs",
                node_id=node.id,
            )
        total = len(items)
        run = MapRun(node, frame, items)
        if not run.top:
            _check_item_paths(node, frame.ctx)
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
        try:
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
                raise node_timed_out(
                    frame, node, f' with {run.done} of {total} items done; raise "timeout"'
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
            writes = [(target, run.collected[source]) for source, target in node.collect.items()]
            if node.failures_path is not None:
                writes.append(
                    (
                        node.failures_path,
                        [{"index": i, "error": describe_exception(e)} for i, e in failures],
                    )
                )
            try:
                frame.ctx.set_all(writes)  # a path that crosses a scalar: none is written
            except ContextPathError as exc:
                raise _unwritable(node, exc) from exc
            return node.next
        finally:
            # However it ends (done, failed, timed out, torn down), the failures
            # of its items were each reported where raised: they leave the
            # engine's frames out of their tracebacks (see Kernel.let_go).
            kernel.let_go(error for _, error in run.failures)

    async def _worker(self, kernel: Kernel, run: MapRun) -> None:
        node = run.node
        items, running, collected = run.items, run.running, run.collected
        item_path, index_path = node.item_path, node.index_path
        fork = run.frame.ctx.fork
        base, visit, depth, scope = run.base, run.visit, run.depth, run.frame.scope
        # Each collected path, and whether it is a top-level key (read first
        # from the item fork's own map: "map item" row).
        collect = tuple((source, "." not in source) for source in node.collect)
        traced = kernel.tracing is not None
        # Read once for all the items: each item's path runs in this task and
        # in this cancel scope (Kernel.run_path; "map item" row).
        flags = cancel_flags(kernel.backend, kernel.host) or NO_FLAGS
        # The plan of a body of one simple stage node, whose new items
        # Kernel.run_items runs; None otherwise ("map item" row).
        fused = kernel.item_step(node.body, scope)
        # The item in flight: this worker runs one at a time, so one settle
        # function serves them all, reading the item it settles from these
        # (not a closure made per item: "map item" row). ``own`` is the item
        # fork's own map when the worker made the fork, else None.
        index = 0
        item: Frame | None = None
        own: dict[str, Any] | None = None

        def settle(error: Exception | None, cancelled: bool) -> None:
            """What ``run_child`` calls as the item ends (see ``Kernel.run_child``)."""
            if cancelled:
                return
            assert item is not None
            if error is not None:
                run.failures.append((index, error))
                # The failed item is over, and no snapshot keeps it: its
                # frame lets go of its node's record, which refers back to it.
                release(item)
            else:
                mine = own if own is not None else item.ctx.own()
                for source, top in collect:
                    # Only what the item wrote (at, above or below the path),
                    # never the parent's value read through the fork: null
                    # otherwise. A top-level key is in the fork's own map
                    # exactly when the item wrote it or a path inside it.
                    if top:
                        value = mine.get(source, MISSING)
                    else:
                        value = item.ctx.get(source) if item.ctx.wrote(source) else MISSING
                    # Copied: the item's value may share containers the
                    # parent still has (copy on write copies only the
                    # containers on a written path).
                    collected[source][index] = (
                        None
                        if value is MISSING
                        else value
                        if type(value) in PLAIN_SCALARS
                        else copy_json(value)
                    )
                run.done += 1
            del running[index]  # before the event: a snapshot must not run it again

        try:
            while True:
                if run.resumes:
                    index, item = run.resumes.pop(0)  # go on with a restored item first
                    own = None
                elif run.next < len(items):
                    if fused is not None and run.top:
                        # New items of a body of one simple stage node: run
                        # in this coroutine by the kernel, until none is left
                        # or the map fails fast ("map item" row).
                        await kernel.run_items(fused, run, flags)
                        return
                    index = run.next
                    run.next += 1
                    if run.top:
                        # Both paths are top-level keys: the fork is made with
                        # the item and its index, and the frame by slot stores
                        # (what _new_item and _item_frame do, without their
                        # calls: "map item" row). Keep them alike.
                        value = items[index]
                        own = {
                            item_path: value if type(value) in PLAIN_SCALARS else copy_json(value),
                            index_path: index,
                        }
                        path = f"{base}/{index}"
                        item = _new(Frame)
                        item.ctx = fork(own)
                        item.path = path
                        item.depth = depth
                        item.scope = scope
                        item.branch = None
                        item.contributes = False
                        item.node = None
                        item.work = None
                        item.resume = None
                        item.visits = 0
                        item.origin = f"{visit}:{path}"
                    else:
                        own = None
                        item = self._new_item(run, index)
                else:
                    return
                running[index] = item
                # The item's run_child is awaited here, not in a coroutine of
                # its own per item ("map item" row). An item that raises (it
                # was cancelled or interrupted) stays in ``running``: a
                # snapshot taken while the map is torn down keeps it, and the
                # session restored from it runs the item again.
                succeeded = await kernel.run_child(
                    MAP_ITEM,
                    node.id,
                    item,
                    node.body,
                    None,
                    {"index": index},
                    # Made only for a span ("map item" row).
                    (f"item {node.id}", {NODE_ID: node.id, MAP_INDEX: index}) if traced else None,
                    settle,
                    flags,
                )
                if not succeeded and (
                    len(run.failures) > node.tolerated(len(run.items))
                    or isinstance(run.failures[-1][1], LimitExceededError)
                ):
                    assert run.cancel is not None
                    kernel.cancelling(run.base, "sibling_failed")
                    run.cancel.cancel()  # fail fast: cancel the items still running
                    return
        finally:
            kernel.positions(-1, run.cancel is not None and run.cancel.cancel_called)

    @staticmethod
    def _item_frame(run: MapRun, index: int, ctx: Context) -> Frame:
        # Frame(ctx, path, depth, scope, parent, run.visit), written out: one
        # call less per item ("map item" row). Keep it alike with Frame.__init__
        # (and with _worker, which makes a new item's frame itself).
        path = f"{run.base}/{index}"
        item = _new(Frame)
        item.ctx = ctx
        item.path = path
        item.depth = run.depth
        item.scope = run.frame.scope
        item.branch = None
        item.contributes = False
        item.node = None
        item.work = None
        item.resume = None
        item.visits = 0
        item.origin = f"{run.visit}:{path}"
        return item

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
