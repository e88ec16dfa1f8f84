"""The ``exporter`` and ``provider`` fixtures: spans kept in memory, read back by the test.

A pytest plugin, registered for every test in ``conftest.py``
(``pytest_plugins``). A test hands ``provider`` to ``Session(tracer_provider=...)``
and reads the finished spans from ``exporter``; the provider is shut down after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Keeps every span it is given, for ``get_finished_spans()``."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A tracer provider that hands each span to ``exporter`` as it ends."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()
