"""Shared fixtures: every ``anyio`` test runs on trio (virtual time) and on asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import trio
import trio.testing

# Support modules whose helpers check results: their asserts are rewritten as a
# test module's are, so a failing check shows its values.
pytest.register_assert_rewrite(
    "builtin_support", "example_support", "graph_support", "snapshot_support"
)

# Fixtures shared across test files, registered here once: pytest's own
# ``pytester``; and from tests/support/, the OTLP/HTTP receiver
# (``otlp_receiver``) for tests that export spans, the in-memory span
# ``exporter`` and its ``provider``, the in-process ``cli``, the tester's
# ``write_cases``. A ``*_fixtures`` module there is such a plugin; the other
# support modules (``*_support``, ``fakes``) are imported by name, and no test
# module imports another.
pytest_plugins = [
    "pytester",
    "otlp_receiver",
    "tracing_fixtures",
    "cli_fixtures",
    "tester_fixtures",
]


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Run on trio with an autojumping MockClock, and on asyncio."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture(autouse=True)
def _structlog_left_as_found() -> Iterator[None]:
    """Leave structlog unconfigured after a test that found it so.

    ``structlog.testing.capture_logs()`` restores the processors it replaced
    with ``configure()``, which marks structlog configured for good; stageflow
    then writes its node lines (a failed node's traceback included) into every
    later test's output.
    """
    configured = structlog.is_configured()
    yield
    if not configured and structlog.is_configured():
        structlog.reset_defaults()


def _trio_tasks() -> Iterator[trio.lowlevel.Task]:
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None:
            continue
        yield task
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)


def live_tasks() -> int:
    """Count the tasks alive right now on the running backend."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # not running on trio
        return len(asyncio.all_tasks())
    return sum(1 for _ in _trio_tasks())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``trio_only`` tests (virtual time) on trio only, not on asyncio's real clock."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec else None
        if backend == "asyncio" and item.get_closest_marker("trio_only"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
