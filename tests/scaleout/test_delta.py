"""Saved snapshots as deltas (PostgreSQL, schema version 4), its migration, and the reads a turn
no longer makes.

A save stores its snapshot as a zlib stream against the stored one while it
is small; both stores must give back exactly the snapshot that was saved.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

import anyio
import pytest
from store_support import chat_pipeline, registry

import stageflow
from stageflow.store import Lease, SessionService, SessionStore, Worker
from stageflow.store._shared import SCHEMA_VERSION, snapshot_delta, unpack_delta

pytestmark = pytest.mark.anyio


def _fresh(count: int) -> list[str]:
    """New content that the stored snapshot does not help compress."""
    return [hashlib.sha256(str(n).encode()).hexdigest() for n in range(count)]


def _notes(count: int, salt: str = "") -> list[str]:
    return [
        f"note {n}{salt}: the customer asked about order {n * 7919 % 10007}" for n in range(count)
    ]


async def _claim(store: SessionStore) -> Lease:
    leases = await store.claim("w", limit=10, lease=30)
    assert len(leases) == 1, leases
    return leases[0]


async def _save(store: SessionStore, lease: Lease, snap: dict[str, Any]) -> None:
    assert await store.complete(lease, snap, waiting_for=["msg"], wake_at=None, events=[])


def _row(store: Any) -> tuple[str, bytes | None]:
    """(stored snapshot text, delta) of session ``s`` (PostgreSQL)."""
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as pg:
        row = pg.execute(
            f"SELECT snapshot, snapshot_delta FROM {store.schema}.stageflow_sessions "
            "WHERE session_id = 's'"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_delta_unpacks_to_the_text_and_a_drifted_snapshot_is_stored_whole() -> None:
    base = json.dumps({"notes": _notes(200), "count": 1}).encode()
    text = json.dumps({"notes": _notes(200), "count": 2})
    delta = snapshot_delta(base, text)
    assert delta is not None
    assert len(delta) < len(text) // 8
    assert unpack_delta(base, delta) == text
    assert snapshot_delta(None, text) is None  # no base: whole
    assert snapshot_delta(base, json.dumps({"notes": _fresh(200)})) is None  # drifted


async def test_saves_give_back_exactly_what_was_saved(store: SessionStore, backend: str) -> None:
    snap = stageflow.Session(chat_pipeline(), registry=registry, session_id="s").to_dict()
    snap["notes"] = _notes(200)
    await store.create(snap)
    created = await store.load("s")
    expected = created
    for turn in range(1, 5):
        await store.send_input("s", "msg", {"n": turn})
        lease = await _claim(store)
        assert lease.snapshot == expected
        expected = {**json.loads(json.dumps(lease.snapshot)), "status": "waiting", "turn": turn}
        await _save(store, lease, expected)
        assert await store.load("s") == expected
        if backend == "postgres":
            stored, delta = await anyio.to_thread.run_sync(_row, store)
            assert json.loads(stored) == created  # the base stays: only the delta is written
            assert delta is not None
    # A snapshot that drifted from its base is stored whole and becomes the base.
    await store.send_input("s", "msg", {"n": 5})
    lease = await _claim(store)
    assert lease.snapshot == expected
    drifted = {**json.loads(json.dumps(lease.snapshot)), "notes": _fresh(200)}
    await _save(store, lease, drifted)
    assert await store.load("s") == drifted
    if backend == "postgres":
        stored, delta = await anyio.to_thread.run_sync(_row, store)
        assert (json.loads(stored), delta) == (drifted, None)
    await store.send_input("s", "msg", {"n": 6})
    assert (await _claim(store)).snapshot == drifted


@pytest.mark.parametrize("backend", ["postgres"])
async def test_tables_of_schema_version_3_are_upgraded(make_store: Any) -> None:
    """Version 4 adds the delta column; rows saved before load as they are."""
    store = make_store()
    snap = stageflow.Session(chat_pipeline(), registry=registry, session_id="s").to_dict()
    await store.create(snap)
    await anyio.to_thread.run_sync(_back_to_version_3, store)
    upgraded = make_store()
    await upgraded.migrate()
    assert await anyio.to_thread.run_sync(_version, upgraded) == SCHEMA_VERSION
    assert (await upgraded.load("s"))["session_id"] == "s"
    await upgraded.send_input("s", "msg", {"n": 1})
    lease = await _claim(upgraded)
    await _save(upgraded, lease, {**lease.snapshot, "status": "waiting"})
    assert (await upgraded.load("s"))["status"] == "waiting"
    assert (await anyio.to_thread.run_sync(_row, upgraded))[1] is not None


def _back_to_version_3(store: Any) -> None:
    import psycopg

    with psycopg.connect(
        store.url, autocommit=True, options=f"-c search_path={store.schema}"
    ) as pg:
        pg.execute("ALTER TABLE stageflow_sessions DROP COLUMN snapshot_delta")
        pg.execute("UPDATE stageflow_schema SET version = 3")


def _version(store: Any) -> int:
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as pg:
        row = pg.execute(f"SELECT version FROM {store.schema}.stageflow_schema").fetchone()
    assert row is not None
    return int(row[0])


async def test_wait_after_a_send_returns_when_the_turn_was_saved_before_the_wait(
    make_store: Any,
) -> None:
    """The service skips the first read only while no save was noticed since the send."""
    store = make_store()
    # A poll longer than the timeout: a wait that missed the save would time out.
    service = SessionService(store, registry=registry, poll=120)
    async with anyio.create_task_group() as tg:
        worker = Worker(store, registry=registry, poll=0.2, fetch_cooldown=0.01)
        await tg.start(worker.run)
        sid = await service.start(chat_pipeline())
        await service.wait(sid, timeout=30)
        record = await service.send_input(sid, "msg", {"n": 1})
        # Let the turn be saved (and its notice be read by another wait) first.
        while (await store.get(sid)).inbox_done < record.seq:
            await service.wait(sid, timeout=30)
        stored = await service.wait(sid, seq=record.seq, timeout=30)
        assert stored.inbox_done >= record.seq
        worker.shutdown()


async def test_next_due_after_an_empty_claim_is_the_timer(store: SessionStore) -> None:
    snap = stageflow.Session(chat_pipeline(), registry=registry, session_id="s").to_dict()
    await store.create(snap)
    lease = await _claim(store)
    wake = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    assert await store.complete(
        lease, {**lease.snapshot, "status": "waiting"}, waiting_for=["msg"], wake_at=wake,
        events=[],
    )  # fmt: skip
    assert await store.claim("w", limit=10, lease=30) == []
    assert await store.next_due() == wake  # the empty claim's answer
    assert await store.next_due() == wake  # read again
    assert await store.next_due(queues=["other"]) is None


@pytest.mark.parametrize("backend", ["postgres"])
async def test_migrating_tables_that_are_up_to_date_waits_for_no_table_lock(
    make_store: Any,
) -> None:
    """A worker starting while another process writes (it deadlocked: the DDL's locks)."""
    import psycopg

    store = make_store()
    await store.migrate()
    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, options=options) as writer:
        # What a service's create() holds while it runs: a writer's lock on the tables.
        writer.execute("LOCK TABLE stageflow_sessions, stageflow_inbox IN ROW EXCLUSIVE MODE")
        with anyio.fail_after(20):  # before: CREATE INDEX IF NOT EXISTS waited for the lock
            await make_store().migrate()
        writer.rollback()
