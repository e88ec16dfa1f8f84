"""Sessions at scale: what a turn costs through the session store, and how workers add up.

Method (each row says which part it comes from):

- **SQLite, in-process.** N sessions of a wait/count loop, one ``Worker``
  (concurrency 32) in the benchmark's own process; R rounds each send one
  input to every session and wait until every input is recorded in a saved
  turn. Over the rounds only: turns/s, the process's CPU per turn (driver,
  service and worker together; informational, no budget) and
  ``send_input``'s median.
- **SQLite, worker process.** One ``stageflow worker`` subprocess
  (concurrency 32) on a fresh SQLite file; the benchmark process drives N
  sessions as in the PostgreSQL rows below (its ``wait()`` polls: SQLite has
  no notifications between processes; that is the driver's CPU, not the
  worker's). After a warm-up turn per session, over the driven turns:
  turns/s and the worker process's CPU per turn (``/proc/<pid>/stat``,
  before and after). The budget "worker CPU <= 4 ms per turn" is judged on
  this row.
- **Snapshot bytes over a long conversation.** One session, 1,000 turns on
  the SQLite store: the stored snapshot's size at turn 1 and turn 1,000. The
  history leaves the snapshot, so the size stays flat.
- **PostgreSQL, worker processes.** ``stageflow worker`` subprocesses
  (concurrency 32) against a PostgreSQL server (``STAGEFLOW_BENCH_PG_DSN``, or
  a throwaway one started like the tests' with ``fsync=off`` and
  ``synchronous_commit=off``: WAL bytes are unaffected, commit latency is not
  measured). The benchmark process drives N sessions, each sending an input
  and waiting for it to be recorded, R times. Over the driven turns: turns/s;
  worker CPU and database CPU per turn (``/proc/<pid>/stat`` of the worker
  processes and of every server process in ``pg_stat_activity``, before and
  after); WAL per turn (``pg_current_wal_insert_lsn`` before and after,
  including the driver's inputs). 1 and 2 workers; the ratio of their
  throughputs.
- **Coordination efficiency.** W = 1, 2, 4, 8 worker processes at
  concurrency 1 and a stage that waits 50 ms (I/O-bound); 2W sessions each
  driven for K turns. E(W) = T(W) / (W * T(1)).
- **``--million [N]``** (not in CI): N sessions stored (1 % due), then claim(32)
  p50/p95, ``send_input`` p50/p95 and a save's p50/p95 among them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

import stageflow
from benchmarks._harness import Row, Settings, Table, at_least, at_most
from benchmarks._scaleout_stages import IO_PIPELINE, PIPELINE, registry
from stageflow.store import SessionService, SessionStore, Worker, open_store

ROOT = Path(__file__).resolve().parent.parent


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


async def _long_conversation(store: SessionStore, turns: int) -> list[int]:
    """Stored snapshot bytes after each of ``turns`` turns of one session."""
    pipeline = stageflow.Pipeline.from_dict(PIPELINE, registry=registry)
    service = SessionService(store, registry=registry)
    sizes = []
    async with anyio.create_task_group() as tg:
        worker = Worker(store, registry=registry, pipelines=[pipeline], poll=0.5)
        await tg.start(worker.run)
        sid = await service.start(pipeline)
        for _ in range(turns):
            record = await service.send_input(sid, "msg", {})
            await service.wait(sid, seq=record.seq, timeout=600)
            sizes.append(len(json.dumps(await store.load(sid), separators=(",", ":"))))
        worker.shutdown()
    return sizes


async def scaleout(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    sessions = settings.size(500, 10)
    rounds = settings.size(4, 2)
    shape = f"{sessions} sessions x {rounds} rounds, 1 in-process worker"
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/bench.db")
        rate, cpu, send, size = await _per_turn(store, sessions, rounds)
        long_turns = settings.size(1000, 20)
        sizes = await _long_conversation(store, long_turns)
        await store.aclose()
    figures["scaleout sqlite cpu"] = cpu
    table.add(Row("scaleout", f"SQLite: turns/s ({shape})", f"{rate:,.0f}/s", "-"))
    table.add(
        Row(
            "scaleout",
            "SQLite: process CPU per turn (in-process worker: driver, service and worker)",
            f"{cpu:.2f} ms",
            f"snapshot {size:,} B",
        )
    )
    table.add(Row("scaleout", "SQLite: send_input, median", f"{send:.2f} ms", "-"))
    await _sqlite_worker_rows(settings, table, figures)
    growth = sizes[-1] / sizes[0]
    table.add(
        Row(
            "scaleout",
            f"stored snapshot bytes, turn {long_turns:,} vs turn 1",
            f"{sizes[-1]:,} B",
            f"{sizes[0]:,} B",
            f"{growth:.2f}",
            budget=at_most(1.1, growth, "snapshot bytes per turn flat over a long conversation"),
        )
    )
    with _postgres() as dsn:
        if dsn is None:
            table.notes.append(
                "scaleout: PostgreSQL rows skipped (no server could be started; set "
                "STAGEFLOW_BENCH_PG_DSN=postgresql://... to use one)"
            )
            return
        await _postgres_rows(dsn, settings, table)
        if settings.million:
            await _million(dsn, settings.million, table)


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    """A PostgreSQL DSN: ``STAGEFLOW_BENCH_PG_DSN``, or a throwaway server (None if neither)."""
    dsn = os.environ.get("STAGEFLOW_BENCH_PG_DSN")
    if dsn:
        yield dsn
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import pg_server  # type: ignore[import-not-found]

    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(pg_server.running_postgres())
        except pg_server.PostgresUnavailable:
            dsn = None
        yield dsn


# ----------------------------------------- worker processes (PostgreSQL, SQLite)


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime + stime of each live process, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _server_probe(dsn: str) -> tuple[int, list[int]]:
    """(WAL insert position in bytes, the server's process ids)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')").fetchone()
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity")]
    assert row is not None
    return int(row[0]), pids


