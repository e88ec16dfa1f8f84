"""One request to the durable chat, through the session store's service and a worker.

    cd examples/durable-chat   # from the repository, after make test or make demo
    ../../.venv/bin/python run.py start
    ../../.venv/bin/python run.py send SESSION_ID user_name '{"name": "Ada"}'
    ../../.venv/bin/python run.py send SESSION_ID user_message '{"text": "hi"}'
    ../../.venv/bin/python run.py waiting

The store is ``sqlite:///chat.db`` unless ``--store URL`` (``--db FILE`` is
short for ``--store sqlite:///FILE``) says otherwise; ``--store
postgresql://...`` runs the same against PostgreSQL (``pip install
'stageflow[postgres]'``).

Every command is a fresh process, as a request to a web service would be. It
stores the request with ``SessionService`` (``start`` or ``send_input``, with
an idempotency key if ``--key`` is given), lets a ``Worker`` run the turn, and
prints one JSON object: the session id, its status, the input types it waits
for, the lines the bot said in this turn (read from the committed event
feed), and the result and artifacts once the session has completed. By
default the request runs an embedded worker until its turn is saved; with
``--no-worker`` it only waits, and workers run as their own processes
(``stageflow worker --store URL --stages stages.py``). ``waiting`` lists the
sessions that wait.

Exit status: 0 when the session waits or has completed, 1 when it ended
otherwise (failed, cancelled, timed out) or when no worker saved its turn
within ``--timeout`` seconds (the request is stored: a worker that runs
later takes it; start one), 2 for a bad request (unknown or
finished session, malformed JSON, an input the session does not wait for or
whose payload does not fit the input's schema) or a store that cannot be
opened. A bad request stores nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import anyio

import stageflow
from stageflow.store import (
    SessionNotFoundError,
    SessionService,
    StoredSession,
    StoreError,
    Worker,
    open_store,
)

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent


class BadRequestError(Exception):
    """A request this session cannot take; nothing was stored."""


@functools.cache
def load_pipeline() -> stageflow.Pipeline:
    """The durable chat pipeline (loaded once per process, as a service would)."""
    return stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)


def open_service(url: str) -> SessionService:
    """A service on the store at ``url`` (connections open on first use)."""
    return SessionService(open_store(url), registry=registry, pipelines=[load_pipeline()])


def embedded_worker(service: SessionService) -> Worker:
    """A worker for this process, on the service's store.

    No fetch cooldown: it damps a herd of idle workers woken together, and a
    lone embedded worker has none; with it, each turn would wait up to 150 ms
    after the worker's last empty claim.
    """
    return Worker(
        service.store,
        registry=registry,
        pipelines=[load_pipeline()],
        poll=0.2,
        fetch_cooldown=0.0,
    )


async def read(service: SessionService, session_id: str) -> StoredSession:
    """The stored session. Raises BadRequestError for an unknown id."""
    try:
        return await service.get(session_id)
    except SessionNotFoundError as exc:
        raise BadRequestError(
            f"no session {session_id!r} in the store; start one first, or check the id "
            "(it is printed by the request that started the session)"
        ) from exc


async def submit(
    service: SessionService, stored: StoredSession, type: str, payload: Any, key: str | None
) -> int:
    """Check one input of ``type`` against the stored session, then store it; its ``seq``.

    The checks are advisory (a turn in flight may change the session) and
    store nothing: the session must wait for ``type``, and the payload must
    fit the input's schema, which is tried on a restored copy of the session
    (never saved). The worker's own check at delivery is the one that counts:
    a payload it rejects is recorded in the history.

    Raises:
        BadRequestError: the session takes no more input, does not wait for
            ``type``, or the payload does not fit.
    """
    session_id = stored.session_id
    if stored.finished or not stored.waiting_for:
        raise BadRequestError(
            f"session {session_id!r} is {stored.status} and takes no more input; "
            "start a new session"
        )
    if type not in stored.waiting_for:
        raise BadRequestError(
            f"session {session_id!r} does not wait for {type!r} (it waits for "
            f"{', '.join(stored.waiting_for)}); send one of the input types it waits for"
        )
    copy = stageflow.Session.from_dict(
        await service.store.load(session_id), registry=registry, pipeline=load_pipeline()
    )
    try:
        copy.send_input(type, payload)
    except stageflow.InputRejectedError as exc:
        raise BadRequestError(str(exc)) from exc
    record = await service.send_input(session_id, type, payload, idempotency_key=key)
    return record.seq


async def describe(service: SessionService, stored: StoredSession, *, after: int) -> dict[str, Any]:
    """The reply: status, awaited inputs, the bot's lines after event ``after``, the outcome."""
    events = await service.store.events(stored.session_id, after=after, limit=100_000)
    reply: dict[str, Any] = {
        "session_id": stored.session_id,
        "status": stored.status,
        "waiting_for": sorted(stored.waiting_for),
        "said": [e["payload"]["text"] for e in events if e["type"] == "bot_said"],
    }
    if stored.finished:
        result = (await service.store.load(stored.session_id))["outcome"] or {}
        if stored.status == "completed":
            reply["result"] = result.get("result")
            reply["artifacts"] = result.get("artifacts")
        elif result.get("error") is not None:
            reply["error"] = result["error"]
    return reply


