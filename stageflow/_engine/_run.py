"""One ``run()`` of a session: the choke point every node goes through.

A :class:`Run` is made by ``Session.run()`` and lives until it returns. It
owns the one place where a node executes (:meth:`Run.execute`: limits, the
cancellation checkpoint, the node's span and log lines, its history events,
error edges), the path loop (:meth:`Run.run_path`), the one lifecycle of
child positions (:meth:`Run.run_child`: parallel branches and map items),
conditions and terminals, and suspend mode. The executors of the other node
kinds (stage, parallel, subpipeline, map) are plain objects it calls; they
open no node spans and record no node events of their own.

Hot path: :meth:`Run.execute` and :meth:`Run.run_path` run once per node
("sequential stage node" and "condition node" benchmark rows). ``run_path``
executes simple stage nodes, condition nodes and terminals of a run without
node log lines itself, in a tight loop decided by a per-node plan
(docs/internals.md, "The tight path"; the "sequential stage node",
"condition node", "1,000-node chain" and "paused session" rows).
:meth:`Run.run_items` runs a map worker's new items whose body is one simple
stage node, in the worker's coroutine ("map item" rows).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final

import anyio
import anyio.lowlevel
import structlog

from stageflow._context import MISSING
from stageflow._deadlines import after
from stageflow._engine._backend import (
    NO_FLAGS,
    CancelScopeLike,
    cancel_flags,
    current_backend,
    deciding_leaf,
    host_task,
    is_cancellation,
    is_suspension,
    loop_handles,
    stage_failure,
    take_stray_request,
    ungrouped,
)
from stageflow._engine._frames import (
    MAP_ITEM,
    ChildKind,
    Finished,
    Frame,
    MapRun,
    ParallelRun,
    Scope,
    SubpipelineRun,
    release,
    release_under,
)
from stageflow._engine._limits import RunCaps, run_time_error
from stageflow._engine._map import MapExecutor
from stageflow._engine._parallel import ParallelExecutor
from stageflow._engine._positions import (
    Call,
    FramePosition,
    awaited,
    count_positions,
    not_kept,
    parked_calls,
    writes_of,
)
from stageflow._engine._runtime import StageRuntime, stage_work
from stageflow._engine._stage import EMPTY_MAPPING, PLAIN_SCALARS, StageExecutor
from stageflow._engine._state import Saved, SessionState, TraceIds
from stageflow._engine._subpipeline import SubpipelineExecutor
from stageflow._errors import (
    ConditionError,
    ContextPathError,
    JsonLogicError,
    LimitExceededError,
    NodeError,
    SessionStateError,
    SessionTimeoutError,
    StageflowError,
    describe_exception,
    error_matches,
    error_text,
)
from stageflow._events import (
    RECORD_SLOTS,
    History,
    node_finished_payload,
    node_started_payload,
)
from stageflow._guard import SAFE_INT_BITS
from stageflow._identity import IdentityCache
from stageflow._json import copy_json
from stageflow._log import get_logger, node_finished, session_finished
from stageflow._metrics import Metrics, node_measured, session_measured
from stageflow._model import (
    ConditionNode,
    ErrorHandler,
    Limits,
    Node,
    ParallelNode,
    StageNode,
    SubpipelineNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._pipeline import Pipeline
from stageflow._result import SessionResult, SessionStatus
from stageflow._segments import SegmentedSpan, Segments, rebuild, sampled_as
from stageflow._stages import StageContext, StageEntry
from stageflow._telemetry import (
    ATTEMPT,
    CANCEL_REASON,
    CONDITION_BRANCH,
    ERROR_HANDLED,
    NEXT_NODE,
    NODE_ID,
    NODE_TYPE,
    PIPELINE_DIGEST,
    PIPELINE_NAME,
    POLICY,
    SESSION_ID,
    STAGE,
    SUBPIPELINE,
    ActiveSpan,
    CancelReason,
    Tracing,
    active_ids,
    bind_span,
    measured_in,
    restored_link,
)

__all__ = ["Run"]

_log = get_logger("stageflow.session")

# Run.execute yields to the scheduler when the step count is a multiple of 64.
_YIELD_EVERY: Final = 63

# The tight path of run_path (see there); False forces every node through
# execute(). Private: only the property test and the benchmarks turn it off
# (docs/internals.md, "The tight path").
_TIGHT = True
_UNSEEN: Final[Any] = object()
# The errors of a failed session whose tracebacks Run._forget_frames looks at, at most.
_CHAIN_LIMIT: Final = 100
# Where the engine's code is: its frames are left out of a failed session's
# error (Run._forget_frames).
_ENGINE_CODE: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The nodes whose executors run positions under them (branches, map items, a
# subpipeline's path): a failure of those, routed to the node's error edge,
# is held in the locals of frames that its tracebacks hold (Run.execute). A
# stage node's routed failure leaves no such cycle, and skips the walk
# (about 5 us of a 60 us run whose stage fails and is routed).
_RUNS_POSITIONS: Final = frozenset({"parallel", "map", "subpipeline"})
_time_ns: Final = time.time_ns
_new: Final = object.__new__

# entries -> graph -> node id -> the plan, each by identity but the node ids:
# for every node of a resolved (pipeline, registry) that the tight path has
# met, in the graph (the pipeline or one of its subpipelines) it belongs to:
# its _Step if it is a simple stage node (one attempt, no timeout, no
# cleanup), its _Choice if it is a condition node, its _End if it is a
# terminal node, else None; decided and made once per node, not once per
# execution ("sequential stage node" and "3-node run" rows). Found by the
# node's id in its graph's plan, which a path looks up once: per node, one
# lookup by a string whose hash is kept, instead of the node by its id and
# then its plan by ``id(node)`` (6.8 % fewer instructions per node:
# benchmarks/RESULTS.md, "The plan by node id"). The caches keep the entries
# and the graphs, so that an identity reused after garbage collection is
# never taken for them.
_plans: Final = IdentityCache["IdentityCache[dict[str, Planned]]"]()


def _node_span(node: Node) -> tuple[str, dict[str, Any]]:
    """The name and the starting attributes of ``node``'s span (a new dict each call)."""
    attributes: dict[str, Any] = {NODE_ID: node.id, NODE_TYPE: node.type}
    if isinstance(node, StageNode):
        attributes[STAGE] = node.stage
        attributes[ATTEMPT] = 1  # raised by the stage executor if a retry succeeds or fails
    elif isinstance(node, ParallelNode):
        attributes[POLICY] = node.policy.value
    elif isinstance(node, SubpipelineNode):
        attributes[SUBPIPELINE] = node.pipeline
    return f"{node.type} {node.id}", attributes


class _Step:
    """What the tight path needs of one simple stage node, made once (see ``_plans``).

    ``done`` and ``finished`` are the frame's record and the node_finished
    payload once it has finished, shared: never changed, only read.

    ``direct`` says the node's arguments and outputs are top-level keys, its
    stage declares no argument or output contract and the node has no
    config: the loop then reads the arguments and writes the outputs itself
    (what ``StageExecutor.context`` and ``outputs`` do for such a node,
    without their calls and checks: "sequential stage node" row).
    """

    __slots__ = (
        "attributes",
        "direct",
        "done",
        "entry",
        "finished",
        "keys",
        "name",
        "node",
        "one",
        "outputs",
        "pairs",
        "single",
        "started",
    )

    def __init__(self, node: StageNode, entry: StageEntry) -> None:
        self.node = node
        self.entry = entry
        # The span's name and starting attributes, for a traced run (copied per span).
        self.name, self.attributes = _node_span(node)
        self.started = node_started_payload("stage")
        self.done = Finished(node.next)
        self.finished = node_finished_payload("stage", node.next, None)
        # The argument pairs (StageExecutor.context's ``pairs``) and output pairs.
        self.pairs = tuple(node.arguments.items())
        self.outputs = tuple(node.outputs.items())
        self.keys = tuple(node.outputs)  # the outputs' keys, to check
        # The output pair of a node with exactly one output, else empty.
        spec = entry.spec
        self.direct = (
            spec.arguments is None
            and spec.outputs is None
            and not node.config
            and all("." not in path for path in node.arguments.values())
            and all("." not in path for path in node.outputs.values())
        )
        # A direct node's one output pair, else empty.
        self.single: tuple[str, str] | tuple[()] = (
            self.outputs[0] if self.direct and len(self.outputs) == 1 else ()
        )
        # A direct node's one argument pair read from a root or subpipeline
        # context (a dict), else empty.
        self.one: tuple[str, str] | tuple[()] = (
            self.pairs[0] if self.direct and len(self.pairs) == 1 else ()
        )


class _Choice:
    """What the tight path needs of a condition node, made once (see ``_plans``).

    ``choices``: for each condition, then for ``else`` (its test ``None``),
    the test, the frame's record, the node_finished payload and the span's
    last attributes when it is taken (what ``Run._condition`` and
    ``execute()`` make per execution: "condition node" rows).
    """

    __slots__ = ("attributes", "choices", "name", "node", "started")

    def __init__(self, node: ConditionNode) -> None:
        self.node = node
        self.name, self.attributes = _node_span(node)
        self.started = node_started_payload("condition")
        targets: list[tuple[Callable[[Any], bool] | None, str, int | str]] = [
            (branch.matches, branch.then, index) for index, branch in enumerate(node.conditions)
        ]
        if node.else_ is not None:
            targets.append((None, node.else_, "else"))
        self.choices: tuple[
            tuple[Callable[[Any], bool] | None, Finished, Mapping[str, Any], dict[str, Any]], ...
        ] = tuple(
            (
                matches,
                Finished(then),
                node_finished_payload("condition", then, branch),
                # execute()'s ending for a condition; shared, only read.
                {CONDITION_BRANCH: str(branch), NEXT_NODE: then or ""},
            )
            for matches, then, branch in targets
        )


class _End:
    """What the tight path needs of a terminal node, made once (see ``_plans``).

    The span's name and starting attributes, the ``node_started`` and
    ``node_finished`` payloads and the frame's record once it has finished,
    shared: only read. The node itself is ended by ``Run._end_at``, as
    ``execute()`` ends it through ``Run._terminal`` (a run that completes
    makes two coroutines and the per-node tests less: "paused session ...
    time to resume" and "3-node run" rows).
    """

    __slots__ = ("attributes", "done", "finished", "name", "node", "started")

    def __init__(self, node: TerminalNode) -> None:
        self.node = node
        self.name, self.attributes = _node_span(node)
        self.started = node_started_payload("terminal")
        self.done = Finished(None)
        self.finished = node_finished_payload("terminal", None, None)


