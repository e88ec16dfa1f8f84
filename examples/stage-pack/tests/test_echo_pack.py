"""The echo pack's own tests: a template for testing a stage pack.

Run from this directory with ``python -m pytest`` (needs ``pytest`` and
``pytest-trio``: ``pip install -e '.[test]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import stageflow_echo_pack

import stageflow

PIPELINE = Path(__file__).parents[1] / "pipeline.json"


def fresh_registry() -> stageflow.StageRegistry:
    """A registry holding only this pack's stages, registered directly (no entry point)."""
    registry = stageflow.StageRegistry()
    stageflow_echo_pack.register(registry)
    return registry


async def run(
    registry: stageflow.StageRegistry, payload: dict[str, Any]
) -> stageflow.SessionResult:
    pipeline = stageflow.Pipeline.load(PIPELINE, registry=registry)
    return await stageflow.Session(pipeline, payload=payload).run()


@pytest.mark.trio
async def test_pipeline_gets_the_echoed_reply() -> None:
    result = await run(fresh_registry(), {"question": "is it deterministic"})
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {
        "answer.text": "echo-small heard: is it deterministic",
        "answer.finish_reason": "stop",
        "answer.usage": {"model": "echo-small", "prompt_tokens": 3, "completion_tokens": 5},
    }
    usage = [dict(e.payload) for e in result.history if e.type == "llm_usage"]
    assert usage == [{"model": "echo-small", "prompt_tokens": 3, "completion_tokens": 5}]


@pytest.mark.trio
async def test_max_tokens_cuts_the_reply() -> None:
    result = await run(fresh_registry(), {"question": "one two three four five six seven"})
    assert result.artifacts["answer.text"] == "echo-small heard: one two three four five six"
    assert result.artifacts["answer.finish_reason"] == "length"


def test_entry_point_registers_the_stage_with_the_pack_as_source() -> None:
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["echo"], strict=True)
    assert [(p.name, p.distribution, p.stages) for p in report.loaded] == [
        ("echo", "stageflow-echo-pack", ("EchoLLM",))
    ]
    assert registry.get("EchoLLM").source == (
        f"stage pack 'echo' (stageflow-echo-pack {stageflow_echo_pack.__version__})"
    )


def test_spec_rejects_a_node_without_a_prompt() -> None:
    doc = {
        "api_version": "1.0",
        "entry": "ask",
        "nodes": [
            {"id": "ask", "type": "stage", "stage": "EchoLLM", "next": "done"},
            {"id": "done", "type": "terminal"},
        ],
    }
    with pytest.raises(stageflow.PipelineValidationError, match="prompt"):
        stageflow.Pipeline.from_dict(doc, registry=fresh_registry())
