"""The durable chat on the session store: a service and a worker instead of a hand-written loop.

    cd examples/durable-chat   # from the repository, after make test or make demo
    ../../.venv/bin/python service.py start
    ../../.venv/bin/python service.py send SESSION_ID user_name '{"name": "Ada"}'
    ../../.venv/bin/python service.py send SESSION_ID user_message '{"text": "hi"}'

(``--store`` defaults to ``sqlite:///chat.db``.)

Every command is a fresh process, as a request to a service would be. It stores
the request with ``SessionService`` (``start`` or ``send_input``, with an
idempotency key if ``--key`` is given), runs an embedded ``Worker`` until the
turn is saved, and prints one JSON object: the session id, its status, the
input types it waits for, and the lines the bot said in this turn (read from
the committed event feed). ``--store postgresql://...`` runs the same against
PostgreSQL (``pip install 'stageflow[postgres]'``); there, workers may as well
run as their own processes (``stageflow worker --store ... --stages stages.py``)
and the request only waits for the saved turn.

Exit status: 0 when the session waits or has completed, 1 when it ended
otherwise, 2 for a bad request (unknown or finished session, an input type it
does not wait for, a payload that does not fit the input's schema).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

import stageflow
from stageflow.store import SessionService, StoreError, Worker, open_store

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent


class BadRequestError(Exception):
    """A request this session cannot take."""


async def request(
    url: str, session_id: str | None, send: tuple[str, Any] | None, key: str | None
) -> dict[str, Any]:
    """Store one request, let an embedded worker run the turn, describe the outcome."""
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)
    store = open_store(url)
    service = SessionService(store, registry=registry, pipelines=[pipeline])
    try:
        seq: int | None = None
        if session_id is None:
            session_id, after = await service.start(pipeline, idempotency_key=key), 0
        else:
            assert send is not None
            before = await service.get(session_id)
            # Advisory (a running session's waiting_for may be stale): reject early.
            if not before.finished and send[0] not in before.waiting_for:
                raise BadRequestError(
                    f"session {session_id!r} does not wait for {send[0]!r} (it waits "
                    f"for {', '.join(sorted(before.waiting_for))})"
                )
            record = await service.send_input(session_id, send[0], send[1], idempotency_key=key)
            seq, after = record.seq, before.events_done
        async with anyio.create_task_group() as tg:
            worker = Worker(store, registry=registry, pipelines=[pipeline], poll=0.2)
            await tg.start(worker.run)
            try:
                stored = await service.wait(session_id, seq=seq, timeout=30)
            finally:
                worker.shutdown()
        events = await store.events(session_id, after=after)
    finally:
        await store.aclose()
    rejected = [e for e in events if e["type"] == "input_rejected"]
    if rejected:
        raise BadRequestError(f"the input was rejected: {rejected[0]['payload']}")
    return {
        "session_id": session_id,
        "status": stored.status,
        "waiting_for": sorted(stored.waiting_for),
        "said": [e["payload"]["text"] for e in events if e["type"] == "bot_said"],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, handle one request, print its outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///chat.db", help="the session store URL")
    parser.add_argument("--key", help="idempotency key of this request")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start a new conversation")
    send_parser = commands.add_parser("send", help="send one input to a waiting conversation")
    send_parser.add_argument("session_id")
    send_parser.add_argument("type", help="input type: user_name or user_message")
    send_parser.add_argument("payload", help="the input's payload, as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            reply = anyio.run(request, args.store, None, None, args.key, backend="trio")
        else:
            try:
                payload = json.loads(args.payload)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"the payload is not JSON: {exc}") from exc
            send = (args.type, payload)
            reply = anyio.run(request, args.store, args.session_id, send, args.key, backend="trio")
    except (BadRequestError, StoreError) as exc:
        print(f"service.py: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply["status"] in ("waiting", "completed") else 1


if __name__ == "__main__":
    sys.exit(main())
