"""Measure one tracing set-up in a process of its own (OpenTelemetry's global
tracer provider can be set only once per process).

Run as ``python -m benchmarks._tracing_worker VARIANT [--quick]``; prints one
JSON object: ``available`` and, when available, ``per_node`` (ns per node of
the chain), ``run3`` (ns for a 3-node run, ``Session()`` to result) and, for
the SDK variant, ``span`` (ns for one bare SDK span with the same provider)
and ``attributed_span`` (the same with a stage node span's attributes).

Variants: ``untraced`` (the session is told to make no spans:
``tracing=False`` when ``Session`` has that switch, else
``tracer_provider=NoOpTracerProvider()``), ``none`` (no tracer provider
configured), ``noop`` (the API's ``NoOpTracerProvider`` set globally),
``sdk`` (SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and an
exporter that drops what it gets; the session's defaults, so its spans can
be cut into segments at long waits), ``sdk-flat`` (the same with
``trace_wait_threshold=None``: never cut, its open spans kept for live
snapshots all the same),
``metrics`` (no tracing; an SDK ``MeterProvider`` with an in-memory reader).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

import trio
from opentelemetry import trace

VARIANTS = ("sdk", "untraced", "none", "noop", "sdk-flat", "metrics")


def untraced_options(parameters: Sequence[str]) -> dict[str, Any] | None:
    """``Session`` keyword arguments that turn its spans off, or ``None`` if it has none."""
    if "tracing" in parameters:
        return {"tracing": False}
    if "tracer_provider" in parameters:
        return {"tracer_provider": trace.NoOpTracerProvider()}
    return None


def _setup(variant: str) -> Any:
    """Install the variant's tracer provider; return the exporter for ``sdk``."""
    if variant == "noop":
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        return None
    if variant == "metrics":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        return None
    if variant not in ("sdk", "sdk-flat"):
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DroppingExporter(SpanExporter):
        """Counts the spans it is given and does nothing else."""

        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def _measure(variant: str, quick: bool, exporter: Any) -> dict[str, Any]:
    import stageflow
    from benchmarks import _shapes as shapes
    from benchmarks._harness import Settings, clock, interleave

    options: dict[str, Any] = {}
    if variant == "untraced":
        found = untraced_options(list(inspect.signature(stageflow.Session).parameters))
        if found is None:
            return {"available": False, "reason": "the engine has no switch to turn tracing off"}
        options = found
    if variant == "sdk-flat":
        if "trace_wait_threshold" not in inspect.signature(stageflow.Session).parameters:
            return {"available": False, "reason": "the engine has no trace segments"}
        options = {"trace_wait_threshold": None}

    settings = Settings.make(quick=quick)
    reg = shapes.registry()
    three = shapes.three_nodes(reg)

    async def run3() -> int:
        start = clock()
        session = stageflow.Session(three, registry=reg, payload={"n": 0}, **options)
        result = await session.run()
        elapsed = clock() - start
        shapes.check(result, n=2)
        return elapsed

    if exporter is not None:
        # Does the engine make spans at all? Run once and flush.
        await run3()
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        if exporter.count == 0:
            return {"available": False, "reason": "the engine makes no spans"}

    length = settings.chain_length
    run_chain, run_empty = await interleave(
        [
            shapes.session_sampler(shapes.chain(reg, length), reg, options, n=length),
            shapes.session_sampler(shapes.empty(reg), reg, options, batch=20),
        ],
        settings,
    )
    (run,) = await interleave([run3], settings, repeats=settings.repeats * 3)
    out: dict[str, Any] = {
        "available": True,
        "per_node": (run_chain - run_empty) / length,
        "run3": run,
    }
    if exporter is not None:
        tracer = trace.get_tracer("benchmarks")
        batch = 1000

        async def spans() -> int:
            start = clock()
            for _ in range(batch):
                with tracer.start_as_current_span("bench"):
                    pass
            return clock() - start

        # The same span with what stageflow's stage node span carries: four
        # attributes at the start, the outcome at the end. The SDK's cost of
        # the attributes (checking and copying each) is in this one, so the
        # difference to the SDK row is stageflow's own code.
        attributes: dict[str, Any] = {
            "stageflow.node.id": "s1",
            "stageflow.node.type": "stage",
            "stageflow.stage": "Inc",
            "stageflow.attempt": 1,
        }

        async def attributed() -> int:
            start = clock()
            for _ in range(batch):
                with tracer.start_as_current_span("bench", attributes=dict(attributes)) as span:
                    span.set_attribute("stageflow.outcome", "succeeded")
            return clock() - start

        span, attributed_span = await interleave([spans, attributed], settings)
        out["span"] = span / batch
        out["attributed_span"] = attributed_span / batch
    return out


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in VARIANTS:
        print(f"usage: python -m benchmarks._tracing_worker {{{','.join(VARIANTS)}}} [--quick]")
        return 2
    variant = argv[0]
    exporter = _setup(variant)
    result = trio.run(_measure, variant, "--quick" in argv, exporter)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
