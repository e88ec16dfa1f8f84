"""Sessions at scale: per-turn cost of the session store with a service and a worker.

Method: N sessions of a wait/collect loop are started; one in-process
``Worker`` (concurrency 32) runs them; then R rounds each send one input to
every session and wait until every input is recorded in a saved turn. Over
the rounds only: turns/s, process CPU per turn (the service's and the
worker's work together: one process), ``send_input`` latency (median), and on
PostgreSQL the WAL written per turn (``pg_current_wal_lsn`` before and after).

SQLite always runs. PostgreSQL runs when ``STAGEFLOW_BENCH_PG_DSN`` names a
server (a fresh schema is created and dropped). Several worker *processes*,
the coordination-efficiency sweep and the ``--million`` mode of the design are
not here yet (see docs/scaleout.md).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import anyio

import stageflow
from benchmarks._harness import Row, Settings, Table, at_most
from stageflow.store import SessionService, SessionStore, Worker, open_store

registry = stageflow.StageRegistry()


@registry.register("Count")
class Count(stageflow.BaseStage):
    """Count the inputs seen (a no-op turn apart from that)."""

    spec = stageflow.StageSpec(description="count inputs")

    async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"count": int(ctx.arguments.get("count") or 0) + 1}


PIPELINE = {
    "api_version": "1.0",
    "entry": "wait",
    "metadata": {"name": "bench"},
    "nodes": [
        {
            "id": "wait",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "msg"},
            "outputs": {"payload": "msg"},
            "next": "count",
        },
        {
            "id": "count",
            "type": "stage",
            "stage": "Count",
            "arguments": {"count": "count"},
            "outputs": {"count": "count"},
            "next": "route",
        },
        {
            "id": "route",
            "type": "condition",
            "conditions": [{"if": {"var": "msg.stop"}, "then": "end"}],
            "else": "wait",
        },
        {"id": "end", "type": "terminal"},
    ],
}


def _wal_lsn(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
        assert row is not None
        return int(row[0])


async def _per_turn(
    store: SessionStore, sessions: int, rounds: int
) -> tuple[float, float, float, int]:
    """(turns/s, CPU ms per turn, send_input median ms, snapshot bytes) over the rounds."""
    pipeline = stageflow.Pipeline.from_dict(PIPELINE, registry=registry)
    service = SessionService(store, registry=registry)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        worker = Worker(store, registry=registry, pipelines=[pipeline], poll=0.5)
        await tg.start(worker.run)
        ids = [await service.start(pipeline) for _ in range(sessions)]
        for sid in ids:
            await service.wait(sid, timeout=600)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            records = []
            for sid in ids:
                started = time.perf_counter()
                records.append(await service.send_input(sid, "msg", {}))
                sends.append(time.perf_counter() - started)
            for record in records:
                await service.wait(record.session_id, seq=record.seq, timeout=600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        worker.shutdown()
    snapshot_bytes = len(json.dumps(await store.load(ids[0]), separators=(",", ":")))
    turns = sessions * rounds
    return turns / wall, cpu / turns * 1000, statistics.median(sends) * 1000, snapshot_bytes


async def scaleout(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    sessions = settings.size(500, 10)
    rounds = settings.size(4, 2)
    shape = f"{sessions} sessions x {rounds} rounds, 1 in-process worker"
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/bench.db")
        rate, cpu, send, size = await _per_turn(store, sessions, rounds)
        await store.aclose()
    figures["scaleout sqlite cpu"] = cpu
    table.add(Row("scaleout", f"SQLite: turns/s ({shape})", f"{rate:,.0f}/s", "-"))
    table.add(
        Row(
            "scaleout",
            "SQLite: process CPU per turn (service + worker)",
            f"{cpu:.2f} ms",
            f"snapshot {size:,} B",
            budget=at_most(4.0, cpu, "worker CPU <= 4 ms per turn"),
        )
    )
    table.add(Row("scaleout", "SQLite: send_input, median", f"{send:.2f} ms", "-"))
    dsn = os.environ.get("STAGEFLOW_BENCH_PG_DSN")
    if not dsn:
        table.notes.append(
            "scaleout: PostgreSQL rows skipped; set STAGEFLOW_BENCH_PG_DSN=postgresql://... "
            "(pip install 'stageflow[postgres]') to measure them"
        )
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = open_store(dsn, schema=schema)
    try:
        await store.migrate()
        before = await anyio.to_thread.run_sync(_wal_lsn, dsn)
        rate, cpu, send, size = await _per_turn(store, sessions, rounds)
        wal = (await anyio.to_thread.run_sync(_wal_lsn, dsn) - before) / (sessions * rounds)
    finally:
        await store.aclose()
        await anyio.to_thread.run_sync(_drop_schema, dsn, schema)
    table.add(Row("scaleout", f"PostgreSQL: turns/s ({shape})", f"{rate:,.0f}/s", "-"))
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: process CPU per turn (service + worker)",
            f"{cpu:.2f} ms",
            f"snapshot {size:,} B",
            budget=at_most(4.0, cpu, "worker CPU <= 4 ms per turn"),
        )
    )
    table.add(Row("scaleout", "PostgreSQL: send_input, median", f"{send:.2f} ms", "-"))
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: WAL per turn (incl. the rounds' sends)",
            f"{wal / 1024:.1f} KiB",
            "-",
            budget=at_most(6.0, wal / 1024, "WAL <= 6 KB per turn"),
        )
    )


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
