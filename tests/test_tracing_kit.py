"""stageflow.tracing and the user's tracing kit (collector config, compose file).

Export is tested for real: the OTLP/HTTP exporter that ``configure`` builds
sends spans to a receiver on 127.0.0.1 that decodes the protobuf request.
No test sets OpenTelemetry's global tracer provider in this process (it can
be set only once); the ones that need it run in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import doc, fake_registry, load, stage, terminal
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode
from otlp_receiver import OtlpReceiver

import stageflow
import stageflow.tracing

ROOT = Path(__file__).parents[1]
COLLECTOR_CONFIG = ROOT / "otel-collector.yaml"
COMPOSE = ROOT / "tracing" / "compose.yaml"
HTTP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
GRPC_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture(autouse=True)
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from no OTEL_* settings, whatever the machine has."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def providers() -> Iterator[list[TracerProvider]]:
    """Providers a test configured; shut down afterwards (which also closes their exporters)."""
    made: list[TracerProvider] = []
    yield made
    for provider in made:
        provider.shutdown()


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


# -- otel-collector.yaml and tracing/compose.yaml -------------------------------------------


def component_type(name: str) -> str:
    """``otlp_grpc/jaeger`` -> ``otlp_grpc`` (the collector's type/name convention)."""
    return name.split("/", 1)[0]


def test_collector_pipelines_use_only_defined_components() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]
    assert pipelines, "the collector config defines no pipeline"
    for pipeline_name, pipeline in pipelines.items():
        assert pipeline.get("receivers"), f"pipeline {pipeline_name} has no receiver"
        assert pipeline.get("exporters"), f"pipeline {pipeline_name} has no exporter"
        for kind in ("receivers", "processors", "exporters"):
            defined = config.get(kind) or {}
            for name in pipeline.get(kind, []):
                assert name in defined, f"pipeline {pipeline_name} uses undefined {kind} {name}"
    for name in config["service"].get("extensions", []):
        assert name in config["extensions"], f"service uses undefined extension {name}"


