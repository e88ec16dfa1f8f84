"""The store protocol on SQLite and PostgreSQL: rows, leases, fences, inboxes, errors."""

from __future__ import annotations

import datetime
import json
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from store_support import chat_pipeline, registry

import stageflow
import stageflow.store
import stageflow.store._shared
from stageflow.store import (
    IdempotencyKeyReusedError,
    Lease,
    SessionFinishedError,
    SessionNotFoundError,
    SessionStore,
    StoreArgumentError,
    StoreSchemaError,
    StoreUnavailableError,
    open_store,
)

pytestmark = pytest.mark.anyio

UTC = datetime.UTC


def snapshot(session_id: str | None = None) -> dict[str, Any]:
    return stageflow.Session(chat_pipeline(), registry=registry, session_id=session_id).to_dict()


def saved(lease: Lease, status: str = "waiting", seqs: tuple[int, ...] = ()) -> dict[str, Any]:
    """A snapshot to save for ``lease``: its own, with a new status and history events."""
    snap = dict(lease.snapshot)
    snap["status"] = status
    snap["history"] = [
        *snap.get("history", []),
        *({"seq": s, "type": "note", "payload": {"s": s}} for s in seqs),
    ]
    return snap


async def claim_one(store: SessionStore, worker: str = "w1", lease: float = 30.0) -> Lease:
    leases = await store.claim(worker, limit=10, lease=lease)
    assert len(leases) == 1, leases
    return leases[0]


async def test_round_trip_create_send_claim_complete(store: SessionStore) -> None:
    created = await store.create(snapshot("s1"))
    assert (created.session_id, created.duplicate) == ("s1", False)
    row = await store.get("s1")
    assert (row.status, row.pipeline, row.version, row.inbox_head) == ("pending", "chat", 0, 0)
    record = await store.send_input("s1", "msg", {"n": 1})
    assert (record.seq, record.duplicate) == (1, False)

    lease = await claim_one(store)
    assert [(i.seq, i.type, i.payload) for i in lease.inputs] == [(1, "msg", {"n": 1})]
    assert (lease.token, lease.attempts, lease.inbox_head) == (1, 1, 1)
    assert lease.snapshot["session_id"] == "s1"
    assert lease.db_now.tzinfo is not None

    wake = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    ok = await store.complete(
        lease, saved(lease, seqs=(1, 2)), waiting_for=["msg"], wake_at=wake,
        events=saved(lease, seqs=(1, 2))["history"],
    )  # fmt: skip
    assert ok
    row = await store.get("s1")
    assert (row.status, row.version, row.inbox_done, row.events_done) == ("waiting", 1, 1, 2)
    assert row.waiting_for == ("msg",)
    assert row.wake_at == wake
    assert row.runnable_at == wake  # the timer is the next wake-up
    assert row.lease_owner is None
    assert [e["seq"] for e in await store.events("s1")] == [1, 2]
    assert [e["seq"] for e in await store.events("s1", after=1)] == [2]
    assert (await store.load("s1"))["status"] == "waiting"
    assert await store.claim("w1", limit=10, lease=30) == []  # not due before its timer


async def test_create_with_a_key_or_a_known_id_creates_once(store: SessionStore) -> None:
    first = await store.create(snapshot("a"), idempotency_key="k")
    again = await store.create(snapshot("b"), idempotency_key="k")
    same_id = await store.create(snapshot("a"))
    assert (first.session_id, first.duplicate) == ("a", False)
    assert (again.session_id, again.duplicate) == ("a", True)
    assert (same_id.session_id, same_id.duplicate) == ("a", True)
    assert [s.session_id for s in await store.list_sessions()] == ["a"]


async def test_send_input_idempotency_holds_after_the_session_finished(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    first = await store.send_input("s", "msg", {"n": 1}, idempotency_key="k1")
    retry = await store.send_input("s", "msg", {"n": 1}, idempotency_key="k1")
    assert (first.seq, first.duplicate, retry.seq, retry.duplicate) == (1, False, 1, True)
    lease = await claim_one(store)
    assert [i.payload for i in lease.inputs] == [{"n": 1}]  # one row per key
    assert await store.complete(
        lease, saved(lease, "completed"), waiting_for=(), wake_at=None, events=()
    )
    late = await store.send_input("s", "msg", {"n": 1}, idempotency_key="k1")
    assert (late.seq, late.duplicate) == (1, True)
    with pytest.raises(SessionFinishedError, match="is completed") as info:
        await store.send_input("s", "msg", {"n": 2}, idempotency_key="k2")
    assert isinstance(info.value, stageflow.StageflowError)
    assert (await store.get("s")).runnable_at is None


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        ({"x": float("nan")}, "payload.x is a number"),
        ({"x": object()}, "payload.x is a Python object"),
        ({"text": "\ud800"}, "lone surrogate"),
    ],
)
async def test_a_payload_that_is_not_json_is_refused_before_it_is_stored(
    store: SessionStore, payload: Any, found: str
) -> None:
    # Stored, it was refused only by the worker that delivered it, when the
    # sender had its record already (NaN), or raised an untyped error.
    await store.create(snapshot("s"))
    with pytest.raises(stageflow.InputRejectedError, match=found) as info:
        await store.send_input("s", "msg", payload, idempotency_key="k")
    assert (info.value.reason, info.value.input_type) == ("not_json", "msg")
    assert (await store.get("s")).inbox_head == 0
    record = await store.send_input("s", "msg", {"text": "fixed"}, idempotency_key="k")
    assert (record.seq, record.duplicate) == (1, False)


