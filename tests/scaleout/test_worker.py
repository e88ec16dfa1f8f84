"""SessionService and Worker in one process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import structlog.testing
from opentelemetry import trace
from store_support import (
    chat_pipeline,
    failing_on,
    gate_pipeline,
    read_marks,
    registry,
    running,
    sleep_pipeline,
)

import stageflow
from stageflow.store import (
    Lease,
    SessionService,
    SessionStore,
    StoreArgumentError,
    Worker,
    open_store,
)

pytestmark = pytest.mark.anyio


async def test_a_conversation_through_the_service(make_store: Callable[..., Any]) -> None:
    service = SessionService(make_store(), registry=registry)
    async with running(make_store()) as worker:
        sid = await service.start(chat_pipeline(), idempotency_key="start-1")
        assert await service.start(chat_pipeline(), idempotency_key="start-1") == sid
        first = await service.wait(sid, timeout=20)
        assert (first.status, first.waiting_for) == ("waiting", ("msg",))
        for n in (1, 2):
            record = await service.send_input(sid, "msg", {"n": n}, idempotency_key=f"m{n}")
            again = await service.send_input(sid, "msg", {"n": n}, idempotency_key=f"m{n}")
            assert (again.seq, again.duplicate) == (record.seq, True)
            stored = await service.wait(sid, seq=record.seq, timeout=20)
            assert stored.inbox_done >= record.seq
        await service.send_input(sid, "msg", {"n": -1})
        done = await service.wait(sid, timeout=20)
        assert done.status == "completed"
        assert worker.statistics().fenced == 0
    stored = await service.store.load(sid)
    assert stored["version"] == 6  # the format to_dict() writes
    assert stored["history"] == []  # the row holds no history: it is in the events table
    snapshot = await service.store.load(sid, history=True)
    session = stageflow.Session.from_dict(snapshot, registry=registry)
    assert session.status is stageflow.SessionStatus.COMPLETED
    assert snapshot["outcome"]["artifacts"]["seen"] == [1, 2, -1]
    events = [e async for e in service.follow(sid)]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # every committed event once, in order
    assert seqs == [e["seq"] for e in snapshot["history"]]
    assert stored["history_seq"] == seqs[-1] + 1
    assert events[-1]["type"] == "session_completed"
    assert [s.session_id for s in await service.list(status="completed")] == [sid]


async def test_the_fetch_cooldown_never_delays_the_next_turn_of_a_conversation(
    tmp_path: Path,
) -> None:
    """Only a claim that a wake-up hint triggered and that found nothing starts the cooldown.

    Before, every empty claim did (the one made when a turn ended, before the
    next input was sent; an empty poll), and the worker's own save woke it
    for such a claim: each next turn then waited for the cooldown, and with
    an hour's cooldown this conversation stalled. The stores are separate
    objects, as in two processes: SQLite then has no wake-up hints at all,
    so every claim here follows a turn or a poll.
    """
    url = f"sqlite:///{tmp_path / 's.db'}"
    service = SessionService(open_store(url), registry=registry)
    worker_store = open_store(url)
    try:
        async with running(worker_store, fetch_cooldown=3600.0) as worker:
            sid = await service.start(chat_pipeline())
            assert (await service.wait(sid, timeout=20)).status == "waiting"
            for n in (1, 2, 3):
                record = await service.send_input(sid, "msg", {"n": n})
                stored = await service.wait(sid, seq=record.seq, timeout=20)
                assert stored.inbox_done == record.seq
        # Read once the worker has stopped: a waiter can see a committed save
        # before the worker, back from saving it, counts it.
        stats = worker.statistics()
        assert (stats.saved, stats.claimed) == (4, 4)
        assert stats.claims - stats.empty_claims == 4  # one session: one lease per claim
    finally:
        await service.store.aclose()
        await worker_store.aclose()


async def test_cancel_through_the_service(make_store: Callable[..., Any]) -> None:
    service = SessionService(make_store(), registry=registry, pipelines=[chat_pipeline()])
    async with running(make_store()):
        sid = await service.start("chat")
        await service.wait(sid, timeout=20)
        await service.cancel(sid, "user left", idempotency_key="c1")
        done = await service.wait(sid, timeout=20)
    assert done.status == "cancelled"
    history = (await service.store.load(sid, history=True))["history"]
    assert any(e["type"] == "session_cancelled" for e in history)
    again = await service.cancel(sid, "user left", idempotency_key="c1")
    assert again.duplicate


async def test_a_poisoned_session_does_not_stop_the_others(make_store: Callable[..., Any]) -> None:
    other = stageflow.StageRegistry()

    @other.register("Collect")
    class Missing(stageflow.BaseStage):
        spec = stageflow.StageSpec(description="only the service knows this one")

        async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
            return {}

    broken = _needing_unknown(_with_unknown(other))
    service = SessionService(make_store(), registry=_with_unknown(other))
    store = make_store()
    async with running(store, max_attempts=1) as worker:
        bad = await service.start(broken)
        good = await service.start(chat_pipeline())
        await service.send_input(good, "msg", {"n": -1})
        assert (await service.wait(good, timeout=20)).status == "completed"
        poisoned = await service.wait(bad, timeout=20)
    assert worker.statistics().released == 1  # counted once the worker has stopped
    assert poisoned.status == "poisoned"
    assert poisoned.error is not None
    assert "Unknown" in poisoned.error


async def test_a_failed_turn_logs_its_traceback_and_a_poisoned_session_an_error(
    make_store: Callable[..., Any],
) -> None:
    # The turn's failure was a warning with repr(exc) only, its traceback
    # lost; and a session poisoned for good wrote no line at all.
    unknown = _with_unknown(stageflow.StageRegistry())  # the service's; the worker lacks it
    broken = _needing_unknown(unknown)
    service = SessionService(make_store(), registry=unknown)
    with structlog.testing.capture_logs() as logs:
        async with running(make_store(), max_attempts=2):
            bad = await service.start(broken)
            assert (await service.wait(bad, finished=True, timeout=20)).status == "poisoned"
    failed = [line for line in logs if line["event"] == "worker.turn_failed"]
    assert len(failed) == 2
    assert all(isinstance(line["exc_info"], stageflow.StageflowError) for line in failed)
    [poisoned] = [line for line in logs if line["log_level"] == "error"]
    assert poisoned["event"] == "worker.session_poisoned"
    assert (poisoned["session_id"], poisoned["attempts"]) == (bad, 2)
    assert "Unknown" in poisoned["error"]


async def test_a_lease_lost_before_its_release_is_not_logged_as_poisoned(
    make_store: Callable[..., Any],
) -> None:
    # The worker wrote "worker.session_poisoned" whenever the failed attempt
    # was the last, even when the release changed nothing because the lease
    # had gone to another worker (nothing was poisoned).
    unknown = _with_unknown(stageflow.StageRegistry())
    broken = _needing_unknown(unknown)
    service = SessionService(make_store(), registry=unknown)
    store = make_store()
    released = anyio.Event()
    real_release = store.release

    async def release_after_losing_it(lease: Lease, **options: Any) -> bool:
        # Another worker took the session meanwhile: the release is fenced.
        stale = attrs.evolve(lease, token=lease.token + 1000)
        result: bool = await real_release(stale, **options)
        released.set()
        return result

    store.release = release_after_losing_it
    with structlog.testing.capture_logs() as logs:
        async with running(store, max_attempts=1):
            await service.start(broken)
            await released.wait()
    assert [line["event"] for line in logs if line["log_level"] == "error"] == []
    assert [line["event"] for line in logs if line["event"].startswith("worker.release")] == [
        "worker.release_fenced"
    ]


def _needing_unknown(reg: stageflow.StageRegistry) -> stageflow.Pipeline:
    """A pipeline named "broken" whose one stage, ``Unknown``, the workers lack."""
    return _broken(reg, "Unknown")


def _broken(reg: stageflow.StageRegistry, stage: str) -> stageflow.Pipeline:
    """A pipeline named "broken" of one ``stage`` node."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "x",
            "metadata": {"name": "broken"},
            "nodes": [
                {"id": "x", "type": "stage", "stage": stage, "next": "end"},
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=reg,
    )


