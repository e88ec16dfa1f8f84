"""History out of the snapshot: the events table holds it, ``load(history=True)`` gives it back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from store_support import chat_pipeline, registry

import stageflow
from stageflow.store import SessionService, SessionStore, Worker
from stageflow.store._shared import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


async def _conversation(store: SessionStore, turns: int) -> tuple[str, list[int]]:
    """A chat of ``turns`` inputs; returns the session id and the stored snapshot sizes."""
    service = SessionService(store, registry=registry)
    sizes = []
    async with anyio.create_task_group() as tg:
        worker = Worker(store, registry=registry, poll=0.2, fetch_cooldown=0.01)
        await tg.start(worker.run)
        sid = await service.start(chat_pipeline())
        for n in range(turns):
            record = await service.send_input(sid, "msg", {"n": n % 2})
            await service.wait(sid, seq=record.seq, timeout=20)
            sizes.append(len(json.dumps(await store.load(sid))))
        worker.shutdown()
    return sid, sizes


async def test_saved_snapshots_hold_no_history_and_do_not_grow_with_it(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    sid, sizes = await _conversation(store, 12)
    # The context grows by one list item per turn ("seen": ", 0") and counters gain a digit
    # now and then; the history, a dozen events (about 3 KB) per turn, is not in the row.
    assert sizes[-1] - sizes[0] <= 10 * (len(sizes) - 1)
    bare = await store.load(sid)
    assert bare["history"] == []
    whole = await store.load(sid, history=True)
    seqs = [e["seq"] for e in whole["history"]]
    assert seqs == list(range(1, bare["history_seq"]))
    restored = stageflow.Session.from_dict(whole, registry=registry)
    assert [e.seq for e in restored.history] == seqs


async def test_a_store_without_an_events_table_keeps_the_history_inline(
    make_store: Callable[..., Any],
) -> None:
    store = make_store(events=False)
    sid, _ = await _conversation(store, 2)
    snapshot = await store.load(sid)
    assert [e["seq"] for e in snapshot["history"]] == list(range(1, snapshot["history_seq"]))
    # events() (and so follow()) reads them from the snapshot: it said [] here,
    # and follow() on such a store never ended.
    events = await store.events(sid)
    assert [e["seq"] for e in events] == [e["seq"] for e in snapshot["history"]]
    assert {e["session_id"] for e in events} == {sid}


async def test_tables_of_schema_version_1_are_upgraded(
    make_store: Callable[..., Any], backend: str
) -> None:
    store = make_store()
    await store.migrate()
    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="old").to_dict()
    await store.create(snapshot)
    # What stageflow wrote before: one events row per event (with its type), version 1.
    events = [{"seq": 1, "type": "session_started"}, {"seq": 2, "type": "waiting_for_input"}]
    await anyio.to_thread.run_sync(_downgrade, store, backend, events)
    upgraded = make_store()
    await upgraded.migrate()
    assert await upgraded.events("old") == events
    assert [e["seq"] for e in await upgraded.events("old", after=1)] == [2]
    assert (await upgraded.load("old", history=True))["history"] == events


def _downgrade(store: Any, backend: str, events: list[dict[str, Any]]) -> None:
    v1_events = (
        "CREATE TABLE stageflow_events (session_id text NOT NULL REFERENCES stageflow_sessions "
        "ON DELETE CASCADE, seq bigint NOT NULL, type text NOT NULL, event {kind} NOT NULL, "
        "PRIMARY KEY (session_id, seq))"
    )
    rows = [("old", e["seq"], e["type"], json.dumps(e)) for e in events]
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute("DROP TABLE stageflow_events")
        conn.execute(v1_events.format(kind="TEXT"))
        conn.executemany("INSERT INTO stageflow_events VALUES (?, ?, ?, ?)", rows)
        conn.execute("UPDATE stageflow_schema SET version = 1")
        conn.commit()
        conn.close()
        return
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        pg.execute("DROP TABLE stageflow_events")
        pg.execute(v1_events.format(kind="jsonb"))
        pg.execute("DROP INDEX stageflow_sessions_start_key")
        pg.execute("ALTER TABLE stageflow_sessions ADD UNIQUE (start_key)")
        with pg.cursor() as cur:
            cur.executemany("INSERT INTO stageflow_events VALUES (%s, %s, %s, %s::jsonb)", rows)
        pg.execute("UPDATE stageflow_schema SET version = 1")


async def test_tables_of_schema_version_2_are_upgraded(
    make_store: Callable[..., Any], backend: str
) -> None:
    """Version 3 drops the PostgreSQL foreign keys of the inbox and the events."""
    store = make_store()
    sid, _ = await _conversation(store, 1)
    await anyio.to_thread.run_sync(_back_to_version_2, store, backend)
    assert await anyio.to_thread.run_sync(_schema_state, store, backend) == (2, 2)
    upgraded = make_store()
    await upgraded.migrate()
    foreign_keys = 2 if backend == "sqlite" else 0  # SQLite keeps its own
    assert await anyio.to_thread.run_sync(_schema_state, upgraded, backend) == (
        SCHEMA_VERSION,
        foreign_keys,
    )
    record = await upgraded.send_input(sid, "msg", {"n": 2})
    assert record.seq == 2
    (lease,) = await upgraded.claim("w", limit=1, lease=30)
    assert [i.seq for i in lease.inputs] == [2]


def _back_to_version_2(store: Any, backend: str) -> None:
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute("UPDATE stageflow_schema SET version = 2")
        conn.commit()
        conn.close()
        return
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        for table in ("stageflow_inbox", "stageflow_events"):
            pg.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_session_id_fkey FOREIGN KEY "
                "(session_id) REFERENCES stageflow_sessions ON DELETE CASCADE"
            )
        pg.execute("UPDATE stageflow_schema SET version = 2")


def _schema_state(store: Any, backend: str) -> tuple[int, int]:
    """(schema version, foreign keys of the inbox and events tables)."""
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store.path)
        version = conn.execute("SELECT version FROM stageflow_schema").fetchone()[0]
        keys = sum(
            len(conn.execute(f"PRAGMA foreign_key_list({t})").fetchall())
            for t in ("stageflow_inbox", "stageflow_events")
        )
        conn.close()
        return version, keys
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as pg:
        row = pg.execute(
            f"SELECT (SELECT version FROM {store.schema}.stageflow_schema), "
            "(SELECT count(*) FROM pg_constraint c JOIN pg_namespace n "
            "ON n.oid = c.connamespace WHERE n.nspname = %s AND c.contype = 'f')",
            (store.schema,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
