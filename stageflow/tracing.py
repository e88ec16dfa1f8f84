"""Set up the OpenTelemetry SDK to export stageflow's spans and metrics.

The engine itself only uses ``opentelemetry-api``: it creates spans through
whatever tracer provider the application has, and creates none when there is
no SDK provider. This module is for applications (and the CLI) that have no
tracing set-up of their own and want one line to get a working one::

    import stageflow.tracing

    provider = stageflow.tracing.configure()          # OTLP over HTTP/protobuf
    try:
        ...                                           # run sessions
    finally:
        stageflow.tracing.shutdown()                  # flush what is buffered

:func:`configure` builds an SDK :class:`~opentelemetry.sdk.trace.TracerProvider`
with a :class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor` and an
exporter. The standard ``OTEL_*`` environment variables keep their meaning,
because they are read by the SDK and the exporters themselves:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (resource),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``,
``..._CERTIFICATE`` (exporter), ``OTEL_BSP_*`` (batching), ``OTEL_TRACES_SAMPLER``
and ``OTEL_SDK_DISABLED`` (provider). The Python exporters do not read
``OTEL_EXPORTER_OTLP_PROTOCOL``; :func:`configure` does, when no ``protocol`` is
given.

OTLP over HTTP/protobuf is part of a plain install; OTLP over gRPC is the
optional extra ``pip install 'stageflow[otlp]'``. Exporters are imported only
when :func:`configure` needs one.

:func:`configure_metrics` does the same for metrics: an SDK
:class:`~opentelemetry.sdk.metrics.MeterProvider` with a periodic reader and
an OTLP (or console) metric exporter, set as the global meter provider, where
sessions look for it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Final, Literal, TextIO, cast

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from stageflow._errors import TracingSetupError, printable_text
from stageflow._json import a_python_type
from stageflow._metrics import PROXY_METER_PROVIDER, global_provider_set
from stageflow._segments import wanted_ids, wanted_trace_id

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "ConsoleFormat",
    "Exporter",
    "Protocol",
    "RestoringIdGenerator",
    "TracingSetupError",
    "configure",
    "configure_metrics",
    "force_flush",
    "format_span_line",
    "shutdown",
]

Exporter = Literal["otlp", "console", "none"]
"""Where :func:`configure` sends spans."""

ConsoleFormat = Literal["json", "lines"]
"""How the console exporter writes spans: OpenTelemetry's JSON, or one line each."""

Protocol = Literal["http/protobuf", "grpc"]
"""The OTLP transport (the values of ``OTEL_EXPORTER_OTLP_PROTOCOL`` that Python supports)."""

DEFAULT_SERVICE_NAME: Final = "stageflow"
"""``service.name`` used when neither the caller nor ``OTEL_SERVICE_NAME`` names one."""

# The trace id bits W3C's random-trace-id flag vouches for (its rightmost 7 bytes).
_RANDOM_BITS: Final = (1 << 56) - 1
_EXPORTERS: Final = ("otlp", "console", "none")
_PROTOCOLS: Final = ("http/protobuf", "grpc")
_PROTOCOL_ENV: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_OTLP_MODULES: Final = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
}
_OTLP_METRIC_MODULES: Final = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
}
_METRICS_PROTOCOL_ENV: Final = (
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)
_OTLP_PACKAGES: Final = {
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
}


