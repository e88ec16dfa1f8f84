"""The embedded session store: stdlib ``sqlite3`` in worker threads, through anyio.

One connection per store under a ``threading.Lock``; every write is one
``BEGIN IMMEDIATE`` transaction of a few statements, never spanning an
``await``. Times are REAL epoch seconds from the store's clock (the local
clock: the database is a local file). A write that makes work (create, an
input, a save, a release) also wakes :meth:`SQLiteStore.wait_for_work` in
this process at once; other processes find it by polling.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from stageflow._deadlines import LATEST
from stageflow.store._errors import (
    SessionFinishedError,
    SessionNotFoundError,
    StoreSchemaError,
    StoreUnavailableError,
)
from stageflow.store._history import dumps, with_history
from stageflow.store._records import (
    CANCEL_INPUT,
    FINISHED_STATUSES,
    Created,
    InputRecord,
    Lease,
    StoredSession,
)
from stageflow.store._shared import (
    FINISHED_SQL,
    ROW,
    SCHEMA_VERSION,
    EventBatch,
    SaveNotices,
    Wakeup,
    backoff,
    cancel_text,
    check_key,
    check_queue,
    check_retry,
    check_start_retry,
    inbox_text,
    inline_events,
    loaded_snapshot,
    lookup_id,
    new_session,
    purge_in_batches,
    read_lease,
    save_of,
    stored_session,
    too_large,
    unbatch,
    unmatchable,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS stageflow_sessions (
    session_id  TEXT PRIMARY KEY,
    queue       TEXT NOT NULL DEFAULT 'default',
    status      TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    pipeline    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    waiting_for TEXT NOT NULL DEFAULT '[]',
    wake_at     REAL,
    runnable_at REAL,
    inbox_head  INTEGER NOT NULL DEFAULT 0,
    inbox_done  INTEGER NOT NULL DEFAULT 0,
    events_done INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_token INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    version     INTEGER NOT NULL DEFAULT 0,
    start_key   TEXT,
    max_input_bytes INTEGER,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS stageflow_sessions_start_key ON stageflow_sessions (start_key)
    WHERE start_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS stageflow_sessions_due ON stageflow_sessions (queue, runnable_at)
    WHERE runnable_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS stageflow_sessions_finished ON stageflow_sessions (updated_at)
    WHERE status IN {FINISHED_SQL};
CREATE TABLE IF NOT EXISTS stageflow_inbox (
    session_id      TEXT NOT NULL REFERENCES stageflow_sessions ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS stageflow_inbox_key ON stageflow_inbox
    (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS stageflow_events (
    session_id TEXT NOT NULL REFERENCES stageflow_sessions ON DELETE CASCADE,
    last_seq   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    events     TEXT NOT NULL,
    PRIMARY KEY (session_id, last_seq)
);
CREATE TABLE IF NOT EXISTS stageflow_schema (version INTEGER NOT NULL);
"""

# From version 1: one events row per save instead of one per event (a v1
# table keeps its UNIQUE start_key, which SQLite cannot drop in place).
_UPGRADE_1 = """
ALTER TABLE stageflow_events RENAME TO stageflow_events_v1;
CREATE TABLE stageflow_events (
    session_id TEXT NOT NULL REFERENCES stageflow_sessions ON DELETE CASCADE,
    last_seq   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    events     TEXT NOT NULL,
    PRIMARY KEY (session_id, last_seq)
);
INSERT INTO stageflow_events SELECT session_id, seq, seq, '[' || event || ']'
    FROM stageflow_events_v1;
DROP TABLE stageflow_events_v1;
"""


_LATEST_EPOCH = LATEST.timestamp()  # a float: rounded up, it reads as year 10000


def _dt(value: float | None) -> datetime.datetime | None:
    """A stored time; from the last one a ``datetime`` holds on, that one.

    A timer past year 9999 is due at :data:`~stageflow._deadlines.LATEST`
    (a sleep of 1e12 s), stored as a float that reads back as year 10000;
    a lease that long ends after it. Read as they are, they made every read
    of the row (``get``, ``list``, a worker's ``next_due``) raise.
    """
    if value is None:
        return None
    if value >= _LATEST_EPOCH:
        return LATEST
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