def limited(session_id: str, max_input_bytes: int) -> dict[str, Any]:
    """A snapshot of a session whose inputs may be ``max_input_bytes`` at most."""
    document = {**chat_pipeline().to_dict(), "limits": {"max_input_bytes": max_input_bytes}}
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    return stageflow.Session(pipeline, registry=registry, session_id=session_id).to_dict()


@pytest.mark.parametrize("key", [None, "k"])
async def test_an_input_over_the_sessions_size_limit_is_refused_before_it_is_stored(
    store: SessionStore, key: str | None
) -> None:
    # It was stored, the sender got its record, and only the worker's delivery
    # refused it (an input_rejected event the sender never sees; past the
    # rejection budget, not even that).
    await store.create(limited("s", 100))
    big = {"n": 1, "pad": "x" * 200}
    with pytest.raises(stageflow.InputRejectedError, match=r"max_input_bytes=100") as info:
        await store.send_input("s", "msg", big, idempotency_key=key)
    assert (info.value.reason, info.value.input_type) == ("too_large", "msg")
    assert "nothing was stored" in str(info.value)
    assert (await store.get("s")).inbox_head == 0
    record = await store.send_input("s", "msg", {"n": 1}, idempotency_key=key)
    assert (record.seq, record.duplicate) == (1, False)
    assert (await store.request_cancel("s", "x" * 200)).seq == 2  # no input of a stage
    # A save keeps the limit of the snapshot it stores.
    lease = await claim_one(store)
    assert await store.complete(
        lease,
        {**saved(lease), "limits": {"max_input_bytes": 1000}},
        waiting_for=("msg",),
        wake_at=None,
        events=(),
    )
    assert (await store.send_input("s", "msg", big)).seq == 3


async def test_the_services_refusals_are_counted_without_the_senders_type(
    store: SessionStore,
) -> None:
    # The service refused not_json, too_large and bad_type inputs before they
    # were stored, and stageflow.inputs.rejected never counted them: a
    # dashboard of refused inputs saw only a live session's own refusals.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    service = stageflow.store.SessionService(store, registry=registry, meter_provider=provider)
    await store.create(limited("s", 100))
    for type, payload in [("msg", {"pad": "x" * 200}), ("made-up", {"x": float("nan")})]:
        with pytest.raises(stageflow.InputRejectedError):
            await service.send_input("s", type, payload)
    with pytest.raises(stageflow.InputRejectedError):
        await service.send_input("s", 42, {})  # type: ignore[arg-type]
    assert (await service.send_input("s", "msg", {"n": 1})).seq == 1
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [
        m
        for r in data.resource_metrics
        for scope in r.scope_metrics
        for m in scope.metrics
        if m.name == "stageflow.inputs.rejected"
    ]
    counted = {
        (p.attributes["stageflow.input.type"], p.attributes["stageflow.input.reject_reason"]): (
            p.value
        )
        for p in metric.data.data_points
    }
    assert counted == {
        ("(unchecked)", "too_large"): 1,
        ("(unchecked)", "not_json"): 1,
        ("(unchecked)", "bad_type"): 1,
    }
    provider.shutdown()


def test_a_service_refuses_a_meter_provider_that_is_no_provider() -> None:
    store = open_store("sqlite:///:memory:")
    with pytest.raises(TypeError, match=r"meter_provider=.*no get_meter\(\)"):
        stageflow.store.SessionService(store, meter_provider="otel")  # type: ignore[arg-type]
    anyio.run(store.aclose)


async def test_tables_of_schema_version_4_get_the_size_limit_column(
    make_store: Any, backend: str
) -> None:
    store = make_store()
    await store.create(limited("old", 100))
    import anyio

    await anyio.to_thread.run_sync(_back_to_version_4, store, backend)
    upgraded = make_store()
    await upgraded.migrate()
    big = {"n": 1, "pad": "x" * 200}
    assert (await upgraded.send_input("old", "msg", big)).seq == 1  # unknown: the worker checks
    await upgraded.create(limited("new", 100))
    with pytest.raises(stageflow.InputRejectedError, match="max_input_bytes=100"):
        await upgraded.send_input("new", "msg", big)


