"""Cancellations that cross a task group are cancellations, not failures (trio's groups).

On trio a cancellation that leaves a parallel or map node's task group arrives
wrapped in an exception group. These tests run on both backends; before the
fix they failed on trio only.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow

pytestmark = pytest.mark.anyio


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    return registry


def _waiting(node_id: str, *, next: str | None = None) -> dict[str, Any]:
    node = stage(node_id, "Wait", next=next, outputs={"payload": node_id})
    node["config"] = {"input": "go"}
    return node


PARALLEL = doc(
    [
        parallel("fan", ["a", "b"], next="end"),
        _waiting("a"),
        _waiting("b"),
        terminal(),
    ]
)

MAP = doc(
    [
        stage(
            "seed",
            "Set",
            next="each",
            config={"values": {"items": [1, 2]}},
            outputs={"items": "items"},
        ),
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "item",
            "concurrency": 2,
            "next": "end",
        },
        _waiting("item"),
        terminal(),
    ]
)


def _outcomes(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {
        span.name: span.attributes["stageflow.outcome"] for span in exporter.get_finished_spans()
    }


@pytest.mark.parametrize(
    ("document", "node", "child"), [(PARALLEL, "fan", "branch"), (MAP, "each", "map_item")]
)
async def test_cancel_mid_node_records_a_cancelled_node_and_children(
    document: dict[str, Any],
    node: str,
    child: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    async with anyio.create_task_group() as tg:
        result: list[stageflow.SessionResult] = []

        async def run() -> None:
            result.append(await session.run())

        tg.start_soon(run)
        await wait_until_waiting(session, "go", 2)
        session.cancel("stop")
    [outcome] = result
    assert outcome.status is stageflow.SessionStatus.CANCELLED
    types = [(e.type, e.node_id) for e in outcome.history]
    assert ("node_cancelled", node) in types
    assert [t for t, n in types if t == f"{child}_cancelled"] == [f"{child}_cancelled"] * 2
    assert not any(t.endswith("_failed") for t, _ in types)
    outcomes = _outcomes(exporter)
    assert outcomes[f"{'parallel' if node == 'fan' else 'map'} {node}"] == "cancelled"
    assert "failed" not in outcomes.values()


@pytest.mark.parametrize("document", [PARALLEL, MAP], ids=["parallel", "map"])
async def test_cancelling_the_task_running_the_session_ends_it_cancelled(
    document: dict[str, Any],
) -> None:
    registry = _registry()
    session = stageflow.Session(load(document, registry), registry=registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go", 2)
        tg.cancel_scope.cancel()
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert session.history[-1].type == "session_cancelled"
    assert session.to_dict()["status"] == "cancelled"
    with pytest.raises(stageflow.SessionStateError, match="cancelled"):
        await session.run()


async def test_the_losing_branch_of_an_any_race_is_cancelled_not_failed(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    registry = _registry()
    document = doc(
        [
            parallel("race", ["fast", "slow"], next="end", policy="any"),
            stage("fast", "Set", config={"values": {"x": 1}, "delay": 1}),
            parallel("slow", ["w1", "w2"]),
            _waiting("w1"),
            _waiting("w2"),
            terminal(),
        ]
    )
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    types = [(e.type, e.node_id) for e in result.history]
    assert ("node_cancelled", "slow") in types
    assert ("branch_cancelled", "race") in types
    outcomes = _outcomes(exporter)
    assert outcomes["parallel slow"] == "cancelled"
    assert outcomes["branch race/slow"] == "cancelled"
    assert "failed" not in outcomes.values()


@pytest.mark.parametrize(
    ("document", "node", "child"),
    [(PARALLEL, "parallel fan", "branch fan/a"), (MAP, "map each", "item each")],
    ids=["branch", "map item"],
)
async def test_a_suspended_run_ends_its_branch_and_item_spans_suspended(
    document: dict[str, Any],
    node: str,
    child: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, tracer_provider=provider
    )
    result = await session.run(suspend=True)
    assert result.status is stageflow.SessionStatus.WAITING
    outcomes = _outcomes(exporter)
    assert outcomes[node] == outcomes[child] == "suspended"
    assert "cancelled" not in outcomes.values()
