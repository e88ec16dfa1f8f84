"""Metrics through ``opentelemetry-api`` only, decided once per session.

Like tracing (``_telemetry.py``): a session asks :meth:`Metrics.resolve` once,
when it is made. Without a real meter provider (none set, or the API's no-op
one) it gets ``None``, creates no instruments and records nothing, so the
unmetered path is one ``is None`` test where a measurement would be. With
one, the instruments below are made once per session and recorded at the
choke points (``Run.execute``, ``Run.run``, the stage executor, the input
runtime and desk). ``tracing/CATALOGUE.md`` lists them.

A histogram recorded while a node's span is current (node durations, input
waits) lets the SDK attach that span as an exemplar (its default
``TraceBasedExemplarFilter`` keeps sampled spans): stageflow records before
it ends the span.
"""

from __future__ import annotations

import time
from typing import Any, Final

from opentelemetry import metrics

from stageflow._telemetry import (
    INPUT_TYPE,
    NODE_ID,
    NODE_TYPE,
    OUTCOME,
    PIPELINE_NAME,
    REJECT_REASON,
    SESSION_STATUS,
)

__all__ = [
    "BOUNDARIES",
    "INSTRUMENTS",
    "PROXY_METER_PROVIDER",
    "UNCHECKED_INPUT",
    "UNDECLARED_INPUT",
    "Metrics",
    "global_provider_set",
    "node_measured",
    "session_measured",
]

_NO_PROVIDER = (metrics.NoOpMeterProvider,)
# The API's stand-in before a provider is set has no public class; it is told
# by name, as OpenTelemetry's own tests do. A session made before the
# application sets its provider stays unmetered (decided once, like tracing).
PROXY_METER_PROVIDER: Final = "_ProxyMeterProvider"


def global_provider_set() -> bool:
    """Whether OpenTelemetry's global meter provider was set (it can be set once)."""
    return type(metrics.get_meter_provider()).__name__ != PROXY_METER_PROVIDER


# name -> (kind, unit, description): the catalogue of instruments.
INSTRUMENTS: Final = {
    "stageflow.node.duration": ("histogram", "s", "Duration of node executions"),
    "stageflow.node.retries": ("counter", "{retry}", "Stage attempts that failed and were retried"),
    "stageflow.session.duration": ("histogram", "s", "Duration of session runs, by status"),
    "stageflow.sessions.active": ("updowncounter", "{session}", "Session runs in progress"),
    "stageflow.sessions.waiting": (
        "updowncounter",
        "{session}",
        "Session runs in progress with at least one stage waiting for input",
    ),
    "stageflow.input.wait.duration": (
        "histogram",
        "s",
        "Time stages waited for an input (human wait time, not work)",
    ),
    "stageflow.inputs.rejected": ("counter", "{input}", "Inputs refused by send_input"),
}

UNDECLARED_INPUT: Final = "(undeclared)"
"""``stageflow.input.type`` of a rejected input whose type no stage declares or awaits."""
UNCHECKED_INPUT: Final = "(unchecked)"
"""``stageflow.input.type`` of an input ``SessionService.send_input`` refused before it was stored.

The service refuses it before any session reads it, so it cannot tell a type
the pipeline declares from one a sender invented; a sender must not be able
to make one series per type it invents.
"""


# Bucket boundaries of the histograms, in seconds. The SDK's default ones
# (0, 5, 10, 25, ... 10000) are made for milliseconds: every node of a few
# milliseconds would fall into the first bucket, and no bucket would tell a
# slow node from a fast one. Work takes milliseconds to minutes (a node's
# duration includes an input it waits for); a person answers in seconds to days.
_WORK_BOUNDARIES: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
)  # fmt: skip
_WAIT_BOUNDARIES: Final = (
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    14400.0, 43200.0, 86400.0, 259200.0, 604800.0,
)  # fmt: skip
BOUNDARIES: Final = {
    "stageflow.node.duration": _WORK_BOUNDARIES,
    "stageflow.session.duration": _WORK_BOUNDARIES,
    "stageflow.input.wait.duration": _WAIT_BOUNDARIES,
}
"""Histogram name -> its bucket boundaries (an advice: a view of the application's wins)."""


class Metrics:
    """The instruments of one session (``None`` instead when there is no meter provider)."""

    __slots__ = (
        "active",
        "input_wait",
        "node_duration",
        "rejected",
        "retries",
        "session_duration",
        "waiting",
    )

    def __init__(self, meter: metrics.Meter) -> None:
        made: dict[str, Any] = {}
        for name, (kind, unit, description) in INSTRUMENTS.items():
            if kind == "histogram":
                made[name] = meter.create_histogram(
                    name,
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=BOUNDARIES[name],
                )
            elif kind == "counter":
                made[name] = meter.create_counter(name, unit=unit, description=description)
            else:
                made[name] = meter.create_up_down_counter(name, unit=unit, description=description)
        self.node_duration: metrics.Histogram = made["stageflow.node.duration"]
        self.retries: metrics.Counter = made["stageflow.node.retries"]
        self.session_duration: metrics.Histogram = made["stageflow.session.duration"]
        self.active: metrics.UpDownCounter = made["stageflow.sessions.active"]
        self.waiting: metrics.UpDownCounter = made["stageflow.sessions.waiting"]
        self.input_wait: metrics.Histogram = made["stageflow.input.wait.duration"]
        self.rejected: metrics.Counter = made["stageflow.inputs.rejected"]

    def refused(self, type_label: str, reason: str) -> None:
        """Count one refused input (``type_label``: a type the pipeline knows, or a label above)."""
        self.rejected.add(1, {INPUT_TYPE: type_label, REJECT_REASON: reason})

    @classmethod
    def resolve(cls, provider: metrics.MeterProvider | None, version: str) -> Metrics | None:
        """Metrics through ``provider`` (the global one if ``None``), or ``None`` without one."""
        chosen = provider if provider is not None else metrics.get_meter_provider()
        if isinstance(chosen, _NO_PROVIDER) or type(chosen).__name__ == PROXY_METER_PROVIDER:
            return None
        meter = chosen.get_meter("stageflow", version)
        # An SDK provider turned off (OTEL_SDK_DISABLED=true) hands out a no-op meter.
        return None if isinstance(meter, metrics.NoOpMeter) else cls(meter)


def node_measured(meters: Metrics, pipeline: str, node: Any, outcome: str, started: float) -> None:
    """Record one node execution's duration (call it while the node's span is current)."""
    meters.node_duration.record(
        time.perf_counter() - started,
        {PIPELINE_NAME: pipeline, NODE_TYPE: node.type, NODE_ID: node.id, OUTCOME: outcome},
    )


def session_measured(meters: Metrics, pipeline: str, status: str, started: float) -> None:
    """Record the end of a session run: its duration by status; one run fewer in progress."""
    meters.active.add(-1, {PIPELINE_NAME: pipeline})
    meters.session_duration.record(
        time.perf_counter() - started, {PIPELINE_NAME: pipeline, SESSION_STATUS: status}
    )
