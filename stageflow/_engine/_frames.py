"""Where nodes run: scopes, frames and the typed work record of each node in flight.

A :class:`Scope` is one pipeline run inside a session: the main pipeline, or
one subpipeline call. A :class:`Frame` is one path of execution in a scope:
the main path, a parallel branch, a map item or a subpipeline's path. While a
frame's node runs, ``frame.work`` says what it is doing, as one of the
records of :data:`Work`; that is what a snapshot saves of it.

:class:`Kernel` is what the node executors may use of the run that drives
them, so that they depend on this module and not on the run itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from stageflow._context import Context
from stageflow._engine._backend import Backend, CancelScopeLike
from stageflow._engine._positions import FramePosition, TerminalPosition
from stageflow._engine._runtime import StageRuntime, StageWork
from stageflow._errors import NodeTimeoutError
from stageflow._events import History
from stageflow._metrics import Metrics
from stageflow._model import (
    Limits,
    MapNode,
    ParallelNode,
    SubpipelineNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._pipeline import Pipeline
from stageflow._stages import StageEntry
from stageflow._telemetry import CancelReason, Tracing

__all__ = [
    "BRANCH",
    "MAP_ITEM",
    "BranchOutcome",
    "ChildKind",
    "Finished",
    "Frame",
    "Kernel",
    "MapRun",
    "ParallelRun",
    "RetryWait",
    "Scope",
    "SubpipelineRun",
    "Work",
    "node_timed_out",
    "release",
    "release_under",
]


_NO_ARTIFACTS: Final[Mapping[str, Any]] = MappingProxyType({})


class Scope:
    """One pipeline run inside the session: the main pipeline, or a subpipeline call."""

    __slots__ = ("artifacts", "cancel", "depth", "pipeline", "terminal")

    def __init__(self, pipeline: Pipeline, depth: int) -> None:
        self.pipeline = pipeline
        self.depth = depth  # the depth of the frame its entry runs in
        self.terminal: TerminalNode | None = None
        # Set by its terminal; until then the shared empty mapping (a live
        # waiting session keeps its scope: "paused session, memory each" row).
        self.artifacts: Mapping[str, Any] = _NO_ARTIFACTS
        self.cancel: CancelScopeLike | None = None  # ends the run at a terminal in a branch

    def ended_at(self, terminal: TerminalPosition | None) -> bool:
        """Restore the terminal a snapshot says this run had reached; whether it had."""
        if terminal is None:
            return False
        node = self.pipeline.node(terminal["node"])
        assert isinstance(node, TerminalNode)
        self.terminal = node
        self.artifacts = terminal["artifacts"]
        return True


class Frame:
    """Where a node runs: its context, its path, its nesting depth and pipeline scope.

    ``node`` and ``work`` say what the frame is doing right now: the node in
    flight and its executor's record, or :class:`Finished` once the node has
    finished but the frame has not moved on. ``resume`` is the snapshot frame
    a restored run starts this frame from.

    ``visits`` counts the nodes the frame has started (snapshots keep it) and
    ``origin`` names the node visit that forked it (``""`` for the main
    path): together they give every node visit its execution key.

    ``contributes`` is true for a parallel branch: what it leaves at a
    reducer's path is its contribution to the join, so a parallel node
    nested in it folds its branches into what the branch itself wrote there,
    not into the parent's value it reads through (that would be counted again
    at the outer join).
    """

    __slots__ = (
        "branch",
        "contributes",
        "ctx",
        "depth",
        "node",
        "origin",
        "path",
        "resume",
        "scope",
        "visits",
        "work",
    )

    def __init__(
        self,
        ctx: Context,
        path: str,
        depth: int,
        scope: Scope,
        parent: Frame | None = None,
        visit: str | None = None,
        contributes: bool = False,
    ) -> None:
        # MapExecutor._item_frame and _worker make an item frame without this call: keep alike.
        self.ctx = ctx
        self.path = path
        self.depth = depth
        self.scope = scope
        self.branch: int | str | None = None  # set by a condition for its node_finished
        self.contributes = contributes
        self.node: str | None = None
        self.work: Work = None
        self.resume: FramePosition | None = None
        self.visits = 0
        # The parent's node visit (the same after a restore: visits are kept);
        # ``visit`` is its key when the caller made it once for many children
        # ("parallel branch" and "map item" rows).
        if parent is None:
            self.origin = ""
        else:
            self.origin = f"{parent.visit_key() if visit is None else visit}:{path}"

    def visit_key(self) -> str:
        """This frame's current node visit, unique in the session (see ``execution_key``)."""
        return f"{self.origin}/{self.node}.{self.visits}"