def _with_unknown(reg: stageflow.StageRegistry) -> stageflow.StageRegistry:
    if "Unknown" not in reg.names():

        @reg.register("Unknown")
        class Unknown(stageflow.BaseStage):
            spec = stageflow.StageSpec(description="a stage the worker lacks")

            async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
                return {}

    return reg


async def test_timers_survive_a_worker_restart(make_store: Callable[..., Any]) -> None:
    service = SessionService(make_store(), registry=registry)
    async with running(make_store()):
        sid = await service.start(sleep_pipeline(1.0))
        stored = await service.wait(sid, timeout=20)
    assert stored.status == "waiting"
    assert stored.wake_at is not None
    assert stored.runnable_at == stored.wake_at
    # No worker runs now. A new one claims nothing before the timer, then completes it.
    store = make_store()
    assert await store.claim("early", limit=5, lease=30) == []
    assert (await store.get(sid)).wake_at == stored.wake_at  # unchanged by the early look
    async with running(store):
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "completed"
    assert done.updated_at >= stored.wake_at


async def test_a_timer_past_year_9999_is_read_as_the_latest_time(
    make_store: Callable[..., Any],
) -> None:
    # The engine puts such a timer at datetime.max; SQLite stored it as a float
    # that read back as year 10000, so every read of the row raised ValueError,
    # the worker's next_due too (its idle loop failed and slept at each poll).
    latest = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    service = SessionService(make_store(), registry=registry)
    async with running(make_store()):
        sid = await service.start(sleep_pipeline(1e12))
        stored = await service.wait(sid, timeout=20)
    assert (stored.status, stored.wake_at, stored.runnable_at) == ("waiting", latest, latest)
    assert [s.session_id for s in await service.list(status="waiting")] == [sid]
    assert await service.store.next_due() == latest


