"""The seed's reference pipeline runs exactly as written, on trio and asyncio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from example_support import load_example

import stageflow

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "reference"

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry() -> stageflow.StageRegistry:
    # Loaded without leaving a module named "stages" behind (every example has one).
    reg: stageflow.StageRegistry = load_example("reference")[0].registry
    return reg


def test_example_is_the_seed_pipeline_verbatim() -> None:
    seed = ROOT.parent / "shared" / "seed" / "reference-pipeline.json"
    if not seed.exists():
        pytest.skip("the seed is not next to this checkout")
    assert json.loads((EXAMPLE / "pipeline.json").read_text()) == json.loads(seed.read_text())


async def run_reference(registry: stageflow.StageRegistry, text: str) -> stageflow.SessionResult:
    pipeline = stageflow.Pipeline.load(EXAMPLE / "pipeline.json", registry=registry)
    session = stageflow.Session(
        pipeline, registry=registry, payload={"user_id": "u1", "text": text}
    )
    return await session.run()


async def test_parallel_path(registry: stageflow.StageRegistry) -> None:
    result = await run_reference(registry, "one two three four five")
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"status": "ok"}
    assert result.artifacts == {"score": 5, "a_result": 10, "b_result": "high"}
    assert result.error is None
    visited = [e.node_id for e in result.history if e.type == "node_started"]
    assert visited[:3] == ["start", "decide", "fanout"]
    assert sorted(visited[3:5]) == ["branch_a", "branch_b"]
    assert visited[5:] == ["finish"]


async def test_else_path(registry: stageflow.StageRegistry) -> None:
    result = await run_reference(registry, "hi")
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"status": "ok"}
    assert result.artifacts == {"score": 1, "a_result": None, "b_result": None}
    visited = [e.node_id for e in result.history if e.type == "node_started"]
    assert visited == ["start", "decide", "finish"]


async def test_stage_event_is_in_history(registry: stageflow.StageRegistry) -> None:
    result = await run_reference(registry, "a b c")
    scored = [e for e in result.history if e.type == "scored"]
    assert [(e.node_id, dict(e.payload)) for e in scored] == [
        ("start", {"score": 3, "mode": "demo"})
    ]


def test_demo_script_prints_the_result() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "one two three"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    printed = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert printed["status"] == "completed"
    assert printed["result"] == {"status": "ok"}
    assert printed["artifacts"] == {"score": 3, "a_result": 6, "b_result": "low"}
