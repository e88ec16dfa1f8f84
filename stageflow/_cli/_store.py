"""``stageflow worker`` and ``stageflow sessions ...``: the session store from a shell."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs

from stageflow._cli._common import (
    CommandError,
    ExitCode,
    Streams,
    dump_json,
    exit_codes_epilog,
    number,
    read_json_argument,
)
from stageflow._cli._registry import add_stage_options, read_pipeline, resolve_registry
from stageflow._errors import printable_text
from stageflow._guard import is_document_path
from stageflow._result import SessionStatus
from stageflow.store import (
    SessionService,
    SessionStore,
    StoredSession,
    Worker,
    open_store,
)
from stageflow.store._errors import hide_password

__all__ = ["add_store_parsers"]

T = TypeVar("T")

STORE_ENV = "STAGEFLOW_STORE"

# The oldest a purge may reach back, in days: a century (further would pass
# the first year a date can have).
_MAX_DAYS = 36_500

# The exit codes each command can return (its --help lists them). A worker
# stopped by Ctrl-C once it runs ends as by SIGTERM, with 0.
_WORKER_CODES = (ExitCode.OK, ExitCode.USAGE, ExitCode.OUTPUT_FAILED, ExitCode.INTERRUPTED)
_SESSIONS_CODES = (*_WORKER_CODES, ExitCode.BROKEN_PIPE)

# What a stored session's status can be: a typo in --status listed nothing.
_STATUSES = (*(status.value for status in SessionStatus), "poisoned")


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        required=STORE_ENV not in os.environ,
        metavar="URL",
        help=f"sqlite:///path.db or postgresql://user@host/db (default: ${STORE_ENV})",
    )
    parser.add_argument(
        "--schema", help="PostgreSQL schema of the tables (default: stageflow)", default=None
    )


def _open(args: argparse.Namespace, **options: Any) -> SessionStore:
    if args.schema is not None:
        if not args.store.startswith(("postgresql://", "postgres://")):
            raise CommandError(
                f"--schema {args.schema}: only a PostgreSQL store has schemas, and "
                f"--store {hide_password(args.store)} is not one; leave --schema out"
            )
        options["schema"] = args.schema
    return open_store(args.store, **options)


def check_store_exists(url: str, why: str) -> None:
    """Refuse an SQLite URL whose file does not exist (opening it would create it).

    Raises:
        CommandError: the file is missing; the message ends with ``why``.
    """
    rest = url[len("sqlite:///") :] if url.startswith("sqlite:///") else None
    if rest is None or rest == ":memory:":
        return
    if not Path(rest).exists():
        raise CommandError(f"--store {url}: no such SQLite file ({rest}); check the path ({why})")


def _run_with_store(
    args: argparse.Namespace,
    body: Callable[[SessionStore], Awaitable[T]],
    *,
    create: bool = False,
    **options: Any,
) -> T:
    """Open the store (an SQLite file must exist unless ``create``), run ``body``, close it."""
    if not create:
        check_store_exists(args.store, "sessions commands never create a store; a worker does")
        options["create"] = False

    async def main() -> T:
        store = _open(args, **options)
        try:
            return await body(store)
        finally:
            await store.aclose()

    return anyio.run(main, backend="trio")


def add_store_parsers(subparsers: Any) -> None:
    """Add ``worker`` and ``sessions`` to ``subparsers``."""
    p = subparsers.add_parser(
        "worker",
        help="run stored sessions: claim, run a turn, save, until SIGTERM",
        description=(
            "Claim due sessions from the store, run each until it waits or ends, and save it "
            "(fenced by its lease). SIGTERM or Ctrl-C stops claiming and waits up to "
            "--shutdown-grace seconds for the turns in flight; a second signal abandons them "
            "(their leases expire and another worker runs them again). Prints the worker's "
            "statistics as JSON when it stops, and exits 0 after SIGTERM, 130 after Ctrl-C."
        ),
        epilog=exit_codes_epilog(_WORKER_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store_option(p)
    p.add_argument(
        "--pipelines",
        metavar="DIR",
        help="pipeline files (.json, .yaml, .yml) to reuse by digest",
    )
    p.add_argument(
        "--concurrency",
        type=number(least=1, whole=True),
        default=32,
        help="turns in flight (default 32)",
    )
    p.add_argument(
        "--lease", type=number(least=0, above=True), default=30.0, help="lease seconds (default 30)"
    )
    p.add_argument(
        "--poll",
        type=number(least=0, above=True),
        default=1.0,
        help="longest idle wait (default 1 s)",
    )
    p.add_argument(
        "--queue",
        dest="queues",
        action="append",
        default=None,
        help="a queue to claim from (repeatable; default: the queue named default)",
    )
    p.add_argument(
        "--worker-id", default=None, help="the name in lease_owner (default: HOST:PID:RANDOM)"
    )
    p.add_argument(
        "--max-attempts",
        type=number(least=1, whole=True),
        default=5,
        help="failures before 'poisoned' (default 5)",
    )
    p.add_argument(
        "--shutdown-grace", type=number(least=0), default=10.0, help="seconds (default 10)"
    )
    p.add_argument(
        "--fetch-cooldown",
        type=number(least=0),
        default=0.1,
        metavar="SECONDS",
        help="after a wake-up whose claim found nothing (another worker took the session), "
        "wait this long (times 1 to 1.5) before the next wake-up's claim: damps the herd of "
        "idle workers one notification wakes; a claim after a finished turn never waits; "
        "0 turns it off (default 0.1)",
    )
    p.add_argument(
        "--poll-only", action="store_true", help="no NOTIFY (PgBouncer in transaction pooling)"
    )
    add_stage_options(p)
    p.set_defaults(handler=worker_command)

    p = subparsers.add_parser(
        "sessions",
        help="list, show, feed, cancel and purge stored sessions",
        description="Read and change the sessions of a store (see docs/scaleout.md).",
        epilog=exit_codes_epilog(_SESSIONS_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    action: dict[str, Any] = {
        "epilog": exit_codes_epilog(_SESSIONS_CODES),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }

    q = sub.add_parser(
        "list",
        help="sessions matching filters, oldest first (--newest: last updated first)",
        **action,
    )
    _add_store_option(q)
    q.add_argument("--status", choices=_STATUSES, help="only sessions with this status")
    q.add_argument("--pipeline", help="pipeline name")
    q.add_argument("--waiting-for", help="an input type")
    q.add_argument("--due", action="store_true", help="only sessions a worker may claim now")
    q.add_argument(
        "--limit", type=number(least=1, whole=True), default=100, help="most rows (default 100)"
    )
    q.add_argument(
        "--newest", action="store_true", help="the most recently updated first (default: oldest)"
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=list_command)

    q = sub.add_parser("show", help="one session's row (and its committed events)", **action)
    _add_store_option(q)
    q.add_argument("session_id", help="the id the session was started with")
    q.add_argument("--events", action="store_true", help="also the committed events")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=show_command)

    q = sub.add_parser("send", help="store an input for a session", **action)
    _add_store_option(q)
    q.add_argument("session_id", help="the id the session was started with")
    q.add_argument("type", help="the input type")
    q.add_argument("payload", help="JSON text or @FILE")
    q.add_argument("--key", help="idempotency key: a retry returns the original record")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=send_command)

    q = sub.add_parser("cancel", help="ask for a session to be cancelled", **action)
    _add_store_option(q)
    q.add_argument("session_id", help="the id the session was started with")
    q.add_argument(
        "--reason", default="cancelled", help="why, for the history (default: cancelled)"
    )
    q.add_argument("--key", help="idempotency key")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=cancel_command)

    q = sub.add_parser(
        "purge", help="delete old finished sessions and old consumed inputs", **action
    )
    _add_store_option(q)
    q.add_argument(
        "--finished-days", type=number(least=0, most=_MAX_DAYS), default=30.0, help="default 30"
    )
    q.add_argument(
        "--inputs-days", type=number(least=0, most=_MAX_DAYS), default=7.0, help="default 7"
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=purge_command)


# ----------------------------------------------------------------------- worker


def worker_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow worker``: run stored sessions until SIGTERM or Ctrl-C."""
    registry = resolve_registry(
        args.stages_modules, plugins=args.plugins, load_plugins=not args.no_plugins
    )
    if args.pipelines and not Path(args.pipelines).is_dir():
        # A typo ran the worker without them: every session rebuilt from its snapshot.
        raise CommandError(f"--pipelines {args.pipelines}: not a directory; check the path")
    pipelines = (
        [
            read_pipeline(str(p), registry)
            for p in sorted(Path(args.pipelines).iterdir())
            if is_document_path(p) and p.is_file()
        ]
        if args.pipelines
        else []
    )
    options: dict[str, Any] = {"notify": False} if args.poll_only else {}

    async def body(store: SessionStore) -> dict[str, Any]:
        await store.migrate()  # an unreachable store or a newer schema: its own error, now
        worker = Worker(
            store,
            registry=registry,
            pipelines=pipelines,
            concurrency=args.concurrency,
            lease=args.lease,
            poll=args.poll,
            queues=args.queues or ("default",),
            worker_id=args.worker_id,
            max_attempts=args.max_attempts,
            fetch_cooldown=args.fetch_cooldown,
            shutdown_grace=args.shutdown_grace,
        )
        async with anyio.create_task_group() as tg:

            async def on_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    task_status.started()
                    async for signum in signals:
                        if worker.stopping:
                            tg.cancel_scope.cancel()  # a second signal: abandon the turns
                        if signum == signal.SIGINT:
                            interrupted.append(signum)
                        worker.shutdown()

            # The signals are taken before the first claim: a SIGTERM from then
            # on stops the worker gently; before it, the worker holds no turn.
            await tg.start(on_signals)
            await worker.run()
            tg.cancel_scope.cancel()
        return {"worker_id": worker.worker_id, **attrs.asdict(worker.statistics())}

    if not args.store.startswith("postgres"):
        options = {}
    interrupted: list[int] = []  # Ctrl-C stopped it (SIGTERM is the ordinary stop)
    io.print(dump_json(_run_with_store(args, body, create=True, **options)))
    if interrupted:
        io.warn("interrupted")
        return ExitCode.INTERRUPTED
    return 0