class RestoringIdGenerator(RandomIdGenerator):
    """Random ids, except for a span stageflow rebuilds after a crash: it keeps its own.

    When a session is restored from a snapshot taken while spans were open
    (the process that took it may have died before exporting them), stageflow
    exports those spans once, with the ids their children and links already
    point at. The SDK draws ids from the provider's id generator, so that
    needs this one: :func:`configure` installs it, and an application with its
    own provider passes it, ``TracerProvider(id_generator=RestoringIdGenerator())``.
    With another generator the rebuild exports nothing (see
    ``docs/observability.md``).

    It also gives the root of a run's later segment (after a long wait) a
    trace id with the same low 64 bits as the segment before, the bits the
    SDK's ratio sampler (``TraceIdRatioBased``, alone or under
    ``ParentBased``) decides on: a run sampled in its first segment is sampled
    in every one. With another generator each segment is sampled afresh.
    """

    def generate_span_id(self) -> int:
        """The span id a rebuilt span must keep, or a random one."""
        wanted = wanted_ids()
        return wanted[1] if wanted is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        """The trace id a rebuilt root span must keep, or a new segment's, or a random one."""
        wanted = wanted_ids()
        if wanted is not None:
            return wanted[0]
        segment = wanted_trace_id()
        return segment if segment is not None else super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        """Whether the trace id just drawn has random low bits (W3C's ``random-trace-id`` flag).

        A new segment's (or a restored run's, or a rebuilt span's) keeps the
        low bits of the trace before it, random too; but the later segments
        of a run started in a caller's span have low bits of 0, and a trace
        flagged random with them would mislead a sampler that reads them.
        """
        wanted = wanted_ids()
        trace_id = wanted[0] if wanted is not None else wanted_trace_id()
        return trace_id is None or trace_id & _RANDOM_BITS != 0


def configure(
    *,
    service_name: str | None = None,
    exporter: Exporter = "otlp",
    protocol: Protocol | None = None,
    endpoint: str | None = None,
    set_global: bool = True,
    console_stream: TextIO | None = None,
    console_format: ConsoleFormat = "json",
) -> TracerProvider:
    """Build an SDK tracer provider that batches spans and exports them.

    Args:
        service_name: the ``service.name`` resource attribute. ``None`` (the
            default) takes it from ``OTEL_SERVICE_NAME`` or
            ``OTEL_RESOURCE_ATTRIBUTES``, and falls back to ``"stageflow"``;
            a name given here wins over the environment.
        exporter: ``"otlp"`` to send spans to a collector, ``"console"`` to
            print each span as JSON (for local use), ``"none"`` to record spans
            without exporting them (trace ids in logs and events only).
        protocol: the OTLP transport, ``"http/protobuf"`` or ``"grpc"``.
            ``None`` reads ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, then
            ``OTEL_EXPORTER_OTLP_PROTOCOL``, and defaults to
            ``"http/protobuf"``.
        endpoint: where to send spans, given as is to the exporter: the full
            traces URL for HTTP (``http://localhost:4318/v1/traces``), the
            collector address for gRPC (``http://localhost:4317``). ``None``
            lets the exporter read ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` (to which HTTP adds
            ``/v1/traces``), and then use the local collector's default port.
        set_global: install the provider as OpenTelemetry's global tracer
            provider, which is where stageflow sessions look for it.
            OpenTelemetry allows that once per process. With ``False`` the
            provider is only returned, for the caller to hand on.
        console_stream: where the console exporter writes (standard error by
            default, so a program's own output stays clean).
        console_format: ``"json"`` writes each span as OpenTelemetry's full
            JSON; ``"lines"`` writes one line per span for a person to read
            (see :func:`format_span_line`), as ``stageflow run --trace
            console`` does.

    Returns:
        The configured provider. Call :func:`shutdown` (or its ``shutdown()``)
        before the program exits so buffered spans are sent; the SDK also
        does so at interpreter exit.

    Raises:
        TracingSetupError: for an unknown ``exporter``, ``protocol`` or
            ``console_format``, a ``service_name`` that is no non-empty
            string, an ``endpoint`` that is no string (or only spaces), a
            ``console_stream`` with no ``write()``, when
            the OTLP exporter package for the protocol is not installed, or
            when ``set_global`` is true and a global SDK provider is already
            set.
    """
    _check_arguments("configure", service_name, console_stream, endpoint)
    if exporter not in _EXPORTERS:
        raise TracingSetupError(
            f"stageflow.tracing.configure: unknown exporter {exporter!r}; "
            f"use one of {', '.join(repr(e) for e in _EXPORTERS)}"
        )
    if console_format not in ("json", "lines"):
        raise TracingSetupError(
            f"stageflow.tracing.configure: unknown console_format {console_format!r}; "
            "use 'json' or 'lines'"
        )
    if set_global and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise TracingSetupError(
            "stageflow.tracing.configure: a global tracer provider is already set "
            f"({type(trace.get_tracer_provider()).__name__}), and OpenTelemetry allows only one "
            "per process; call configure() once, or pass set_global=False and use the "
            "provider it returns"
        )
    span_exporter: SpanExporter | None
    if exporter == "otlp":
        span_exporter = _otlp_exporter(_resolve_protocol(protocol), endpoint)
    elif exporter == "console":
        out = console_stream if console_stream is not None else sys.stderr
        if console_format == "lines":
            span_exporter = ConsoleSpanExporter(out=out, formatter=format_span_line)
        else:
            span_exporter = ConsoleSpanExporter(out=out)
    else:
        span_exporter = None

    provider = TracerProvider(resource=_resource(service_name), id_generator=RestoringIdGenerator())
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def format_span_line(span: ReadableSpan) -> str:
    r"""One line for a finished span, for a person reading a terminal.

    ``span stage fetch  12.5 ms  ok  node.id=fetch outcome=succeeded  trace 4bf92f35
    span 00f067aa parent 53995c3f``: the name, the duration, the status,
    the ``stageflow.*`` attributes (prefix left out), then short trace, span
    and parent ids to tie lines together. Spans are written as they end, so
    a parent's line comes after its children's. A line break or an escape
    sequence in a name or a value (a pipeline's name, a session id) is
    written escaped (``\n``, ``\x1b``), so each span stays one line.
    """
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    status = span.status.status_code.name.lower()
    if status == "unset":
        status = "ok"
    attributes = " ".join(
        f"{printable_text(key.removeprefix('stageflow.'))}={printable_text(_short(value))}"
        for key, value in (span.attributes or {}).items()
        if key.startswith("stageflow.")
    )
    context = span.get_span_context()
    ids = ""
    if context is not None:
        ids = f"trace {context.trace_id:032x}"[:14] + f"  span {context.span_id:016x}"[:15]
    if span.parent is not None:
        ids += f"  parent {span.parent.span_id:016x}"[:17]
    parts = [f"span {printable_text(span.name)}", f"{(end - start) / 1e6:.1f} ms", status]
    if attributes:
        parts.append(attributes)
    if ids:
        parts.append(ids)
    return "  ".join(parts) + "\n"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:12] + "..."