def _back_to_version_4(store: Any, backend: str) -> None:
    """The tables as stageflow wrote them before the size limit column."""
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store.path)
        conn.execute("ALTER TABLE stageflow_sessions DROP COLUMN max_input_bytes")
        conn.execute("UPDATE stageflow_schema SET version = 4")
        conn.commit()
        conn.close()
        return
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        pg.execute("ALTER TABLE stageflow_sessions DROP COLUMN max_input_bytes")
        pg.execute("UPDATE stageflow_schema SET version = 4")


UNSTORABLE = [
    pytest.param("a\x00b", "NUL character", id="nul"),
    pytest.param("a\udcffb", "lone surrogate", id="surrogate"),
    pytest.param("k" * 1025, "1025 bytes long", id="long"),
    pytest.param(7, "an integer, not a string", id="int"),
]


@pytest.mark.parametrize(("name", "problem"), UNSTORABLE)
async def test_ids_keys_queues_and_types_a_store_cannot_hold_get_typed_errors(
    store: SessionStore, name: Any, problem: str
) -> None:
    # They raised the driver's errors (UnicodeEncodeError; on PostgreSQL
    # DataError, UndefinedFunction, ProgramLimitExceeded), or were stored on
    # SQLite only (an application tried there then failed on PostgreSQL).
    for call, what in [
        (store.create(snapshot("s"), idempotency_key=name), "idempotency_key"),
        (store.create(snapshot("s"), queue=name), "queue"),
    ]:
        with pytest.raises(StoreArgumentError, match=f"{what}=.* cannot be stored: .*{problem}"):
            await call
    assert await store.list_sessions() == []
    if isinstance(name, str):
        session = stageflow.Session(chat_pipeline(), registry=registry, session_id=name)
        with pytest.raises(StoreArgumentError, match=f"session_id=.* be stored: .*{problem}"):
            await store.create(session.to_dict())
    await store.create(snapshot("s"))
    with pytest.raises(StoreArgumentError, match=f"idempotency_key=.* be stored: .*{problem}"):
        await store.send_input("s", "msg", {"n": 1}, idempotency_key=name)
    if isinstance(name, str) and len(name) < 100:  # a type is not indexed: any length
        with pytest.raises(stageflow.InputRejectedError, match=problem) as info:
            await store.send_input("s", name, {"n": 1})
        assert info.value.reason == "bad_type"
    assert (await store.get("s")).inbox_head == 0
    if len(str(name)) < 100:  # an unknown id of any length is not found
        for lookup in [
            store.get(name),
            store.load(name),
            store.events(name),
            store.send_input(name, "msg", {}),
            store.request_cancel(name, "why"),
        ]:
            with pytest.raises(SessionNotFoundError, match=f"no stored session has id .*{problem}"):
                await lookup


async def test_a_list_filter_no_row_can_have_lists_nothing(store: SessionStore) -> None:
    # A NUL (from a URL of the inspector) was psycopg's DataError, a lone
    # surrogate (a command-line byte that is not UTF-8) a UnicodeEncodeError.
    await store.create(snapshot("s"))
    for text in ("a\x00b", "a\udcffb"):
        assert await store.list_sessions(pipeline=text) == []
        assert await store.list_sessions(waiting_for=text) == []
        assert await store.list_sessions(status=text) == []
    assert [s.session_id for s in await store.list_sessions(pipeline="chat")] == ["s"]


# Each came back changed from PostgreSQL's jsonb, or was refused by it (NUL).
ODD_PAYLOADS = [
    {"text": "a\x00b", "a\x00": 1},
    {"b": 1, "a": 2, "aa": 3},
    {"neg_zero": -0.0, "one": 1.0, "int": 1},
    {"big": 1e16, "huge": 1.5e308, "tiny": 5e-324},
    {"wide": 12345678901234567890123, "pi": 3.141592653589793},
    "a\x00",
]