class Finished:
    """The frame's node has finished; the frame goes on at ``next`` (``None``: its path ends)."""

    __slots__ = ("next",)

    def __init__(self, next: str | None) -> None:
        self.next = next


class RetryWait:
    """A stage node waiting out a retry delay: the attempt to come and when (ISO 8601)."""

    __slots__ = ("at", "attempt")

    def __init__(self, attempt: int, at: str) -> None:
        self.attempt = attempt
        self.at = at


class BranchOutcome:
    """How one branch of a parallel node ended (all false while it runs)."""

    __slots__ = ("cancelled", "error", "finished")

    def __init__(self) -> None:
        self.finished = False
        self.cancelled = False
        self.error: Exception | None = None


class ParallelRun:
    """One parallel node execution: its branch frames, outcomes and the ``any`` winner."""

    __slots__ = ("frames", "node", "outcomes", "prefix", "winner")

    def __init__(self, node: ParallelNode, frames: list[Frame], prefix: str) -> None:
        self.node = node
        self.frames = frames
        self.outcomes = [BranchOutcome() for _ in frames]
        self.winner: list[int] = []
        self.prefix = prefix  # the branches' common path prefix: what a cancellation covers


class MapRun:
    """The shared state of one map node execution."""

    __slots__ = (
        "base",
        "cancel",
        "collected",
        "depth",
        "done",
        "failures",
        "frame",
        "items",
        "next",
        "node",
        "resumes",
        "running",
        "top",
        "visit",
    )

    def __init__(self, node: MapNode, frame: Frame, items: list[Any]) -> None:
        self.node = node
        self.frame = frame
        self.items = items
        # The items' path prefix and the map node's visit key, made once for
        # every item's frame ("map item" row).
        self.base = f"{frame.path}/{node.id}" if frame.path else node.id
        self.visit = frame.visit_key()
        self.depth = frame.depth + 1  # the items' frames'
        # Whether the item and index paths are both top-level keys (an item's
        # fork is then made with them).
        self.top = "." not in node.item_path and "." not in node.index_path
        self.next = 0  # the next item index to start
        self.running: dict[int, Frame] = {}  # items in flight, by index
        self.resumes: list[tuple[int, Frame]] = []  # restored items to go on with first
        self.collected: dict[str, list[Any]] = {s: [None] * len(items) for s in node.collect}
        self.failures: list[tuple[int, Exception]] = []
        self.done = 0
        self.cancel: Any = None  # the task group's cancel scope (anyio or trio)


class SubpipelineRun:
    """A subpipeline call in flight: the frame its pipeline runs in."""

    __slots__ = ("child",)

    def __init__(self, child: Frame) -> None:
        self.child = child


Work = StageWork | RetryWait | ParallelRun | MapRun | SubpipelineRun | Finished | None
"""What a frame's node is doing (``None``: it has no record yet, or needs none)."""


def node_timed_out(
    frame: Frame, node: ParallelNode | MapNode | SubpipelineNode, then: str
) -> NodeTimeoutError:
    """The error of a parallel, map or subpipeline node past its ``timeout`` (one attempt).

    ``then`` ends the message: what became of the node's work, and the fix.
    """
    return NodeTimeoutError(
        f"{node.type} node {node.id!r} ({frame.scope.pipeline.location(node.id)}) timed out "
        f"after {node.timeout:g} s{then}",
        node_id=node.id,
        timeout=float(node.timeout or 0),
        attempt=1,
    )


def release(root: Frame) -> None:
    """Drop the work record of ``root`` and of every frame under it, once their run is over.

    A frame and the record of its node in flight refer to each other (a
    stage attempt to its frame, a map to the frame it runs in): left so, the
    frames of a run that was suspended or cancelled mid-node, and the run and
    session they reach, are freed only by the cyclic collector.
    """
    work, root.work = root.work, None
    release_under(work)


def release_under(work: Work) -> None:
    """Drop the work records of the frames under ``work``, a record its frame let go.

    A node whose frame went on (to an error edge, past an ``any`` race, out of
    a subpipeline) leaves the frames it ran in: a branch or map item torn down
    mid-stage keeps its attempt, which keeps it and the run (see ``release``).
    """
    frames: list[Frame] = []
    while True:
        if isinstance(work, ParallelRun):
            frames.extend(work.frames)
        elif isinstance(work, MapRun):
            frames.extend(work.running.values())
            frames.extend(item for _, item in work.resumes)
        elif isinstance(work, SubpipelineRun):
            frames.append(work.child)
        if not frames:
            return
        frame = frames.pop()
        work, frame.work = frame.work, None


