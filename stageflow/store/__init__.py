"""Sessions at scale: a session store, a service for request handlers, and workers.

General layout: this package sits above the engine (``stageflow._session``).
``_records`` holds the frozen records and the :class:`SessionStore` protocol,
``_errors`` its branch of the error tree, ``_sqlite`` and ``_postgres`` the two
stores (PostgreSQL needs the ``postgres`` extra and is imported only when a
``postgresql://`` URL is opened), ``_history`` the one place where a turn's
events leave the snapshot, ``_service`` and ``_worker`` the two roles.
See ``docs/scaleout.md``.

Example::

    store = open_store("sqlite:///sessions.db")
    service = SessionService(store, registry=registry)
    async with anyio.create_task_group() as tg:
        worker = Worker(store, registry=registry)
        await tg.start(worker.run)
        session_id = await service.start(pipeline)
        record = await service.send_input(session_id, "user_message", {"text": "hi"})
        await service.wait(session_id, seq=record.seq, timeout=10)
        worker.shutdown()
"""

from __future__ import annotations

from typing import Any

from stageflow._json import a_python_type
from stageflow.store._errors import (
    IdempotencyKeyReusedError,
    SessionFinishedError,
    SessionNotFoundError,
    StoreArgumentError,
    StoredDataError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
    hide_password,
)
from stageflow.store._records import (
    CANCEL_INPUT,
    FINISHED_STATUSES,
    Created,
    InputRecord,
    Lease,
    SessionStore,
    StoredInput,
    StoredSession,
)
from stageflow.store._service import SessionService
from stageflow.store._sqlite import SQLiteStore
from stageflow.store._worker import Worker, WorkerStatistics, db_clock

__all__ = [
    "CANCEL_INPUT",
    "FINISHED_STATUSES",
    "Created",
    "InputRecord",
    "Lease",
    "SQLiteStore",
    "IdempotencyKeyReusedError",
    "SessionFinishedError",
    "SessionNotFoundError",
    "SessionService",
    "SessionStore",
    "StoreArgumentError",
    "StoreError",
    "StoreSchemaError",
    "StoreUnavailableError",
    "StoredDataError",
    "StoredInput",
    "StoredSession",
    "Worker",
    "WorkerStatistics",
    "db_clock",
    "open_store",
]


def open_store(url: str, **options: Any) -> SessionStore:
    """Open the session store at ``url`` (connections open on first use).

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
    ``sqlite:///:memory:`` open the embedded store (:class:`SQLiteStore`);
    ``postgresql://user@host/db`` the PostgreSQL store (needs
    ``pip install 'stageflow[postgres]'``). ``options`` go to the store's
    constructor (``schema=``, ``notify=``, ``pool_size=``, ``events=``, ``create=``
    ...; ``create=False`` opens only a store that exists).

    Raises:
        StoreUnavailableError: the URL has another scheme, or the PostgreSQL
            driver is not installed.
        TypeError: ``url`` is not a string.
    """
    if not isinstance(url, str):
        raise TypeError(
            f"open_store(url=...) was given {a_python_type(url)}; pass the store's URL as a "
            "string, such as sqlite:///path.db or postgresql://user@host/db"
        )
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise StoreUnavailableError(
                f"store URL {hide_password(url)!r} has no file; write sqlite:///relative.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        return SQLiteStore(rest[1:], **options)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from stageflow.store._postgres import PostgresStore
        except ImportError as exc:
            raise StoreUnavailableError(
                f"the PostgreSQL store needs psycopg ({exc}); install it with "
                "pip install 'stageflow[postgres]'"
            ) from exc
        return PostgresStore(url, **options)
    raise StoreUnavailableError(
        f"store URL {hide_password(url)!r} has an unknown scheme; use sqlite:///path.db or "
        "postgresql://user@host/db"
    )
