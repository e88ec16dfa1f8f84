"""What the database sees: no transaction spans stage code, NOTIFY only after commit.

SCALEOUT.md's failure modes "queue-table bloat when a long transaction blocks
vacuum", "NOTIFY inside the write transaction serialising all commits" and
"LISTEN connections that drop silently", made to happen and looked at from
another connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from store_support import chat_pipeline, gate_pipeline, read_marks, registry

import stageflow
from stageflow.store import SessionService, SessionStore, Worker

pytestmark = pytest.mark.anyio


async def test_no_transaction_is_open_while_stage_code_runs(
    make_store: Callable[..., Any], backend: str, tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(gate_pipeline(marks, gate))
    for n in (1, 2):
        await service.send_input(sid, "msg", {"n": n})
    store = make_store()
    worker = Worker(store, registry=registry, poll=0.2, lease=3.0)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        with anyio.fail_after(20):
            while not read_marks(marks):  # noqa: ASYNC110  (the stage writes it)
                await anyio.sleep(0.01)
        # Inside the stage, across a heartbeat (every lease / 3 = 1 s) and claim polls.
        renewed = (await service.get(sid)).runnable_at
        with anyio.fail_after(20):
            while (await service.get(sid)).runnable_at == renewed:
                await _check_no_transaction(store, backend)
                await anyio.sleep(0.02)
        await _check_no_transaction(store, backend)
        assert worker.statistics().running == 1
        gate.touch()
        assert (await service.wait(sid, finished=True, timeout=20)).status == "completed"
        worker.shutdown()


async def _check_no_transaction(store: Any, backend: str) -> None:
    if backend == "sqlite":
        # Nobody holds the write lock for long: a writer waiting 2 s at most gets it (the
        # stage runs until the test opens the gate, so a lock held across it would not end).
        def write_now() -> None:
            conn = sqlite3.connect(store.path, timeout=2.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        await anyio.to_thread.run_sync(write_now)
        return

    def open_transactions() -> list[Any]:
        with psycopg.connect(store.url, autocommit=True) as conn:
            return conn.execute(
                "SELECT pid, state, query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND (state LIKE 'idle in transaction%%' "
                "OR xact_start < now() - interval '0.5 s')"
            ).fetchall()

    assert await anyio.to_thread.run_sync(open_transactions) == []


@pytest.mark.parametrize("backend", ["postgres"])
async def test_worker_connections_bound_statements_and_idle_transactions(
    store: SessionStore,
) -> None:
    def settings(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), "
            "current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert await store._run(settings) == ("30s", "1min")  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_notifications_are_sent_only_after_the_write_committed(
    store: SessionStore,
) -> None:
    """Each write's notification is handed over when another connection sees the write."""
    seen: list[tuple[str, list[tuple[Any, ...]]]] = []
    notifier = store._notifier  # type: ignore[attr-defined]
    add = notifier.add

    def add_and_look(channel: str, session_ids: Collection[str]) -> None:
        with psycopg.connect(store.url, autocommit=True) as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                f"SELECT {_STATE} FROM {store.schema}.stageflow_sessions "  # type: ignore[attr-defined]
                "WHERE session_id = ANY(%s) ORDER BY session_id",
                (list(session_ids),),
            ).fetchall()
        seen.append((channel.rsplit(".", 1)[1], [tuple(r) for r in rows]))
        add(channel, session_ids)

    notifier.add = add_and_look

    async def committed(write: Any, *channels: str) -> None:
        """``write`` notified on ``channels``, each time with its committed state."""
        seen.clear()
        await write
        row = await store.get("s")
        now = (row.session_id, row.status, row.inbox_head, row.version, row.lease_owner)
        for channel, rows in seen:
            assert rows == [now], f"{channel}: notified before its write committed"
        assert [channel for channel, _ in seen] == list(channels)

    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="s").to_dict()
    await committed(store.create(snapshot), "wake")
    await committed(store.send_input("s", "msg", {"n": 1}), "wake")
    await committed(store.send_input("s", "msg", {"n": 2}, idempotency_key="k"), "wake")
    await committed(store.request_cancel("s", "why", idempotency_key="c"), "wake")
    (lease,) = await store.claim("w", limit=1, lease=30)
    await store.send_input("s", "msg", {"n": 3})  # during the turn: the save leaves it due
    saved = {**lease.snapshot, "status": "waiting"}
    await committed(
        store.complete(lease, saved, waiting_for=["msg"], wake_at=None, events=()), "wake", "done"
    )
    (lease,) = await store.claim("w", limit=1, lease=30)
    await committed(store.release(lease, error="boom", max_attempts=5), "done")


_STATE = "session_id, status, inbox_head, version, lease_owner"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_listener_that_hears_nothing_still_runs_inputs_within_the_poll(
    make_store: Callable[..., Any],
) -> None:
    """The worker LISTENs, but no notification ever comes (the senders send none)."""
    service = SessionService(make_store(notify=False), registry=registry)
    store = make_store()
    worker = Worker(store, registry=registry, poll=0.3, fetch_cooldown=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        sid = await service.start(chat_pipeline())
        assert (await service.wait(sid, timeout=10)).status == "waiting"
        assert store.listener_reconnects == 1  # type: ignore[attr-defined]  # it listens
        for n in (1, 2, -1):
            record = await service.send_input(sid, "msg", {"n": n})
            stored = await service.wait(sid, seq=record.seq, timeout=10)
            assert stored.inbox_done == record.seq
        worker.shutdown()
    assert stored.status == "completed"
    assert store.listener_reconnects == 1  # type: ignore[attr-defined]
