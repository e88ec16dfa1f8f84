"""The public session: a handle on one pipeline run against one context.

A :class:`Session` holds its state across runs (``_engine._state``) and
answers for its status, inputs, cancellation, events and snapshots; each
``run()`` is carried out by one :class:`~stageflow._engine._run.Run`, the
engine's choke point. See ``docs/internals.md``.
"""

from __future__ import annotations

import datetime
import inspect
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, cast

import anyio
import anyio.lowlevel
from opentelemetry import metrics, trace

from stageflow._engine._backend import (
    call_from_thread,
    call_soon_from_thread,
    loop_handles_if_any,
)
from stageflow._engine._inputs import InputReceipt
from stageflow._engine._node_inputs import node_entry
from stageflow._engine._positions import awaited, parked_calls, parked_waits
from stageflow._engine._run import Run
from stageflow._engine._snapshot import (
    HistoryChoice,
    check_document,
    dump,
    limits_of,
    load,
    restore_pipeline,
)
from stageflow._engine._state import FINISHED, SessionState
from stageflow._errors import (
    DefinitionError,
    NonJsonValueError,
    PipelineValidationError,
    Problem,
    SessionStateError,
)
from stageflow._events import Event, EventCallback, EventStream
from stageflow._guard import MAX_INT_DIGITS, int_too_large
from stageflow._identity import IdentityCache
from stageflow._json import a_python_type, copy_json, find_non_json
from stageflow._metrics import Metrics
from stageflow._model import (
    Limits,
    StageNode,
    ValidateEvents,
    is_seconds,
    seconds_wanted,
    shown_value,
)
from stageflow._pipeline import Pipeline
from stageflow._result import SessionResult, SessionStatus, input_types
from stageflow._stages import StageEntry, StageRegistry
from stageflow._telemetry import Tracing, check_provider
from stageflow._version import __version__

__all__ = ["Session", "stage_entries"]


_VALIDATE_EVENTS: Final = frozenset({*ValidateEvents, *(m.value for m in ValidateEvents)})


# How to fix a payload value JSON cannot carry (the stage's wording says "return").
_PASS_JSON: Final = "pass only dict, list, str, int, float, bool or None"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _checked_clock(clock: Callable[[], datetime.datetime]) -> Callable[[], datetime.datetime]:
    """``clock``, refusing what is no aware datetime when it is read (``Session(clock=...)``).

    Read when a run starts, when a waiting session is given an input and
    when it is snapshotted: anything else failed there with an
    ``AttributeError`` naming no clock, and a naive datetime was taken as
    the machine's local time.
    """

    def read() -> datetime.datetime:
        now = clock()
        if isinstance(now, datetime.datetime) and now.utcoffset() is not None:
            return now
        naive = isinstance(now, datetime.datetime)
        raise (ValueError if naive else TypeError)(
            f"Session(clock=...) returned {now!r}"
            + (", a datetime with no UTC offset" if naive else f", {a_python_type(now)}")
            + "; a clock returns the current time as an aware datetime, such as "
            "datetime.datetime.now(datetime.UTC)"
        )

    return read


