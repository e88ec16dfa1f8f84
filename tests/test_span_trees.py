"""The exact span tree, on trio and asyncio, for the cases issue 15 names.

Each tree is drawn as indented ``name [outcome]`` lines (plus the
cancellation reason, ``error.type`` or handled flag where there is one),
children in name order, so concurrent branches draw the same way every run.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow

pytestmark = pytest.mark.anyio


def _label(span: ReadableSpan) -> str:
    attributes = dict(span.attributes or {})
    label = f"{span.name} [{attributes.get('stageflow.outcome')}]"
    if "stageflow.map.index" in attributes:
        label = (
            f"{span.name}#{attributes['stageflow.map.index']} [{attributes['stageflow.outcome']}]"
        )
    for key in ("stageflow.cancel.reason", "error.type", "stageflow.error.handled"):
        if key in attributes:
            label += f" {key.rpartition('.')[2]}={attributes[key]}"
    if any(e.name == "exception" for e in span.events):
        label += " +exception"
    return label


def draw(spans: tuple[ReadableSpan, ...]) -> list[str]:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=_label):
            lines.append("  " * depth + _label(span))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    tries = {"n": 0}

    @registry.register("AlwaysFails")
    async def always_fails(ctx: stageflow.StageContext) -> dict[str, Any]:
        tries["n"] += 1
        raise ValueError(f"try {tries['n']}")

    return registry


def _session(document: dict[str, Any], provider: TracerProvider) -> stageflow.Session:
    registry = _registry()
    return stageflow.Session(
        load(document, registry),
        registry=registry,
        payload={"items": [1, 2]},
        tracer_provider=provider,
    )


def _map(node_id: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "map", "items": "items", "body": body, **extra}


def _waiting(node_id: str) -> dict[str, Any]:
    node = stage(node_id, "Wait")
    node["config"] = {"input": "go"}
    return node


async def test_an_any_race_whose_loser_holds_a_map_and_a_parallel(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    document = doc(
        [
            parallel("race", ["fast", "loser"], next="end", policy="any"),
            stage("fast", "Set", config={"values": {}, "delay": 1}),
            _map("loser", "inner", next="fan", concurrency=2),
            parallel("inner", ["x", "y"]),
            stage("x", "Hang"),
            stage("y", "Hang"),
            stage("fan", "Hang"),
            terminal(),
        ]
    )
    result = await _session(document, provider).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert draw(exporter.get_finished_spans()) == [
        "run pipeline [succeeded]",
        "  parallel race [succeeded]",
        "    branch race/fast [succeeded]",
        "      stage fast [succeeded]",
        "    branch race/loser [cancelled] reason=lost_race",
        "      map loser [cancelled] reason=lost_race",
        "        item loser#0 [cancelled] reason=lost_race",
        "          parallel inner [cancelled] reason=lost_race",
        "            branch inner/x [cancelled] reason=lost_race",
        "              stage x [cancelled] reason=lost_race",
        "            branch inner/y [cancelled] reason=lost_race",
        "              stage y [cancelled] reason=lost_race",
        "        item loser#1 [cancelled] reason=lost_race",
        "          parallel inner [cancelled] reason=lost_race",
        "            branch inner/x [cancelled] reason=lost_race",
        "              stage x [cancelled] reason=lost_race",
        "            branch inner/y [cancelled] reason=lost_race",
        "              stage y [cancelled] reason=lost_race",
        "  terminal end [succeeded]",
    ]


@pytest.mark.parametrize("where", ["parallel", "map"])
async def test_session_cancel_mid_parallel_and_mid_map(
    provider: TracerProvider, exporter: InMemorySpanExporter, where: str
) -> None:
    if where == "parallel":
        nodes = [parallel("fan", ["a", "b"], next="end"), stage("a", "Hang"), stage("b", "Hang")]
    else:
        nodes = [_map("fan", "a", next="end", concurrency=2), stage("a", "Hang")]
    session = _session(doc([*nodes, terminal()]), provider)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await session.run()

        tg.start_soon(run)
        stream = session.events(buffer=0)
        started = 0
        async for event in stream:
            started += event.type == "node_started" and event.node_id in ("a", "b")
            if started == 2:
                break
        await stream.aclose()
        session.cancel()
    reason = "reason=session_cancelled"
    if where == "parallel":
        children = [
            f"    branch fan/a [cancelled] {reason}",
            f"      stage a [cancelled] {reason}",
            f"    branch fan/b [cancelled] {reason}",
            f"      stage b [cancelled] {reason}",
        ]
    else:
        children = [
            f"    item fan#0 [cancelled] {reason}",
            f"      stage a [cancelled] {reason}",
            f"    item fan#1 [cancelled] {reason}",
            f"      stage a [cancelled] {reason}",
        ]
    assert draw(exporter.get_finished_spans()) == [
        f"run pipeline [cancelled] {reason}",
        f"  {where} fan [cancelled] {reason}",
        *children,
    ]


@pytest.mark.parametrize("where", ["branch", "map item"])
async def test_suspend_inside_a_branch_and_inside_a_map_item(
    provider: TracerProvider, exporter: InMemorySpanExporter, where: str
) -> None:
    if where == "branch":
        nodes = [
            parallel("fan", ["a", "b"], next="end"),
            _waiting("a"),
            stage("b", "Set", config={"values": {}}),
        ]
        children = [
            "    branch fan/a [suspended] reason=suspended",
            "      stage a [suspended] reason=suspended",
            "        wait go [suspended]",
            "    branch fan/b [succeeded]",
            "      stage b [succeeded]",
        ]
        node = "parallel fan"
    else:
        nodes = [_map("fan", "a", next="end", concurrency=2), _waiting("a")]
        children = [
            "    item fan#0 [suspended] reason=suspended",
            "      stage a [suspended] reason=suspended",
            "        wait go [suspended]",
            "    item fan#1 [suspended] reason=suspended",
            "      stage a [suspended] reason=suspended",
            "        wait go [suspended]",
        ]
        node = "map fan"
    result = await _session(doc([*nodes, terminal()]), provider).run(suspend=True)
    assert result.status is stageflow.SessionStatus.WAITING
    assert draw(exporter.get_finished_spans()) == [
        "run pipeline [suspended]",
        f"  {node} [suspended] reason=suspended",
        *children,
    ]


async def test_a_stage_retried_then_routed_by_on_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    flaky = stage("flaky", "AlwaysFails", next="end")
    flaky["retry"] = {"attempts": 3, "delay": 0}
    flaky["on_error"] = [{"errors": ["StageError"], "next": "recover"}]
    document = doc([flaky, stage("recover", "Set", next="end", config={"values": {}}), terminal()])
    result = await _session(document, provider).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    spans = exporter.get_finished_spans()
    assert draw(spans) == [
        "run pipeline [succeeded]",
        "  stage flaky [failed] type=stageflow.StageError handled=True +exception",
        "  stage recover [succeeded]",
        "  terminal end [succeeded]",
    ]
    [flaky_span] = [s for s in spans if s.name == "stage flaky"]
    assert (flaky_span.attributes or {})["stageflow.attempt"] == 3
    assert [e.name for e in flaky_span.events] == ["retry", "retry", "exception"]