async def test_heartbeats_keep_a_stage_longer_than_its_lease(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(gate_pipeline(marks, gate))
    for n in (1, 2):
        await service.send_input(sid, "msg", {"n": n})
    async with running(make_store(), lease=2.0, worker_id="A") as holder:
        with anyio.fail_after(20):
            while not read_marks(marks):  # noqa: ASYNC110  (the stage writes it)
                await anyio.sleep(0.01)
        async with running(make_store(), lease=2.0, worker_id="B") as rival:
            # The claim's expiry and three renewals (every lease / 3): the stage outlives its
            # lease, and a heartbeat 1.3 s late would still not lose it.
            renewals: set[Any] = set()
            with anyio.fail_after(20):
                while len(renewals) < 4:
                    renewals.add((await service.get(sid)).runnable_at)
                    await anyio.sleep(0.02)
            gate.touch()
            done = await service.wait(sid, finished=True, timeout=20)
            assert rival.statistics().claimed == 0
    # After the worker stopped: the save can be seen (and noticed) before complete() returns.
    assert holder.statistics().saved == 1
    assert done.status == "completed"
    assert len(read_marks(marks)) == 1  # no second execution


async def test_a_worker_rebuilds_a_pipeline_from_snapshots_once(
    make_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker given no pipelines= rebuilds each from the document its snapshots carry;
    # building one (and resolving its stages) cost more than the rest of a short turn.
    pipeline = chat_pipeline()
    built: list[str] = []
    build = stageflow.Pipeline.from_dict.__func__  # type: ignore[attr-defined]

    def counted(cls: type[stageflow.Pipeline], *args: Any, **kwargs: Any) -> Any:
        made = build(cls, *args, **kwargs)
        built.append(made.digest)
        return made

    monkeypatch.setattr(stageflow.Pipeline, "from_dict", classmethod(counted))
    service = SessionService(make_store(), registry=registry)
    async with running(make_store()):
        sid = await service.start(pipeline)
        for n in (1, 2, 3):
            record = await service.send_input(sid, "msg", {"n": n})
            await service.wait(sid, seq=record.seq, timeout=20)
    assert built == [pipeline.digest]  # the first turn's; the next three reuse it


class _ReclaimedWhileSaving:
    """A store whose first save returns only after the worker claimed the session again.

    As when the turn's task resumes late after its save (a busy loop): the
    session is claimable (new input, lease cleared) while the old turn is
    still on its way out.
    """

    def __init__(self, store: SessionStore, service: SessionService) -> None:
        self._store = store
        self._service = service
        self.worker: Worker | None = None
        self.reclaimed = False
        self.claimed_again = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, worker_id: str, **options: Any) -> list[Lease]:
        leases: list[Lease] = await self._store.claim(worker_id, **options)
        if self.reclaimed and leases:
            self.claimed_again.set()
        return leases

    async def complete(self, lease: Lease, snapshot: Any, **options: Any) -> bool:
        saved: bool = await self._store.complete(lease, snapshot, **options)
        if not self.reclaimed and self.worker is not None and snapshot["status"] == "waiting":
            self.reclaimed = True
            await self._service.send_input(lease.session_id, "msg", {"n": 1})
            with anyio.fail_after(20):
                await self.claimed_again.wait()
            # The worker counts a claim and enters its turn before it next yields.
            assert self.worker.statistics().claimed == 2
        return saved


async def test_a_turn_ending_after_its_session_was_claimed_again_leaves_the_new_turn(
    make_store: Callable[..., Any],
) -> None:
    # The old turn's exit removed the new turn's entry; the new turn's exit then
    # failed with a KeyError that stopped the worker.
    service = SessionService(make_store(), registry=registry)
    store = _ReclaimedWhileSaving(make_store(), service)
    async with running(store) as worker:  # type: ignore[arg-type]
        store.worker = worker
        sid = await service.start(chat_pipeline())
        stored = await service.wait(sid, seq=1, timeout=20)
        assert stored.inbox_done >= 1
        await service.send_input(sid, "msg", {"n": -1})
        done = await service.wait(sid, timeout=20)
        assert done.status == "completed"
        assert worker.statistics().claimed >= 2


class _HeartbeatAfterSave:
    """A store whose first save returns only after a heartbeat ran on the committed save.

    As when the heartbeat's thread runs between the save's commit and the
    turn's task resuming: the heartbeat finds the lease released.
    """

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.committed = False
        self.heartbeat_after_commit = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def heartbeat(self, worker_id: str, leases: list[Lease], lease: float) -> Any:
        held = await self._store.heartbeat(worker_id, leases, lease)
        if self.committed:
            self.heartbeat_after_commit.set()
        return held

    async def complete(self, lease: Lease, snapshot: Any, **options: Any) -> bool:
        saved: bool = await self._store.complete(lease, snapshot, **options)
        if not self.committed:
            self.committed = True
            with anyio.fail_after(20):
                await self.heartbeat_after_commit.wait()
        return saved


async def test_a_heartbeat_beside_a_committed_save_loses_no_turn(
    make_store: Callable[..., Any],
) -> None:
    # The heartbeat counted the saved turn as lost and cancelled it: a warning
    # for nothing, and the save went uncounted.
    service = SessionService(make_store(), registry=registry)
    store = _HeartbeatAfterSave(make_store())
    async with running(store, lease=0.6) as worker:  # type: ignore[arg-type]
        sid = await service.start(chat_pipeline())
        stored = await service.wait(sid, timeout=20)
        assert stored.status == "waiting"
        await store.heartbeat_after_commit.wait()
        await service.send_input(sid, "msg", {"n": -1})
        assert (await service.wait(sid, timeout=20)).status == "completed"
    # Read once the worker has stopped: the waiter can see the committed save
    # before the worker, back from saving it, counts it.
    statistics = worker.statistics()
    assert (statistics.lost, statistics.saved) == (0, 2)


class _SlowMigration:
    """A store whose migration waits for the test to let it finish."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.started = anyio.Event()
        self.finish = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def migrate(self) -> None:
        self.started.set()
        await self.finish.wait()
        await self._store.migrate()


async def test_a_shutdown_during_the_migration_stops_the_worker(
    make_store: Callable[..., Any],
) -> None:
    # run() cleared the stop flag after migrating: a SIGTERM that arrived
    # while `stageflow worker` migrated was lost, and the worker ran on.
    store = _SlowMigration(make_store())
    worker = Worker(store, registry=registry, poll=0.2)  # type: ignore[arg-type]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await store.started.wait()
            worker.shutdown()
            store.finish.set()
    assert worker.statistics().claims == 0


def _sql(store: Any, statement: str, *params: Any) -> None:
    """Run one statement on the store's database behind its back (a damaged row, an old row)."""
    if isinstance(store, stageflow.store.SQLiteStore):
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute(statement, params)
        conn.commit()
        conn.close()
        return
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        pg.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]


