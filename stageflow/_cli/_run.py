"""``stageflow run``: run a pipeline on trio, feed scripted inputs, print the outcome.

Scripted inputs (``--input TYPE=JSON``) are sent only when the session waits
for their type (a ``waiting_for_input`` event), per type in the order given,
once every task of the session is blocked: so every stage waiting for that
type at that moment receives the same input (broadcast), deterministically.
When the session waits (without a timeout) for a type that has no scripted
input left, the run is cancelled (``session.cancel(reason)``) and the
command exits with :attr:`ExitCode.NEEDS_INPUT`: the CLI is the only
sender, so nothing else could ever arrive. A wait with a timeout is left to
time out, since the pipeline may route that timeout somewhere.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import anyio
import attrs

from stageflow._cli._common import (
    CommandError,
    ExitCode,
    Streams,
    add_logging_options,
    dump_json,
    exit_codes_epilog,
    read_json_argument,
)
from stageflow._cli._registry import add_stage_options, read_pipeline, resolve_registry
from stageflow._engine._backend import run_in_virtual_time
from stageflow._errors import StageflowError, printable_text
from stageflow._events import Event
from stageflow._json import a_json_type, thaw
from stageflow._result import SessionResult
from stageflow._session import Session, stage_entries
from stageflow._specs import json_text

__all__ = [
    "ScriptedInputs",
    "Stop",
    "View",
    "add_run_parser",
    "drive_session",
    "run_command",
]

_STATUS_EXIT: dict[str, ExitCode] = {
    "completed": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
    "timed_out": ExitCode.CANCELLED,
}


@attrs.frozen
class Stop:
    """Why the CLI cancelled the session, and the exit code that says so."""

    reason: str
    exit_code: ExitCode


@attrs.define
class ScriptedInputs:
    """The ``--input`` values, per input type, in the order given.

    Attributes:
        queues: input type -> payloads not sent yet.
        sent: ``(type, delivered)`` for each input sent, in order.
        stop: set when the CLI cancelled the session.
    """

    queues: dict[str, deque[Any]] = attrs.field(factory=dict)
    sent: list[tuple[str, int]] = attrs.field(factory=list)
    stop: Stop | None = None
    warn: Callable[[str], None] = attrs.field(default=lambda _: None, repr=False)
    schemas: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """Input type -> the payload schema a stage declares for it, for the hint."""
    virtual_time: bool = False
    """Whether the run is in virtual time (a wait's timeout then passes at once)."""

    @classmethod
    def parse(cls, values: Sequence[str]) -> ScriptedInputs:
        """Parse ``TYPE=JSON`` (or ``TYPE=@FILE``) values.

        Raises:
            CommandError: a value has no ``=``, an empty type, or bad JSON.
        """
        script = cls()
        for value in values:
            input_type, sep, text = value.partition("=")
            input_type = input_type.strip()
            if not sep or not input_type:
                raise CommandError(
                    f"--input {value!r}: expected TYPE=JSON, e.g. --input approval="
                    "'{\"ok\": true}' or --input approval=@answer.json"
                )
            payload = read_json_argument(text, option=f"--input {input_type}")
            script.queues.setdefault(input_type, deque()).append(payload)
        return script

    def unused(self) -> dict[str, int]:
        """Input type -> how many scripted inputs were never sent."""
        return {t: len(q) for t, q in self.queues.items() if q}

    def on_wait(self, session: Session, input_type: str, timeout: float | None = None) -> None:
        """React to the session waiting for ``input_type``: send the next scripted one.

        With no scripted input left, a wait without ``timeout`` would never
        end: the session is cancelled. A wait with a timeout is left to time
        out, as the pipeline may handle that.
        """
        if self.stop is not None or input_type not in session.waiting_for():
            return  # already cancelling, or an earlier input (broadcast) served this wait
        queue = self.queues.get(input_type)
        unused = [t for t, q in self.queues.items() if q and t != input_type]
        near = difflib.get_close_matches(input_type, unused, n=1) if not queue else []
        if near:
            # A scripted type one typo away: waiting out the timeout (or running on
            # without it) would only end in "scripted inputs never asked for".
            self._cancel(
                session,
                f"the session waits for input {input_type!r}, which no scripted input has "
                f"left, while --input {near[0]} was never asked for: did you mean --input "
                f"{input_type}=...? The run is cancelled",
                ExitCode.NEEDS_INPUT,
            )
            return
        if not queue and timeout is not None:
            # Without virtual time that is real time: say how not to wait for it.
            hint = (
                ""
                if self.virtual_time
                else f" (send one with --input {input_type}=JSON, or add --virtual-time to "
                "reach the timeout at once)"
            )
            self.warn(
                f"the session waits for input {input_type!r} and no scripted input of that type "
                f"is left; the wait times out after {timeout:g} s{hint}"
            )
            return
        if not queue:
            given = len([s for s in self.sent if s[0] == input_type])
            schema = self.schemas.get(input_type)
            shape = f" (a payload matching {json_text(schema, 120)})" if schema else ""
            self._cancel(
                session,
                f"the session waits for input {input_type!r} and no scripted input of that "
                f"type is left ({given} given); nothing else can send one, so the run is "
                f"cancelled. Send it with --input {input_type}=JSON{shape}, or "
                f"--input {input_type}=@FILE",
                ExitCode.NEEDS_INPUT,
            )
            return
        payload = queue.popleft()
        try:
            receipt = session.send_input(input_type, payload)
        except StageflowError as exc:
            self._cancel(
                session,
                f"scripted input {input_type!r} #{len(self.sent) + 1} was rejected: {exc}",
                ExitCode.USAGE,
            )
            return
        self.sent.append((input_type, receipt.delivered))

    def _cancel(self, session: Session, reason: str, code: ExitCode) -> None:
        self.stop = Stop(reason, code)
        self.warn(reason)  # at once: the result is printed only when the run has ended
        session.cancel(reason)


class View(Protocol):
    """What :func:`drive_session` needs from a live view (``_live.LiveView``)."""

    def on_event(self, event: Event) -> None:
        """Take one session event."""

    def open(self) -> AbstractAsyncContextManager[object]:
        """Show the view while the ``async with`` body runs."""


async def drive_session(
    session: Session, script: ScriptedInputs, view: View | None = None
) -> SessionResult:
    """Run ``session`` to its end, sending scripted inputs as it waits for them.

    Args:
        session: a session that has not run yet.
        script: the scripted inputs; ``script.stop`` tells whether the CLI
            cancelled the run.
        view: a live view to feed with the events (``LiveView``), or ``None``.
    """
    stream = session.events(buffer=0)  # unbounded: no wait may be missed
    outcome: list[SessionResult] = []
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            outcome.append(await session.run())
        except Exception as exc:  # an engine bug: re-raised below, outside the task group
            failure.append(exc)

    async def consume() -> None:
        try:
            async for event in stream:
                if view is not None:
                    view.on_event(event)
                if event.type == "waiting_for_input":
                    # Answer once the session is at a standstill: every stage waiting for
                    # this type by then gets the same input (broadcast), whatever the
                    # scheduling order of the branches was.
                    await anyio.wait_all_tasks_blocked()
                    timeout = event.payload.get("timeout")
                    script.on_wait(
                        session,
                        str(event.payload.get("input_type")),
                        float(timeout) if isinstance(timeout, int | float) else None,
                    )
        finally:
            await stream.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        if view is None:
            await consume()
        else:
            async with view.open():
                await consume()
    if failure:
        raise failure[0]
    return outcome[0]


def _check_trace_options(args: argparse.Namespace) -> None:
    """Refuse options that cannot go together, before anything is loaded.

    Raises:
        CommandError: ``--trace-json`` without ``--trace console`` (it would do nothing).
    """
    if args.trace_json and args.trace != "console":
        given = f"--trace {args.trace}" if args.trace else "no --trace"
        raise CommandError(
            f"--trace-json prints the spans of --trace console as JSON, and {given} prints "
            "none; add --trace console, or leave --trace-json out"
        )


def _configure_tracing(args: argparse.Namespace) -> Callable[[], None]:
    """Set up tracing as asked; return what to call when the run is over."""
    if args.trace is None:
        return lambda: None
    # Imported here: the OpenTelemetry SDK is only loaded when tracing is asked for.
    from stageflow import tracing

    try:
        if args.trace == "console":
            # One line per span for a person; --trace-json for OpenTelemetry's full JSON.
            console_format: tracing.ConsoleFormat = "json" if args.trace_json else "lines"
            provider = tracing.configure(exporter="console", console_format=console_format)
        else:
            provider = tracing.configure(exporter=args.trace)
    except tracing.TracingSetupError as exc:
        if isinstance(exc.__cause__, ImportError):  # the exporter package is not installed
            raise CommandError(str(exc), exit_code=ExitCode.UNAVAILABLE) from exc
        raise
    return provider.shutdown  # flushes the spans still buffered


def _print_text(
    result: SessionResult, session: Session, args: argparse.Namespace, io: Streams
) -> None:
    def show(text: str) -> None:
        # One line each, escaped: an error message (a stage's exception) or a string
        # value may hold line breaks and escape sequences a terminal would act on.
        io.print(printable_text(text))

    data = result.to_dict()
    steps = sum(1 for e in result.history if e.type == "node_started")
    name = session.pipeline.name
    show(f"{data['status']}: {name} ({steps} node runs, session {session.session_id})")
    if data["result"] is not None:
        show(f"result: {json.dumps(data['result'], ensure_ascii=False)}")
    if data["artifacts"]:
        show("artifacts:")
        for path, value in data["artifacts"].items():
            show(f"  {path}: {json.dumps(value, ensure_ascii=False)}")
    if data["error"] is not None:
        show(f"error: {data['error']['type']}: {data['error']['message']}")
        for cause in data["error"].get("causes", ()):
            show(f"  caused by {cause['type']}: {cause['message']}")
    if args.history:
        show(f"history ({len(result.history)} events):")
        show(f"  {'seq':>4} {'type':<20} {'node':<16} {'branch':<20} payload")
        for event in result.history:
            payload = json.dumps(dict(event.payload), ensure_ascii=False)
            node, branch = event.node_id or "-", event.path or "-"
            show(f"  {event.seq:>4} {event.type:<20} {node:<16} {branch:<20} {payload}")


def _make_view(args: argparse.Namespace, io: Streams, title: str) -> View | None:
    # Not in virtual time: the view's own redraw timer would be the next one the
    # clock jumps to, so a day of sleep passed in steps of one redraw (minutes).
    if args.json or args.no_live or args.virtual_time:
        return None
    if io.out is None or not io.out.isatty():
        return None
    from rich.console import Console

    from stageflow._cli._live import LiveView

    return LiveView(Console(file=io.out), title)


def _check_scripted_types(session: Session, script: ScriptedInputs) -> None:
    """Refuse an ``--input`` type no wait of the pipeline can accept (a typo, most often).

    It would never be asked for: the run would wait out the timeout of the
    wait that was meant, then report it unused.

    Raises:
        CommandError: such a type, with the accepted ones and the nearest.
    """
    accepted = session.accepted_inputs()
    if accepted is None:
        return  # a stage that declares no inputs may wait for any type
    for input_type in script.queues:
        if input_type in accepted:
            continue
        near = difflib.get_close_matches(input_type, accepted, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise CommandError(
            f"--input {input_type}: no wait of this pipeline accepts input type "
            f"{input_type!r}{hint}; it accepts {', '.join(map(repr, accepted)) or 'no inputs'}"
        )


# History events that say the run went on past something wrong (validate_events "warn").
_WARNINGS: Final = ("contract_violation", "event_validation_failed", "input_unexpected")


def _warn_of(event: Event, io: Streams) -> None:
    """Tell standard error of a ``warn``-mode event: the run goes on, but not in silence."""
    if event.type in _WARNINGS:
        where = f"node {event.node_id!r}: " if event.node_id else ""
        io.warn(f"warning: {where}{event.type} {json.dumps(dict(event.payload))}")


def run_command(args: argparse.Namespace, io: Streams) -> int:
    """``stageflow run``: see the module docstring."""
    _check_trace_options(args)  # a usage error is told before the stages are imported
    registry = resolve_registry(
        args.stages_modules, plugins=args.plugins, load_plugins=not args.no_plugins
    )
    pipeline = read_pipeline(args.pipeline, registry)
    payload = {} if args.payload is None else read_json_argument(args.payload, option="--payload")
    if not isinstance(payload, dict):
        raise CommandError(
            f"--payload must be a JSON object (the initial context), got {a_json_type(payload)}; "
            'e.g. --payload \'{"user_id": "u1"}\''
        )
    script = ScriptedInputs.parse(args.inputs)
    script.warn = io.warn
    script.virtual_time = args.virtual_time
    # The entries of the pipeline's own nodes, as the session checks inputs with: a
    # WaitStage node declares its type and config.input_schema there, not in the catalogue.
    script.schemas = {
        spec.type: thaw(spec.schema)
        for entry in stage_entries(pipeline, pipeline.registry, given=False).values()
        for spec in entry.spec.allowed_inputs
        if spec.schema is not None
    }
    # Tracing first: a session takes its tracer provider when it is made.
    shutdown = _configure_tracing(args)
    try:
        session = Session(pipeline, payload=payload)  # the pipeline carries the registry
        _check_scripted_types(session, script)
        session.subscribe(lambda event: _warn_of(event, io))
        view = _make_view(args, io, pipeline.name)
        if args.virtual_time:
            result = run_in_virtual_time(drive_session, session, script, view)
        else:
            result = anyio.run(drive_session, session, script, view, backend="trio")
    finally:
        shutdown()
    if args.json:
        io.print(dump_json(result.to_dict(history=args.history)))
    else:
        _print_text(result, session, args, io)
    unused = script.unused()
    if unused:
        listed = ", ".join(f"{t} ({n})" for t, n in unused.items())
        io.warn(f"scripted inputs never asked for: {listed}")
    if script.stop is not None and result.status.value == "cancelled":
        return script.stop.exit_code
    return _STATUS_EXIT.get(result.status.value, ExitCode.FAILED)


def add_run_parser(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a pipeline and print its result",
        description=(
            "Run PIPELINE on trio with an initial payload, send scripted inputs when the "
            "session waits for them, and print the outcome. On a terminal, the active nodes "
            "are shown while the run lasts."
        ),
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pipeline",
        metavar="PIPELINE",
        help="pipeline file (.json; .yaml or .yml, in any case, is YAML)",
    )
    parser.add_argument(
        "--payload",
        metavar="JSON|@FILE",
        help="the initial context: a JSON object, or @FILE (JSON or YAML); default {}",
    )
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="TYPE=JSON",
        help=(
            "an input to send when the session waits for TYPE (repeatable; per type in the "
            "order given); the value may be @FILE"
        ),
    )
    parser.add_argument(
        "--trace",
        choices=("otlp", "console", "none"),
        help="record a span per node and export it to an OTLP collector (OTEL_* variables) or "
        "to standard error, one line per span, or not at all (none: trace ids only); "
        "default: no tracing",
    )
    parser.add_argument(
        "--trace-json",
        action="store_true",
        help="with --trace console, print each span as OpenTelemetry's full JSON",
    )
    parser.add_argument(
        "--virtual-time",
        action="store_true",
        help=(
            "run timers in virtual time, as stageflow test does: sleeps, retry delays and "
            "timeouts pass at once whenever every task waits (trio's MockClock)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--history", action="store_true", help="print the event history with the result"
    )
    parser.add_argument(
        "--no-live", action="store_true", help="no live view of active nodes on a terminal"
    )
    add_stage_options(parser)
    add_logging_options(parser)
    parser.set_defaults(handler=run_command)
