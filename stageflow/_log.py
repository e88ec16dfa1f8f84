"""Library logging: structlog when the application configured it, stdlib otherwise.

stageflow never configures logging. When the application has configured
structlog (``structlog.is_configured()``), stageflow's loggers follow that
configuration. Otherwise they log through the standard ``logging`` module
under the ``stageflow`` logger names, so an unconfigured application sees
only warnings and errors, on stderr, and nothing at all below that.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import structlog

from stageflow._errors import error_text, shown_text

__all__ = [
    "LOG_REPORTED",
    "SPAN_REPORTED",
    "first_report",
    "get_logger",
    "node_finished",
    "session_finished",
]

# Set on an exception once a span, or a log line, has reported it: one marker
# per channel (exceptions take no weak references, so a flag on the object is
# the cheapest record).
SPAN_REPORTED = "_stageflow_span_reported"
LOG_REPORTED = "_stageflow_log_reported"
_MAX_DEPTH = 8  # causes and groups are shallow; a bound, not a tuning knob


def _reported(error: BaseException, marker: str, depth: int = 0) -> bool:
    if getattr(error, marker, False):
        return True
    if depth > _MAX_DEPTH:
        return False
    cause = error.__cause__
    if cause is not None and _reported(cause, marker, depth + 1):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_reported(e, marker, depth + 1) for e in error.exceptions)
    return False


def first_report(error: BaseException, marker: str) -> bool:
    """Whether ``error`` is reported here for the first time (then marks it reported).

    A failure crosses several spans and log lines on its way out (stage,
    branch, parallel node, run): it is reported in full (exception event,
    traceback) once, where it was raised. An error that wraps reported ones
    (a group of branch failures, an error caused by one) counts as reported.
    ``marker`` is the channel: :data:`SPAN_REPORTED` or :data:`LOG_REPORTED`.
    """
    if _reported(error, marker):
        return False
    # An exception class with __slots__ and no __dict__ cannot be marked.
    with contextlib.suppress(AttributeError):
        setattr(error, marker, True)
    return True


def node_finished(
    log: Any,
    outcome: str,
    error: BaseException | None,
    extra: dict[str, Any] | None,
    seconds: float,
) -> None:
    """Write a node's ``node.finished`` line.

    A failure where it was raised is an ERROR line with the error type,
    message and traceback (``exc_info``, rendered by structlog), or a WARNING
    when an error edge handled it; a failure passing through (a parallel
    node whose branch failed) is an INFO line naming the error type only.
    """
    values: dict[str, Any] = {"outcome": outcome, "duration_ms": round(seconds * 1000, 3)}
    if extra:
        values.update((key.rpartition(".")[2], value) for key, value in extra.items())
    if error is None:
        log.info("node.finished", **values)
        return
    values["error_type"] = type(error).__name__
    values["error"] = error_text(error)
    if not first_report(error, LOG_REPORTED):
        log.info("node.finished", **values)
    elif extra is not None and extra.get("stageflow.error.handled"):
        log.warning("node.finished", exc_info=error, **values)
    else:
        log.error("node.finished", exc_info=error, **values)


# What a line hands to its logging record as such, not as text (_key_values).
_RECORD_KEYS = ("exc_info", "stack_info")


def _key_values(
    logger: Any, method_name: str, event_dict: dict[str, Any]
) -> tuple[tuple[str], dict[str, Any]]:
    """``event='...' key=value ...`` (the event, then the keys sorted), never raising.

    As structlog's ``KeyValueRenderer`` writes a line, except that a value
    whose ``repr()`` fails is named by its type: a stage's ``ctx.log`` call
    fails no stage, as a record of the ``logging`` module that cannot be
    formatted fails no caller. ``exc_info`` and ``stack_info`` go to the
    record as such, so the ``logging`` module writes the traceback (an
    ``error`` or ``exception`` call, a worker's failed turn).
    """
    record = {key: event_dict.pop(key) for key in _RECORD_KEYS if key in event_dict}
    keys = sorted(key for key in event_dict if key != "event")
    if "event" in event_dict:
        keys.insert(0, "event")
    return (" ".join(f"{key}={shown_text(repr, event_dict[key])}" for key in keys),), record


_STDLIB_PROCESSORS: list[Any] = [_key_values]


# The methods that write a line (structlog's and the logging module's names).
_LINE_METHODS = frozenset(
    {"debug", "info", "warning", "warn", "error", "err", "exception", "critical", "fatal", "msg"}
)


class _LibraryLogger:
    """A logger resolved at each call, so a later ``configure()`` takes effect.

    Its lines never raise. A log set-up of the application's that raises on
    one (a renderer walking frame locals that another thread changes, as
    structlog's console renderer does with rich; a closed stream) loses that
    line, which is told to the ``logging`` module instead: it fails no run,
    no stage (``ctx.log``), no worker and no store listener, which all write
    their lines as they handle a failure. Its other methods (``new``,
    ``unbind``, ...) are the target logger's.
    """

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context

    def bind(self, **values: Any) -> _LibraryLogger:
        """Return a logger that adds ``values`` to every line."""
        return _LibraryLogger(self._name, {**self._context, **values})

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name, **self._context)
        return structlog.wrap_logger(
            logging.getLogger(self._name),
            processors=_STDLIB_PROCESSORS,
            wrapper_class=structlog.stdlib.BoundLogger,
            **self._context,
        )

    def __getattr__(self, method: str) -> Any:
        write = getattr(self._target(), method)
        if method not in _LINE_METHODS:
            return write
        name = self._name

        def line(*args: Any, **values: Any) -> Any:
            try:
                return write(*args, **values)
            except Exception:
                event = args[0] if args else values.get("event")
                with contextlib.suppress(Exception):
                    logging.getLogger(name).error(
                        "%s: the %s line could not be written", event, method, exc_info=True
                    )
                return None

        return line


def get_logger(name: str) -> Any:
    """Return stageflow's logger ``name`` (see the module docstring and ``_LibraryLogger``)."""
    return _LibraryLogger(name, {})


def session_finished(log: Any, status: str, error: BaseException | None) -> None:
    """Write a session run's ``session.finished`` line: INFO, or ERROR when it failed.

    The traceback is written here only when no node line wrote it already
    (a failure outside any node, such as the session deadline).
    """
    if error is None:
        log.info("session.finished", status=status)
        return
    values = {"status": status, "error_type": type(error).__name__, "error": error_text(error)}
    if first_report(error, LOG_REPORTED):
        log.error("session.finished", exc_info=error, **values)
    else:
        log.error("session.finished", **values)
