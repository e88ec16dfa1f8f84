"""Serving the inspector with Hypercorn, on whichever backend anyio runs (trio or asyncio)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sniffio
from hypercorn.config import Config

__all__ = ["serve"]


async def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled, or until ``shutdown_trigger`` returns.

    Runs under trio (Hypercorn's trio worker) or asyncio (its asyncio worker),
    whichever is running. Access logs are off; errors and the "Running on"
    line go to standard error, or only to the root logger's handlers when
    logging is configured (not to both).
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 2.0
    if logging.getLogger().handlers:
        # Hypercorn gives its error logger a stderr handler of its own and lets
        # it propagate: with a root handler too, every line was written twice.
        # Given a logger, it uses it as is: the one it would set up, without
        # that handler.
        error_log = logging.getLogger("hypercorn.error")
        error_log.setLevel(config.loglevel.upper())
        error_log.propagate = True
        config.errorlog = error_log
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as serve_trio

        await serve_trio(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.asyncio import serve as serve_asyncio

        await serve_asyncio(app, config, shutdown_trigger=shutdown_trigger)
