"""What the SQLite and PostgreSQL stores share: the same logic, two SQL dialects.

Each store keeps only its SQL and its driver calls; what a save or a create
writes (the snapshot text, the status, the events and ``events_done``), the
row layout read back, the retry backoff and the in-process wake-up are here.
"""

from __future__ import annotations

import datetime
import json
import math
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import attrs

from stageflow._engine._desk import input_json
from stageflow._engine._limits import DEFAULT_LIMITS
from stageflow._errors import InputRejectedError, shown
from stageflow._json import a_json_type, a_python_type
from stageflow._pipeline import Pipeline
from stageflow._stages import StageRegistry
from stageflow.store._errors import (
    IdempotencyKeyReusedError,
    SessionNotFoundError,
    StoreArgumentError,
    StoredDataError,
)
from stageflow.store._history import dumps, snapshot_info, split_history
from stageflow.store._records import (
    CANCEL_INPUT,
    FINISHED_STATUSES,
    Lease,
    SessionStore,
    StoredInput,
    StoredSession,
)

__all__ = [
    "check_roles",
    "FINISHED_SQL",
    "PURGE_BATCH",
    "purge_in_batches",
    "ROW",
    "SCHEMA_VERSION",
    "EventBatch",
    "NewSession",
    "Save",
    "SaveNotices",
    "Wakeup",
    "backoff",
    "cancel_text",
    "event_batch",
    "LIMIT_MAX",
    "NAME_BYTES",
    "check_key",
    "check_name",
    "check_retry",
    "check_start_retry",
    "check_queue",
    "inbox_text",
    "lookup_id",
    "unmatchable",
    "input_limit",
    "too_large",
    "inline_events",
    "loaded_snapshot",
    "read_lease",
    "snapshot_delta",
    "unpack_delta",
    "new_session",
    "unbatch",
    "save_of",
    "stored_session",
]


LIMIT_MAX = 2**62
"""The largest row count both stores' ``LIMIT`` takes (a 64-bit integer)."""

NAME_BYTES = 1024
"""The longest session id, idempotency key or queue name a store takes, in UTF-8 bytes.

PostgreSQL indexes them, and an index entry holds at most 2,704 bytes (a
session id and an input's key share one); SQLite takes the same, so that
an application tried on SQLite runs on PostgreSQL.
"""


def _name_problem(value: object, *, limit: int | None = NAME_BYTES) -> str | None:
    """Why ``value`` cannot be stored as a name (an id, a key, a type), or None."""
    if not isinstance(value, str):
        return f"it is {a_json_type(value)}, not a string"
    if "\x00" in value:
        return "it holds a NUL character (U+0000), which PostgreSQL cannot store"
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return "it holds a lone surrogate, which is not Unicode text"
    if limit is not None and size > limit:
        return f"it is {size} bytes long in UTF-8, over the {limit} a store takes"
    return None


def check_name(what: str, value: object, *, optional: bool = False) -> None:
    """Refuse a session id, idempotency key or queue name that a store cannot hold.

    Raises:
        StoreArgumentError: ``value`` is not a string (None allowed when
            ``optional``), holds a NUL character or a lone surrogate, or is
            longer than :data:`NAME_BYTES`; it says which, and how to fix it.
    """
    if optional and value is None:
        return
    problem = _name_problem(value)
    if problem is not None:
        raise StoreArgumentError(
            f"{what}={shown(value)} cannot be stored: {problem}; pass text without NUL "
            f"characters or lone surrogates, at most {NAME_BYTES} bytes in UTF-8"
        )


def check_key(key: object) -> None:
    """Refuse an idempotency key a store cannot hold, or an empty one (None is no key).

    Raises:
        StoreArgumentError: as :func:`check_name`, or ``key`` is ``""``: every
            call given it would be taken for a retry of the first (a missing
            request header read as ``""``), and nothing after it stored.
    """
    check_name("idempotency_key", key, optional=True)
    if key == "":
        raise StoreArgumentError(
            "idempotency_key='' cannot be used: every call with it would be a retry of the "
            "first, and store nothing; pass a non-empty key, or None for no key"
        )


