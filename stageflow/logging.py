"""Configure structlog for an application that runs stageflow.

stageflow logs through structlog as a library does: it asks for loggers
(``structlog.get_logger("stageflow.session")``) and never configures logging
itself, on import or otherwise. Its per-node ``node.started`` /
``node.finished`` lines are written only when the application has configured
structlog (``structlog.is_configured()``), checked once at the start of each
run, so an application that never configures logging sees no output from
stageflow at all.

:func:`configure` is the one-call set-up for applications without their own
(the CLI uses it)::

    import stageflow.logging

    stageflow.logging.configure()                   # JSON lines on standard error
    stageflow.logging.configure(format="console")   # aligned, human-readable lines

Each line carries an ISO 8601 UTC ``timestamp``, the ``level``, the ``logger``
name, the ``event``, every key bound to the logger (``session_id``,
``node_id``, ...) and, inside an OpenTelemetry span, its ``trace_id`` and
``span_id`` (see :func:`add_otel_context`). Records from the standard
``logging`` module (other libraries, the OpenTelemetry SDK) go through the same
renderer, so the output is one format throughout.

Applications with their own structlog set-up keep it and can add
:func:`add_otel_context` to their processor chain.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any, Final, Literal, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

from stageflow._errors import LoggingSetupError, error_traceback, printable_text, shown_text
from stageflow._json import a_python_type

__all__ = [
    "Format",
    "LoggingSetupError",
    "add_otel_context",
    "configure",
    "event_first",
]

Format = Literal["json", "console"]
"""The output formats of :func:`configure`."""

_FORMATS: Final = ("json", "console")
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_otel_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Add the current OpenTelemetry span's ids to a log line (structlog processor).

    Inside a span with a valid context, sets ``trace_id`` (32 lowercase hex
    digits) and ``span_id`` (16), the same spellings as in Jaeger, the OTLP
    JSON encoding and stageflow's events. A non-recording span that carries a
    valid context (a trace that is not sampled here, or a remote parent) still
    counts: its ids join the line to the rest of the trace. Outside any span
    nothing is added, and ids already bound to the logger are kept.

    Args:
        logger: the wrapped logger (unused).
        method_name: the log method's name (unused).
        event_dict: the line being built.

    Returns:
        ``event_dict``, with the ids added.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(context.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(context.span_id))
        event_dict.setdefault("trace_flags", f"{context.trace_flags:02x}")
    return event_dict


def event_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Put the ``event`` key first, then the other keys in their order (structlog processor).

    A JSON line then starts with what happened: ``{"event": "node.finished", ...}``.

    Args:
        logger: the wrapped logger (unused).
        method_name: the log method's name (unused).
        event_dict: the line being built.

    Returns:
        The same keys, ``event`` first.
    """
    if "event" not in event_dict:
        return event_dict
    ordered: EventDict = {"event": event_dict.pop("event")}
    ordered.update(event_dict)
    return ordered


def _strict_json(value: Any, **options: Any) -> str:
    """A log line as strict JSON: what ``json.dumps`` writes, or a line that says why not.

    ``json.dumps`` writes ``NaN`` and ``Infinity``, which strict JSON
    readers refuse, and raises on a value whose ``repr()`` fails, on a
    container inside itself and on keys that are not strings; any of these
    would break the one-object-per-line stream a collector reads (or make the
    log call raise). Such floats are written as strings, other keys as their
    ``str()``, an int too long for Python to write (or a key whose ``str()``
    raises) by its type, a container met again inside itself as
    ``"<circular>"``, one nested deeper than :data:`_LOG_DEPTH` as
    ``"<nested too deep>"``, and an unwritable value as its type name.
    """
    try:
        return json.dumps(value, allow_nan=False, **options)
    except (ValueError, TypeError, RecursionError):
        return json.dumps(_plain(value, set(), 0), allow_nan=False, **options)


# How deep a log line's values are written; below, a marker.
_LOG_DEPTH: Final = 64


