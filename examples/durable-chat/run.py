"""One request to the durable chat: restore the session, advance it, save it again.

    cd examples/durable-chat   # from the repository, after make test or make demo
    ../../.venv/bin/python run.py --db chat.db start
    ../../.venv/bin/python run.py --db chat.db send SESSION_ID user_name '{"name": "Ada"}'
    ../../.venv/bin/python run.py --db chat.db send SESSION_ID user_message '{"text": "hi"}'
    ../../.venv/bin/python run.py --db chat.db waiting

Every command is a fresh process, as a request to a service would be: it loads
the session's snapshot from SQLite (``start`` makes a new session instead),
sends the input, runs the session with ``run(suspend=True)`` until it ends or
waits for the user again, saves the new snapshot and prints the outcome as
one JSON object: the session id, its status, the input types it waits for,
the lines the bot said during this request, and the result and artifacts once
the session has completed. ``waiting`` lists the sessions that wait.

Exit status: 0 when the session waits or has completed, 1 when it ended
otherwise (failed, cancelled, timed out), 2 for a bad request (unknown
session, malformed JSON, an input the session does not wait for or whose
payload does not fit the input's schema). A bad request changes nothing in
the database.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import trio

import stageflow

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry
from store import SessionNotFoundError, SnapshotStore

HERE = Path(__file__).parent


class BadRequestError(Exception):
    """A request this session cannot take; nothing was changed."""


@functools.cache
def load_pipeline() -> stageflow.Pipeline:
    """The durable chat pipeline (loaded once per process, as a service would)."""
    return stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)


async def advance(store: SnapshotStore, session: stageflow.Session) -> dict[str, Any]:
    """Run ``session`` until it ends or waits, save it, and describe the outcome."""
    said: list[str] = []

    def collect(event: stageflow.Event) -> None:
        if event.type == "bot_said":
            said.append(event.payload["text"])

    session.subscribe(collect)
    result = await session.run(suspend=True)
    store.save(session)  # the snapshot, and the events recorded since the restore
    reply: dict[str, Any] = {
        "session_id": session.session_id,
        "status": result.status.value,
        "waiting_for": sorted(result.waiting_for),
        "said": said,
    }
    if result.status is stageflow.SessionStatus.COMPLETED:
        reply["result"] = result.result
        reply["artifacts"] = dict(result.artifacts)
    if result.error is not None:
        reply["error"] = result.error.to_dict()
    return reply


async def start(store: SnapshotStore) -> dict[str, Any]:
    """Start a new conversation; it runs until it waits for the user's name."""
    session = stageflow.Session(load_pipeline())
    with store.transaction():
        return await advance(store, session)


async def send(store: SnapshotStore, session_id: str, type: str, payload: Any) -> dict[str, Any]:
    """Deliver one input of ``type`` to the stored session and advance it.

    Raises:
        BadRequestError: no such session, it does not wait for ``type``, or
            the payload does not fit the input's schema.
    """
    with store.transaction():
        try:
            stored = store.info(session_id)
        except SessionNotFoundError as exc:
            raise BadRequestError(str(exc)) from exc
        if not stored.waiting_for:
            raise BadRequestError(
                f"session {session_id!r} is {stored.status} and takes no more input; "
                "start a new session"
            )
        if type not in stored.waiting_for:
            raise BadRequestError(
                f"session {session_id!r} does not wait for {type!r} (it waits for "
                f"{', '.join(stored.waiting_for)}); send one of the input types it waits for"
            )
        session = stageflow.Session.from_dict(
            store.load(session_id), registry=registry, pipeline=load_pipeline()
        )
        try:
            session.send_input(type, payload)
        except stageflow.InputRejectedError as exc:
            raise BadRequestError(str(exc)) from exc
        return await advance(store, session)


def waiting(store: SnapshotStore) -> dict[str, Any]:
    """The sessions that wait for the user, oldest first."""
    return {
        "waiting": [
            {"session_id": s.session_id, "waiting_for": list(s.waiting_for), "since": s.updated_at}
            for s in store.waiting()
        ]
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, handle one request, print its outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path, help="the SQLite database file")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start a new conversation")
    send_parser = commands.add_parser("send", help="send one input to a waiting conversation")
    send_parser.add_argument("session_id")
    send_parser.add_argument("type", help="input type: user_name or user_message")
    send_parser.add_argument("payload", help="the input's payload, as JSON")
    commands.add_parser("waiting", help="list the conversations that wait")
    args = parser.parse_args(argv)

    with SnapshotStore(args.db) as store:
        try:
            if args.command == "start":
                reply = trio.run(start, store)
            elif args.command == "send":
                try:
                    payload = json.loads(args.payload)
                except json.JSONDecodeError as exc:
                    raise BadRequestError(f"the payload is not JSON: {exc}") from exc
                reply = trio.run(send, store, args.session_id, args.type, payload)
            else:
                reply = waiting(store)
        except BadRequestError as exc:
            print(f"run.py: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(reply, ensure_ascii=False))
    ended_badly = reply.get("status") not in (None, "waiting", "completed")
    return 1 if ended_badly else 0


if __name__ == "__main__":
    sys.exit(main())