Planned = _Step | _Choice | _End | None
"""A node's plan (see ``_plans``)."""


def _plan(entries: Mapping[int, StageEntry]) -> IdentityCache[dict[str, Planned]]:
    """The plans of a resolved pipeline's graphs (see ``_plans``), filled as nodes are met."""
    plans = _plans.get(entries)
    return plans if plans is not None else _plans.put(entries, IdentityCache())


def _graph_plan(plans: IdentityCache[dict[str, Planned]], graph: Pipeline) -> dict[str, Planned]:
    """The plan of ``graph``'s nodes met so far, by node id (see ``_plans``)."""
    plan = plans.get(graph)
    return plan if plan is not None else plans.put(graph, {})


def _planned(plan: dict[str, Planned], node: Node, entries: Mapping[int, StageEntry]) -> Planned:
    """Decide, once, whether ``node`` takes the tight path; its plan if it does."""
    planned: Planned = None
    if isinstance(node, StageNode):
        entry = entries.get(id(node))
        if entry is not None and StageExecutor.simple(node, entry):
            planned = _Step(node, entry)
    elif isinstance(node, ConditionNode):
        planned = _Choice(node)
    elif isinstance(node, TerminalNode):
        planned = _End(node)
    plan[node.id] = planned
    return planned


# Limits -> the caps of a run that starts with no step and no event counted
# (a new session's first run), shared: a RunCaps is never changed once made,
# and every live waiting session keeps its run's ("paused session" rows: one
# object less for the collector to walk, and none made per run).
_first_caps: Final = IdentityCache[RunCaps]()


def _caps(limits: Limits, steps: int, events: int) -> RunCaps:
    """The caps of a run that starts at ``steps`` steps and ``events`` events."""
    if steps or events:
        return RunCaps(limits, steps, events)
    caps = _first_caps.get(limits)
    return caps if caps is not None else _first_caps.put(limits, RunCaps(limits, 0, 0))


# (pipeline name, digest) -> the payload of its session_started event, shared
# ("paused session, memory each" row: a payload per session otherwise).
_STARTED: Final[dict[tuple[str, str], Mapping[str, Any]]] = {}
_MAX_STARTED: Final = 1024


def _started_payload(pipeline: Pipeline) -> Mapping[str, Any]:
    """The ``session_started`` payload for ``pipeline``, shared: do not modify."""
    key = (pipeline.name, pipeline.digest)
    payload = _STARTED.get(key)
    if payload is None:
        payload = {"pipeline": pipeline.name, "digest": pipeline.digest}
        if len(_STARTED) < _MAX_STARTED:
            _STARTED[key] = payload
    return payload


# The awaited input types -> the payload of a session_suspended event without a
# timer, shared (History.record keeps payloads as given and hands out copies):
# a dict and a list the collector walks, in every suspended session's history,
# otherwise ("paused session, suspended" rows).
_SUSPENDED: Final[dict[tuple[str, ...], Mapping[str, Any]]] = {}
_MAX_SUSPENDED: Final = 1024


def _suspended_payload(waiting_for: frozenset[str], wake_at: str | None) -> Mapping[str, Any]:
    """The ``session_suspended`` payload (shared without ``wake_at``: do not modify)."""
    if wake_at is not None:
        return {"waiting_for": sorted(waiting_for), "wake_at": wake_at}
    key = tuple(sorted(waiting_for))
    payload = _SUSPENDED.get(key)
    if payload is None:
        payload = {"waiting_for": list(key), "wake_at": None}
        if len(_SUSPENDED) < _MAX_SUSPENDED:
            _SUSPENDED[key] = payload
    return payload


_SPAN_OUTCOME: Final = {
    SessionStatus.WAITING: "suspended",
    SessionStatus.COMPLETED: "succeeded",
    SessionStatus.FAILED: "failed",
    SessionStatus.TIMED_OUT: "timed_out",
    SessionStatus.CANCELLED: "cancelled",
}


