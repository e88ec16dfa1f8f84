"""What the store hands out (frozen records) and the :class:`SessionStore` protocol."""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import attrs

__all__ = [
    "CANCEL_INPUT",
    "FINISHED_STATUSES",
    "Created",
    "InputRecord",
    "Lease",
    "SessionStore",
    "StoredInput",
    "StoredSession",
]

CANCEL_INPUT = "stageflow.cancel"
"""The reserved inbox type of a cancel request; its payload is ``{"reason": ...}``."""

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out", "poisoned"})
"""Row statuses after which a session takes no new input."""


@attrs.frozen
class Created:
    """What :meth:`SessionStore.create` did.

    Attributes:
        session_id: the session's id.
        duplicate: the idempotency key (or the id) was used before; nothing was created.
    """

    session_id: str
    duplicate: bool


@attrs.frozen
class InputRecord:
    """An input stored in a session's inbox.

    Attributes:
        session_id: the session it is for.
        seq: its place in the inbox (1, 2, ...); delivered in this order.
        duplicate: a retry with a known idempotency key: this is the original record.
    """

    session_id: str
    seq: int
    duplicate: bool


@attrs.frozen
class StoredInput:
    """An inbox row delivered with a lease.

    Attributes:
        seq: its place in the inbox.
        type: the input type (``stageflow.cancel`` for a cancel request).
        payload: the JSON payload.
    """

    seq: int
    type: str
    payload: Any


@attrs.frozen
class Lease:
    """A claimed session: the right to run one turn of it and save the result.

    Attributes:
        session_id: the session.
        token: the fencing token; a save with an older token writes nothing.
        snapshot: the stored snapshot (``Session.to_dict()``).
        digest: the snapshot's pipeline digest (the worker's pipeline cache key).
        inputs: the inbox rows to deliver, in ``seq`` order.
        inbox_done: the last input seq already recorded in ``snapshot``.
        inbox_head: the last input seq assigned when the lease was taken.
        events_done: the last history seq already copied to the events table.
        attempts: claims since the last successful save, this one included.
        db_now: the database's clock when the lease was taken (aware, UTC).
        base: the stored snapshot text (UTF-8) that a save may store its
            snapshot against as a delta (PostgreSQL), or None. Opaque to
            workers: they pass the lease back to ``complete``.
        unreadable: why the stored snapshot or one of the inputs could not
            be read (``snapshot`` and ``inputs`` are then empty), or None. A
            worker fails the turn with it (:class:`StoredDataError`).
    """

    session_id: str
    token: int
    snapshot: Mapping[str, Any]
    digest: str
    inputs: tuple[StoredInput, ...]
    inbox_done: int
    inbox_head: int
    events_done: int
    attempts: int
    db_now: datetime.datetime
    base: bytes | None = attrs.field(default=None, repr=False)
    unreadable: str | None = None