def configure_metrics(
    *,
    service_name: str | None = None,
    exporter: Exporter = "otlp",
    protocol: Protocol | None = None,
    endpoint: str | None = None,
    set_global: bool = True,
    console_stream: TextIO | None = None,
    export_interval_millis: float | None = None,
) -> MeterProvider:
    """Build an SDK meter provider that exports stageflow's metrics periodically.

    The arguments mean what they mean for :func:`configure`; the endpoint is
    the full metrics URL for HTTP (``http://localhost:4318/v1/metrics``), and
    without one the exporter reads ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``. The protocol falls back on
    ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``, then ``OTEL_EXPORTER_OTLP_PROTOCOL``.

    Histograms recorded inside a sampled span (node durations, input waits)
    carry that span as an exemplar: the SDK's default exemplar filter.

    Args:
        service_name: the ``service.name`` resource attribute (see :func:`configure`).
        exporter: ``"otlp"``, ``"console"`` or ``"none"`` (measure, export nothing).
        protocol: ``"http/protobuf"`` or ``"grpc"``.
        endpoint: where to send metrics, given as is to the exporter.
        set_global: install it as OpenTelemetry's global meter provider.
        console_stream: where the console exporter writes (standard error by default).
        export_interval_millis: how often metrics are exported; ``None`` lets
            the SDK read ``OTEL_METRIC_EXPORT_INTERVAL`` (default 60 s).

    Returns:
        The configured provider; :func:`shutdown` flushes and stops it.

    Raises:
        TracingSetupError: as :func:`configure` does, and for an
            ``export_interval_millis`` that is no number above 0.
    """
    _check_arguments("configure_metrics", service_name, console_stream, endpoint)
    if export_interval_millis is not None and (
        isinstance(export_interval_millis, bool)
        or not isinstance(export_interval_millis, int | float)
        or not export_interval_millis > 0
    ):
        raise TracingSetupError(
            "stageflow.tracing.configure_metrics: export_interval_millis was given "
            f"{_shown_number(export_interval_millis)}; pass a number of milliseconds above 0 "
            "(60000 exports every minute), or leave it out for OTEL_METRIC_EXPORT_INTERVAL"
        )
    if exporter not in _EXPORTERS:
        raise TracingSetupError(
            f"stageflow.tracing.configure_metrics: unknown exporter {exporter!r}; "
            f"use one of {', '.join(repr(e) for e in _EXPORTERS)}"
        )
    if set_global and global_provider_set():
        raise TracingSetupError(
            "stageflow.tracing.configure_metrics: a global meter provider is already set "
            f"({type(metrics.get_meter_provider()).__name__}), and OpenTelemetry allows only "
            "one per process; call configure_metrics() once, or pass set_global=False and use "
            "the provider it returns"
        )
    metric_exporter: MetricExporter | None
    if exporter == "otlp":
        chosen = _resolve_protocol(protocol, _METRICS_PROTOCOL_ENV)
        module = _import_exporter(_OTLP_METRIC_MODULES[chosen], chosen)
        kwargs = {"endpoint": endpoint} if endpoint is not None else {}
        metric_exporter = module.OTLPMetricExporter(**kwargs)
    elif exporter == "console":
        metric_exporter = ConsoleMetricExporter(
            out=console_stream if console_stream is not None else sys.stderr
        )
    else:
        metric_exporter = None
    readers: list[MetricReader] = []
    if metric_exporter is not None:
        readers.append(
            PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=export_interval_millis
            )
        )
    provider = MeterProvider(metric_readers=readers, resource=_resource(service_name))
    if set_global:
        metrics.set_meter_provider(provider)
    return provider


