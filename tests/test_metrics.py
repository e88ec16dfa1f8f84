"""Metrics through the OpenTelemetry API: values from the SDK's in-memory reader."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal, wait_until_waiting
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow._metrics import INSTRUMENTS

pytestmark = pytest.mark.anyio


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "stageflow"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    calls = {"n": 0}

    @registry.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("first try fails")
        return {}

    return registry


REFERENCE = doc(
    [
        stage("flaky", "Flaky", next="fan"),
        parallel("fan", ["a", "b"], next="end"),
        stage("a", "Set", config={"values": {}}),
        stage("b", "Set", config={"values": {}}),
        terminal(),
    ],
    metadata={"name": "metered"},
)
REFERENCE["nodes"][0]["retry"] = {"attempts": 2, "delay": 0}


async def test_a_reference_run_measures_nodes_retries_and_the_session(
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(REFERENCE, registry),
        registry=registry,
        meter_provider=meter_provider,
        tracer_provider=provider,
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    found = points(reader)

    durations = {p.attributes["stageflow.node.id"]: p for p in found["stageflow.node.duration"]}
    assert set(durations) == {"flaky", "fan", "a", "b", "end"}
    assert durations["fan"].attributes == {
        "stageflow.pipeline.name": "metered",
        "stageflow.node.type": "parallel",
        "stageflow.node.id": "fan",
        "stageflow.outcome": "succeeded",
    }
    assert all(p.count == 1 for p in durations.values())

    # Each node's duration carries its node span as the exemplar.
    spans = {s.name: s for s in exporter.get_finished_spans()}
    node_spans = [
        ("flaky", "stage flaky"),
        ("fan", "parallel fan"),
        ("a", "stage a"),
        ("b", "stage b"),
        ("end", "terminal end"),
    ]
    assert {node_id for node_id, _ in node_spans} == set(durations)
    for node_id, name in node_spans:
        [exemplar] = durations[node_id].exemplars
        assert exemplar.span_id == spans[name].context.span_id
        assert exemplar.trace_id == spans[name].context.trace_id

    [retries] = found["stageflow.node.retries"]
    assert retries.value == 1
    assert retries.attributes == {
        "stageflow.pipeline.name": "metered",
        "stageflow.node.id": "flaky",
    }

    [run] = found["stageflow.session.duration"]
    assert run.count == 1
    assert run.attributes == {
        "stageflow.pipeline.name": "metered",
        "stageflow.session.status": "completed",
    }
    [active] = found["stageflow.sessions.active"]
    assert active.value == 0


async def test_a_failed_node_is_measured_with_its_outcome(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    registry = _registry()
    document = doc([stage("bad", "Fail", next="end"), terminal()])
    session = stageflow.Session(
        load(document, registry), registry=registry, meter_provider=meter_provider
    )
    await session.run()
    [bad] = [
        p
        for p in points(reader)["stageflow.node.duration"]
        if p.attributes["stageflow.node.id"] == "bad"
    ]
    assert bad.attributes["stageflow.outcome"] == "failed"
    [run] = points(reader)["stageflow.session.duration"]
    assert run.attributes["stageflow.session.status"] == "failed"


WAITING = doc([stage("ask", "Wait", next="end", outputs={"payload": "answer"}), terminal()])
WAITING["nodes"][0]["config"] = {"input": "answer"}


@pytest.mark.trio_only
async def test_input_waits_waiting_sessions_and_rejections_are_measured(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, meter_provider=meter_provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "answer")
        [waiting] = points(reader)["stageflow.sessions.waiting"]
        assert waiting.value == 1
        await anyio.sleep(3600)  # virtual time: an hour of human wait
        with pytest.raises(stageflow.InputRejectedError):
            session.send_input("answer", {"bad": float("nan")})
        session.send_input("answer", {"text": "yes"})
    found = points(reader)
    [waiting] = found["stageflow.sessions.waiting"]
    assert waiting.value == 0
    [wait] = found["stageflow.input.wait.duration"]
    assert wait.count == 1
    assert wait.sum == pytest.approx(3600, abs=1)
    assert wait.attributes == {
        "stageflow.pipeline.name": "pipeline",
        "stageflow.input.type": "answer",
        "stageflow.outcome": "received",
    }
    [rejected] = found["stageflow.inputs.rejected"]
    assert rejected.value == 1
    assert rejected.attributes == {
        "stageflow.input.type": "answer",
        "stageflow.input.reject_reason": "not_json",
    }


async def test_a_rejected_input_of_a_type_nobody_declares_is_counted_under_one_label(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # Each invented type was an attribute value of its own: a sender could
    # make one metric series per type it sent.
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry),
        registry=registry,
        meter_provider=meter_provider,
        validate_events="strict",
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "answer")
        for n in range(3):
            with pytest.raises(stageflow.InputRejectedError):
                session.send_input(f"invented-{n}", {})
        with pytest.raises(stageflow.InputRejectedError):
            session.send_input("answer", {"bad": float("nan")})
        session.send_input("answer", {"text": "yes"})
    rejected = {
        (p.attributes["stageflow.input.type"], p.attributes["stageflow.input.reject_reason"]): (
            p.value
        )
        for p in points(reader)["stageflow.inputs.rejected"]
    }
    assert rejected == {("(undeclared)", "unknown_type"): 3, ("answer", "not_json"): 1}


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_an_input_of_a_bad_type_is_recorded_and_counted_as_every_rejection_is(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # A bad_type rejection was neither in the history nor in the metric.
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, meter_provider=meter_provider
    )
    bad_types: list[Any] = ["", 42, None, ["a"] * 1000, Unprintable()]
    for bad in bad_types:
        with pytest.raises(stageflow.InputRejectedError) as refused:
            session.send_input(bad, {})
        assert refused.value.reason == "bad_type"
    recorded = [e.payload for e in session.history if e.type == "input_rejected"]
    assert [r["reason"] for r in recorded] == ["bad_type"] * len(bad_types)
    shown = [r["input_type"] for r in recorded]
    assert shown[:3] == ["", "42", "None"]
    assert shown[3] == repr(bad_types[3])[:57] + "..."  # a repr, cut short
    assert shown[4] == "<Unprintable whose repr() failed>"
    [rejected] = points(reader)["stageflow.inputs.rejected"]
    assert rejected.value == len(bad_types)
    assert rejected.attributes == {
        "stageflow.input.type": "(undeclared)",
        "stageflow.input.reject_reason": "bad_type",
    }


def test_every_instrument_is_in_the_catalogue() -> None:
    from pathlib import Path

    catalogue = (Path(__file__).parents[1] / "tracing" / "CATALOGUE.md").read_text()
    missing = [name for name in INSTRUMENTS if f"`{name}`" not in catalogue]
    assert not missing


async def test_histograms_in_seconds_have_buckets_for_seconds(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # They had the SDK's default buckets, made for milliseconds (0, 5, 10, ...
    # 10000): every node of a few milliseconds fell into the one bucket
    # (0, 5 s], and a slow node's bucket could not be told from a fast one's.
    registry = _registry()
    session = stageflow.Session(
        load(WAITING, registry), registry=registry, meter_provider=meter_provider
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "answer")
        session.send_input("answer", {"text": "yes"})
    found = points(reader)
    for name in ("stageflow.node.duration", "stageflow.session.duration"):
        bounds = found[name][0].explicit_bounds
        assert bounds[0] <= 0.001, name  # a millisecond's work has a bucket of its own
        assert 1.0 in bounds, name
        assert bounds[-1] >= 3600, name
    [wait] = found["stageflow.input.wait.duration"]
    assert wait.explicit_bounds[0] <= 1.0
    assert wait.explicit_bounds[-1] >= 7 * 86400  # a person may answer in a week


def _wait_points(reader: InMemoryMetricReader) -> list[Any]:
    return points(reader).get("stageflow.input.wait.duration", [])


async def test_a_wait_carried_over_by_a_suspend_is_measured_from_its_start(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # A Worker's turns end at each wait (run(suspend=True)) and the next turn
    # takes the input from the snapshot: the wait was measured as 0 s
    # not_received at the suspend and never as received, so the histogram
    # knew nothing of the time people take.
    registry = _registry()
    now = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]

    def clock() -> datetime.datetime:
        return now[0]

    session = stageflow.Session(
        load(WAITING, registry), registry=registry, meter_provider=meter_provider, clock=clock
    )
    await session.run(suspend=True)
    assert _wait_points(reader) == []  # suspended: the wait goes on in the snapshot
    snapshot = session.to_dict(history="none")
    now[0] += datetime.timedelta(hours=2)
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, meter_provider=meter_provider, clock=clock
    )
    restored.send_input("answer", {"text": "yes"})
    parked = restored.to_dict(history="none")
    assert "waited" in json.dumps(parked)  # kept in the snapshot until the stage takes it
    result = await restored.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    [wait] = _wait_points(reader)
    assert wait.count == 1
    assert wait.sum == pytest.approx(7200, abs=1)
    assert wait.attributes["stageflow.outcome"] == "received"


@pytest.mark.trio_only
async def test_a_restored_wait_that_goes_on_live_is_measured_from_its_start(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    registry = _registry()
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def clock() -> datetime.datetime:  # the wall clock, moved by virtual time
        return start + datetime.timedelta(seconds=anyio.current_time())

    session = stageflow.Session(
        load(WAITING, registry), registry=registry, meter_provider=meter_provider, clock=clock
    )
    await session.run(suspend=True)
    snapshot = session.to_dict(history="none")
    await anyio.sleep(3600)  # virtual time: stored for an hour
    restored = stageflow.Session.from_dict(
        snapshot, registry=registry, meter_provider=meter_provider, clock=clock
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(restored.run)
        await wait_until_waiting(restored, "answer")
        await anyio.sleep(1800)  # and waited half an hour more
        restored.send_input("answer", {"text": "yes"})
    [wait] = _wait_points(reader)
    assert wait.count == 1
    assert wait.sum == pytest.approx(5400, abs=1)