def test_collector_receives_otlp_on_the_standard_ports() -> None:
    protocols = load_yaml(COLLECTOR_CONFIG)["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_traces_pipeline_limits_memory_batches_and_exports_to_jaeger_and_debug() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    # memory_limiter must come first to protect the collector; batch after it.
    assert traces["processors"] == ["memory_limiter", "batch"]
    assert sorted(component_type(e) for e in traces["exporters"]) == ["debug", "otlp_grpc"]
    jaeger = next(e for e in traces["exporters"] if component_type(e) == "otlp_grpc")
    assert config["exporters"][jaeger] == {"endpoint": "jaeger:4317", "tls": {"insecure": True}}


def test_metrics_and_logs_pipelines_sit_next_to_traces() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]
    for signal in ("metrics", "logs"):
        assert pipelines[signal]["receivers"] == ["otlp"]
        assert pipelines[signal]["processors"] == ["memory_limiter", "batch"]
    # Metrics are scraped by Prometheus from the collector; Jaeger only gets traces.
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert config["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
    assert "8889:8889" in load_yaml(COMPOSE)["services"]["otel-collector"]["ports"]


def test_compose_mounts_the_collector_config_and_publishes_the_ports() -> None:
    services = load_yaml(COMPOSE)["services"]
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    mounts = [volume.split(":") for volume in collector["volumes"]]
    config_targets = [
        target
        for source, target, *_ in mounts
        if (COMPOSE.parent / source).resolve() == COLLECTOR_CONFIG
    ]
    assert len(config_targets) == 1, f"otel-collector.yaml is not mounted: {collector['volumes']}"
    assert f"--config={config_targets[0]}" in collector["command"]
    assert {"4317:4317", "4318:4318"} <= set(collector["ports"])
    assert "jaeger" in collector["depends_on"]


def test_compose_starts_jaeger_with_its_ui_where_the_collector_sends() -> None:
    services = load_yaml(COMPOSE)["services"]
    exporters = load_yaml(COLLECTOR_CONFIG)["exporters"]
    jaeger_host = exporters["otlp_grpc/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services, "the collector exports to a host compose does not start"
    jaeger = services[jaeger_host]
    assert jaeger["image"].startswith("jaegertracing/")
    assert "16686:16686" in jaeger["ports"]


def test_tracing_readme_commands_use_files_that_exist() -> None:
    readme = (ROOT / "tracing" / "README.md").read_text()
    assert "docker compose -f tracing/compose.yaml up -d" in readme
    assert "http://localhost:16686" in readme
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318" in readme
    assert (ROOT / "examples" / "reference" / "run.py").exists()


# -- real OTLP/HTTP export --------------------------------------------------------------------


def test_otlp_http_export_delivers_every_span_with_its_attributes(
    otlp_receiver: OtlpReceiver, providers: list[TracerProvider]
) -> None:
    provider = stageflow.tracing.configure(
        exporter="otlp", endpoint=otlp_receiver.endpoint, set_global=False, service_name="kit-test"
    )
    providers.append(provider)
    tracer = provider.get_tracer("stageflow")
    with tracer.start_as_current_span(
        "run demo", attributes={"stageflow.session.id": "s-1", "stageflow.pipeline.name": "demo"}
    ) as root:
        with tracer.start_as_current_span(
            "stage fetch",
            attributes={"stageflow.node.id": "fetch", "stageflow.attempt": 2, "flags": [1, 2]},
        ) as fetch:
            fetch.add_event("waiting_for_input", {"stageflow.input.type": "approval"})
            fetch.add_event("input_received")
        with tracer.start_as_current_span("stage broken", record_exception=False) as broken:
            broken.record_exception(ValueError("bad input"))
            broken.set_status(Status(StatusCode.ERROR, "bad input"))
            broken.set_attribute("stageflow.outcome", "failed")
        with tracer.start_as_current_span("branch fan/b") as cancelled:
            cancelled.set_attribute("stageflow.outcome", "cancelled")
    assert provider.force_flush(10_000)

    assert otlp_receiver.rejected == []
    assert otlp_receiver.names() == ["branch fan/b", "run demo", "stage broken", "stage fetch"]
    got_root = otlp_receiver.span("run demo")
    assert got_root.trace_id == trace.format_trace_id(root.get_span_context().trace_id)
    assert got_root.span_id == trace.format_span_id(root.get_span_context().span_id)
    assert got_root.parent_span_id is None
    assert got_root.attributes == {"stageflow.session.id": "s-1", "stageflow.pipeline.name": "demo"}
    assert got_root.resource["service.name"] == "kit-test"
    assert got_root.scope == "stageflow"
    assert got_root.kind == "INTERNAL"

    got_fetch = otlp_receiver.span("stage fetch")
    assert got_fetch.trace_id == got_root.trace_id
    assert got_fetch.parent_span_id == got_root.span_id
    assert got_fetch.attributes == {
        "stageflow.node.id": "fetch",
        "stageflow.attempt": 2,
        "flags": (1, 2),
    }
    assert [(e.name, e.attributes) for e in got_fetch.events] == [
        ("waiting_for_input", {"stageflow.input.type": "approval"}),
        ("input_received", {}),
    ]
    assert got_fetch.status == "UNSET"

    got_broken = otlp_receiver.span("stage broken")
    assert (got_broken.status, got_broken.status_message) == ("ERROR", "bad input")
    assert [e.name for e in got_broken.events] == ["exception"]
    assert got_broken.events[0].attributes["exception.type"] == "ValueError"

    got_cancelled = otlp_receiver.span("branch fan/b")
    assert got_cancelled.status == "UNSET"
    assert got_cancelled.attributes == {"stageflow.outcome": "cancelled"}


def test_otlp_endpoint_headers_and_service_name_come_from_the_environment(
    otlp_receiver: OtlpReceiver, providers: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.base_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=flows,authorization=Bearer%20t0k")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    provider = stageflow.tracing.configure(set_global=False)
    providers.append(provider)
    with provider.get_tracer("stageflow").start_as_current_span("run env"):
        pass
    assert provider.force_flush(10_000)

    assert otlp_receiver.rejected == []  # the exporter added /v1/traces to the base URL
    assert otlp_receiver.span("run env").resource["service.name"] == "checkout"
    assert otlp_receiver.headers[0]["x-team"] == "flows"
    assert otlp_receiver.headers[0]["authorization"] == "Bearer t0k"


def test_otlp_compression_comes_from_the_environment(
    otlp_receiver: OtlpReceiver, providers: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    provider = stageflow.tracing.configure(endpoint=otlp_receiver.endpoint, set_global=False)
    providers.append(provider)
    with provider.get_tracer("stageflow").start_as_current_span("run gzip"):
        pass
    assert provider.force_flush(10_000)
    assert otlp_receiver.headers[0]["content-encoding"] == "gzip"
    assert otlp_receiver.names() == ["run gzip"]


def test_service_name_defaults_to_stageflow_and_an_explicit_one_wins(
    providers: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = stageflow.tracing.configure(exporter="none", set_global=False)
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-env,deployment.environment=ci"
    )
    from_env = stageflow.tracing.configure(exporter="none", set_global=False)
    explicit = stageflow.tracing.configure(exporter="none", set_global=False, service_name="mine")
    providers.extend([plain, from_env, explicit])

    assert plain.resource.attributes["service.name"] == stageflow.tracing.DEFAULT_SERVICE_NAME
    assert from_env.resource.attributes["service.name"] == "from-env"
    assert explicit.resource.attributes["service.name"] == "mine"
    assert explicit.resource.attributes["deployment.environment"] == "ci"


def test_exporter_none_records_spans_with_ids_but_sends_nothing(
    providers: list[TracerProvider],
) -> None:
    provider = stageflow.tracing.configure(exporter="none", set_global=False)
    providers.append(provider)
    with provider.get_tracer("stageflow").start_as_current_span("run quiet") as span:
        assert span.is_recording()
        assert span.get_span_context().is_valid
    assert provider.force_flush(1_000)


def test_console_lines_print_one_readable_line_per_span(providers: list[TracerProvider]) -> None:
    out = io.StringIO()
    provider = stageflow.tracing.configure(
        exporter="console", console_stream=out, set_global=False, console_format="lines"
    )
    providers.append(provider)
    tracer = provider.get_tracer("stageflow")
    with (
        tracer.start_as_current_span("run demo"),
        tracer.start_as_current_span(
            "stage local", attributes={"stageflow.node.id": "local", "other": 1}
        ),
    ):
        pass
    stageflow.tracing.shutdown(provider)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"span stage local  \d+\.\d ms  ok  node\.id=local  trace [0-9a-f]{8}  "
        r"span [0-9a-f]{8}  parent [0-9a-f]{8}",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("span run demo  ")
    assert "parent" not in lines[1]
    assert "{" not in out.getvalue()


@pytest.mark.anyio
async def test_console_lines_stay_one_line_a_span_whatever_a_name_or_an_id_holds(
    providers: list[TracerProvider],
) -> None:
    # A line break in a session id (or, before such names were refused at
    # load, a pipeline's name) started a line that looked like another
    # span's, and an escape sequence went to the terminal.
    out = io.StringIO()
    provider = stageflow.tracing.configure(
        exporter="console", console_stream=out, set_global=False, console_format="lines"
    )
    providers.append(provider)
    registry = fake_registry()
    document = doc([stage("a", "Set", next="end"), terminal()], metadata={"name": "p q"})
    session = stageflow.Session(
        load(document, registry),
        registry=registry,
        tracer_provider=provider,
        session_id="s\nspan fake  1.0 ms  ok\x1b[31m\ud800",
    )
    await session.run()
    stageflow.tracing.shutdown(provider)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # stage a, terminal end, the run
    assert "\x1b" not in out.getvalue()
    assert lines[2].startswith("span run p q  ")
    assert "session.id=s\\nspan fake  1.0 ms  ok\\x1b[31m\\ud800 " in lines[2]


def test_console_exporter_prints_each_span_as_json(providers: list[TracerProvider]) -> None:
    out = io.StringIO()
    provider = stageflow.tracing.configure(exporter="console", console_stream=out, set_global=False)
    providers.append(provider)
    with provider.get_tracer("stageflow").start_as_current_span(
        "stage local", attributes={"stageflow.node.id": "local"}
    ):
        pass
    assert out.getvalue() == ""  # batched: nothing is written while the span is buffered
    stageflow.tracing.shutdown(provider)

    text, decoder, spans = out.getvalue(), json.JSONDecoder(), []
    position = 0
    while text[position:].strip():
        span, position = decoder.raw_decode(text, text.index("{", position))
        spans.append(span)
    assert [(s["name"], s["attributes"]) for s in spans] == [
        ("stage local", {"stageflow.node.id": "local"})
    ]


# -- bad input -------------------------------------------------------------------------------


def test_missing_http_exporter_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, HTTP_MODULE, None)  # makes the import fail
    with pytest.raises(stageflow.TracingSetupError) as caught:
        stageflow.tracing.configure(set_global=False)
    message = str(caught.value)
    assert "pip install 'opentelemetry-exporter-otlp-proto-http'" in message
    assert isinstance(caught.value, stageflow.StageflowError)
    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.parametrize("via_environment", [False, True])
def test_grpc_protocol_uses_the_grpc_exporter(
    monkeypatch: pytest.MonkeyPatch, via_environment: bool
) -> None:
    # The gRPC exporter is in the otlp extra only; blocking it makes the test the
    # same whether or not it happens to be installed.
    monkeypatch.setitem(sys.modules, GRPC_MODULE, None)
    if via_environment:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        call = {}
    else:
        call = {"protocol": "grpc"}
    with pytest.raises(stageflow.TracingSetupError, match="opentelemetry-exporter-otlp-proto-grpc"):
        stageflow.tracing.configure(set_global=False, **call)


def test_traces_protocol_variable_wins_over_the_general_one(
    otlp_receiver: OtlpReceiver, providers: list[TracerProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, GRPC_MODULE, None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    provider = stageflow.tracing.configure(endpoint=otlp_receiver.endpoint, set_global=False)
    providers.append(provider)
    with provider.get_tracer("stageflow").start_as_current_span("run http"):
        pass
    assert provider.force_flush(10_000)
    assert otlp_receiver.names() == ["run http"]


@pytest.mark.parametrize(
    ("kwargs", "env", "expected"),
    [
        ({"exporter": "zipkin"}, {}, "unknown exporter 'zipkin'"),
        ({"protocol": "thrift"}, {}, "protocol is 'thrift'"),
        (
            {"exporter": "console", "console_format": "line"},
            {},
            "unknown console_format 'line'",
        ),
        (
            {},
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "environment variable OTEL_EXPORTER_OTLP_PROTOCOL is 'http/json'",
        ),
    ],
)
def test_bad_settings_are_typed_errors_that_say_what_to_use(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, str], env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(stageflow.TracingSetupError, match="use ") as caught:
        stageflow.tracing.configure(set_global=False, **kwargs)
    assert expected in str(caught.value)


@pytest.mark.parametrize("configure", ["configure", "configure_metrics"])
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"service_name": 5}, "service_name was given an int; pass a non-empty string"),
        ({"service_name": ""}, "service_name was given ''; pass a non-empty string"),
        ({"console_stream": "out.txt"}, "console_stream was given a str, which has no write()"),
        ({"endpoint": 4318}, "endpoint was given an int; pass the collector's URL as a string"),
        ({"endpoint": " "}, "endpoint was given ' '; pass the collector's URL as a string"),
    ],
)
def test_a_service_name_console_stream_or_endpoint_of_the_wrong_kind_is_refused(
    configure: str, kwargs: dict[str, Any], expected: str
) -> None:
    # Taken before: an int service.name went into every exported resource, and
    # a console stream with no write() failed in the exporter's thread.
    with pytest.raises(stageflow.TracingSetupError) as caught:
        getattr(stageflow.tracing, configure)(exporter="console", set_global=False, **kwargs)
    assert f"stageflow.tracing.{configure}: {expected}" in str(caught.value)


@pytest.mark.parametrize("configure", ["configure", "configure_metrics"])
def test_an_empty_endpoint_is_taken_as_none(configure: str) -> None:
    provider = getattr(stageflow.tracing, configure)(exporter="none", endpoint="", set_global=False)
    provider.shutdown()


@pytest.mark.parametrize(
    "api_provider", [trace.NoOpTracerProvider(), trace.ProxyTracerProvider()], ids=type
)
def test_flushing_or_shutting_down_an_api_provider_does_nothing(
    api_provider: trace.TracerProvider,
) -> None:
    # "Nothing happens for providers that are not SDK ones": both raised
    # AttributeError, having no force_flush() or shutdown().
    assert stageflow.tracing.force_flush(api_provider) is True
    stageflow.tracing.shutdown(api_provider)


@pytest.mark.parametrize("function", ["force_flush", "shutdown"])
def test_flushing_or_shutting_down_something_else_is_a_typed_error(function: str) -> None:
    with pytest.raises(TypeError) as caught:
        getattr(stageflow.tracing, function)("collector")
    assert str(caught.value).startswith(
        f"stageflow.tracing.{function}: provider was given a str, which has no {function}(); "
        "pass the provider configure() or configure_metrics() returned"
    )


# -- the global provider (in a subprocess: OpenTelemetry sets it once per process) -----------

GLOBAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from opentelemetry import trace
    import stageflow, stageflow.tracing

    assert stageflow.tracing.force_flush() is True   # no SDK provider yet: nothing to do
    stageflow.tracing.shutdown()
    provider = stageflow.tracing.configure(exporter="console", console_stream=sys.stdout)
    assert trace.get_tracer_provider() is provider
    try:
        stageflow.tracing.configure(exporter="none")
    except stageflow.TracingSetupError as exc:
        print("refused:", exc, file=sys.stderr)
    with trace.get_tracer("stageflow").start_as_current_span("before shutdown"):
        pass
    stageflow.tracing.shutdown()
    with trace.get_tracer("stageflow").start_as_current_span("after shutdown"):
        pass
    """
)


def test_global_provider_is_set_once_flushed_and_shut_down() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "before shutdown"' in done.stdout
    assert "after shutdown" not in done.stdout
    assert "refused: stageflow.tracing.configure: a global tracer provider is already set" in (
        done.stderr
    )