def _epoch(value: datetime.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _stored(row: Sequence[Any]) -> StoredSession:
    return stored_session(row, _dt, json.loads)


_OLDEST = "created_at, session_id"
_NEWEST = "updated_at DESC, session_id DESC"

_BUSY_SECONDS = 30.0  # how long a statement waits for another process's lock


def _existing(path: str) -> str:
    """The URI that opens ``path`` only if the file exists (SQLite's ``mode=rw``).

    Raises:
        StoreUnavailableError: there is no such file.
    """
    if path == ":memory:":
        return "file::memory:"  # a new empty database: refused by _check_store
    if not Path(path).exists():
        raise StoreUnavailableError(
            f"no SQLite store at {path!r} (no such file); check the path, or let a worker "
            "or a SessionService create the store there"
        )
    return f"{Path(path).absolute().as_uri()}?mode=rw"


def _check_store(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database without stageflow's tables (a store opened with ``create=False``)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'stageflow_schema'")
    if found.fetchone() is None:
        raise StoreUnavailableError(
            f"the SQLite file {path!r} holds no stageflow store (no stageflow_schema table); "
            "check the path, or let a worker or a SessionService create the store there"
        )


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL, waiting out other processes opening it too.

    SQLite answers ``database is locked`` at once, without its busy handler,
    when the switch races another connection's first open of the file
    (measured: 1 in 300 for four processes opening a new store together), so
    the switch is retried, with a growing pause, for up to the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # in the store's thread, never on the event loop
        pause = min(pause * 2, 0.1)


class SQLiteStore:
    """The embedded :class:`~stageflow.store.SessionStore` on one SQLite file.

    Args:
        path: the database file (``":memory:"`` for a private in-memory store).
        synchronous: ``"FULL"`` (default) or ``"NORMAL"``; a process crash is
            safe either way, ``FULL`` also survives a power loss.
        events: also copy each turn's history to ``stageflow_events`` (the
            feed of ``SessionService.follow``).
        clock: epoch seconds now (``time.time``); tests pass a fake one.
        create: make the file and the tables if they are missing (default).
            ``False`` opens only an existing store (tables of an older
            version are still upgraded): a file that is missing or holds no
            stageflow tables raises :class:`StoreUnavailableError` at first
            use, and is left as it was (``stageflow sessions`` opens stores
            so, and never writes tables into a mistyped application database).

    Raises:
        ValueError: ``synchronous`` is neither ``"FULL"`` nor ``"NORMAL"``
            (SQLite reads any other word as ``NORMAL``, and ``OFF`` may
            damage the file on a power loss).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        events: bool = True,
        clock: Callable[[], float] = time.time,
        create: bool = True,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(
                f"SQLiteStore(synchronous={synchronous!r}): pass 'FULL' (the default) or "
                "'NORMAL' (faster; a power loss may lose the last commits)"
            )
        self.path = str(path)
        self._synchronous = synchronous.upper()
        self._events = events
        self._clock = clock
        self._create = create
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ready = False
        self._work = Wakeup()
        self._saves = SaveNotices()

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(
                    self.path if self._create else _existing(self.path),
                    check_same_thread=False,
                    isolation_level=None,
                    timeout=_BUSY_SECONDS,
                    uri=not self._create,
                )
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            try:
                if not self._create:
                    # Before WAL: a database that is not a store keeps its journal mode.
                    _check_store(conn, self.path)
                _enable_wal(conn)
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute("PRAGMA foreign_keys=ON")
            except BaseException as exc:
                conn.close()  # not left to the collector (a ResourceWarning on Python 3.13)
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc) from exc
                raise
            self._conn = conn
        return self._conn

    def _read_only(self, exc: sqlite3.Error) -> StoreUnavailableError | None:
        """The error for a write refused because the file cannot be written, or None.

        A read-only file or mount, or a directory where SQLite cannot make
        the ``-wal`` and ``-shm`` files beside it: SQLite says only "attempt to
        write a readonly database".
        """
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_READONLY:
            return None
        return StoreUnavailableError(
            f"the SQLite store {self.path!r} is read-only here ({exc}): workers, services "
            "and the sessions commands that change sessions write to it, and SQLite writes "
            "its -wal and -shm files beside it. Make the file and its directory writable "
            "for this user (those two files too), or mount it read-write; to look at a "
            "read-only copy, copy it to a writable directory first"
        )

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        read_only = self._read_only(exc)
        if read_only is not None:
            return read_only
        return StoreUnavailableError(
            f"cannot open the SQLite store {self.path!r}: {exc}; check that the "
            "directory exists and is writable, and that the path names a file "
            "(not a directory) that is a stageflow store or does not exist yet"
        )

    def _locked(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """Run ``fn`` with the connection (in a transaction when it writes).

        Raises:
            StoreUnavailableError: the database cannot be read or written now: the
                file is not a database or is damaged, a disk error, a lock held
                past the busy timeout (SQLite's ``DatabaseError`` and
                ``OperationalError``; its other errors are bugs and go on up).
        """
        with self._lock:
            try:
                conn = self._connect()
                if not write:
                    return fn(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # the first error says why
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return out
            except sqlite3.DatabaseError as exc:
                if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
                    raise
                read_only = self._read_only(exc)
                if read_only is not None:
                    raise read_only from exc
                raise StoreUnavailableError(
                    f"the SQLite store {self.path!r} cannot be read or written: {exc}; check "
                    "that the file is a stageflow store on a disk that reads and has room, "
                    "and that no other process keeps it locked (or restore it from a backup)"
                ) from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        if not self._ready:
            await self.migrate()
        return await anyio.to_thread.run_sync(self._locked, fn, write)

    @property
    def events_table(self) -> bool:
        """Whether turns' events go to ``stageflow_events`` (else they stay in the snapshot)."""
        return self._events

    async def migrate(self) -> None:
        """Create or upgrade the tables (schema version 6), or check that they are not newer.

        Versions 3 and 4 changed only the PostgreSQL tables (no foreign keys
        from the inbox and the events; snapshots saved as deltas); SQLite
        keeps its foreign keys (they cost no WAL record there) and whole
        snapshots. Version 5 adds ``max_input_bytes`` (NULL in the rows of
        older versions until their next save). Version 6 changed only
        PostgreSQL's inbox (payloads stored as sent, as SQLite keeps them).
        """

        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'stageflow_schema'"
            ).fetchone()  # one migration at a time: this runs under BEGIN IMMEDIATE
            found = None
            if row is not None:
                found = conn.execute("SELECT max(version) FROM stageflow_schema").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise StoreSchemaError(self.path, found, SCHEMA_VERSION)
            if found == SCHEMA_VERSION:
                return
            for statement in (_UPGRADE_1 if found == 1 else _SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(statement)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(stageflow_sessions)")}
            if "max_input_bytes" not in columns:  # tables of version 4 or older
                conn.execute("ALTER TABLE stageflow_sessions ADD COLUMN max_input_bytes INTEGER")
            conn.execute("DELETE FROM stageflow_schema")
            conn.execute("INSERT INTO stageflow_schema VALUES (?)", (SCHEMA_VERSION,))

        await anyio.to_thread.run_sync(self._locked, run, True)
        self._ready = True

    def _wake(self) -> None:
        self._work.set()

    # ------------------------------------------------------------ sessions

    async def create(
        self,
        snapshot: Mapping[str, Any],
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
    ) -> Created:
        """Store a new session, runnable at once (see :class:`SessionStore`)."""
        check_queue(queue)
        check_key(idempotency_key)
        new = new_session(snapshot, events_table=self._events)

        def run(conn: sqlite3.Connection) -> Created:
            now = self._clock()
            cur = conn.execute(
                "INSERT INTO stageflow_sessions (session_id, queue, status, snapshot, pipeline, "
                "digest, runnable_at, start_key, events_done, max_input_bytes, created_at, "
                "updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (new.session_id, queue, new.text, new.pipeline, new.digest, now,
                 idempotency_key, new.events_done, new.max_input_bytes, now, now),
            )  # fmt: skip
            if cur.rowcount == 1:
                if new.events is not None:
                    self._insert_events(conn, new.session_id, new.events)
                return Created(new.session_id, duplicate=False)
            row = conn.execute(
                "SELECT session_id, pipeline, 1 FROM stageflow_sessions WHERE start_key = ? "
                "UNION ALL SELECT session_id, pipeline, 0 FROM stageflow_sessions "
                "WHERE session_id = ?",
                (idempotency_key, new.session_id),
            ).fetchone()
            check_start_retry(row, new, idempotency_key)
            return Created(row[0], duplicate=True)

        created = await self._run(run, write=True)
        if not created.duplicate:
            self._wake()
        return created

    async def send_input(
        self, session_id: str, type: str, payload: Any, *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Append an input to the inbox (see :class:`SessionStore`)."""
        text, size = inbox_text(type, payload)
        return await self._store_input(session_id, type, text, size, idempotency_key)

    async def _store_input(
        self, session_id: str, type: str, text: str, size: int, idempotency_key: str | None
    ) -> InputRecord:
        lookup_id(session_id)
        check_key(idempotency_key)

        def run(conn: sqlite3.Connection) -> InputRecord:
            row = conn.execute(
                "SELECT status, inbox_head, max_input_bytes FROM stageflow_sessions "
                "WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            if idempotency_key is not None:
                seen = conn.execute(
                    "SELECT seq, type, payload FROM stageflow_inbox WHERE session_id = ? "
                    "AND idempotency_key = ?",
                    (session_id, idempotency_key),
                ).fetchone()
                if seen is not None:
                    check_retry(session_id, idempotency_key, seen[0], seen[1:], type, text)
                    return InputRecord(session_id, seen[0], duplicate=True)
            if row[0] in FINISHED_STATUSES:
                raise SessionFinishedError(session_id, row[0], type)
            if row[2] is not None and size > row[2]:
                raise too_large(session_id, type, size, row[2])
            seq = row[1] + 1
            now = self._clock()
            conn.execute(
                "INSERT INTO stageflow_inbox (session_id, seq, type, payload, idempotency_key, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, seq, type, text, idempotency_key, now),
            )
            conn.execute(
                "UPDATE stageflow_sessions SET inbox_head = ?, runnable_at = CASE WHEN "
                "lease_owner IS NULL THEN ? ELSE runnable_at END WHERE session_id = ?",
                (seq, now, session_id),
            )
            return InputRecord(session_id, seq, duplicate=False)

        record = await self._run(run, write=True)
        if not record.duplicate:
            self._wake()
        return record

    async def request_cancel(
        self, session_id: str, reason: str, *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Store a cancel request (an inbox row of type ``stageflow.cancel``)."""
        text = cancel_text(reason)
        # size 0: a cancel request is not an input of the session's stages (no limit)
        return await self._store_input(session_id, CANCEL_INPUT, text, 0, idempotency_key)

    # ------------------------------------------------------------ leases

    async def claim(
        self, worker_id: str, *, limit: int, lease: float, queues: Sequence[str] = ("default",)
    ) -> list[Lease]:
        """Lease up to ``limit`` due sessions (see :class:`SessionStore`)."""
        if limit <= 0:
            return []
        marks = ",".join("?" * len(queues))

        def run(conn: sqlite3.Connection) -> list[Lease]:
            now = self._clock()
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT session_id FROM stageflow_sessions WHERE queue IN ({marks}) "
                    "AND runnable_at <= ? ORDER BY runnable_at LIMIT ?",
                    (*queues, now, limit),
                )
            ]
            leases: list[Lease] = []
            for sid in ids:
                row = conn.execute(
                    "UPDATE stageflow_sessions SET lease_owner = ?, lease_token = lease_token + 1, "
                    "attempts = attempts + 1, runnable_at = ? WHERE session_id = ? RETURNING "
                    "lease_token, snapshot, digest, inbox_done, inbox_head, events_done, attempts",
                    (worker_id, now + lease, sid),
                ).fetchone()
                rows = conn.execute(
                    "SELECT seq, type, payload FROM stageflow_inbox WHERE session_id = ? "
                    "AND seq > ? AND seq <= ? ORDER BY seq",
                    (sid, row[3], row[4]),
                ).fetchall()
                snapshot, inputs, unreadable = read_lease(row[1], rows, payloads_read=False)
                leases.append(
                    Lease(
                        session_id=sid,
                        token=row[0],
                        snapshot=snapshot,
                        digest=row[2],
                        inputs=inputs,
                        unreadable=unreadable,
                        inbox_done=row[3],
                        inbox_head=row[4],
                        events_done=row[5],
                        attempts=row[6],
                        db_now=datetime.datetime.fromtimestamp(now, datetime.UTC),
                    )
                )
            return leases

        return await self._run(run, write=True)

    async def heartbeat(self, worker_id: str, leases: Sequence[Lease], lease: float) -> set[str]:
        """Extend the leases still held; returns their session ids."""
        if not leases:
            return set()

        def run(conn: sqlite3.Connection) -> set[str]:
            until = self._clock() + lease
            held: set[str] = set()
            for item in leases:
                cur = conn.execute(
                    "UPDATE stageflow_sessions SET runnable_at = ? WHERE session_id = ? "
                    "AND lease_token = ? AND lease_owner = ?",
                    (until, item.session_id, item.token, worker_id),
                )
                if cur.rowcount == 1:
                    held.add(item.session_id)
            return held

        return await self._run(run, write=True)

    async def complete(
        self,
        lease: Lease,
        snapshot: Mapping[str, Any],
        *,
        waiting_for: Collection[str],
        wake_at: datetime.datetime | None,
        events: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Save a turn, fenced by the lease's token (see :class:`SessionStore`)."""
        save = save_of(lease, snapshot, waiting_for, events, events_table=self._events)

        def run(conn: sqlite3.Connection) -> bool | None:
            now = self._clock()
            row = conn.execute(
                "UPDATE stageflow_sessions SET snapshot = ?, status = ?, waiting_for = ?, "
                "wake_at = ?, inbox_done = ?, events_done = ?, attempts = 0, last_error = NULL, "
                "lease_owner = NULL, version = version + 1, updated_at = ?, digest = ?, "
                "max_input_bytes = ?, "
                "runnable_at = CASE WHEN ? THEN NULL WHEN inbox_head > ? THEN ? ELSE ? END "
                "WHERE session_id = ? AND lease_token = ? AND lease_owner IS NOT NULL "
                "RETURNING runnable_at IS NOT NULL",
                (save.text, save.status, dumps(save.waiting_for), _epoch(wake_at),
                 lease.inbox_head, save.events_done, now, save.digest, save.max_input_bytes,
                 save.finished,
                 lease.inbox_head, now, _epoch(wake_at), lease.session_id, lease.token),
            ).fetchall()  # fmt: skip
            if not row:
                return None
            if save.events is not None:
                self._insert_events(conn, lease.session_id, save.events)
            return bool(row[0][0])

        runnable = await self._run(run, write=True)
        if runnable is None:
            return False
        if runnable:  # work now or a timer; a session left waiting wakes no worker
            self._wake()
        self._saves.notice([lease.session_id])
        return True

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, session_id: str, batch: EventBatch) -> None:
        conn.execute(
            "INSERT INTO stageflow_events (session_id, last_seq, seq, events) VALUES (?, ?, ?, ?)",
            (session_id, batch.last, batch.first, batch.text),
        )

    async def release(self, lease: Lease, *, error: str, max_attempts: int) -> bool:
        """Give a failed lease back: backoff ``min(2**attempts, 60)`` s, or ``poisoned``.

        ``False``: the lease was lost (taken again, or given back already), nothing changed.
        """

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            poisoned = lease.attempts >= max_attempts
            return conn.execute(
                "UPDATE stageflow_sessions SET lease_owner = NULL, last_error = ?, "
                "updated_at = ?, status = CASE WHEN ? THEN 'poisoned' ELSE status END, "
                "runnable_at = CASE WHEN ? THEN NULL ELSE ? END "
                "WHERE session_id = ? AND lease_token = ? AND lease_owner IS NOT NULL",
                (error, now, poisoned, poisoned, now + backoff(lease.attempts),
                 lease.session_id, lease.token),
            ).rowcount == 1  # fmt: skip

        released = await self._run(run, write=True)
        self._wake()
        self._saves.notice([lease.session_id])
        return released

    # ------------------------------------------------------------ reading

    async def get(self, session_id: str) -> StoredSession:
        """The session's row (see :class:`SessionStore`)."""
        lookup_id(session_id)

        def run(conn: sqlite3.Connection) -> StoredSession:
            row = conn.execute(
                f"SELECT {ROW} FROM stageflow_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            return _stored(row)

        return await self._run(run)

    async def load(self, session_id: str, *, history: bool = False) -> dict[str, Any]:
        """The session's snapshot; ``history=True`` puts its committed history back in."""
        lookup_id(session_id)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT snapshot FROM stageflow_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            snapshot = loaded_snapshot(session_id, row[0])
            if history and self._events:
                rows = conn.execute(
                    "SELECT events FROM stageflow_events WHERE session_id = ? ORDER BY last_seq",
                    (session_id,),
                )
                snapshot = with_history(
                    snapshot, unbatch((r[0] for r in rows), 0, 2**62, session_id)
                )
            return snapshot

        return await self._run(run)

    async def events(
        self, session_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Committed history events past ``after`` (see :class:`SessionStore`)."""
        lookup_id(session_id)
        if not self._events:  # the events stay in the snapshot
            return inline_events(await self.load(session_id, history=True), after, limit)

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT events FROM stageflow_events WHERE session_id = ? AND last_seq > ? "
                "ORDER BY last_seq LIMIT ?",
                (session_id, after, limit),
            )
            return unbatch((r[0] for r in rows), after, limit, session_id)

        return await self._run(run)

    async def list_sessions(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        waiting_for: str | None = None,
        due: bool = False,
        limit: int = 100,
        newest: bool = False,
    ) -> list[StoredSession]:
        """Sessions matching every given filter (see :class:`SessionStore`)."""
        if unmatchable(status, pipeline, waiting_for):
            return []
        where = ["1 = 1"]
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if waiting_for is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(waiting_for) WHERE value = ?)")
            args.append(waiting_for)

        def run(conn: sqlite3.Connection) -> list[StoredSession]:
            clauses = [*where]
            params = [*args]
            if due:
                clauses.append("runnable_at <= ?")
                params.append(self._clock())
            sql = (
                f"SELECT {ROW} FROM stageflow_sessions WHERE {' AND '.join(clauses)} "
                f"ORDER BY {_NEWEST if newest else _OLDEST} LIMIT ?"
            )
            return [_stored(r) for r in conn.execute(sql, (*params, limit))]

        return await self._run(run)

    async def wait_for_work(self, timeout: float) -> bool:
        """Return after a write in this process made work (True), or after ``timeout`` s."""
        return await self._work.wait(timeout)

    @property
    def save_notices(self) -> bool:
        """False: saves of other processes are found by polling (this one's are noticed)."""
        return False

    def save_mark(self) -> int:
        """A mark for :meth:`wait_for_save`; take it before reading the session."""
        return self._saves.mark()

    async def wait_for_save(self, session_id: str, mark: int, timeout: float) -> None:
        """Return once this process saved the session after ``mark``, or after ``timeout`` s."""
        await self._saves.wait(session_id, mark, timeout)

    async def next_due(self, *, queues: Sequence[str] = ("default",)) -> datetime.datetime | None:
        """The earliest ``runnable_at`` in the future in ``queues``, if any."""
        marks = ",".join("?" * len(queues))

        def run(conn: sqlite3.Connection) -> datetime.datetime | None:
            row = conn.execute(
                f"SELECT min(runnable_at) FROM stageflow_sessions WHERE queue IN ({marks}) "
                "AND runnable_at > ?",
                (*queues, self._clock()),
            ).fetchone()
            return _dt(row[0])

        return await self._run(run)

    async def now(self) -> datetime.datetime:
        """The store's clock."""
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)

    async def purge(
        self, *, finished_before: datetime.datetime, inputs_before: datetime.datetime
    ) -> int:
        """Delete finished sessions and consumed inputs older than the given times.

        In batches of :data:`PURGE_BATCH` rows, each its own transaction, until
        none is left; returns the sessions and inputs deleted.
        """

        def sessions(limit: int, conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM stageflow_sessions WHERE session_id IN (SELECT session_id FROM "
                f"stageflow_sessions WHERE status IN {FINISHED_SQL} AND updated_at < ? "
                "LIMIT ?)",
                (finished_before.timestamp(), limit),
            ).rowcount

        def inputs(limit: int, conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM stageflow_inbox WHERE rowid IN (SELECT rowid FROM stageflow_inbox "
                "WHERE created_at < ? AND seq <= (SELECT inbox_done FROM stageflow_sessions s "
                "WHERE s.session_id = stageflow_inbox.session_id) LIMIT ?)",
                (inputs_before.timestamp(), limit),
            ).rowcount

        return await purge_in_batches(partial(self._run, write=True), sessions, inputs)

    async def aclose(self) -> None:
        """Close the connection."""

        def run() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(run)
