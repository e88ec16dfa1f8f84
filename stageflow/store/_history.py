"""The one place where a turn's history leaves the snapshot for the events table.

Stored snapshots are format v3 (v2 before issue 18) with the history out
(``to_dict(history="none")``): the snapshot row holds ``history_seq`` and no
events, and each turn's new events (``events_done < seq < history_seq``) go
to the events table in the
same fenced transaction that saves the snapshot. So a turn writes O(context),
not O(history), whatever the session's age. A reader that wants the whole
history back (``load(..., history=True)``) gets it reassembled from the
events table by :func:`with_history`.

Snapshots stored by an older stageflow (v1, history inside) still load: the
first turn after them keeps only the events it records, and
:func:`with_history` merges the events a v1 snapshot still holds with those
the table holds past them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from stageflow._engine._snapshot import event_from_dict
from stageflow._session import Session

__all__ = [
    "SnapshotInfo",
    "dumps",
    "snapshot_info",
    "split_history",
    "turn_snapshot",
    "with_history",
]


def dumps(value: Any) -> str:
    """Compact JSON text, as stored."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SnapshotInfo:
    """The columns a store derives from a snapshot."""

    __slots__ = ("digest", "pipeline", "session_id", "status")

    def __init__(self, session_id: str, pipeline: str, digest: str, status: str) -> None:
        self.session_id = session_id
        self.pipeline = pipeline
        self.digest = digest
        self.status = status


def snapshot_info(snapshot: Mapping[str, Any]) -> SnapshotInfo:
    """Session id, pipeline name and digest, and status of a ``Session.to_dict()``."""
    pipeline = snapshot.get("pipeline") or {}
    return SnapshotInfo(
        str(snapshot["session_id"]),
        str(pipeline.get("name", "")),
        str(pipeline.get("digest", "")),
        str(snapshot.get("status", "pending")),
    )


def turn_snapshot(
    session: Session, events_done: int, *, keep_history: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The snapshot to store after a turn and the events the turn adds.

    The events are those the session holds with ``events_done < seq <
    history_seq``: each ``seq`` leaves once, in the save that commits it.
    ``keep_history`` (a store without an events table) keeps every event
    the session holds in the snapshot as well.
    """
    snapshot = session.to_dict(history="all" if keep_history else "none")
    end = int(snapshot["history_seq"])
    events = [e.to_dict() for e in session.history if events_done < e.seq < end]
    return snapshot, events


def split_history(
    snapshot: Mapping[str, Any], events_done: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A snapshot with its history taken out, and the events past ``events_done`` it held.

    For snapshots a caller made with their history inside (``create`` of a
    session that already recorded events, a v1 snapshot).
    """
    held = list(snapshot.get("history") or ())
    out = dict(snapshot)
    if held:
        out["history"] = []
        out.setdefault("history_seq", max(int(e["seq"]) for e in held) + 1)
    # The events table holds whole events (``Event.to_dict()``): a v3 snapshot's
    # leave out their session id and null span ids.
    session_id = str(snapshot["session_id"])
    return out, [
        event_from_dict(e, session_id).to_dict() for e in held if int(e["seq"]) > events_done
    ]


def with_history(
    snapshot: Mapping[str, Any], stored: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``snapshot`` with its history reassembled: the events it holds, then those stored after."""
    held = list(snapshot.get("history") or ())
    last = max((int(e["seq"]) for e in held), default=0)
    out = dict(snapshot)
    out["history"] = [*held, *(dict(e) for e in stored if int(e["seq"]) > last)]
    return out
