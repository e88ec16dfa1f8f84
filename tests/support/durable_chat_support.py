"""The durable chat example's scripted conversation, run one process per request.

Shared by the SQLite tests (``tests/test_example_durable_chat.py``) and the
PostgreSQL ones (``tests/scaleout/test_example_durable_chat_pg.py``): the
same requests to ``examples/durable-chat/run.py`` with ``--store URL``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from example_support import EXAMPLES

EXAMPLE = EXAMPLES / "durable-chat"
RUN = EXAMPLE / "run.py"

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
# What the bot says in reply to each input of SCRIPT.
REPLIES = [e["text"] for e in TRANSCRIPT[2::2]]


def request(store: str, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one ``run.py`` command against the store at URL ``store``, in its own process."""
    proc = subprocess.run(
        [sys.executable, str(RUN), "--store", store, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == status, proc.stderr
    return proc


def reply(store: str, *args: str) -> dict[str, Any]:
    """The JSON a successful request prints; it writes nothing to stderr."""
    proc = request(store, *args)
    assert proc.stderr == ""
    decoded: dict[str, Any] = json.loads(proc.stdout)
    return decoded


class Conversation:
    """The replies of the scripted conversation, one process per request."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.started = reply(store, "start")
        self.session_id: str = self.started["session_id"]
        self.waiting_after_start = reply(store, "waiting")
        self.replies = [
            reply(store, "send", self.session_id, type, json.dumps(payload))
            for type, payload in SCRIPT
        ]
        self.waiting_at_end = reply(store, "waiting")
