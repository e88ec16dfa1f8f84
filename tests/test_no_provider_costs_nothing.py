"""Without a tracer provider, meter provider or logging set-up, nothing is made per node.

A counting test, not a timing: the constructors of span, instrument and
logger objects are wrapped, and a run of many nodes must make as many of
them as a run of few (none per node), on both backends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from fakes import doc, fake_registry, load, parallel, stage, terminal
from opentelemetry import metrics, trace
from opentelemetry.sdk import trace as sdk_trace

import stageflow
import stageflow._log
import stageflow._metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    counts: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name, owner, attribute in [
        ("NonRecordingSpan", trace.NonRecordingSpan, "__init__"),
        ("sdk Span", sdk_trace.Span, "__init__"),
        ("stageflow Metrics", stageflow._metrics.Metrics, "__init__"),
        ("stageflow logger", stageflow._log._LibraryLogger, "__init__"),
        ("structlog BoundLoggerLazyProxy", structlog._config.BoundLoggerLazyProxy, "__init__"),
    ]:
        monkeypatch.setattr(owner, attribute, counting(name, getattr(owner, attribute)))
    provider = metrics.get_meter_provider()
    monkeypatch.setattr(provider, "get_meter", counting("get_meter", provider.get_meter))
    tracer_provider = trace.get_tracer_provider()
    monkeypatch.setattr(
        tracer_provider, "get_tracer", counting("get_tracer", tracer_provider.get_tracer)
    )
    return counts


async def _run_nodes(count: int) -> None:
    nodes = [stage(f"s{i}", "Set", next=f"s{i + 1}", config={"values": {}}) for i in range(count)]
    nodes[-1]["next"] = "end"
    registry = fake_registry()
    session = stageflow.Session(load(doc([*nodes, terminal()]), registry), registry=registry)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED


async def _run_fanned(count: int) -> None:
    """A parallel node of ``count`` branches, then a map node over ``count`` items."""
    children = [f"b{i}" for i in range(count)]
    document = doc(
        [
            parallel("fan", children, next="each"),
            *[stage(child, "Set", config={"values": {}}) for child in children],
            {"id": "each", "type": "map", "items": "items", "body": "item", "next": "end"},
            stage("item", "Set", config={"values": {}}),
            terminal(),
        ]
    )
    registry = fake_registry()
    session = stageflow.Session(
        load(document, registry), registry=registry, payload={"items": list(range(count))}
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED


@pytest.mark.parametrize("run", [_run_nodes, _run_fanned], ids=["chain", "branches and items"])
async def test_no_span_metric_or_log_object_per_node(
    made: Counter[str], run: Callable[[int], Awaitable[None]]
) -> None:
    assert not structlog.is_configured()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    await run(2)
    few = dict(made)
    made.clear()
    await run(40)
    many = dict(made)
    assert many == few  # nothing grows with the number of nodes
    assert many.get("NonRecordingSpan", 0) == many.get("sdk Span", 0) == 0
    assert many.get("stageflow Metrics", 0) == many.get("get_meter", 0) == 0
    assert many.get("get_tracer", 0) == 0