async def test_a_damaged_snapshot_row_is_poisoned_and_the_others_go_on(
    make_store: Callable[..., Any],
) -> None:
    # The claim read every snapshot inside its transaction: one that was not
    # JSON failed the whole claim, every time, and no session ran again.
    store = make_store()
    service = SessionService(store, registry=registry)
    damaged = await service.start(chat_pipeline())
    healthy = [await service.start(chat_pipeline()) for _ in range(2)]
    _sql(store, "UPDATE stageflow_sessions SET snapshot = ? WHERE session_id = ?", '{"cut', damaged)
    async with running(make_store(), max_attempts=2):
        for sid in healthy:
            assert (await service.wait(sid, timeout=20)).status == "waiting"
        poisoned = await service.wait(damaged, finished=True, timeout=20)
    assert poisoned.status == "poisoned"
    assert poisoned.error is not None
    assert poisoned.error.startswith("StoredDataError: the stored snapshot cannot be read")


async def test_reading_a_damaged_row_is_a_stored_data_error(
    make_store: Callable[..., Any],
) -> None:
    # store.load and store.events raised json's JSONDecodeError (or a
    # KeyError, a TypeError) for a damaged row, not the StoredDataError the
    # store's errors promise, so a caller could not tell it from a bug.
    store = make_store()
    service = SessionService(store, registry=registry)
    sid = await service.start(chat_pipeline())
    async with running(make_store()):
        assert (await service.wait(sid, timeout=20)).status == "waiting"
    assert await store.events(sid)
    _sql(store, "UPDATE stageflow_sessions SET snapshot = ? WHERE session_id = ?", '{"cut', sid)
    with pytest.raises(stageflow.store.StoredDataError, match=r"its stored snapshot cannot be"):
        await store.load(sid)
    for events in ("[oops", '[{"no_seq": 1}]', "[1]"):
        _sql(store, "UPDATE stageflow_events SET events = ? WHERE session_id = ?", events, sid)
        with pytest.raises(stageflow.store.StoredDataError, match=r"its stored history cannot"):
            await store.events(sid)


async def test_send_input_refuses_a_bad_type_and_the_cancel_requests_type(
    make_store: Callable[..., Any],
) -> None:
    # The store took any type: '' was dropped at delivery, None broke the
    # database's NOT NULL, and a stageflow.cancel input whose payload was not
    # an object crashed every turn of the session until it was poisoned.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    for bad in ("", None, stageflow.store.CANCEL_INPUT):
        with pytest.raises(stageflow.InputRejectedError) as refused:
            await service.send_input(sid, bad, "x")  # type: ignore[arg-type]
        assert refused.value.reason == "bad_type"
    assert (await service.get(sid)).inbox_head == 0  # nothing was stored
    # A reason that is no string was stored, and the worker then cancelled
    # with "cancelled" instead (Session.cancel refuses it).
    for reason in (None, 5):
        with pytest.raises(TypeError, match=r"cancel\(reason=\.\.\.\) was given"):
            await service.cancel(sid, reason)  # type: ignore[arg-type]
    assert (await service.get(sid)).inbox_head == 0
    record = await service.cancel(sid, "the user left")
    assert record.seq == 1


