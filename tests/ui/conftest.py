"""Fixtures of the inspector's tests: a SQLite store with three sessions, made once.

The sessions (completed, failed, waiting) are made by a real worker at the
start; a test that changes a store gets its own copy of the file. These
tests read databases through threads, so trio runs on its real clock here.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import ui_support

from stageflow.store import SessionStore, open_store
from stageflow.ui import InspectorConfig, create_app


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="session")
def ui_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with sessions.db (three sessions), snaps/ and pipes/."""
    root = tmp_path_factory.mktemp("ui-data")
    url = ui_support.make_store(root)
    ui_support.make_snapshot_dir(url, root / "snaps")
    ui_support.write_pipelines(root / "pipes")
    return root


@pytest.fixture
def store_url(ui_data: Path, tmp_path: Path) -> str:
    """A fresh copy of the three-session store, for a test that may change it."""
    for file in ui_data.glob("sessions.db*"):  # the WAL too: it holds the latest commits
        shutil.copy(file, tmp_path / file.name)
    return f"sqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
async def make_client(
    ui_data: Path,
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``make_client(store=..., **config)``: an HTTP client on a fresh app (closed after)."""
    made: list[tuple[httpx.AsyncClient, SessionStore | None]] = []

    def make(*, store_url: str | None = None, **options: Any) -> httpx.AsyncClient:
        options.setdefault("pipelines", ui_data / "pipes")
        store = options.pop("store", None) or (open_store(store_url) if store_url else None)
        app = create_app(InspectorConfig(store=store, **options))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver",
        )
        made.append((client, store))
        return client

    yield make
    for client, store in made:
        await client.aclose()
        if store is not None:
            await store.aclose()