def force_flush(
    provider: TracerProvider | MeterProvider | None = None, *, timeout_millis: int = 30_000
) -> bool:
    """Export every span that has ended but is still buffered.

    Args:
        provider: the provider :func:`configure` (or :func:`configure_metrics`)
            returned; ``None`` flushes the global tracer provider.
        timeout_millis: how long to wait for the exporter.

    Returns:
        True when everything was exported in time (also when there is no SDK
        provider, so nothing to flush); False otherwise.

    Raises:
        TypeError: for a ``provider`` that has no ``force_flush()``.
    """
    target = _sdk_provider(provider, "force_flush")
    return True if target is None else target.force_flush(timeout_millis)


def shutdown(provider: TracerProvider | MeterProvider | None = None) -> None:
    """Flush buffered spans and shut the provider's processors and exporters down.

    Spans started afterwards are not exported. Calling it twice is harmless.
    With no collector listening, the OTLP exporter retries each batch with
    backoff for up to its timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by
    default) before giving up, so shutdown can take that long;
    ``tracing/README.md`` says how to shorten it.

    Args:
        provider: the provider :func:`configure` (or :func:`configure_metrics`)
            returned; ``None`` shuts the global tracer provider down, and the
            global meter provider too when it is an SDK one
            (:func:`configure_metrics`). Nothing happens for the API's
            providers (no-op, or the stand-in before one is set).

    Raises:
        TypeError: for a ``provider`` that has no ``shutdown()``.
    """
    target = _sdk_provider(provider, "shutdown")
    if target is not None:
        target.shutdown()
    if provider is None:
        meters = metrics.get_meter_provider()
        if isinstance(meters, MeterProvider):
            meters.shutdown()


