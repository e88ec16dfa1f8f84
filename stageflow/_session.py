"""The session: runs one pipeline against one context.

Every node, wherever it runs (main path or a parallel branch), goes through
:meth:`Session._execute`, the one choke point for events, limits, error edges
and cancellation. Sequential nodes are awaited in the session's own task;
tasks are started only for real concurrency (parallel branches), always inside
a task group owned by :meth:`Session.run`.
"""

from __future__ import annotations

import datetime
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs
import sniffio
import structlog
import trio
from opentelemetry import trace

from stageflow._composite import CompositeNodes
from stageflow._context import Context
from stageflow._deadlines import after
from stageflow._desk import InputDesk
from stageflow._errors import (
    ConditionError,
    LimitExceededError,
    NonJsonValueError,
    PipelineValidationError,
    Problem,
    SessionStateError,
    SessionTimeoutError,
    SnapshotError,
    StageflowError,
    describe_exception,
    error_matches,
)
from stageflow._events import Event, EventCallback, EventStream, History
from stageflow._inputs import InputReceipt
from stageflow._json import copy_json, find_non_json
from stageflow._log import get_logger
from stageflow._model import (
    ConditionNode,
    ErrorHandler,
    Limits,
    MapNode,
    Node,
    ParallelNode,
    StageNode,
    SubpipelineNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._parallel_node import ParallelNodes
from stageflow._pipeline import Pipeline
from stageflow._result import SessionResult, SessionStatus
from stageflow._snapshot import (
    DONE,
    awaited,
    check_document,
    check_nodes,
    count_positions,
    event_from_dict,
    mismatch,
    restore_error,
    writes_of,
)
from stageflow._snapshot import FORMAT as SNAPSHOT_FORMAT
from stageflow._snapshot import VERSION as SNAPSHOT_VERSION
from stageflow._snapshot_check import consistency_problems
from stageflow._stage_node import StageNodes
from stageflow._stages import StageEntry, StageRegistry, default_registry
from stageflow._telemetry import (
    ATTEMPT,
    NODE_ID,
    NODE_TYPE,
    PIPELINE_DIGEST,
    PIPELINE_NAME,
    POLICY,
    SESSION_ID,
    STAGE,
    ActiveSpan,
    current_ids,
    enter_span,
    exit_span,
    resolve_tracer,
    restored_link,
)
from stageflow._version import __version__

__all__ = ["Session"]

_log = get_logger("stageflow.session")

_FINISHED: Final = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
        SessionStatus.TIMED_OUT,
    }
)
_SPAN_OUTCOME: Final = {
    SessionStatus.WAITING: "suspended",
    SessionStatus.COMPLETED: "succeeded",
    SessionStatus.FAILED: "failed",
    SessionStatus.TIMED_OUT: "failed",
    SessionStatus.CANCELLED: "cancelled",
}
_FINAL_EVENT: Final = {
    SessionStatus.COMPLETED: "session_completed",
    SessionStatus.FAILED: "session_failed",
    SessionStatus.CANCELLED: "session_cancelled",
    SessionStatus.TIMED_OUT: "session_timed_out",
}


class _Scope:
    """One pipeline run inside the session: the main pipeline, or a subpipeline call."""

    __slots__ = ("artifacts", "cancel", "depth", "pipeline", "terminal")

    def __init__(self, pipeline: Pipeline, depth: int) -> None:
        self.pipeline = pipeline
        self.depth = depth  # the depth of the frame its entry runs in
        self.terminal: TerminalNode | None = None
        self.artifacts: dict[str, Any] = {}
        self.cancel: anyio.CancelScope | None = None  # ends the run at a terminal in a branch

    def ended_at(self, terminal: Mapping[str, Any] | None) -> bool:
        """Restore the terminal a snapshot says this run had reached; whether it had."""
        if terminal is None:
            return False
        node = self.pipeline.node(terminal["node"])
        assert isinstance(node, TerminalNode)
        self.terminal = node
        self.artifacts = terminal["artifacts"]
        return True


class _Frame:
    """Where a node runs: its context, its path, its nesting depth and pipeline scope.

    ``node`` and ``work`` say what the frame is doing right now (the node in
    flight and its handler's state: a stage's context, a parallel or map run,
    a subpipeline's frame; or DONE, with ``next``, once the node has finished
    but the frame has not moved on), which is what a snapshot records. ``resume`` is
    the snapshot frame a restored run starts this frame from.
    """

    __slots__ = ("branch", "ctx", "depth", "next", "node", "path", "resume", "scope", "work")

    def __init__(self, ctx: Context, path: str, depth: int, scope: _Scope) -> None:
        self.ctx = ctx
        self.path = path
        self.depth = depth
        self.scope = scope
        self.branch: int | str | None = None  # set by a condition for its node_finished
        self.node: str | None = None
        self.work: Any = None  # DONE once the node has finished (then ``next`` says where to)
        self.next: str | None = None
        self.resume: dict[str, Any] | None = None


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _graphs(prefix: str, pipeline: Pipeline) -> Iterator[tuple[str, Pipeline]]:
    """The pipeline and every subpipeline it declares, with their document locations."""
    yield prefix, pipeline
    for name, child in pipeline.subpipelines.items():
        yield from _graphs(f"{prefix}.subpipelines.{name}", child)


