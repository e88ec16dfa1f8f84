"""Serving the inspector with Hypercorn, on whichever backend anyio runs (trio or asyncio)."""

from __future__ import annotations

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
    whichever is running. Access logs are off; errors go to the log.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 2.0
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as serve_trio

        await serve_trio(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.asyncio import serve as serve_asyncio

        await serve_asyncio(app, config, shutdown_trigger=shutdown_trigger)
