"""The PostgreSQL session store: psycopg 3 (sync) and its pool, through anyio threads.

psycopg's async connection does not run under trio; its sync connections in
worker threads run under trio and asyncio alike (about 0.2 ms per hop). The
tables live in their own schema (default ``stageflow``), reached through the
connections' ``search_path``.

Wake-ups: after a write commits, the store hands the session id to its
notifier, a thread with its own autocommit connection that sends what
accumulated as one ``SELECT pg_notify(...)`` per channel (never inside the
write transaction): many inputs arriving together cost one NOTIFY, not one
each. Two channels: ``<schema>.wake`` (work for workers: a new session, an
input, a save that left the session runnable) and ``<schema>.done`` (a saved
or released session, for :meth:`wait_for_save`, so ``SessionService.wait``
and ``follow`` need not poll). Each is listened to on a dedicated connection
driven by ``anyio.wait_readable``; when one breaks it is reopened with backoff
(0.1 s doubling to 10 s), and the first wait after a reconnect returns at
once, since notifications may have been missed. Correctness never depends on
a notification: workers and waiters also poll, only more slowly.

Needs the ``postgres`` extra: ``pip install 'stageflow[postgres]'``.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar, cast

import anyio
import psycopg
import psycopg_pool
from psycopg import sql

from stageflow._log import get_logger
from stageflow.store._errors import (
    SessionFinishedError,
    SessionNotFoundError,
    StoreSchemaError,
    StoreUnavailableError,
    hide_password,
)
from stageflow.store._history import with_history
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
    snapshot_delta,
    stored_session,
    too_large,
    unbatch,
    unmatchable,
)

__all__ = ["PostgresStore"]

T = TypeVar("T")
logger = get_logger("stageflow.store")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")

_TABLES = f"""
CREATE TABLE IF NOT EXISTS stageflow_sessions (
    session_id   text PRIMARY KEY,
    queue        text NOT NULL DEFAULT 'default',
    status       text NOT NULL,
    snapshot     text NOT NULL,
    snapshot_delta bytea,
    pipeline     text NOT NULL,
    digest       text NOT NULL,
    waiting_for  text[] NOT NULL DEFAULT '{{}}',
    wake_at      timestamptz,
    runnable_at  timestamptz,
    inbox_head   bigint NOT NULL DEFAULT 0,
    inbox_done   bigint NOT NULL DEFAULT 0,
    events_done  bigint NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_token  bigint NOT NULL DEFAULT 0,
    attempts     int    NOT NULL DEFAULT 0,
    last_error   text,
    version      bigint NOT NULL DEFAULT 0,
    start_key    text,
    max_input_bytes bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80, toast_tuple_target = 128, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02);
CREATE UNIQUE INDEX IF NOT EXISTS stageflow_sessions_start_key ON stageflow_sessions (start_key)
    WHERE start_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS stageflow_sessions_due ON stageflow_sessions (queue, runnable_at)
    WHERE runnable_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS stageflow_sessions_finished ON stageflow_sessions (updated_at)
    WHERE status IN {FINISHED_SQL};