async def test_inputs_sent_after_a_cancel_request_are_recorded_as_discarded(
    make_store: Callable[..., Any],
) -> None:
    # The worker cancelled at the request's row, and the ended session refused
    # the inputs behind it: they were in no history. The input before the
    # request, sent to the saved wait, was in none either.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    async with running(make_store()):
        await service.wait(sid, timeout=20)
    await service.send_input(sid, "msg", {"n": 1})
    await service.cancel(sid, "user left")
    await service.send_input(sid, "msg", {"n": 2})
    await service.send_input(sid, "note", {"text": "late"})
    async with running(make_store()):
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "cancelled"
    history = (await service.store.load(sid, history=True))["history"]
    [discarded] = [e for e in history if e["type"] == "inputs_discarded"]
    assert discarded["payload"]["inputs"] == [
        {"input_type": "msg", "payload": {"n": 1}},
        {"input_type": "msg", "payload": {"n": 2}},
        {"input_type": "note", "payload": {"text": "late"}},
    ]
    assert history[-1]["type"] == "session_cancelled"
    assert history[-1]["payload"]["reason"] == "user left"


def _race_pipeline() -> stageflow.Pipeline:
    """``ask`` (go) races ``work`` (x); ``other`` waits for go beside them; then ``last``."""
    nodes: list[dict[str, Any]] = [
        {"id": "both", "type": "parallel", "children": ["race", "other"], "next": "last"},
        {"id": "race", "type": "parallel", "children": ["work", "ask"], "policy": "any"},
        {"id": "work", "type": "stage", "stage": "WaitStage", "config": {"input": "x"}},
        {"id": "ask", "type": "stage", "stage": "WaitStage", "config": {"input": "go"}},
        {"id": "other", "type": "stage", "stage": "WaitStage", "config": {"input": "go"}},
        {"id": "last", "type": "stage", "stage": "WaitStage", "config": {"input": "done"},
         "next": "end"},
        {"id": "end", "type": "terminal", "result": {"ok": True}},
    ]  # fmt: skip
    return stageflow.Pipeline.from_dict(
        {"api_version": "1.0", "entry": "both", "metadata": {"name": "race"}, "nodes": nodes},
        registry=registry,
    )


async def test_an_input_given_to_the_loser_of_a_race_in_a_turn_is_discarded_at_the_end(
    make_store: Callable[..., Any],
) -> None:
    # One turn delivers "x" and "go": "go" reaches two saved waits, and the
    # race is decided before one of them runs again. Its input was in no
    # position and no unseen_inputs of the saved snapshot: the session ended
    # with it in neither input_received nor inputs_discarded.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(_race_pipeline())
    async with running(make_store()):
        await service.wait(sid, timeout=20)
    await service.send_input(sid, "x", {"n": 1})
    await service.send_input(sid, "go", {"n": 2})
    async with running(make_store()):
        stored = await service.wait(sid, timeout=20)
        assert stored.waiting_for == ("done",)
        await service.send_input(sid, "done", {})
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "completed"
    history = (await service.store.load(sid, history=True))["history"]
    accounted = [e["payload"]["input_type"] for e in history if e["type"] == "input_received"] + [
        i["input_type"]
        for e in history
        if e["type"] == "inputs_discarded"
        for i in e["payload"]["inputs"]
    ]
    # "go" reached both of its waits, "x" one: each delivery once, in one event.
    assert sorted(accounted) == ["done", "go", "go", "x"]


async def test_an_input_stored_during_the_last_turn_is_counted_as_not_taken(
    make_store: Callable[..., Any], tmp_path: Path
) -> None:
    # The send was accepted (the session had not ended), the turn ended the
    # session, and nothing said that the input was never delivered.
    marks, gate = tmp_path / "marks.jsonl", tmp_path / "gate"
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(gate_pipeline(marks, gate))
    for n in (1, 2):
        await service.send_input(sid, "msg", {"n": n})
    async with running(make_store()):
        with anyio.fail_after(20):
            while not read_marks(marks):  # noqa: ASYNC110  (the stage writes it)
                await anyio.sleep(0.01)
        late = await service.send_input(sid, "msg", {"n": 3})
        gate.touch()
        done = await service.wait(sid, seq=late.seq, timeout=20)
    assert done.status == "completed"
    assert (done.inbox_done, done.inbox_head) == (late.seq - 1, late.seq)
    assert done.inputs_not_taken == 1
    assert done.to_dict()["inputs_not_taken"] == 1
    waiting = await service.get(await service.start(gate_pipeline(marks, gate)))
    await service.send_input(waiting.session_id, "msg", {"n": 1})
    assert (await service.get(waiting.session_id)).inputs_not_taken == 0


async def test_a_cancel_row_of_any_payload_cancels_the_session(
    make_store: Callable[..., Any],
) -> None:
    # An inbox row of the cancel type written by an older stageflow (or by
    # hand) with a payload that is not an object: the worker crashed on it.
    store = make_store()
    service = SessionService(store, registry=registry)
    sid = await service.start(chat_pipeline())
    await service.cancel(sid, "first")
    _sql(store, "UPDATE stageflow_inbox SET payload = ? WHERE session_id = ?", '"stop"', sid)
    async with running(make_store()):
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "cancelled"


