"""What a running stage reaches through its context: waits, sleeps and events.

One :class:`StageRuntime` per run, made by the run with everything it needs
(the session's clock for this run, tracing, the suspend-mode hook); one
:class:`StageWork` per stage attempt, which is both the frame's work record
(its journal is what a snapshot keeps) and the runtime its
:class:`~stageflow.StageContext` calls.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Protocol

import anyio
import anyio.lowlevel

from stageflow._deadlines import after
from stageflow._engine._backend import EventLike, TrioWake
from stageflow._engine._desk import InputDesk, schema_errors
from stageflow._engine._inputs import AttemptTimer, EventWaiter, TrioWaiter, Waiter, fulfil
from stageflow._engine._positions import Call
from stageflow._errors import (
    InputTimeoutError,
    LimitExceededError,
    NonJsonValueError,
    RunSuspended,
    StageContractError,
)
from stageflow._events import History
from stageflow._json import copy_json, find_non_json
from stageflow._metrics import Metrics
from stageflow._model import Limits, StageNode, ValidateEvents
from stageflow._pipeline import Pipeline
from stageflow._segments import Segments
from stageflow._specs import StageSpec, event_type_problem
from stageflow._stages import (
    EMPTY_CONFIG,
    StageContext,
    input_timeout,
    sleep_seconds,
    sleep_until,
)
from stageflow._telemetry import (
    CANCEL_REASON,
    INPUT_TYPE,
    OUTCOME,
    PIPELINE_NAME,
    WAIT_SECONDS,
    ActiveSpan,
    Tracing,
    input_link,
)

__all__ = ["RunHooks", "RuntimeState", "StageRuntime", "StageWork", "stage_work"]

# What a stage that logs the RunSuspended it sees reads.
_SUSPENDED_HERE: Final = (
    "run(suspend=True) suspends the session at this wait; let this propagate "
    "(clean up in finally): the stage runs again from its start when the session resumes"
)


class StageWork(StageContext):
    """One attempt of a stage node in flight, and the context its stage sees.

    The :class:`~stageflow.StageContext` the stage is given is this object:
    one per attempt, which is also the frame's work record (its journal is
    what a snapshot keeps) and calls the run's runtime itself. One object
    instead of a context and its runtime ("sequential stage node", "map
    item" and "paused session" rows). Its own slots are the engine's, all
    private: a stage that assigns ``ctx.path`` or ``ctx.frame`` gets the
    ``AttributeError`` any context gives, instead of filing its events
    elsewhere. ``spec`` is the context's, which the engine's checks read too
    (what a stage assigns to it is what its checks see, as for any
    attribute of its context it should only read). The attempt is kept
    twice: ``attempt`` is the stage's to read, ``_tries`` the engine's,
    which a snapshot keeps (a stage that assigned or deleted ``ctx.attempt``
    made a snapshot that does not restore, or none at all).

    ``_calls`` is the attempt's journal, one :class:`Call` per ``wait_input`` /
    ``sleep``, in order (kept in snapshots); after a restore ``_replay`` holds
    the calls to hand back before anything runs live.
    """

    __slots__ = ("_calls", "_engine", "_frame", "_node", "_path", "_replay", "_timer", "_tries")

    # Set by stage_work() (no other code makes one): no __init__ of its own,
    # so ``StageWork()`` is object's bare construction, cheaper than
    # ``object.__new__`` and than StageContext's keyword ``__init__``.
    __init__ = object.__init__
    _engine: StageRuntime
    _node: StageNode
    _path: str  # the frame's path (where events of this stage are recorded)
    _calls: list[Call] | None
    _replay: list[Call] | None
    _timer: AttemptTimer | None  # the attempt's deadline, if it has one
    _tries: int  # the attempt's number, as the engine counts it (not ctx.attempt)
    # The frame running the attempt: the attempt is over once the frame's
    # work is another.
    _frame: HasWork
    # StageContext's own slots that stage_work() sets, as a subclass sets
    # its base's: what node_path and execution_key are made from.
    _parent: str
    _origin: str
    _visit: int

    def journal(self, entry: Call) -> None:
        """Append a call to the attempt's journal."""
        if self._calls is None:
            # A list of exactly one (64 B, where [] and an append make 88 B):
            # most attempts journal one call, and a waiting session keeps it
            # ("paused session, memory each" row).
            self._calls = [entry]
        else:
            self._calls.append(entry)

    def saved(self) -> tuple[int, list[Call]]:
        """The attempt's number and its calls (made, then to replay), as snapshots keep them."""
        return self._tries, [*(self._calls or ()), *(self._replay or ())]

    def timed(self, timer: AttemptTimer) -> None:
        """Give the attempt its deadline (a node's ``timeout``)."""
        self._timer = timer

    # StageContext's waits, sleeps and events, checked as it checks them,
    # then handed to the run's runtime with this attempt.

    def emit(self, type: str, payload: Mapping[str, Any] | None = None) -> None:
        """Record a stage event (:meth:`StageContext.emit`)."""
        self._engine.emit(self, type, payload)

    def wait_input(self, type: str, timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """Wait for an input (:meth:`StageContext.wait_input`).

        The runtime's coroutine itself: one frame less per wait.
        """
        return self._engine.wait_input(self, type, input_timeout(self, type, timeout))

    async def sleep(self, seconds: float) -> float:
        """Sleep ``seconds`` (:meth:`StageContext.sleep`)."""
        return await self._engine.sleep(self, sleep_seconds(self, seconds), None)

    async def sleep_until(self, when: datetime.datetime) -> float:
        """Sleep until ``when`` (:meth:`StageContext.sleep_until`)."""
        return await self._engine.sleep(self, None, sleep_until(self, when))


def stage_work(
    runtime: StageRuntime,
    node: StageNode,
    frame: HasWork,
    arguments: Mapping[str, Any],
    session_id: str,
    spec: StageSpec,
    config: Mapping[str, Any] = EMPTY_CONFIG,
    attempt: int = 1,
    replay: list[Call] | None = None,
) -> StageWork:
    """The context of one attempt of ``node`` in ``frame`` (the caller sets ``frame.work``).

    The same context as ``StageContext(...)`` with ``node_path``
    ``frame.path/node.id`` (``node.id`` at the top level) and
    ``execution_key`` ``session_id + frame.origin + "/" + node.id + "." +
    frame.visits``, both made when read (their slots and ``log``'s left
    unset until then). Built without ``__init__``: a keyword call cost
    several times the slot stores ("sequential stage node" row). ``config``,
    ``attempt`` and ``replay`` come last, with the tight paths' values as
    defaults: arguments fewer there, and stack slots fewer in the frame of a
    path that waits ("paused session, memory each" row). The one place that
    writes a context's private slots outside ``stageflow._stages``.
    """
    work: StageWork = StageWork()
    work.arguments = arguments
    work.config = config
    work.session_id = session_id
    work.node_id = node.id
    work.stage = node.stage
    work.attempt = work._tries = attempt
    work.spec = spec
    work._path = work._parent = frame.path
    work._origin = frame.origin
    work._visit = frame.visits
    work._engine = runtime
    work._node = node
    work._calls = None
    work._replay = replay
    work._timer = None
    work._frame = frame
    return work


class HasWork(Protocol):
    """What a :class:`StageWork` reads of its frame (a ``Frame``)."""

    @property
    def work(self) -> object:
        """What the frame is doing right now."""

    @property
    def path(self) -> str:
        """The frame's path (where its events are recorded)."""

    @property
    def origin(self) -> str:
        """The frame's part of an execution key (see ``Frame``)."""

    @property
    def visits(self) -> int:
        """How many times the frame has entered its current node."""


class RuntimeState(Protocol):
    """What the runtime reads of the session's state (``SessionState`` has it)."""

    @property
    def run(self) -> object:
        """The run in progress, if any."""

    @property
    def desk(self) -> InputDesk:
        """The session's input desk."""

    @property
    def history(self) -> History:
        """The session's history."""

    @property
    def limits(self) -> Limits:
        """The session's limits."""

    @property
    def mode(self) -> ValidateEvents:
        """How stage events are checked against their schemas."""

    @property
    def tracing(self) -> Tracing | None:
        """The run's tracing, if traced."""

    @property
    def metrics(self) -> Metrics | None:
        """The session's instruments, if metered."""

    @property
    def pipeline(self) -> Pipeline:
        """The session's pipeline (its name labels the metrics)."""

    @property
    def parked(self) -> dict[int, Call] | None:
        """The run's parked journal entries no restored stage has replayed yet, by identity."""

    @property
    def stopped_by_limit(self) -> object:
        """The limit error that stopped the run with its positions saved, if any."""

    # Inputs delivered to live waits torn down before their stage saw them.
    unseen: list[Call] | None


class RunHooks(Protocol):
    """What the runtime calls back on the run that made it."""

    def check_idle(self) -> bool:
        """Suspend mode: a position starts waiting or sleeping; whether the run suspends."""

    def check_cut(self) -> None:
        """A position starts a wait that may cut the trace into segments."""

    def cancel_reason(self, path: str) -> str:
        """Why the position at ``path`` is being cancelled (``stageflow.cancel.reason``)."""


class StageRuntime:
    """Waits, sleeps and stage events for one run of a session."""

    __slots__ = (
        "_cut_after",
        "_hooks",
        "_loop_start",
        "_new_event",
        "_on_block",
        "_on_long_block",
        "_started_at",
        "_state",
        "long_blocks",
        "sleeping",
        "stop_outcome",
        "waits",
    )

    def __init__(
        self,
        state: RuntimeState,
        *,
        started_at: datetime.datetime,
        hooks: RunHooks,
        on_block: bool,
        new_event: Callable[[], EventLike],
        loop_start: float,
        on_long_block: bool = False,
        cut_after: float = 0.0,
    ) -> None:
        # The session's state: its desk, history, limits, validation mode,
        # tracing and metrics are read from it, not copied here (one slot
        # instead of seven, which every live waiting session keeps: "paused
        # session, memory each" row).
        self._state = state
        # The session's UTC clock for this run (see clock()): deadlines of
        # waits and sleeps are absolute times on it.
        self._started_at = started_at
        self._loop_start = loop_start
        self.waits = 0  # wait_input calls blocked right now (for the waiting-sessions gauge)
        # The run's hooks, as plain flags and one reference (bound methods
        # would cost every live waiting session: "paused session, memory each"
        # benchmark row). With on_long_block, a long wait (an input wait, or a
        # timer longer than cut_after seconds) is counted in long_blocks, and
        # hooks.check_cut() is called when any wait or timer starts while one
        # is: it may cut the trace into segments.
        self._hooks = hooks
        self._new_event = new_event  # the backend's event class, for input waits
        self._on_long_block = on_long_block
        self._cut_after = cut_after
        self.long_blocks = 0  # positions blocked in such waits right now
        self.stop_outcome = "cancelled"  # how a wait span ends when the run is torn down
        # With on_block (suspend mode), hooks.check_idle() is called when a
        # position starts waiting or sleeping; if the run suspends there, the
        # wait raises RunSuspended at once (on trio, see _backend).
        self._on_block = on_block
        self.sleeping = 0  # positions sleeping right now

    # ---------------------------------------------------------------- waiting

    async def wait_input(self, work: StageWork, type: str, timeout: float | None) -> Any:
        """Wait for an input of ``type`` on behalf of a stage (journaled for snapshots)."""
        self.check_live(work, "ctx.wait_input", type)
        spec = work.spec
        node_id = work._node.id
        if spec.allowed_inputs and not _declares(spec, type):
            raise _undeclared_input(work, type)
        path = work._path
        # No bound methods or closures in the locals of this frame, and no
        # local that the code can do without: a waiting session keeps the
        # frame (8 B a local), and the collector walks what it holds ("paused
        # session" rows).
        history = self._state.history
        entry = self._replayed(work, "wait", type)
        if entry is not None and "payload" in entry:
            # Consumed before the snapshot, or sent to the suspended session:
            # hand it over (again), in order.
            work.journal(entry)
            if entry.pop("parked", False):
                # Arrived while it was suspended or stored: received now, on
                # this run's stage span too (a replay was received before).
                history.record(
                    "input_received", node_id, path, {"input_type": type, "from": "sender"}
                )
                waited = entry.pop("waited", None)
                tracing = self._state.tracing
                if tracing is not None:
                    attributes: dict[str, Any] = {INPUT_TYPE: type}
                    if waited is not None:
                        attributes[WAIT_SECONDS] = round(waited, 6)
                    tracing.add_event("input_received", attributes)
                meters = self._state.metrics
                if waited is not None and meters is not None:
                    # The wait began before a suspend or a restore; it ended
                    # when the input came (Desk.send kept how long it took).
                    self._measure_wait(meters, type, waited, "received")
            else:
                history.record(
                    "input_received", node_id, path, {"input_type": type, "from": "replay"}
                )
            return copy_json(entry["payload"])
        remaining = timeout
        restored_deadline = False
        if entry is None:
            entry = {"wait": type, "deadline": None}
            if timeout is not None:
                entry["deadline"] = after(self.clock(), timeout).isoformat()
            if self._state.metrics is not None:
                # Measured from here across suspends and restores (see _waited).
                entry["since"] = self.clock().isoformat()
        elif entry.get("deadline") is not None:
            remaining = self.seconds_until(entry["deadline"])  # type: ignore[arg-type]
            restored_deadline = True
        work.journal(entry)
        if restored_deadline and remaining is not None and remaining <= 0:
            # Restored after its deadline: it times out now (it does not block,
            # so suspend mode goes on to the timeout's error edge). Live, it
            # timed out first: an input queued for its type came later (one
            # sent in time was given to the saved wait), and is left to the
            # next wait.
            await anyio.lowlevel.checkpoint()
            raise self._timed_out(work, type, timeout)
        broker = self._state.desk.broker
        found, payload = broker.take(type)
        tracing = self._state.tracing
        if found:
            fulfil(entry, copy_json(payload))
            history.record("input_received", node_id, path, {"input_type": type, "from": "backlog"})
            if tracing is not None:
                tracing.add_event("input_received", {INPUT_TYPE: type})
                if broker.taken_sender is not None:
                    input_link(broker.taken_sender)
            return payload
        # On trio the waiter is its own wake-up: one object a waiting session
        # keeps, not two ("paused session" rows). No local more for it: this
        # frame is kept by every waiting session.
        waiter: Waiter = (
            TrioWaiter(node_id, path, spec, entry, type)
            if self._new_event is TrioWake
            else EventWaiter(node_id, path, spec, entry, type, self._new_event())
        )
        wait_span: ActiveSpan | None = None
        if tracing is not None:
            tracing.add_event("waiting_for_input", {INPUT_TYPE: type})
            # Human wait time, apart from the stage's work (a cut ends it for good).
            wait_span = tracing.start(f"wait {type}", {INPUT_TYPE: type}, revivable=False)
        broker.add(waiter)
        # An input wait without a short timeout may cut the trace (see _segments).
        long = self._on_long_block and (remaining is None or remaining > self._cut_after)
        if long:
            self.long_blocks += 1
        if self.long_blocks:
            # A short wait cuts too when it leaves only waits, one of them long.
            self._hooks.check_cut()
        history.record("waiting_for_input", node_id, path, _waiting_payload(type, timeout))
        timer = work._timer
        if timer is not None:
            timer.pause()
        timed_out: InputTimeoutError | None = None
        meters = self._state.metrics
        if meters is not None or wait_span is not None:
            # Begun before a suspend or a restore: measured from its start.
            wait_started = anyio.current_time() - self._waited_before(entry)
        if meters is not None:
            self.waits += 1
            if self.waits == 1:
                meters.waiting.add(1, {PIPELINE_NAME: self._state.pipeline.name})
        try:
            if self._on_block and (remaining is None or remaining > 0):
                # A wait already due blocks nothing (a poll): it times out now,
                # as a due timer goes on (see pause()).
                self._suspend_here()
            if remaining is None:
                await waiter.arrived.wait()
            else:
                with anyio.move_on_after(remaining) as scope:
                    await waiter.arrived.wait()
                # An input delivered in the instant the deadline passed was
                # journaled and its sender told so: it is received, not lost.
                if scope.cancelled_caught and not waiter.arrived.is_set():
                    timed_out = self._timeout_error(work, type, timeout)
        except BaseException:
            if waiter.arrived.is_set():
                self._torn_down(waiter, work)
            raise
        finally:
            broker.discard(waiter)
            if long:
                self.long_blocks -= 1
            if timer is not None:
                timer.resume()
            if wait_span is not None:
                Tracing.end(wait_span, *self._wait_ending(waiter, timed_out, path))
            if meters is not None:
                self._waited(meters, type, anyio.current_time() - wait_started, waiter)
        if self._on_long_block and tracing is not None:
            Segments.wake()  # the stage goes on: in a new segment if the wait was cut
        if timed_out is not None:
            raise self._timed_out(work, type, timeout, timed_out)
        entry.pop("parked", None)  # seen now
        history.record("input_received", node_id, path, {"input_type": type, "from": "sender"})
        if tracing is not None:
            tracing.add_event(
                "input_received",
                {INPUT_TYPE: type, WAIT_SECONDS: round(anyio.current_time() - wait_started, 6)},
            )
            if waiter.sender is not None:
                input_link(waiter.sender)
        return waiter.payload

    def _torn_down(self, waiter: Waiter, work: StageWork) -> None:
        """A wait delivered an input, then torn down before its stage saw it.

        Suspended, the saved position keeps the input in the stage's journal
        (it is replayed). Otherwise no stage will see it: the session lists it
        with the inputs it discards when it ends, unless the position a
        limit's stop saved holds it (it was delivered before that). It leaves
        the journal of the attempt being torn down, so that a snapshot taken
        before the position is gone does not hold it twice: as the wait's
        input, and in ``unseen_inputs``.
        """
        if self.stop_outcome == "suspended":
            return
        calls = work._calls
        if calls and calls[-1] is waiter.entry:
            calls.pop()
        state = self._state
        if state.unseen is None:
            state.unseen = []
        state.unseen.append(waiter.entry)

    def _waited(self, meters: Metrics, type: str, seconds: float, waiter: Waiter) -> None:
        """Measure a wait that ended (in the stage's span: it is the exemplar).

        A suspension ends no wait that kept when it began (``since``): the
        snapshot keeps it, and it is measured when it ends, from its start.
        """
        self.waits -= 1
        if self.waits == 0:
            meters.waiting.add(-1, {PIPELINE_NAME: self._state.pipeline.name})
        arrived = waiter.arrived.is_set()
        if not arrived and self.stop_outcome == "suspended" and "since" in waiter.entry:
            return
        self._measure_wait(meters, type, seconds, "received" if arrived else "not_received")

    def _waited_before(self, entry: Call) -> float:
        """Seconds a restored wait had waited (from its ``since``), or 0 for a new one."""
        since = entry.get("since")
        if since is None:
            return 0.0
        return max(0.0, (self.clock() - datetime.datetime.fromisoformat(since)).total_seconds())

    def _measure_wait(self, meters: Metrics, type: str, seconds: float, outcome: str) -> None:
        """Record one wait's duration, as it ended."""
        meters.input_wait.record(
            seconds, {PIPELINE_NAME: self._state.pipeline.name, INPUT_TYPE: type, OUTCOME: outcome}
        )

    def _wait_ending(
        self, waiter: Waiter, timed_out: InputTimeoutError | None, path: str
    ) -> tuple[str, InputTimeoutError | None, dict[str, Any] | None]:
        """How a wait span ends: its outcome, error and last attributes."""
        if waiter.arrived.is_set():
            return "succeeded", None, None
        if timed_out is not None:
            return "timed_out", timed_out, None
        outcome = self.stop_outcome
        if outcome != "cancelled":
            return outcome, None, None
        return outcome, None, {CANCEL_REASON: self._hooks.cancel_reason(path)}

    def _timed_out(
        self,
        work: StageWork,
        type: str,
        timeout: float | None,
        error: InputTimeoutError | None = None,
    ) -> InputTimeoutError:
        """Record ``input_timeout``; the error to raise (``error``, or a new one)."""
        self._state.history.record(
            "input_timeout", work._node.id, work._path, {"input_type": type, "timeout": timeout}
        )
        return error if error is not None else self._timeout_error(work, type, timeout)

    @staticmethod
    def _timeout_error(work: StageWork, type: str, timeout: float | None) -> InputTimeoutError:
        """The error of a wait for ``type`` that got no input in time."""
        node_id = work._node.id
        return InputTimeoutError(
            f"stage {work._node.stage!r} at node {node_id!r} waited {_or_inf(timeout):g} s for "
            f"input {type!r} and got none; send it sooner, raise the timeout, or route "
            "InputTimeoutError with an error edge",
            node_id=node_id,
            input_type=type,
            timeout=float(timeout or 0),
        )

    # ----------------------------------------------------------------- timers

    async def sleep(
        self, work: StageWork, seconds: float | None, until: datetime.datetime | None
    ) -> float:
        """Sleep on behalf of a stage, to an absolute deadline that snapshots keep."""
        self.check_live(work, "ctx.sleep" if until is None else "ctx.sleep_until")
        entry = self._replayed(work, "sleep", None)
        if entry is None:
            now = self.clock()
            if until is None:
                planned = max(0.0, seconds or 0.0)
                until = after(now, planned)
                if planned == math.inf:  # until the latest deadline: a snapshot holds no infinity
                    planned = (until - now).total_seconds()
            else:
                planned = max(0.0, (until - now).total_seconds())
            entry = {"sleep": until.astimezone(datetime.UTC).isoformat(), "seconds": planned}
            remaining = planned
        else:
            remaining = self.seconds_until(entry["sleep"])
        work.journal(entry)
        await self.pause(remaining)
        return float(entry["seconds"])

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` as a position blocked on a timer (for suspend mode).

        A timer that is already due blocks nothing: a session restored at its
        ``wake_at`` goes on instead of suspending again.
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self.sleeping += 1
        long = self._on_long_block and seconds > self._cut_after
        if long:
            self.long_blocks += 1
        try:
            if self.long_blocks:  # a short timer cuts too, beside a long wait
                self._hooks.check_cut()
            if self._on_block:
                self._suspend_here()
            await anyio.sleep(seconds)
            if self._on_long_block and self._state.tracing is not None:
                Segments.wake()  # the stage goes on: in a new segment if the wait was cut
        finally:
            self.sleeping -= 1
            if long:
                self.long_blocks -= 1

    def _suspend_here(self) -> None:
        """Suspend mode, a position blocks: raise :class:`RunSuspended` if the run suspends now.

        On trio only: this is where the run would park the task, for trio to
        cancel it through a pass of its scheduler ("paused session,
        suspended" rows). The run's scope is cancelled all the same, so a
        stage that swallows the exception is stopped at its next checkpoint.
        On asyncio the cancellation ends the wait, as it ends every other.
        """
        if self._hooks.check_idle() and self._new_event is TrioWake:
            raise RunSuspended(_SUSPENDED_HERE)

    def clock(self) -> datetime.datetime:
        """The session's UTC clock: the wall clock at the run's start, moved by the loop's clock.

        Virtual time (a mock clock) moves it too.
        """
        return after(self._started_at, anyio.current_time() - self._loop_start)

    def seconds_until(self, deadline: str) -> float:
        """Seconds from now to an ISO deadline (0 when it has passed)."""
        left = datetime.datetime.fromisoformat(deadline) - self.clock()
        return max(0.0, left.total_seconds())

    def _replayed(self, work: StageWork, kind: str, key: str | None) -> Call | None:
        """The journal entry this call replays after a restore, or ``None`` for a new call.

        A call that does not match the journal (the stage took another way
        this time) ends the replay: it and every later call run live. An
        input sent to the saved wait (``parked``), which the stage never saw,
        is queued again for the next wait of its type: it is not lost.
        """
        replay = work._replay
        if not replay:
            return None
        entry = replay.pop(0)
        parked = self._state.parked
        if kind in entry and (key is None or entry.get(kind) == key):
            if parked is not None:
                parked.pop(id(entry), None)  # the stage takes its input
            return entry
        work._replay = None
        for unseen in (entry, *replay):
            if unseen.get("parked"):
                self._state.desk.broker.requeue(unseen["wait"], unseen["payload"])
                if parked is not None:
                    parked.pop(id(unseen), None)  # in the backlog now
        self._state.history.record(
            "replay_diverged",
            work._node.id,
            work._path,
            {"expected": _describe_call(entry), "got": _describe_call({kind: key})},  # type: ignore[misc]
        )
        return None

    # ---------------------------------------------------------------- events

    def emit(self, work: StageWork, type: str, payload: Mapping[str, Any] | None) -> None:
        """Record a stage's own event after checking it against the stage's spec."""
        self.check_live(work, "ctx.emit", type)
        node_id = work._node.id
        stage = work._node.stage
        problem = event_type_problem(type)
        if problem is not None:
            raise StageContractError(
                f"stage {stage!r} at node {node_id!r} emitted an event of type {type!r}: "
                f"{problem}; emit a non-empty string naming what happened in the stage, such "
                "as 'order_priced'",
                node_id=node_id,
            )
        body: Any = {} if payload is None else payload
        if not isinstance(body, Mapping):
            raise NonJsonValueError(
                f"event {type!r} payload", body, expected="a JSON object", fix="emit a dict"
            )
        bad = find_non_json(body, "payload")
        if bad is not None:
            raise NonJsonValueError(
                f"event {type!r} {bad[0]}",
                bad[1],
                detail=bad.reason,
                fix="emit only dict, list, str, int, float, bool or None",
            )
        spec = work.spec
        if spec.allowed_events:
            matching = [s for s in spec.allowed_events if s.type == type]
            if not matching:
                declared = ", ".join(s.type for s in spec.allowed_events)
                raise StageContractError(
                    f"stage {stage!r} at node {node_id!r} emitted event {type!r}, which "
                    f"its spec does not declare (declared: {declared}); add an EventSpec for it",
                    node_id=node_id,
                )
            mode = self._state.mode
            if mode is not ValidateEvents.OFF:
                errors = schema_errors(matching[0].validator, dict(body))
                if errors and mode is ValidateEvents.STRICT:
                    raise StageContractError(
                        f"stage {stage!r} at node {node_id!r} emitted event {type!r} "
                        f"that does not match its schema: {'; '.join(errors)}",
                        node_id=node_id,
                    )
                if errors:
                    self._state.history.record(
                        "event_validation_failed",
                        node_id,
                        work._path,
                        {"kind": "event", "event_type": type, "errors": errors},
                    )
        self.check_history(node_id)
        self._state.history.record(type, node_id, work._path, copy_json(body))

    def check_live(self, work: StageWork, call: str, argument: str | None = None) -> None:
        """Raise ``StageContractError`` when ``work``'s attempt is over (a context kept too long).

        Its run has ended (the session finished or was suspended), or its
        frame went on (to the next node, or to another attempt). ``call``
        and its ``argument`` name the method in the message (formatted only
        then: not per wait or event, "paused session, time to pause" rows).
        """
        frame = work._frame
        try:
            live = self._state.run is self
        except AttributeError:  # the run is over and let go of its session (Run._release)
            live = False
        if live and (frame is None or frame.work is work):
            return
        node = work._node
        shown = "" if argument is None else repr(argument)
        raise StageContractError(
            f"stage {node.stage!r} at node {node.id!r} called {call}({shown}) after its attempt "
            f"{work._tries} ended; a StageContext serves only while the stage's run() (or "
            "cleanup()) runs: do not keep it, or a task using it, past the stage's return",
            node_id=node.id,
        )

    def check_history(self, node_id: str) -> None:
        """Raise ``LimitExceededError`` when the history is full (``limits.max_history``)."""
        limit = self._state.limits.max_history
        if limit is not None and self._state.desk.history_full():
            raise LimitExceededError(limit="max_history", value=limit, node_id=node_id)


# Input type -> the payload of its waiting_for_input event without a timeout, shared
# (History.record keeps payloads as given and hands out copies): one dict per
# waiting session otherwise ("paused session, memory each" benchmark row).
_WAITING: Final[dict[str, Mapping[str, Any]]] = {}
_MAX_WAITING: Final = 4096


def _waiting_payload(type: str, timeout: float | None) -> Mapping[str, Any]:
    """The ``waiting_for_input`` payload (shared without a timeout: do not modify)."""
    if timeout is not None:
        return {"input_type": type, "timeout": timeout}
    payload = _WAITING.get(type)
    if payload is None:
        payload = {"input_type": type, "timeout": None}
        if len(_WAITING) < _MAX_WAITING:
            _WAITING[type] = payload
    return payload


def _undeclared_input(work: StageWork, type: str) -> StageContractError:
    """The error for a wait on an input type the stage's spec does not declare."""
    declared = ", ".join(s.type for s in work.spec.allowed_inputs)
    return StageContractError(
        f"stage {work._node.stage!r} at node {work._node.id!r} waits for input {type!r}, which "
        f"its spec does not declare (declared: {declared}); add an InputSpec for it",
        node_id=work._node.id,
    )


def _declares(spec: StageSpec, type: str) -> bool:
    """Whether ``spec`` declares inputs of ``type``."""
    return any(declared.type == type for declared in spec.allowed_inputs)


def _describe_call(entry: Call) -> str:
    if "wait" in entry:
        return f"wait_input({entry['wait']!r})"
    return "sleep"


def _or_inf(timeout: float | None) -> float:
    """``timeout`` or infinity."""
    return float("inf") if timeout is None else timeout