CREATE TABLE IF NOT EXISTS stageflow_inbox (
    session_id      text   NOT NULL,
    seq             bigint NOT NULL,
    type            text   NOT NULL,
    payload         json   NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS stageflow_inbox_key ON stageflow_inbox
    (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS stageflow_events (
    session_id text   NOT NULL,
    last_seq   bigint NOT NULL,
    seq        bigint NOT NULL,
    events     text   NOT NULL,
    PRIMARY KEY (session_id, last_seq)
);
CREATE TABLE IF NOT EXISTS stageflow_schema (version int NOT NULL);
"""

# lz4 needs a server built --with-lz4 (Debian's is); without it pglz stays.
_COMPRESSION = """
DO $$ BEGIN
    ALTER TABLE stageflow_sessions ALTER COLUMN snapshot SET COMPRESSION lz4;
    ALTER TABLE stageflow_events ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
"""

# From version 1 (less WAL per turn): a large snapshot out of line
# (toast_tuple_target), so the claim's and the inputs' updates of the row copy
# a TOAST pointer, not the snapshot; start_key indexed only where set; one
# events row per save (a JSON array) instead of one per event.
_UPGRADE_1 = """
ALTER TABLE stageflow_sessions SET (toast_tuple_target = 128);
ALTER TABLE stageflow_sessions DROP CONSTRAINT IF EXISTS stageflow_sessions_start_key_key;
CREATE UNIQUE INDEX IF NOT EXISTS stageflow_sessions_start_key ON stageflow_sessions (start_key)
    WHERE start_key IS NOT NULL;
ALTER TABLE stageflow_events RENAME TO stageflow_events_v1;
ALTER INDEX stageflow_events_pkey RENAME TO stageflow_events_v1_pkey;
CREATE TABLE stageflow_events (
    session_id text   NOT NULL REFERENCES stageflow_sessions ON DELETE CASCADE,
    last_seq   bigint NOT NULL,
    seq        bigint NOT NULL,
    events     text   NOT NULL,
    PRIMARY KEY (session_id, last_seq)
);
INSERT INTO stageflow_events SELECT session_id, seq, seq, '[' || event::text || ']'
    FROM stageflow_events_v1;
DROP TABLE stageflow_events_v1;
"""

# From version 2 (less database CPU and WAL per turn): no foreign keys from the
# inbox and the events to the sessions. Each check was a query and a row-lock
# record per input and per save; rows are only ever inserted next to their
# session's row (in one statement, or under its lock), and purge deletes a
# session's inbox and events in the statement that deletes the session.
_UPGRADE_2 = """
ALTER TABLE stageflow_inbox DROP CONSTRAINT IF EXISTS stageflow_inbox_session_id_fkey;
ALTER TABLE stageflow_events DROP CONSTRAINT IF EXISTS stageflow_events_session_id_fkey;
"""

# From version 3 (less WAL per turn): a save may store its snapshot as a delta
# against the stored one (``snapshot_delta``, NULL = ``snapshot`` is current), so
# the large, rarely changing snapshot and its TOAST chunks are not rewritten per
# turn. The delta is small and stays inline (MAIN: out of line only if the row
# would not fit a page); a new column of NULLs rewrites nothing.
_UPGRADE_3 = """
ALTER TABLE stageflow_sessions ADD COLUMN IF NOT EXISTS snapshot_delta bytea;
ALTER TABLE stageflow_sessions ALTER COLUMN snapshot_delta SET STORAGE MAIN;
"""

# From version 4: the session's limits.max_input_bytes in the row, so that
# send_input refuses a larger input before storing it. A column of NULLs
# rewrites nothing; each row gets its value at its next save.
_UPGRADE_4 = """
ALTER TABLE stageflow_sessions ADD COLUMN IF NOT EXISTS max_input_bytes bigint;
"""


# From version 5: an input's payload is json (the text as sent, checked), not
# jsonb. jsonb refused a string holding U+0000 and changed what it kept: keys
# sorted, -0.0 read back as 0.0, a float written with an exponent (1e+16) read
# back as an integer. Rows stored before keep jsonb's form of their payload. A
# worker of version 5 still running beside the upgrade goes on working: its
# jsonb is assigned to json, and it reads json as it read jsonb. The rewrite of
# a large inbox may outlast the connections' 30 s statement timeout: not here.
_UPGRADE_5 = """
SET LOCAL statement_timeout = 0;
ALTER TABLE stageflow_inbox ALTER COLUMN payload TYPE json USING payload::json;
"""


_LONGEST_LEASE = 1e11
"""The longest lease written, in seconds (about 3,000 years: "never expires").

A longer one made the lease's expiry a time past year 9999, which psycopg
cannot read (every read of the row failed, the worker's ``next_due`` too),
or, past about 9e12 s, an interval PostgreSQL cannot hold (every claim
failed).
"""


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return value.astimezone(datetime.UTC) if value is not None else None


def _stored(row: Sequence[Any]) -> StoredSession:
    return stored_session(row, _utc, list)


def _channel(schema: str, kind: str) -> str:
    """The notification channel ``<schema>.<kind>``, made to fit PostgreSQL's 63 bytes.

    A channel name is an identifier: ``pg_notify`` refuses a longer one
    ("channel name too long") and ``LISTEN`` cuts it, so a schema name of 59
    or more characters made every notification fail, and workers and
    waiters fell back to polling. Such a schema's channels are named by its
    first 40 characters and a digest of the whole name.
    """
    name = f"{schema}.{kind}"
    if len(name.encode()) < 64:
        return name
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return f"{schema[:40]}.{digest}.{kind}"


def _queue_filter(queues: Sequence[str]) -> tuple[str, Any]:
    """The claim's queue condition and its parameter.

    ``=`` for one queue: an ordered scan of the due index that stops after
    ``limit`` rows. ``= ANY`` for several, which sorts all their due rows.
    """
    if len(queues) == 1:
        return "queue = %s", queues[0]
    return "queue = ANY(%s)", list(queues)


class _Notifier:
    """Sends this process's notifications after commit, coalesced, from its own thread.

    Ids handed over while a ``pg_notify`` is in flight go out together in the
    next one (one statement for both channels), so a burst of writes costs a
    few NOTIFYs, not one per row. A payload over 7 KB becomes ``"*"`` (the
    limit is 8 KB), as does one with a session id that holds a comma. A
    failed send is logged and dropped: notifications are hints, and the
    receivers also poll.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._cond = threading.Condition()
        self._pending: dict[str, set[str]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.sent = 0

    def add(self, channel: str, session_ids: Collection[str]) -> None:
        """Send ``session_ids`` on ``channel`` soon."""
        with self._cond:
            if self._closed:
                return
            self._pending.setdefault(channel, set()).update(session_ids)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="stageflow-notify", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, {}
                closed = self._closed
            if batch:
                args: list[str] = []
                for channel, ids in batch.items():
                    payload = ",".join(sorted(ids))
                    # An id holding a comma would be read as several: everyone reads again.
                    whole = len(payload.encode()) <= 7000 and not any("," in i for i in ids)
                    args += [channel, payload if whole else "*"]
                calls = ", ".join(["pg_notify(%s, %s)"] * (len(args) // 2))
                try:
                    conn = conn or self._connect()
                    conn.execute(f"SELECT {calls}", args)
                    self.sent += 1
                except (psycopg.Error, StoreUnavailableError) as exc:
                    logger.warning("store.notify_failed", error=str(exc))
                    if conn is not None:
                        conn.close()
                    conn = None
            if closed:
                if conn is not None:
                    conn.close()
                return

    def close(self) -> None:
        """Send what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)


class PostgresStore:
    """The :class:`~stageflow.store.SessionStore` on PostgreSQL.

    Args:
        url: a libpq connection URL (``postgresql://user@host:5432/db``).
        schema: where the tables live (created if missing).
        pool_size: at most this many connections (and threads) for queries.
        notify: send and listen for ``NOTIFY`` wake-ups; ``False`` is
            poll-only mode, for PgBouncer in transaction pooling.
        events: also copy each turn's history to ``stageflow_events``.
        connect_timeout: seconds to wait for the server when connecting.
        create: make the schema and tables if they are missing (default).
            ``False`` opens only an existing store (tables of an older
            version are still upgraded): a schema without stageflow's tables
            raises :class:`StoreUnavailableError` at first use, and nothing
            is created (``stageflow sessions`` opens stores so).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "stageflow",
        pool_size: int = 8,
        notify: bool = True,
        events: bool = True,
        connect_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise StoreUnavailableError(
                f"schema name {schema!r} is not a plain lowercase identifier; use letters, "
                "digits and underscores, starting with a letter"
            )
        self.url = url
        self.schema = schema
        self._pool_size = pool_size
        self._notify = notify
        self._events = events
        self._connect_timeout = connect_timeout
        self._create = create
        self._channel = _channel(schema, "wake")
        self._done_channel = _channel(schema, "done")
        self._options = (
            f"-c search_path={schema} -c statement_timeout=30000 "
            "-c idle_in_transaction_session_timeout=60000"
        )
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(pool_size)
        self._ready = False
        self._work = Wakeup()
        self._listen: psycopg.Connection[Any] | None = None
        self._listening = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._reconnects = 0
        self._notifier = _Notifier(self._open_connection)
        self._saves = SaveNotices()
        self._clock_offset = (datetime.timedelta(0), -math.inf)  # (db - local, when measured)
        self._done: psycopg.Connection[Any] | None = None
        self._done_reading = False
        self._done_backoff = 0.0
        self._done_retry_at = 0.0
        self._due_hint: tuple[tuple[str, ...], datetime.datetime | None, float] | None = None

    # ------------------------------------------------------------ plumbing

    def _where(self) -> str:
        return f"schema {self.schema!r} of {hide_password(self.url)}"

    def _open_connection(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.url,
                autocommit=autocommit,
                options=self._options,
                connect_timeout=max(1, int(self._connect_timeout)),
            )
        except psycopg.Error as exc:
            why = hide_password(str(exc).strip())  # it may quote the URL
            raise StoreUnavailableError(
                f"cannot reach the PostgreSQL store {hide_password(self.url)!r}: {why}; check "
                "the URL, that the server runs, and that it accepts this user"
            ) from exc

    def _open_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:  # several threads may ask first
            return self._open_pool_locked()

    def _open_pool_locked(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            self._open_connection().close()  # a clear error when the server is unreachable
            pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
                psycopg_pool.ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    open=False,
                    kwargs={"autocommit": True, "options": self._options},
                    timeout=self._connect_timeout + 20,
                )
            )
            pool.open(wait=True, timeout=self._connect_timeout)
            self._pool = pool
        return self._pool

    def _with_conn(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` with a pooled connection.

        Raises:
            StoreUnavailableError: the database cannot be reached or answer
                now (psycopg's ``OperationalError``: a connection that broke,
                a server restarting, no pooled connection in time, a statement
                timeout, a deadlock), as the SQLite store says for its file.
        """
        try:
            with self._open_pool().connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            why = hide_password(str(exc).strip())
            raise StoreUnavailableError(
                f"the PostgreSQL store {hide_password(self.url)!r} did not answer: {why}; "
                "check that the server runs and is reachable, then try again (a worker "
                "tries again by itself)"
            ) from exc

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self._ready:
            await self.migrate()
        return await anyio.to_thread.run_sync(self._with_conn, fn, limiter=self._limiter)

    def _send_notify(self, session_ids: Collection[str], *, done: bool = False) -> None:
        """Wake listeners, after the write committed (never inside its transaction)."""
        if self._notify:
            self._notifier.add(self._done_channel if done else self._channel, session_ids)

    @property
    def events_table(self) -> bool:
        """Whether turns' events go to ``stageflow_events`` (else they stay in the snapshot)."""
        return self._events

    async def migrate(self) -> None:
        """Create or upgrade the schema and tables (version 6), or check they are not newer."""

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # One migration at a time across processes.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema,))
                # The version first: tables that are up to date get no DDL. A CREATE
                # INDEX IF NOT EXISTS locks its table before it looks for the index, and
                # that lock, held to the end of this transaction, deadlocked with other
                # processes' writes (a worker starting while a service creates sessions).
                found = None
                if conn.execute("SELECT to_regclass('stageflow_schema')").fetchone() != (None,):
                    row = conn.execute("SELECT max(version) FROM stageflow_schema").fetchone()
                    found = row[0] if row else None
                if found is not None and found > SCHEMA_VERSION:
                    raise StoreSchemaError(self._where(), found, SCHEMA_VERSION)
                if found == SCHEMA_VERSION:
                    return
                if found is None and not self._create:
                    raise StoreUnavailableError(
                        f"no stageflow store in {self._where()} (no stageflow_schema table); "
                        "check the URL and the schema, or let a worker or a SessionService "
                        "create the store there"
                    )
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)))  # fmt: skip
                conn.execute(_TABLES)
                if found == 1:
                    conn.execute(_UPGRADE_1)
                if found in (1, 2):
                    conn.execute(_UPGRADE_2)
                conn.execute(_UPGRADE_3)  # also sets the new table's delta storage
                conn.execute(_UPGRADE_4)
                if found is not None and found < 6:
                    conn.execute(_UPGRADE_5)
                conn.execute(_COMPRESSION)
                conn.execute("DELETE FROM stageflow_schema")
                conn.execute("INSERT INTO stageflow_schema VALUES (%s)", (SCHEMA_VERSION,))

        await anyio.to_thread.run_sync(self._with_conn, run, limiter=self._limiter)
        self._ready = True

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

        def run(conn: psycopg.Connection[Any]) -> Created:
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO stageflow_sessions (session_id, queue, status, snapshot, "
                    "pipeline, digest, runnable_at, start_key, events_done, max_input_bytes) "
                    "VALUES (%s, %s, 'pending', %s, %s, %s, now(), %s, %s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING session_id",
                    (new.session_id, queue, new.text, new.pipeline, new.digest, idempotency_key,
                     new.events_done, new.max_input_bytes),
                ).fetchone()  # fmt: skip
                if row is not None and new.events is not None:
                    self._insert_events(conn, new.session_id, new.events)
            if row is not None:
                self._send_notify([new.session_id])
                return Created(new.session_id, duplicate=False)
            found = conn.execute(
                "SELECT session_id, pipeline, true FROM stageflow_sessions WHERE start_key = %s "
                "UNION ALL SELECT session_id, pipeline, false FROM stageflow_sessions "
                "WHERE session_id = %s",
                (idempotency_key, new.session_id),
            ).fetchone()
            assert found is not None
            check_start_retry(found, new, idempotency_key)
            return Created(found[0], duplicate=True)

        created = await self._run(run)
        if not created.duplicate:
            self._work.set()
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

        def run(conn: psycopg.Connection[Any]) -> InputRecord:
            if idempotency_key is None:
                seq = self._append(conn, session_id, type, text, size)
            else:
                with conn.transaction():
                    row = conn.execute(
                        "SELECT status, inbox_head, max_input_bytes FROM stageflow_sessions "
                        "WHERE session_id = %s FOR UPDATE",
                        (session_id,),
                    ).fetchone()
                    if row is None:
                        raise SessionNotFoundError(session_id)
                    seen = conn.execute(
                        "SELECT seq, type, payload::text FROM stageflow_inbox "
                        "WHERE session_id = %s AND idempotency_key = %s",
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
                    conn.execute(
                        "INSERT INTO stageflow_inbox (session_id, seq, type, payload, "
                        "idempotency_key) VALUES (%s, %s, %s, %s::json, %s)",
                        (session_id, seq, type, text, idempotency_key),
                    )
                    conn.execute(
                        "UPDATE stageflow_sessions SET inbox_head = inbox_head + 1, "
                        "runnable_at = CASE WHEN lease_owner IS NULL THEN now() "
                        "ELSE runnable_at END WHERE session_id = %s",
                        (session_id,),
                    )
            self._send_notify([session_id])  # committed: the notifier may send it now
            return InputRecord(session_id, seq, duplicate=False)

        record = await self._run(run)
        if not record.duplicate:
            self._work.set()
        return record

    @staticmethod
    def _append(
        conn: psycopg.Connection[Any], session_id: str, type: str, text: str, size: int
    ) -> int:
        """An input without a key: the UPDATE takes the row lock and the seq at once.

        One statement fewer than the keyed path, and no row-lock record in the
        WAL: a concurrent send waits for the lock and re-reads ``inbox_head``.
        """
        row = conn.execute(
            "WITH u AS (UPDATE stageflow_sessions SET inbox_head = inbox_head + 1, "
            "runnable_at = CASE WHEN lease_owner IS NULL THEN now() ELSE runnable_at END "
            f"WHERE session_id = %s AND status NOT IN {FINISHED_SQL} "
            "AND (max_input_bytes IS NULL OR max_input_bytes >= %s) RETURNING inbox_head) "
            "INSERT INTO stageflow_inbox (session_id, seq, type, payload) "
            "SELECT %s, inbox_head, %s, %s::json FROM u RETURNING seq",
            (session_id, size, session_id, type, text),
        ).fetchone()
        if row is None:
            found = conn.execute(
                "SELECT status, max_input_bytes FROM stageflow_sessions WHERE session_id = %s",
                (session_id,),
            ).fetchone()
            if found is None:
                raise SessionNotFoundError(session_id)
            if found[0] in FINISHED_STATUSES:
                raise SessionFinishedError(session_id, found[0], type)
            raise too_large(session_id, type, size, found[1])
        seq: int = row[0]
        return seq

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
        """Lease up to ``limit`` due sessions with ``FOR UPDATE SKIP LOCKED``."""
        if limit <= 0:
            return []
        lease = min(lease, _LONGEST_LEASE)

        which, named = _queue_filter(queues)

        def run(conn: psycopg.Connection[Any]) -> list[Lease]:
            # One statement (its own transaction): no BEGIN/COMMIT round trips and one
            # execution instead of two (scaleout row "database CPU per turn"). The inbox
            # subquery reads the statement's snapshot, which may miss an input committed
            # after it started but counted in the locked row's newer inbox_head: such a
            # tail is read again below with a fresh snapshot, so nothing up to the head
            # is ever left out (a lost input would be marked done at save).
            rows = conn.execute(
                "WITH due AS (SELECT session_id FROM stageflow_sessions "
                f"WHERE {which} AND runnable_at <= now() ORDER BY runnable_at "
                "LIMIT %s FOR UPDATE SKIP LOCKED), "
                "claimed AS (UPDATE stageflow_sessions s SET lease_owner = %s, "
                "lease_token = s.lease_token + 1, attempts = s.attempts + 1, "
                "runnable_at = now() + make_interval(secs => %s::float8) "
                "FROM due WHERE s.session_id = due.session_id RETURNING s.session_id, "
                "s.lease_token, s.snapshot, s.digest, s.inbox_done, s.inbox_head, "
                "s.events_done, s.attempts, s.snapshot_delta) "
                "SELECT c.*, now(), CASE WHEN c.inbox_head > c.inbox_done THEN (SELECT "
                "json_agg(json_build_array(i.seq, i.type, i.payload) ORDER BY i.seq) "
                "FROM stageflow_inbox i WHERE i.session_id = c.session_id "
                "AND i.seq > c.inbox_done AND i.seq <= c.inbox_head) END, "
                "NULL::timestamptz FROM claimed c "
                # Nothing claimed: one row with the next due time instead, which the
                # idle worker asks for next (scaleout row "database CPU per turn").
                "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, now(), "
                f"NULL, (SELECT runnable_at FROM stageflow_sessions WHERE {which} "
                "AND runnable_at > now() ORDER BY runnable_at LIMIT 1) "
                "WHERE NOT EXISTS (SELECT FROM claimed)",
                (named, limit, worker_id, lease, named),
            ).fetchall()
            leases = []
            for r in rows:
                if r[0] is None:
                    self._note_due(queues, r[11], r[9])
                    continue
                found = list(r[10] or ())
                if r[4] + len(found) < r[5]:  # committed after the statement's snapshot
                    found = conn.execute(
                        "SELECT seq, type, payload FROM stageflow_inbox WHERE "
                        "session_id = %s AND seq > %s AND seq <= %s ORDER BY seq",
                        (r[0], r[4], r[5]),
                    ).fetchall()
                base = r[2].encode()
                snapshot, inputs, unreadable = read_lease(
                    r[2], found, payloads_read=True, base=base, delta=r[8]
                )
                leases.append(
                    Lease(
                        session_id=r[0],
                        token=r[1],
                        snapshot=snapshot,
                        digest=r[3],
                        inputs=inputs,
                        unreadable=unreadable,
                        inbox_done=r[4],
                        inbox_head=r[5],
                        events_done=r[6],
                        attempts=r[7],
                        db_now=r[9].astimezone(datetime.UTC),
                        base=base,
                    )
                )
            return leases

        return await self._run(run)

    def _note_due(
        self, queues: Sequence[str], due: datetime.datetime | None, db_now: datetime.datetime
    ) -> None:
        """Keep an empty claim's next due time (and clock) for the :meth:`next_due` after it."""
        measured = time.monotonic()
        self._due_hint = (tuple(queues), _utc(due), measured)
        self._clock_offset = (db_now - datetime.datetime.now(datetime.UTC), measured)

    async def heartbeat(self, worker_id: str, leases: Sequence[Lease], lease: float) -> set[str]:
        """Extend the leases still held (one statement); returns their session ids."""
        if not leases:
            return set()
        lease = min(lease, _LONGEST_LEASE)

        def run(conn: psycopg.Connection[Any]) -> set[str]:
            rows = conn.execute(
                "UPDATE stageflow_sessions s SET runnable_at = now() + "
                "make_interval(secs => %s::float8) "
                "FROM unnest(%s::text[], %s::bigint[]) AS l(sid, tok) "
                "WHERE s.session_id = l.sid AND s.lease_token = l.tok AND s.lease_owner = %s "
                "RETURNING s.session_id",
                (lease, [x.session_id for x in leases], [x.token for x in leases], worker_id),
            ).fetchall()
            return {r[0] for r in rows}

        return await self._run(run)

    async def complete(
        self,
        lease: Lease,
        snapshot: Mapping[str, Any],
        *,
        waiting_for: Collection[str],
        wake_at: datetime.datetime | None,
        events: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Save a turn in one fenced transaction (see :class:`SessionStore`).

        ``inbox_head > claimed head`` reads the row's newest version: an UPDATE
        that waited for ``send_input``'s row lock re-evaluates it, so an input
        sent during the turn leaves the session runnable.
        """
        save = save_of(lease, snapshot, waiting_for, events, events_table=self._events)
        # The snapshot as a delta against the stored one when it is small: the stored
        # snapshot's TOAST chunks stay (scaleout row "WAL per turn, 15 KB snapshot").
        # The fence guarantees that the stored snapshot is still the lease's base.
        delta = snapshot_delta(lease.base, save.text)
        written: tuple[Any, ...] = (save.text,) if delta is None else (delta,)
        column = "snapshot = %s, snapshot_delta = NULL" if delta is None else "snapshot_delta = %s"

        # One statement, its own transaction: the events row is inserted only when
        # the fenced UPDATE matched (scaleout row "database CPU per turn": no
        # BEGIN/COMMIT round trips, one execution instead of two).
        events_cte, events_args = "", cast(tuple[Any, ...], ())
        if save.events is not None:
            events_cte = (
                ", e AS (INSERT INTO stageflow_events (session_id, last_seq, seq, events) "
                "SELECT %s, %s, %s, %s FROM s)"
            )
            events_args = (lease.session_id, save.events.last, save.events.first,
                           save.events.text)  # fmt: skip

        def run(conn: psycopg.Connection[Any]) -> bool | None:
            row = conn.execute(
                f"WITH s AS (UPDATE stageflow_sessions SET {column}, status = %s, "
                "waiting_for = %s, wake_at = %s, inbox_done = %s, events_done = %s, "
                "attempts = 0, last_error = NULL, lease_owner = NULL, version = version + 1, "
                "updated_at = now(), digest = %s, max_input_bytes = %s, "
                "runnable_at = CASE WHEN %s THEN NULL "
                "WHEN inbox_head > %s THEN now() ELSE %s END "
                "WHERE session_id = %s AND lease_token = %s AND lease_owner IS NOT NULL "
                f"RETURNING runnable_at <= now() AS due){events_cte} SELECT due FROM s",
                (*written, save.status, save.waiting_for, wake_at, lease.inbox_head,
                 save.events_done, save.digest, save.max_input_bytes, save.finished,
                 lease.inbox_head, wake_at,
                 lease.session_id, lease.token, *events_args),
            ).fetchone()  # fmt: skip
            if row is None:
                return None
            if row[0]:  # an input arrived during the turn: runnable again now
                self._send_notify([lease.session_id])
            self._send_notify([lease.session_id], done=True)
            return bool(row[0])

        runnable = await self._run(run)
        if runnable is None:
            return False
        if runnable or (wake_at is not None and not save.finished):
            # Work now, or a timer the idle wait must see. A save that leaves the
            # session waiting for input wakes nobody (scaleout row "coordination
            # efficiency": the wake-up cost an empty claim and a cooldown).
            self._work.set()
        self._saves.notice([lease.session_id])
        return True

    @staticmethod
    def _insert_events(conn: psycopg.Connection[Any], session_id: str, batch: EventBatch) -> None:
        # A plain INSERT: the fence makes each seq unique (ON CONFLICT would add a
        # speculative-insertion record to the WAL for nothing).
        conn.execute(
            "INSERT INTO stageflow_events (session_id, last_seq, seq, events) "
            "VALUES (%s, %s, %s, %s)",
            (session_id, batch.last, batch.first, batch.text),
        )

    async def release(self, lease: Lease, *, error: str, max_attempts: int) -> bool:
        """Give a failed lease back: backoff ``min(2**attempts, 60)`` s, or ``poisoned``.

        ``False``: the lease was lost (taken again, or given back already), nothing changed.
        """
        poisoned = lease.attempts >= max_attempts

        def run(conn: psycopg.Connection[Any]) -> bool:
            released = conn.execute(
                "UPDATE stageflow_sessions SET lease_owner = NULL, last_error = %s, "
                "updated_at = now(), status = CASE WHEN %s THEN 'poisoned' ELSE status END, "
                "runnable_at = CASE WHEN %s THEN NULL "
                "ELSE now() + make_interval(secs => %s::float8) END "
                "WHERE session_id = %s AND lease_token = %s AND lease_owner IS NOT NULL",
                (error, poisoned, poisoned, backoff(lease.attempts), lease.session_id,
                 lease.token),
            ).rowcount == 1  # fmt: skip
            if released:
                self._send_notify([lease.session_id], done=True)
            return released

        released = await self._run(run)
        self._work.set()
        self._saves.notice([lease.session_id])
        return released

    # ------------------------------------------------------------ reading

    async def get(self, session_id: str) -> StoredSession:
        """The session's row (see :class:`SessionStore`)."""
        lookup_id(session_id)

        def run(conn: psycopg.Connection[Any]) -> StoredSession:
            row = conn.execute(
                f"SELECT {ROW} FROM stageflow_sessions WHERE session_id = %s", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            return _stored(row)

        return await self._run(run)

    async def load(self, session_id: str, *, history: bool = False) -> dict[str, Any]:
        """The session's snapshot; ``history=True`` puts its committed history back in."""
        lookup_id(session_id)

        def run(conn: psycopg.Connection[Any]) -> dict[str, Any]:
            row = conn.execute(
                "SELECT snapshot, snapshot_delta FROM stageflow_sessions WHERE session_id = %s",
                (session_id,),
            ).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            snapshot = loaded_snapshot(session_id, row[0], row[1])
            if history and self._events:
                rows = conn.execute(
                    "SELECT events FROM stageflow_events WHERE session_id = %s ORDER BY last_seq",
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

        def run(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT events FROM stageflow_events WHERE session_id = %s AND last_seq > %s "
                "ORDER BY last_seq LIMIT %s",
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
        where = ["true"]
        args: list[Any] = []
        if status is not None:
            where.append("status = %s")
            args.append(status)
        if pipeline is not None:
            where.append("pipeline = %s")
            args.append(pipeline)
        if waiting_for is not None:
            where.append("%s = ANY(waiting_for)")
            args.append(waiting_for)
        if due:
            where.append("runnable_at <= now()")
        query = (
            f"SELECT {ROW} FROM stageflow_sessions WHERE {' AND '.join(where)} "
            "ORDER BY "
            + ("updated_at DESC, session_id DESC" if newest else "created_at, session_id")
            + " LIMIT %s"
        )

        def run(conn: psycopg.Connection[Any]) -> list[StoredSession]:
            return [_stored(r) for r in conn.execute(query, (*args, limit))]

        return await self._run(run)

    async def next_due(self, *, queues: Sequence[str] = ("default",)) -> datetime.datetime | None:
        """The earliest ``runnable_at`` in the future in ``queues``, if any.

        It also reads the database's clock, so the :meth:`now` that usually
        follows needs no query of its own. Right after a :meth:`claim` that
        found nothing (within 0.25 s), it is the time that claim read, once.
        """
        hint, self._due_hint = self._due_hint, None
        if hint is not None and hint[0] == tuple(queues) and time.monotonic() - hint[2] < 0.25:
            return hint[1]
        which, named = _queue_filter(queues)

        def run(conn: psycopg.Connection[Any]) -> datetime.datetime | None:
            row = conn.execute(
                f"SELECT (SELECT runnable_at FROM stageflow_sessions WHERE {which} "
                "AND runnable_at > now() ORDER BY runnable_at LIMIT 1), now()",
                (named,),
            ).fetchone()
            assert row is not None
            self._clock_offset = (row[1] - datetime.datetime.now(datetime.UTC), time.monotonic())
            return _utc(row[0])

        return await self._run(run)

    async def now(self) -> datetime.datetime:
        """The database's clock (read at most a second ago, plus the local time since)."""
        offset, measured = self._clock_offset
        if time.monotonic() - measured < 1.0:
            return datetime.datetime.now(datetime.UTC) + offset

        def run(conn: psycopg.Connection[Any]) -> datetime.datetime:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            value: datetime.datetime = row[0].astimezone(datetime.UTC)
            return value

        return await self._run(run)

    async def purge(
        self, *, finished_before: datetime.datetime, inputs_before: datetime.datetime
    ) -> int:
        """Delete finished sessions and consumed inputs older than the given times.

        In batches of :data:`PURGE_BATCH` rows, each its own transaction, until
        none is left; returns the sessions and inputs deleted.
        """

        def sessions(limit: int, conn: psycopg.Connection[Any]) -> int:
            # No foreign keys (schema version 3): a session's inbox and events go
            # in the statement that deletes it.
            row = conn.execute(
                "WITH gone AS (DELETE FROM stageflow_sessions WHERE session_id IN "
                f"(SELECT session_id FROM stageflow_sessions WHERE status IN {FINISHED_SQL} "
                "AND updated_at < %s LIMIT %s) RETURNING session_id), "
                "i AS (DELETE FROM stageflow_inbox WHERE session_id IN "
                "(SELECT session_id FROM gone)), "
                "e AS (DELETE FROM stageflow_events WHERE session_id IN "
                "(SELECT session_id FROM gone)) SELECT count(*) FROM gone",
                (finished_before, limit),
            ).fetchone()
            assert row is not None
            return int(row[0])

        def inputs(limit: int, conn: psycopg.Connection[Any]) -> int:
            return conn.execute(
                "DELETE FROM stageflow_inbox WHERE (session_id, seq) IN "
                "(SELECT i.session_id, i.seq FROM stageflow_inbox i JOIN stageflow_sessions s "
                "ON s.session_id = i.session_id WHERE i.seq <= s.inbox_done "
                "AND i.created_at < %s LIMIT %s)",
                (inputs_before, limit),
            ).rowcount

        return await purge_in_batches(self._run, sessions, inputs)

    # ------------------------------------------------------------ wake-ups

    @property
    def listener_reconnects(self) -> int:
        """How many times the LISTEN connection was (re)opened."""
        return self._reconnects

    def _start_listening(self, channel: str | None = None) -> psycopg.Connection[Any]:
        conn = self._open_connection()
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel or self._channel)))
        return conn

    def _drain(self, conn: psycopg.Connection[Any]) -> list[str]:
        """Read the notifications' payloads (non-blocking); raise if the connection broke."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the LISTEN connection is closed")
        payloads = []
        while (notice := pgconn.notifies()) is not None:
            payloads.append(notice.extra.decode())
        return payloads

    def _drop_listener(self, exc: BaseException) -> None:
        conn, self._listen = self._listen, None
        if conn is not None:
            conn.close()
        self._backoff = min(max(self._backoff * 2, 0.1), 10.0)
        self._retry_at = time.monotonic() + self._backoff
        logger.warning("store.listener_lost", error=str(exc), retry_in=self._backoff)

    async def wait_for_work(self, timeout: float) -> bool:
        """Return on a NOTIFY or a write of this process (True), or after ``timeout`` seconds.

        The first call (and the first after the LISTEN connection broke and
        was reopened) returns at once, with False: notifications may have
        been missed, so the caller looks as it would after a poll.
        """
        if not self._notify or self._listening:
            return await self._work.wait(timeout)
        self._listening = True
        try:
            if self._listen is None and time.monotonic() >= self._retry_at:
                try:
                    self._listen = await anyio.to_thread.run_sync(
                        self._start_listening, limiter=self._limiter
                    )
                except StoreUnavailableError as exc:
                    self._drop_listener(exc)
                else:
                    self._reconnects += 1
                    self._backoff = 0.0
                    return False
            conn = self._listen
            if conn is None:
                return await self._work.wait(
                    min(timeout, max(self._retry_at - time.monotonic(), 0.0))
                )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, conn)
                woken = await self._work.wait(timeout)
                tg.cancel_scope.cancel()
            return woken
        finally:
            self._listening = False

    async def _watch(self, conn: psycopg.Connection[Any]) -> None:
        idle_reads = 0
        while True:
            try:
                await anyio.wait_readable(conn.fileno())
                got = self._drain(conn)
            except (psycopg.Error, OSError, ValueError) as exc:
                self._drop_listener(exc)
                self._work.set()
                return
            if got:
                idle_reads = 0
                self._work.set()
                return
            idle_reads += 1
            if idle_reads > 100:  # readable but nothing to read: a dead socket
                self._drop_listener(OSError("the LISTEN connection stopped answering"))
                self._work.set()
                return

    @property
    def save_notices(self) -> bool:
        """Whether saves made by other processes are noticed without polling (NOTIFY on)."""
        return self._notify

    def save_mark(self) -> int:
        """A mark for :meth:`wait_for_save`; take it before reading the session."""
        return self._saves.mark()

    async def wait_for_save(self, session_id: str, mark: int, timeout: float) -> None:
        """Return once a save (or release) of the session after ``mark`` was noticed.

        Or after ``timeout`` seconds. One waiter at a time reads the
        ``<schema>.done`` connection and hands each notice to all of them.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._saves.seen(session_id, mark):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._notify or self._done_reading:
                await self._saves.next(left)
                continue
            self._done_reading = True
            try:
                await self._read_done(left)
            finally:
                self._done_reading = False
                self._saves.wake_all()  # another waiter takes over the reading

    async def _read_done(self, timeout: float) -> None:
        if self._done is None:
            if time.monotonic() < self._done_retry_at:
                await self._saves.next(min(timeout, self._done_retry_at - time.monotonic()))
                return
            try:
                self._done = await anyio.to_thread.run_sync(
                    self._start_listening, self._done_channel, limiter=self._limiter
                )
            except StoreUnavailableError as exc:
                self._done_backoff = min(max(self._done_backoff * 2, 0.1), 10.0)
                self._done_retry_at = time.monotonic() + self._done_backoff
                logger.warning("store.done_listener_lost", error=str(exc))
                return
            self._done_backoff = 0.0
            self._saves.notice(["*"])  # saves may have been missed before the LISTEN
            return
        conn = self._done
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(conn.fileno())
            try:
                payloads = self._drain(conn)
            except (psycopg.Error, OSError, ValueError) as exc:
                self._done = None
                conn.close()
                logger.warning("store.done_listener_lost", error=str(exc))
                self._saves.notice(["*"])
                return
            ids = [sid for payload in payloads for sid in payload.split(",")]
            if ids:
                self._saves.notice(ids)

    async def aclose(self) -> None:
        """Close the pool and the LISTEN connections; send the pending notifications."""

        def run() -> None:
            self._notifier.close()
            self._notifier = _Notifier(self._open_connection)
            for conn in (self._listen, self._done):
                if conn is not None:
                    conn.close()
            self._listen = self._done = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None

        await anyio.to_thread.run_sync(run)