async def test_follow_ends_on_a_store_that_keeps_events_in_the_snapshot(
    make_store: Callable[..., Any],
) -> None:
    # With events=False nothing reaches the events table: follow() yielded
    # nothing and never ended.
    service = SessionService(make_store(events=False), registry=registry)
    async with running(make_store(events=False)):
        sid = await service.start(chat_pipeline())
        await service.wait(sid, timeout=20)
        await service.send_input(sid, "msg", {"n": -1})
        done = await service.wait(sid, finished=True, timeout=20)
    assert done.status == "completed"
    with anyio.fail_after(20):
        events = [e async for e in service.follow(sid)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "session_completed"
    assert {e["session_id"] for e in events} == {sid}
    assert [e["seq"] for e in events if e["seq"] > 3] == [
        e["seq"] async for e in service.follow(sid, after=3)
    ]


@pytest.mark.parametrize(
    "setting",
    [
        {"lease": 0},
        {"lease": float("nan")},
        {"poll": -1},
        {"max_attempts": 0},
        {"concurrency": 0},
        {"concurrency": 2.5},
        {"fetch_cooldown": float("inf")},
        {"shutdown_grace": -1},
        {"lease": 10**400},  # past the largest float: it raised OverflowError
    ],
)
def test_worker_settings_out_of_range_are_refused(setting: dict[str, Any], tmp_path: Path) -> None:
    # lease=0 ran one turn five times and poisoned a healthy session;
    # max_attempts=0 poisoned every session at its first claim; concurrency=0
    # claimed nothing, silently.
    [name] = setting
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ValueError, match=f"Worker\\({name}="):
        Worker(store, registry=registry, **setting)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"queues": "default"}, r"Worker\(queues='default'\): pass a list .* its letters"),
        ({"queues": []}, r"Worker\(queues=\(\)\): pass at least one queue name"),
        ({"queues": ["a", ""]}, r"holds '': a queue is a non-empty string"),
        ({"queues": ["q\udcff"]}, r"queue='q\\udcff' cannot be stored: .* lone surrogate"),
        ({"worker_id": "w\x00"}, r"worker_id='w\\x00' cannot be stored: .* NUL"),
    ],
)
def test_worker_queues_and_ids_that_match_no_row_are_refused(
    setting: dict[str, Any], message: str, tmp_path: Path
) -> None:
    # A string was read as its letters and an empty list as no queue: the
    # worker claimed nothing, in silence. A name no store can hold failed
    # every claim, logged as an outage, forever.
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(StoreArgumentError, match=message):
        Worker(store, registry=registry, **setting)


async def test_a_worker_with_a_concurrency_past_what_a_limit_takes_claims(
    make_store: Callable[..., Any],
) -> None:
    # Each claim asked for LIMIT 2**63: SQLite could not bind it, PostgreSQL
    # refused it as no bigint; the worker logged a failed claim at every poll.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    async with running(make_store(), concurrency=2**63) as worker:
        stored = await service.wait(sid, timeout=20)
    assert stored.waiting_for == ("msg",)
    assert worker.statistics().saved == 1


async def test_the_service_says_what_is_wrong_with_a_name_a_queue_or_a_timeout(
    make_store: Callable[..., Any],
) -> None:
    # A bare KeyError for an unknown name, the database's NOT NULL for a
    # queue of None, anyio's "deadline must not be NaN" for a wait.
    service = SessionService(make_store(), registry=registry, pipelines=[chat_pipeline()])
    with pytest.raises(LookupError, match=r"no pipeline named 'nope'.*it has: 'chat'"):
        await service.start("nope")
    with pytest.raises(ValueError, match="queue=None"):
        await service.start("chat", queue=None)  # type: ignore[arg-type]
    sid = await service.start("chat")
    for timeout in (float("nan"), 0, -1, "5"):
        # 0 or less timed out before the store was read, saying the store
        # did not answer; a string was anyio's TypeError.
        with pytest.raises(ValueError, match=r"wait\(timeout=.*\): pass a number of seconds"):
            await service.wait(sid, timeout=timeout)  # type: ignore[arg-type]
    # A float subclass (numpy's float64) is a number of seconds: it was
    # refused as "wait(timeout=5.0): pass a number of seconds above 0".
    with pytest.raises(TimeoutError):
        await service.wait(sid, timeout=_Seconds(0.05))


class _Seconds(float):
    pass


async def test_list_refuses_a_status_no_row_has_and_a_limit_that_is_no_count(
    make_store: Callable[..., Any],
) -> None:
    # A status typo listed nothing; limit=-1 listed every row on SQLite (no
    # limit there) and was a psycopg error on PostgreSQL, as was 10**30; a
    # string was sqlite3's "datatype mismatch".
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    with pytest.raises(ValueError, match=r"status='complete'.*use one of .*completed"):
        await service.list(status="complete")
    for limit in (0, -1, "5", 1.5, True):
        with pytest.raises(ValueError, match=r"list\(limit=.*\): pass a whole number"):
            await service.list(limit=limit)  # type: ignore[arg-type]
    assert [s.session_id for s in await service.list(limit=10**30)] == [sid]
    assert await service.list(status="poisoned") == []


