"""tracing/CATALOGUE.md lists every span, attribute, event, link and metric the code records."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
import stageflow._segments
import stageflow._telemetry
import stageflow.tracing
from stageflow._metrics import INSTRUMENTS

CATALOGUE = (Path(__file__).parents[1] / "tracing" / "CATALOGUE.md").read_text()
NODE_TYPES = ("stage", "condition", "parallel", "terminal", "subpipeline", "map")


def _code_attributes() -> set[str]:
    names = set()
    for module in (stageflow._telemetry, stageflow._segments):
        for name, value in vars(module).items():
            if (
                name.isupper()
                and isinstance(value, str)
                and (value.startswith("stageflow.") or value == "error.type")
            ):
                names.add(value)
    return names


def _catalogued(section: str) -> set[str]:
    """The back-quoted names in the first column of the tables under ``## section``."""
    part = CATALOGUE.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", part, flags=re.MULTILINE))


def test_every_attribute_the_code_names_is_catalogued_and_back() -> None:
    listed = _catalogued("Attributes")
    code = _code_attributes()
    # stageflow.wait.seconds, stageflow.link.kind, stageflow.session.status and the
    # reject reason are event, link and metric attributes: catalogued in those tables.
    elsewhere = {
        "stageflow.wait.seconds",
        "stageflow.link.kind",
        "stageflow.session.status",
        "stageflow.input.reject_reason",
    }
    assert sorted(code - listed - elsewhere) == []
    assert sorted(listed - code) == []
    for name in elsewhere:
        assert f"`{name}`" in CATALOGUE


def test_every_cancel_reason_is_catalogued_and_back() -> None:
    # max_run_seconds was given to cancelled spans and listed nowhere. The
    # engine's reasons are typed with CancelReason: mypy holds them to it.
    [row] = [
        line for line in CATALOGUE.splitlines() if line.startswith("| `stageflow.cancel.reason`")
    ]
    description = row.split(" | ")[-1]
    listed = set(re.findall(r"^`(\w+)`|, `(\w+)`|or `(\w+)`", description))
    names = {next(n for n in found if n) for found in listed}
    assert names == set(typing.get_args(stageflow._telemetry.CancelReason))


def test_every_metric_is_catalogued_and_back() -> None:
    assert _catalogued("Metrics") == set(INSTRUMENTS)
    rows = re.findall(r"^\| `(stageflow\.[^`]+)` \| (\S[^|]*?) \| (\S+) \|", CATALOGUE, re.M)
    kinds = {"histogram": "histogram", "counter": "counter", "updowncounter": "up-down counter"}
    for name, kind, unit in rows:
        if name in INSTRUMENTS:
            assert (kinds[INSTRUMENTS[name][0]], INSTRUMENTS[name][1]) == (kind, unit), name


# -- everything a set of runs records is catalogued ------------------------------------------


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    flaky = {"n": 0}

    @registry.register("Flaky")
    async def flaky_stage(ctx: stageflow.StageContext) -> dict[str, Any]:
        flaky["n"] += 1
        if flaky["n"] == 1:
            raise ValueError("once")
        return {}

    return registry


EVERYTHING = doc(
    [
        stage("seed", "Set", next="decide", config={"values": {"items": [1, 2]}}),
        {
            "id": "decide",
            "type": "condition",
            "conditions": [{"if": True, "then": "each"}],
        },
        {"id": "each", "type": "map", "items": "items", "body": "body", "next": "race"},
        stage("body", "Set", config={"values": {}}),
        parallel("race", ["fast", "slow"], next="call", policy="any"),
        stage("fast", "Flaky"),
        stage("slow", "Hang"),
        {"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "ask"},
        stage("ask", "Wait", next="bad", outputs={"payload": "answer"}),
        stage("bad", "Fail", next="end"),
        terminal(),
        terminal("handled"),
    ],
    subpipelines={"inner": {"entry": "done", "nodes": [terminal("done")]}},
)
EVERYTHING["nodes"][0]["outputs"] = {"items": "items"}
EVERYTHING["nodes"][5]["retry"] = {"attempts": 2, "delay": 0}
EVERYTHING["nodes"][8]["config"] = {"input": "go"}
EVERYTHING["nodes"][9]["on_error"] = [{"next": "handled"}]


@pytest.mark.anyio
async def test_every_span_attribute_event_and_link_of_a_run_is_catalogued(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(id_generator=stageflow.tracing.RestoringIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = _registry()
    session = stageflow.Session(
        load(EVERYTHING, registry), registry=registry, tracer_provider=provider
    )
    tracer = provider.get_tracer("app")
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        with tracer.start_as_current_span("sender"):
            session.send_input("go", {})
    # A suspended session restored from its snapshot: its run links to the first.
    waiting = doc([stage("ask", "Wait", next="end"), terminal()])
    waiting["nodes"][0]["config"] = {"input": "go"}
    suspended = stageflow.Session(
        load(waiting, registry), registry=registry, tracer_provider=provider
    )
    await suspended.run(suspend=True)
    restored = stageflow.Session.from_dict(
        suspended.to_dict(), registry=registry, tracer_provider=provider
    )
    restored.send_input("go", {})
    assert (await restored.run()).status is stageflow.SessionStatus.COMPLETED
    provider.shutdown()
    spans: tuple[ReadableSpan, ...] = tuple(
        s for s in exporter.get_finished_spans() if s.name != "sender"
    )
    first_words = {s.name.split(" ", 1)[0] for s in spans}
    assert first_words == {"run", "branch", "item", "wait", *NODE_TYPES}
    for word in ("run", "branch", "item", "wait"):
        assert f"| `{word} " in CATALOGUE
    listed = _catalogued("Attributes")
    attributes = {key for s in spans for key in (s.attributes or {})}
    assert sorted(attributes - listed) == []
    events = {e.name for s in spans for e in s.events}
    assert events == _catalogued("Span events")  # and back: nothing listed that none records
    event_attributes = {k for s in spans for e in s.events for k in (e.attributes or {})}
    for key in event_attributes:
        # OpenTelemetry's exception.* attributes come with the exception event.
        assert key.startswith("exception.") or f"`{key}`" in CATALOGUE, key
    kinds = {(link.attributes or {}).get("stageflow.link.kind") for s in spans for link in s.links}
    assert kinds == {"previous_segment", "continues", "input_from", "restored_from"}
    assert kinds == _catalogued("Links")