# A hex digit -> the UUID variant digit (RFC 4122: 10xx) it becomes: a lookup,
# not an int() parse per session ("paused session, time to pause" rows).
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _new_session_id() -> str:
    """A random UUID (version 4) as text, as ``str(uuid.uuid4())`` gives it.

    Made from the hex digits directly: ``uuid.UUID`` costs about 2 us more per
    session ("3-node run, Session() to result" benchmark row).
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _graphs(prefix: str, pipeline: Pipeline) -> Iterator[tuple[str, Pipeline]]:
    """The pipeline and every subpipeline it declares, with their document locations."""
    yield prefix, pipeline
    for name, child in pipeline.subpipelines.items():
        yield from _graphs(f"{prefix}.subpipelines.{name}", child)


def _missing_stage(node_id: str, stage: str, registry: StageRegistry, *, given: bool) -> str:
    """Say which registry lacks ``stage`` and how to pass the right one."""
    known = ", ".join(registry.names()) or "none"
    if given:
        return (
            f"stage node {node_id!r} uses stage {stage!r}, which the registry passed as "
            f"Session(registry=...) does not have (known: {known}); pass the registry that "
            "has it, or leave registry= out to use the one the pipeline was loaded with"
        )
    return (
        f"stage node {node_id!r} uses stage {stage!r}, which the registry the pipeline was "
        f"loaded with does not have (known: {known}); register it there, or pass the "
        "registry that has it as Session(pipeline, registry=...)"
    )


# Each pipeline's stage entries, with the registry they came from: a
# pipeline's stages are looked up once per registry, not once per session
# ("3-node run, Session() to result" benchmark row). Safe to share: a registry
# never changes or drops an entry it has given out, and the engine only reads
# the entries.
_resolved: Final[IdentityCache[tuple[StageRegistry, Mapping[int, StageEntry]]]] = IdentityCache()


def stage_entries(
    pipeline: Pipeline, registry: StageRegistry, *, given: bool
) -> Mapping[int, StageEntry]:
    """The registry entry of every stage node, resolved once per (pipeline, registry)."""
    cached = _resolved.get(pipeline)
    if cached is not None and cached[0] is registry:
        return cached[1]
    return _resolved.put(pipeline, (registry, _resolve_stages(pipeline, registry, given=given)))[1]


def _resolve_stages(
    pipeline: Pipeline, registry: StageRegistry, *, given: bool
) -> Mapping[int, StageEntry]:
    """The registry entry of every stage node (subpipelines included), by node identity."""
    entries: dict[int, StageEntry] = {}
    problems: list[Problem] = []
    for prefix, graph in _graphs("$", pipeline):
        for i, node in enumerate(graph.nodes):
            if not isinstance(node, StageNode):
                continue
            if node.stage in registry:
                try:
                    entries[id(node)] = node_entry(node, registry.get(node.stage))
                except DefinitionError as exc:
                    problems.append(Problem(f"{prefix}.nodes[{i}].config.input_schema", str(exc)))
            else:
                problems.append(
                    Problem(
                        f"{prefix}.nodes[{i}].stage",
                        _missing_stage(node.id, node.stage, registry, given=given),
                    )
                )
    if problems:
        raise PipelineValidationError(problems, source=pipeline.name)
    return entries


def _check_kinds(call: str, pipeline: object, registry: object, *, required: bool) -> None:
    """Refuse a ``pipeline`` that is no :class:`Pipeline`, a ``registry`` no :class:`StageRegistry`.

    ``required``: the pipeline may not be left out (``Session``); else it is
    the snapshot's own pipeline when it is (``Session.from_dict``).
    """
    if (required or pipeline is not None) and not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"{call}(pipeline=...) was given {a_python_type(pipeline)}; pass a "
            "stageflow.Pipeline: stageflow.Pipeline.from_dict(document) for a parsed "
            "document, stageflow.Pipeline.load(path) for a file"
            + ("" if required else "; or leave it out to go on with the snapshot's own")
        )
    if registry is not None and not isinstance(registry, StageRegistry):
        raise TypeError(
            f"{call}(registry=...) was given {a_python_type(registry)}; pass a "
            "stageflow.StageRegistry, or leave it out to use the pipeline's"
        )


class Session:
    """One run of a pipeline, with its own context and event history.

    Args:
        pipeline: the pipeline to run.
        registry: where stages are looked up (``pipeline.registry``, the
            registry the pipeline was loaded with, if not given).
        payload: the initial context, a JSON object (copied; yours is not modified).
        session_id: an id for logs, events and spans (a random UUID if not given).
        limits: bounds for this session (the pipeline's ``limits`` if not given).
        validate_events: how inputs and stage events are checked against
            declared schemas (the pipeline's ``validate_events`` if not given).
        seed: seeds the random jitter of retry delays (for reproducible runs):
            a whole number, which snapshots keep.
        tracer_provider: where spans go (the global OpenTelemetry provider if
            not given). Without a real provider no span objects are created.
        clock: returns the current time as an aware UTC datetime (the system
            clock if not given). Read when a run starts; the deadlines a
            snapshot keeps (sleeps, input timeouts, retry delays, the session
            deadline) are absolute times on it.
        meter_provider: where metrics go (the global OpenTelemetry meter
            provider if not given). Without a real provider no instruments
            are made and nothing is measured.
        trace_wait_threshold: when every running position of a traced run
            waits, and one of them waits for an input (without a timeout of
            this many seconds or less) or for a timer longer than this, the
            open spans end and the run goes on in a new segment (a new trace
            linked to the previous one), so no span stays open across a
            long wait. ``None`` never cuts. See ``docs/observability.md``.

    Raises:
        PipelineValidationError: a stage the pipeline uses is not in ``registry``.
        NonJsonValueError: ``payload`` is not a JSON object.
        TypeError: ``seed`` is not a whole number or ``None``,
            ``trace_wait_threshold`` is not a number or ``None``, ``registry``
            is not a ``StageRegistry``, ``limits`` not a ``Limits``,
            ``session_id`` not a string or ``clock`` not callable.
        ValueError: ``trace_wait_threshold`` is negative, infinite or NaN,
            ``session_id`` is empty, or ``validate_events`` is not ``"off"``,
            ``"warn"`` or ``"strict"``.

    A ``clock`` that returns no datetime makes the call that read it (``run()``,
    ``send_input()`` on a waiting session, ``to_dict()``) raise a
    ``TypeError``, one that returns a datetime without a UTC offset a
    ``ValueError``, both naming ``Session(clock=...)``.

    Example::

        session = stageflow.Session(pipeline, payload={"user_id": "u1"})
        result = await session.run()
        print(result.status, result.result, result.artifacts)
    """

    # One slot: a session waiting in memory costs what its state holds.
    __slots__ = ("_state",)

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
        meter_provider: metrics.MeterProvider | None = None,
        trace_wait_threshold: float | None = 60.0,
    ) -> None:
        _check_kinds("Session", pipeline, registry, required=True)
        entries = stage_entries(
            pipeline,
            registry if registry is not None else pipeline.registry,
            given=registry is not None,
        )
        if session_id is not None and (type(session_id) is not str or not session_id):
            raise (ValueError if isinstance(session_id, str) else TypeError)(
                f"Session(session_id={session_id!r}) is not a non-empty string; pass one, "
                "or leave it out for a random UUID"
            )
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(
                f"Session(limits=...) was given {a_python_type(limits)}; pass "
                "stageflow.Limits(...) (a dict such as {'max_steps': 100} is the pipeline "
                "document's form: stageflow.Limits(max_steps=100) here)"
            )
        if validate_events is not None and validate_events not in _VALIDATE_EVENTS:
            raise ValueError(
                f"Session(validate_events={validate_events!r}) is not one of "
                f"{', '.join(repr(m.value) for m in ValidateEvents)}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(
                f"Session(clock={clock!r}) is not callable; pass a function returning an "
                "aware UTC datetime, or leave it out for the system clock"
            )
        if seed is not None and (type(seed) is not int or int_too_large(seed)):
            raise TypeError(
                f"Session(seed={shown_value(seed)}): a seed is a whole number of at most "
                f"{MAX_INT_DIGITS} digits (a snapshot keeps it, so that a restored session "
                "draws the same delays) or None"
            )
        if trace_wait_threshold is not None and not is_seconds(trace_wait_threshold, zero=True):
            number = isinstance(trace_wait_threshold, int | float) and not isinstance(
                trace_wait_threshold, bool
            )
            raise (ValueError if number else TypeError)(
                f"Session(trace_wait_threshold={trace_wait_threshold!r}) is not "
                f"{seconds_wanted(zero=True)}; use one, or None never to cut the trace"
            )
        check_provider("Session", "tracer_provider", tracer_provider)
        check_provider("Session", "meter_provider", meter_provider)
        data: dict[str, Any]
        if payload is None:
            data = {}  # nothing to check or copy ("paused session, time to pause" rows)
        elif not isinstance(payload, Mapping):
            raise NonJsonValueError(
                "the session payload",
                payload,
                expected="a JSON object",
                fix="pass a dict, or leave it out for an empty one",
            )
        else:
            bad = find_non_json(payload, "payload")
            if bad is not None:
                raise NonJsonValueError(bad[0], bad[1], detail=bad.reason, fix=_PASS_JSON)
            data = copy_json(payload)
        self._state = SessionState(
            pipeline=pipeline,
            entries=entries,
            session_id=session_id or _new_session_id(),
            payload=data,
            limits=limits if limits is not None else pipeline.limits,
            mode=(
                pipeline.validate_events
                if validate_events is None
                else ValidateEvents(validate_events)
            ),
            seed=seed,
            clock=_checked_clock(clock) if clock is not None else _utc_now,
            tracing=Tracing.resolve(tracer_provider, __version__, trace_wait_threshold),
            metrics=Metrics.resolve(meter_provider, __version__),
        )

    @property
    def session_id(self) -> str:
        """The id in the session's logs, events, spans and snapshots."""
        return self._state.session_id

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline this session runs."""
        return self._state.pipeline

    @property
    def status(self) -> SessionStatus:
        """Where the session is in its life."""
        return self._state.status

    @property
    def payload(self) -> Mapping[str, Any]:
        """The main context as it is now (kept after a failure).

        A read-only view of its top level; the values under it are the
        session's own, not copies: copy one before changing it.
        """
        return MappingProxyType(self._state.ctx.data)

    @property
    def history(self) -> Sequence[Event]:
        """The events this session holds, oldest first (read-only; each made when read).

        For a session made here: every event recorded so far. For a restored
        session: the events its snapshot kept (all of them, the newest ``n``,
        or none, as ``to_dict(history=...)`` was asked), then every event
        recorded since the restore. ``seq`` never restarts: the first event
        held may have a ``seq`` above 1, and the events before it are wherever
        you sent them (see ``docs/snapshots.md``, "Long-lived sessions").
        """
        return self._state.history.events

    def events(self, *, buffer: int = 1024) -> EventStream:
        """Subscribe to events from now on; iterate with ``async for``.

        The iterator ends when the session finishes, or when a
        ``run(suspend=True)`` suspends it (a stream made while it waits gets
        the next run's events). Read it on the event loop it was made on,
        which may be another thread's than the run's: each event is handed
        to that loop, in order.

        Args:
            buffer: how many events may wait for a slow reader; beyond that
                the newest are dropped for this reader and the next event it
                gets is a ``subscriber_overflow`` marker with the count (the
                history keeps them all). ``0`` means unbounded.

        Raises:
            ValueError: ``buffer`` is below 0.
            TypeError: ``buffer`` is not a whole number (a ``bool`` included).
        """
        if type(buffer) is not int or buffer < 0:
            raise (ValueError if type(buffer) is int else TypeError)(
                "Session.events(buffer=...) was given "
                + (shown_value(buffer) if type(buffer) is int else a_python_type(buffer))
                + "; pass how many events may wait for a slow reader, a whole number of 0 or "
                "more (0: no bound)"
            )
        return self._state.history.stream(buffer, loop_handles_if_any(), call_soon_from_thread)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on.

        A callback that raises is logged and detached; it never breaks the
        run. Returns a function that unsubscribes.

        Raises:
            TypeError: ``callback`` cannot be called, or is an ``async def``
                function or an object whose ``__call__`` is one (it would be
                called, never awaited).
        """
        if not callable(callback):
            raise TypeError(
                f"Session.subscribe() was given {a_python_type(callback)}, which cannot be "
                "called; pass a function that takes an Event (or use Session.events() to "
                "iterate over them)"
            )
        # An async def, or an object whose __call__ is one.
        call = callback if inspect.isroutine(callback) else type(callback).__call__
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(call):
            raise TypeError(
                "Session.subscribe() was given an async function: it is called without being "
                "awaited, so its body would never run; pass a plain function, or iterate with "
                "'async for event in session.events()' in a task of your own"
            )
        return self._state.history.subscribe(callback)

    def accepted_inputs(self) -> tuple[str, ...] | None:
        """The input types some wait of the pipeline can ever accept, sorted.

        Every stage that declares its inputs counts (``WaitStage`` declares
        the one its ``config.input`` names). ``None`` when some stage of the
        pipeline declares none, so it may wait for any type. An input of a
        type not listed is queued for nobody (``input_unexpected``), or
        rejected with ``validate_events="strict"`` (``unknown_type``).
        """
        return self._state.desk.accepted()

    def waiting_for(self) -> tuple[str, ...]:
        """The input types some stage is waiting for right now, sorted.

        For a ``waiting`` session (suspended, or restored and not yet run):
        the types its stages will wait for when it runs again. The same shape
        as :attr:`SessionResult.waiting_for`; a method because it changes
        while the session runs.
        """
        state = self._state
        saved = state.saved  # read once: a run that starts meanwhile lets go of it
        if state.status is SessionStatus.WAITING and saved is not None:
            return input_types(awaited(saved["position"], None)[0])
        return input_types(state.desk.waiting_for())

    def send_input(self, type: str, payload: Any) -> InputReceipt:
        """Send an external input to the session (from any task of its event loop).

        Every stage waiting for ``type`` right now receives ``payload``
        (broadcast); a suspended or restored session's saved waits count as
        waiting. When none waits, the input is queued (up to
        ``limits.max_input_backlog`` per type a stage declares, and as many
        for all the types no stage declares together) for the next stage
        that does.
        May be called before ``run()`` to queue inputs. On a session that does
        not run, from another thread than the one an ``events()`` stream is
        read on, it is handed to that loop (which wakes the reader), and
        returns once the loop has taken it.

        Returns:
            how many waiters got it, or that it was queued.

        Raises:
            SessionStateError: the session has finished, or it runs and this
                is not its event loop's thread (use :meth:`send_input_from_thread`).
            InputRejectedError: the type is not a non-empty string, the
                backlog is full, the payload is not JSON, too large, or
                (``validate_events="strict"``) invalid; an ``input_rejected``
                event is recorded.
        """
        state = self._state
        if state.status in FINISHED:
            raise SessionStateError(
                f"session {state.session_id!r} is {state.status.value}; it takes no more inputs "
                f"(input {type!r} was not delivered)"
            )
        run = state.run
        if run is not None and run.loop_thread != threading.get_ident():
            # Its waiters and backlog belong to the event loop: touched from
            # here, a wake-up would be lost (on trio it raised halfway).
            raise SessionStateError(
                f"session {state.session_id!r} runs on another thread's event loop; "
                f"input {type!r} was not delivered. From other threads call "
                "send_input_from_thread"
            )
        if run is None:
            loop = self._streams_loop_elsewhere()
            if loop is not None:
                try:
                    return call_from_thread(loop, self.send_input, type, payload)
                except anyio.RunFinishedError:
                    pass  # that loop has ended, and its readers with it: none to wake
        saved = state.saved if state.status is SessionStatus.WAITING and state.run is None else None
        # Suspended or restored: the stages it saved waiting are waiting still.
        if saved is None:
            return state.desk.send(type, payload)
        now = state.clock()
        return state.desk.send(type, payload, parked_waits(saved["position"], type, now), now)

    def send_input_from_thread(self, type: str, payload: Any) -> InputReceipt:
        """Like :meth:`send_input`, from a thread that is not the event loop's.

        For example a web framework's worker thread. Blocks until the event
        loop has taken the input.

        Raises:
            SessionStateError: the session is not running (its run's event
                loop ended while this call waited for it, say).
            InputRejectedError: as for :meth:`send_input`.
        """
        state = self._state
        run = state.run
        token = run.token if run is not None else None
        if run is not None and threading.get_ident() == run.loop_thread:
            raise SessionStateError(
                f"session {state.session_id!r}: send_input_from_thread was called on the event "
                "loop's own thread, where it would block the loop; call send_input instead"
            )
        if token is None or state.status is not SessionStatus.RUNNING:
            raise SessionStateError(
                f"session {state.session_id!r} is {state.status.value}; send_input_from_thread "
                "needs a running session (use send_input before run())"
            )
        try:
            return call_from_thread(token, self.send_input, type, payload)
        except anyio.RunFinishedError:
            # The run ended, and its event loop with it, since the check above.
            raise SessionStateError(
                f"session {state.session_id!r} is {state.status.value}: its run's event loop "
                f"ended before input {type!r} was delivered (it was not); "
                "send_input_from_thread needs a running session"
            ) from None

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the run from any task; ``run()`` returns with status ``cancelled``.

        From another thread it hands the cancellation to the run's event loop
        and returns at once; the loop carries it out. The reason is recorded
        in the history. A ``waiting`` session
        (suspended or restored) ends ``cancelled`` at once (from another
        thread than the one an ``events()`` stream is read on: handed to that
        loop, and carried out before this returns). Cancelling a finished
        session does nothing.

        Raises:
            TypeError: ``reason`` is not a string.
        """
        if type(reason) is not str:
            raise TypeError(
                f"Session.cancel(reason=...) was given {a_python_type(reason)}; pass "
                "a string (it is recorded in the history, the spans and the logs), or leave it "
                "out for 'cancelled'"
            )
        state = self._state
        run = state.run
        token = run.token if run is not None else None  # read once: the loop clears it
        if (
            token is not None
            and run is not None
            and run.loop_thread != threading.get_ident()
            and call_soon_from_thread(token, self.cancel, reason)
        ):
            # From another thread: the run's cancel scope belongs to its event
            # loop (on asyncio, cancelling it from here hung the loop). A loop
            # that has finished meanwhile has ended the run too: the
            # cancellation is carried out here (a suspended session ends now).
            return
        if state.status in FINISHED:
            return
        loop = self._streams_loop_elsewhere() if run is None else None
        if loop is not None:
            try:
                call_from_thread(loop, self.cancel, reason)
            except anyio.RunFinishedError:
                pass  # that loop has ended, and its readers with it: none to wake
            else:
                return
        if state.cancel_reason is None:
            state.cancel_reason = reason
        if state.status is SessionStatus.WAITING:
            # Nothing runs: it ends now, so a snapshot taken next says so.
            state.history.reopen()
            saved = state.saved
            state.finish(
                SessionStatus.CANCELLED,
                None,
                None,
                reason=state.cancel_reason,
                unseen=parked_calls(saved["position"]) if saved is not None else (),
            )
        elif state.run is not None:
            state.run.cancel()

    def _streams_loop_elsewhere(self) -> anyio.lowlevel.EventLoopToken | None:
        """The event loop this session's streams are read on, if not this thread's.

        A session that does not run records events (an input queued, its end)
        in the caller's thread, and hands them to its streams: their readers
        must be woken from their loop's thread (on trio it raised halfway,
        and the readers waited for good). ``None``: no stream, or this thread.
        """
        loop = self._state.history.streams_loop()
        if loop is None:
            return None
        token, thread = cast(tuple[anyio.lowlevel.EventLoopToken, int], loop)  # see events()
        return token if thread != threading.get_ident() else None

    def run(self, *, suspend: bool = False) -> Coroutine[Any, Any, SessionResult]:
        """Run the pipeline to its end and return the outcome.

        Failures do not raise: they end the run with status ``failed`` (or
        ``timed_out``) and a typed ``error``. Cancelling the task that awaits
        ``run()`` records ``session_cancelled`` and re-raises the cancellation
        (one that comes while the run is being suspended leaves the session
        ``waiting``, and is re-raised too).
        A ``KeyboardInterrupt`` or ``SystemExit`` ends the session
        ``cancelled``, any other ``BaseException`` ends it ``failed``; either
        is re-raised.

        A ``waiting`` session (suspended, or restored with
        :meth:`from_dict`) goes on from where it stopped.

        Args:
            suspend: also stop as soon as every active position (the main
                path, each branch, each map item) waits for an input or a
                timer. The result then has status ``waiting``, the awaited
                input types and the earliest timer deadline; ``to_dict()``
                gives the snapshot to keep, and ``run()`` goes on. The stages
                still running are stopped where they wait: on trio the wait
                that suspends raises :class:`~stageflow.RunSuspended`, the
                others are cancelled.

        Returns:
            the run's coroutine: ``await session.run()``, or pass ``session.run``
            to ``start_soon``. A plain method that returns the coroutine (which
            checks the session's state when it starts), rather than an ``async
            def``: a live waiting session then keeps one coroutine frame less
            ("paused session, memory each" benchmark row).

        Raises:
            SessionStateError: the session has finished or is running (when
                the coroutine starts).
        """
        return Run(self._state, suspend=suspend).run()

    # ------------------------------------------------------------- snapshots

    def to_dict(self, *, history: HistoryChoice = "all") -> dict[str, Any]:
        """A snapshot of the session as plain JSON (format version 6), at any moment.

        It holds the pipeline document and digest, every active position
        (inside branches, map items and subpipelines too) with its context,
        the input backlog, the inputs consumed by stages in flight, retry and
        step counters, timer deadlines as absolute UTC times, the ``seq`` of
        the next event (``history_seq``) and the history you ask for. Restore
        it with :meth:`from_dict`. See ``docs/snapshots.md``.

        Args:
            history: ``"all"`` (every event the session holds), ``"none"``
                (no events: the snapshot's size no longer grows with the
                session's age; send events elsewhere as they happen, with
                :meth:`subscribe`), or a count ``n`` (the newest ``n``).

        From another thread than the one a run's event loop runs in, the
        snapshot is taken on that loop, and this waits for it (in a thread
        that runs an event loop of its own, trio or asyncio, that loop waits
        too).

        Raises:
            SnapshotError: ``history`` is none of these.
        """
        run = self._state.run
        token = run.token if run is not None else None  # read once: the loop clears it
        if token is not None and run is not None and run.loop_thread != threading.get_ident():
            # The run's state belongs to its event loop: read from here, the
            # clock of a live snapshot raised anyio's NoEventLoopError.
            try:
                return call_from_thread(token, dump, self._state, history)
            except anyio.RunFinishedError:
                pass  # the run and its loop ended since: nothing runs, read it here
        return dump(self._state, history)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        registry: StageRegistry | None = None,
        pipeline: Pipeline | None = None,
        limits: Limits | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        trace_wait_threshold: float | None = 60.0,
    ) -> Session:
        """Restore a session from a snapshot made by :meth:`to_dict` (format version 1 to 5).

        The restored session has the snapshot's status: ``waiting`` when it
        had active positions (``run()`` goes on from them), ``pending``, or
        the status it finished with. A stage that was in flight runs again
        from its start, and the inputs it had consumed are replayed to it in
        order. Inputs sent before ``run()`` are queued for the waiting stages.
        Event numbering goes on from the snapshot's, whether or not it kept
        its history.

        A session that a step or event limit stopped (status ``failed``,
        ``stopped_by_limit`` in the snapshot) is restored ``waiting`` at the
        node it stopped at when ``limits`` raises that limit; ``run()`` then
        goes on.

        Args:
            data: the snapshot (after ``json.loads`` if it was stored as text).
            registry: where stages are looked up (``pipeline.registry`` when
                ``pipeline`` is given, else the default registry, if not given).
            pipeline: the pipeline to go on with. If not given, it is rebuilt
                from the document in the snapshot. A pipeline with another
                digest is accepted when every node the session is at still
                exists with the same type (a migration).
            limits: the limits from now on. If not given: the limits of
                ``pipeline`` when it is another version (another digest) than
                the snapshot's, else the snapshot's. Limits with another
                ``timeout`` than the snapshot's set the session deadline
                anew, from the start of the next run (none for ``None``).
            tracer_provider: where spans go; the first run's root span links
                to the span of the run that took the snapshot.
            clock: as for :class:`Session`.
            meter_provider: as for :class:`Session`.
            trace_wait_threshold: as for :class:`Session`.

        Raises:
            SnapshotVersionError: the snapshot has another format version.
            SnapshotMismatchError: its pipeline digest differs from the
                document it carries, or the session is at nodes that
                ``pipeline`` does not have.
            SnapshotError: the data is not a valid snapshot, or its pipeline
                document no longer loads.
            TypeError: ``pipeline`` is no :class:`Pipeline` or ``registry`` no
                :class:`StageRegistry`.
        """
        # Checked before the snapshot is read: both are used to read it.
        _check_kinds("Session.from_dict", pipeline, registry, required=False)
        snapshot = check_document(data)
        pipeline = restore_pipeline(snapshot, registry, pipeline)
        if limits is None:
            migrated = pipeline.digest != snapshot["pipeline"]["digest"]
            limits = pipeline.limits if migrated else limits_of(snapshot)
        # No payload: load() gives the session its context. The snapshot's
        # check has found it plain JSON within the guard's bounds, which is what
        # Session() would check it for again ("as snapshot text" rows).
        session = cls(
            pipeline,
            registry=registry,
            session_id=snapshot["session_id"],
            limits=limits,
            validate_events=snapshot["validate_events"],
            seed=snapshot["seed"],
            tracer_provider=tracer_provider,
            clock=clock,
            meter_provider=meter_provider,
            trace_wait_threshold=trace_wait_threshold,
        )
        load(session._state, snapshot)
        requested = snapshot.get("cancel_requested")
        if requested is not None:
            session.cancel(requested)  # made before the snapshot, not yet acted on
        return session
