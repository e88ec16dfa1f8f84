"""Notifications on PostgreSQL: coalesced per burst, and a done channel that wakes waiters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from store_support import chat_pipeline, registry

from stageflow.store import SessionService, Worker
from stageflow.store._postgres import _Notifier


class _BlockingConnection:
    """Records each statement; the first one blocks until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def execute(self, query: str, args: list[str]) -> None:
        self.calls.append((query, list(args)))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)

    def close(self) -> None:
        pass


def test_writes_during_a_notify_go_out_together_in_the_next() -> None:
    conn = _BlockingConnection()
    notifier = _Notifier(lambda: conn)  # type: ignore[arg-type, return-value]
    notifier.add("s.wake", ["a"])
    assert conn.entered.wait(10)  # the first NOTIFY is in flight
    for sid in ["b", "c", "d"]:
        notifier.add("s.wake", [sid])
    notifier.add("s.done", ["a"])
    conn.release.set()
    notifier.close()
    assert conn.calls == [
        ("SELECT pg_notify(%s, %s)", ["s.wake", "a"]),
        ("SELECT pg_notify(%s, %s), pg_notify(%s, %s)", ["s.wake", "b,c,d", "s.done", "a"]),
    ]


def test_a_payload_over_7_kb_becomes_a_star() -> None:
    conn = _BlockingConnection()
    conn.release.set()
    notifier = _Notifier(lambda: conn)  # type: ignore[arg-type, return-value]
    notifier.add("s.wake", [f"{n:040d}" for n in range(200)])
    notifier.close()
    assert conn.calls == [("SELECT pg_notify(%s, %s)", ["s.wake", "*"])]


def test_a_session_id_with_a_comma_becomes_a_star() -> None:
    # Read back as two ids ("a" and "b"), the notice woke neither waiter of "a,b".
    conn = _BlockingConnection()
    conn.release.set()
    notifier = _Notifier(lambda: conn)  # type: ignore[arg-type, return-value]
    notifier.add("s.done", ["a,b", "c"])
    notifier.close()
    assert conn.calls == [("SELECT pg_notify(%s, %s)", ["s.done", "*"])]


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("session_id", [None, "a,b"])
async def test_wait_wakes_on_the_done_notification_not_the_poll(
    make_store: Callable[..., Any], session_id: str | None
) -> None:
    # The service polls every 60 s at most: a wait that returns within 10 s was woken by the
    # save's NOTIFY on <schema>.done (the worker saves through another store, as another
    # process would, so no in-process notice helps).
    store = make_store()
    service = SessionService(store, registry=registry, poll=60.0)
    reads = 0
    first_read = anyio.Event()
    get = store.get

    async def counted_get(session_id: str) -> Any:
        nonlocal reads
        reads += 1
        first_read.set()
        return await get(session_id)

    store.get = counted_get
    sid = await service.start(chat_pipeline(), session_id=session_id)
    record = await service.send_input(sid, "msg", {"n": 1})
    worker = Worker(make_store(), registry=registry, poll=0.1, fetch_cooldown=0.01)
    waited: list[Any] = []
    returned = anyio.Event()

    async def wait() -> None:
        waited.append(await service.wait(sid, seq=record.seq, timeout=60))
        returned.set()

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            tg.start_soon(wait)
            await first_read.wait()  # the waiter read the row: nothing saved yet
            await tg.start(worker.run)
            await returned.wait()
        worker.shutdown()
    assert waited[0].inbox_done == 1
    assert reads <= 4  # a read per notice (the first LISTEN counts as one), never a poll loop


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_schema_with_a_name_of_63_characters_still_notifies(
    make_store: Callable[..., Any], store_options: dict[str, Any]
) -> None:
    # "<schema>.wake" was over PostgreSQL's 63 bytes for a channel: every
    # pg_notify failed ("channel name too long"), and the worker and the
    # waiter only polled (60 s here).
    schema = (store_options["schema"] + "_" * 63)[:63]
    service = SessionService(make_store(schema=schema), registry=registry, poll=60.0)
    worker = Worker(make_store(schema=schema), registry=registry, poll=60.0, fetch_cooldown=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        with anyio.fail_after(10):
            sid = await service.start(chat_pipeline())
            await service.wait(sid, timeout=60)
            record = await service.send_input(sid, "msg", {"n": 1})
            stored = await service.wait(sid, seq=record.seq, timeout=60)
        worker.shutdown()
    assert stored.inbox_done == 1
