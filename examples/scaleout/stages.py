"""Stages of the scale-out example: ``Tally`` adds each number a session receives."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import stageflow

registry = stageflow.StageRegistry()


@registry.register("Tally")
class Tally(stageflow.BaseStage):
    """Add ``msg.n`` to ``total`` and note which worker process did it."""

    spec = stageflow.StageSpec(description="add msg.n to total; record the worker's pid")

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        total = int(ctx.arguments.get("total") or 0) + int(ctx.arguments["msg"]["n"])
        pids = sorted({*(ctx.arguments.get("pids") or []), os.getpid()})
        return {"total": total, "pids": pids}
