"""The session: runs one pipeline against one context.

Every node, wherever it runs (main path or a parallel branch), goes through
:meth:`Session._execute`, the one choke point for events, limits, error edges
and cancellation. Sequential nodes are awaited in the session's own task;
tasks are started only for real concurrency (parallel branches), always inside
a task group owned by :meth:`Session.run`.
"""

from __future__ import annotations

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
import sniffio
import structlog
import trio
from opentelemetry import trace

from stageflow import jsonlogic
from stageflow._composite import CompositeNodes
from stageflow._context import Context
from stageflow._desk import InputDesk
from stageflow._errors import (
    ConditionError,
    LimitExceededError,
    NonJsonValueError,
    PipelineValidationError,
    Problem,
    SessionStateError,
    SessionTimeoutError,
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
    Node,
    ParallelNode,
    StageNode,
    TerminalNode,
    ValidateEvents,
)
from stageflow._parallel_node import ParallelNodes
from stageflow._pipeline import Pipeline
from stageflow._result import SessionResult, SessionStatus
from stageflow._stage_node import StageNodes
from stageflow._stages import StageContext, StageEntry, StageRegistry, default_registry
from stageflow._telemetry import (
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
    span_ids,
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


class _Frame:
    """Where a node runs: its context, its path, its nesting depth and pipeline scope."""

    __slots__ = ("branch", "ctx", "depth", "path", "scope")

    def __init__(self, ctx: Context, path: str, depth: int, scope: _Scope) -> None:
        self.ctx = ctx
        self.path = path
        self.depth = depth
        self.scope = scope
        self.branch: int | str | None = None  # set by a condition for its node_finished


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

    Raises:
        PipelineValidationError: a stage the pipeline uses is not in ``registry``.
        NonJsonValueError: ``payload`` is not a JSON object.

    Example::

        session = stageflow.Session(pipeline, payload={"user_id": "u1"})
        result = await session.run()
        print(result.status, result.result, result.artifacts)
    """

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
            raise NonJsonValueError(bad[0], bad[1])
        self.session_id = session_id or str(uuid.uuid4())
        self._limits = limits if limits is not None else pipeline.limits
        mode = ValidateEvents(validate_events or pipeline.validate_events)
        self._ctx = Context(copy_json(payload))
        self._history = History(self.session_id)
        self._desk = InputDesk(
            self._history, self._limits, mode, [entry.spec for entry in self._entries.values()]
        )
        self._seed = seed
        self._rng: random.Random | None = None  # built when a jittered retry needs it
        self._status = SessionStatus.PENDING
        self._steps = 0
        self._main = _Scope(pipeline, 0)
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
        self._frame_type = _Frame
        self._scope_type = _Scope
        self._handlers: dict[str, Callable[[Any, _Frame], Awaitable[str | None]]] = {
            "stage": self._run_stage,
            "condition": self._run_condition,
            "parallel": self._run_parallel,
            "terminal": self._run_terminal,
            "subpipeline": self._run_subpipeline,
            "map": self._run_map,
        }

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
        """The input types some stage is waiting for right now."""
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

        The reason is recorded in the history. Cancelling a finished session
        does nothing.
        """
        if self._status in _FINISHED:
            return
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def run(self) -> SessionResult:
        """Run the pipeline to its end and return the outcome.

        Failures do not raise: they end the run with status ``failed`` (or
        ``timed_out``) and a typed ``error``. Cancelling the task that awaits
        ``run()`` records ``session_cancelled`` and re-raises the cancellation.

        Raises:
            SessionStateError: the session was already run.
        """
        if self._status is not SessionStatus.PENDING:
            raise SessionStateError(
                f"session {self.session_id!r} is {self._status.value}; a session runs once, "
                "create a new Session to run the pipeline again"
            )
        self._status = SessionStatus.RUNNING
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
        if structlog.is_configured():
            self._node_log = _log.bind(session_id=self.session_id)
        root_span: ActiveSpan | None = None
        if tracer is not None:
            root_span = enter_span(
                tracer,
                f"run {self._pipeline.name}",
                {
                    SESSION_ID: self.session_id,
                    PIPELINE_NAME: self._pipeline.name,
                    PIPELINE_DIGEST: self._pipeline.digest,
                },
            )
            self._history.span_source = current_ids
            self._desk.traced = True
        try:
            return await self._run_root()
        finally:
            if root_span is not None:
                exit_span(root_span, _SPAN_OUTCOME.get(self._status, "cancelled"), self._error)
                self._history.span_source = None

    async def _run_root(self) -> SessionResult:
        self._history.record(
            "session_started",
            None,
            "",
            {"pipeline": self._pipeline.name, "digest": self._pipeline.digest},
        )
        error: StageflowError | None = None
        cancelled_exc = anyio.get_cancelled_exc_class()
        try:
            with anyio.CancelScope() as scope:
                self._cancel_scope = scope
                if self._limits.timeout is not None:
                    scope.deadline = anyio.current_time() + self._limits.timeout
                if self._cancel_reason is not None:
                    scope.cancel()
                self._main.cancel = scope
                await self._run_path(
                    self._pipeline.entry, _Frame(self._ctx, "", 0, self._main), None
                )
        except cancelled_exc:
            # The task running us was cancelled from outside: record, re-raise.
            self._finish(SessionStatus.CANCELLED, None, reason="the task running it was cancelled")
            raise
        except StageflowError as exc:
            error = exc
        except Exception as exc:
            # A bug in stageflow: keep the history, then fail loudly.
            error = StageflowError(f"internal error: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._finish(SessionStatus.FAILED, error)
            raise
        finally:
            self._cancel_scope = None
            self._token = None
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
        payload: dict[str, Any] = {"status": status.value, "steps": self._steps}
        if error is not None:
            payload["error"] = describe_exception(error)
        if reason is not None:
            payload["reason"] = reason
        self._history.record(_FINAL_EVENT[status], None, "", payload)
        self._history.close()
        completed = status is SessionStatus.COMPLETED
        terminal = self._main.terminal
        return SessionResult(
            status=status,
            result=copy_json(terminal.result) if completed and terminal else None,
            artifacts=self._main.artifacts if completed else {},
            error=error,
            history=tuple(self._history.events),
        )

    # ------------------------------------------------------------ choke point

    async def _run_path(self, node_id: str | None, frame: _Frame, stop: str | None) -> None:
        """Run nodes from ``node_id`` until a node has no ``next`` or ``stop`` is reached."""
        index = frame.scope.pipeline._index
        execute = self._execute
        while node_id is not None and node_id != stop:
            node_id = await execute(index[node_id], frame)

    async def _execute(self, node: Node, frame: _Frame) -> str | None:
        """Execute one node: the one place for events, spans, logs, limits and error edges."""
        self._steps += 1
        limits = self._limits
        if self._steps > limits.max_steps:
            raise LimitExceededError(limit="max_steps", value=limits.max_steps, node_id=node.id)
        history = self._history
        if len(history) >= limits.max_history:
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
            elif isinstance(node, ParallelNode):
                attributes[POLICY] = node.policy.value
            span = enter_span(tracer, f"{node.type} {node.id}", attributes)
        log = self._node_log
        if log is not None:
            started = time.perf_counter()
            log = log.bind(node_id=node.id, node_type=node.type, path=frame.path)
            if span is not None:
                trace_id, span_id, _ = span_ids(span.span)
                log = log.bind(trace_id=trace_id, span_id=span_id)
            log.info("node.started")
        record = history.record
        outcome = "failed"
        error: Exception | None = None
        try:
            record("node_started", node.id, frame.path, {"node_type": node.type})
            try:
                next_id = await self._handlers[node.type](node, frame)
            except anyio.get_cancelled_exc_class():
                outcome = "cancelled"
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
            if jsonlogic.truthy(jsonlogic.apply(branch.if_, data)):
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

    # ------------------------------------------------------- stage runtime API

    def emit(self, ctx: StageContext, type: str, payload: Mapping[str, Any] | None) -> None:
        """Record a stage's own event (called through ``StageContext.emit``)."""
        self._desk.emit(ctx, type, payload)

    async def wait_input(self, ctx: StageContext, type: str, timeout: float | None) -> Any:
        """Wait for an external input (called through ``StageContext.wait_input``)."""
        return await self._desk.wait(ctx, type, timeout)