class Run(StageRuntime):
    """One run of a session (see the module docstring).

    A run is its own stage runtime (:class:`StageRuntime`'s waits, sleeps and
    stage events; its hooks are the run's own methods): one object less
    that every live waiting session keeps and the collector walks ("paused
    session" rows). ``runtime`` is the run itself, seen as the runtime.
    """

    _state: SessionState

    __slots__ = (
        "_cancel_reasons",
        "_cancel_scope",
        "_caps",
        "_handled",
        "_live",
        "_main",
        "_node_log",
        "_records",
        "_root",
        "_simple",
        "_stopped",
        "_suspend",
        "_unstarted",
        "backend",
        "host",
        "loop_thread",
        "runtime",
        "suspending",
        "token",
    )

    def __init__(self, state: SessionState, *, suspend: bool) -> None:
        self._state = state
        self._suspend = suspend
        self.suspending = False  # set when every position blocks in suspend mode
        # Set when limits.max_run_seconds passed: positions are saved, the run torn down.
        self._stopped: LimitExceededError | None = None
        self._live = 1  # positions running: the main path, each branch, each map worker
        # Restored positions in flight that have not started again yet: their
        # steps are un-counted until they do, so a snapshot adds them back.
        self._unstarted = 0
        self.stop_outcome = "cancelled"  # span / cleanup outcome when the run is torn down
        # The event loop's primitives, token and thread, and the runtime: set
        # when the run starts (run()), on the event loop (a Run is made by
        # Session.run(), which may be called before the loop runs).
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.loop_thread = 0
        # Off trio, the task that called run(): a cancellation of another task
        # of the run's (a branch's) that no scope sent is a stage's own.
        self.host: asyncio.Task[Any] | None = None
        self._cancel_scope: CancelScopeLike | None = None
        # The exception the caller is handling where it awaits run() (see
        # _forget_frames): set while the run runs.
        self._handled: BaseException | None = None
        # Path prefix -> why it is cancelled; made when first needed (a live
        # paused session keeps its run: "paused session, memory each" row).
        self._cancel_reasons: dict[str, CancelReason] | None = None
        self._main = Scope(state.pipeline, 0)
        self._root: Frame | None = None  # the main path's frame while it runs
        # Node log lines are written only into a configured structlog.
        self._node_log = (
            _log.bind(session_id=state.session_id) if structlog.is_configured() else None
        )

    # ----------------------------------------------------- what executors use

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._state.session_id

    @property
    def history(self) -> History:
        """The session's history."""
        return self._state.history

    @property
    def limits(self) -> Limits:
        """The session's limits."""
        return self._state.limits

    @property
    def tracing(self) -> Tracing | None:
        """The session's tracing, or ``None``."""
        return self._state.tracing

    @property
    def metrics(self) -> Metrics | None:
        """The session's metrics, or ``None``."""
        return self._state.metrics

    @property
    def mode(self) -> ValidateEvents:
        """How the session checks inputs, events and stage contracts."""
        return self._state.mode

    @property
    def entries(self) -> Mapping[int, StageEntry]:
        """The registry entry of every stage node, by node identity."""
        return self._state.entries

    def random(self) -> float:
        """The next number of the session's seeded generator."""
        return self._state.random()

    def not_rerun(self, position: FramePosition) -> None:
        """A restored position that will not run again keeps the steps it had counted."""
        counted = count_positions(position)
        self._unstarted -= counted
        self._state.steps += counted

    def let_go(self, errors: Iterable[BaseException]) -> None:
        """Leave the engine's frames out of the failures a node held, as it ends.

        As for a routed error (``execute``): the frames of the branches or
        items that failed keep the failure in their locals, and its
        tracebacks keep those frames, a cycle that kept the run and the
        session's state for the collector. Each failure was reported (log
        line, span) where it was raised; the caller's handled exception is
        left alone. A held failure that the node raises is let go too: it is
        reported already, and a session's error or a routed one is walked
        again anyway (``_ended``, ``execute``).
        """
        for error in errors:
            self._forget_frames(error, self._handled)

    def cancelling(self, prefix: str, reason: CancelReason) -> None:
        """Say why the positions under path ``prefix`` are about to be cancelled (for spans)."""
        if self._cancel_reasons is None:
            self._cancel_reasons = {}
        self._cancel_reasons.setdefault(prefix, reason)

    def cancel_reason(self, path: str) -> CancelReason:
        """Why the position at ``path`` is being cancelled (``stageflow.cancel.reason``)."""
        for prefix, reason in (self._cancel_reasons or {}).items():
            if not prefix or path == prefix or path.startswith(f"{prefix}/"):
                return reason
        if self.stop_outcome == "suspended":
            return "suspended"
        if self._state.cancel_reason is not None:
            return "session_cancelled"
        scope = self._cancel_scope
        if scope is not None and anyio.current_time() >= scope.deadline:
            return "session_timeout"
        return "cancelled"

    def positions(self, change: int, settled: bool = False) -> None:
        """Count positions that start (branches, map workers) or end; check for idle.

        Positions that end in a cancelled group (``settled``) are no reason to
        suspend: its cancelled waits still count as blocked until they are
        torn down, and the node goes on once they are. Nor are positions that
        end because a scope around them is cancelled or past its deadline (a
        terminal reached in a branch, a node's timeout): the siblings it
        cancels still count as blocked, and the run goes on at the terminal
        or the timeout's error edge.
        """
        self._live += change
        if (
            change < 0
            and self._suspend
            and not settled
            and anyio.current_effective_deadline() > anyio.current_time()
        ):
            self.check_idle()
        elif (
            change < 0
            and self.runtime.long_blocks
            and anyio.current_effective_deadline() > anyio.current_time()
        ):
            # Not while the run is torn down (cancelled, past its deadline):
            # the waits still counted are ending too, in the segment that
            # the teardown started, not after a cut of their own.
            self.check_cut()

    def _segmenting(self) -> bool:
        """Whether long waits cut this run's trace (traced, a threshold, not suspend mode)."""
        tracing = self._state.tracing
        return tracing is not None and tracing.threshold is not None and not self._suspend

    def check_cut(self) -> None:
        """End the open spans when every position waits and one of them waits long."""
        tracing = self._state.tracing
        segments = tracing.segments if tracing is not None else None
        runtime = self.runtime
        if segments is None or not runtime.long_blocks:
            return
        if self._state.desk.broker.blocked + runtime.sleeping >= self._live:
            segments.cut()

    def _segment_root(self, root: SegmentedSpan) -> None:
        """A new segment started: snapshots and restored runs refer to its root."""
        self._state.root_ids = {"trace_id": root.ids[0], "span_id": root.ids[1]}

    # ------------------------------------------------------------------ run

    def cancel(self) -> None:
        """End the run from any task of its event loop (``Session.cancel``)."""
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def _start(self) -> None:
        """Take the event loop's primitives, token and thread; make the stage runtime."""
        state = self._state
        self.backend = current_backend()
        self.host = host_task(self.backend)
        self.token, self.loop_thread = loop_handles()
        # The tight path's plan, or None when every node goes through
        # execute(): decided once per run, not once per path (a map item's or
        # a branch's path is often one node: "map item" row).
        self._simple = _plan(state.entries) if _TIGHT and self._plain() else None
        # The session's UTC clock for deadlines: the wall clock at the start,
        # advanced by the event loop's clock (so virtual time moves it too).
        started_at = state.clock()
        if started_at.tzinfo is not datetime.UTC:  # the default clock's is: no conversion
            started_at = started_at.astimezone(datetime.UTC)
        StageRuntime.__init__(
            self,
            state,
            started_at=started_at,
            hooks=self,
            on_block=self._suspend,
            new_event=self.backend.event,
            loop_start=self.backend.current_time(),
            on_long_block=self._segmenting(),
            cut_after=state.tracing.threshold or 0.0 if state.tracing is not None else 0.0,
        )
        self.runtime: StageRuntime = self  # what executors call for waits and events

    async def run(self) -> SessionResult:
        """Run the session from its entry, or from where it was saved; the result.

        This is ``Session.run()``'s coroutine: the whole run, from the state
        check to the outcome, is one coroutine frame, which every live waiting
        session keeps ("paused session, memory each" row).

        Raises:
            SessionStateError: the session has finished or is running.
        """
        state = self._state
        # A run that has taken the session marks it running only once it has
        # started (another thread's run() may come in between).
        if state.run is not None or (
            state.status is not SessionStatus.PENDING and state.status is not SessionStatus.WAITING
        ):
            raise SessionStateError(
                f"session {state.session_id!r} is "
                f"{'running' if state.run is not None else state.status.value}; a session runs "
                "once, create a new Session to run the pipeline again"
            )
        state.final = None  # a restored pending session: what it saved is behind it now
        state.run = self
        self._handled = sys.exception()
        try:
            self._start()
            resume = self._resume()
            # The run's span, metrics and log lines: made and ended outside this
            # frame, so that it keeps no locals for them (see the docstring).
            try:
                observed = self._observe(resume) if self._observing() else None
            except Exception as exc:
                # A tracer or meter provider that raised (a span processor's
                # on_start): the session ends failed, as for a node's span,
                # not left running with no run.
                self._internal_error(exc)
                raise
            try:
                root = self._enter_root(resume)
                error: StageflowError | None = None
                # What goes up instead of a group the task groups wrapped it in,
                # raised below: out of the except clause, so that the group is
                # not made its __context__, and its own cause and context stay.
                escaping: BaseException | None = None
                try:
                    # The with statement written out: a with block keeps the
                    # scope's bound __exit__ on this frame's stack while the
                    # run waits, one more object per live waiting session for
                    # the collector to walk ("paused session" rows).
                    scope = self.backend.cancel_scope()
                    scope.__enter__()
                    try:
                        self._arm(scope, resume)
                        # A session cancelled before its first run ends
                        # without entering a node (no step counted for it).
                        if self._main.terminal is None and (
                            resume is not None or state.cancel_reason is None
                        ):
                            if state.limits.max_run_seconds is None:
                                await self.run_path(state.pipeline.entry, root, None)
                            else:
                                await self._run_main(root)
                    except BaseException as exc:
                        if not scope.__exit__(type(exc), exc, exc.__traceback__):
                            raise
                    else:
                        scope.__exit__(None, None, None)
                except StageflowError as exc:
                    error = exc
                except Exception as exc:
                    if self.suspending:
                        return self._suspended()
                    # A bug in stageflow: keep the history, then fail loudly.
                    self._internal_error(exc)
                    raise
                except BaseException as exc:
                    if self._stopped is not None:
                        # A limit's stop was tearing the run down (its positions
                        # saved, its history muted): it ends so; exc goes on up.
                        self._ended(None, False)
                    elif self.suspending and is_suspension(exc):
                        # The wait where the run suspends raised RunSuspended
                        # (the scope caught the cancellations of the others).
                        return await self._suspended_here()
                    elif not is_cancellation(exc, self.backend.cancelled):
                        # KeyboardInterrupt, SystemExit or a stage's own
                        # BaseException: it goes up, but the session ends
                        # (failed), not left running with no run.
                        self._interrupted(exc)
                    elif self.suspending:
                        # The task running us was cancelled from outside while
                        # the run was being suspended: it ends suspended (its
                        # snapshot is whole), and the cancellation goes on up
                        # (returned instead, asyncio's Task.cancel() was lost).
                        self._suspended()
                    else:
                        # The task running us was cancelled from outside: record, re-raise.
                        self._finish(
                            SessionStatus.CANCELLED,
                            None,
                            reason="the task running it was cancelled",
                        )
                    # It goes on up as it came, or, when the task groups of
                    # branches or map items wrapped it in a group (on trio a
                    # cancellation too), as the one exception it is about.
                    escaping = ungrouped(exc, self.backend.cancelled)
                    if escaping is exc:
                        # Its traceback holds this frame: the frame must not
                        # hold it (a cycle that kept the run and the session).
                        escaping = None
                        raise
                finally:
                    self._cancel_scope = None
                    self.token = None
                if escaping is not None:
                    try:
                        raise escaping
                    finally:
                        escaping = None  # as above
                return self._ended(error, scope.cancelled_caught)
            finally:
                if observed is not None:
                    self._observed(*observed)
        finally:
            state.last_node = self.current_node
            state.run = None
            self.host = None  # no cycle through a traceback that keeps this frame
            self._release()

    def _release(self) -> None:
        """Break the run's own reference cycles once it is over.

        The run is its own runtime and hooks, and a frame and its node's
        record in flight (a suspended or cancelled stage attempt, branch, map
        or subpipeline) refer to each other, a stage attempt to the run too.
        Left so, a run that ended is freed only by the cyclic collector, and
        with it the session it keeps (its state, history and context) once
        the caller drops it; and every run's objects count toward the
        collector's next pass ("paused session, time to pause / resume"
        rows). A context a stage kept past its attempt still says its
        attempt is over (``check_live``).
        """
        root, self._root = self._root, None
        if root is not None:
            release(root)
        self._handled = None
        # A stage's frame kept in a failed session's error keeps the stage's
        # context, which reaches the run: the run lets go of the state that
        # keeps the error (check_live says the attempt is over without it).
        del self._state
        # Not contextlib.suppress: 0.3 us more per run ("3-node run" row).
        try:  # noqa: SIM105
            del self._hooks, self.runtime  # set in this order by _start
        except AttributeError:  # _start raised before it set them
            pass

    @staticmethod
    def _forget_frames(error: BaseException, handled: BaseException | None) -> None:
        """Leave the engine's frames out of the tracebacks of ``error`` and the errors it chains.

        Not of ``handled`` and the errors it chains: the exception being
        handled where the run ends (the caller's, or the run's own stop), which
        a stage's error may chain as its context.

        The session keeps its error, and those frames keep (in their locals)
        the run, the session's state and the error itself: left in, a failed
        session is freed only by the collector. The frames are not changed
        (one of another run's may still be running, if a stage raised one
        exception object in two sessions); only the tracebacks let go of
        them. A stage's own frames stay in, with their locals: a stage's
        frame keeps its context, which reaches the run but no longer the
        session (``_release``).
        """
        theirs = Run._chain(handled, {}) if handled is not None else {}
        for exc in Run._chain(error, theirs).values():
            kept: TracebackType | None = None
            last: TracebackType | None = None
            tb = exc.__traceback__
            while tb is not None:
                if not tb.tb_frame.f_code.co_filename.startswith(_ENGINE_CODE):
                    if last is None:
                        kept = tb
                    else:
                        last.tb_next = tb
                    last = tb
                tb = tb.tb_next
            if last is not None:
                last.tb_next = None
            exc.__traceback__ = kept

    @staticmethod
    def _chain(error: BaseException, leave: dict[int, BaseException]) -> dict[int, BaseException]:
        """``error`` and the errors it chains (at most ``_CHAIN_LIMIT``), but for ``leave``'s.

        By identity: an exception class may define ``__eq__`` (and no hash).
        """
        found: dict[int, BaseException] = {}
        todo = [error]
        while todo and len(found) < _CHAIN_LIMIT:
            exc = todo.pop()
            key = id(exc)
            if key in found or key in leave:
                continue
            found[key] = exc
            # Written out, with no generator: a routed failure pays for this walk.
            more = exc.__cause__
            if more is not None:
                todo.append(more)
            more = exc.__context__
            if more is not None:
                todo.append(more)
            if isinstance(exc, BaseExceptionGroup):
                todo.extend(exc.exceptions)
        return found

    def _resume(self) -> FramePosition | None:
        """Ready the state for this run: where a waiting session goes on from (or ``None``)."""
        state = self._state
        resume: FramePosition | None = None
        saved = state.saved
        if state.status is SessionStatus.WAITING and saved is not None:
            # Taken, not copied: this run owns it from here on (a restored
            # stage's replay changes its journal entries). Nothing reads the
            # saved position again until a suspension or a limit's stop saves
            # a new one: a snapshot of the running session is taken from the
            # run ("paused session, suspended" and "as snapshot text" rows).
            resume = saved["position"]
            # The session's context is the position's already (SessionState.wait_at).
            self._main.ended_at(resume.get("terminal"))
            self._unstarted = count_positions(resume)
            state.steps = saved["steps"] - self._unstarted
            state.history.reopen()
            parked = parked_calls(resume)
            state.parked = {id(call): call for call in parked} if parked else None
        state.stopped_by_limit = None
        # Events counted as the caps count them: recorded rejections held
        # already have their own budget, as those recorded during the run.
        self._caps = _caps(
            state.limits, state.steps, len(state.history) - state.desk.recorded_rejections
        )
        self._records = state.history.records  # replaced only by a restore, never in a run
        state.status = SessionStatus.RUNNING
        return resume

    def _observing(self) -> bool:
        """Whether this run has a span, metrics or log lines of its own."""
        state = self._state
        return state.tracing is not None or state.metrics is not None or self._node_log is not None

    def _observe(self, resume: FramePosition | None) -> tuple[ActiveSpan | None, Any, float]:
        """Start the run's span, count it active, log its start: what _observed ends."""
        state = self._state
        tracing = state.tracing
        root_span: ActiveSpan | None = None
        if tracing is not None:
            root_span = self._root_span(tracing, state.saved if resume is not None else None)
        meters = state.metrics
        started = time.perf_counter()
        if meters is not None:
            meters.active.add(1, {PIPELINE_NAME: state.pipeline.name})
        log = self._node_log
        if log is not None:
            if root_span is not None:
                log = bind_span(log, root_span)
            log.info("session.started", pipeline=state.pipeline.name, resumed=resume is not None)
        return root_span, log, started

    def _observed(self, root_span: ActiveSpan | None, log: Any, started: float) -> None:
        """End what :meth:`_observe` started: the metrics, the log line, the span."""
        state = self._state
        tracing = state.tracing
        meters = state.metrics
        if meters is not None:
            session_measured(meters, state.pipeline.name, state.status.value, started)
        if log is not None:
            if root_span is not None and tracing is not None and tracing.segments is not None:
                log = bind_span(log, root_span)  # a cut since it started: the newest ids
            session_finished(log, state.status.value, state.error)
        if root_span is not None:
            outcome = _SPAN_OUTCOME.get(state.status, "cancelled")
            ending = {CANCEL_REASON: self.cancel_reason("")} if outcome == "cancelled" else None
            Tracing.end(root_span, outcome, state.error, ending)
            if tracing is not None:
                tracing.segments = None

    def _enter_root(self, resume: FramePosition | None) -> Frame:
        """The main path's frame; record ``session_started`` (or ``session_resumed``)."""
        state = self._state
        timeout = state.limits.timeout
        root = self._root = Frame(state.ctx, "", 0, self._main)
        root.resume = resume
        pipeline = state.pipeline
        if timeout is not None and (resume is None or state.deadline is None):
            # Before the event: a snapshot its subscribers take keeps it. (A
            # session restored with another limits.timeout has none yet.)
            state.deadline = self.at(timeout)
        if resume is None:
            state.history.record("session_started", None, "", _started_payload(pipeline))
        else:
            assert state.saved is not None
            resumed: dict[str, Any] = {
                "pipeline": pipeline.name,
                "digest": pipeline.digest,
                "node": resume["node"],
            }
            if state.saved["digest"] != pipeline.digest:
                resumed["previous_digest"] = state.saved["digest"]
            state.history.record("session_resumed", None, "", resumed)
            # The run has taken the position (_resume) and its span the trace
            # (_observe): nothing reads the rest until a suspension or a
            # limit's stop saves anew, and a session that runs live or has
            # completed does not keep it.
            state.saved = None
        return root

    def _arm(self, scope: CancelScopeLike, resume: FramePosition | None) -> None:
        """Set up the run's cancel scope: the session deadline, a cancel that came first."""
        state = self._state
        self._cancel_scope = scope
        timeout = state.limits.timeout
        passed = False
        if resume is None and timeout is not None:
            scope.deadline = anyio.current_time() + timeout
        elif state.deadline is not None:
            left = self.runtime.seconds_until(state.deadline)
            scope.deadline = anyio.current_time() + left
            # A deadline already passed (a run restored late) cancels now: trio
            # would notice it only at the next yield, after the nodes that
            # never await had run (asyncio's checkpoint notices it at once).
            passed = left <= 0
        if state.cancel_reason is not None or passed:
            scope.cancel()
        self._main.cancel = scope

    def _ended(self, error: StageflowError | None, timed_out: bool) -> SessionResult:
        """The outcome of a run whose main path returned or raised ``error``."""
        result = self._outcome(error, timed_out)
        if result.error is not None:
            # The session keeps its error, whose tracebacks keep this run's
            # frames, which keep the run and its state. The exception the
            # caller is handling (run() awaited in an except block), which a
            # stage's error has as its context, is the caller's: left as is.
            self._forget_frames(result.error, sys.exception())
        return result

    def _outcome(self, error: StageflowError | None, timed_out: bool) -> SessionResult:
        """The session's end for ``_ended``."""
        state = self._state
        if self._stopped is not None:
            state.history.muted = False
            return self._finish(SessionStatus.FAILED, self._stopped)
        if self.suspending:
            return self._suspended()
        if state.cancel_reason is not None:
            # cancel() came before the end (at the terminal, or as a failure
            # was on its way up, say): it is acted on.
            return self._finish(SessionStatus.CANCELLED, None, reason=state.cancel_reason)
        if error is not None:
            return self._finish(SessionStatus.FAILED, error)
        if self._main.terminal is not None:
            return self._finish(SessionStatus.COMPLETED, None)
        if timed_out:
            return self._finish(
                SessionStatus.TIMED_OUT,
                SessionTimeoutError(
                    f"session {state.session_id!r} passed its deadline of "
                    f"{state.limits.timeout:g} s (limits.timeout) before reaching a terminal "
                    "node; raise the limit or make the pipeline faster"
                ),
            )
        return self._finish(
            SessionStatus.FAILED, StageflowError("the run ended without reaching a terminal node")
        )

    def _root_span(self, tracing: Tracing, saved: Saved | None) -> ActiveSpan:
        """Start the run's root span (linked to the run that saved ``saved``, if any)."""
        state = self._state
        pipeline = state.pipeline
        origin = saved["trace"] if saved is not None else None
        if origin is not None and origin.get("open"):
            # The process that took the snapshot died with these spans open.
            rebuild(tracing.tracer, origin["open"], origin.get("seen") or time.time_ns())
        # Its open spans are kept whether or not waits cut it (no threshold,
        # suspend mode): a live snapshot lists them, for a crash's restore.
        tracing.segments = Segments(tracing.tracer, tracing.threshold or 0.0, self._segment_root)
        # A restored run outside any span of the caller's is a new trace,
        # sampled as the run that saved the snapshot was.
        with sampled_as(int(origin["trace_id"], 16) if origin else None):
            root_span = tracing.start(
                f"run {pipeline.name}",
                {
                    SESSION_ID: state.session_id,
                    PIPELINE_NAME: pipeline.name,
                    PIPELINE_DIGEST: pipeline.digest,
                },
                links=[restored_link(origin["trace_id"], origin["span_id"])] if origin else None,
            )
        state.root_ids = {"trace_id": root_span.ids[0], "span_id": root_span.ids[1]}
        return root_span

    async def _run_main(self, root: Frame) -> None:
        """The main path watched by a timer (``limits.max_run_seconds`` is set).

        Without that limit run() runs the main path itself: one coroutine
        frame less for every live waiting session ("paused session" rows).
        """
        entry = self._state.pipeline.entry
        seconds = self._state.limits.max_run_seconds
        assert seconds is not None
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._stop_after, seconds)
            try:
                await self.run_path(entry, root, None)
            except Exception as exc:  # raised below, not wrapped in the group's exception group
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _stop_after(self, seconds: float) -> None:
        """Stop the run when ``seconds`` have passed: save every position, then tear down.

        Like a step limit, it keeps where the session was (the stages in
        flight run again when it goes on), so it is saved before any branch
        or item is cancelled; the teardown is not part of the history.
        """
        await anyio.sleep(seconds)
        state = self._state
        if self.suspending or state.cancel_reason is not None or self._cancel_scope is None:
            return
        self._stopped = run_time_error(seconds, self.current_node or state.pipeline.entry)
        state.saved = self.saved_state()
        state.stopped_by_limit = self._stopped
        state.desk.broker.release()  # inputs sent from now on are queued, so they are kept
        self.cancelling("", "max_run_seconds")
        state.history.muted = True
        self._cancel_scope.cancel()

    def _finish(
        self, status: SessionStatus, error: StageflowError | None, *, reason: str | None = None
    ) -> SessionResult:
        state = self._state
        parked, state.parked = state.parked, None
        # Inputs sent to restored waits whose stages did not run again.
        unseen = tuple(parked.values()) if parked else ()
        return state.finish(status, error, self._main, reason=reason, unseen=unseen)

    def _internal_error(self, exc: Exception) -> None:
        """End the session failed by an error outside any node (the caller re-raises it)."""
        error = StageflowError(f"internal error: {type(exc).__name__}: {error_text(exc)}")
        error.__cause__ = exc
        self._finish(SessionStatus.FAILED, error)

    def _interrupted(self, exc: BaseException) -> None:
        """End the session by a BaseException that is no cancellation (the caller re-raises it).

        KeyboardInterrupt and SystemExit stop the program: the session ends
        ``cancelled``, with the reason. Any other (a stage's own BaseException)
        ends it ``failed``, with an error naming it.
        """
        leaf = deciding_leaf(exc, self.backend.cancelled)
        node = self.current_node
        where = f" at node {node!r}" if node is not None else ""
        text = error_text(leaf)
        said = f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            self._finish(SessionStatus.CANCELLED, None, reason=f"interrupted{where} by {said}")
            return
        error = StageflowError(
            f"the run was interrupted{where} by {said}; it went up to the caller of run() and "
            "the session ended failed (a stage that fails should raise an Exception, not a "
            "BaseException)"
        )
        error.__cause__ = leaf
        self._finish(SessionStatus.FAILED, error)

    def interruption(
        self, exc: BaseException, path: str, failed: dict[str, Any] | None
    ) -> tuple[str, BaseException | None, dict[str, Any] | None]:
        """Outcome, error and last span attributes of a span ``exc`` ends (no cancellation).

        As :meth:`_interrupted` ends the session: a KeyboardInterrupt or
        SystemExit cancels the spans it crosses; any other BaseException (a
        stage's own) fails them, with ``error.type`` and, where it was
        raised, the ``exception`` event (``failed``: the attributes then).
        """
        leaf = deciding_leaf(exc, self.backend.cancelled)
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            return "cancelled", None, {CANCEL_REASON: self.cancel_reason(path)}
        return "failed", leaf, failed

    def at(self, seconds: float) -> str:
        """The absolute time ``seconds`` from now on the session clock (ISO 8601)."""
        return after(self.clock(), seconds).isoformat()

    # --------------------------------------------------------------- suspend

    def check_idle(self) -> bool:
        """In suspend mode: suspend when every running position waits or sleeps.

        ``True`` when the run ends at this wait, suspended: the wait may
        then raise :class:`~stageflow.RunSuspended`.
        """
        state = self._state
        desk = state.desk
        blocked = desk.broker.blocked + self.runtime.sleeping
        if not (blocked and blocked >= self._live and not self.suspending):
            return False
        self.suspending = True
        self.stop_outcome = self.runtime.stop_outcome = "suspended"
        saved = state.saved = self.saved_state()
        waiting_for, wake_at = saved["awaited"] = awaited(saved["position"], state.deadline)
        # Inputs sent from now on (subscribers of the event below included)
        # are queued, so the snapshot keeps them.
        desk.broker.release()
        state.history.record(
            "session_suspended", None, "", _suspended_payload(waiting_for, wake_at)
        )
        # Tearing the run down is not part of the session's history.
        state.history.muted = True
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        # cancel() or the max_run_seconds stop was tearing the run down
        # already (a stage caught its cancellation and blocked again; a
        # subscriber of the event above cancelled): the run ends cancelled or
        # failed, not suspended here, and the wait is cancelled like the
        # others (after the stop RunSuspended went up from run()).
        return self._stopped is None and state.cancel_reason is None

    async def _suspended_here(self) -> SessionResult:
        """End a run suspended by :class:`RunSuspended`: as :meth:`_suspended`.

        A cancellation of the caller's that came meanwhile (trio delivers it
        at the next checkpoint, which RunSuspended did not wait for) goes on
        up from here, as it does when the run's scope meets it.
        """
        result = self._suspended()
        await self.backend.checkpoint()
        return result

    def _suspended(self) -> SessionResult:
        """End a suspended run: status ``waiting``, streams end, the snapshot is kept.

        A ``cancel()`` that came while the run was being suspended (from a
        subscriber of ``session_suspended``, say) ends the session instead.
        """
        state = self._state
        assert state.saved is not None
        state.history.muted = False
        self.suspending = False
        if state.cancel_reason is not None:
            state.saved = None
            return self._finish(SessionStatus.CANCELLED, None, reason=state.cancel_reason)
        # This run's streams end; one made while the session waits gets the
        # next run's events (as a restored session's does), not none.
        state.history.close()
        state.history.reopen()
        state.wait_at(state.saved)  # its context the saved position's own, as a restore's
        # The new position keeps the restored waits that did not run again; an
        # input parked in one whose branch was torn down (an ``any`` race decided
        # before its stage replayed it) is in no position any more: it is carried
        # as unseen, so the session discards it when it ends, never in silence.
        # Carried as a restored session carries it (no longer parked): no later
        # position holds it, so none may be taken for it.
        parked, state.parked = state.parked, None
        gone = not_kept(parked.values(), parked_calls(state.saved["position"])) if parked else ()
        if gone:
            carried: list[Call] = [{"wait": c["wait"], "payload": c["payload"]} for c in gone]
            state.unseen = [*(state.unseen or ()), *carried]
        # As check_idle found it, unless the saved state is another since.
        found = state.saved.pop("awaited", None)
        waiting_for, wake_at = found or awaited(state.saved["position"], state.deadline)
        return SessionResult(
            status=SessionStatus.WAITING,
            result=None,
            artifacts={},
            error=None,
            history=state.history.events,
            waiting_for=waiting_for,
            wake_at=datetime.datetime.fromisoformat(wake_at) if wake_at else None,
        )

    # ------------------------------------------------------------- snapshots

    def saved_state(self) -> Saved:
        """What this run would resume from: its positions and counters, now."""
        state = self._state
        assert self._root is not None
        return {
            "position": self.frame_state(self._root, state.pipeline.entry, True),
            "steps": state.steps + self._unstarted,
            "trace": self.trace_ids(),
            "digest": state.pipeline.digest,
        }

    def trace_ids(self) -> TraceIds | None:
        """The root span of this session's last traced run, for a snapshot."""
        ids = self._state.root_ids
        if ids is None:
            return None
        saved: TraceIds = {"trace_id": ids["trace_id"], "span_id": ids["span_id"]}
        tracing = self._state.tracing
        if tracing is not None and tracing.segments is not None and not self.suspending:
            # A live snapshot: if this process dies, a restore rebuilds these.
            spans = tracing.segments.snapshot()
            if spans:
                saved["open"] = spans
                saved["seen"] = time.time_ns()
        return saved

    @property
    def current_node(self) -> str | None:
        """The node the main path is at (``None`` before it starts)."""
        return self._root.node if self._root is not None else None

    def frame_state(self, frame: Frame, entry: str, full: bool) -> FramePosition:
        """A frame as the snapshot keeps it, with whatever runs inside its node."""
        if frame.resume is not None and (frame.node is None or frame.work is None):
            # Not yet started again, or started but its executor has not taken
            # over the restored record (its journal) yet: the record as restored.
            restored: FramePosition = copy_json(frame.resume)
            return restored
        node_id = frame.node or entry
        state: FramePosition = {"path": frame.path, "node": node_id}
        if frame.node is None:
            state["next"] = entry  # the path has not started: it starts at its entry
        state["visits"] = frame.visits
        if full:
            data = frame.ctx.data
            # A dict (the main path's, a subpipeline run's) is copied once, not
            # twice ("paused session, suspended" rows).
            state["context"] = copy_json(data if type(data) is dict else dict(data))
            terminal = frame.scope.terminal
            if terminal is not None:
                # A terminal in a branch ended this pipeline; the other branches
                # are being cancelled. The restored run ends there too.
                state["terminal"] = {
                    "node": terminal.id,
                    "artifacts": copy_json(frame.scope.artifacts),
                }
        else:
            state["writes"] = writes_of(frame.ctx)
        node = frame.scope.pipeline.node(node_id)
        work = frame.work
        if "next" in state:
            pass
        elif isinstance(work, Finished) and not isinstance(node, TerminalNode):
            state["next"] = work.next  # a terminal runs again: it ends its pipeline
        elif isinstance(node, StageNode):
            state["stage"] = StageExecutor.save(work)
        elif isinstance(work, ParallelRun):
            state["parallel"] = _PARALLEL.save(self, work)
        elif isinstance(work, MapRun):
            state["map"] = _MAP.save(self, work)
        elif isinstance(work, SubpipelineRun):
            state["subpipeline"] = _SUBPIPELINE.save(self, work)
        return state

    # ------------------------------------------------------------ choke point

    async def run_path(
        self,
        node_id: str | None,
        frame: Frame,
        stop: str | None,
        flags: tuple[Any, Any, Any] | None = None,
    ) -> None:
        """Run nodes from ``node_id`` until a node has no ``next`` or ``stop`` is reached.

        A restored frame starts instead at the node its snapshot names.
        ``flags``: the running task's cancellation flags (see ``Kernel.run_path``).
        """
        index = frame.scope.pipeline.node_index
        # Read from the frame, not kept in locals: every local is 8 B more
        # in the frame a live waiting session keeps ("paused session, memory
        # each" row), as is every slot of the deepest call's stack.
        if frame.resume is not None:
            # The node in flight runs again as the same visit (the same execution key).
            frame.visits = frame.resume.get("visits", 0)
            if frame.visits and "next" not in frame.resume:
                frame.visits -= 1
            try:
                if "next" in frame.resume:
                    node_id = frame.resume["next"]  # its node had finished
                else:
                    self._unstarted -= 1  # counted again as it starts
                    node_id = await self.execute(index[frame.resume["node"]], frame)
            finally:
                frame.resume = None
        state = self._state
        if self._simple is None:
            while node_id is not None and node_id != stop:
                node_id = await self.execute(index[node_id], frame)
            return
        simple = _graph_plan(self._simple, frame.scope.pipeline)
        # Made once per path, not per node ("sequential stage node" row): the
        # history's records (replaced only by a restore, never during a run),
        # what the cancellation test reads.
        history = state.history
        records = self._records
        backend = self.backend
        status: Any
        runner: Any
        task: Any
        # Unpacked at once: the flags' tuple is not kept in the frame of a
        # path that waits ("paused session, memory each" row). A map worker
        # reads them once for all its items ("map item" row).
        status, runner, task = flags or cancel_flags(backend, self.host) or NO_FLAGS
        flags = None
        caps = self._caps
        # The event cap in record slots, without the recorded rejections'
        # budget on top of it: that only grows during a run, so the whole
        # test is needed only past this ("sequential stage node" row).
        event_slots = caps.events * RECORD_SLOTS
        runtime = self.runtime
        tracing, meters = state.tracing, state.metrics
        path = frame.path
        context = frame.ctx
        # A root or subpipeline context is a dict: its top-level keys are read
        # and written as dict items. A fork's are read from its maps in order
        # and written into the first, recorded as written (Context.layers: a
        # map item's or a branch's path, "map item" and "parallel branch" rows).
        data = context.data
        top = type(data) is dict
        layers = None if top else context.layers()
        # What a node leaves in this frame's locals, declared here (no code)
        # for the release before a node that may wait (below).
        ctx: StageContext | None
        view: Mapping[str, Any] | None
        outputs: Any
        value: Any
        error: BaseException | None
        span: ActiveSpan | None
        # The clock, read once for a node's node_finished and the next node's
        # node_started, recorded back to back with nothing awaited between
        # them: they happen within a microsecond, the resolution events have
        # (as Run.run_items does; docs/concepts.md, "Events and subscribers";
        # "sequential stage node" row). None: read it again.
        now: int | None = None
        while node_id is not None and node_id != stop:
            step = simple.get(node_id, _UNSEEN)
            if step is _UNSEEN:
                step = _planned(simple, index[node_id], state.entries)
            if step is None:
                # This frame is what a waiting session keeps: a node that
                # may wait for days must not keep alive what earlier nodes
                # left in its locals (an argument view over copied values,
                # a stage's outputs, an error and its traceback, an ended
                # span). Only here and before a stage's own await below.
                ctx = view = outputs = value = error = span = now = None
                node_id = await self.execute(index[node_id], frame)
                continue
            node = step.node  # the same node, typed
            # The tight path ("sequential stage node", "condition node",
            # "1,000-node chain", "SDK ... per node", "MeterProvider: per
            # node" and "paused session ... time to resume" rows): a simple
            # stage node (one attempt, no timeout, no cleanup), a condition
            # node or a terminal of a run without node log lines,
            # executed here instead of through execute() and
            # StageExecutor.run(): two coroutine levels and the per-node
            # checks for logs less. It does what execute() does for such a
            # node, in the same order, its span and duration metric
            # included: the property test in tests/engine/test_tight_path.py
            # holds the two paths equal.
            #
            # _enter, written out (the same steps in the same order: keep them
            # alike): count the step and visit, check the limits, then the
            # scheduling point, awaited only when it does something.
            frame.node = node_id
            frame.work = None
            frame.visits += 1
            steps = state.steps = state.steps + 1
            if steps > caps.steps or (
                len(records) >= event_slots
                and len(records) >= (caps.events + state.desk.recorded_rejections) * RECORD_SLOTS
            ):
                raise self._stop_at_limit(node, frame)
            if not steps & _YIELD_EVERY:
                await backend.yield_()
                now = None
            elif (
                status is None
                or status.effectively_cancelled
                or (runner.ki_pending and task is runner.main_task)
            ):
                await backend.checkpoint()
                now = None
            # execute()'s span (its outcome, error and last attributes) and
            # duration metric.
            span = None if tracing is None else tracing.start(step.name, dict(step.attributes))
            if meters is not None:
                started = time.perf_counter()
            outcome = "failed"
            error = None
            ending: dict[str, Any] | None = None
            try:
                # History.record's append, written out while nothing watches.
                if history.quiet:
                    if now is None:
                        now = _time_ns() // 1000
                    records += ("node_started", now, node_id, path, step.started)
                else:
                    # The span's ids given, not looked up in the context
                    # (as execute() does; "SDK ... per node" row).
                    history.record(
                        "node_started",
                        node_id,
                        path,
                        step.started,
                        active_ids(span),
                    )
                try:
                    if type(step) is _Choice:
                        # Run._condition, with its outcomes made once.
                        try:
                            for matches, done, finished, taken in step.choices:  # noqa: B007 (read after break)
                                if matches is None or matches(data):
                                    break
                            else:
                                await self._condition(step.node, frame)  # raises ConditionError
                                raise AssertionError("no condition matched")  # pragma: no cover
                        except JsonLogicError:
                            # A rule past a JsonLogic bound: the error that names the node.
                            await self._condition(step.node, frame)  # raises ConditionError
                            raise
                        # Set once a choice is taken: a test that raises leaves it None.
                        ending = taken
                    elif type(step) is _End:
                        # Run._terminal, without its coroutine.
                        done, finished = step.done, step.finished
                        self._end_at(step.node, frame)
                    else:
                        done, finished = step.done, step.finished
                        entry = step.entry
                        # StageExecutor.run's one attempt, written out.
                        # The arguments' view, bound for every stage node,
                        # and the dict behind it never left in a local: this
                        # frame is what a waiting session keeps, and a node
                        # that waits must not keep an earlier node's argument
                        # copies alive. No arguments: the shared empty view,
                        # and no empty dict ("paused session" rows).
                        view = EMPTY_MAPPING
                        if step.direct:
                            # StageExecutor.context for top-level keys, no contract, no config.
                            if top and step.one:
                                # The one-argument case of the loop below, in one
                                # go ("sequential stage node" row): keep them alike.
                                name, key = step.one
                                value = data.get(key, MISSING)
                                if value is not MISSING:
                                    view = MappingProxyType(
                                        {
                                            name: value
                                            if type(value) in PLAIN_SCALARS
                                            else copy_json(value)
                                        }
                                    )
                            elif step.pairs:
                                arguments: dict[str, Any] = {}
                                for name, key in step.pairs:
                                    if top:
                                        value = data.get(key, MISSING)
                                    elif layers is not None:
                                        for layer in layers[0]:
                                            value = layer.get(key, MISSING)
                                            if value is not MISSING:
                                                break
                                    else:
                                        value = context.get(key)
                                    if value is not MISSING:
                                        arguments[name] = (
                                            value
                                            if type(value) in PLAIN_SCALARS
                                            else copy_json(value)
                                        )
                                if arguments:
                                    view = MappingProxyType(arguments)
                                del arguments
                            ctx = frame.work = stage_work(
                                runtime, node, frame, view, state.session_id, entry.spec
                            )
                        else:
                            ctx = StageExecutor.context(
                                self, node, frame, entry, 1, None, step.pairs
                            )
                        try:
                            outputs = value = None  # an earlier node's (see above)
                            outputs = await (
                                entry.function
                                if entry.function is not None
                                else entry.factory().run
                            )(ctx)
                            if status is None and task is not None and task.cancelling():
                                # Off trio, in a branch's or an item's task: a
                                # stage's own Task.cancel() of it fails its node,
                                # not the next one this task runs.
                                await take_stray_request(task)
                            if step.single and type(outputs) is dict:
                                # The one-output case of the loops below, in one
                                # go ("sequential stage node" row): keep them alike.
                                key, target = step.single
                                value = outputs.get(key, EMPTY_MAPPING)
                                kind = type(value)
                                if not (
                                    kind is str
                                    or (kind is int and value.bit_length() < SAFE_INT_BITS)
                                    or value is None
                                    or kind is bool
                                ):
                                    StageExecutor.outputs(self, node, frame, entry, outputs)
                                elif top:
                                    data[target] = value
                                elif layers is not None:
                                    layers[0][0][target] = value
                                    if layers[1] is not None:
                                        layers[1][target] = None
                                else:
                                    context.set(target, value)
                            elif step.direct and type(outputs) is dict:
                                # StageExecutor.outputs' usual case: every output a
                                # str, small int, bool or None, written as returned.
                                for key in step.keys:
                                    value = outputs.get(key, EMPTY_MAPPING)
                                    kind = type(value)
                                    if not (
                                        kind is str
                                        or (kind is int and value.bit_length() < SAFE_INT_BITS)
                                        or value is None
                                        or kind is bool
                                    ):
                                        StageExecutor.outputs(self, node, frame, entry, outputs)
                                        break
                                else:
                                    for key, target in step.outputs:
                                        if top:
                                            data[target] = outputs[key]
                                        elif layers is not None:
                                            layers[0][0][target] = outputs[key]
                                            if layers[1] is not None:
                                                layers[1][target] = None
                                        else:
                                            context.set(target, outputs[key])
                            else:
                                StageExecutor.outputs(self, node, frame, entry, outputs)
                        except NodeError as exc:
                            if exc.node_id != node.id:  # another node's: see StageExecutor.run
                                raise StageExecutor.failure(node, 1, 1, exc) from exc
                            raise
                        except Exception as exc:
                            raise StageExecutor.failure(node, 1, 1, exc) from exc
                        except BaseException as exc:  # looked at and re-raised (see run)
                            # In ``error`` (None until then), not a local more.
                            error = stage_failure(exc, backend, self.host)
                            if error is not None:
                                raise StageExecutor.failure(node, 1, 1, error) from error
                            raise
                except Exception as exc:
                    now = None  # the next node's start reads the clock again
                    error = exc
                    if isinstance(exc, TimeoutError):
                        outcome = "timed_out"
                    ending = {ERROR_HANDLED: False}
                    history.record(
                        "node_failed",
                        node_id,
                        path,
                        {"node_type": node.type, "error": describe_exception(exc)},
                        active_ids(span),
                    )
                    node_id = self._route_error(node, frame, exc)
                    ending[ERROR_HANDLED] = True
                    continue
                except BaseException as exc:  # looked at and re-raised (see run)
                    if is_cancellation(exc, backend.cancelled):
                        outcome = self.stop_outcome
                        ending = None if span is None else {CANCEL_REASON: self.cancel_reason(path)}
                        history.record(
                            "node_cancelled",
                            node_id,
                            path,
                            {"node_type": node.type},
                            active_ids(span),
                        )
                    else:  # KeyboardInterrupt, a stage's own BaseException
                        outcome, error, ending = self.interruption(
                            exc, path, {ERROR_HANDLED: False}
                        )
                        history.record(
                            _ended_by(outcome, "node_failed", "node_cancelled"),
                            node_id,
                            path,
                            _with_error({"node_type": node.type}, error),
                            active_ids(span),
                        )
                    raise
                outcome = "succeeded"
                frame.work = done  # a snapshot from here on resumes at the next node
                if history.quiet:
                    now = _time_ns() // 1000
                    records += ("node_finished", now, node_id, path, finished)
                else:
                    now = None
                    history.record(
                        "node_finished",
                        node_id,
                        path,
                        finished,
                        active_ids(span),
                    )
                node_id = done.next
            finally:
                if self._cancel_reasons:
                    self._cancel_reasons.pop(f"{path}/{node.id}" if path else node.id, None)
                if meters is not None:  # before the span ends: the span is the exemplar
                    if span is not None:
                        measured_in(span)
                    node_measured(meters, frame.scope.pipeline.name, node, outcome, started)
                if span is not None:
                    Tracing.end(span, outcome, error, ending)

    def _enter(self, node: Node, frame: Frame) -> Awaitable[None]:
        """Count ``node``'s step and visit and check the limits (``execute``'s steps).

        Returns the scheduling point to await before the node runs: a
        cancellation check, so that a cancel() from a hook or a stage takes
        effect before the next node even when no stage ever awaits; and every
        so many nodes a real yield, so that other tasks (a cancel() from one
        of them, a deadline) get in between nodes that never await. The tight
        path in ``run_path`` writes these steps out, testing the cancellation
        flags itself (``cancel_flags``): keep the two alike.
        """
        frame.node = node.id
        frame.work = None
        frame.visits += 1
        state = self._state
        steps = state.steps = state.steps + 1
        caps = self._caps
        # Recorded rejections have a budget of their own, outside the event cap.
        # The events held, counted in record slots: no History.__len__ call.
        if (
            steps > caps.steps
            or len(self._records) >= (caps.events + state.desk.recorded_rejections) * RECORD_SLOTS
        ):
            raise self._stop_at_limit(node, frame)
        if not steps & _YIELD_EVERY:
            return self.backend.yield_()
        return self.backend.checkpoint()

    def _plain(self) -> bool:
        """Whether this run makes no node log lines (the tight path's case)."""
        return self._node_log is None

    async def execute(self, node: Node, frame: Frame) -> str | None:
        """Execute one node: the one place for events, spans, logs, limits and error edges."""
        await self._enter(node, frame)
        state = self._state
        history = state.history
        tracing = state.tracing
        span: ActiveSpan | None = None
        if tracing is not None:
            name, attributes = _node_span(node)
            span = tracing.start(name, attributes)
        meters = state.metrics
        log = self._node_log
        if log is not None or meters is not None:
            started = time.perf_counter()
        if log is not None:
            log = log.bind(node_id=node.id, node_type=node.type, path=frame.path)
            if span is not None:
                log = bind_span(log, span)
            log.info("node.started")
        # history.record is called, not kept in a local: a bound method in the
        # locals of a frame that waits is kept by every waiting session and
        # walked by the collector ("paused session" rows).
        outcome = "failed"
        error: BaseException | None = None
        ending: dict[str, Any] | None = None  # span attributes known only at the end
        try:
            # The node span's ids given, not looked up: a stage that leaves
            # a context of its own attached does not change them.
            history.record(
                "node_started",
                node.id,
                frame.path,
                node_started_payload(node.type)
                if frame.resume is None
                else {"node_type": node.type, "resumed": True},
                active_ids(span),
            )
            try:
                next_id = await _EXECUTORS[node.type](self, node, frame)
            except Exception as exc:
                error = exc
                if isinstance(exc, TimeoutError):
                    outcome = "timed_out"
                ending = {ERROR_HANDLED: False}
                history.record(
                    "node_failed",
                    node.id,
                    frame.path,
                    {"node_type": node.type, "error": describe_exception(exc)},
                    active_ids(span),
                )
                routed = self._route_error(node, frame, exc)
                ending[ERROR_HANDLED] = True
                return routed
            except BaseException as exc:  # looked at and re-raised (see run)
                if is_cancellation(exc, self.backend.cancelled):
                    outcome = self.stop_outcome
                    if span is not None or log is not None:
                        ending = {CANCEL_REASON: self.cancel_reason(frame.path)}
                    history.record(
                        "node_cancelled",
                        node.id,
                        frame.path,
                        {"node_type": node.type},
                        active_ids(span),
                    )
                else:  # KeyboardInterrupt, a stage's own BaseException
                    outcome, error, ending = self.interruption(
                        exc, frame.path, {ERROR_HANDLED: False}
                    )
                    history.record(
                        _ended_by(outcome, "node_failed", "node_cancelled"),
                        node.id,
                        frame.path,
                        _with_error({"node_type": node.type}, error),
                        active_ids(span),
                    )
                raise
            outcome = "succeeded"
            frame.work = Finished(next_id)  # a snapshot from here on resumes at next_id
            # Which condition matched (its index, or "else"), for coverage tools.
            branch = frame.branch
            if branch is not None:
                if span is not None:
                    ending = {CONDITION_BRANCH: str(branch), NEXT_NODE: next_id or ""}
                frame.branch = None
            history.record(
                "node_finished",
                node.id,
                frame.path,
                node_finished_payload(node.type, next_id, branch),
                active_ids(span),
            )
            return next_id
        finally:
            if self._cancel_reasons:
                self._cancel_reasons.pop(f"{frame.path}/{node.id}" if frame.path else node.id, None)
            if meters is not None:  # before the span ends: the span is the exemplar
                if span is not None:
                    measured_in(span)
                node_measured(meters, frame.scope.pipeline.name, node, outcome, started)
            if span is not None:
                Tracing.end(span, outcome, error, ending)
            if log is not None:
                if span is not None and tracing is not None and tracing.segments is not None:
                    log = bind_span(log, span)  # a cut since it started: the newest ids
                node_finished(log, outcome, error, ending, time.perf_counter() - started)
            if (
                error is not None
                and node.type in _RUNS_POSITIONS
                and ending is not None
                and ending.get(ERROR_HANDLED)
            ):
                # Routed to an error edge, and reported above: nothing keeps
                # the error now but the frames its tracebacks hold, of this
                # node's executor, branches, items or subpipeline, whose
                # locals hold it (a cycle that kept them, and the run, for
                # the collector). They leave its tracebacks, as a failed
                # session's error leaves them (_ended).
                self._forget_frames(error, self._handled)
            # A routed error's traceback holds this frame, so this frame must
            # not hold the error: that cycle kept the error, and the run
            # through the frames of a node torn down under it, for the collector.
            error = None

    def _stop_at_limit(self, node: Node, frame: Frame) -> LimitExceededError:
        """A step or event limit stops the run before ``node``: keep where it was, to resume."""
        state = self._state
        if state.stopped_by_limit is not None:
            # A second position (a sibling branch or map item) reached the
            # limit before the first one's stop cancelled it: the first stop
            # is the one to resume from, and the error the run ends with.
            # This position's step was refused, not run: it does not count
            # (a snapshot taken while the run unwinds would be past the limit).
            state.steps -= 1
            return state.stopped_by_limit
        error = self._caps.error(
            node.id, state.steps, len(state.history) - state.desk.recorded_rejections
        )
        # Taken before anything unwinds: a restore with the limit raised goes on from here.
        state.saved = self.saved_state()
        state.stopped_by_limit = error
        # Inputs sent from now on are queued, kept in the backlog for that
        # restore: a wait the saved positions hold unanswered must not take
        # one while the run unwinds (its stage would run again without it).
        state.desk.broker.release()
        return error

    def _route_error(self, node: Node, frame: Frame, exc: Exception) -> str:
        """Follow the node's first matching error edge, or re-raise ``exc``."""
        handlers: tuple[ErrorHandler, ...] = getattr(node, "error_handlers", ())
        if handlers and not isinstance(exc, LimitExceededError):
            for index, handler in enumerate(handlers):
                if error_matches(exc, handler.errors):
                    description = describe_exception(exc)
                    try:
                        frame.ctx.set(handler.error_path, description)
                    except ContextPathError as unwritable:
                        # The failure stays the cause: it is what went wrong.
                        edges = len(getattr(node, "on_error", ()))
                        edge = f"on_error[{index}]" if index < edges else "fallback"
                        raise NodeError(
                            f"node {node.id!r} failed, and its error edge "
                            f"({frame.scope.pipeline.location(node.id)}.{edge}) could not "
                            f"write the error at {handler.error_path!r}: {unwritable}; give "
                            "the edge an error_path that crosses no scalar",
                            node_id=node.id,
                        ) from exc
                    # Handled: a snapshot from here on goes to the handler.
                    dropped, frame.work = frame.work, Finished(handler.next)
                    # Branches, items or a subpipeline torn down under it: no
                    # cycle of theirs keeps the run once it ends.
                    release_under(dropped)
                    self._state.history.record(
                        "error_routed",
                        node.id,
                        frame.path,
                        {"next": handler.next, "error_path": handler.error_path, "handler": index},
                    )
                    return handler.next
        raise exc

    async def run_child(
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
    ) -> bool:
        """Run a branch or a map item: its events, span and outcome (see ``Kernel``)."""
        state = self._state
        # ``span`` is made only when the run is traced.
        active = None if span is None or state.tracing is None else state.tracing.start(*span)
        history = state.history
        outcome = "cancelled"
        error: BaseException | None = None
        ending: dict[str, Any] | None = None
        path = frame.path
        try:
            # History.record's append, written out while nothing watches
            # ("map item" and "parallel branch" rows), as in run_path.
            if history.quiet:
                self._records.extend((kind.started, _time_ns() // 1000, node_id, path, payload))
            else:
                history.record(kind.started, node_id, path, payload)
            try:
                await self.run_path(entry, frame, stop, flags)
            except Exception as exc:
                outcome, error = "failed", exc
                settle(exc, False)
                history.record(
                    kind.failed,
                    node_id,
                    frame.path,
                    {**payload, "error": describe_exception(exc)},
                )
                return False
            except BaseException as exc:  # looked at and re-raised (see run)
                if is_cancellation(exc, self.backend.cancelled):
                    outcome = self.stop_outcome
                    if active is not None:
                        ending = {CANCEL_REASON: self.cancel_reason(frame.path)}
                    settle(None, True)
                    history.record(kind.cancelled, node_id, frame.path, payload)
                else:  # KeyboardInterrupt, a stage's own BaseException
                    outcome, error, ending = self.interruption(exc, frame.path, None)
                    ended = _ended_by(outcome, kind.failed, kind.cancelled)
                    history.record(ended, node_id, frame.path, _with_error(payload, error))
                raise
            outcome = "succeeded"
            settle(None, False)
            if history.quiet:
                self._records.extend((kind.finished, _time_ns() // 1000, node_id, path, payload))
            else:
                history.record(kind.finished, node_id, path, payload)
            return True
        finally:
            if active is not None:
                Tracing.end(active, outcome, error, ending)

    def item_step(self, body: str, scope: Scope) -> _Step | None:
        """The plan of a map body whose new items ``run_items`` runs; ``None`` for ``run_child``.

        A body of one simple, direct stage node (see ``_Step``) with no
        ``next`` and no error edges, in a run on the tight path that is
        neither traced nor metered. Decided once per map worker.
        """
        state = self._state
        if self._simple is None or state.tracing is not None or state.metrics is not None:
            return None
        simple = _graph_plan(self._simple, scope.pipeline)
        step = simple.get(body, _UNSEEN)
        if step is _UNSEEN:
            step = _planned(simple, scope.pipeline.node_index[body], state.entries)
        if (
            type(step) is not _Step
            or not step.direct
            or step.node.next is not None
            or step.node.error_handlers
        ):
            return None
        return step

    async def run_items(self, step: _Step, run: MapRun, flags: tuple[Any, Any, Any]) -> None:
        """Run a map's new items whose body is ``step`` (see ``item_step``), one after another.

        For each item what the map worker, ``run_child`` and ``run_path``'s
        tight path do for it, in the same order (its fork and frame, events,
        ``frame.work`` states, limits, the cancellation test, its outcome
        settled before its last event), in the worker's own coroutine: no
        coroutine, settle call or fork made per item beyond what the item
        needs ("map item" row). Returns when no new item is left, or after
        cancelling the map when it fails fast. No span and no metric
        (``item_step`` rules them out). The property test in
        tests/engine/test_tight_path.py holds it equal to the general path:
        keep ``MapExecutor._worker``, ``run_child``, ``run_path`` and this alike.
        """
        state = self._state
        history = state.history
        records = self._records
        caps = self._caps
        backend = self.backend
        kind = MAP_ITEM
        status, runner, task = flags
        mapped = run.node
        node_id = mapped.id
        items, running, collected = run.items, run.running, run.collected
        total = len(items)
        item_path, index_path = mapped.item_path, mapped.index_path
        fork = run.frame.ctx.fork_layers
        base, depth, scope = run.base, run.depth, run.frame.scope
        origin_of = f"{run.visit}:"  # an item's origin is this and its path
        # Each collected path, whether it is a top-level key (read from the
        # item fork's own map) and the list it is collected into.
        collect = tuple((source, "." not in source, collected[source]) for source in mapped.collect)
        node = step.node
        body = node.id
        entry = step.entry
        spec = entry.spec
        pairs, outputs_of = step.pairs, step.outputs
        started, finished, done = step.started, step.finished, step.done
        runtime, session_id = self.runtime, state.session_id
        # The clock, read once for events recorded back to back with no await
        # between them (an item's end and the next item's start, an item's
        # start and its node's): they happen within a microsecond, the
        # resolution events have ("map item" row). None: read it again.
        now: int | None = None
        while run.next < total:
            index = run.next
            run.next = index + 1
            # The fork is made with the item and its index, and the frame by
            # slot stores (what MapExecutor._new_item and _item_frame do;
            # keep them alike).
            value = items[index]
            own = {
                item_path: value if type(value) in PLAIN_SCALARS else copy_json(value),
                index_path: index,
            }
            path = f"{base}/{index}"
            context, maps, written = fork(own)
            frame = _new(Frame)
            frame.ctx = context
            frame.path = path
            frame.depth = depth
            frame.scope = scope
            frame.branch = None
            frame.contributes = False
            frame.node = None
            frame.work = None
            frame.resume = None
            frame.visits = 0
            frame.origin = origin_of + path
            # An item that raises (it was cancelled or interrupted) stays in
            # ``running``: a snapshot taken while the map is torn down keeps
            # it, and the session restored from it runs the item again.
            running[index] = frame
            payload = {"index": index}
            if history.quiet:
                if now is None:
                    now = _time_ns() // 1000
                records += (kind.started, now, node_id, path, payload)
            else:
                history.record(kind.started, node_id, path, payload)
            try:
                # run_path's tight path for one stage node, written out.
                frame.node = body
                frame.visits = 1
                steps = state.steps = state.steps + 1
                if (
                    steps > caps.steps
                    or len(records) >= (caps.events + state.desk.recorded_rejections) * RECORD_SLOTS
                ):
                    raise self._stop_at_limit(node, frame)
                if not steps & _YIELD_EVERY:
                    await backend.yield_()
                    now = None
                elif (
                    status is None
                    or status.effectively_cancelled
                    or (runner.ki_pending and task is runner.main_task)
                ):
                    await backend.checkpoint()
                    now = None
                try:
                    if history.quiet:
                        if now is None:
                            now = _time_ns() // 1000
                        records += ("node_started", now, body, path, started)
                    else:
                        history.record("node_started", body, path, started, None)
                    now = None  # the stage awaits from here
                    try:
                        view: Mapping[str, Any] = EMPTY_MAPPING
                        if pairs:
                            arguments: dict[str, Any] = {}
                            for name, key in pairs:
                                for layer in maps:
                                    value = layer.get(key, MISSING)
                                    if value is not MISSING:
                                        break
                                if value is not MISSING:
                                    arguments[name] = (
                                        value if type(value) in PLAIN_SCALARS else copy_json(value)
                                    )
                            if arguments:
                                view = MappingProxyType(arguments)
                        ctx = frame.work = stage_work(runtime, node, frame, view, session_id, spec)
                        try:
                            function = entry.function
                            if function is None:
                                function = entry.factory().run
                            outputs = await function(ctx)
                            if status is None and task is not None and task.cancelling():
                                await take_stray_request(task)  # as in run_path
                            if type(outputs) is dict:
                                for key, _ in outputs_of:
                                    value = outputs.get(key, EMPTY_MAPPING)
                                    kind_ = type(value)
                                    if not (
                                        kind_ is str
                                        or (kind_ is int and value.bit_length() < SAFE_INT_BITS)
                                        or value is None
                                        or kind_ is bool
                                    ):
                                        StageExecutor.outputs(self, node, frame, entry, outputs)
                                        break
                                else:
                                    for key, target in outputs_of:
                                        own[target] = outputs[key]
                                        written[target] = None
                            else:
                                StageExecutor.outputs(self, node, frame, entry, outputs)
                        except NodeError as exc:
                            if exc.node_id != node.id:  # another node's: see StageExecutor.run
                                raise StageExecutor.failure(node, 1, 1, exc) from exc
                            raise
                        except Exception as exc:
                            raise StageExecutor.failure(node, 1, 1, exc) from exc
                        except BaseException as exc:  # looked at and re-raised (see run)
                            failed = stage_failure(exc, backend, self.host)
                            if failed is not None:
                                raise StageExecutor.failure(node, 1, 1, failed) from failed
                            raise
                    except Exception as exc:
                        history.record(
                            "node_failed",
                            body,
                            path,
                            {"node_type": node.type, "error": describe_exception(exc)},
                            None,
                        )
                        raise  # no error edges (item_step)
                    except BaseException as exc:  # looked at and re-raised (see run)
                        if is_cancellation(exc, backend.cancelled):
                            history.record(
                                "node_cancelled", body, path, {"node_type": node.type}, None
                            )
                        else:  # KeyboardInterrupt, a stage's own BaseException
                            outcome, error, _ = self.interruption(exc, path, None)
                            history.record(
                                _ended_by(outcome, "node_failed", "node_cancelled"),
                                body,
                                path,
                                _with_error({"node_type": node.type}, error),
                                None,
                            )
                        raise
                    frame.work = done  # a snapshot from here on: the node finished
                    if history.quiet:
                        now = _time_ns() // 1000
                        records += ("node_finished", now, body, path, finished)
                    else:
                        history.record("node_finished", body, path, finished, None)
                finally:
                    if self._cancel_reasons:
                        self._cancel_reasons.pop(f"{path}/{body}", None)
            except Exception as exc:
                # Settled before the event (see Kernel.run_child).
                run.failures.append((index, exc))
                del running[index]  # a snapshot must not run it again
                release(frame)  # its stage attempt refers back to it (as MapExecutor's settle)
                history.record(
                    kind.failed, node_id, path, {**payload, "error": describe_exception(exc)}
                )
                if len(run.failures) > mapped.tolerated(total) or isinstance(
                    exc, LimitExceededError
                ):
                    assert run.cancel is not None
                    self.cancelling(base, "sibling_failed")
                    run.cancel.cancel()  # fail fast: cancel the items still running
                    return
                continue
            except BaseException as exc:  # looked at and re-raised (see run)
                if is_cancellation(exc, backend.cancelled):
                    history.record(kind.cancelled, node_id, path, payload)
                else:  # KeyboardInterrupt, a stage's own BaseException
                    outcome, error, _ = self.interruption(exc, path, None)
                    ended = _ended_by(outcome, kind.failed, kind.cancelled)
                    history.record(ended, node_id, path, _with_error(payload, error))
                raise
            # Settled before the event: what the item wrote at each collected
            # path (see MapExecutor._worker's settle; keep them alike).
            for source, top, values in collect:
                if top:
                    value = own.get(source, MISSING)
                else:
                    value = context.get(source) if context.wrote(source) else MISSING
                values[index] = (
                    None
                    if value is MISSING
                    else value
                    if type(value) in PLAIN_SCALARS
                    else copy_json(value)
                )
            run.done += 1
            del running[index]  # a snapshot must not run it again
            if history.quiet and now is not None:
                records += (kind.finished, now, node_id, path, payload)
            else:
                history.record(kind.finished, node_id, path, payload)

    # ---------------------------------------------- conditions and terminals

    async def _condition(self, node: ConditionNode, frame: Frame) -> str | None:
        data = frame.ctx.data
        for index, branch in enumerate(node.conditions):
            try:
                matched = branch.matches(data)
            except JsonLogicError as exc:
                where = f"{frame.scope.pipeline.location(node.id)}.conditions[{index}].if"
                raise ConditionError(
                    f"condition node {node.id!r}: the 'if' of conditions[{index}] ({where}) "
                    f"cannot be evaluated against the context: {exc}",
                    node_id=node.id,
                ) from exc
            if matched:
                frame.branch = index
                return branch.then
        if node.else_ is not None:
            frame.branch = "else"
            return node.else_
        raise ConditionError(
            f"condition node {node.id!r} ({frame.scope.pipeline.location(node.id)}): none of "
            f"its {len(node.conditions)} conditions matched and it has no 'else'; add an "
            "'else' target or a condition that always matches",
            node_id=node.id,
        )

    async def _terminal(self, node: TerminalNode, frame: Frame) -> str | None:
        self._end_at(node, frame)
        return None

    def _end_at(self, node: TerminalNode, frame: Frame) -> None:
        """End ``frame``'s pipeline at the terminal ``node``: its artifacts, its end."""
        get = frame.ctx.get
        scope = frame.scope
        scope.artifacts = {path: copy_json(get(path, None)) for path in node.artifacts}
        scope.terminal = node
        if frame.depth > scope.depth and scope.cancel is not None:
            # A terminal inside a branch ends its whole pipeline (the session,
            # or the subpipeline call it runs in).
            if scope.depth == 0:
                self.cancelling("", "terminal_reached")
            scope.cancel.cancel()


# The executors hold no state: one of each serves every run, and the run
# passes itself to them. A class-level table instead of one per run ("paused
# session, memory each" benchmark row: a live run is kept by every waiting session).
_PARALLEL: Final = ParallelExecutor()
_MAP: Final = MapExecutor()
_SUBPIPELINE: Final = SubpipelineExecutor()
_EXECUTORS: Final[Mapping[str, Callable[[Run, Any, Frame], Awaitable[str | None]]]] = (
    MappingProxyType(
        {
            "stage": StageExecutor().run,
            "condition": Run._condition,
            "parallel": _PARALLEL.run,
            "terminal": Run._terminal,
            "subpipeline": _SUBPIPELINE.run,
            "map": _MAP.run,
        }
    )
)


def _ended_by(outcome: str, failed: str, cancelled: str) -> str:
    """The event that ends a node, branch or item an interruption crossed (see ``interruption``)."""
    return failed if outcome == "failed" else cancelled


def _with_error(payload: Mapping[str, Any], error: BaseException | None) -> dict[str, Any]:
    """``payload``, with the error described when there is one."""
    if error is None:
        return dict(payload)
    return {**payload, "error": describe_exception(error)}
