"""The session store's errors: a branch of the :class:`~stageflow.StageflowError` tree.

Factored out so that the records, both stores, the service and the worker
can raise them without importing one another::

    StageflowError
    └── StoreError                      the session store cannot do that
        ├── SessionNotFoundError        no session has that id (also LookupError)
        ├── SessionFinishedError        the session has ended; it takes no new input
        ├── StoreUnavailableError       the store URL cannot be opened or reached
        ├── StoreSchemaError            the tables were made by a newer stageflow
        ├── StoredDataError             a stored snapshot or input cannot be read
        └── StoreArgumentError          an id, key or queue name no store can hold (ValueError)
            └── IdempotencyKeyReusedError   a key sent again with another input
"""

from __future__ import annotations

import re

from stageflow._errors import StageflowError, shown

__all__ = [
    "IdempotencyKeyReusedError",
    "SessionFinishedError",
    "SessionNotFoundError",
    "StoreArgumentError",
    "StoreError",
    "StoreSchemaError",
    "StoreUnavailableError",
    "StoredDataError",
]


# The user part ends at the first "/" or "@" (as libpq reads a URL).
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s\"']*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s\"']*")


def hide_password(text: str) -> str:
    """``text`` (a store URL, or a driver's message quoting one) with the password as ``***``.

    A password in the user part (``postgresql://app:secret@db/app``) or in
    the query (``?password=secret``) would otherwise reach the logs: a
    worker logs the error of every claim that fails during an outage.
    """
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


class StoreError(StageflowError):
    """The session store cannot do what was asked."""


class SessionNotFoundError(StoreError, LookupError):
    """No stored session has this id."""

    def __init__(self, session_id: object, *, why: str | None = None) -> None:
        self.session_id = session_id
        super().__init__(
            f"no stored session has id {shown(session_id)}"
            + (f" ({why})" if why else "")
            + "; check the id, or start the session with SessionService.start() first "
            "(purge() deletes finished sessions)"
        )


class SessionFinishedError(StoreError):
    """The session has finished: a new input (or cancel) cannot be delivered."""

    def __init__(self, session_id: str, status: str, input_type: str) -> None:
        self.session_id = session_id
        self.status = status
        self.input_type = input_type
        super().__init__(
            f"session {session_id!r} is {status}; input {input_type!r} was not stored. "
            "Start a new session; a retry with the original idempotency key returns the "
            "original record"
        )


class StoreUnavailableError(StoreError):
    """The store URL is malformed, or its database cannot be reached or read.

    Also raised while in use: by the PostgreSQL store when the server stops
    answering (a connection it closed, a restart, a statement timeout), by
    the SQLite store when its file stops being readable or writable (not a
    database, damaged, a disk error, a lock held past the busy timeout).
    """


class StoreSchemaError(StoreError):
    """The store's tables were created by a newer stageflow (a higher schema version)."""

    def __init__(self, where: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"the session tables in {where} have schema version {found}, but this stageflow "
            f"supports up to {supported}; upgrade stageflow on this machine (every worker and "
            "service of one store must run a version that knows its schema)"
        )


class StoreArgumentError(StoreError, ValueError):
    """A session id, idempotency key or queue name that a store cannot hold.

    Not a string, a NUL character (PostgreSQL's text cannot hold it), a lone
    surrogate (not Unicode text), or longer than 1,024 bytes in UTF-8 (what
    PostgreSQL can index); both stores refuse it, before anything is stored.
    ``create()`` also raises it for a snapshot that is not a session's
    (no ``session_id``, no pipeline name or digest) and for an empty queue;
    every call for an empty idempotency key.
    """


class IdempotencyKeyReusedError(StoreArgumentError):
    """An idempotency key sent again with another input, or to start another pipeline.

    A retry returns the original record only when it sends the same input
    (the same type and the same JSON value), or starts a session of the
    same pipeline (by name: a new version of it is still a retry; a known
    session id counts as the key); this one is refused, and nothing is
    stored. ``session_id`` is the session the key (or id) went to, ``seq``
    the input it was first used for (None for a start).
    """

    def __init__(
        self, message: str, *, session_id: str, key: str | None, seq: int | None = None
    ) -> None:
        self.session_id = session_id
        self.idempotency_key = key
        self.seq = seq
        super().__init__(message)


class StoredDataError(StoreError):
    """A stored snapshot or input cannot be read (not JSON text, a damaged delta).

    A worker fails the turn with it, so the session is ``poisoned`` after
    ``max_attempts`` with this error, and other sessions go on; the row is
    kept as it is, to look at.
    """