@attrs.frozen
class StoredSession:
    """A session row as stored (without its snapshot: see :meth:`SessionStore.load`).

    Attributes:
        session_id: the id.
        queue: the worker pool it is routed to.
        status: ``pending``, ``waiting`` or a finished status (``poisoned`` included).
        pipeline: the pipeline's name.
        waiting_for: the input types it waited for at its last save (sorted).
        wake_at: its earliest timer (UTC), if any.
        runnable_at: when a worker may claim it next (``None``: nothing to do).
        version: how many snapshots were saved (+1 per turn).
        inbox_head: the last input seq assigned.
        inbox_done: the last input seq recorded in the snapshot.
        events_done: the last history seq in the events table.
        attempts: claims since the last successful save.
        lease_owner: the worker holding it, if any.
        error: the last failure outside the session (a release), if any.
        created_at: when it was created (UTC).
        updated_at: when it was last saved (UTC).
    """

    session_id: str
    queue: str
    status: str
    pipeline: str
    waiting_for: tuple[str, ...]
    wake_at: datetime.datetime | None
    runnable_at: datetime.datetime | None
    version: int
    inbox_head: int
    inbox_done: int
    events_done: int
    attempts: int
    lease_owner: str | None
    error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime

    @property
    def finished(self) -> bool:
        """Whether the session has ended (it takes no more input)."""
        return self.status in FINISHED_STATUSES

    @property
    def inputs_not_taken(self) -> int:
        """Inputs stored but never delivered, because the session ended first.

        They were stored while its last turn ran (or before it was poisoned):
        the seqs after ``inbox_done``. They stay in the inbox until purged.
        ``0`` while the session goes on.
        """
        return self.inbox_head - self.inbox_done if self.finished else 0

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON (times as ISO 8601 strings)."""

        def iso(value: datetime.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "session_id": self.session_id,
            "queue": self.queue,
            "status": self.status,
            "pipeline": self.pipeline,
            "waiting_for": list(self.waiting_for),
            "wake_at": iso(self.wake_at),
            "runnable_at": iso(self.runnable_at),
            "version": self.version,
            "inbox_head": self.inbox_head,
            "inbox_done": self.inbox_done,
            "inputs_not_taken": self.inputs_not_taken,
            "events_done": self.events_done,
            "attempts": self.attempts,
            "lease_owner": self.lease_owner,
            "error": self.error,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class SessionStore(Protocol):
    """Where sessions live between turns; every method is async (trio and asyncio).

    Implementations: the SQLite store (embedded) and the PostgreSQL store,
    both from :func:`~stageflow.store.open_store`. See ``docs/scaleout.md``
    for the protocol each method follows.
    """

    async def migrate(self) -> None:
        """Create or upgrade the tables.

        Raises:
            StoreSchemaError: the tables come from a newer stageflow.
        """

    async def create(
        self,
        snapshot: Mapping[str, Any],
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
    ) -> Created:
        """Store a new session (runnable at once); a known key or id returns it instead.

        Raises:
            StoreArgumentError: nothing stored: ``snapshot`` is not a session
                snapshot (a mapping with a non-empty ``session_id`` and a
                pipeline ``name`` and ``digest``), or the queue or key is no
                text a store holds (an empty queue included).
        """

    async def send_input(
        self, session_id: str, type: str, payload: Any, *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Append an input to the session's inbox and make the session runnable.

        Raises:
            SessionNotFoundError: no such session.
            SessionFinishedError: it has finished (only for a new key: a retried
                key returns the original record whatever the status).
            IdempotencyKeyReusedError: the key was first used for another
                input (type or payload); nothing stored.
            InputRejectedError: nothing stored: not JSON, over the session's
                ``limits.max_input_bytes``, or a bad type.
            StoreArgumentError: the idempotency key is no text a store holds.
        """

    async def request_cancel(
        self, session_id: str, reason: str, *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Ask for the session to be cancelled (an inbox row of type ``stageflow.cancel``)."""

    async def claim(
        self, worker_id: str, *, limit: int, lease: float, queues: Sequence[str] = ("default",)
    ) -> list[Lease]:
        """Lease up to ``limit`` due sessions for ``lease`` seconds."""

    async def heartbeat(self, worker_id: str, leases: Sequence[Lease], lease: float) -> set[str]:
        """Extend the leases; returns the session ids still held (the others are lost)."""

    async def complete(
        self,
        lease: Lease,
        snapshot: Mapping[str, Any],
        *,
        waiting_for: Collection[str],
        wake_at: datetime.datetime | None,
        events: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Save a turn, fenced by the lease's token; ``False``: lease lost, nothing saved."""

    async def release(self, lease: Lease, *, error: str, max_attempts: int) -> bool:
        """Give a lease back after a failure: retry with backoff, or ``poisoned``.

        ``False``: the lease had been lost (another claim took the session,
        or it was given back already), and nothing changed.
        """

    async def get(self, session_id: str) -> StoredSession:
        """The session's row. Raises SessionNotFoundError."""

    @property
    def events_table(self) -> bool:
        """Whether turns' events go to the events table (the snapshots then hold no history)."""

    async def load(self, session_id: str, *, history: bool = False) -> dict[str, Any]:
        """The session's snapshot. Raises SessionNotFoundError.

        Stored snapshots hold no history (format v2, ``history_seq`` only);
        ``history=True`` reassembles it from the events table, for a caller
        that restores the session and wants its whole history.
        """

    async def events(
        self, session_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Committed history events with ``seq > after``, in order.

        From the events table, or from the snapshot on a store without one
        (``events=False``).
        """

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
        """Sessions matching every given filter, oldest first (by creation).

        ``newest=True``: the most recently updated first, so the last ones
        of a store holding more than ``limit`` can be listed.
        """

    async def wait_for_work(self, timeout: float) -> bool:
        """Return when work may have arrived (a wake-up hint), or after ``timeout`` s.

        True for a wake-up hint; False after the timeout, or when the store
        cannot tell (a listener that just reconnected may have missed hints).
        """

    @property
    def save_notices(self) -> bool:
        """Whether saves made by other processes are noticed without polling."""

    def save_mark(self) -> int:
        """A mark for :meth:`wait_for_save`; take it before reading the session."""

    async def wait_for_save(self, session_id: str, mark: int, timeout: float) -> None:
        """Return once a save or release of the session after ``mark`` was noticed (a hint).

        Or after ``timeout`` seconds. The PostgreSQL store hears saves of
        every process (``NOTIFY`` on ``<schema>.done``); the SQLite store
        only this process's.
        """

    async def next_due(self, *, queues: Sequence[str] = ("default",)) -> datetime.datetime | None:
        """The earliest future ``runnable_at`` in ``queues``, if any."""

    async def now(self) -> datetime.datetime:
        """The store's clock (the database's ``now()``)."""

    async def purge(
        self, *, finished_before: datetime.datetime, inputs_before: datetime.datetime
    ) -> int:
        """Delete old finished sessions and old consumed inputs; returns rows deleted."""

    async def aclose(self) -> None:
        """Close connections."""
