"""The durable chat example (examples/durable-chat): every request in a fresh process.

The conversation is driven through ``run.py`` in real subprocesses, each one
storing its request with ``SessionService`` on the SQLite session store and
letting an embedded ``Worker`` run the turn; it must end exactly like one
uninterrupted in-process run with the same inputs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import durable_chat_support as chat
import pytest
from durable_chat_support import ASK, EXAMPLE, GREETING, RUN, SCRIPT, TRANSCRIPT
from example_support import load_module

import stageflow
from stageflow.store import open_store

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Real clocks: the store talks to SQLite through threads (a virtual clock would jump)."""
    return request.param


@pytest.fixture(scope="module")
def stages() -> ModuleType:
    return load_module("durable_chat_stages", EXAMPLE / "stages.py")


def pipeline(stages: ModuleType) -> stageflow.Pipeline:
    return stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=stages.registry)


def request(db: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one ``run.py`` command on the SQLite store in ``db``, in its own process."""
    return chat.request(f"sqlite:///{db}", *args, status=status)


def reply(db: Path, *args: str) -> dict[str, Any]:
    """The JSON a successful request on ``db`` prints."""
    return chat.reply(f"sqlite:///{db}", *args)


def rows(db: Path) -> list[tuple[Any, ...]]:
    """The store's session rows (without times)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT session_id, status, waiting_for, snapshot, version, inbox_head, inbox_done, "
            "events_done FROM stageflow_sessions ORDER BY session_id"
        ).fetchall()