def check_queue(queue: object) -> None:
    """Refuse a queue name a new session cannot have.

    Raises:
        StoreArgumentError: as :func:`check_name`, or ``queue`` is empty (no
            worker serves ``''``: the session would never run).
    """
    check_name("queue", queue)
    if queue == "":
        raise StoreArgumentError(
            "queue='' cannot be stored: no worker serves an empty queue name, so the "
            "session would never run; pass a non-empty name ('default')"
        )


def _same_json(a: Any, b: Any) -> bool:
    """Whether two read JSON values are the same (``True`` is not ``1``; key order aside)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    return bool(a == b)


def check_retry(
    session_id: str, key: str, seq: int, first: tuple[str, str], type: str, text: str
) -> None:
    """Refuse a key sent again with another input than ``first`` (its type and JSON text).

    Raises:
        IdempotencyKeyReusedError: the type differs, or the payload is
            another JSON value (the same value written otherwise is a retry:
            a row stored as jsonb by schema version 5 is written so).
    """
    first_type, first_text = first
    if first_type == type and first_text == text:
        return
    if first_type == type:
        try:
            if _same_json(json.loads(first_text), json.loads(text)):
                return
        except ValueError:
            pass  # a damaged row: not the same input
    what = "payload" if first_type == type else f"type {type!r} (it was {first_type!r})"
    raise IdempotencyKeyReusedError(
        f"idempotency key {key!r} of session {session_id!r} was first used for input {seq}, "
        f"and is now sent with another {what}; nothing was stored. A retry must send the "
        "same type and payload; send a new input with a new key",
        session_id=session_id,
        key=key,
        seq=seq,
    )


def check_start_retry(found: Sequence[Any], new: NewSession, key: str | None) -> None:
    """Refuse a start whose key (or id) went to a session of another pipeline.

    ``found`` is the existing row's ``(session_id, pipeline, by_key)``.

    Raises:
        IdempotencyKeyReusedError: the pipelines' names differ.
    """
    session_id, pipeline, by_key = found
    if pipeline == new.pipeline:
        return
    used = f"idempotency key {key!r}" if by_key else f"session id {session_id!r}"
    raise IdempotencyKeyReusedError(
        f"{used} was first used to start session {session_id!r} of pipeline {pipeline!r}, "
        f"and is now given to start pipeline {new.pipeline!r}; nothing was created. A retry "
        "must start the same pipeline; start another session with a new key (or id)",
        session_id=session_id,
        key=key if by_key else None,
    )


def lookup_id(session_id: object) -> None:
    """Raise :class:`SessionNotFoundError` for an id that no stored session can have.

    A driver would raise its own error for it (PostgreSQL for a NUL or a
    non-string, both stores for a lone surrogate); the answer is the same as
    for any unknown id, with the reason.
    """
    problem = _name_problem(session_id, limit=None)
    if problem is not None:
        raise SessionNotFoundError(session_id, why=f"{problem}, so no session can have it")


def unmatchable(*filters: object) -> bool:
    """Whether a filter of ``list_sessions`` is text no stored row can have.

    A NUL character or a lone surrogate (from a URL, or a command-line byte
    that is not UTF-8): the drivers raise their own errors for it, where the
    answer is that nothing matches.
    """
    return any(f is not None and _name_problem(f, limit=None) is not None for f in filters)


def inbox_text(type: str, payload: Any, *, cancel: bool = False) -> tuple[str, int]:
    """An input's JSON text for the inbox and its size, checked as a live session checks it.

    The size (UTF-8 bytes) is what the session's ``limits.max_input_bytes``
    bounds: the stores check it against the row's copy of that limit.

    The cancel request's type is the store's own: ``send_input`` refuses it
    (a worker would apply whatever it carried), ``request_cancel`` writes it.

    Raises:
        InputRejectedError: a bad type (the reserved one included) or a
            payload that is not JSON; nothing is stored.
    """
    problem = None if not isinstance(type, str) or not type else _name_problem(type, limit=None)
    if problem is not None:  # a non-string or empty type: input_json says so
        raise InputRejectedError(
            f"input type {shown(type)} cannot be stored: {problem}; pass the type the stage "
            "waits for",
            input_type=shown(type),
            reason="bad_type",
        )
    if type == CANCEL_INPUT and not cancel:
        raise InputRejectedError(
            f"input type {CANCEL_INPUT!r} is the store's cancel request; to cancel the "
            "session, call SessionService.cancel(session_id, reason)",
            input_type=type,
            reason="bad_type",
        )
    return input_json(type, payload)


def cancel_text(reason: object) -> str:
    """The inbox text of a cancel request with ``reason``.

    Raises:
        TypeError: ``reason`` is not a string (a worker would have cancelled
            with ``"cancelled"`` instead, as ``Session.cancel`` refuses it).
    """
    if type(reason) is not str:
        raise TypeError(
            f"cancel(reason=...) was given {a_python_type(reason)}; pass a string (it is "
            "recorded in the session's history), or leave it out for 'cancelled'"
        )
    text, _ = inbox_text(CANCEL_INPUT, {"reason": reason}, cancel=True)
    return text


def input_limit(snapshot: Mapping[str, Any]) -> int | None:
    """The snapshot's ``limits.max_input_bytes``, kept in the row for ``send_input``.

    None when the snapshot does not say it readably (the worker's delivery
    then checks the size, as it does for every input).
    """
    kept = snapshot.get("limits") or {}
    if not isinstance(kept, Mapping):
        return None
    value = kept.get("max_input_bytes", DEFAULT_LIMITS.max_input_bytes)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def too_large(session_id: str, type: str, size: int, limit: int) -> InputRejectedError:
    """The error for an input over the session's ``limits.max_input_bytes`` (nothing stored).

    The same reason and advice as a live session's refusal, said before the
    input is stored: stored, it would only be refused at delivery, after the
    sender was told it was accepted.
    """
    return InputRejectedError(
        f"input {type!r} for session {session_id!r} was rejected: {size} bytes is over "
        f"limits.max_input_bytes={limit}; nothing was stored. Send less, or raise the "
        "pipeline's limit",
        input_type=type,
        reason="too_large",
    )


def inline_events(snapshot: Mapping[str, Any], after: int, limit: int) -> list[dict[str, Any]]:
    """The events past ``after`` that a store without an events table keeps in the snapshot."""
    history = snapshot.get("history") or ()
    session_id = snapshot.get("session_id")
    return [
        {**event, "session_id": event.get("session_id", session_id)}
        for event in history
        if event["seq"] > after
    ][:limit]


def read_lease(
    text: str,
    inputs: Sequence[tuple[int, str, Any]],
    *,
    payloads_read: bool,
    base: bytes | None = None,
    delta: bytes | None = None,
) -> tuple[Mapping[str, Any], tuple[StoredInput, ...], str | None]:
    """A claimed row's snapshot and inputs, or why they cannot be read.

    ``text`` is the stored snapshot, or with ``delta`` the ``base`` it was
    packed against (:func:`unpack_delta`); ``inputs`` are ``(seq, type,
    payload)``, the payload as JSON text, or already read when
    ``payloads_read`` (PostgreSQL's ``json``, which keeps the text as sent:
    a payload that is a JSON string comes as a ``str``). Reading
    happens inside the claim: one damaged row must not fail the claim of
    every other (its lease says why instead, and the worker poisons it).
    """
    try:
        snapshot = _read_snapshot(text, delta, base)
    except (ValueError, zlib.error) as exc:
        return {}, (), f"the stored snapshot cannot be read: {exc}"
    read: list[StoredInput] = []
    for seq, input_type, payload in inputs:
        try:
            value = payload if payloads_read else json.loads(payload)
        except ValueError as exc:
            return {}, (), f"stored input {seq} ({input_type!r}) cannot be read: {exc}"
        read.append(StoredInput(seq, input_type, value))
    return snapshot, tuple(read), None


SCHEMA_VERSION = 6
"""The table layout this stageflow writes (both stores).