async def test_a_wait_or_follow_from_a_seq_that_is_no_whole_number_is_refused(
    make_store: Callable[..., Any],
) -> None:
    # A list raised TypeError: unhashable type; a string, a comparison error
    # after the first read.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline())
    for seq in (-1, "1", [1], 1.0, True):
        with pytest.raises(ValueError, match=r"wait\(seq=.*\): pass the seq of the InputRecord"):
            await service.wait(sid, seq=seq, timeout=30)  # type: ignore[arg-type]
    for after in (-1, "1", None):
        # A string was psycopg's InvalidTextRepresentation, or a TypeError on
        # SQLite; -1 followed (this session, which no worker runs: forever).
        with (
            anyio.fail_after(10),
            pytest.raises(ValueError, match=r"follow\(after=.*\): pass the seq of an event"),
        ):
            await anext(aiter(service.follow(sid, after=after)))  # type: ignore[arg-type]


async def test_a_wait_that_times_out_says_where_the_session_stands(
    make_store: Callable[..., Any],
) -> None:
    # It raised a TimeoutError without a message: nothing told a handler that
    # no worker ran, or that the session waited for an input.
    service = SessionService(make_store(), registry=registry)
    sid = await service.start(chat_pipeline(), queue="later")
    with pytest.raises(TimeoutError, match=r"no worker took it: .* serves queue 'later'"):
        await service.wait(sid, timeout=0.05)
    sid = await service.start(chat_pipeline())
    async with running(make_store()):
        await service.wait(sid, timeout=20)
        with pytest.raises(TimeoutError, match=r"did not get to finish .* for input msg: send it"):
            await service.wait(sid, finished=True, timeout=0.05)


class Raises(stageflow.BaseStage):
    """Raise what ``config.raise`` names: SystemExit, GeneratorExit or asyncio's CancelledError."""

    spec = stageflow.StageSpec(description="raise a BaseException")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if ctx.config["raise"] == "SystemExit":
            raise SystemExit(3)
        if ctx.config["raise"] == "GeneratorExit":
            raise GeneratorExit("a stage's own")
        raise asyncio.CancelledError()


@pytest.mark.parametrize("in_a_branch", [False, True], ids=["alone", "in a branch"])
@pytest.mark.parametrize("raised", ["SystemExit", "GeneratorExit", "CancelledError"])
async def test_a_stage_that_raises_a_base_exception_fails_its_turn_not_the_worker(
    make_store: Callable[..., Any], raised: str, in_a_branch: bool
) -> None:
    # It went up into the worker's task group: on trio the worker died, on
    # asyncio a stray CancelledError ended run() as if it had been shut down;
    # no other session ran again. In a parallel node's branch on trio the
    # SystemExit came in an exception group, and the stored error said
    # "BaseExceptionGroup: Exceptions from Trio nursery (1 sub-exception)".
    # In a branch on asyncio the SystemExit stopped the worker's event loop.
    # A GeneratorExit (alone, or in a branch since run() raises it alone there
    # too) was taken for the turn's coroutine being closed: the worker died.
    local = stageflow.StageRegistry()
    local.register("Collect")(registry.get("Collect").target)
    local.register("Raises")(Raises)
    boom = {"id": "boom", "type": "stage", "stage": "Raises", "config": {"raise": raised}}
    nodes: list[dict[str, Any]] = [{**boom, "next": "end"}]
    if in_a_branch:
        nodes = [
            {"id": "fan", "type": "parallel", "children": ["boom", "idle"], "next": "end"},
            boom,
            {"id": "idle", "type": "stage", "stage": "WaitStage", "config": {"input": "never"}},
        ]
    broken = stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": nodes[0]["id"],
            "metadata": {"name": "broken"},
            "nodes": [*nodes, {"id": "end", "type": "terminal"}],
        },
        registry=local,
    )
    service = SessionService(make_store(), registry=local)
    async with running(make_store(), registry=local, max_attempts=2) as worker:
        bad = await service.start(broken)
        poisoned = await service.wait(bad, finished=True, timeout=20)
        healthy = await service.start(chat_pipeline())
        assert (await service.wait(healthy, timeout=20)).status == "waiting"
        assert not worker.stopping
    if raised == "CancelledError":
        # Nothing cancelled the stage: its own CancelledError is its node's
        # failure (a StageError), and the session ends failed in its turn.
        assert poisoned.status == "failed"
        return
    assert poisoned.status == "poisoned"
    assert poisoned.error is not None
    assert poisoned.error.startswith(raised)


class _Watched:
    """A local whose ``repr()`` is counted: a log renderer that walks frame locals calls it."""

    shown = 0

    def __repr__(self) -> str:
        type(self).shown += 1
        return "<watched>"


class RaisesHolding(stageflow.BaseStage):
    """Raise SystemExit with a :class:`_Watched` local in the stage's frame."""

    spec = stageflow.StageSpec(description="raise SystemExit, holding a local")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        watched = _Watched()
        raise SystemExit(f"stage {ctx.node_id} held {id(watched)}")


