"""The durable chat example on PostgreSQL: ``run.py --store postgresql://...``.

The same scripted conversation as the SQLite tests, each request a fresh
process, against a database of its own on the suite's PostgreSQL server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from durable_chat_support import ASK, REPLIES, TRANSCRIPT, Conversation, request

from stageflow.store import open_store


@pytest.fixture(scope="module")
def chat_url(postgres_dsn: str) -> Iterator[str]:
    """A fresh database on the server: the example uses the store's default schema."""
    name = f"chat_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_dsn)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def conversation(chat_url: str) -> Conversation:
    return Conversation(chat_url)


def test_the_conversation_runs_one_turn_per_request(conversation: Conversation) -> None:
    assert conversation.started["said"] == [ASK]
    assert conversation.started["waiting_for"] == ["user_name"]
    [waiting] = conversation.waiting_after_start["waiting"]
    assert waiting["session_id"] == conversation.session_id
    assert [turn["said"] for turn in conversation.replies] == [[line] for line in REPLIES]
    assert [turn["status"] for turn in conversation.replies] == ["waiting"] * 3 + ["completed"]
    last = conversation.replies[-1]
    assert last["result"] == {"ended": "bye"}
    assert last["artifacts"] == {"user.name": "Ada", "turns": 3, "transcript": TRANSCRIPT}
    assert conversation.waiting_at_end == {"waiting": []}


def test_postgresql_keeps_every_event_once(conversation: Conversation) -> None:
    async def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        store = open_store(conversation.store)
        try:
            snapshot = await store.load(conversation.session_id)
            events = await store.events(conversation.session_id)
        finally:
            await store.aclose()
        return snapshot, events

    snapshot, events = anyio.run(read)
    assert snapshot["status"] == "completed"
    assert [e["seq"] for e in events] == list(range(1, snapshot["history_seq"]))
    said = [e["payload"]["text"] for e in events if e["type"] == "bot_said"]
    assert said == [e["text"] for e in TRANSCRIPT if e["from"] == "bot"]


def test_a_finished_session_takes_no_more_input(conversation: Conversation) -> None:
    proc = request(
        conversation.store,
        "send",
        conversation.session_id,
        "user_message",
        '{"text": "hello?"}',
        status=2,
    )
    assert "is completed and takes no more input" in proc.stderr