def _spawn(url: str, schema: str | None, concurrency: int) -> subprocess.Popen[str]:
    """A ``stageflow worker`` on the store at ``url`` (``schema``: PostgreSQL's only)."""
    command = [
        sys.executable, "-m", "stageflow", "worker", "--store", url,
        *(["--schema", schema] if schema is not None else []),
        "--stages", "benchmarks._scaleout_stages", "--no-plugins",
        "--concurrency", str(concurrency), "--poll", "1.0",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    """SIGTERM every worker and wait for it; one still running after 120 s is killed."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


async def _drive(service: SessionService, ids: Sequence[str], turns: int) -> None:
    """Each session: send an input, wait until it is recorded; ``turns`` times."""

    async def one(sid: str) -> None:
        for _ in range(turns):
            record = await service.send_input(sid, "msg", {})
            await service.wait(sid, seq=record.seq, timeout=600)

    async with anyio.create_task_group() as tg:
        for sid in ids:
            tg.start_soon(one, sid)


async def _processes(
    url: str,
    *,
    workers: int,
    concurrency: int,
    sessions: int,
    turns: int,
    io: bool = False,
    payload: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One run with worker processes; per-turn figures over the driven turns.

    Always ``rate`` (turns/s), ``worker_ms`` (the worker processes' CPU) and
    ``snapshot`` (bytes). On PostgreSQL (a fresh schema, dropped after) also
    ``server_ms`` (the server processes' CPU) and ``wal`` (bytes); an SQLite
    ``url`` names a file the run uses as it is.
    """
    postgres = url.startswith(("postgresql://", "postgres://"))
    schema = f"bench_{uuid.uuid4().hex[:8]}" if postgres else None
    store = open_store(url, schema=schema, pool_size=8) if postgres else open_store(url)
    procs: list[subprocess.Popen[str]] = []
    try:
        await store.migrate()
        pipeline = stageflow.Pipeline.from_dict(IO_PIPELINE if io else PIPELINE, registry=registry)
        service = SessionService(store, registry=registry)
        for _ in range(workers):
            procs.append(_spawn(url, schema, concurrency))
        ids = [await service.start(pipeline, payload=payload) for _ in range(sessions)]
        for sid in ids:  # every worker process is up and has run a first turn
            await service.wait(sid, timeout=600)
        await _drive(service, ids, 1)  # warm-up
        if postgres:
            wal, pids = await anyio.to_thread.run_sync(_server_probe, url)
            server_cpu = _cpu_seconds(pids)
        workers_cpu = _cpu_seconds([p.pid for p in procs])
        started = time.perf_counter()
        await _drive(service, ids, turns)
        wall = time.perf_counter() - started
        worker_spent = _spent(workers_cpu, _cpu_seconds([p.pid for p in procs]))
        done = sessions * turns
        figures = {"rate": done / wall, "worker_ms": worker_spent / done * 1000}
        if postgres:
            wal_after, pids_after = await anyio.to_thread.run_sync(_server_probe, url)
            server_spent = _spent(server_cpu, _cpu_seconds(sorted({*pids, *pids_after})))
            figures["server_ms"] = server_spent / done * 1000
            figures["wal"] = (wal_after - wal) / done
        snapshot = await store.load(ids[0])
        figures["snapshot"] = len(json.dumps(snapshot, separators=(",", ":")))
    finally:
        with anyio.CancelScope(shield=True):  # the workers stop even when the run is cancelled
            await anyio.to_thread.run_sync(_stop, procs)
            await store.aclose()
            if schema is not None:
                await anyio.to_thread.run_sync(_drop_schema, url, schema)
    return figures


def _padding(size: int) -> dict[str, Any]:
    """A context of about ``size`` bytes of JSON (notes a chat would keep)."""
    notes: list[dict[str, Any]] = []
    while len(json.dumps(notes)) < size:
        n = len(notes)
        notes.append(
            {"n": n, "text": f"note {n}: the customer asked about order {n * 7919 % 10007}"}
        )
    return {"notes": notes}


async def _sqlite_worker_rows(
    settings: Settings, table: Table, figures: dict[str, float | None]
) -> None:
    sessions = settings.size(500, 10)
    turns = settings.size(4, 2)
    with tempfile.TemporaryDirectory() as tmp:
        run = await _processes(
            f"sqlite:///{tmp}/bench.db", workers=1, concurrency=32, sessions=sessions, turns=turns
        )
    figures["scaleout sqlite worker cpu"] = run["worker_ms"]
    shape = f"{sessions} sessions x {turns} turns, concurrency 32"
    table.add(Row("scaleout", f"SQLite: turns/s, 1 worker process ({shape})",
                  f"{run['rate']:,.0f}/s", "-"))  # fmt: skip
    table.add(
        Row(
            "scaleout",
            "SQLite: worker CPU per turn (1 worker process)",
            f"{run['worker_ms']:.2f} ms",
            f"snapshot {run['snapshot']:,} B",
            budget=at_most(4.0, run["worker_ms"], "worker CPU <= 4 ms per turn"),
        )
    )


async def _postgres_rows(dsn: str, settings: Settings, table: Table) -> None:
    sessions = settings.size(200, 8)
    turns = settings.size(5, 2)
    shape = f"{sessions} sessions x {turns} turns, concurrency 32"
    runs = {
        w: await _processes(dsn, workers=w, concurrency=32, sessions=sessions, turns=turns)
        for w in (1, 2)
    }
    one, two = runs[1], runs[2]
    table.add(Row("scaleout", f"PostgreSQL: turns/s, 1 worker process ({shape})",
                  f"{one['rate']:,.0f}/s", "-"))  # fmt: skip
    ratio = two["rate"] / one["rate"]
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: turns/s, 2 worker processes",
            f"{two['rate']:,.0f}/s",
            f"{one['rate']:,.0f}/s",
            f"{ratio:.2f}",
            budget=at_least(1.25, ratio, "2 workers >= 1.25x one (2 cores)"),
        )
    )
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: worker CPU per turn (1 worker process)",
            f"{one['worker_ms']:.2f} ms",
            f"snapshot {one['snapshot']:,} B",
            budget=at_most(4.0, one["worker_ms"], "worker CPU <= 4 ms per turn"),
        )
    )
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: database CPU per turn (1 worker process)",
            f"{one['server_ms']:.2f} ms",
            "-",
            budget=at_most(1.5, one["server_ms"], "database CPU <= 1.5 ms per turn"),
        )
    )
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: WAL per turn (1 worker process, inputs included)",
            f"{one['wal'] / 1024:.2f} KiB",
            f"snapshot {one['snapshot']:,} B",
            budget=at_most(6.0, one["wal"] / 1000, "WAL <= 6 KB per turn"),
        )
    )
    padded = await _processes(
        dsn, workers=1, concurrency=32, sessions=sessions, turns=turns, payload=_padding(14_000)
    )
    table.add(
        Row(
            "scaleout",
            "PostgreSQL: WAL per turn, 15 KB snapshot",
            f"{padded['wal'] / 1024:.2f} KiB",
            f"snapshot {padded['snapshot']:,} B",
            budget=at_most(6.0, padded["wal"] / 1000, "WAL <= 6 KB per turn at 15 KB snapshots"),
        )
    )
    counts = (1, 2) if settings.quick else (1, 2, 4, 8)
    per_session = settings.size(20, 2)
    rates = {}
    for w in counts:
        run = await _processes(
            dsn, workers=w, concurrency=1, sessions=2 * w, turns=per_session, io=True
        )
        rates[w] = run["rate"]
    for w in counts[1:]:
        efficiency = rates[w] / (w * rates[1])
        table.add(
            Row(
                "scaleout",
                f"coordination efficiency E({w}), 50 ms I/O stage, concurrency 1",
                f"{rates[w]:,.1f} turns/s",
                f"{w} x {rates[1]:,.1f}",
                f"{efficiency:.2f}",
                budget=at_least(0.70, efficiency, "E(8) >= 0.70") if w == 8 else None,
            )
        )