1: the first layout. 2: ``start_key`` indexed only where set; the events
table holds one row per save (``seq`` .. ``last_seq``, a JSON array), not one
per event; stored snapshots hold no history (format v2; v1 rows still load).
3: no foreign keys from the inbox and the events (PostgreSQL). 4: a saved
snapshot may be stored as a delta against the stored one (PostgreSQL's
``snapshot_delta``; see :func:`snapshot_delta`). 5: the session's
``limits.max_input_bytes`` in the row (``max_input_bytes``, NULL until a
session made before is saved), so ``send_input`` refuses an input over it.
6: an input's payload is stored as the JSON text it was sent as (PostgreSQL's
``payload`` column is ``json``, was ``jsonb``, which refused U+0000, sorted
keys, lost the sign of -0.0 and read 1e+16 back as an integer); SQLite's
tables are unchanged.
"""

DELTA_MAX = 1024
"""The largest delta a save stores; beyond it (or 1/8 of the snapshot) it stores the whole."""

FINISHED_SQL = "('completed','failed','cancelled','timed_out','poisoned')"

Conn = TypeVar("Conn")

PURGE_BATCH = 10_000
"""Rows one purge statement deletes at most (SCALEOUT.md: "in batches of 10k").

Each batch is a transaction of its own, so no statement runs long (workers'
connections have a 30 s ``statement_timeout``) and no lock is held long
beside running workers; ``purge()`` goes on until a batch finds fewer.
"""

ROW = (
    "session_id, queue, status, pipeline, waiting_for, wake_at, runnable_at, version, "
    "inbox_head, inbox_done, events_done, attempts, lease_owner, last_error, created_at, "
    "updated_at"
)
"""The columns :func:`stored_session` reads, in its order."""


def backoff(attempts: int) -> float:
    """Seconds before a released session runs again: ``min(2**attempts, 60)``."""
    return min(2.0**attempts, 60.0)


def stored_session(
    row: Sequence[Any],
    when: Callable[[Any], datetime.datetime | None],
    waiting_for: Callable[[Any], Collection[str]],
) -> StoredSession:
    """A :class:`StoredSession` from a row of :data:`ROW` (times and lists per dialect).

    Raises:
        StoredDataError: the row's ``waiting_for`` cannot be read (a damaged row).
    """
    created, updated = when(row[14]), when(row[15])
    assert created is not None
    assert updated is not None
    try:
        waits = tuple(sorted(waiting_for(row[4])))
    except (ValueError, TypeError) as exc:
        raise _damaged(row[0], "waiting_for column", exc) from exc
    return StoredSession(
        session_id=row[0],
        queue=row[1],
        status=row[2],
        pipeline=row[3],
        waiting_for=waits,
        wake_at=when(row[5]),
        runnable_at=when(row[6]),
        version=row[7],
        inbox_head=row[8],
        inbox_done=row[9],
        events_done=row[10],
        attempts=row[11],
        lease_owner=row[12],
        error=row[13],
        created_at=created,
        updated_at=updated,
    )


@attrs.frozen
class EventBatch:
    """The events one save commits: one row of the events table.

    One row per save rather than one per event: one heap tuple and one index
    entry instead of a dozen, and the array compresses as a whole (the
    events of a turn repeat their keys, session id and timestamps). The
    primary key is ``(session_id, last_seq)``, so ``events(after=)`` is a
    range scan.
    """

    first: int
    last: int
    text: str


def event_batch(events: Sequence[Mapping[str, Any]]) -> EventBatch | None:
    """The row for ``events`` (in ``seq`` order), or None when there are none."""
    if not events:
        return None
    return EventBatch(int(events[0]["seq"]), int(events[-1]["seq"]), dumps(list(events)))


def _damaged(session_id: str, what: str, exc: Exception) -> StoredDataError:
    """The error for a stored value of ``session_id`` that cannot be read (a damaged row)."""
    return StoredDataError(
        f"session {session_id!r}: its stored {what} cannot be read ({exc}); the row is "
        "damaged: restore it from a backup, or purge the session"
    )


def _read_snapshot(text: str, delta: bytes | None, base: bytes | None = None) -> dict[str, Any]:
    """A stored snapshot: ``text``, or ``delta`` applied to ``base`` (``text`` if not given).

    Raises:
        ValueError, zlib.error: it is not JSON text of an object, or the delta
            cannot be applied (a damaged row).
    """
    if delta is not None:
        text = unpack_delta(base if base is not None else text.encode(), delta)
    snapshot = json.loads(text)
    if not isinstance(snapshot, dict):
        raise ValueError(f"it is {a_json_type(snapshot)}, not an object")
    return snapshot


def loaded_snapshot(session_id: str, text: str, delta: bytes | None = None) -> dict[str, Any]:
    """The stored snapshot of ``session_id`` (see :func:`_read_snapshot`).

    Raises:
        StoredDataError: it cannot be read (a damaged row).
    """
    try:
        return _read_snapshot(text, delta)
    except (ValueError, zlib.error) as exc:
        raise _damaged(session_id, "snapshot", exc) from exc


def unbatch(
    rows: Iterable[str], after: int, limit: int, session_id: str = "?"
) -> list[dict[str, Any]]:
    """The events with ``seq > after`` of batch rows (JSON arrays), at most ``limit``.

    Raises:
        StoredDataError: a row is not a JSON array of events with a ``seq``.
    """
    out: list[dict[str, Any]] = []
    try:
        for text in rows:
            for event in json.loads(text):
                if int(event["seq"]) > after:
                    out.append(event)
                    if len(out) >= limit:
                        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise _damaged(session_id, "history", exc) from exc
    return out


@attrs.frozen
class NewSession:
    """What :meth:`create` inserts: the columns, the snapshot text and its events."""

    session_id: str
    pipeline: str
    digest: str
    text: str
    events: EventBatch | None
    events_done: int
    max_input_bytes: int | None


def _not_a_snapshot(snapshot: object) -> str | None:
    """Why ``snapshot`` cannot be stored as a new session's row, or None.

    The row's columns come from it (the id, the pipeline's name and digest):
    without them a session would be stored that no worker can restore, or a
    driver would raise its own error.
    """
    if not isinstance(snapshot, Mapping):
        return f"it is {a_python_type(snapshot)}, not a mapping"
    for key in ("session_id", "pipeline"):
        if key not in snapshot:
            return f"it has no {key}"
    session_id = snapshot.get("session_id")
    if session_id == "" or not isinstance(session_id, str):
        given = shown(session_id) if isinstance(session_id, str) else a_json_type(session_id)
        return f"its session_id is {given}, not a non-empty string"
    pipeline = snapshot.get("pipeline")
    if not isinstance(pipeline, Mapping):
        return f"its pipeline is {a_json_type(pipeline)}, not an object"
    for key in ("name", "digest"):
        value = pipeline.get(key)
        problem = _name_problem(value, limit=None) if value != "" else "it is empty"
        if problem is not None:
            return f"its pipeline {key} {shown(value)} cannot be stored: {problem}"
    return None


def new_session(snapshot: Mapping[str, Any], *, events_table: bool) -> NewSession:
    """The row of a new session; with an events table, the snapshot's history moves there.

    Raises:
        StoreArgumentError: ``snapshot`` is not a session snapshot whose id,
            pipeline name and digest a store can hold.
    """
    problem = _not_a_snapshot(snapshot)
    if problem is not None:
        raise StoreArgumentError(
            f"create(snapshot=...) cannot store it: {problem}; pass the Session.to_dict() "
            "of the session to store (SessionService.start makes one)"
        )
    check_name("session_id", snapshot["session_id"])
    info = snapshot_info(snapshot)
    batch = None
    if events_table:
        snapshot, held = split_history(snapshot)
        batch = event_batch(held)
    done = batch.last if batch is not None else 0
    return NewSession(
        info.session_id,
        info.pipeline,
        info.digest,
        dumps(snapshot),
        batch,
        done,
        input_limit(snapshot),
    )


@attrs.frozen
class Save:
    """What a fenced save writes (see ``complete``)."""

    text: str
    status: str
    digest: str
    finished: bool
    waiting_for: list[str]
    events: EventBatch | None
    events_done: int
    max_input_bytes: int | None


def save_of(
    lease: Lease,
    snapshot: Mapping[str, Any],
    waiting_for: Collection[str],
    events: Sequence[Mapping[str, Any]],
    *,
    events_table: bool,
) -> Save:
    """The values of a turn's save; ``events_done`` moves to the last ``seq`` saved."""
    info = snapshot_info(snapshot)
    batch = event_batch(events) if events_table else None
    last = max((int(e["seq"]) for e in events), default=lease.events_done)
    return Save(
        text=dumps(snapshot),
        status=info.status,
        digest=info.digest,
        finished=info.status in FINISHED_STATUSES,
        waiting_for=sorted(waiting_for),
        events=batch,
        events_done=max(last, lease.events_done),
        max_input_bytes=input_limit(snapshot),
    )


