"""The chat example (examples/chat): its script, on trio and asyncio, and its timeout route."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest
import trio
import trio.testing
from example_support import load_example

import stageflow

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "chat"

pytestmark = pytest.mark.anyio

GREETING = "Hello, Ada! Ask me a question, or say bye to leave."
HELP = "I answer questions (end them with '?') and repeat everything else."


@pytest.fixture(scope="module")
def chat_run() -> ModuleType:
    """examples/chat/run.py, imported with its own ``stages`` module."""
    return load_example("chat")[1]


def visited(result: stageflow.SessionResult) -> list[str | None]:
    return [e.node_id for e in result.history if e.type == "node_started"]


def test_script_plays_the_default_conversation() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert proc.stdout.splitlines() == [
        f"bot: {GREETING}",
        "you: hello",
        "bot: You said: hello",
        "you: can you help me?",
        f"bot: {HELP}",
        "you: what is a pipeline?",
        "bot: Good question! All I can tell you is that it has 4 words.",
        "you: bye",
        "bot: Goodbye, Ada!",
        "status: completed",
        'result: {"ended": "bye"}',
        "transcript: 9 lines",
    ]
    assert proc.stderr == ""


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_script_hangs_up_when_it_runs_out_of_messages(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--backend", backend, "--name", "Bo", "why?"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "bot: Hello, Bo! Ask me a question, or say bye to leave.",
        "you: why?",
        "bot: Good question! All I can tell you is that it has 1 word.",
        "(no more messages: hanging up)",
        "status: cancelled",
        "result: null",
    ]


async def test_conversation_in_process(chat_run: ModuleType) -> None:
    shown: list[str] = []
    result = await chat_run.chat(["help", "Is it late?", "nice", "goodbye"], show=shown.append)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"ended": "bye"}
    assert result.error is None
    assert result.artifacts == {
        "transcript": [
            {"from": "bot", "text": GREETING},
            {"from": "user", "text": "help"},
            {"from": "bot", "text": HELP},
            {"from": "user", "text": "Is it late?"},
            {"from": "bot", "text": "Good question! All I can tell you is that it has 3 words."},
            {"from": "user", "text": "nice"},
            {"from": "bot", "text": "You said: nice"},
            {"from": "user", "text": "goodbye"},
            {"from": "bot", "text": "Goodbye, Ada!"},
        ]
    }
    assert shown == [
        f"bot: {GREETING}",
        "you: help",
        f"bot: {HELP}",
        "you: Is it late?",
        "bot: Good question! All I can tell you is that it has 3 words.",
        "you: nice",
        "bot: You said: nice",
        "you: goodbye",
        "bot: Goodbye, Ada!",
    ]
    assert visited(result) == [
        "greet",
        *("listen", "route", "help"),
        *("listen", "route", "question"),
        *("listen", "route", "echo"),
        *("listen", "route", "farewell"),
        "goodbye",
    ]
    # Every message reached the waiting stage directly; none was queued.
    received = [dict(e.payload) for e in result.history if e.type == "input_received"]
    assert received == [{"input_type": "user_message", "from": "sender"}] * 4
    assert "input_queued" not in [e.type for e in result.history]


async def test_hanging_up_cancels_the_session(chat_run: ModuleType) -> None:
    shown: list[str] = []
    result = await chat_run.chat([], show=shown.append)
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert result.result is None
    assert shown == [f"bot: {GREETING}", "(no more messages: hanging up)"]
    assert result.history[-1].type == "session_cancelled"
    assert result.history[-1].payload["reason"] == "the user hung up"


@pytest.mark.trio
async def test_silence_times_out_to_the_polite_terminal(
    chat_run: ModuleType, autojump_clock: trio.testing.MockClock
) -> None:
    shown: list[str] = []
    times: dict[str, float] = {}

    def show(line: str) -> None:
        shown.append(line)
        times[line] = anyio.current_time()

    result = await chat_run.chat(["hello"], hang_up=False, show=show)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {
        "ended": "timeout",
        "reply": "I have not heard from you for a while, so I closed this chat. "
        "Come back any time!",
    }
    assert result.artifacts == {
        "transcript": [
            {"from": "bot", "text": GREETING},
            {"from": "user", "text": "hello"},
            {"from": "bot", "text": "You said: hello"},
        ],
        "timeout.type": "InputTimeoutError",
    }
    assert shown == [f"bot: {GREETING}", "you: hello", "bot: You said: hello"]
    # The bot waited its five minutes (virtual time) after its last line.
    assert anyio.current_time() - times["bot: You said: hello"] == pytest.approx(300)
    routed = [(e.node_id, dict(e.payload)) for e in result.history if e.type == "error_routed"]
    assert routed == [("listen", {"next": "idle", "error_path": "timeout", "handler": 0})]
    assert visited(result)[-1] == "idle"


def test_pipeline_is_valid_and_uses_core_and_example_stages(chat_run: ModuleType) -> None:
    pipeline = stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=chat_run.registry)
    stages = {n.stage for n in pipeline.nodes if isinstance(n, stageflow.StageNode)}
    assert stages == {"Greet", "WaitStage", "Reply"}