async def test_a_payload_is_delivered_exactly_as_it_was_sent(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    for n, payload in enumerate(ODD_PAYLOADS):
        await store.send_input("s", "msg", payload, idempotency_key=f"k{n}" if n % 2 else None)
    request = await store.request_cancel("s", "a\x00b")
    lease = await claim_one(store)
    got = [i.payload for i in lease.inputs]
    # json.dumps tells -0.0 from 0.0, 1e16 from 10**16, and key order.
    assert [json.dumps(p) for p in got] == [json.dumps(p) for p in ODD_PAYLOADS] + [
        json.dumps({"reason": "a\x00b"})
    ]
    assert request.seq == len(ODD_PAYLOADS) + 1


async def test_unknown_sessions_raise_a_typed_error(store: SessionStore) -> None:
    with pytest.raises(SessionNotFoundError, match="no stored session has id 'nope'"):
        await store.send_input("nope", "msg", {})
    with pytest.raises(SessionNotFoundError):
        await store.get("nope")
    with pytest.raises(SessionNotFoundError):
        await store.load("nope")
    with pytest.raises(LookupError):
        await store.request_cancel("nope", "why")


async def test_claims_skip_leased_and_not_due_rows(store: SessionStore) -> None:
    await store.create(snapshot("a"))
    await store.create(snapshot("b"))
    first = await store.claim("w1", limit=1, lease=30)
    second = await store.claim("w2", limit=5, lease=30)
    assert len(first) == len(second) == 1
    assert {first[0].session_id, second[0].session_id} == {"a", "b"}
    assert await store.claim("w3", limit=5, lease=30) == []  # both leased
    # An input to a leased session does not make it claimable by others.
    await store.send_input("a", "msg", {"n": 1})
    assert await store.claim("w3", limit=5, lease=30) == []
    # Not due: a session waiting on a future timer.
    lease = first[0] if first[0].session_id == "b" else second[0]
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    await store.complete(lease, saved(lease), waiting_for=(), wake_at=later, events=())
    assert await store.claim("w3", limit=5, lease=30) == []
    due = await store.next_due()
    assert due is not None
    assert due.replace(microsecond=0) <= later.replace(microsecond=0) + datetime.timedelta(hours=1)


async def test_an_expired_lease_is_claimed_again_with_a_new_token(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    old = await claim_one(store, "w1", lease=0.0)
    new = await claim_one(store, "w2", lease=30)
    assert (old.token, new.token, new.attempts) == (1, 2, 2)


@pytest.mark.parametrize("lease", [1e12, 1e300])
async def test_a_lease_past_year_9999_leaves_the_row_readable(
    store: SessionStore, lease: float
) -> None:
    # A lease is "never expires" from some length on. PostgreSQL wrote its
    # expiry past year 9999, which psycopg cannot read (get, list and next_due
    # failed), or refused the interval (every claim failed).
    await store.create(snapshot("s"))
    held = await claim_one(store, "w1", lease=lease)
    assert await store.heartbeat("w1", [held], lease) == {"s"}
    stored = await store.get("s")
    assert stored.lease_owner == "w1"
    assert stored.runnable_at is not None
    assert stored.runnable_at.year >= 5000
    assert [s.session_id for s in await store.list_sessions()] == ["s"]
    assert await store.next_due() == stored.runnable_at


async def test_a_stale_tokens_save_changes_nothing(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    await store.send_input("s", "msg", {"n": 1})
    stale = await claim_one(store, "w1", lease=0.0)
    fresh = await claim_one(store, "w2")
    before = await store.get("s")
    ok = await store.complete(
        stale, saved(stale, "completed", (1,)), waiting_for=(), wake_at=None,
        events=[{"seq": 1, "type": "note"}],
    )  # fmt: skip
    assert ok is False
    after = await store.get("s")
    assert after == before
    assert await store.events("s") == []
    assert (await store.load("s"))["status"] == "pending"
    # The holder's save goes through; the stale heartbeat is not "held".
    assert await store.heartbeat("w1", [stale], 30) == set()
    assert await store.heartbeat("w2", [fresh], 30) == {"s"}
    assert await store.complete(fresh, saved(fresh), waiting_for=(), wake_at=None, events=())
    # A save after a release is fenced too.
    assert not await store.complete(fresh, saved(fresh), waiting_for=(), wake_at=None, events=())


async def test_heartbeat_extends_only_the_owners_current_token(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    lease = await claim_one(store, "w1", lease=0.0)
    assert await store.heartbeat("other", [lease], 30) == set()
    assert await store.heartbeat("w1", [lease], 30) == {"s"}
    assert await store.claim("w2", limit=5, lease=30) == []  # extended: not due again


async def test_release_backs_off_then_poisons(store: SessionStore) -> None:
    await store.create(snapshot("s"))
    lease = await claim_one(store, "w1")
    assert await store.release(lease, error="boom", max_attempts=2) is True
    row = await store.get("s")
    assert (row.status, row.error, row.lease_owner, row.attempts) == ("pending", "boom", None, 1)
    assert row.runnable_at is not None
    backoff = (row.runnable_at - row.updated_at).total_seconds()
    assert 1.5 < backoff < 2.5  # min(2 ** attempts, 60) s
    assert await store.claim("w1", limit=5, lease=30) == []  # backing off
    # A second release of the same lease is fenced: it was given back already,
    # and says so (the worker then writes no "poisoned" line).
    assert await store.release(lease, error="again", max_attempts=1) is False
    assert (await store.get("s")).status == "pending"

    await store.create(snapshot("p"))
    doomed = await claim_one(store, "w1")
    await store.release(doomed, error="boom", max_attempts=1)
    row = await store.get("p")
    assert (row.status, row.runnable_at, row.error) == ("poisoned", None, "boom")
    assert row.finished
    with pytest.raises(SessionFinishedError, match="poisoned"):
        await store.send_input("p", "msg", {})
    assert [s.session_id for s in await store.list_sessions(status="poisoned")] == ["p"]


async def test_claims_follow_the_queue_filter(store: SessionStore) -> None:
    await store.create(snapshot("a"), queue="fast")
    await store.create(snapshot("b"))
    assert await store.claim("w", limit=5, lease=30, queues=["slow"]) == []
    fast = await store.claim("w", limit=5, lease=30, queues=["fast"])
    assert [x.session_id for x in fast] == ["a"]
    assert (await store.get("a")).queue == "fast"


async def test_list_filters(store: SessionStore) -> None:
    await store.create(snapshot("a"))
    await store.create(snapshot("b"))
    lease = next(x for x in await store.claim("w", limit=5, lease=30) if x.session_id == "a")
    await store.complete(lease, saved(lease), waiting_for=["msg"], wake_at=None, events=())
    assert [s.session_id for s in await store.list_sessions(waiting_for="msg")] == ["a"]
    assert [s.session_id for s in await store.list_sessions(status="waiting")] == ["a"]
    assert [s.session_id for s in await store.list_sessions(pipeline="chat")] == ["a", "b"]
    assert await store.list_sessions(pipeline="other") == []
    assert await store.list_sessions(due=True) == []  # b is leased, a waits for input
    assert (await store.get("a")).to_dict()["waiting_for"] == ["msg"]


async def test_purge_deletes_old_finished_sessions_and_consumed_inputs(store: SessionStore) -> None:
    for sid in ("done", "live"):
        await store.create(snapshot(sid))
        await store.send_input(sid, "msg", {"n": 1})
    for lease in await store.claim("w", limit=5, lease=30):
        status = "completed" if lease.session_id == "done" else "waiting"
        await store.complete(lease, saved(lease, status, (1,)), waiting_for=(), wake_at=None,
                             events=[{"seq": 1, "type": "x"}])  # fmt: skip
    await store.send_input("live", "msg", {"n": 2})  # not consumed yet: kept
    future = datetime.datetime.now(UTC) + datetime.timedelta(days=1)
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=1)
    assert await store.purge(finished_before=past, inputs_before=past) == 0
    assert await store.purge(finished_before=future, inputs_before=future) == 2
    assert [s.session_id for s in await store.list_sessions()] == ["live"]
    assert await store.events("done") == []  # went with its session (no foreign key on PG)
    assert [i.seq for i in (await store.claim("w", limit=5, lease=30))[0].inputs] == [2]


async def test_one_purge_deletes_every_batch(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """purge() goes on batch after batch (SCALEOUT.md: "in batches of 10k").

    It deleted one batch of finished sessions and stopped, so one call (and
    `stageflow sessions purge`) left the rest; consumed inputs had no batch.
    """
    monkeypatch.setattr(stageflow.store._shared, "PURGE_BATCH", 3)
    for n in range(7):
        await store.create(snapshot(f"done{n}"))
    await store.create(snapshot("live"))
    for seq in range(8):
        await store.send_input("live", "msg", {"n": seq})
    for lease in await store.claim("w", limit=10, lease=30):
        done = lease.session_id != "live"
        seqs = tuple(i.seq for i in lease.inputs)
        await store.complete(lease, saved(lease, "completed" if done else "waiting", seqs),
                             waiting_for=(), wake_at=None, events=())  # fmt: skip
    await store.send_input("live", "msg", {"n": 99})  # not consumed yet: kept
    future = datetime.datetime.now(UTC) + datetime.timedelta(days=1)
    # 7 sessions and 8 consumed inputs, in batches of 3 (the last of each smaller).
    assert await store.purge(finished_before=future, inputs_before=future) == 15
    assert [s.session_id for s in await store.list_sessions()] == ["live"]
    [lease] = await store.claim("w", limit=10, lease=30)
    assert [i.payload for i in lease.inputs] == [{"n": 99}]


async def test_a_schema_from_a_newer_stageflow_is_refused(make_store: Any) -> None:
    store = make_store()
    await store.migrate()
    await store.migrate()  # idempotent
    # A newer stageflow wrote version 99.
    await _bump_schema(store, 99)
    with pytest.raises(StoreSchemaError, match=r"schema version 99.*upgrade stageflow"):
        await make_store().migrate()


async def test_a_store_opened_without_create_only_opens_one_that_exists(make_store: Any) -> None:
    # create=False (what `stageflow sessions` and `stageflow ui` open): a
    # database without the tables is refused, and nothing is created in it.
    with pytest.raises(StoreUnavailableError, match=r"no (SQLite|stageflow) store"):
        await make_store(create=False).list_sessions()
    with pytest.raises(StoreUnavailableError, match=r"no (SQLite|stageflow) store"):
        await make_store(create=False).migrate()
    creator = make_store()
    assert [r.session_id for r in await creator.list_sessions()] == []  # the tables, now
    await creator.create(snapshot("s1"))
    listed = await make_store(create=False).list_sessions()
    assert [r.session_id for r in listed] == ["s1"]


@pytest.mark.parametrize("create", [True, False])
async def test_a_sqlite_file_that_cannot_be_a_store_is_refused_and_closed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, create: bool
) -> None:
    # The connection opened to find out was left to the collector: Python
    # 3.13 reports it as a ResourceWarning (an error in this suite).
    import sqlite3

    opened: list[sqlite3.Connection] = []
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    text = tmp_path / "notes.db"
    text.write_text("not a database, " * 100)
    empty = tmp_path / "empty.db"
    real(str(empty)).close()  # an SQLite database without stageflow's tables
    for path in (text, empty) if not create else (text,):
        with pytest.raises(StoreUnavailableError):
            await open_store(f"sqlite:///{path}", create=create).list_sessions()
    assert opened
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


async def _bump_schema(store: Any, version: int) -> None:
    import anyio

    if hasattr(store, "path"):
        import sqlite3

        def run() -> None:
            conn = sqlite3.connect(store.path)
            conn.execute("UPDATE stageflow_schema SET version = ?", (version,))
            conn.commit()
            conn.close()

        await anyio.to_thread.run_sync(run)
    else:
        import psycopg

        def run_pg() -> None:
            with psycopg.connect(store.url, autocommit=True) as conn:
                conn.execute(f"UPDATE {store.schema}.stageflow_schema SET version = %s", (version,))

        await anyio.to_thread.run_sync(run_pg)


async def test_unreachable_or_malformed_store_urls_raise_with_the_fix(tmp_path: Any) -> None:
    # A URL that is no string (a pathlib.Path) was an AttributeError: no startswith.
    with pytest.raises(TypeError, match=r"open_store\(url=\.\.\.\) was given a PosixPath"):
        open_store(tmp_path / "s.db")
    with pytest.raises(StoreUnavailableError, match="unknown scheme"):
        open_store("mysql://x")
    with pytest.raises(StoreUnavailableError, match="has no file"):
        open_store("sqlite://")
    missing = open_store(f"sqlite:///{tmp_path}/no/such/dir/db.sqlite")
    with pytest.raises(StoreUnavailableError, match="directory exists"):
        await missing.migrate()
    closed = open_store("postgresql://nobody@127.0.0.1:1/db", connect_timeout=2)
    with pytest.raises(StoreUnavailableError, match="cannot reach the PostgreSQL store"):
        await closed.migrate()
    await closed.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@127.0.0.1:1/db",
        "postgresql://app@127.0.0.1:1/db?password=s3cret&sslmode=disable",
        "postgresql://app:s3cret@[::1/db",  # psycopg's own message quotes the URL
        "postgres://app:s3cret@127.0.0.1:1/db",
        "postgressql://app:s3cret@db/app",  # a typo in the scheme
    ],
)
async def test_a_store_error_never_shows_the_urls_password(url: str) -> None:
    # The message quoted the URL as given, password included; a worker logs
    # it at every claim that fails while the database is down.
    async def open_and_migrate() -> None:
        store = open_store(url, connect_timeout=2)
        try:
            await store.migrate()
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailableError) as caught:
        await open_and_migrate()
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("synchronous", ["FUL", "OFF", "NORMAL; PRAGMA x", 2])
def test_an_sqlite_synchronous_setting_other_than_full_or_normal_is_refused(
    tmp_path: Any, synchronous: Any
) -> None:
    # SQLite read a typo as NORMAL (less durable than the FULL asked for, in
    # silence); OFF may damage the file on a power loss; two statements were
    # a ProgrammingError at the first query.
    with pytest.raises(ValueError, match=r"synchronous=.*pass 'FULL' .* or 'NORMAL'"):
        open_store(f"sqlite:///{tmp_path / 's.db'}", synchronous=synchronous)