def _shown_number(value: object) -> str:
    """A number as a message quotes it (``-1``, ``nan``), anything else by its type."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return a_python_type(value)


def _check_arguments(
    caller: str, service_name: object, console_stream: object, endpoint: object
) -> None:
    """Refuse arguments that the SDK would take and fail on later (in the export thread)."""
    # An empty endpoint is taken as none (the exporter reads OTEL_* then), as before.
    if endpoint is not None and (type(endpoint) is not str or (endpoint and not endpoint.strip())):
        signal = "traces" if caller == "configure" else "metrics"
        raise TracingSetupError(
            f"stageflow.tracing.{caller}: endpoint was given "
            f"{repr(endpoint) if isinstance(endpoint, str) else a_python_type(endpoint)}; pass "
            f"the collector's URL as a string (http://localhost:4318/v1/{signal} over HTTP), "
            "or leave it out for OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    if service_name is not None and (type(service_name) is not str or not service_name):
        raise TracingSetupError(
            f"stageflow.tracing.{caller}: service_name was given "
            f"{repr(service_name) if service_name == '' else a_python_type(service_name)}; pass "
            "a non-empty string (the service.name that trace viewers group by), or leave it "
            "out for OTEL_SERVICE_NAME or 'stageflow'"
        )
    if console_stream is not None and not callable(getattr(console_stream, "write", None)):
        raise TracingSetupError(
            f"stageflow.tracing.{caller}: console_stream was given "
            f"{a_python_type(console_stream)}, which has no write(); pass a text stream such "
            "as sys.stdout, or leave it out for standard error"
        )


def _sdk_provider(
    provider: TracerProvider | MeterProvider | None, method: str
) -> TracerProvider | MeterProvider | None:
    """The provider to flush or shut down; ``None`` for the API's, which buffer nothing."""
    if provider is None:
        current = trace.get_tracer_provider()
        return current if isinstance(current, TracerProvider) else None
    if isinstance(provider, _API_PROVIDERS) or type(provider).__name__ == PROXY_METER_PROVIDER:
        return None
    if not callable(getattr(provider, method, None)):
        raise TypeError(
            f"stageflow.tracing.{method}: provider was given {a_python_type(provider)}, which "
            f"has no {method}(); pass the provider configure() or configure_metrics() "
            "returned, or leave it out for the global one"
        )
    return provider


_API_PROVIDERS: Final = (
    trace.NoOpTracerProvider,
    trace.ProxyTracerProvider,
    metrics.NoOpMeterProvider,
)


def _resource(service_name: str | None) -> Resource:
    if service_name is not None:
        # An explicit name wins over the environment (Resource.create merges it last).
        return Resource.create({SERVICE_NAME: service_name})
    # Our default loses to OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, which
    # the SDK's own detector reads.
    return Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}).merge(
        OTELResourceDetector().detect()
    )


def _resolve_protocol(protocol: str | None, variables: tuple[str, ...] = _PROTOCOL_ENV) -> Protocol:
    source = "protocol"
    if protocol is None:
        for name in variables:
            value = os.environ.get(name, "").strip()
            if value:
                protocol, source = value, f"environment variable {name}"
                break
        else:
            return "http/protobuf"
    if protocol not in _PROTOCOLS:
        hint = " (the Python OTLP exporters do not support http/json)" * (protocol == "http/json")
        raise TracingSetupError(
            f"stageflow.tracing.configure: {source} is {protocol!r}, which is not an OTLP "
            f"protocol stageflow can use{hint}; use 'http/protobuf' or 'grpc'"
        )
    return cast(Protocol, protocol)


def _import_exporter(module_name: str, protocol: Protocol) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        package = _OTLP_PACKAGES[protocol]
        # HTTP is a dependency of stageflow (a broken install); gRPC is the extra.
        how = (
            f"pip install '{package}'"
            if protocol == "http/protobuf"
            else ("pip install 'stageflow[otlp]'")
        )
        raise TracingSetupError(
            f"stageflow.tracing.configure: OTLP over {protocol} needs the package "
            f"{package}, which cannot be imported ({exc}); install it with: {how}"
        ) from exc


def _otlp_exporter(protocol: Protocol, endpoint: str | None) -> SpanExporter:
    module = _import_exporter(_OTLP_MODULES[protocol], protocol)
    # Only a given endpoint is passed: without one the exporter reads OTEL_*.
    kwargs = {"endpoint": endpoint} if endpoint is not None else {}
    span_exporter: SpanExporter = module.OTLPSpanExporter(**kwargs)
    return span_exporter
