"""Wake-ups on PostgreSQL: NOTIFY as a hint, a LISTEN connection that is dropped, poll-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest
import structlog
from store_support import chat_pipeline, failing_on, registry

from stageflow.store import SessionService, Worker

pytestmark = pytest.mark.anyio

# A poll far longer than the test's waits: a prompt turn proves the wake-up came by NOTIFY.
LONG_POLL = 60.0


@pytest.fixture
def backend() -> str:
    return "postgres"


def _terminate_listeners(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f'LISTEN "{schema}.wake"%',),
        ).fetchall()
    return len(rows)


@pytest.mark.parametrize("log_set_up", ["unconfigured", "failing"])
async def test_a_dropped_listen_connection_is_reopened(
    make_store: Callable[..., Any],
    store_url: str,
    store_options: dict[str, Any],
    log_set_up: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "failing": the store's store.listener_lost line cannot be written. It
    # raised out of wait_for_work, and the worker waited its whole poll
    # (60 s) before it claimed again; the line is lost, not the wake-up.
    if log_set_up == "failing":
        structlog.configure(
            processors=[failing_on("store."), structlog.processors.KeyValueRenderer()]
        )
    service = SessionService(make_store(), registry=registry)  # another "process"
    store = make_store()
    worker = Worker(store, registry=registry, poll=LONG_POLL, fetch_cooldown=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        sid = await service.start(chat_pipeline())
        await service.wait(sid, timeout=10)
        with anyio.fail_after(10):  # the LISTEN connection is open
            while store.listener_reconnects < 1:  # type: ignore[attr-defined]  # noqa: ASYNC110
                await anyio.sleep(0.01)
        killed = await anyio.to_thread.run_sync(
            _terminate_listeners, store_url, store_options["schema"]
        )
        assert killed == 1
        # The worker notices, reconnects (backoff 0.1 s), re-listens and claims at once.
        with anyio.fail_after(10):
            while store.listener_reconnects < 2:  # type: ignore[attr-defined]  # noqa: ASYNC110
                await anyio.sleep(0.02)
        record = await service.send_input(sid, "msg", {"n": 1})
        stored = await service.wait(sid, seq=record.seq, timeout=10)
        assert stored.inbox_done == 1
        worker.shutdown()
    lost = [r.getMessage() for r in caplog.records if r.name == "stageflow.store"]
    if log_set_up == "failing":
        assert "store.listener_lost: the warning line could not be written" in lost


async def test_poll_only_mode_needs_no_notify(make_store: Callable[..., Any]) -> None:
    service = SessionService(make_store(notify=False), registry=registry)
    worker = Worker(make_store(notify=False), registry=registry, poll=0.3, fetch_cooldown=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        sid = await service.start(chat_pipeline())
        record = await service.send_input(sid, "msg", {"n": -1})
        stored = await service.wait(sid, seq=record.seq, timeout=10)
        worker.shutdown()
    assert stored.status == "completed"