def snapshot_delta(base: bytes | None, text: str) -> bytes | None:
    """``text`` as a zlib stream with ``base`` as its preset dictionary, or None.

    Most of a snapshot is the same from one turn to the next (the pipeline,
    the limits, a large context), so against the stored snapshot a turn's
    snapshot is a few hundred bytes (about 220 B for a 14.5 KB one, 60 B for
    1.3 KB), where the whole, compressed, is 2.6 to 3 KB. A save that stores
    the delta leaves the stored snapshot (and its TOAST chunks) as they are
    (scaleout row "WAL per turn, 15 KB snapshot"). None, to store the whole
    snapshot (which then becomes the base), when there is no base or the
    delta exceeds :data:`DELTA_MAX` or 1/8 of the snapshot: the snapshot has
    drifted from its base (zlib looks back at most 32 KB into the base, so a
    larger snapshot gains less).
    """
    if base is None:
        return None
    raw = text.encode()
    packer = zlib.compressobj(6, zdict=base)
    delta = packer.compress(raw) + packer.flush()
    if len(delta) > min(DELTA_MAX, len(raw) // 8):
        return None
    return delta


def unpack_delta(base: bytes, delta: bytes) -> str:
    """The snapshot text that :func:`snapshot_delta` packed against ``base``."""
    unpacker = zlib.decompressobj(zdict=base)
    return (unpacker.decompress(delta) + unpacker.flush()).decode()


class Wakeup:
    """An in-process wake-up: writes set it, :meth:`wait` returns when it was set.

    ``pending`` keeps a wake-up that came while nobody waited, so the next
    :meth:`wait` returns at once (no wake-up is lost between a claim and a wait).
    """

    __slots__ = ("_event", "_pending")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._pending = False

    def set(self) -> None:
        """Wake the waiters (or the next one)."""
        self._pending = True
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self, timeout: float) -> bool:
        """Return when set (now, if set since the last wait) or after ``timeout`` seconds.

        True when it was set, False on the timeout.
        """
        if not self._pending:
            if self._event is None:
                self._event = anyio.Event()
            event = self._event
            with anyio.move_on_after(max(timeout, 0.0)):
                await event.wait()
            if self._event is event:  # timed out: the next wait may run on another loop
                self._event = None
        woken, self._pending = self._pending, False
        return woken


