"""What a finished session returns."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from stageflow._errors import StageflowError, describe_exception
from stageflow._events import Event

__all__ = ["SessionResult", "SessionStatus"]


class SessionStatus(enum.StrEnum):
    """Where a session is in its life.

    ``pending`` and ``running`` are never in a :class:`SessionResult`; the
    others end a run.
    """

    PENDING = "pending"
    RUNNING = "running"
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
        error: the typed error that ended a failed run, else ``None``.
        history: every event of the session, in order.
    """

    status: SessionStatus
    result: Mapping[str, Any] | None
    artifacts: Mapping[str, Any]
    error: StageflowError | None
    history: tuple[Event, ...] = attrs.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return {
            "status": self.status.value,
            "result": self.result,
            "artifacts": dict(self.artifacts),
            "error": describe_exception(self.error) if self.error is not None else None,
            "history": [event.to_dict() for event in self.history],
        }