def _plain(value: Any, within: set[int], depth: int) -> Any:
    """``value`` as ``json.dumps`` can write it strictly (see :func:`_strict_json`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            int.__repr__(value)
        except ValueError:  # longer than Python writes an int (sys.get_int_max_str_digits)
            return shown_text(str, value)
        return value
    if not isinstance(value, dict | list | tuple):
        return value
    if id(value) in within:
        return "<circular>"
    if depth >= _LOG_DEPTH:
        return "<nested too deep>"
    within.add(id(value))
    try:
        if isinstance(value, dict):
            return {
                key if isinstance(key, str) else shown_text(str, key): _plain(
                    item, within, depth + 1
                )
                for key, item in value.items()
            }
        return [_plain(item, within, depth + 1) for item in value]
    finally:
        within.discard(id(value))


def _shown_on_a_terminal(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    r"""The console format's values, each as the terminal can show it in one line.

    A text with line breaks or escape sequences (a pipeline's name, a session
    id) is escaped (``\n``, ``\x1b``): written as it is, it would start
    a line that looks like another one, or recolor and clear the terminal.
    A value whose ``repr()`` raises is named by its type, as the JSON format
    names it: structlog's console renderer would raise, and the line be lost.
    The traceback (``exception``, ``exc_info``) keeps its lines.
    """
    for key, value in event_dict.items():
        if key in _MULTILINE:
            continue
        if type(value) is str or key == "event":
            event_dict[key] = printable_text(shown_text(str, value))
            continue
        try:
            repr(value)
        except Exception:
            event_dict[key] = _fallback(value)
    return event_dict


_MULTILINE: Final = frozenset({"exc_info", "exception", "stack"})


def _fallback(value: object) -> str:
    """What a log line writes for a value JSON has no form for: its repr, or its type."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} with a failing repr()>"


class _StageflowHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler :func:`configure` installs, marked so it can be replaced."""


def configure(
    *,
    format: Format = "json",
    level: str | int = "INFO",
    stream: TextIO | None = None,
    tracebacks: bool = True,
) -> None:
    """Configure structlog, with the standard ``logging`` module as its output.

    Installs one handler on the root logger (replacing the one an earlier
    call installed, and leaving handlers of the application's own alone) and
    sets the root level. structlog loggers are not cached, so calling this
    again, or ``structlog.testing.capture_logs()``, takes effect at once.

    Args:
        format: ``"json"`` for one JSON object per line (for log collectors),
            ``"console"`` for aligned human-readable lines (colored on a
            terminal).
        level: the lowest level written: a name (``"DEBUG"``, ``"INFO"``,
            ``"WARNING"``, ``"ERROR"``, ``"CRITICAL"``, any case) or a
            ``logging`` level number.
        stream: where lines go; standard error by default.
        tracebacks: write the traceback of a line that carries an exception
            (a failed node's ``node.finished``, ``log.exception(...)``);
            ``False`` keeps the line and its ``error_type`` / ``error`` keys
            but leaves the traceback out (the CLI's default).

    Raises:
        LoggingSetupError: for an unknown format or level, or a stream with no
            ``write()``.
    """
    if format not in _FORMATS:
        raise LoggingSetupError(
            f"stageflow.logging.configure: unknown format {format!r}; use 'json' or 'console'"
        )
    level_number = _level_number(level)
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise LoggingSetupError(
            f"stageflow.logging.configure: stream was given {a_python_type(stream)}, which has "
            "no write(); pass a text stream such as sys.stdout, or leave it out for standard "
            "error"
        )
    out = stream if stream is not None else sys.stderr

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Run for structlog's own lines and for records from the logging module alike.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        timestamper,
        add_otel_context,
    ]
    rendering: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if not tracebacks:
        rendering.append(_drop_exc_info)
    if format == "json":
        rendering += [
            structlog.processors.ExceptionRenderer(_exception_text),
            event_first,
            structlog.processors.JSONRenderer(serializer=_strict_json, default=_fallback),
        ]
    else:
        rendering.append(_shown_on_a_terminal)
        rendering.append(
            structlog.dev.ConsoleRenderer(
                colors=_is_terminal(out), exception_formatter=_write_exception
            )
        )

    handler = _StageflowHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=rendering, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StageflowHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_number)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        # Not cached: stageflow's loggers are module-level, and a cached one
        # would ignore a later configure() or capture_logs().
        cache_logger_on_first_use=False,
    )


def _exception_text(exc_info: ExcInfo) -> str:
    """A line's traceback, bounded as a span's is (``exc_info`` as structlog finds it)."""
    error = exc_info[1]
    if error is None:  # exc_info=True outside an except block: as structlog writes it
        return "NoneType: None"
    return error_traceback(error).rstrip("\n")


def _write_exception(out: TextIO, exc_info: ExcInfo) -> None:
    """The console format's traceback (see :func:`_exception_text`)."""
    out.write("\n" + _exception_text(exc_info))


def _drop_exc_info(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("exc_info", None)
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, bool) or not isinstance(level, str | int):
        raise LoggingSetupError(
            f"stageflow.logging.configure: level must be a level name or number, "
            f"got {type(level).__name__}; use one of {', '.join(_LEVELS)}"
        )
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise LoggingSetupError(
            f"stageflow.logging.configure: unknown level {level!r}; "
            f"use one of {', '.join(_LEVELS)} (any case) or a logging level number"
        )
    return number


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