class SaveNotices:
    """Which sessions were saved lately, for waiters that must not poll.

    A waiter takes :meth:`mark` *before* it reads a session, then
    :meth:`wait` returns as soon as a save of that session (or of any, for a
    ``"*"`` notice: an overflowing payload, a listener that reconnected) was
    noticed after the mark. Notices are hints: a waiter still reads the row.
    """

    __slots__ = ("_all", "_event", "_gen", "_saved")

    _KEEP = 10_000

    def __init__(self) -> None:
        self._gen = 0
        self._all = 0
        self._saved: dict[str, int] = {}
        self._event: anyio.Event | None = None

    def mark(self) -> int:
        """The current generation."""
        return self._gen

    def notice(self, session_ids: Iterable[str]) -> None:
        """Sessions saved (``"*"``: maybe any); wakes the waiters."""
        self._gen += 1
        for sid in session_ids:
            if sid == "*":
                self._all = self._gen
            else:
                self._saved[sid] = self._gen
        if len(self._saved) > self._KEEP:  # older notices are stale anyway: waiters re-read
            self._saved.clear()
            self._all = self._gen
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def seen(self, session_id: str, mark: int) -> bool:
        """Whether a save of ``session_id`` was noticed after ``mark``."""
        return self._all > mark or self._saved.get(session_id, 0) > mark

    async def next(self, timeout: float) -> None:
        """Until the next notice (or :meth:`wake_all`), or ``timeout`` seconds."""
        if self._event is None:
            self._event = anyio.Event()
        with anyio.move_on_after(max(timeout, 0.0)):
            await self._event.wait()

    async def wait(self, session_id: str, mark: int, timeout: float) -> None:
        """Until a save of ``session_id`` after ``mark`` is noticed, or ``timeout`` seconds."""
        with anyio.move_on_after(max(timeout, 0.0)):
            while not self.seen(session_id, mark):
                await self.next(math.inf)

    def wake_all(self) -> None:
        """Wake the waiters without a notice (one of them may take over a listener)."""
        event, self._event = self._event, None
        if event is not None:
            event.set()


