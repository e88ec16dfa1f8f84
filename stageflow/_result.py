"""What a finished session returns."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from stageflow._errors import StageflowError, describe_exception
from stageflow._events import Event

__all__ = ["SessionResult", "SessionStatus", "input_types"]


def input_types(types: Iterable[str]) -> tuple[str, ...]:
    """Input types in their one public shape: a sorted tuple without repeats."""
    return tuple(sorted(set(types)))


class SessionStatus(enum.StrEnum):
    """Where a session is in its life.

    ``pending`` and ``running`` are never in a :class:`SessionResult`;
    ``waiting`` pauses a run (suspend mode, or a restored session not yet
    run); the others end it.
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    """Suspended: every active position waits for an input or a timer
    (``run(suspend=True)``). Snapshot it with ``to_dict()``; ``run()`` goes on."""
    COMPLETED = "completed"
    """A terminal node was reached."""
    FAILED = "failed"
    """A node failed and no error edge handled it; ``error`` says why."""
    CANCELLED = "cancelled"
    """``session.cancel()`` was called or the task running it was cancelled."""
    TIMED_OUT = "timed_out"
    """The session deadline (``limits.timeout``) passed; ``error`` is a
    :class:`~stageflow.SessionTimeoutError`."""


@attrs.frozen
class SessionResult:
    """The outcome of :meth:`Session.run`.

    Attributes:
        status: how the run ended.
        result: the terminal node's ``result`` object, or ``None`` when no
            terminal was reached. Never a status string.
        artifacts: context path -> value, for the terminal's ``artifacts``.
        error: the typed error that ended a failed or timed-out run, else ``None``.
        history: the events the session holds, in order: every event of a
            session that was never restored; for a restored one, the events
            its snapshot kept (all, the newest ``n`` or none, see
            ``Session.to_dict(history=...)``) and every event since. ``seq``
            numbering never restarts. A read-only sequence, not a tuple
            (an event log, see ``docs/concepts.md``): each event is made
            when it is read.
        waiting_for: for ``waiting``: the input types the session waits for,
            sorted (a tuple: JSON-friendly, the same shape as
            :meth:`Session.waiting_for() <stageflow.Session.waiting_for>`).
        wake_at: for ``waiting``: the earliest timer deadline (UTC) of a
            sleep, a retry delay, an input timeout or the session deadline,
            when the session should run again even without input; else ``None``.
        discarded_inputs: for a session that ended: the inputs still queued
            when it ended, which no stage received, as ``(type, payload)``
            pairs in the order they were sent per type (also recorded as an
            ``inputs_discarded`` event). Empty otherwise.
    """

    status: SessionStatus
    result: Mapping[str, Any] | None
    artifacts: Mapping[str, Any]
    error: StageflowError | None
    history: Sequence[Event] = attrs.field(repr=False)
    waiting_for: tuple[str, ...] = attrs.field(default=(), converter=input_types)
    wake_at: datetime.datetime | None = None
    discarded_inputs: tuple[tuple[str, Any], ...] = ()

    def to_dict(self, *, history: bool = True) -> dict[str, Any]:
        """The result as a JSON object (with ``waiting_for`` and ``wake_at`` when waiting).

        Args:
            history: include the event history (``"history"``); ``False``
                leaves the key out, for printing a result.
        """
        out: dict[str, Any] = {
            "status": self.status.value,
            "result": self.result,
            "artifacts": dict(self.artifacts),
            "error": describe_exception(self.error) if self.error is not None else None,
        }
        if history:
            out["history"] = [event.to_dict() for event in self.history]
        if self.status is SessionStatus.WAITING:
            out["waiting_for"] = list(self.waiting_for)
            out["wake_at"] = self.wake_at.isoformat() if self.wake_at is not None else None
        return out
