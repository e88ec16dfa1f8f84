"""Stages, pipelines and helpers shared by the session store tests (tests/scaleout/).

Stages block on a file or an input, never on a sleep, so a test that kills
or freezes a worker knows where it stands.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

import stageflow
from stageflow.store import Worker

registry = stageflow.StageRegistry()


@registry.register("Collect")
class Collect(stageflow.BaseStage):
    """Append ``msg.n`` to ``seen``."""

    spec = stageflow.StageSpec(description="append msg.n to seen")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        seen = list(ctx.arguments.get("seen") or [])
        return {"seen": [*seen, ctx.arguments["msg"]["n"]]}


@registry.register("Gate")
class Gate(stageflow.BaseStage):
    """Append a line to ``config.marks``, then wait until the file ``config.gate`` exists."""

    spec = stageflow.StageSpec(description="mark, then wait for a gate file")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        line = {"pid": os.getpid(), "node": ctx.node_id, "execution_key": ctx.execution_key}
        async with await anyio.open_file(ctx.config["marks"], "a") as marks:
            await marks.write(json.dumps(line) + "\n")
        gate = anyio.Path(ctx.config["gate"])
        # A file poll, not a timed sleep: it ends when the test (another process) opens the gate.
        while not await gate.exists():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return {"gated": True}


def chat_pipeline() -> stageflow.Pipeline:
    """Wait for ``msg`` inputs and collect ``msg.n`` into ``seen`` until ``n == -1``."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "wait",
            "metadata": {"name": "chat"},
            "nodes": [
                {
                    "id": "wait",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": "msg"},
                    "outputs": {"payload": "msg"},
                    "next": "collect",
                },
                {
                    "id": "collect",
                    "type": "stage",
                    "stage": "Collect",
                    "arguments": {"seen": "seen", "msg": "msg"},
                    "outputs": {"seen": "seen"},
                    "next": "route",
                },
                {
                    "id": "route",
                    "type": "condition",
                    "conditions": [{"if": {"==": [{"var": "msg.n"}, -1]}, "then": "end"}],
                    "else": "wait",
                },
                {"id": "end", "type": "terminal", "artifacts": ["seen"]},
            ],
        },
        registry=registry,
    )


def gate_pipeline(marks: Path, gate: Path) -> stageflow.Pipeline:
    """Collect two ``msg`` inputs, then run the ``Gate`` stage, then end."""
    nodes: list[dict[str, Any]] = []
    for i in (1, 2):
        nodes += [
            {
                "id": f"wait{i}",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "msg"},
                "outputs": {"payload": "msg"},
                "next": f"collect{i}",
            },
            {
                "id": f"collect{i}",
                "type": "stage",
                "stage": "Collect",
                "arguments": {"seen": "seen", "msg": "msg"},
                "outputs": {"seen": "seen"},
                "next": "wait2" if i == 1 else "gate",
            },
        ]
    nodes += [
        {
            "id": "gate",
            "type": "stage",
            "stage": "Gate",
            "config": {"marks": str(marks), "gate": str(gate)},
            "outputs": {"gated": "gated"},
            "next": "end",
        },
        {"id": "end", "type": "terminal", "artifacts": ["seen"]},
    ]
    return stageflow.Pipeline.from_dict(
        {"api_version": "1.0", "entry": "wait1", "metadata": {"name": "gated"}, "nodes": nodes},
        registry=registry,
    )


def sleep_pipeline(seconds: float) -> stageflow.Pipeline:
    """Sleep ``seconds`` (a timer kept in the snapshot), then end."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "nap",
            "metadata": {"name": "nap"},
            "nodes": [
                {
                    "id": "nap",
                    "type": "stage",
                    "stage": "SleepStage",
                    "config": {"seconds": seconds},
                    "outputs": {"slept": "slept"},
                    "next": "end",
                },
                {"id": "end", "type": "terminal", "artifacts": ["slept"]},
            ],
        },
        registry=registry,
    )


def wait_until(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Block (sync) until ``check()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.02)


def read_marks(path: Path) -> list[dict[str, Any]]:
    """The lines the ``Gate`` stage wrote."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def running(store: Any, **options: Any) -> AsyncIterator[Worker]:
    """A worker on ``store`` with this module's registry, running until the block ends.

    ``options`` go to ``Worker``; ``poll`` defaults to 0.2 s and
    ``fetch_cooldown`` to 0.01 s.
    """
    worker = Worker(
        store,
        registry=options.pop("registry", registry),
        poll=options.pop("poll", 0.2),
        fetch_cooldown=options.pop("fetch_cooldown", 0.01),
        **options,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        worker.shutdown()


def failing_on(prefix: str) -> Any:
    """A structlog processor that raises on lines whose event starts with ``prefix``.

    A log set-up that fails on the worker's or the store's lines (a console
    renderer walking frame locals that another thread changes).
    """

    def processor(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        if str(event_dict.get("event")).startswith(prefix):
            raise RuntimeError("deque mutated during iteration")
        return event_dict

    return processor
