"""A small OTLP/HTTP receiver for tests: real export, decoded with opentelemetry-proto.

It stands in for an OpenTelemetry Collector (which cannot be installed here):
an HTTP server on 127.0.0.1 (ephemeral port, in a thread) that accepts
``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``, as the
OTLP/HTTP exporter sends it, and keeps every span it decodes; and
``POST /v1/metrics`` (``ExportMetricsServiceRequest``), keeping each metric's
name, scope and resource.

Use it as a context manager, or through the ``otlp_receiver`` fixture, which
``conftest.py`` makes available to every test (``pytest_plugins``)::

    def test_export(otlp_receiver: OtlpReceiver) -> None:
        provider = stageflow.tracing.configure(
            exporter="otlp", endpoint=otlp_receiver.endpoint, set_global=False
        )
        ...
        provider.force_flush()
        assert otlp_receiver.names() == [...]

``force_flush()`` returns only after the exporter got the receiver's answer,
and the receiver stores the spans before it answers, so a test reads them
right after flushing, with no waiting.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids are lowercase hex, as in logs and events."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str  # "INTERNAL", "SERVER", ...
    attributes: dict[str, Any]
    status: str  # "UNSET", "OK" or "ERROR"
    status_message: str
    events: tuple[ReceivedEvent, ...]
    links: tuple[ReceivedLink, ...]
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ReceivedMetric:
    """One metric of an export request: its name, and where it came from."""

    name: str
    scope: str
    resource: dict[str, Any]


@dataclass
class Rejected:
    """A request the receiver refused, with the reason (a test should find none)."""

    path: str
    status: int
    reason: str


def decode_value(value: AnyValue) -> Any:
    """Turn an OTLP ``AnyValue`` into the Python value it carries (arrays as tuples)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(decode_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: decode_value(kv.value) for kv in pairs}


def _decode_span(span: Span, resource: dict[str, Any], scope: str) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=decode_attributes(span.attributes),
        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        status_message=span.status.message,
        events=tuple(ReceivedEvent(e.name, decode_attributes(e.attributes)) for e in span.events),
        links=tuple(
            ReceivedLink(
                link.trace_id.hex(), link.span_id.hex(), decode_attributes(link.attributes)
            )
            for link in span.links
        ),
        resource=resource,
        scope=scope,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
    )


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    spans: list[ReceivedSpan] = field(default_factory=list)
    metrics: list[ReceivedMetric] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: _Store) -> None:
        self.store = store
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        store = self.server.store
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path not in (TRACES_PATH, METRICS_PATH):
            return self._reject(404, f"no OTLP signal at {self.path}")
        if self.headers.get_content_type() != PROTOBUF:
            return self._reject(415, f"content type {self.headers.get('Content-Type')!r}")
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                return self._reject(415, f"content encoding {encoding!r}")
            if self.path == METRICS_PATH:
                return self._store_metrics(ExportMetricsServiceRequest.FromString(body))
            request = ExportTraceServiceRequest.FromString(body)
        except Exception as exc:  # a body that does not decode is the exporter's bug
            return self._reject(400, f"undecodable body: {exc!r}")
        decoded = [
            _decode_span(span, decode_attributes(rs.resource.attributes), ss.scope.name)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with store.lock:  # stored before answering, so force_flush() implies stored
            store.requests += 1
            store.headers.append({k.lower(): v for k, v in self.headers.items()})
            store.spans.extend(decoded)
        self._answer(200, ExportTraceServiceResponse().SerializeToString())

    def _store_metrics(self, request: ExportMetricsServiceRequest) -> None:
        decoded = [
            ReceivedMetric(metric.name, sm.scope.name, decode_attributes(rm.resource.attributes))
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
        store = self.server.store
        with store.lock:  # stored before answering, as spans are
            store.requests += 1
            store.headers.append({k.lower(): v for k, v in self.headers.items()})
            store.metrics.extend(decoded)
        self._answer(200, ExportMetricsServiceResponse().SerializeToString())

    def _reject(self, status: int, reason: str) -> None:
        store = self.server.store
        with store.lock:
            store.rejected.append(Rejected(self.path, status, reason))
        self._answer(status, reason.encode(), content_type="text/plain")

    def _answer(self, status: int, body: bytes, *, content_type: str = PROTOBUF) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean (the default writes every request to stderr)."""


class OtlpReceiver:
    """An OTLP/HTTP trace and metric receiver on 127.0.0.1; a context manager (start, stop)."""

    def __init__(self) -> None:
        self._store = _Store()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OtlpReceiver:
        self._server = _Server(self._store)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The full traces URL, for ``stageflow.tracing.configure(endpoint=...)``."""
        return self.base_url + TRACES_PATH

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._store.lock:
            return list(self._store.spans)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        """Every metric received so far (one per metric per export request), in arrival order."""
        with self._store.lock:
            return list(self._store.metrics)

    @property
    def requests(self) -> int:
        """How many export requests were accepted."""
        with self._store.lock:
            return self._store.requests

    @property
    def headers(self) -> list[dict[str, str]]:
        """The HTTP headers of each accepted request (names in lower case)."""
        with self._store.lock:
            return list(self._store.headers)

    @property
    def rejected(self) -> list[Rejected]:
        """Requests refused (wrong path, content type or body)."""
        with self._store.lock:
            return list(self._store.rejected)

    def names(self) -> list[str]:
        """The received span names, sorted (export order is not start order)."""
        return sorted(span.name for span in self.spans)

    def span(self, name: str) -> ReceivedSpan:
        """The one received span called ``name`` (fails if there are none or several)."""
        found = [span for span in self.spans if span.name == name]
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}: {self.names()}"
        return found[0]


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A started :class:`OtlpReceiver`, stopped after the test."""
    with OtlpReceiver() as receiver:
        yield receiver
