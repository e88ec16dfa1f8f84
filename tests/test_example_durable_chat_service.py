"""The durable chat on the session store (examples/durable-chat/service.py).

Each request is one call of the example's ``main`` (a fresh store, service and
embedded worker, as a fresh process would have): the conversation must say
exactly what the hand-written ``run.py`` loop says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from example_support import EXAMPLES, load_module

EXAMPLE = EXAMPLES / "durable-chat"

SCRIPT: list[tuple[str, dict[str, str]]] = [
    ("user_name", {"name": "Ada"}),
    ("user_message", {"text": "hello"}),
    ("user_message", {"text": "bye"}),
]
SAID = [
    ["Nice to meet you, Ada! Ask me anything, or say bye to leave."],
    ["You said: hello"],
    ["Goodbye, Ada! We exchanged 2 messages."],
]


@pytest.fixture
def service() -> Any:
    stages = load_module("durable_chat_stages", EXAMPLE / "stages.py")
    saved = sys.modules.get("stages")
    sys.modules["stages"] = stages
    try:
        yield load_module("durable_chat_service", EXAMPLE / "service.py")
    finally:
        if saved is not None:
            sys.modules["stages"] = saved
        else:
            del sys.modules["stages"]


def ask(service: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = service.main(list(argv))
    out, err = capsys.readouterr()
    # The last line: structlog may be configured (by another test) to print to stdout too.
    return code, json.loads(out.strip().splitlines()[-1]) if out else err


def test_a_conversation_one_request_at_a_time(
    service: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'chat.db'}"]
    code, reply = ask(service, capsys, *store, "--key", "s1", "start")
    assert code == 0
    assert reply["said"] == ["Hello! I am the stageflow bot. What is your name?"]
    assert reply["waiting_for"] == ["user_name"]
    sid = reply["session_id"]
    for (type_, payload), said in zip(SCRIPT, SAID, strict=True):
        code, reply = ask(service, capsys, *store, "send", sid, type_, json.dumps(payload))
        assert (code, reply["said"]) == (0, said)
    assert reply["status"] == "completed"
    # Bad requests: a finished session, an unknown one.
    code, err = ask(service, capsys, *store, "send", sid, "user_message", '{"text": "hi"}')
    assert code == 2
    assert "is completed; input 'user_message' was not stored" in err
    code, err = ask(service, capsys, *store, "send", "nope", "user_message", '{"text": "hi"}')
    assert (code, "no stored session" in err) == (2, True)