# --------------------------------------------------------------------- sessions


def _row_line(row: StoredSession) -> str:
    waits = ",".join(sorted(row.waiting_for)) or "-"
    # One line, escaped: an id or a name (any text) may hold line breaks and escape sequences.
    return printable_text(f"{row.session_id}  {row.status:<9}  {row.pipeline}  waits for: {waits}")


def list_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow sessions list``."""

    async def body(store: SessionStore) -> list[StoredSession]:
        return await SessionService(store).list(
            status=args.status,
            pipeline=args.pipeline,
            waiting_for=args.waiting_for,
            due=args.due,
            limit=args.limit,
            newest=args.newest,
        )

    rows = _run_with_store(args, body)
    if args.json:
        io.print(dump_json([r.to_dict() for r in rows]))
    else:
        for row in rows:
            io.print(_row_line(row))
    return 0


def show_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow sessions show``."""

    async def body(store: SessionStore) -> dict[str, Any]:
        out = (await store.get(args.session_id)).to_dict()
        if args.events:
            out["events"] = await store.events(args.session_id, limit=100_000)
        return out

    out = _run_with_store(args, body)
    if args.json:
        io.print(dump_json(out))
    else:
        for key, value in out.items():
            if key != "events":
                # Values as JSON (null, ["user_name"]), as `run` prints them: not Python's repr.
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                io.print(f"{key}: {printable_text(text)}")
        for event in out.get("events", ()):
            line = f"  {event['seq']:>4}  {event['type']}  {event.get('node_id') or ''}"
            io.print(printable_text(line))
    return 0


