"""The step and event limits of one run: lifetime and per-run bounds folded into two caps.

A session has *lifetime* limits (``max_steps``, ``max_history``: over its
whole life, across runs and restores) and *per-run* limits
(``max_run_steps``, ``max_run_events``: within one ``run()``). At the start
of a run both kinds are folded into one cap on the step counter and one on
the number of events held, so the choke point (``Run.execute``) pays one
comparison for each, as it did for the lifetime limits alone.

When a cap is passed, :meth:`RunCaps.error` says which limit it was, with
advice the user can follow where they are: raise the limit on the live
session's next restore (``Session.from_dict(snapshot, limits=...)`` resumes a
session stopped by a limit at the node it stopped at), or look for a loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from stageflow._errors import LimitExceededError
from stageflow._model import Limits

__all__ = ["DEFAULT_LIMITS", "RESUMABLE", "RunCaps", "limits_of", "raised", "run_time_error"]

DEFAULT_LIMITS: Final = Limits()
"""The default limits: one shared instance (``Limits`` is frozen)."""

RESUMABLE: Final = frozenset(
    {"max_steps", "max_history", "max_run_steps", "max_run_events", "max_run_seconds"}
)
"""The limits that stop a session where it can be resumed."""

_RESUME: Final = (
    "to go on, restore it with the limit raised: Session.from_dict(session.to_dict(), "
    "limits=...) resumes it at node {node!r}"
)


def limits_of(snapshot: Mapping[str, Any]) -> Limits:
    """The limits a snapshot keeps (those left out have their defaults)."""
    kept = snapshot["limits"]
    return Limits(**kept) if kept else DEFAULT_LIMITS


def _cap(lifetime: int | None, start: int, per_run: int | None) -> float:
    """The counter value beyond which a limit is passed (``inf``: no bound)."""
    if per_run is None:
        return math.inf if lifetime is None else lifetime
    if lifetime is None:
        return start + per_run
    return min(lifetime, start + per_run)


class RunCaps:
    """The step and event caps of one run (see the module docstring)."""

    __slots__ = ("events", "events_at_start", "limits", "steps", "steps_at_start")

    def __init__(self, limits: Limits, steps_at_start: int, events_at_start: int) -> None:
        self.limits = limits
        self.steps_at_start = steps_at_start
        self.events_at_start = events_at_start
        # The step counter may not pass ``steps``; the events held may not reach ``events``.
        self.steps = _cap(limits.max_steps, steps_at_start, limits.max_run_steps)
        self.events = _cap(limits.max_history, events_at_start, limits.max_run_events)

    def error(self, node_id: str, steps: int, events: int) -> LimitExceededError:
        """The error for the limit a node at ``steps`` / ``events`` passed.

        ``events`` (and ``events_at_start``) count the events held less the
        recorded input rejections, which have a budget of their own.
        """
        limits = self.limits
        if steps > self.steps:
            lifetime = limits.max_steps is not None and steps > limits.max_steps
            if lifetime:
                assert limits.max_steps is not None
                return LimitExceededError(
                    limit="max_steps",
                    value=limits.max_steps,
                    node_id=node_id,
                    detail=(
                        f"session limit max_steps={limits.max_steps} reached at node "
                        f"{node_id!r} (node executions over the session's life); if it loops, "
                        "fix the loop; a session that lives on should bound each run with "
                        "limits.max_run_steps and set limits.max_steps to null; "
                        + _RESUME.format(node=node_id)
                    ),
                )
            assert limits.max_run_steps is not None
            return LimitExceededError(
                limit="max_run_steps",
                value=limits.max_run_steps,
                node_id=node_id,
                detail=(
                    f"run limit max_run_steps={limits.max_run_steps} reached at node "
                    f"{node_id!r}: this run() executed {limits.max_run_steps} nodes. Look for a "
                    "loop that never waits, or raise the limit; " + _RESUME.format(node=node_id)
                ),
            )
        lifetime = limits.max_history is not None and events >= limits.max_history
        if lifetime:
            assert limits.max_history is not None
            return LimitExceededError(
                limit="max_history",
                value=limits.max_history,
                node_id=node_id,
                detail=(
                    f"session limit max_history={limits.max_history} reached at node "
                    f"{node_id!r}: the session holds {events} events. Keep the history out of "
                    'the snapshot (session.to_dict(history="none") or a count), so a restored '
                    "session holds only its new events, or raise the limit; "
                    + _RESUME.format(node=node_id)
                ),
            )
        assert limits.max_run_events is not None
        return LimitExceededError(
            limit="max_run_events",
            value=limits.max_run_events,
            node_id=node_id,
            detail=(
                f"run limit max_run_events={limits.max_run_events} reached at node "
                f"{node_id!r}: this run() recorded {events - self.events_at_start} events. "
                "Look for a loop, or raise the limit; " + _RESUME.format(node=node_id)
            ),
        )


def run_time_error(seconds: float, node_id: str) -> LimitExceededError:
    """The error for a run past ``limits.max_run_seconds``, its main path at ``node_id``."""
    return LimitExceededError(
        limit="max_run_seconds",
        value=seconds,
        node_id=node_id,
        detail=(
            f"run limit max_run_seconds={seconds:g} reached at node {node_id!r}: this run() "
            f"took {seconds:g} s. Look for a stage that never returns, run with "
            "suspend=True so that a run ends at its waits, or raise the limit; the stages in "
            "flight run again when it goes on; " + _RESUME.format(node=node_id)
        ),
    )


def raised(limit: str, before: Limits, after: Limits) -> bool:
    """Whether ``after`` gives a session stopped by ``limit`` under ``before`` more room."""
    old = getattr(before, limit)
    new = getattr(after, limit)
    if new is None:
        return old is not None
    return old is not None and bool(new > old)
