"""The durable chat example (examples/durable-chat): every request in a fresh process.

The conversation is driven through ``run.py`` in real subprocesses, each one
restoring the session from SQLite, sending one input, running it with
``run(suspend=True)`` and saving it again; it must end exactly like one
uninterrupted in-process run with the same inputs. The snapshot store is
tested on its own too.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from example_support import EXAMPLES, load_module

import stageflow

EXAMPLE = EXAMPLES / "durable-chat"
RUN = EXAMPLE / "run.py"

pytestmark = pytest.mark.anyio

ASK = "Hello! I am the stageflow bot. What is your name?"
GREETING = "Nice to meet you, Ada! Ask me anything, or say bye to leave."

# One conversation: each input is one request, sent to a fresh process.
SCRIPT: list[tuple[str, dict[str, str]]] = [
    ("user_name", {"name": "Ada"}),
    ("user_message", {"text": "hello"}),
    ("user_message", {"text": "what is a pipeline?"}),
    ("user_message", {"text": "bye"}),
]
TRANSCRIPT = [
    {"from": "bot", "text": ASK},
    {"from": "user", "text": "Ada"},
    {"from": "bot", "text": GREETING},
    {"from": "user", "text": "hello"},
    {"from": "bot", "text": "You said: hello"},
    {"from": "user", "text": "what is a pipeline?"},
    {"from": "bot", "text": "Good question! All I can tell you is that it has 4 words."},
    {"from": "user", "text": "bye"},
    {"from": "bot", "text": "Goodbye, Ada! We exchanged 3 messages."},
]


@pytest.fixture(scope="module")
def stages() -> ModuleType:
    return load_module("durable_chat_stages", EXAMPLE / "stages.py")


@pytest.fixture(scope="module")
def store_module() -> ModuleType:
    return load_module("durable_chat_store", EXAMPLE / "store.py")


def pipeline(stages: ModuleType) -> stageflow.Pipeline:
    return stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=stages.registry)


def request(db: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one ``run.py`` command in its own process."""
    proc = subprocess.run(
        [sys.executable, str(RUN), "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == status, proc.stderr
    return proc


def reply(db: Path, *args: str) -> dict[str, Any]:
    """The JSON a successful request prints; it writes nothing to stderr."""
    proc = request(db, *args)
    assert proc.stderr == ""
    decoded: dict[str, Any] = json.loads(proc.stdout)
    return decoded


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM sessions ORDER BY session_id").fetchall()


# ------------------------------------------------------------ across processes


class Conversation:
    """The replies of the scripted conversation, one process per request."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.started = reply(db, "start")
        self.session_id: str = self.started["session_id"]
        self.waiting_after_start = reply(db, "waiting")
        self.replies = [
            reply(db, "send", self.session_id, type, json.dumps(payload))
            for type, payload in SCRIPT
        ]
        self.waiting_at_end = reply(db, "waiting")


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> Conversation:
    return Conversation(tmp_path_factory.mktemp("durable-chat") / "chat.db")


async def uninterrupted(stages: ModuleType) -> tuple[stageflow.SessionResult, list[str]]:
    """The same conversation in one process, never suspended: the inputs are queued up front."""
    session = stageflow.Session(pipeline(stages), registry=stages.registry)
    for type, payload in SCRIPT:
        session.send_input(type, payload)
    result = await session.run()
    said = [e.payload["text"] for e in result.history if e.type == "bot_said"]
    return result, said


def test_start_says_hello_and_waits_for_the_name(conversation: Conversation) -> None:
    assert conversation.started == {
        "session_id": conversation.session_id,
        "status": "waiting",
        "waiting_for": ["user_name"],
        "said": [ASK],
    }
    [waiting] = conversation.waiting_after_start["waiting"]
    assert waiting["session_id"] == conversation.session_id
    assert waiting["waiting_for"] == ["user_name"]


def test_each_request_says_its_own_lines_and_waits_again(conversation: Conversation) -> None:
    *turns, last = conversation.replies
    assert turns == [
        {
            "session_id": conversation.session_id,
            "status": "waiting",
            "waiting_for": ["user_message"],
            "said": [said],
        }
        for said in (
            GREETING,
            "You said: hello",
            "Good question! All I can tell you is that it has 4 words.",
        )
    ]
    assert last["said"] == ["Goodbye, Ada! We exchanged 3 messages."]


def test_the_last_request_completes_with_the_result_and_artifacts(
    conversation: Conversation,
) -> None:
    last = conversation.replies[-1]
    assert last["status"] == "completed"
    assert last["waiting_for"] == []
    assert last["result"] == {"ended": "bye"}
    assert last["artifacts"] == {"user.name": "Ada", "turns": 3, "transcript": TRANSCRIPT}
    assert "error" not in last
    assert conversation.waiting_at_end == {"waiting": []}
    [row] = rows(conversation.db)
    assert row[0] == conversation.session_id
    assert row[2:4] == ("completed", "[]")


async def test_the_processes_end_like_one_uninterrupted_run(
    conversation: Conversation, stages: ModuleType
) -> None:
    result, said = await uninterrupted(stages)
    last = conversation.replies[-1]
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert last["status"] == result.status.value
    assert last["result"] == result.result
    assert last["artifacts"] == result.artifacts
    # Every line was said once, in order, across the requests: no stage that
    # talks was re-run by a restore.
    spoken = [*conversation.started["said"]]
    for turn in conversation.replies:
        spoken += turn["said"]
    assert spoken == said


def test_the_stored_final_snapshot_restores_the_finished_session(
    conversation: Conversation, stages: ModuleType, store_module: ModuleType
) -> None:
    with store_module.SnapshotStore(conversation.db) as store:
        snapshot = store.load(conversation.session_id)
        events = store.events(conversation.session_id)
    session = stageflow.Session.from_dict(snapshot, registry=stages.registry)
    assert session.session_id == conversation.session_id
    assert session.status is stageflow.SessionStatus.COMPLETED
    assert session.payload["transcript"] == TRANSCRIPT
    # The snapshot keeps no history; the store has every event, each once.
    assert session.history == ()
    assert snapshot["history"] == []
    assert [e["seq"] for e in events] == list(range(1, snapshot["history_seq"]))
    sent = [e["payload"] for e in events if e["type"] == "bot_said"]
    assert sent == [{"text": e["text"]} for e in TRANSCRIPT if e["from"] == "bot"]


# ------------------------------------------------------------- bad requests


@pytest.fixture
def started(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "chat.db"
    return db, reply(db, "start")["session_id"]


def test_an_unknown_session_is_a_bad_request(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    proc = request(db, "send", "nope", "user_name", '{"name": "Ada"}', status=2)
    assert proc.stdout == ""
    assert proc.stderr == (
        f"run.py: no session 'nope' in {db}; start one first, or check the id "
        "(it is printed by the request that started the session)\n"
    )


@pytest.mark.parametrize(
    ("type", "payload", "error"),
    [
        (
            "user_message",
            '{"text": "hi"}',
            "does not wait for 'user_message' (it waits for user_name); "
            "send one of the input types it waits for",
        ),
        ("user_name", "{name: Ada}", "the payload is not JSON: "),
        ("user_name", '{"name": ""}', "input 'user_name' was rejected"),
        ("user_name", '{"name": "Ada", "age": 36}', "input 'user_name' was rejected"),
    ],
)
def test_a_bad_input_is_refused_and_changes_nothing(
    started: tuple[Path, str], type: str, payload: str, error: str
) -> None:
    db, session_id = started
    before = rows(db)
    proc = request(db, "send", session_id, type, payload, status=2)
    assert proc.stdout == ""
    assert proc.stderr.startswith("run.py: ")
    assert error in proc.stderr
    assert rows(db) == before
    # The session still takes the right input afterwards.
    assert reply(db, "send", session_id, "user_name", '{"name": "Ada"}')["said"] == [GREETING]


def test_a_finished_session_takes_no_more_input(started: tuple[Path, str]) -> None:
    db, session_id = started
    for type, payload in SCRIPT:
        reply(db, "send", session_id, type, json.dumps(payload))
    proc = request(db, "send", session_id, "user_message", '{"text": "hello?"}', status=2)
    assert proc.stderr == (
        f"run.py: session {session_id!r} is completed and takes no more input; "
        "start a new session\n"
    )


def test_sessions_are_independent(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    first = reply(db, "start")["session_id"]
    second = reply(db, "start")["session_id"]
    assert first != second
    assert reply(db, "send", second, "user_name", '{"name": "Bo"}')["said"] == [
        "Nice to meet you, Bo! Ask me anything, or say bye to leave."
    ]
    waiting = {w["session_id"]: w["waiting_for"] for w in reply(db, "waiting")["waiting"]}
    assert waiting == {first: ["user_name"], second: ["user_message"]}


# -------------------------------------------------------------------- store


async def suspended(stages: ModuleType, *inputs: tuple[str, Any]) -> stageflow.Session:
    """A chat session run with ``suspend=True`` after ``inputs`` were queued."""
    session = stageflow.Session(pipeline(stages), registry=stages.registry)
    for type, payload in inputs:
        session.send_input(type, payload)
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.WAITING
    return session


async def test_store_round_trip_restores_a_session_that_goes_on(
    tmp_path: Path, stages: ModuleType, store_module: ModuleType
) -> None:
    session = await suspended(stages, SCRIPT[0])
    with store_module.SnapshotStore(tmp_path / "s.db") as store:
        store.save(session)
    # Another connection (as another process would open) reads it back.
    with store_module.SnapshotStore(tmp_path / "s.db") as store:
        loaded = store.load(session.session_id)
    # taken_at is the time of each to_dict() call; everything else is the same.
    again = session.to_dict(history="none")
    assert loaded["taken_at"] <= again["taken_at"]
    assert {**loaded, "taken_at": None} == json.loads(json.dumps({**again, "taken_at": None}))
    restored = stageflow.Session.from_dict(loaded, registry=stages.registry)
    for type, payload in SCRIPT[1:]:
        restored.send_input(type, payload)
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts["transcript"] == TRANSCRIPT


async def test_store_indexes_status_and_awaited_inputs(
    tmp_path: Path, stages: ModuleType, store_module: ModuleType
) -> None:
    asking = await suspended(stages)
    chatting = await suspended(stages, SCRIPT[0])
    with store_module.SnapshotStore(tmp_path / "s.db") as store:
        store.save(asking)
        store.save(chatting)
        assert store.info(asking.session_id).waiting_for == ("user_name",)
        assert store.info(chatting.session_id).status == "waiting"
        assert [s.session_id for s in store.waiting()] == [asking.session_id, chatting.session_id]
        assert [s.session_id for s in store.waiting("user_message")] == [chatting.session_id]
        assert store.waiting("something_else") == []
        # Saving again replaces the row: finish the chat and save it.
        for type, payload in SCRIPT[1:]:
            chatting.send_input(type, payload)
        assert (await chatting.run()).status is stageflow.SessionStatus.COMPLETED
        store.save(chatting)
        assert store.info(chatting.session_id).status == "completed"
        assert store.info(chatting.session_id).waiting_for == ()
        assert [s.session_id for s in store.waiting()] == [asking.session_id]
        assert store.load(chatting.session_id)["status"] == "completed"
    assert len(rows(tmp_path / "s.db")) == 2


def test_store_unknown_id_is_a_clear_error(tmp_path: Path, store_module: ModuleType) -> None:
    db = tmp_path / "s.db"
    with store_module.SnapshotStore(db) as store:
        with pytest.raises(store_module.SessionNotFoundError) as info:
            store.load("missing")
        assert isinstance(info.value, LookupError)
        assert info.value.session_id == "missing"
        assert str(info.value) == (
            f"no session 'missing' in {db}; start one first, or check the id "
            "(it is printed by the request that started the session)"
        )
        with pytest.raises(store_module.SessionNotFoundError, match="no session 'gone'"):
            store.info("gone")


async def test_store_transaction_rolls_back_and_locks_out_writers(
    tmp_path: Path, stages: ModuleType, store_module: ModuleType
) -> None:
    db = tmp_path / "s.db"
    session = await suspended(stages)
    with store_module.SnapshotStore(db) as store:

        def failing_request() -> None:
            with store.transaction():
                store.save(session)
                raise RuntimeError("request failed")

        with pytest.raises(RuntimeError, match="request failed"):
            failing_request()
        assert rows(db) == []
        with store.transaction():
            store.save(session)
            # Another writer cannot get in while the request holds the lock.
            other = sqlite3.connect(db, timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                    other.execute("DELETE FROM sessions")
            finally:
                other.close()
        assert [r[0] for r in rows(db)] == [session.session_id]


def test_pipeline_is_valid_and_uses_the_example_stages(stages: ModuleType) -> None:
    loaded = pipeline(stages)
    used = {n.stage for n in loaded.nodes if isinstance(n, stageflow.StageNode)}
    assert used == {"Say", "Listen", "Greet", "Answer"}
    assert loaded.validate_events is stageflow.ValidateEvents.STRICT


# ------------------------------------------------------- a long conversation


@pytest.mark.trio_only
@pytest.mark.timeout(600)  # about 15 s alone; more under coverage on a busy machine
async def test_ten_thousand_messages_run_at_a_constant_snapshot_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message is one request (restore, send, run, save), as ``run.py send`` does.

    In the same process, to keep it fast; the test counts, it does not time.
    """
    # run.py imports its neighbours as "stages" and "store": not another example's.
    monkeypatch.delitem(sys.modules, "stages", raising=False)
    monkeypatch.delitem(sys.modules, "store", raising=False)
    run = load_module("durable_chat_run", RUN)
    messages = 10_000
    sizes: dict[int, int] = {}
    with run.SnapshotStore(tmp_path / "chat.db") as store:
        session_id = (await run.start(store))["session_id"]
        await run.send(store, session_id, "user_name", {"name": "Ada"})
        for i in range(1, messages + 1):
            text = f"message {i:05d}"  # the same length throughout
            reply = await run.send(store, session_id, "user_message", {"text": text})
            assert reply["said"] == [f"You said: {text}"]
            if i in (10, 1_000, 10_000):
                sizes[i] = len(json.dumps(store.load(session_id)))
        last = await run.send(store, session_id, "user_message", {"text": "bye"})
        events = store.events(session_id)
        snapshot = store.load(session_id)
    assert last["status"] == "completed"
    assert last["artifacts"]["turns"] == messages + 1
    # Constant: only the digits of a few counters (turns, steps, visits, seq) grow.
    assert max(sizes.values()) - min(sizes.values()) <= 20, sizes
    assert snapshot["history"] == []
    assert [e["seq"] for e in events] == list(range(1, snapshot["history_seq"]))
    assert sum(e["type"] == "bot_said" for e in events) == messages + 3
