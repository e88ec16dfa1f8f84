"""Library logging: structlog when the application configured it, stdlib otherwise.

stageflow never configures logging. When the application has configured
structlog (``structlog.is_configured()``), stageflow's loggers follow that
configuration. Otherwise they log through the standard ``logging`` module
under the ``stageflow`` logger names, so an unconfigured application sees
only warnings and errors, on stderr, and nothing at all below that.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["get_logger"]

_STDLIB_PROCESSORS: list[Any] = [
    structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
]


class _LibraryLogger:
    """A logger resolved at each call, so a later ``configure()`` takes effect."""

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
        # debug, info, warning, error, exception, ...
        return getattr(self._target(), method)


def get_logger(name: str) -> Any:
    """Return stageflow's logger ``name`` (see the module docstring)."""
    return _LibraryLogger(name, {})
