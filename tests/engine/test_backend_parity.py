"""What a user sees is the same on trio and on asyncio (docs/concepts.md, "Session").

Each scenario's outcome is written out once, for both backends: the status,
the error's type, the history of each path in order (the order of events of
concurrent paths at one instant is left open, see "Events and subscribers"),
and what ``run()`` raised.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, scaled, stage, terminal

import stageflow

pytestmark = pytest.mark.anyio


def _by_path(session: stageflow.Session) -> dict[str, list[tuple[str, str | None]]]:
    """Each path's events, in order: ``(type, node_id)``."""
    paths: dict[str, list[tuple[str, str | None]]] = {}
    for event in session.history:
        paths.setdefault(event.path, []).append((event.type, event.node_id))
    return paths


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Interrupt")
    async def interrupt(ctx: stageflow.StageContext) -> None:
        await anyio.sleep(scaled(1))
        raise KeyboardInterrupt

    return registry


CANCELLED = [("node_cancelled", "b"), ("branch_cancelled", "fan")]


async def _outcome(document: dict[str, Any], how: str) -> tuple[Any, ...]:
    registry = _registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    raised = None
    if how == "cancel scope":
        with anyio.CancelScope() as scope:
            session.subscribe(lambda e: scope.cancel() if e.node_id == "b" else None)
            try:
                await session.run()
            except anyio.get_cancelled_exc_class():
                raised = "cancelled"
                raise
    else:
        try:
            await session.run()
        except KeyboardInterrupt:
            raised = "KeyboardInterrupt"
    error = session.to_dict()["outcome"]["error"]
    return session.status.value, error and error["type"], raised, _by_path(session)


@pytest.mark.parametrize(
    ("bad", "how", "expected"),
    [
        (
            stage("a", "Fail", config={"delay": 1}),
            "run",
            (
                "failed",
                "StageError",
                None,
                [("node_started", "a"), ("node_failed", "a"), ("branch_failed", "fan")],
            ),
        ),
        (
            stage("a", "Interrupt"),
            "run",
            (
                "cancelled",
                None,
                "KeyboardInterrupt",
                [("node_started", "a"), ("node_cancelled", "a"), ("branch_cancelled", "fan")],
            ),
        ),
        (
            stage("a", "Hang"),
            "cancel scope",
            (
                "cancelled",
                None,
                "cancelled",
                [("node_started", "a"), ("node_cancelled", "a"), ("branch_cancelled", "fan")],
            ),
        ),
    ],
    ids=["a branch fails", "a branch is interrupted", "the caller cancels"],
)
async def test_a_branch_that_ends_the_others_looks_the_same_on_both_backends(
    bad: dict[str, Any], how: str, expected: tuple[Any, ...]
) -> None:
    document = doc([parallel("fan", ["a", "b"], next="end"), bad, stage("b", "Hang"), terminal()])
    status, error, raised, paths = await _outcome(document, how)
    *head, a_path = expected
    assert (status, error, raised) == tuple(head)
    assert paths["fan/a"] == [("branch_started", "fan"), *a_path]
    assert paths["fan/b"] == [("branch_started", "fan"), ("node_started", "b"), *CANCELLED]
    assert paths[""][:3] == [
        ("session_started", None),
        ("node_started", "fan"),
        ("node_failed" if status == "failed" else "node_cancelled", "fan"),
    ]
    assert paths[""][-1] == (f"session_{status}", None)
