"""Fixtures of the store suite: every test runs on SQLite and on a real PostgreSQL.

The PostgreSQL server is started once per test session (``initdb`` into a
temp dir, 127.0.0.1, a free port) and each test gets a fresh schema. Without
PostgreSQL the PostgreSQL half is skipped with the reason, unless
``STAGEFLOW_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure.

These tests talk to databases through threads, so trio runs on its real
clock here: a virtual clock would jump while a query runs in a thread.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pg_server
import pytest

from stageflow.store import SessionStore, open_store


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    try:
        with pg_server.running_postgres() as dsn:
            yield dsn
    except pg_server.PostgresUnavailable as exc:
        if os.environ.get(pg_server.REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required ({pg_server.REQUIRE_ENV}=1) but {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def store_options(backend: str) -> dict[str, Any]:
    if backend == "sqlite":
        return {}
    return {"schema": f"t_{uuid.uuid4().hex[:12]}", "pool_size": 4}


@pytest.fixture
def make_store(store_url: str, store_options: dict[str, Any]) -> Iterator[Any]:
    """Open stores on this test's database (several: one per role, as processes would)."""
    opened: list[SessionStore] = []

    def make(**extra: Any) -> SessionStore:
        store = open_store(store_url, **{**store_options, **extra})
        opened.append(store)
        return store

    yield make
    for store in opened:
        anyio.run(store.aclose)


@pytest.fixture
def store(make_store: Any) -> SessionStore:
    made: SessionStore = make_store()
    return made