class Session(StageNodes, ParallelNodes, CompositeNodes):
    """One run of a pipeline, with its own context and event history.

    Args:
        pipeline: the pipeline to run.
        registry: where stages are looked up (the default registry if not given).
        payload: the initial context, a JSON object (copied; yours is not modified).
        session_id: an id for logs, events and spans (a random UUID if not given).
        limits: bounds for this session (the pipeline's ``limits`` if not given).
        validate_events: how inputs and stage events are checked against
            declared schemas (the pipeline's ``validate_events`` if not given).
        seed: seeds the random jitter of retry delays (for reproducible runs).
        tracer_provider: where spans go (the global OpenTelemetry provider if
            not given). Without a real provider no span objects are created.
        clock: returns the current time as an aware UTC datetime (the system
            clock if not given). Read when a run starts; the deadlines a
            snapshot keeps (sleeps, input timeouts, retry delays, the session
            deadline) are absolute times on it.

    Raises:
        PipelineValidationError: a stage the pipeline uses is not in ``registry``.
        NonJsonValueError: ``payload`` is not a JSON object.

    Example::

        session = stageflow.Session(pipeline, payload={"user_id": "u1"})
        result = await session.run()
        print(result.status, result.result, result.artifacts)
    """

    # Slots: a session waiting in memory costs what it holds, no instance dict.
    __slots__ = (
        "_cancel_reason",
        "_cancel_scope",
        "_checkpoint",
        "_clock",
        "_ctx",
        "_deadline",
        "_desk",
        "_draws",
        "_entries",
        "_error",
        "_final",
        "_history",
        "_limits",
        "_live",
        "_loop_thread",
        "_main",
        "_mode",
        "_node_log",
        "_open_task_group",
        "_outcome",
        "_pipeline",
        "_registry",
        "_rng",
        "_root",
        "_root_ids",
        "_saved",
        "_seed",
        "_status",
        "_steps",
        "_stop_outcome",
        "_suspend",
        "_suspending",
        "_token",
        "_tracer",
        "_tracer_provider",
        "session_id",
    )
    _frame_type = _Frame
    _scope_type = _Scope

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        registry: StageRegistry | None = None,
        payload: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        limits: Limits | None = None,
        validate_events: ValidateEvents | str | None = None,
        seed: int | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._registry = registry if registry is not None else default_registry()
        self._entries = self._resolve_stages(pipeline, self._registry)
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise NonJsonValueError("the session payload", payload, detail="it must be an object")
        bad = find_non_json(payload, "payload")
        if bad is not None:
            raise NonJsonValueError(bad[0], bad[1], detail=bad.reason)
        self.session_id = session_id or str(uuid.uuid4())
        self._limits = limits if limits is not None else pipeline.limits
        self._mode = mode = ValidateEvents(validate_events or pipeline.validate_events)
        self._ctx = Context(copy_json(payload))
        self._history = History(self.session_id)
        self._desk = InputDesk(
            self._history, self._limits, mode, [entry.spec for entry in self._entries.values()]
        )
        self._seed = seed
        self._rng: random.Random | None = None  # built when a jittered retry needs it
        self._draws = 0  # numbers drawn from it (a snapshot replays them)
        self._clock = clock if clock is not None else _utc_now
        self._deadline: str | None = None  # the session deadline, absolute (ISO 8601)
        # Suspend mode: positions running (not blocked in a wait or sleep).
        self._suspend = False
        self._suspending = False
        self._live = 0
        self._stop_outcome = "cancelled"  # span / cleanup outcome when a run is torn down
        # What a WAITING session resumes from (a restore, or its own suspension):
        # its positions, step counter, the run span that saved them, the digest.
        self._saved: dict[str, Any] | None = None
        self._outcome: dict[str, Any] | None = None  # a restored finished session's result
        # A restored session that is not active: its position and trace as saved, so
        # that its snapshot says the same (the run that reached them is gone).
        self._final: dict[str, Any] | None = None
        self._root_ids: tuple[str, str] | None = None  # the run's root span, for snapshots
        self._status = SessionStatus.PENDING
        self._steps = 0
        self._main = _Scope(pipeline, 0)
        self._root: _Frame | None = None  # the main path's frame while it runs
        self._cancel_scope: anyio.CancelScope | None = None
        self._cancel_reason: str | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._tracer_provider = tracer_provider
        # Decided once per run: a tracer (or None: no spans at all), and
        # whether node log lines are written (only into a configured structlog).
        self._tracer: trace.Tracer | None = None
        self._node_log: Any = None
        self._open_task_group: Callable[[], Any] = anyio.create_task_group
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint_if_cancelled
        self._error: StageflowError | None = None

    @staticmethod
    def _resolve_stages(pipeline: Pipeline, registry: StageRegistry) -> dict[int, StageEntry]:
        """The registry entry of every stage node (subpipelines included), by node identity."""
        entries: dict[int, StageEntry] = {}
        problems: list[Problem] = []
        for prefix, graph in _graphs("$", pipeline):
            for i, node in enumerate(graph.nodes):
                if not isinstance(node, StageNode):
                    continue
                if node.stage in registry:
                    entries[id(node)] = registry.get(node.stage)
                else:
                    problems.append(
                        Problem(
                            f"{prefix}.nodes[{i}].stage",
                            f"stage node {node.id!r} uses stage {node.stage!r}, which this "
                            f"session's registry does not have (known: "
                            f"{', '.join(registry.names()) or 'none'}); register it",
                        )
                    )
        if problems:
            raise PipelineValidationError(problems, source=pipeline.name)
        return entries

    # ------------------------------------------------------------------ public

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline this session runs."""
        return self._pipeline

    @property
    def status(self) -> SessionStatus:
        """Where the session is in its life."""
        return self._status

    @property
    def payload(self) -> Mapping[str, Any]:
        """The main context as it is now (read-only view; kept after a failure)."""
        return MappingProxyType(self._ctx.data)

    @property
    def history(self) -> tuple[Event, ...]:
        """Every event recorded so far."""
        return tuple(self._history.events)

    def events(self, *, buffer: int = 1024) -> EventStream:
        """Subscribe to events from now on; iterate with ``async for``.

        The iterator ends when the session finishes.

        Args:
            buffer: how many events may wait for a slow reader; beyond that
                the newest are dropped for this reader and the next event it
                gets is a ``subscriber_overflow`` marker with the count (the
                history keeps them all). ``0`` means unbounded.
        """
        return self._history.stream(buffer)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on.

        A callback that raises is logged and detached; it never breaks the
        run. Returns a function that unsubscribes.
        """
        return self._history.subscribe(callback)

    def waiting_for(self) -> frozenset[str]:
        """The input types some stage is waiting for right now.

        For a ``waiting`` session (suspended, or restored and not yet run):
        the types its stages will wait for when it runs again.
        """
        if self._status is SessionStatus.WAITING and self._saved is not None:
            return awaited(self._saved["position"], None)[0]
        return self._desk.waiting_for()

    def send_input(self, type: str, payload: Any) -> InputReceipt:
        """Send an external input to the session (from any task of its event loop).

        Every stage waiting for ``type`` right now receives ``payload``
        (broadcast). When none waits, the input is queued (up to
        ``limits.max_input_backlog`` per type) for the next stage that does.
        May be called before ``run()`` to queue inputs.

        Returns:
            how many waiters got it, or that it was queued.

        Raises:
            SessionStateError: the session has finished.
            InputRejectedError: the backlog is full, the payload is not JSON,
                too large, or (``validate_events="strict"``) invalid; an
                ``input_rejected`` event is recorded.
        """
        if self._status in _FINISHED:
            raise SessionStateError(
                f"session {self.session_id!r} is {self._status.value}; it takes no more inputs "
                f"(input {type!r} was not delivered)"
            )
        return self._desk.send(type, payload)

    def send_input_from_thread(self, type: str, payload: Any) -> InputReceipt:
        """Like :meth:`send_input`, from a thread that is not the event loop's.

        For example a web framework's worker thread. Blocks until the event
        loop has taken the input.

        Raises:
            SessionStateError: the session is not running.
        """
        token = self._token
        if threading.get_ident() == self._loop_thread:
            raise SessionStateError(
                f"session {self.session_id!r}: send_input_from_thread was called on the event "
                "loop's own thread, where it would block the loop; call send_input instead"
            )
        if token is None or self._status is not SessionStatus.RUNNING:
            raise SessionStateError(
                f"session {self.session_id!r} is {self._status.value}; send_input_from_thread "
                "needs a running session (use send_input before run())"
            )
        return anyio.from_thread.run_sync(self.send_input, type, payload, token=token)

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the run from any task; ``run()`` returns with status ``cancelled``.

        The reason is recorded in the history. A ``waiting`` session
        (suspended or restored) ends ``cancelled`` at once. Cancelling a
        finished session does nothing.
        """
        if self._status in _FINISHED:
            return
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._status is SessionStatus.WAITING:
            # Nothing runs: it ends now, so a snapshot taken next says so.
            self._history.reopen()
            self._finish(SessionStatus.CANCELLED, None, reason=self._cancel_reason)
        elif self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def run(self, *, suspend: bool = False) -> SessionResult:
        """Run the pipeline to its end and return the outcome.

        Failures do not raise: they end the run with status ``failed`` (or
        ``timed_out``) and a typed ``error``. Cancelling the task that awaits
        ``run()`` records ``session_cancelled`` and re-raises the cancellation.

        A ``waiting`` session (suspended, or restored with
        :meth:`from_dict`) goes on from where it stopped.

        Args:
            suspend: also stop as soon as every active position (the main
                path, each branch, each map item) waits for an input or a
                timer. The result then has status ``waiting``, the awaited
                input types and the earliest timer deadline; ``to_dict()``
                gives the snapshot to keep, and ``run()`` goes on.

        Raises:
            SessionStateError: the session has finished or is running.
        """
        if self._status is not SessionStatus.PENDING and self._status is not SessionStatus.WAITING:
            raise SessionStateError(
                f"session {self.session_id!r} is {self._status.value}; a session runs once, "
                "create a new Session to run the pipeline again"
            )
        resume: dict[str, Any] | None = None
        saved = self._saved
        if self._status is SessionStatus.WAITING and saved is not None:
            resume = copy_json(saved["position"])
            self._ctx = Context(resume["context"])
            self._main = _Scope(self._pipeline, 0)
            self._main.ended_at(resume.get("terminal"))
            self._steps = saved["steps"] - count_positions(resume)
            self._history.reopen()
        self._status = SessionStatus.RUNNING
        self._suspend = suspend
        self._suspending = False
        self._stop_outcome = "cancelled"
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._tracer = tracer = resolve_tracer(self._tracer_provider, __version__)
        # On trio, use its primitives directly: a raw nursery costs a third of
        # anyio's task group per child, and the per-node cancellation check a third.
        on_trio = sniffio.current_async_library() == "trio"
        self._open_task_group = trio.open_nursery if on_trio else anyio.create_task_group
        self._checkpoint = (
            trio.lowlevel.checkpoint_if_cancelled
            if on_trio
            else anyio.lowlevel.checkpoint_if_cancelled
        )
        # The session's UTC clock for deadlines: the wall clock at the start,
        # advanced by the event loop's clock (so virtual time moves it too).
        started_at = self._clock().astimezone(datetime.UTC)
        loop_start = anyio.current_time()
        self._desk.clock = lambda: after(started_at, anyio.current_time() - loop_start)
        if suspend:
            self._desk.on_block = self._check_idle
        if structlog.is_configured():
            self._node_log = _log.bind(session_id=self.session_id)
        root_span: ActiveSpan | None = None
        if tracer is not None:
            origin = saved["trace"] if resume is not None and saved is not None else None
            root_span = enter_span(
                tracer,
                f"run {self._pipeline.name}",
                {
                    SESSION_ID: self.session_id,
                    PIPELINE_NAME: self._pipeline.name,
                    PIPELINE_DIGEST: self._pipeline.digest,
                },
                links=[restored_link(origin["trace_id"], origin["span_id"])] if origin else None,
            )
            self._root_ids = root_span.ids[:2]
            self._history.span_source = current_ids
            self._desk.traced = True
        try:
            return await self._run_root(resume)
        finally:
            if root_span is not None:
                exit_span(root_span, _SPAN_OUTCOME.get(self._status, "cancelled"), self._error)
                self._history.span_source = None
            self._desk.clock = self._clock
            self._desk.on_block = None

    async def _run_root(self, resume: dict[str, Any] | None) -> SessionResult:
        timeout = self._limits.timeout
        root = self._root = _Frame(self._ctx, "", 0, self._main)
        root.resume = resume
        if resume is None:
            self._history.record(
                "session_started",
                None,
                "",
                {"pipeline": self._pipeline.name, "digest": self._pipeline.digest},
            )
            if timeout is not None:
                self._deadline = self._at(timeout)
        else:
            assert self._saved is not None
            resumed: dict[str, Any] = {
                "pipeline": self._pipeline.name,
                "digest": self._pipeline.digest,
                "node": resume["node"],
            }
            if self._saved["digest"] != self._pipeline.digest:
                resumed["previous_digest"] = self._saved["digest"]
            self._history.record("session_resumed", None, "", resumed)
        error: StageflowError | None = None
        cancelled_exc = anyio.get_cancelled_exc_class()
        self._live = 1
        try:
            with anyio.CancelScope() as scope:
                self._cancel_scope = scope
                if resume is None and timeout is not None:
                    scope.deadline = anyio.current_time() + timeout
                elif self._deadline is not None:
                    scope.deadline = anyio.current_time() + self._desk.seconds_until(self._deadline)
                if self._cancel_reason is not None:
                    scope.cancel()
                self._main.cancel = scope
                if self._main.terminal is None:
                    await self._run_path(self._pipeline.entry, root, None)
        except cancelled_exc:
            if self._suspending:
                return self._suspended()
            # The task running us was cancelled from outside: record, re-raise.
            self._finish(SessionStatus.CANCELLED, None, reason="the task running it was cancelled")
            raise
        except StageflowError as exc:
            error = exc
        except Exception as exc:
            if self._suspending:
                return self._suspended()
            # A bug in stageflow: keep the history, then fail loudly.
            error = StageflowError(f"internal error: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._finish(SessionStatus.FAILED, error)
            raise
        finally:
            self._cancel_scope = None
            self._token = None
        if self._suspending:
            return self._suspended()
        if error is not None:
            return self._finish(SessionStatus.FAILED, error)
        if self._main.terminal is not None:
            return self._finish(SessionStatus.COMPLETED, None)
        if self._cancel_reason is not None:
            return self._finish(SessionStatus.CANCELLED, None, reason=self._cancel_reason)
        if scope.cancelled_caught:
            return self._finish(
                SessionStatus.TIMED_OUT,
                SessionTimeoutError(
                    f"session {self.session_id!r} passed its deadline of "
                    f"{self._limits.timeout:g} s (limits.timeout) before reaching a terminal "
                    "node; raise the limit or make the pipeline faster"
                ),
            )
        error = StageflowError("the run ended without reaching a terminal node")
        return self._finish(SessionStatus.FAILED, error)

    def _finish(
        self, status: SessionStatus, error: StageflowError | None, *, reason: str | None = None
    ) -> SessionResult:
        self._status = status
        self._error = error
        completed = status is SessionStatus.COMPLETED
        terminal = self._main.terminal
        result = copy_json(terminal.result) if completed and terminal else None
        artifacts = self._main.artifacts if completed else {}
        described = describe_exception(error) if error is not None else None
        # Kept before the final event, so a snapshot taken by its subscribers has it.
        self._outcome = {
            "result": copy_json(result),
            "artifacts": copy_json(artifacts),
            "error": described,
        }
        payload: dict[str, Any] = {"status": status.value, "steps": self._steps}
        if described is not None:
            payload["error"] = copy_json(described)
        if reason is not None:
            payload["reason"] = reason
        self._history.record(_FINAL_EVENT[status], None, "", payload)
        self._history.close()
        return SessionResult(
            status=status,
            result=result,
            artifacts=artifacts,
            error=error,
            history=tuple(self._history.events),
        )

    # --------------------------------------------------------------- suspend

    def _positions(self, change: int) -> None:
        """Count positions that start (branches, map workers) or end; check for idle."""
        self._live += change
        if change < 0 and self._suspend:
            self._check_idle()

    def _not_rerun(self, position: dict[str, Any]) -> None:
        """A restored position that will not run again keeps the steps it had counted."""
        self._steps += count_positions(position)

    def _random(self) -> float:
        """The next number of the session's seeded generator (a snapshot counts them)."""
        if self._rng is None:
            self._rng = random.Random(self._seed)
        self._draws += 1
        return self._rng.random()

    def _check_idle(self) -> None:
        """In suspend mode: suspend when every running position waits or sleeps."""
        desk = self._desk
        blocked = desk.broker.blocked + desk.sleeping
        if blocked and blocked >= self._live and not self._suspending:
            self._suspending = True
            self._stop_outcome = "suspended"
            saved = self._saved = self._saved_state()
            waiting_for, wake_at = awaited(saved["position"], self._deadline)
            # Inputs sent from now on (subscribers of the event below included)
            # are queued, so the snapshot keeps them.
            desk.broker.release()
            self._history.record(
                "session_suspended",
                None,
                "",
                {"waiting_for": sorted(waiting_for), "wake_at": wake_at},
            )
            # Tearing the run down is not part of the session's history.
            self._history.muted = True
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()

    def _suspended(self) -> SessionResult:
        """End a suspended run: status ``waiting``, streams end, the snapshot is kept."""
        assert self._saved is not None
        self._history.muted = False
        self._history.close()
        self._suspending = False
        self._status = SessionStatus.WAITING
        waiting_for, wake_at = awaited(self._saved["position"], self._deadline)
        return SessionResult(
            status=SessionStatus.WAITING,
            result=None,
            artifacts={},
            error=None,
            history=tuple(self._history.events),
            waiting_for=waiting_for,
            wake_at=datetime.datetime.fromisoformat(wake_at) if wake_at else None,
        )

    # ------------------------------------------------------------- snapshots

    def _at(self, seconds: float) -> str:
        """The absolute time ``seconds`` from now on the session clock (ISO 8601)."""
        return after(self._desk.clock(), seconds).isoformat()

    def to_dict(self) -> dict[str, Any]:
        """A snapshot of the session as plain JSON, at any moment.

        It holds the pipeline document and digest, every active position
        (inside branches, map items and subpipelines too) with its context,
        the history, the input backlog, the inputs consumed by stages in
        flight, retry and step counters, and timer deadlines as absolute UTC
        times. Restore it with :meth:`from_dict`. See ``docs/snapshots.md``.
        """
        status = self._status
        if self._saved is not None and (status is SessionStatus.WAITING or self._suspending):
            # Suspended (or being torn down for it) or restored: the saved
            # positions, with what arrived since.
            status = SessionStatus.WAITING
            state = self._saved
        elif status is SessionStatus.RUNNING and self._root is not None:
            state = self._saved_state()
        elif self._root is None and self._final is not None:
            state = {**self._final, "steps": self._steps}
        else:
            root = self._root
            node = root.node if root is not None and root.node else self._pipeline.entry
            state = {
                "position": {"path": "", "node": node, "context": copy_json(dict(self._ctx.data))},
                "steps": self._steps,
                "trace": self._trace_ids(),
            }
        now = self._desk.clock() if status is SessionStatus.RUNNING else self._clock()
        active = status is SessionStatus.RUNNING or status is SessionStatus.WAITING
        position: dict[str, Any] = copy_json(state["position"])
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "stageflow_version": __version__,
            "session_id": self.session_id,
            "status": status.value,
            "taken_at": now.astimezone(datetime.UTC).isoformat(),
            "pipeline": {
                "name": self._pipeline.name,
                "digest": self._pipeline.digest,
                "document": self._pipeline.to_dict(),
            },
            "limits": attrs.asdict(self._limits),
            "validate_events": self._mode.value,
            "seed": self._seed,
            "rng_draws": self._draws,
            "steps": state["steps"],
            "deadline": self._deadline,
            "trace": copy_json(state["trace"]),
            "current_node": position["node"] if active else None,
            "position": position,
            "backlog": self._desk.broker.backlog(),
            "outcome": copy_json(self._outcome) if status in _FINISHED else None,
            "history": [event.to_dict() for event in self._history.events],
        }

    def _saved_state(self) -> dict[str, Any]:
        """What a running session would resume from: its positions and counters, now."""
        assert self._root is not None
        return {
            "position": self._frame_state(self._root, self._pipeline.entry, True),
            "steps": self._steps,
            "trace": self._trace_ids(),
            "digest": self._pipeline.digest,
        }

    def _trace_ids(self) -> dict[str, str] | None:
        ids = self._root_ids
        return {"trace_id": ids[0], "span_id": ids[1]} if ids is not None else None

    def _frame_state(self, frame: _Frame, entry: str, full: bool) -> dict[str, Any]:
        """A frame as the snapshot keeps it, with whatever runs inside its node."""
        if frame.node is None and frame.resume is not None:
            restored: dict[str, Any] = copy_json(frame.resume)  # not yet started again
            return restored
        node_id = frame.node or entry
        state: dict[str, Any] = {"path": frame.path, "node": node_id}
        if frame.node is None:
            state["next"] = entry  # the path has not started: it starts at its entry
        if full:
            state["context"] = copy_json(dict(frame.ctx.data))
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
        node = frame.scope.pipeline._index[node_id]
        work = frame.work
        if "next" in state:
            pass
        elif work is DONE and not isinstance(node, TerminalNode):
            state["next"] = frame.next  # a terminal runs again: it ends its pipeline
        elif isinstance(node, StageNode):
            state["stage"] = self._stage_state(work)
        elif work is None or work is DONE:
            pass
        elif isinstance(node, ParallelNode):
            state["parallel"] = self._parallel_state(work)
        elif isinstance(node, MapNode):
            state["map"] = self._map_state(work)
        elif isinstance(node, SubpipelineNode):
            child = work.scope.pipeline.entry
            state["subpipeline"] = {"position": self._frame_state(work, child, True)}
        return state

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        registry: StageRegistry | None = None,
        pipeline: Pipeline | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> Session:
        """Restore a session from a snapshot made by :meth:`to_dict`.

        The restored session has the snapshot's status: ``waiting`` when it
        had active positions (``run()`` goes on from them), ``pending``, or
        the status it finished with. A stage that was in flight runs again
        from its start, and the inputs it had consumed are replayed to it in
        order. Inputs sent before ``run()`` are queued for the waiting stages.

        Args:
            data: the snapshot (after ``json.loads`` if it was stored as text).
            registry: where stages are looked up (the default registry if not given).
            pipeline: the pipeline to go on with. If not given, it is rebuilt
                from the document in the snapshot. A pipeline with another
                digest is accepted when every node the session is at still
                exists with the same type (a migration).
            tracer_provider: where spans go; the first run's root span links
                to the span of the run that took the snapshot.
            clock: as for :class:`Session`.

        Raises:
            SnapshotVersionError: the snapshot has another format version.
            SnapshotMismatchError: its pipeline digest differs from the
                document it carries, or the session is at nodes that
                ``pipeline`` does not have.
            SnapshotError: the data is not a valid snapshot, or its pipeline
                document no longer loads.
        """
        snapshot = check_document(data)
        session_id = snapshot["session_id"]
        embedded = snapshot["pipeline"]
        if pipeline is None:
            try:
                pipeline = Pipeline.from_dict(
                    embedded["document"], registry=registry, source=f"snapshot of {session_id!r}"
                )
            except PipelineValidationError as exc:
                problems = [
                    Problem(f"$.pipeline.document{p.location[1:]}", p.message) for p in exc.problems
                ]
                if registry is None:
                    problems.append(
                        Problem(
                            "$.pipeline.document",
                            "no registry= was passed, so the default registry was searched; "
                            "pass the registry that has the pipeline's stages",
                        )
                    )
                raise SnapshotError(problems, source=f"session {session_id!r}") from exc
            if pipeline.digest != embedded["digest"]:
                raise mismatch(
                    [
                        Problem(
                            "$.pipeline.digest",
                            f"the snapshot's pipeline document has digest {pipeline.digest}, "
                            f"not {embedded['digest']} as recorded: the snapshot was altered. "
                            "Restore an unaltered snapshot; to move a session to a changed "
                            "pipeline, pass it as from_dict(..., pipeline=)",
                        )
                    ],
                    session_id,
                )
        status = SessionStatus(snapshot["status"])
        position = snapshot["position"]
        active = status is SessionStatus.RUNNING or status is SessionStatus.WAITING
        problems = check_nodes(position, pipeline) if active else []
        if problems:
            raise mismatch(problems, session_id)
        problems = consistency_problems(
            snapshot, pipeline, registry if registry is not None else default_registry()
        )
        if problems:
            raise SnapshotError(problems[:20], source=f"session {session_id!r}")
        session = cls(
            pipeline,
            registry=registry,
            payload=position["context"] if position is not None else None,
            session_id=session_id,
            limits=Limits(**snapshot["limits"]),
            validate_events=snapshot["validate_events"],
            seed=snapshot["seed"],
            tracer_provider=tracer_provider,
            clock=clock,
        )
        session._load(snapshot, status)
        return session

    def _load(self, snapshot: Mapping[str, Any], status: SessionStatus) -> None:
        self._history.events.extend(event_from_dict(e) for e in snapshot["history"])
        self._desk.broker.restore_backlog(copy_json(snapshot["backlog"]))
        self._deadline = snapshot["deadline"]
        self._draws = snapshot["rng_draws"]
        if self._draws and self._seed is not None:
            self._rng = random.Random(self._seed)
            for _ in range(self._draws):
                self._rng.random()
        if status is SessionStatus.RUNNING or status is SessionStatus.WAITING:
            self._saved = {
                "position": copy_json(snapshot["position"]),
                "steps": snapshot["steps"],
                "trace": copy_json(snapshot["trace"]),
                "digest": snapshot["pipeline"]["digest"],
            }
            self._steps = snapshot["steps"]
            self._status = SessionStatus.WAITING
        else:
            self._final = {
                "position": copy_json(snapshot["position"]),
                "trace": copy_json(snapshot["trace"]),
            }
        if status not in (SessionStatus.RUNNING, SessionStatus.WAITING, SessionStatus.PENDING):
            self._status = status
            self._steps = snapshot["steps"]
            self._outcome = copy_json(snapshot["outcome"])
            error = self._outcome.get("error") if self._outcome else None
            if error is not None:
                self._error = restore_error(error)
            self._history.close()

    # ------------------------------------------------------------ choke point

    async def _run_path(self, node_id: str | None, frame: _Frame, stop: str | None) -> None:
        """Run nodes from ``node_id`` until a node has no ``next`` or ``stop`` is reached.

        A restored frame starts instead at the node its snapshot names.
        """
        index = frame.scope.pipeline._index
        execute = self._execute
        resume = frame.resume
        if resume is not None:
            try:
                if "next" in resume:
                    node_id = resume["next"]  # its node had finished
                else:
                    node_id = await execute(index[resume["node"]], frame)
            finally:
                frame.resume = None
        while node_id is not None and node_id != stop:
            node_id = await execute(index[node_id], frame)

    async def _execute(self, node: Node, frame: _Frame) -> str | None:
        """Execute one node: the one place for events, spans, logs, limits and error edges."""
        frame.node = node.id
        frame.work = None
        self._steps += 1
        limits = self._limits
        if self._steps > limits.max_steps:
            raise LimitExceededError(limit="max_steps", value=limits.max_steps, node_id=node.id)
        history = self._history
        if len(history.events) >= limits.max_history:
            raise LimitExceededError(limit="max_history", value=limits.max_history, node_id=node.id)
        # A cancel() from a hook or a stage takes effect before the next node,
        # even when no stage ever awaits.
        await self._checkpoint()
        tracer = self._tracer
        span: ActiveSpan | None = None
        if tracer is not None:
            attributes: dict[str, Any] = {NODE_ID: node.id, NODE_TYPE: node.type}
            if isinstance(node, StageNode):
                attributes[STAGE] = node.stage
                attributes[ATTEMPT] = 1  # raised by _run_stage if a retry succeeds or fails
            elif isinstance(node, ParallelNode):
                attributes[POLICY] = node.policy.value
            span = enter_span(tracer, f"{node.type} {node.id}", attributes)
        log = self._node_log
        if log is not None:
            started = time.perf_counter()
            log = log.bind(node_id=node.id, node_type=node.type, path=frame.path)
            if span is not None:
                trace_id, span_id, _ = span.ids
                log = log.bind(trace_id=trace_id, span_id=span_id)
            log.info("node.started")
        record = history.record
        outcome = "failed"
        error: Exception | None = None
        try:
            started_payload: dict[str, Any] = {"node_type": node.type}
            if frame.resume is not None:
                started_payload["resumed"] = True
            record("node_started", node.id, frame.path, started_payload)
            try:
                next_id = await _HANDLERS[node.type](self, node, frame)
            except anyio.get_cancelled_exc_class():
                outcome = self._stop_outcome
                record("node_cancelled", node.id, frame.path, {"node_type": node.type})
                raise
            except Exception as exc:
                error = exc
                record(
                    "node_failed",
                    node.id,
                    frame.path,
                    {"node_type": node.type, "error": describe_exception(exc)},
                )
                return self._route_error(node, frame, exc)
            outcome = "succeeded"
            frame.work = DONE  # a snapshot from here on resumes at next_id
            frame.next = next_id
            finished: dict[str, Any] = {"node_type": node.type, "next": next_id}
            if frame.branch is not None:
                # Which condition matched (its index, or "else"), for coverage tools.
                finished["branch"] = frame.branch
                frame.branch = None
            record("node_finished", node.id, frame.path, finished)
            return next_id
        finally:
            if span is not None:
                exit_span(span, outcome, error)
            if log is not None:
                duration_ms = round((time.perf_counter() - started) * 1000, 3)
                log.info("node.finished", outcome=outcome, duration_ms=duration_ms)

    def _route_error(self, node: Node, frame: _Frame, exc: Exception) -> str:
        """Follow the node's first matching error edge, or re-raise ``exc``."""
        handlers: tuple[ErrorHandler, ...] = getattr(node, "error_handlers", ())
        if handlers and not isinstance(exc, LimitExceededError):
            for index, handler in enumerate(handlers):
                if error_matches(exc, handler.errors):
                    description = describe_exception(exc)
                    frame.ctx.set(handler.error_path, description)
                    frame.work = DONE  # handled: a snapshot from here on goes to the handler
                    frame.next = handler.next
                    self._history.record(
                        "error_routed",
                        node.id,
                        frame.path,
                        {"next": handler.next, "error_path": handler.error_path, "handler": index},
                    )
                    return handler.next
        raise exc

    # ---------------------------------------------------- other node handlers

    async def _run_condition(self, node: ConditionNode, frame: _Frame) -> str | None:
        data = frame.ctx.data
        for index, branch in enumerate(node.conditions):
            if branch.matches(data):
                frame.branch = index
                return branch.then
        if node.else_ is not None:
            frame.branch = "else"
            return node.else_
        raise ConditionError(
            f"condition node {node.id!r}: none of its {len(node.conditions)} conditions "
            "matched and it has no 'else'; add an 'else' target or a condition that always "
            "matches",
            node_id=node.id,
        )

    async def _run_terminal(self, node: TerminalNode, frame: _Frame) -> str | None:
        get = frame.ctx.get
        scope = frame.scope
        scope.artifacts = {path: copy_json(get(path, None)) for path in node.artifacts}
        scope.terminal = node
        if frame.depth > scope.depth and scope.cancel is not None:
            # A terminal inside a branch ends its whole pipeline (the session,
            # or the subpipeline call it runs in).
            scope.cancel.cancel()
        return None


# Node type -> its handler, called as handler(session, node, frame).
_HANDLERS: Final[dict[str, Callable[[Session, Any, _Frame], Awaitable[str | None]]]] = {
    "stage": Session._run_stage,
    "condition": Session._run_condition,
    "parallel": Session._run_parallel,
    "terminal": Session._run_terminal,
    "subpipeline": Session._run_subpipeline,
    "map": Session._run_map,
}
