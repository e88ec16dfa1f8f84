"""The lost-wake-up race: an input sent while the turn holding the lease is being saved.

Each round holds a lease, then sends an input and saves the turn
concurrently, in one of three orders: the input first, the save first, or
both released at once by one event (threads, so the database decides).
Whatever the order, the session must be runnable afterwards and the next
claim must deliver exactly that input, once. 200 rounds per store.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from store_support import chat_pipeline, registry

import stageflow
from stageflow.store import Lease, SessionStore

pytestmark = pytest.mark.anyio

ROUNDS = 200


async def test_an_input_sent_during_the_save_is_delivered_exactly_once(
    store: SessionStore,
) -> None:
    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="r").to_dict()
    await store.create(snapshot)
    (lease,) = await store.claim("w", limit=1, lease=60)
    delivered: list[int] = []
    for n in range(ROUNDS):
        lease = await _round(store, lease, n, delivered)
    delivered.extend(item.payload["n"] for item in lease.inputs)
    assert delivered == list(range(ROUNDS))  # every input once, in order
    row = await store.get("r")
    assert (row.inbox_head, row.inbox_done, row.version) == (ROUNDS, ROUNDS - 1, ROUNDS)


async def _round(store: SessionStore, lease: Lease, n: int, delivered: list[int]) -> Lease:
    delivered.extend(item.payload["n"] for item in lease.inputs)
    saved: list[bool] = []
    go = anyio.Event()

    async def send() -> None:
        if n % 3 == 2:
            await go.wait()
        await store.send_input("r", "msg", {"n": n}, idempotency_key=f"k{n}")

    async def complete() -> None:
        if n % 3 == 2:
            await go.wait()
        snap: dict[str, Any] = dict(lease.snapshot)
        snap["status"] = "waiting"
        saved.append(
            await store.complete(lease, snap, waiting_for=["msg"], wake_at=None, events=())
        )

    first, second = (send, complete) if n % 3 == 0 else (complete, send)
    async with anyio.create_task_group() as tg:
        if n % 3 == 2:
            tg.start_soon(first)
            tg.start_soon(second)
            go.set()
        else:
            await first()
            await second()
    assert saved == [True]
    row = await store.get("r")
    assert row.lease_owner is None
    assert row.runnable_at is not None, f"round {n}: the input was left without a wake-up"
    leases = await store.claim("w", limit=1, lease=60)
    assert len(leases) == 1, f"round {n}: the session is not claimable"
    (new,) = leases
    assert [i.payload["n"] for i in new.inputs] == [n]
    return new


async def test_an_input_sent_during_a_claim_is_delivered_exactly_once(
    store: SessionStore,
) -> None:
    """The claim reads the inbox in the statement that takes the lease.

    That read sees the statement's snapshot, while ``inbox_head`` comes from
    the newest row version it locked: an input committed in between must
    still be delivered (or left for the next turn), never skipped. Each round
    makes the session due with one input, then sends a second one while a
    claim runs (released at once by one event; threads, so the database
    decides), then saves and claims until nothing is due.
    """
    snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="c").to_dict()
    await store.create(snapshot)
    delivered: list[int] = []
    await _drain(store, delivered)
    for n in range(ROUNDS):
        await store.send_input("c", "msg", {"n": 2 * n})
        leases = await _claim_while_sending(store, n)
        for lease in leases:
            await _save(store, lease, delivered)
        await _drain(store, delivered)
    assert delivered == list(range(2 * ROUNDS))  # every input once, in order
    row = await store.get("c")
    assert (row.inbox_head, row.inbox_done) == (2 * ROUNDS, 2 * ROUNDS)


async def _save(store: SessionStore, lease: Lease, delivered: list[int]) -> None:
    delivered.extend(item.payload["n"] for item in lease.inputs)
    snap: dict[str, Any] = dict(lease.snapshot)
    snap["status"] = "waiting"
    assert await store.complete(lease, snap, waiting_for=["msg"], wake_at=None, events=())


async def _drain(store: SessionStore, delivered: list[int]) -> None:
    while leases := await store.claim("w", limit=1, lease=60):
        for lease in leases:
            await _save(store, lease, delivered)


async def _claim_while_sending(store: SessionStore, n: int) -> list[Lease]:
    leases: list[Lease] = []
    go = anyio.Event()

    async def claim() -> None:
        await go.wait()
        leases.extend(await store.claim("w", limit=1, lease=60))

    async def send() -> None:
        await go.wait()
        key = f"k{n}" if n % 2 else None
        await store.send_input("c", "msg", {"n": 2 * n + 1}, idempotency_key=key)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim)
        tg.start_soon(send)
        go.set()
    return leases
