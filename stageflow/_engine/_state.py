"""A session's state across runs: what the public ``Session`` handle holds.

:class:`SessionState` is everything that outlives one ``run()``: the
pipeline and its resolved stages, the context, the history, the input desk,
counters, deadlines, the positions a waiting session resumes from, and its
outcome. A :class:`~stageflow._engine._run.Run` works on it; the snapshot
module reads and writes it.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NotRequired, Protocol, TypedDict

import anyio.lowlevel

from stageflow._context import Context
from stageflow._engine._desk import InputDesk
from stageflow._engine._frames import Scope
from stageflow._engine._positions import Call, FramePosition, not_kept, parked_calls, unseen_inputs
from stageflow._errors import LimitExceededError, StageflowError, describe_exception
from stageflow._events import History
from stageflow._identity import IdentityCache
from stageflow._json import copy_json
from stageflow._metrics import Metrics
from stageflow._model import Limits, TerminalNode, ValidateEvents
from stageflow._pipeline import Pipeline
from stageflow._result import SessionResult, SessionStatus
from stageflow._segments import OpenSpan
from stageflow._stages import StageEntry
from stageflow._telemetry import Tracing

__all__ = ["FINISHED", "ActiveRun", "Saved", "SessionState", "TraceIds"]

FINISHED: Final = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
        SessionStatus.TIMED_OUT,
    }
)
"""The statuses a session ends in."""

# Status -> its value: an enum's .value is a descriptor call ("paused session,
# time to resume" rows: once per session's end).
_STATUS_TEXT: Final = {status: status.value for status in SessionStatus}

_FINAL_EVENT: Final = {
    SessionStatus.COMPLETED: "session_completed",
    SessionStatus.FAILED: "session_failed",
    SessionStatus.CANCELLED: "session_cancelled",
    SessionStatus.TIMED_OUT: "session_timed_out",
}

# A 53-bit integer times this is a float in [0, 1), as random.random() makes one.
_UNIT: Final = 2.0**-53


class FinalPosition(TypedDict):
    """What a restored session that is not active keeps of its snapshot."""

    position: FramePosition | None
    trace: TraceIds | None


class TraceIds(TypedDict):
    """The root span of the run that took a snapshot, and the spans open then (live ones)."""

    trace_id: str
    span_id: str
    open: NotRequired[list[OpenSpan]]
    seen: NotRequired[int]  # when a live snapshot was taken (ns since the epoch)


class Saved(TypedDict):
    """What a waiting session resumes from: positions, step counter, run span, digest."""

    position: FramePosition
    steps: int
    trace: TraceIds | None
    digest: str
    # What a suspension found the position waits for (input types, earliest
    # deadline), from check_idle to the run's result, which takes it out:
    # worked out once ("paused session, suspended" rows). Never in a snapshot.
    awaited: NotRequired[tuple[frozenset[str], str | None]]


class ActiveRun(Protocol):
    """What the session and its snapshots ask of the run in progress (``_run.Run``)."""

    @property
    def suspending(self) -> bool:
        """Whether the run is being torn down to suspend."""

    @property
    def current_node(self) -> str | None:
        """The node the main path is at."""

    @property
    def token(self) -> anyio.lowlevel.EventLoopToken | None:
        """The event loop's token while the run runs."""

    @property
    def loop_thread(self) -> int:
        """The event loop's thread."""

    def clock(self) -> datetime.datetime:
        """The session's UTC clock for this run."""

    def saved_state(self) -> Saved:
        """What the run would resume from, now."""

    def cancel(self) -> None:
        """End the run."""


# Each terminal node's result as a plain dict: the node keeps it frozen (read-only
# mappings, tuples), which copy_json walks through the Mapping ABC, and a run
# that completes copies it twice ("paused session ... time to resume" rows).
_PLAIN_RESULTS: Final[IdentityCache[dict[str, Any]]] = IdentityCache()


def _plain_result(terminal: TerminalNode) -> dict[str, Any]:
    """``terminal.result`` as plain JSON, made once per node: copy it before handing it out."""
    plain = _PLAIN_RESULTS.get(terminal)
    if plain is None:
        plain = _PLAIN_RESULTS.put(terminal, copy_json(terminal.result))
    return plain


