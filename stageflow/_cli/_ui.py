"""``stageflow ui``: serve the web inspector (needs the ``ui`` extra)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from pathlib import Path
from typing import Any

import anyio

from stageflow._cli._common import CommandError, ExitCode, Streams, exit_codes_epilog, number
from stageflow._cli._registry import add_stage_options, resolve_registry
from stageflow._cli._store import check_store_exists

__all__ = ["add_ui_parser"]

# Loopback names: bound to one of them, the inspector answers requests naming only these.
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

_DESCRIPTION = """\
Serve a web inspector for sessions and pipelines, bound to 127.0.0.1 by default.

Sessions come from a store (--store, or $STAGEFLOW_STORE) or from SNAPSHOT
files (a Session.to_dict() JSON file, or a directory of them); pipelines from
--pipelines DIR. Pages: the sessions (filters, live updates), a session (its
graph with each node's state, history, context, backlog, error, an input
form checked against the declared schema), a pipeline (graph, node details,
problems, coverage from --coverage). Read-only unless --allow-actions.
"""


def ui_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow ui``: serve until Ctrl-C or SIGTERM."""
    try:
        from stageflow import ui
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"stageflow ui needs {exc.name}, which is not installed; "
            "install the inspector with pip install 'stageflow[ui]'",
            exit_code=ExitCode.UNAVAILABLE,
        ) from exc
    from stageflow.store import open_store

    if args.store and args.snapshot:
        raise CommandError("give either --store or SNAPSHOT files, not both")
    if not args.snapshot and not args.store:
        args.store = os.environ.get("STAGEFLOW_STORE")
    store = None
    if args.store:
        check_store_exists(args.store, "the inspector never creates a store")
        store = open_store(args.store, create=False)
    snapshots = Path(args.snapshot) if args.snapshot else None
    if snapshots is not None and not snapshots.exists():
        raise CommandError(f"SNAPSHOT {args.snapshot}: no such file or directory; check the path")
    pipelines = Path(args.pipelines) if args.pipelines else None
    if pipelines is not None and not pipelines.is_dir():
        raise CommandError(f"--pipelines {args.pipelines}: not a directory; check the path")
    if store is None and snapshots is None and pipelines is None:
        # Every page would say "cannot show this": say it once, before serving.
        raise CommandError(
            "nothing to show: give --store URL (or set $STAGEFLOW_STORE), a SNAPSHOT "
            "file or directory, or --pipelines DIR"
        )
    registry = (
        resolve_registry(
            args.stages_modules, plugins=args.plugins, load_plugins=not args.no_plugins
        )
        if args.stages_modules or args.plugins
        else None
    )
    config = ui.InspectorConfig(
        store=store,
        snapshots=snapshots,
        pipelines=pipelines,
        registry=registry,
        jaeger=args.jaeger,
        allow_actions=args.allow_actions,
        redact=tuple(args.redact),
        coverage=Path(args.coverage) if args.coverage else None,
        refresh=args.refresh,
        allowed_hosts=_LOOPBACK if args.host in _LOOPBACK else None,
    )
    try:
        app = ui.create_app(config)
    except ui.InspectorError as exc:
        raise CommandError(str(exc)) from exc
    if args.host not in _LOOPBACK:
        io.warn(
            f"serving on {args.host}: anyone who reaches this address sees the sessions"
            + (" and can act on them" if args.allow_actions else "")
        )
    _check_address(args.host, args.port)
    if args.port:
        # An IPv6 address is bracketed in a URL (http://[::1]:8080/).
        shown = f"[{args.host}]" if ":" in args.host and args.host[0] != "[" else args.host
        io.warn(f"inspector on http://{shown}:{args.port}/ (Ctrl-C stops it)")
    else:
        io.warn(f"inspector on {args.host}, on a free port: the 'Running on' line names it")
    failed: list[OSError] = []
    interrupted = False

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            stop = anyio.Event()

            async def on_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                # Ctrl-C is taken here too: as a KeyboardInterrupt it went into
                # the server, which took it for a stop and returned (exit 0).
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    task_status.started()
                    async for signum in signals:
                        if stop.is_set():
                            tg.cancel_scope.cancel()  # a second signal: stop waiting
                        interrupted = interrupted or signum == signal.SIGINT
                        stop.set()

            await tg.start(on_signals)
            try:
                await ui.serve(app, args.host, args.port, shutdown_trigger=stop.wait)
            except* OSError as group:  # the address cannot be bound (before anything served)
                failed.extend(_os_errors(group))
            tg.cancel_scope.cancel()

    anyio.run(main, backend="trio")
    if failed:  # taken between the check and the server's own bind
        raise _cannot_listen(args.host, args.port, failed[0])
    if interrupted:
        io.warn("interrupted")
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def _cannot_listen(host: str, port: int, exc: OSError) -> CommandError:
    return CommandError(
        f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}; pick a "
        "free port with --port (or stop what listens on it), or an address of this "
        "machine with --host"
    )


def _check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once, as the server will, to report a port in use before serving.

    Raises:
        CommandError: the address cannot be bound (in use, not this machine's, no right).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Hypercorn does
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from exc


def _os_errors(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    """The ``OSError``s of a (nested) exception group, in order."""
    found: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_os_errors(exc))
        else:
            found.append(exc)
    return found


def add_ui_parser(subparsers: Any) -> None:
    """Add ``ui`` to ``subparsers``."""
    p = subparsers.add_parser(
        "ui",
        help="serve a web inspector for sessions and pipelines",
        description=_DESCRIPTION,
        epilog=exit_codes_epilog(
            (ExitCode.OK, ExitCode.USAGE, ExitCode.UNAVAILABLE, ExitCode.INTERRUPTED)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "snapshot", nargs="?", metavar="SNAPSHOT", help="a snapshot file or a directory of them"
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///path.db or postgresql://user@host/db (default: $STAGEFLOW_STORE, "
        "unless SNAPSHOT is given)",
    )
    p.add_argument("--pipelines", metavar="DIR", help="pipeline files for the pipeline pages")
    p.add_argument("--jaeger", metavar="URL", help="Jaeger UI base URL: events link to spans")
    p.add_argument("--coverage", metavar="REPORT", help="a 'stageflow test --json' report to draw")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=number(least=0, most=65535, whole=True),
        default=8080,
        help="port, 0 to 65535; 0 picks a free one (default 8080)",
    )
    p.add_argument(
        "--allow-actions", action="store_true", help="let the pages send inputs and cancel"
    )
    p.add_argument(
        "--redact",
        action="append",
        default=[],
        metavar="PATTERN",
        help="hide values whose path matches (fnmatch, e.g. '*password', 'secrets.*'); "
        "repeatable; a pipeline adds its own in metadata.redact",
    )
    p.add_argument(
        "--refresh",
        type=number(least=0, above=True),
        default=1.0,
        metavar="SECONDS",
        help="seconds between live checks, above 0 (default 1)",
    )
    add_stage_options(p)
    p.set_defaults(handler=ui_command)
