"""A small snapshot store over SQLite (standard library) for durable sessions.

stageflow ships no storage of its own: a snapshot (``session.to_dict()``) is a
plain JSON object, and where it goes is the application's choice. This store
is a model of one, in two tables::

    sessions(session_id TEXT PRIMARY KEY, snapshot TEXT, status TEXT,
             waiting_for TEXT, updated_at TEXT)
    events(session_id TEXT, seq INTEGER, event TEXT, PRIMARY KEY (session_id, seq))

``snapshot`` is the JSON text, ``status`` and ``waiting_for`` (a JSON list of
input types) are copied out of the session so that a service can find its
waiting sessions without parsing snapshots, and ``updated_at`` is the UTC
time of the last save.

The snapshot leaves the history out (``to_dict(history="none")``), so its size
does not grow with the conversation; the events go to ``events`` instead, in
the same transaction as the snapshot, each exactly once: a save appends the
events the session holds (``session.history``: for a restored session, those
recorded since the restore) that come after the last stored one and before
the snapshot's ``history_seq``. A request that fails before its save writes
neither, and the next one restores the previous snapshot, whose numbering
goes on where the stored events end.

Two requests for the same session must not run at the same time, or the
later save would drop the earlier one's turn. :meth:`SnapshotStore.transaction`
takes SQLite's write lock for a whole load -> run -> save.

This is an example, not a model for a service: holding the database's write
lock across a whole run makes every request, for any session, wait for the
slowest one. A service locks per session (a lease column, or a version number
checked on save) only around the load and the save; stageflow's own session
store (the scale-out work) will do that. See docs/snapshots.md, "Storage".
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import stageflow

__all__ = ["SessionNotFoundError", "SnapshotStore", "StoredSession"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT PRIMARY KEY,
    snapshot    TEXT NOT NULL,
    status      TEXT NOT NULL,
    waiting_for TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, updated_at);
CREATE TABLE IF NOT EXISTS events (
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""


class SessionNotFoundError(LookupError):
    """The store holds no session with this id.

    Attributes:
        session_id: the id that was looked up.
    """

    def __init__(self, session_id: str, path: str) -> None:
        super().__init__(
            f"no session {session_id!r} in {path}; start one first, or check the id "
            "(it is printed by the request that started the session)"
        )
        self.session_id = session_id


class StoredSession(NamedTuple):
    """What the store knows about a session without parsing its snapshot.

    Attributes:
        session_id: the session's id.
        status: the session's status when it was saved (``waiting``, ``completed``, ...).
        waiting_for: the input types it was waiting for, sorted.
        updated_at: when it was last saved (ISO 8601, UTC).
    """

    session_id: str
    status: str
    waiting_for: tuple[str, ...]
    updated_at: str


class SnapshotStore:
    """Session snapshots in one SQLite file.

    Args:
        path: the database file (created with its table if missing), or
            ``":memory:"``.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        # Autocommit: every statement is its own transaction unless
        # transaction() opens one.
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.executescript(SCHEMA)

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the database's write lock; commit at the end, roll back on an exception.

        Wrap one request in it (load, send the input, run, save) so that two
        requests never advance the same session from the same snapshot.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def save(self, session: stageflow.Session) -> dict[str, Any]:
        """Store the session's snapshot (without its history) and append its new events.

        Returns the snapshot.
        """
        snapshot = session.to_dict(history="none")
        (stored,) = self._db.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE session_id = ?",
            (session.session_id,),
        ).fetchone()
        self._db.executemany(
            "INSERT INTO events (session_id, seq, event) VALUES (?, ?, ?)",
            [
                (session.session_id, e.seq, json.dumps(e.to_dict(), ensure_ascii=False))
                for e in session.history
                if stored < e.seq < snapshot["history_seq"]
            ],
        )
        self._db.execute(
            "INSERT INTO sessions (session_id, snapshot, status, waiting_for, updated_at) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET snapshot = excluded.snapshot, "
            "status = excluded.status, waiting_for = excluded.waiting_for, "
            "updated_at = excluded.updated_at",
            (
                session.session_id,
                json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False),
                snapshot["status"],
                json.dumps(sorted(session.waiting_for())),
                datetime.datetime.now(datetime.UTC).isoformat(),
            ),
        )
        return snapshot

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """Every event stored for ``session_id``, in ``seq`` order (``Event.to_dict()`` form)."""
        rows = self._db.execute(
            "SELECT event FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def load(self, session_id: str) -> dict[str, Any]:
        """The snapshot last saved for ``session_id``, for ``Session.from_dict``.

        Raises:
            SessionNotFoundError: no session with this id was saved.
        """
        row = self._db.execute(
            "SELECT snapshot FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id, self._path)
        snapshot: dict[str, Any] = json.loads(row[0])
        return snapshot

    def info(self, session_id: str) -> StoredSession:
        """Status, awaited inputs and save time of ``session_id``.

        Raises:
            SessionNotFoundError: no session with this id was saved.
        """
        row = self._db.execute(
            "SELECT session_id, status, waiting_for, updated_at FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id, self._path)
        return _stored(row)

    def waiting(self, input_type: str | None = None) -> list[StoredSession]:
        """The waiting sessions, oldest save first; with ``input_type``, those awaiting it."""
        rows = self._db.execute(
            "SELECT session_id, status, waiting_for, updated_at FROM sessions "
            "WHERE status = 'waiting' ORDER BY updated_at, session_id"
        ).fetchall()
        found = [_stored(row) for row in rows]
        if input_type is not None:
            found = [s for s in found if input_type in s.waiting_for]
        return found


def _stored(row: tuple[str, str, str, str]) -> StoredSession:
    session_id, status, waiting_for, updated_at = row
    return StoredSession(session_id, status, tuple(json.loads(waiting_for)), updated_at)