async def test_an_sqlite_store_takes_synchronous_normal_in_any_case(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", synchronous="normal")
    await store.create(snapshot("s"))
    assert (await store.get("s")).status == "pending"
    await store.aclose()


@pytest.mark.parametrize("what", ["not a database", "a directory"])
async def test_an_sqlite_path_that_is_no_store_file_says_so(tmp_path: Any, what: str) -> None:
    # Both said only "check that the directory exists and is writable".
    path = tmp_path / "sessions.db"
    if what == "a directory":
        path.mkdir()
    else:
        path.write_bytes(b"not a database " * 1000)
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreUnavailableError, match=r"path names a file \(not a directory\)"):
        await store.migrate()
    await store.aclose()


async def test_an_sqlite_file_damaged_while_open_raises_store_unavailable(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'sessions.db'}")
    try:
        await store.create(snapshot("s1"))
        for file in tmp_path.glob("sessions.db*"):  # a restore gone wrong, a disk error
            file.write_bytes(b"not a database " * 1000)
        reads_and_writes = [
            store.list_sessions(),
            store.get("s1"),
            store.load("s1"),
            store.send_input("s1", "message", {"text": "hi"}),
            store.claim("w1", limit=1, lease=30.0),
        ]
        for call in reads_and_writes:
            with pytest.raises(StoreUnavailableError) as unavailable:
                await call
            message = str(unavailable.value)
            assert "sessions.db' cannot be read or written: file is not a database" in message
            assert "restore it from a backup" in message
    finally:
        await store.aclose()


