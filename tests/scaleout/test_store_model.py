"""A hypothesis state machine over the SQLite store: sends, claims, saves and releases
in any order, with stale leases kept around. Whatever the order, every input is
delivered into a committed turn exactly once and in order, a retried key keeps its
seq, only the newest lease can write, and a session with pending input keeps a
wake-up.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_support import chat_pipeline, registry

import stageflow
from stageflow.store import Lease, SQLiteStore


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return anyio.run(functools.partial(fn, *args, **kwargs))


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = SQLiteStore(Path(self.dir.name) / "s.db")
        snapshot = stageflow.Session(chat_pipeline(), registry=registry, session_id="s").to_dict()
        call(self.store.create, snapshot)
        self.head = 0
        self.keys: dict[str, int] = {}
        self.held: list[Lease] = []
        self.newest: int | None = None  # token of the lease that may still write
        self.committed: list[int] = []

    @rule(key=st.sampled_from([None, "a", "b", "c"]))
    def send(self, key: str | None) -> None:
        record = call(self.store.send_input, "s", "msg", {"k": key}, idempotency_key=key)
        if key is not None and key in self.keys:
            assert (record.seq, record.duplicate) == (self.keys[key], True)
            return
        self.head += 1
        assert (record.seq, record.duplicate) == (self.head, False)
        if key is not None:
            self.keys[key] = record.seq

    @rule(lease=st.sampled_from([0.0, 30.0]))
    def claim(self, lease: float) -> None:
        for got in call(self.store.claim, "w", limit=5, lease=lease):
            assert [i.seq for i in got.inputs] == list(
                range(len(self.committed) + 1, self.head + 1)
            )
            self.held.append(got)
            self.newest = got.token

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.held))
        snapshot = {**lease.snapshot, "status": "waiting"}
        ok = call(
            self.store.complete, lease, snapshot, waiting_for=["msg"], wake_at=None, events=()
        )
        assert ok == (lease.token == self.newest)
        if ok:
            self.committed.extend(i.seq for i in lease.inputs)
            self.newest = None

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.held))
        call(self.store.release, lease, error="boom", max_attempts=1000)
        if lease.token == self.newest:
            self.newest = None

    @invariant()
    def every_input_once_in_order(self) -> None:
        row = call(self.store.get, "s")
        assert self.committed == list(range(1, row.inbox_done + 1))
        assert row.inbox_head == self.head
        if row.lease_owner is None and row.inbox_head > row.inbox_done:
            assert row.runnable_at is not None  # the pending input keeps a wake-up

    def teardown(self) -> None:
        call(self.store.aclose)
        self.dir.cleanup()


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_store_orderings = StoreMachine.TestCase