# ---------------------------------------------------------------- --million


def _load_sessions(dsn: str, schema: str, count: int, snapshot: str, digest: str) -> float:
    """Insert ``count`` waiting sessions (1 % due) server-side; returns the table's bytes."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        step = 100_000
        for lo in range(1, count + 1, step):
            hi = min(lo + step - 1, count)
            conn.execute(
                "INSERT INTO stageflow_sessions (session_id, queue, status, snapshot, pipeline, "
                "digest, runnable_at, version) SELECT 'm' || g, 'default', 'waiting', %s, "
                "'bench', %s, CASE WHEN g %% 100 = 0 THEN now() ELSE NULL END, 1 "
                "FROM generate_series(%s::int, %s::int) g",
                (snapshot, digest, lo, hi),
            )
        conn.execute("VACUUM ANALYZE stageflow_sessions")
        row = conn.execute("SELECT pg_total_relation_size('stageflow_sessions')").fetchone()
    assert row is not None
    return float(row[0])


def _p(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _million(dsn: str, count: int, table: Table) -> None:
    schema = f"bench_m_{uuid.uuid4().hex[:8]}"
    store = open_store(dsn, schema=schema, pool_size=4, notify=False)
    try:
        await store.migrate()
        pipeline = stageflow.Pipeline.from_dict(PIPELINE, registry=registry)
        session = stageflow.Session(pipeline, registry=registry)
        await session.run(suspend=True)
        snapshot = json.dumps(session.to_dict(history="none"), separators=(",", ":"))
        started = time.perf_counter()
        size = await anyio.to_thread.run_sync(
            _load_sessions, dsn, schema, count, snapshot, pipeline.digest
        )
        load = time.perf_counter() - started
        claims: list[float] = []
        saves: list[float] = []
        sends: list[float] = []
        rng = random.Random(17)
        for _ in range(100):
            t0 = time.perf_counter()
            leases = await store.claim("bench", limit=32, lease=30)
            claims.append(time.perf_counter() - t0)
            for lease in leases:
                t0 = time.perf_counter()
                await store.complete(lease, lease.snapshot, waiting_for=["msg"], wake_at=None,
                                     events=[])  # fmt: skip
                saves.append(time.perf_counter() - t0)
        for _ in range(1000):
            sid = f"m{rng.randrange(1, count + 1)}"
            t0 = time.perf_counter()
            await store.send_input(sid, "msg", {})
            sends.append(time.perf_counter() - t0)
    finally:
        await store.aclose()
        await anyio.to_thread.run_sync(_drop_schema, dsn, schema)
    label = f"{count:,} stored sessions"
    table.add(Row("scaleout", f"{label}: load (server-side) and table size",
                  f"{load:.0f} s", f"{size / 1e9:.2f} GB"))  # fmt: skip
    claim95 = _p(claims, 0.95)
    table.add(
        Row(
            "scaleout",
            f"{label}: claim(32) p50 / p95",
            f"{_p(claims, 0.5):.2f} / {claim95:.2f} ms",
            "-",
            budget=at_most(20.0, claim95, "claim(32) p95 <= 20 ms among 1M stored"),
        )
    )
    send95 = _p(sends, 0.95)
    table.add(
        Row(
            "scaleout",
            f"{label}: send_input p50 / p95",
            f"{_p(sends, 0.5):.2f} / {send95:.2f} ms",
            "-",
            budget=at_most(3.0, send95, "send_input p95 <= 3 ms among 1M stored"),
        )
    )
    table.add(Row("scaleout", f"{label}: save (complete) p50 / p95",
                  f"{_p(saves, 0.5):.2f} / {_p(saves, 0.95):.2f} ms", "-"))  # fmt: skip


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