def _inbox_back_to_version_5(store: Any) -> str:
    """PostgreSQL's inbox as schema version 5 made it (payload jsonb); the column's type."""
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        pg.execute(
            "ALTER TABLE stageflow_inbox ALTER COLUMN payload TYPE jsonb USING payload::jsonb"
        )
        pg.execute("UPDATE stageflow_schema SET version = 5")
        return _payload_type(pg)


def _send_as_version_5(store: Any) -> None:
    """Store input 3 as schema version 5's stageflow did (a jsonb payload)."""
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        pg.execute(
            "WITH u AS (UPDATE stageflow_sessions SET inbox_head = inbox_head + 1 "
            "WHERE session_id = 's' RETURNING inbox_head) INSERT INTO stageflow_inbox "
            "(session_id, seq, type, payload) SELECT 's', inbox_head, 'msg', %s::jsonb FROM u",
            ('{"n": 3}',),
        )


def _payload_type(pg: Any) -> str:
    row = pg.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = 'stageflow_inbox' AND column_name = 'payload'"
    ).fetchone()
    return str(row[0])


def _inbox_payload_type(store: Any) -> str:
    import psycopg

    options = f"-c search_path={store.schema}"
    with psycopg.connect(store.url, autocommit=True, options=options) as pg:
        return _payload_type(pg)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_an_inbox_of_schema_version_5_is_upgraded_to_json_payloads(make_store: Any) -> None:
    store = make_store()
    await store.create(snapshot("s"))
    await store.send_input("s", "msg", {"n": 1})
    assert await anyio.to_thread.run_sync(_inbox_back_to_version_5, store) == "jsonb"
    upgraded = make_store()
    await upgraded.migrate()
    assert await anyio.to_thread.run_sync(_inbox_payload_type, upgraded) == "json"
    await upgraded.send_input("s", "msg", ODD_PAYLOADS[0])
    await anyio.to_thread.run_sync(_send_as_version_5, upgraded)  # a worker not yet upgraded
    lease = await claim_one(upgraded)
    assert [i.payload for i in lease.inputs] == [{"n": 1}, ODD_PAYLOADS[0], {"n": 3}]


