"""The one place where a turn's history moves from the snapshot to the events table.

Today (snapshot format v1) the snapshot carries the whole history, so the
events of a turn are the snapshot's history entries past ``events_done``.
Once the engine can write the history to a sink instead (snapshot format v2,
history out of the snapshot), only :func:`turn_events` changes: it takes the
sink's events of the turn, and the snapshot stops carrying them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["SnapshotInfo", "dumps", "snapshot_info", "turn_events"]


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


def turn_events(
    snapshot: Mapping[str, Any], events_done: int
) -> tuple[list[Mapping[str, Any]], int]:
    """The history events a turn adds (``seq > events_done``) and the new ``events_done``."""
    new = [e for e in snapshot.get("history", ()) if int(e["seq"]) > events_done]
    last = max((int(e["seq"]) for e in new), default=events_done)
    return new, last
