"""Stages and pipelines of the scale-out benchmark, importable by worker processes.

``stageflow worker --stages benchmarks._scaleout_stages`` loads ``registry``.
"""

from __future__ import annotations

from typing import Any

import anyio

import stageflow

registry = stageflow.StageRegistry()


@registry.register("Count")
class Count(stageflow.BaseStage):
    """Count the inputs seen (a no-op turn apart from that)."""

    spec = stageflow.StageSpec(description="count inputs")

    async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"count": int(ctx.arguments.get("count") or 0) + 1}


@registry.register("Io50")
class Io50(stageflow.BaseStage):
    """Wait 50 ms, as a call to another service would (an I/O-bound stage)."""

    spec = stageflow.StageSpec(description="wait 50 ms")

    async def run(self, ctx: stageflow.StageContext) -> dict[str, Any]:
        await anyio.sleep(0.05)
        return {"count": int(ctx.arguments.get("count") or 0) + 1}


def loop_pipeline(stage: str = "Count", name: str = "bench") -> dict[str, Any]:
    """Wait for ``msg``, run ``stage``, wait again (until ``msg.stop``)."""
    return {
        "api_version": "1.0",
        "entry": "wait",
        "metadata": {"name": name},
        "nodes": [
            {
                "id": "wait",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "msg"},
                "outputs": {"payload": "msg"},
                "next": "count",
            },
            {
                "id": "count",
                "type": "stage",
                "stage": stage,
                "arguments": {"count": "count"},
                "outputs": {"count": "count"},
                "next": "route",
            },
            {
                "id": "route",
                "type": "condition",
                "conditions": [{"if": {"var": "msg.stop"}, "then": "end"}],
                "else": "wait",
            },
            {"id": "end", "type": "terminal"},
        ],
    }


PIPELINE = loop_pipeline()
IO_PIPELINE = loop_pipeline("Io50", "bench-io")