class Kernel(Protocol):
    """What node executors use of the run that drives them."""

    @property
    def session_id(self) -> str: ...
    @property
    def history(self) -> History: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def tracing(self) -> Tracing | None: ...
    @property
    def metrics(self) -> Metrics | None: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def host(self) -> asyncio.Task[Any] | None: ...
    @property
    def runtime(self) -> StageRuntime: ...
    @property
    def entries(self) -> Mapping[int, StageEntry]: ...
    @property
    def stop_outcome(self) -> str: ...
    @property
    def mode(self) -> ValidateEvents: ...

    def run_path(
        self,
        node_id: str | None,
        frame: Frame,
        stop: str | None,
        flags: tuple[Any, Any, Any] | None = None,
    ) -> Awaitable[None]:
        """Run nodes from ``node_id`` in ``frame`` until the path ends or reaches ``stop``.

        ``flags`` are what :func:`~stageflow._engine._backend.cancel_flags`
        returned (or ``(None, None, None)`` for none) in the task that runs
        the path, in the cancel scope it runs in; ``None`` reads them. A caller
        that runs many paths one after another in one task and scope reads
        them once (a map worker: "map item" benchmark row).
        """

    def run_child(
        self,
        kind: ChildKind,
        node_id: str,
        frame: Frame,
        entry: str,
        stop: str | None,
        payload: dict[str, Any],
        span: tuple[str, dict[str, Any]] | None,
        settle: Callable[[Exception | None, bool], None],
        flags: tuple[Any, Any, Any] | None = None,
    ) -> Awaitable[bool]:
        """Run a branch or a map item from ``entry``: its events, its span, its outcome.

        ``span`` is its span's name and attributes; ``None`` when the run is
        not traced (it is made only for a span).

        ``settle(error, cancelled)`` is called as it ends, before its last
        event (so a snapshot taken by that event's subscribers sees the
        outcome). Returns whether it succeeded; a failure is not raised.
        ``flags`` as for :meth:`run_path`.
        """

    def item_step(self, body: str, scope: Scope) -> Any:
        """What :meth:`run_items` needs to run a map body from ``body``; ``None`` if it cannot.

        Only a body of one simple stage node (no retry, timeout, cleanup,
        error edges or ``next``) in an untraced, unmetered run has one.
        """

    def run_items(self, step: Any, run: MapRun, flags: tuple[Any, Any, Any]) -> Awaitable[None]:
        """Run ``run``'s new items, whose body has a ``step`` (see :meth:`item_step`), in turn.

        For each item what the map worker and :meth:`run_child` do, with the
        same events, snapshots and outcome, in the caller's coroutine ("map
        item" benchmark row). Returns when no new item is left, or once it
        cancelled the map as it fails fast. ``flags`` as for
        :meth:`run_path`, already read.
        """

    def frame_state(self, frame: Frame, entry: str, full: bool) -> FramePosition:
        """The frame as a snapshot keeps it."""

    def positions(self, change: int, settled: bool = False) -> None:
        """Count positions (branches, map workers) that start or end.

        ``settled``: they end in a group already cancelled (a race won, a
        failure that cancels the rest), which goes on: not a moment to suspend.
        """

    def cancelling(self, prefix: str, reason: CancelReason) -> None:
        """Say why the positions under path ``prefix`` are about to be cancelled (for spans)."""

    def not_rerun(self, position: FramePosition) -> None:
        """A restored position that will not run again keeps its counted steps."""

    def let_go(self, errors: Iterable[BaseException]) -> None:
        """Leave the engine's frames out of the failures a node held, as it ends.

        A parallel or map node calls it, however it ends, with its branches'
        or items' failures, each reported (log line, span) where it was
        raised: their tracebacks held the frames whose locals keep them.
        """

    def random(self) -> float:
        """The next number of the session's seeded generator."""


class ChildKind:
    """The history events of one kind of child position (a branch, a map item)."""

    __slots__ = ("cancelled", "failed", "finished", "started")

    def __init__(self, prefix: str, finished: str) -> None:
        self.started = f"{prefix}_started"
        self.finished = f"{prefix}_{finished}"
        self.failed = f"{prefix}_failed"
        self.cancelled = f"{prefix}_cancelled"


BRANCH = ChildKind("branch", "finished")
"""A parallel node's branch: ``branch_started`` ... ``branch_finished``."""
MAP_ITEM = ChildKind("map_item", "completed")
"""A map node's item: ``map_item_started`` ... ``map_item_completed``."""