def stored(db: Path) -> list[tuple[Any, ...]]:
    """Everything a request could have written: session rows and inbox rows."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        inbox = conn.execute("SELECT * FROM stageflow_inbox ORDER BY session_id, seq").fetchall()
    return [*rows(db), *inbox]


# ------------------------------------------------------------ across processes


class Conversation(chat.Conversation):
    """The scripted conversation on the SQLite store in ``db``."""

    def __init__(self, db: Path) -> None:
        self.db = db
        super().__init__(f"sqlite:///{db}")


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
    assert row[1:3] == ("completed", "[]")


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


async def test_the_stored_final_snapshot_restores_the_finished_session(
    conversation: Conversation, stages: ModuleType
) -> None:
    store = open_store(f"sqlite:///{conversation.db}")
    snapshot = await store.load(conversation.session_id)
    events = await store.events(conversation.session_id)
    await store.aclose()
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
        "run.py: no session 'nope' in the store; start one first, or check the id "
        "(it is printed by the request that started the session)\n"
    )


@pytest.mark.parametrize("worker", [True, False], ids=["embedded worker", "no worker"])
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path, worker: bool) -> None:
    # With the embedded worker (the default) the store's error came out of
    # the task group in an exception group: a traceback of 80 lines, exit 1.
    db = tmp_path / "no such directory" / "chat.db"
    proc = request(db, *([] if worker else ["--no-worker"]), "start", status=2)
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"run.py: cannot open the SQLite store '{db}': ")
    assert proc.stderr.count("\n") == 1


def test_no_worker_within_the_timeout_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # With --no-worker and no worker running, the wait's TimeoutError was a
    # traceback; the request is stored all the same.
    db = tmp_path / "chat.db"
    proc = request(db, "--no-worker", "--timeout", "0.001", "start", status=1)
    assert proc.stdout == ""
    assert proc.stderr.startswith("run.py: session '")
    assert "no worker took it" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert [row[1] for row in rows(db)] == ["pending"]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
def test_a_timeout_that_is_not_seconds_above_0_is_a_usage_error(
    tmp_path: Path, timeout: str
) -> None:
    proc = request(tmp_path / "chat.db", "--timeout", timeout, "start", status=2)
    assert f"--timeout: {timeout!r} is not a number of seconds above 0" in proc.stderr
    assert "Traceback" not in proc.stderr


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
    before = stored(db)
    proc = request(db, "send", session_id, type, payload, status=2)
    assert proc.stdout == ""
    assert proc.stderr.startswith("run.py: ")
    assert error in proc.stderr
    assert stored(db) == before
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


# --------------------------------------------------------- keys and stores


def test_a_retried_request_with_its_key_is_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    first = reply(db, "--key", "s1", "start")
    assert reply(db, "--key", "s1", "start")["session_id"] == first["session_id"]
    sid = first["session_id"]
    said = reply(db, "--key", "m1", "send", sid, "user_name", '{"name": "Ada"}')["said"]
    assert said == [GREETING]
    before = stored(db)
    # The retry finds the input stored: the session waits for user_message now, so the
    # advisory check refuses it; nothing is stored twice either way.
    request(db, "--key", "m1", "send", sid, "user_name", '{"name": "Ada"}', status=2)
    assert stored(db) == before
    assert [w["session_id"] for w in reply(db, "waiting")["waiting"]] == [sid]


def test_store_url_and_db_name_the_same_store(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    sid = reply(db, "start")["session_id"]
    proc = subprocess.run(
        [sys.executable, str(RUN), "--store", f"sqlite:///{db}", "waiting"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [w["session_id"] for w in json.loads(proc.stdout)["waiting"]] == [sid]


def test_pipeline_is_valid_and_uses_the_example_stages(stages: ModuleType) -> None:
    loaded = pipeline(stages)
    used = {n.stage for n in loaded.nodes if isinstance(n, stageflow.StageNode)}
    assert used == {"Say", "Listen", "Greet", "Answer"}
    assert loaded.validate_events is stageflow.ValidateEvents.STRICT


# ------------------------------------------------------- a long conversation


@pytest.mark.trio_only  # once is enough: it is long
@pytest.mark.timeout(1800)  # 1-2 minutes alone; far more under coverage on a busy machine
async def test_ten_thousand_messages_run_at_a_constant_snapshot_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message is one request (store the input, a worker runs the turn and saves it).

    As ``run.py send`` does, through the same functions, with one service and
    one worker in this process to keep it fast; the test counts, it does not time.
    """
    # run.py imports its neighbour as "stages": not another example's.
    monkeypatch.delitem(sys.modules, "stages", raising=False)
    run = load_module("durable_chat_run", RUN)
    messages = 10_000
    sizes: dict[int, int] = {}
    service = run.open_service(f"sqlite:///{tmp_path / 'chat.db'}")
    store = service.store
    async with anyio.create_task_group() as tg:
        worker = run.embedded_worker(service)
        await tg.start(worker.run)
        # It counts, it does not time: a turn may wait long on a loaded
        # machine (the example's 30 s per request failed one in a full run).
        patient = 600.0
        session_id = (await run.start(service, timeout=patient))["session_id"]
        await run.send(service, session_id, "user_name", {"name": "Ada"}, timeout=patient)
        for i in range(1, messages + 1):
            text = f"message {i:05d}"  # the same length throughout
            reply = await run.send(
                service, session_id, "user_message", {"text": text}, timeout=patient
            )
            assert reply["said"] == [f"You said: {text}"]
            if i in (10, 1_000, 10_000):
                sizes[i] = len(json.dumps(await store.load(session_id)))
        last = await run.send(service, session_id, "user_message", {"text": "bye"}, timeout=patient)
        worker.shutdown()
    events = await store.events(session_id, limit=1_000_000)
    snapshot = await store.load(session_id)
    await store.aclose()
    assert last["status"] == "completed"
    assert last["artifacts"]["turns"] == messages + 1
    # Constant: only the digits of a few counters (turns, steps, visits, seq) grow.
    assert max(sizes.values()) - min(sizes.values()) <= 20, sizes
    assert snapshot["history"] == []
    assert [e["seq"] for e in events] == list(range(1, snapshot["history_seq"]))
    assert sum(e["type"] == "bot_said" for e in events) == messages + 3
    assert worker.statistics().saved == messages + 3  # one saved turn per request
