"""Demo stages for the seed's reference pipeline (examples/reference/pipeline.json).

``InitStage`` scores the text and decides whether the parallel path runs;
``WorkerAStage`` and ``WorkerBStage`` each derive a result from the score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stageflow

registry = stageflow.StageRegistry()


@registry.register("InitStage")
class InitStage(stageflow.BaseStage):
    """Score the text: one point per word; the parallel path runs from 3 words up."""

    spec = stageflow.StageSpec(
        description="Score a text and decide whether to fan out",
        arguments={
            "type": "object",
            "properties": {"user_id": {"type": "string"}, "text": {"type": "string"}},
            "required": ["text"],
        },
        config={"type": "object", "properties": {"mode": {"enum": ["demo", "strict"]}}},
        outputs={
            "type": "object",
            "properties": {"score": {"type": "integer"}, "need_parallel": {"type": "boolean"}},
        },
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        words = str(ctx.arguments.get("text", "")).split()
        score = len(words)
        ctx.emit("scored", {"score": score, "mode": ctx.config.get("mode")})
        return {"score": score, "need_parallel": score >= 3}


@registry.register("WorkerAStage")
async def worker_a(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    """Branch A: double the score."""
    return {"a_result": ctx.arguments["score"] * 2}


@registry.register("WorkerBStage")
async def worker_b(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    """Branch B: label the score."""
    return {"b_result": "high" if ctx.arguments["score"] >= 5 else "low"}