async def purge_in_batches(
    run: Callable[[Callable[[Conn], int]], Awaitable[int]],
    *steps: Callable[[int, Conn], int],
) -> int:
    """Run each purge step until a batch deletes fewer than :data:`PURGE_BATCH` rows.

    ``run(fn)`` runs ``fn(connection)`` in a transaction of its own; a step,
    called as ``step(limit, connection)``, deletes at most ``limit`` rows and
    returns how many it deleted.
    Returns the rows deleted in all.
    """
    total = 0
    batch = PURGE_BATCH  # read per call (a test makes it small)
    for step in steps:
        while True:
            deleted = await run(partial(step, batch))
            total += deleted
            if deleted < batch:
                break
    return total


# What a session store has, from its protocol: an object without one of them
# is no store (checked when a service or a worker is made, not at its first use).
_STORE_MEMBERS = tuple(name for name in vars(SessionStore) if not name.startswith("_"))


def check_roles(call: str, store: object, registry: object, pipelines: object) -> list[Pipeline]:
    """Refuse what ``SessionService(...)`` or ``Worker(...)`` cannot use; return the pipelines.

    ``call`` names the constructor. Each failed at its first use, with an
    ``AttributeError`` naming no argument.
    """
    missing = [name for name in _STORE_MEMBERS if not hasattr(store, name)]
    if missing:
        raise TypeError(
            f"{call}(store=...) was given {a_python_type(store)}, which is no session store "
            f"(it has no {missing[0]}); pass one from stageflow.store.open_store(url)"
        )
    if registry is not None and not isinstance(registry, StageRegistry):
        raise TypeError(
            f"{call}(registry=...) was given {a_python_type(registry)}; pass a "
            "stageflow.StageRegistry, or leave it out for the default registry"
        )
    if isinstance(pipelines, str | Mapping | Pipeline) or not isinstance(pipelines, Iterable):
        raise TypeError(
            f"{call}(pipelines=...) was given {a_python_type(pipelines)}; pass a list of "
            "stageflow.Pipeline (a single one in a list: pipelines=[pipeline])"
        )
    listed = list(pipelines)
    for index, pipeline in enumerate(listed):
        if not isinstance(pipeline, Pipeline):
            raise TypeError(
                f"{call}(pipelines=...)[{index}] is {a_python_type(pipeline)}; pass "
                "stageflow.Pipeline objects (Pipeline.load(path) or Pipeline.from_dict(document))"
            )
    return listed