async def test_an_unconfigured_application_gets_the_worker_s_lines_from_logging(
    make_store: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The worker, the PostgreSQL store and the inspector took structlog's
    # loggers directly: unconfigured, structlog's default renderer printed
    # their lines on standard output, tracebacks drawn by rich with every
    # frame's locals walked (trio's runner among them, whose queue the
    # store's threads append to: "deque mutated during iteration" killed a
    # worker in CI). They follow the library's rule now: the logging module.
    assert not structlog.is_configured()  # tests/conftest.py keeps it so
    local = stageflow.StageRegistry()
    local.register("RaisesHolding")(RaisesHolding)
    broken = _broken(local, "RaisesHolding")
    service = SessionService(make_store(), registry=local)
    _Watched.shown = 0
    with caplog.at_level(logging.WARNING, logger="stageflow.worker"):
        async with running(make_store(), registry=local, max_attempts=1):
            bad = await service.start(broken)
            assert (await service.wait(bad, finished=True, timeout=20)).status == "poisoned"
    [failed] = [r for r in caplog.records if "worker.turn_failed" in r.getMessage()]
    assert (failed.name, failed.levelno) == ("stageflow.worker", logging.WARNING)
    assert failed.exc_info is not None
    assert isinstance(failed.exc_info[1], SystemExit)
    [poisoned] = [r for r in caplog.records if "worker.session_poisoned" in r.getMessage()]
    assert poisoned.levelno == logging.ERROR
    assert _Watched.shown == 0  # no frame's locals were walked
    assert "worker." not in capsys.readouterr().out


async def test_a_worker_line_that_cannot_be_written_fails_no_worker(
    make_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A worker writes its lines as it handles a failure (a turn's, a claim's,
    # a heartbeat's): a log set-up of the application's that raised there
    # (structlog's console renderer drawing frame locals with rich, which a
    # store thread changed) ended the worker. The line is lost, not the worker.
    structlog.configure(processors=[failing_on("worker."), structlog.processors.KeyValueRenderer()])
    local = stageflow.StageRegistry()
    local.register("RaisesHolding")(RaisesHolding)
    broken = _broken(local, "RaisesHolding")
    service = SessionService(make_store(), registry=local)
    with caplog.at_level(logging.ERROR, logger="stageflow.worker"):
        async with running(make_store(), registry=local, max_attempts=1) as worker:
            bad = await service.start(broken)
            assert (await service.wait(bad, finished=True, timeout=20)).status == "poisoned"
            good = await service.start(broken)
            assert (await service.wait(good, finished=True, timeout=20)).status == "poisoned"
    assert worker.statistics().released == 2  # the worker went on after the first
    lost = [r.getMessage() for r in caplog.records if r.name == "stageflow.worker"]
    assert lost.count("worker.turn_failed: the warning line could not be written") == 2
    assert lost.count("worker.session_poisoned: the error line could not be written") == 2


async def test_a_turn_runs_outside_the_span_current_where_the_worker_was_started(
    make_store: Callable[..., Any],
) -> None:
    # An application that runs its worker inside a span of its own (kept open
    # as long as the process lives) made that span the parent of every turn's
    # run: all sessions in one trace, under a span not exported until the
    # worker stopped, and no turn a new trace linked to the one before.
    local = stageflow.StageRegistry()
    seen: list[trace.Span] = []

    @local.register("Peek")
    async def peek(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        seen.append(trace.get_current_span())
        return {}

    pipeline = stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "wait",
            "nodes": [
                {
                    "id": "wait",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": "msg"},
                    "next": "peek",
                },
                {"id": "peek", "type": "stage", "stage": "Peek", "next": "end"},
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=local,
    )
    application = trace.NonRecordingSpan(
        trace.SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    service = SessionService(make_store(), registry=local)
    with trace.use_span(application):
        async with running(make_store(), registry=local):
            sid = await service.start(pipeline)
            assert (await service.wait(sid, timeout=20)).status == "waiting"
            await service.send_input(sid, "msg", {})
            assert (await service.wait(sid, finished=True, timeout=20)).status == "completed"
    assert [span.get_span_context().is_valid for span in seen] == [False]


@pytest.mark.parametrize("role", [SessionService, Worker])
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"store": "sqlite:///s.db"},
            r"\(store=\.\.\.\) was given a str, which is no session store",
        ),
        ({"registry": {"Fetch": None}}, r"\(registry=\.\.\.\) was given a dict; pass a"),
        ({"pipelines": "chat"}, r"\(pipelines=\.\.\.\) was given a str; pass a list"),
        ({"pipelines": [{"api_version": "1.0"}]}, r"\(pipelines=\.\.\.\)\[0\] is a dict"),
    ],
)
def test_a_service_or_worker_given_what_it_cannot_use_says_so_when_made(
    role: type[Any], arguments: dict[str, Any], message: str, tmp_path: Path
) -> None:
    # Each was taken, and failed at its first use with an AttributeError
    # naming no argument (a URL as the store, a document as a pipeline).
    given = {"store": open_store(f"sqlite:///{tmp_path / 's.db'}"), **arguments}
    with pytest.raises(TypeError, match=f"^{role.__name__}{message}"):
        role(given.pop("store"), **given)