class SessionState:
    """A session's state across runs (see the module docstring)."""

    __slots__ = (
        "cancel_reason",
        "clock",
        "ctx",
        "deadline",
        "desk",
        "draws",
        "entries",
        "error",
        "final",
        "history",
        "last_node",
        "limits",
        "metrics",
        "mode",
        "outcome",
        "parked",
        "pipeline",
        "rng",
        "root_ids",
        "run",
        "saved",
        "seed",
        "session_id",
        "status",
        "steps",
        "stopped_by_limit",
        "tracing",
        "unseen",
    )

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        entries: Mapping[int, StageEntry],
        session_id: str,
        payload: dict[str, Any],
        limits: Limits,
        mode: ValidateEvents,
        seed: int | None,
        clock: Callable[[], datetime.datetime],
        tracing: Tracing | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.entries = entries  # the registry entry of every stage node, by node identity
        self.session_id = session_id
        self.limits = limits
        self.mode = mode
        self.ctx = Context(payload)
        self.tracing = tracing
        self.metrics = metrics
        self.history = History(session_id, tracing=tracing)
        self.desk = InputDesk(self.history, limits, mode, entries)
        # A traced session links each stage that gets an input to the span that sent it.
        self.desk.broker.trace_senders = tracing is not None
        self.desk.metrics = metrics
        self.seed = seed
        self.rng: random.Random | None = None  # built when an unseeded jittered retry needs it
        self.draws = 0  # jitter numbers drawn (a seeded restore goes on from the count)
        self.clock = clock
        self.deadline: str | None = None  # the session deadline, absolute (ISO 8601)
        # What a WAITING session resumes from (a restore, or its own suspension).
        self.saved: Saved | None = None
        self.outcome: dict[str, Any] | None = None  # a finished session's result, for snapshots
        # The parked entries (inputs sent to saved waits) of the run in
        # progress that no restored stage has replayed yet, by identity: a
        # run that ends first lists them as discarded (positions.parked_calls).
        self.parked: dict[int, Call] | None = None
        # The entries of live waits that were given an input and torn down
        # before their stage saw it: discarded when the session ends, unless
        # a saved position keeps them (a suspension or a limit's stop).
        self.unseen: list[Call] | None = None
        self.root_ids: TraceIds | None = None  # the last run's root span, for snapshots
        self.status = SessionStatus.PENDING
        self.steps = 0
        self.error: StageflowError | None = None
        self.cancel_reason: str | None = None
        self.run: ActiveRun | None = None  # the run in progress, if any
        self.last_node: str | None = None  # where the main path was when the last run ended
        # A restored session that is not active: its position and trace as saved,
        # so that its snapshot says the same (the run that reached them is gone).
        self.final: FinalPosition | None = None
        # The limit error that stopped the last run at a node boundary; ``saved``
        # then holds where it stopped, so a restore with the limit raised resumes.
        self.stopped_by_limit: LimitExceededError | None = None

    def wait_at(self, saved: Saved) -> None:
        """Make the session wait at ``saved``: a suspension's or a restore's positions.

        The session's context is the saved position's own, not a second
        copy: a waiting session may wait for days, and every container of
        its context would be held, and walked by the collector, twice. The
        run that resumes takes that same dict (``Run._resume``).
        """
        self.saved = saved
        self.ctx = Context(saved["position"]["context"])
        self.status = SessionStatus.WAITING

    def random(self) -> float:
        """The next number of the session's jitter generator (a snapshot counts them).

        Seeded, the ``n``-th number is worked out from the seed and ``n``
        alone, so that a restore goes on from the count it saved without
        drawing the numbers before it again: the count of a session that
        retries for months grows without bound, and its restore stays as
        cheap. Unseeded, numbers come from a generator seeded by the system.
        """
        self.draws += 1
        if self.seed is None:
            if self.rng is None:
                self.rng = random.Random()
            return self.rng.random()
        key = f"{self.seed}/{self.draws}".encode()
        bits = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 11
        return bits * _UNIT

    def finish(
        self,
        status: SessionStatus,
        error: StageflowError | None,
        main: Scope | None,
        *,
        reason: str | None = None,
        unseen: Sequence[Call] = (),
    ) -> SessionResult:
        """End the session: its status, outcome and final event; the result.

        ``unseen`` are the parked entries of inputs the session took that no
        stage has seen (sent to the saved waits of a session that ends while
        waiting, or before those stages ran again): they are discarded with
        the backlog. A session a limit stopped discards only those its saved
        positions do not keep: the rest, and its backlog, wait for the
        restore that raises the limit.
        """
        self.status = status
        self.error = error
        if error is None or error is not self.stopped_by_limit:
            self.stopped_by_limit = None  # it failed for another reason: nothing to resume
        entries = [*unseen, *self.unseen] if self.unseen else unseen
        broker = self.desk.broker
        backlog = bool(broker.queued())
        if self.stopped_by_limit is not None and self.saved is not None:
            entries = not_kept(entries, parked_calls(self.saved["position"]))
            backlog = False  # in the snapshot, for the resume
        completed = status is SessionStatus.COMPLETED
        terminal = main.terminal if main is not None else None
        plain = _plain_result(terminal) if completed and terminal else None
        result = copy_json(plain) if plain is not None else None
        artifacts = main.artifacts if completed and main is not None else {}
        described = describe_exception(error) if error is not None else None
        # Kept before the final event, so a snapshot taken by its subscribers
        # has it. The result is the node's plain copy itself, not a copy of
        # it: the outcome is only read by to_dict(), which copies it (a copy
        # less per completed run: "paused session ... time to resume" rows).
        self.outcome = {
            "result": plain,
            "artifacts": copy_json(artifacts),
            "error": described,
        }
        # Inputs nobody received are said to be dropped, never dropped in silence.
        discarded = tuple(unseen_inputs(entries)) if entries else ()
        if backlog:
            queued = broker.backlog().items()
            discarded += tuple((type, payload) for type, payloads in queued for payload in payloads)
        if discarded:
            self.history.record(
                "inputs_discarded",
                None,
                "",
                {
                    "count": len(discarded),
                    "inputs": [{"input_type": t, "payload": p} for t, p in discarded],
                },
            )
        payload: dict[str, Any] = {"status": _STATUS_TEXT[status], "steps": self.steps}
        if described is not None:
            payload["error"] = copy_json(described)
        if reason is not None:
            payload["reason"] = reason
        if self.desk.unrecorded_rejections:
            # Inputs rejected past the budget for recording them (senders were told).
            payload["unrecorded_rejections"] = self.desk.unrecorded_rejections
        self.history.record(_FINAL_EVENT[status], None, "", payload)
        self.history.close()
        return SessionResult(
            status=status,
            result=result,
            artifacts=artifacts,
            error=error,
            history=self.history.events,
            discarded_inputs=discarded,
        )