async def test_the_most_recently_updated_sessions_are_listed_first_when_asked(
    store: SessionStore,
) -> None:
    for sid in "abcd":
        await store.create(snapshot(sid))
    (lease,) = await store.claim("w1", limit=1, lease=30.0)  # "a", the first due
    assert lease.session_id == "a"
    assert await store.complete(lease, saved(lease), waiting_for=["msg"], wake_at=None, events=())
    assert [s.session_id for s in await store.list_sessions(limit=2)] == ["a", "b"]
    newest = await store.list_sessions(limit=2, newest=True)
    assert [s.session_id for s in newest] == ["a", "d"]
    assert [s.session_id for s in await store.list_sessions(newest=True, status="pending")] == [
        "d",
        "c",
        "b",
    ]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param(lambda s: ["not", "a", "snapshot"], "it is a list", id="list"),
        pytest.param(lambda s: {**s, "session_id": None}, "session_id is null", id="no-id"),
        pytest.param(lambda s: {**s, "session_id": ""}, "session_id is ''", id="empty-id"),
        pytest.param(
            # It said "its session_id is null", as for an id given as null.
            lambda s: {k: v for k, v in s.items() if k != "session_id"},
            "it has no session_id",
            id="missing-id",
        ),
        pytest.param(
            lambda s: {k: v for k, v in s.items() if k != "pipeline"},
            "it has no pipeline",
            id="missing-pipeline",
        ),
        pytest.param(
            lambda s: {**s, "pipeline": "chat"}, "pipeline is a string", id="pipeline-str"
        ),
        pytest.param(
            lambda s: {**s, "pipeline": {**s["pipeline"], "name": 5}},
            "pipeline name 5 cannot be stored",
            id="name-int",
        ),
        pytest.param(
            lambda s: {**s, "pipeline": {**s["pipeline"], "name": "a\x00b"}},
            "pipeline name .* NUL",
            id="name-nul",
        ),
        pytest.param(
            lambda s: {**s, "pipeline": {**s["pipeline"], "digest": ""}},
            "pipeline digest '' cannot be stored",
            id="no-digest",
        ),
    ],
)
async def test_create_refuses_what_is_not_a_session_snapshot(
    store: SessionStore, change: Any, match: str
) -> None:
    refused = f"create.snapshot=.... cannot store it: (its )?{match}"
    with pytest.raises(StoreArgumentError, match=refused):
        await store.create(change(snapshot("s")))
    assert await store.list_sessions() == []


