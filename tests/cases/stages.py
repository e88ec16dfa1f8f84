"""Stages for the tester's own case files (tests/cases/*.json)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stageflow

registry = stageflow.StageRegistry()


@registry.register(
    "Increment",
    spec=stageflow.StageSpec(
        description="Add one to a number",
        arguments={"type": "object", "properties": {"value": {"type": "integer"}}},
        outputs={"type": "object", "properties": {"value": {"type": "integer"}}},
    ),
)
async def increment(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    return {"value": ctx.arguments.get("value", 0) + 1}


@registry.register(
    "Fetch",
    spec=stageflow.StageSpec(
        description="Fetch a document (talks to the network: mock it in cases)",
        arguments={"type": "object", "properties": {"url": {"type": "string"}}},
        outputs={
            "type": "object",
            "properties": {"body": {"type": "string"}, "status": {"type": "integer"}},
        },
    ),
)
async def fetch(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    raise RuntimeError("the real Fetch stage needs the network; mock it in test cases")


@registry.register(
    "AskApproval",
    spec=stageflow.StageSpec(
        description="Wait for an approval input and return whether it approves",
        outputs={"type": "object", "properties": {"approved": {"type": "boolean"}}},
        allowed_inputs=(stageflow.InputSpec("approval"),),
    ),
)
async def ask_approval(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    answer = await ctx.wait_input("approval")
    return {"approved": bool(answer.get("ok"))}