async def start(
    service: SessionService, key: str | None = None, *, timeout: float = 30
) -> dict[str, Any]:
    """Start a conversation and describe its first turn (a worker must be running)."""
    session_id = await service.start(load_pipeline(), idempotency_key=key)
    stored = await service.wait(session_id, timeout=timeout)
    return await describe(service, stored, after=0)


async def send(
    service: SessionService,
    session_id: str,
    type: str,
    payload: Any,
    key: str | None = None,
    *,
    timeout: float = 30,
) -> dict[str, Any]:
    """Send one input and describe its turn (a worker must be running).

    Raises:
        BadRequestError: see :func:`read` and :func:`submit`.
    """
    before = await read(service, session_id)
    seq = await submit(service, before, type, payload, key)
    stored = await service.wait(session_id, seq=seq, timeout=timeout)
    return await describe(service, stored, after=before.events_done)


async def waiting(service: SessionService) -> dict[str, Any]:
    """The sessions that wait for the user, oldest first."""
    rows = await service.list(status="waiting", limit=10_000)
    return {
        "waiting": [
            {
                "session_id": s.session_id,
                "waiting_for": list(s.waiting_for),
                "since": s.updated_at.isoformat(),
            }
            for s in rows
            if s.waiting_for
        ]
    }


async def handle(
    service: SessionService, args: argparse.Namespace, payload: Any
) -> dict[str, Any] | BadRequestError:
    """One command; a bad request is returned, not raised (it may cross a task group)."""
    try:
        if args.command == "waiting":
            return await waiting(service)
        if args.command == "start":
            return await start(service, args.key, timeout=args.timeout)
        return await send(
            service, args.session_id, args.type, payload, args.key, timeout=args.timeout
        )
    except BadRequestError as exc:
        return exc


async def request(args: argparse.Namespace, payload: Any) -> dict[str, Any]:
    """Handle one command on a fresh service (and, unless ``--no-worker``, a worker)."""
    service = open_service(f"sqlite:///{args.db}" if args.db else args.store)
    try:
        if args.no_worker or args.command == "waiting":
            reply = await handle(service, args, payload)
        else:
            async with anyio.create_task_group() as tg:
                worker = embedded_worker(service)
                await tg.start(worker.run)
                try:
                    reply = await handle(service, args, payload)
                finally:
                    worker.shutdown()
    finally:
        await service.store.aclose()
    if isinstance(reply, BadRequestError):
        raise reply
    return reply


def sole_error(error: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups; else ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def seconds(text: str) -> float:
    """A ``--timeout``: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, handle one request, print its outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///chat.db", help="the session store URL")
    parser.add_argument("--db", type=Path, help="a SQLite file: --store sqlite:///DB")
    parser.add_argument("--key", help="idempotency key of this request (start, send)")
    parser.add_argument(
        "--no-worker", action="store_true", help="only wait: workers run as their own processes"
    )
    parser.add_argument(
        "--timeout", type=seconds, default=30.0, help="seconds to wait for a turn (default 30)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start a new conversation")
    send_parser = commands.add_parser("send", help="send one input to a waiting conversation")
    send_parser.add_argument("session_id")
    send_parser.add_argument("type", help="input type: user_name or user_message")
    send_parser.add_argument("payload", help="the input's payload, as JSON")
    commands.add_parser("waiting", help="list the conversations that wait")
    args = parser.parse_args(argv)
    try:
        payload = None
        if args.command == "send":
            try:
                payload = json.loads(args.payload)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"the payload is not JSON: {exc}") from exc
        reply = anyio.run(request, args, payload, backend="trio")
    except (BadRequestError, StoreError) as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        # No worker saved the turn in time (with --no-worker: none runs).
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # On trio an error of the embedded worker (a store that cannot be
        # opened), or the wait's timeout next to it, leaves the task group
        # wrapped in a group, even alone.
        error = sole_error(group)
        if not isinstance(error, StoreError | TimeoutError):
            raise
        print(f"run.py: {error}", file=sys.stderr)
        return 2 if isinstance(error, StoreError) else 1
    print(json.dumps(reply, ensure_ascii=False))
    ended_badly = reply.get("status") not in (None, "waiting", "completed")
    return 1 if ended_badly else 0


if __name__ == "__main__":
    sys.exit(main())