def _stored_line(what: str, record: Mapping[str, Any], key: str | None) -> str:
    """What ``send`` and ``cancel`` print: stored, or stored before under the same key."""
    if record["duplicate"]:
        return printable_text(
            f"{what} {record['seq']} was stored before with key {key!r}; nothing new stored"
        )
    return f"{what} {record['seq']} stored"


def _check_key(key: str | None) -> None:
    """Refuse ``--key ''`` in the command line's terms (the store's error speaks of ``None``)."""
    if key == "":
        raise CommandError(
            "--key '': an empty idempotency key would make every call a retry of the first, "
            "and store nothing; give a non-empty key, or leave out --key"
        )


def send_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow sessions send``."""
    _check_key(args.key)
    payload = read_json_argument(args.payload, option="PAYLOAD")

    async def body(store: SessionStore) -> tuple[dict[str, Any], tuple[str, ...]]:
        record = await SessionService(store).send_input(
            args.session_id, args.type, payload, idempotency_key=args.key
        )
        return attrs.asdict(record), tuple((await store.get(args.session_id)).waiting_for)

    out, waits = _run_with_store(args, body)
    io.print(dump_json(out) if args.json else _stored_line("input", out, args.key))
    if waits and args.type not in waits and not out["duplicate"]:
        # Kept for a later wait, as it should be when sent early; but a
        # misspelt type is kept so too, and the session goes on waiting.
        io.err.write(
            printable_text(
                f"stageflow: note: session {args.session_id!r} waits for "
                f"{', '.join(map(repr, waits))}, not {args.type!r}; the input is kept for a "
                f"stage that waits for {args.type!r} (check the type if that is not meant)"
            )
            + "\n"
        )
    return 0


def cancel_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow sessions cancel``."""
    _check_key(args.key)

    async def body(store: SessionStore) -> dict[str, Any]:
        record = await SessionService(store).cancel(
            args.session_id, args.reason, idempotency_key=args.key
        )
        return attrs.asdict(record)

    out = _run_with_store(args, body)
    io.print(dump_json(out) if args.json else _stored_line("cancel request", out, args.key))
    return 0


def purge_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow sessions purge``."""
    now = datetime.datetime.now(datetime.UTC)

    async def body(store: SessionStore) -> int:
        return await store.purge(
            finished_before=now - datetime.timedelta(days=args.finished_days),
            inputs_before=now - datetime.timedelta(days=args.inputs_days),
        )

    gone = _run_with_store(args, body)
    io.print(dump_json({"deleted": gone}) if args.json else f"{gone} rows deleted")
    return 0