async def test_create_refuses_an_empty_queue(store: SessionStore) -> None:
    with pytest.raises(StoreArgumentError, match="no worker serves an empty queue name"):
        await store.create(snapshot("s"), queue="")
    assert await store.list_sessions() == []


async def test_a_key_sent_again_with_another_input_is_refused(store: SessionStore) -> None:
    # It returned the first input's record (duplicate=True): the sender took
    # its new input for stored, and the worker never saw it.
    await store.create(snapshot("s"))
    await store.send_input("s", "msg", {"n": 1, "m": [1.5, True]}, idempotency_key="k")
    same = await store.send_input("s", "msg", {"m": [1.5, True], "n": 1}, idempotency_key="k")
    assert (same.seq, same.duplicate) == (1, True)  # the same JSON value, keys reordered
    for type, payload, what in [
        ("msg", {"n": 2, "m": [1.5, True]}, "another payload"),
        ("msg", {"n": 1, "m": [1.5, 1]}, "another payload"),  # true is not 1
        ("other", {"n": 1, "m": [1.5, True]}, "another type 'other' \\(it was 'msg'\\)"),
    ]:
        with pytest.raises(
            IdempotencyKeyReusedError,
            match=f"first used for input 1, and is now sent with {what}; nothing was stored",
        ) as info:
            await store.send_input("s", type, payload, idempotency_key="k")
        assert (info.value.seq, info.value.idempotency_key) == (1, "k")
        assert isinstance(info.value, StoreArgumentError)
    with pytest.raises(IdempotencyKeyReusedError, match=r"another type 'stageflow\.cancel'"):
        await store.request_cancel("s", "bye", idempotency_key="k")
    assert (await store.get("s")).inbox_head == 1
    lease = await claim_one(store)
    assert [i.payload for i in lease.inputs] == [{"n": 1, "m": [1.5, True]}]


async def test_a_read_only_sqlite_file_is_named_as_such(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chmod 444 file or a read-only mount: SQLite says "attempt to write a
    # readonly database", and the advice was about damaged files, full disks
    # and locks. The file is opened read-only (mode=ro) as a stand-in: these
    # tests may run as root, whom a file's mode does not stop.
    from pathlib import Path

    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}")
    await store.create(snapshot("a"))
    await store.aclose()
    monkeypatch.setattr(
        "stageflow.store._sqlite._existing", lambda p: f"{Path(p).absolute().as_uri()}?mode=ro"
    )
    read_only = open_store(f"sqlite:///{path}", create=False)
    try:
        with pytest.raises(StoreUnavailableError, match="is read-only here") as info:
            await read_only.send_input("a", "msg", {"n": 1})
    finally:
        await read_only.aclose()
    assert "attempt to write a readonly database" in str(info.value)
    assert "Make the file and its directory writable for this user" in str(info.value)
    assert "has room" not in str(info.value)


async def test_an_empty_idempotency_key_is_refused(store: SessionStore) -> None:
    # "" was a key like any other: a handler passing a missing header as ""
    # started one session for every caller, and stored one input per session.
    await store.create(snapshot("s"))
    for call in (
        lambda: store.create(snapshot("t"), idempotency_key=""),
        lambda: store.send_input("s", "msg", {"n": 1}, idempotency_key=""),
        lambda: store.request_cancel("s", "bye", idempotency_key=""),
    ):
        with pytest.raises(StoreArgumentError, match="idempotency_key='' cannot be used"):
            await call()
    assert [s.session_id for s in await store.list_sessions()] == ["s"]
    assert (await store.get("s")).inbox_head == 0


async def test_a_start_key_or_id_given_to_another_pipeline_is_refused(store: SessionStore) -> None:
    # It returned the first session (duplicate=True): SessionService.start gave
    # the caller a session of another pipeline than the one it started.
    document = json.loads(json.dumps(chat_pipeline().to_dict()))
    document["metadata"]["name"] = "other"
    other = stageflow.Pipeline.from_dict(document, registry=registry)
    first = await store.create(snapshot("a"), idempotency_key="k")
    again = await store.create(snapshot("b"), idempotency_key="k")  # a retry: same pipeline
    assert (first.duplicate, again.session_id, again.duplicate) == (False, "a", True)
    with pytest.raises(IdempotencyKeyReusedError, match="idempotency key 'k' was first") as info:
        await store.create(
            stageflow.Session(other, registry=registry).to_dict(), idempotency_key="k"
        )
    assert (info.value.session_id, info.value.idempotency_key, info.value.seq) == ("a", "k", None)
    assert "of pipeline 'chat', and is now given to start pipeline 'other'" in str(info.value)
    with pytest.raises(IdempotencyKeyReusedError, match="session id 'a' was first used"):
        await store.create(stageflow.Session(other, registry=registry, session_id="a").to_dict())
    assert [s.session_id for s in await store.list_sessions()] == ["a"]
