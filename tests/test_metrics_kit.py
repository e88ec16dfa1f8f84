"""stageflow.tracing.configure_metrics and OTLP/HTTP out of the box."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from fakes import doc, fake_registry, load, stage, terminal
from otlp_receiver import OtlpReceiver

import stageflow
import stageflow.tracing

ROOT = Path(__file__).parents[1]
DOCUMENT = doc([stage("s", "Set", next="end", config={"values": {}}), terminal()])


def _run(meter_provider: object) -> None:
    import anyio

    registry = fake_registry()
    session = stageflow.Session(
        load(DOCUMENT, registry),
        registry=registry,
        meter_provider=meter_provider,  # type: ignore[arg-type]
    )
    anyio.run(session.run)


def test_otlp_http_is_a_plain_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [r.split(">")[0].split("=")[0].strip() for r in project["dependencies"]]
    assert "opentelemetry-exporter-otlp-proto-http" in names


def test_console_metrics_show_stageflow_instruments() -> None:
    out = io.StringIO()
    provider = stageflow.tracing.configure_metrics(
        exporter="console", set_global=False, console_stream=out
    )
    try:
        _run(provider)
        assert provider.force_flush()
    finally:
        provider.shutdown()
    text = out.getvalue()
    assert "stageflow.node.duration" in text
    assert "stageflow.session.duration" in text


def test_otlp_metrics_go_to_the_metrics_url(otlp_receiver: OtlpReceiver) -> None:
    provider = stageflow.tracing.configure_metrics(
        endpoint=f"{otlp_receiver.base_url}/v1/metrics", set_global=False
    )
    try:
        _run(provider)
        provider.force_flush()
    finally:
        provider.shutdown()
    assert otlp_receiver.rejected == []
    received = otlp_receiver.metrics
    assert {m.name for m in received} >= {
        "stageflow.node.duration",
        "stageflow.session.duration",
        "stageflow.sessions.active",
    }
    assert {m.scope for m in received} == {"stageflow"}
    assert {m.resource["service.name"] for m in received} == {"stageflow"}


def test_configure_metrics_rejects_an_unknown_exporter() -> None:
    with pytest.raises(stageflow.TracingSetupError, match="unknown exporter"):
        stageflow.tracing.configure_metrics(exporter="carrier-pigeon", set_global=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("interval", "shown"),
    [(0, "0"), (-1, "-1"), (math.nan, "nan"), ("60000", "a str"), (True, "a bool")],
)
def test_configure_metrics_refuses_an_export_interval_that_is_no_positive_number(
    interval: object, shown: str
) -> None:
    # Taken before: the SDK raised a bare ValueError or TypeError for most,
    # and NaN made a reader that never exported.
    with pytest.raises(stageflow.TracingSetupError) as caught:
        stageflow.tracing.configure_metrics(
            exporter="console",
            set_global=False,
            export_interval_millis=interval,  # type: ignore[arg-type]
        )
    assert (
        f"stageflow.tracing.configure_metrics: export_interval_millis was given {shown}; "
        "pass a number of milliseconds above 0"
    ) in str(caught.value)


def test_configure_metrics_refuses_a_second_global_provider() -> None:
    # OpenTelemetry only logged "Overriding ... not allowed": the second call
    # returned a provider that sessions never measured into.
    script = textwrap.dedent(
        """
        from opentelemetry import metrics
        import stageflow, stageflow.tracing
        first = stageflow.tracing.configure_metrics(exporter="none")
        try:
            stageflow.tracing.configure_metrics(exporter="none")
        except stageflow.TracingSetupError as exc:
            print("refused:", exc)
        print("first is global:", metrics.get_meter_provider() is first)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused: stageflow.tracing.configure_metrics: a global meter provider" in done.stdout
    assert "first is global: True" in done.stdout
