"""Failure modes of SCALEOUT.md that the other store tests leave out, each made to happen.

Leases that expire mid-turn (in process, on both stores), a crash loop, a
worker shut down with a turn in flight, a database clock that is not the
local one, purges racing a conversation, two workers sharing the sessions.
Stages block on a file (``Gate``); nothing waits on a timed sleep: waits are
bounded polls of the store's state or the worker's counters.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from store_support import chat_pipeline, gate_pipeline, read_marks, registry, sleep_pipeline
from store_support import running as shared_running

import stageflow
from stageflow.store import (
    Lease,
    SessionService,
    SessionStore,
    StoreUnavailableError,
    Worker,
)

pytestmark = pytest.mark.anyio


def running(store: Any, **options: Any) -> AbstractAsyncContextManager[Worker]:
    """``store_support.running``, polling every 0.1 s unless told otherwise."""
    return shared_running(store, **{"poll": 0.1, **options})


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 20
) -> None:
    """Poll ``check`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)


async def gated_session(service: SessionService, tmp_path: Path) -> tuple[str, Path, Path]:
    """A session with its two inputs sent: its first turn runs into the ``Gate`` stage."""
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    sid = await service.start(gate_pipeline(marks, gate))
    for n in (1, 2):
        await service.send_input(sid, "msg", {"n": n})
    return sid, marks, gate


class _FirstLeaseUnrenewable:
    """A store whose heartbeats fail while they carry the session's first lease.

    As a store outage that only the heartbeats meet (or a loop too busy to
    send them): the first lease expires while its turn is inside the stage.
    With ``renew`` set, heartbeats go through again.
    """

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.renew = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def heartbeat(self, worker_id: str, leases: list[Lease], lease: float) -> set[str]:
        if not self.renew and any(item.token == 1 for item in leases):
            self.refused += 1
            raise StoreUnavailableError("heartbeats cannot reach the store")
        held: set[str] = await self._store.heartbeat(worker_id, leases, lease)
        return held


@pytest.mark.parametrize("found_by", ["heartbeat", "save"])
async def test_a_lease_lost_mid_turn_writes_nothing(
    make_store: Callable[..., Any], tmp_path: Path, found_by: str
) -> None:
    """A takes too long without heartbeats; B claims the expired lease; A writes nothing.

    ``heartbeat``: A's heartbeats come back, find the lease lost and cancel the
    stage. ``save``: they never do, the stage ends, and A's save is fenced.
    """
    service = SessionService(make_store(), registry=registry)
    sid, marks, gate = await gated_session(service, tmp_path)
    store = _FirstLeaseUnrenewable(make_store())
    rival = make_store()
    # One turn at most: A does not claim the session again itself (the next test does).
    async with running(store, lease=0.6, worker_id="A", concurrency=1) as worker:
        await until(lambda: len(read_marks(marks)) == 1, "A inside the stage")
        taken: list[Lease] = []

        async def take_over() -> bool:
            taken.extend(await rival.claim("B", limit=1, lease=60))
            return bool(taken)

        await until(take_over, "the expired lease claimed by B")
        assert taken[0].token == 2
        assert [i.payload["n"] for i in taken[0].inputs] == [1, 2]
        if found_by == "heartbeat":
            store.renew = True
            await until(lambda: worker.statistics().lost == 1, "A's heartbeat finds it lost")
            await until(lambda: worker.statistics().running == 0, "A's turn cancelled")
            gate.touch()  # a stage that was not cancelled would now finish and try to save
        else:
            gate.touch()
            await until(lambda: worker.statistics().fenced == 1, "A's save fenced")
        row = await service.get(sid)
        assert (row.version, row.lease_owner, row.inbox_done) == (0, "B", 0)
        assert await service.store.events(sid) == []
    stats = worker.statistics()
    lost = int(found_by == "heartbeat")
    assert (stats.saved, stats.fenced, stats.lost, stats.claimed) == (0, 1 - lost, lost, 1)
    assert len(read_marks(marks)) == 1
    # B, the holder, saves the turn: the inputs are recorded once.
    snapshot = {**taken[0].snapshot, "status": "waiting"}
    assert await rival.complete(taken[0], snapshot, waiting_for=(), wake_at=None, events=())
    assert (await service.get(sid)).inbox_done == 2


async def test_a_worker_that_claims_its_own_expired_session_cancels_the_old_turn(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    """Its first lease expired (heartbeats failing); its own claim loop takes the session again.

    The old turn must stop there: its lease is lost for good (a newer token
    exists), and it ran the session's stage a second time, beside the new
    turn, in the same worker, until the gate opened and its save was fenced.
    """
    service = SessionService(make_store(), registry=registry)
    sid, marks, gate = await gated_session(service, tmp_path)
    store = _FirstLeaseUnrenewable(make_store())
    async with running(store, lease=0.6, worker_id="A") as worker:
        await until(lambda: len(read_marks(marks)) == 2, "the session claimed again by A")
        assert worker.statistics().claimed == 2
        await until(lambda: worker.statistics().lost == 1, "the first turn counted lost")
        gate.touch()
        done = await service.wait(sid, finished=True, timeout=20)
    assert (done.status, done.version, done.inbox_done) == ("completed", 1, 2)
    stats = worker.statistics()
    assert (stats.saved, stats.fenced, stats.lost, stats.running) == (1, 0, 1, 0)
    assert len(read_marks(marks)) == 2
    assert (await service.store.load(sid))["outcome"]["artifacts"]["seen"] == [1, 2]


async def test_a_crash_loop_is_poisoned_without_running_again(
    make_store: Callable[..., Any],
) -> None:
    """``attempts > max_attempts`` (the worker died on it each time): poisoned, not run."""
    service = SessionService(make_store(), registry=registry)
    # Two queues, so that the test's claims below pick the session they mean.
    looping = await service.start(chat_pipeline(), queue="looping")
    once = await service.start(chat_pipeline(), queue="once")
    crashed = make_store()
    for _ in range(2):  # two workers died holding it: claimed, never saved nor released
        (lease,) = await crashed.claim("dead", limit=1, lease=0.0, queues=["looping"])
        assert lease.session_id == looping
    (lease,) = await crashed.claim("dead", limit=1, lease=0.0, queues=["once"])  # still runs
    assert lease.session_id == once
    async with running(make_store(), max_attempts=2, queues=["looping", "once"]) as worker:
        poisoned = await service.wait(looping, finished=True, timeout=20)
        assert (await service.wait(once, timeout=20)).status == "waiting"
    assert (poisoned.status, poisoned.version, poisoned.runnable_at) == ("poisoned", 0, None)
    assert poisoned.error is not None
    assert "crash loop" in poisoned.error
    assert worker.statistics().released == 1


async def test_shutdown_waits_for_the_turn_in_flight(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    service = SessionService(make_store(), registry=registry)
    sid, marks, gate = await gated_session(service, tmp_path)
    worker = Worker(make_store(), registry=registry, poll=0.1, shutdown_grace=30)
    returned = anyio.Event()

    async def run() -> None:
        await worker.run()
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(lambda: len(read_marks(marks)) == 1, "the turn inside the stage")
        worker.shutdown()
        assert worker.statistics().running == 1
        assert not returned.is_set()
        gate.touch()
        with anyio.fail_after(20):
            await returned.wait()
    stats = worker.statistics()
    assert (stats.saved, stats.running, stats.claimed) == (1, 0, 1)
    done = await service.get(sid)
    assert (done.status, done.version, done.lease_owner) == ("completed", 1, None)


async def test_a_turn_abandoned_at_shutdown_runs_again_after_its_lease(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    service = SessionService(make_store(), registry=registry)
    sid, marks, gate = await gated_session(service, tmp_path)
    first = Worker(make_store(), registry=registry, poll=0.1, lease=1.0, shutdown_grace=0)
    followed: list[dict[str, Any]] = []

    async def follow() -> None:  # the committed feed, read across the crash
        followed.extend([event async for event in service.follow(sid)])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as following:
            following.start_soon(follow)
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run)
                await until(lambda: len(read_marks(marks)) == 1, "the turn inside the stage")
                first.shutdown()  # no grace: the turn is abandoned, its lease left to expire
            assert (first.statistics().saved, first.statistics().running) == (0, 0)
            row = await service.get(sid)
            assert (row.version, row.lease_owner) == (0, first.worker_id)  # nothing written
            gate.touch()
            async with running(make_store(), lease=1.0):
                done = await service.wait(sid, finished=True, timeout=20)
    assert (done.status, done.version, done.inbox_done) == ("completed", 1, 2)
    assert len(read_marks(marks)) == 2  # at-least-once: the abandoned stage ran again
    seqs = [event["seq"] for event in followed]
    assert seqs == list(range(1, len(seqs) + 1))  # each committed event once, in order
    assert followed == await service.store.events(sid)
    assert followed[-1]["type"] == "session_completed"


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's now() cannot be moved
@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_timers_follow_the_database_clock_not_the_workers(
    make_store: Callable[..., Any], skew: float
) -> None:
    """The store's clock is an hour off the worker's: a 1 s timer fires after 1 s of it.

    On the local clock the timer would fire at once (store ahead: early) or an
    hour late (store behind).
    """

    def clock() -> float:
        return time.time() + skew

    service = SessionService(make_store(clock=clock), registry=registry)
    sid = await service.start(sleep_pipeline(1.0))
    async with running(make_store(clock=clock)):
        sleeping = await service.wait(sid, timeout=20)  # its first turn, saved
        done = await service.wait(sid, finished=True, timeout=20)
    assert (sleeping.status, done.status) == ("waiting", "completed")
    second = datetime.timedelta(seconds=1)
    assert sleeping.wake_at is not None
    assert sleeping.created_at + second <= sleeping.wake_at <= sleeping.created_at + 10 * second
    assert done.updated_at >= sleeping.wake_at  # never early, in the store's time


async def test_purges_racing_a_conversation_lose_no_input(store: SessionStore) -> None:
    """Purges that delete every consumed input, run beside sends, claims and saves."""
    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="p").to_dict()
    await store.create(snapshot)
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    delivered: list[int] = []

    async def purge() -> None:
        await store.purge(finished_before=future, inputs_before=future)

    for n in range(40):
        leases = await _send_claim_and_purge(store, n, purge)
        while True:
            for lease in leases:
                delivered.extend(i.payload["n"] for i in lease.inputs)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(purge)
                    snap = {**lease.snapshot, "status": "waiting"}
                    assert await store.complete(
                        lease, snap, waiting_for=["msg"], wake_at=None, events=()
                    )
            leases = await store.claim("w", limit=1, lease=60)
            if not leases:
                break
    assert delivered == list(range(40))  # every input once, in order
    row = await store.get("p")
    assert (row.inbox_head, row.inbox_done, row.status) == (40, 40, "waiting")
    # The purges did delete the consumed inputs: a key older than the window is new again.
    assert (await store.send_input("p", "msg", {}, idempotency_key="k3")).duplicate is False


async def _send_claim_and_purge(
    store: SessionStore, n: int, purge: Callable[[], Awaitable[None]]
) -> list[Lease]:
    """Send input ``n``, claim and purge, all released at once (threads: the database decides)."""
    leases: list[Lease] = []
    go = anyio.Event()

    async def send() -> None:
        await go.wait()
        await store.send_input("p", "msg", {"n": n}, idempotency_key=f"k{n}")

    async def claim() -> None:
        await go.wait()
        leases.extend(await store.claim("w", limit=1, lease=60))

    async def racing_purge() -> None:
        await go.wait()
        await purge()

    async with anyio.create_task_group() as tg:
        for task in (send, claim, racing_purge):
            tg.start_soon(task)
        go.set()
    return leases


_RUNS: list[tuple[str, int]] = []


class Count(stageflow.BaseStage):
    """``Collect``, counting each run in ``_RUNS`` (a side effect no fence can take back)."""

    spec = stageflow.StageSpec(description="append msg.n to seen, counted")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        _RUNS.append((ctx.session_id, ctx.arguments["msg"]["n"]))
        seen = list(ctx.arguments.get("seen") or [])
        return {"seen": [*seen, ctx.arguments["msg"]["n"]]}


async def test_two_workers_run_each_turn_once(make_store: Callable[..., Any]) -> None:
    """Two workers (two stores, as two processes) share 12 conversations: no duplicate run."""
    counting = stageflow.StageRegistry()
    counting.register("Collect")(Count)
    pipeline = stageflow.Pipeline.from_dict(chat_pipeline().to_dict(), registry=counting)
    service = SessionService(make_store(), registry=counting)
    _RUNS.clear()
    inputs = [1, 2, 3, -1]
    async with (
        running(make_store(), registry=counting, concurrency=4) as one,
        running(make_store(), registry=counting, concurrency=4) as two,
    ):
        sids = [await service.start(pipeline) for _ in range(12)]
        for n in inputs:
            for sid in sids:
                await service.send_input(sid, "msg", {"n": n}, idempotency_key=f"{sid}/{n}")
        for sid in sids:
            assert (await service.wait(sid, finished=True, timeout=30)).status == "completed"
    assert sorted(_RUNS) == sorted((sid, n) for sid in sids for n in inputs)
    for sid in sids:
        snapshot = await service.store.load(sid)
        assert snapshot["outcome"]["artifacts"]["seen"] == inputs  # once each, in order
    stats = [one.statistics(), two.statistics()]
    assert sum(s.fenced + s.lost + s.released for s in stats) == 0
    assert sum(s.saved for s in stats) == sum([(await service.get(s)).version for s in sids])


async def test_concurrent_senders_get_one_seq_each_and_are_delivered_in_seq_order(
    store: SessionStore,
) -> None:
    """Twenty senders at once, with and without keys, two of them retrying one key."""
    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="o").to_dict()
    await store.create(snapshot)
    records: dict[int, Any] = {}
    go = anyio.Event()

    async def send(n: int) -> None:
        await go.wait()
        key = None if n % 2 else f"k{min(n, 18)}"  # 18 and 20 send one input, one key
        payload = {"n": n if key is None else min(n, 18)}
        records[n] = await store.send_input("o", "msg", payload, idempotency_key=key)

    async with anyio.create_task_group() as tg:
        for n in range(1, 21):
            tg.start_soon(send, n)
        go.set()
    fresh = sorted(r.seq for r in records.values() if not r.duplicate)
    assert fresh == list(range(1, 20))  # one seq each, no gap; the retried key stored once
    assert records[18].seq == records[20].seq
    assert records[18].duplicate != records[20].duplicate
    (lease,) = await store.claim("w", limit=1, lease=30)
    assert [i.seq for i in lease.inputs] == fresh
    by_seq = {r.seq: n if n % 2 else min(n, 18) for n, r in records.items() if not r.duplicate}
    assert [i.payload["n"] for i in lease.inputs] == [by_seq[seq] for seq in fresh]


def _gate_then_wait(marks: Path, gate: Path) -> stageflow.Pipeline:
    """Run the ``Gate`` stage, then wait for a ``msg`` input, then end."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "gate",
            "metadata": {"name": "gate-then-wait"},
            "nodes": [
                {
                    "id": "gate",
                    "type": "stage",
                    "stage": "Gate",
                    "config": {"marks": str(marks), "gate": str(gate)},
                    "outputs": {"gated": "gated"},
                    "next": "wait",
                },
                {
                    "id": "wait",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": "msg"},
                    "outputs": {"payload": "msg"},
                    "next": "end",
                },
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=registry,
    )


async def test_a_cancel_requested_during_a_turn_ends_the_session_at_the_next(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(_gate_then_wait(marks, gate))
    async with running(make_store()) as worker:
        await until(lambda: len(read_marks(marks)) == 1, "the turn inside the stage")
        record = await service.cancel(sid, "user left")
        gate.touch()
        done = await service.wait(sid, seq=record.seq, timeout=20)
    assert (done.status, done.inbox_done, done.version) == ("cancelled", 1, 2)
    history = (await service.store.load(sid, history=True))["history"]
    assert history[-1]["type"] == "session_cancelled"
    assert history[-1]["payload"]["reason"] == "user left"
    assert len(read_marks(marks)) == 1  # the stage ran once
    assert worker.statistics().saved == 2


async def test_a_session_released_by_a_worker_lacking_a_stage_runs_on_a_deployed_one(
    make_store: Callable[..., Any],
) -> None:
    """Released with backoff (not poisoned) while attempts remain; the next worker runs it."""
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    async with running(make_store(), registry=stageflow.StageRegistry()) as old:
        await until(lambda: old.statistics().released == 1, "the old worker releases it")
        old.shutdown()
    released = await service.get(sid)
    assert (released.status, released.attempts, released.lease_owner) == ("pending", 1, None)
    assert released.error is not None
    assert "Collect" in released.error
    assert released.runnable_at is not None
    assert released.runnable_at > released.updated_at  # backing off
    async with running(make_store()):
        stored = await service.wait(sid, timeout=20)
    assert (stored.status, stored.attempts, stored.error, stored.version) == (
        "waiting", 0, None, 1,
    )  # fmt: skip
    assert stored.updated_at >= released.runnable_at


class _SlowAfterClaim:
    """A store whose claims return a second after the database took them.

    As a busy event loop, or a thread hop that waits: the database's clock
    moved on before the turn starts.
    """

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.claimed: list[Lease] = []
        self.timers: list[datetime.datetime | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, worker_id: str, **options: Any) -> list[Lease]:
        leases: list[Lease] = await self._store.claim(worker_id, **options)
        if leases:
            self.claimed.extend(leases)
            await anyio.sleep(1.0)  # the delay under test, not a wait for something
        return leases

    async def complete(self, lease: Lease, snapshot: Any, **options: Any) -> bool:
        self.timers.append(options["wake_at"])
        saved: bool = await self._store.complete(lease, snapshot, **options)
        return saved


async def test_a_timer_set_by_a_turn_that_started_late_does_not_fire_early(
    make_store: Callable[..., Any],
) -> None:
    """The session's clock is the claim's database time plus the time elapsed since the claim.

    Counted from the turn's start instead, it lagged the database by the
    delay between the claim and the turn: a 0.5 s sleep woke after 0.5 s of
    the database's time counted from the claim, when the turn was 1 s old.
    """
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(sleep_pipeline(0.5))
    store = _SlowAfterClaim(make_store())
    async with running(store):
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "completed"
    wake_at = store.timers[0]  # saved by the first turn
    assert wake_at is not None
    started = store.claimed[0].db_now + datetime.timedelta(seconds=1.0)  # at the earliest
    assert wake_at >= started + datetime.timedelta(seconds=0.5)


async def test_an_early_restore_keeps_the_timer(make_store: Callable[..., Any]) -> None:
    """An input wakes a session sleeping for an hour: the turn runs, the timer stays as it was."""
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(sleep_pipeline(3600.0))
    async with running(make_store()) as worker:
        sleeping = await service.wait(sid, timeout=20)
        assert sleeping.wake_at is not None
        record = await service.send_input(sid, "note", {"text": "are you there?"})
        woken = await service.wait(sid, seq=record.seq, timeout=20)
    assert (sleeping.status, sleeping.version, woken.version) == ("waiting", 1, 2)
    assert woken.status == "waiting"
    assert woken.wake_at == sleeping.wake_at
    assert woken.runnable_at == sleeping.wake_at  # claimed again only when it is due
    assert worker.statistics().saved == 2


async def test_processes_migrating_a_new_store_at_once_make_one_schema(
    make_store: Callable[..., Any], backend: str
) -> None:
    """Four workers (four stores) start together on an empty database: one schema, one version."""
    from stageflow.store._shared import SCHEMA_VERSION

    stores = [make_store() for _ in range(4)]
    go = anyio.Event()

    async def migrate(store: Any) -> None:
        await go.wait()
        await store.migrate()

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(migrate, store)
        go.set()
    query = "SELECT version FROM stageflow_schema"

    def versions() -> list[int]:
        store: Any = stores[0]
        if backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(store.path)
            try:
                return [r[0] for r in conn.execute(query)]
            finally:
                conn.close()
        import psycopg

        options = f"-c search_path={store.schema}"
        with psycopg.connect(store.url, autocommit=True, options=options) as pg:
            return [r[0] for r in pg.execute(query)]

    assert await anyio.to_thread.run_sync(versions) == [SCHEMA_VERSION]
    sid = await SessionService(stores[1], registry=registry).start(chat_pipeline())
    assert (await stores[2].get(sid)).status == "pending"


async def test_a_store_opened_while_another_process_switches_the_file_to_wal_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite refuses the switch to WAL at once, without its busy timeout, in that race.

    Four workers starting on a new SQLite file failed now and then (about 1 in
    300 here) with ``StoreUnavailableError: cannot open the SQLite store ...:
    database is locked``. The switch is retried until the busy timeout; here
    the first attempt is refused as SQLite refuses it.
    """
    import sqlite3

    from stageflow.store import SQLiteStore

    refused: list[str] = []

    class Racing:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "PRAGMA journal_mode=WAL" and not refused:
                refused.append(sql)
                error = sqlite3.OperationalError("database is locked")
                error.sqlite_errorcode = sqlite3.SQLITE_BUSY
                raise error
            return self.conn.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: Racing(real(*a, **k)))
    store = SQLiteStore(tmp_path / "new.db")
    try:
        await store.migrate()
        sid = await SessionService(store, registry=registry).start(chat_pipeline())
        assert (await store.get(sid)).status == "pending"
    finally:
        await store.aclose()
    assert refused  # the race happened, and the store waited it out


def _terminate(dsn: str, application_name: str) -> int:
    """Close the server side of every connection named ``application_name`` (a restart)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_broken_postgres_connection_is_a_store_unavailable_error(
    store_url: str, store_options: dict[str, Any]
) -> None:
    # A pooled connection that the server closed (a restart, a failover) raised
    # psycopg's own AdminShutdown to the service's caller: `except StoreError`
    # missed the outage, as StoreUnavailableError says it for SQLite.
    name = f"t{time.monotonic_ns()}"
    separator = "&" if "?" in store_url else "?"
    store = stageflow.store.open_store(  # one pooled connection: the one that breaks
        f"{store_url}{separator}application_name={name}", **{**store_options, "pool_size": 1}
    )
    service = SessionService(store, registry=registry)
    try:
        sid = await service.start(chat_pipeline())
        assert await anyio.to_thread.run_sync(_terminate, store_url, name) >= 1
        with pytest.raises(StoreUnavailableError, match="did not answer: terminating connection"):
            await service.send_input(sid, "msg", {"n": 1})
        record = await service.send_input(sid, "msg", {"n": 1})  # a new connection
        assert record.seq == 1
    finally:
        await store.aclose()
