"""Tracing through ``opentelemetry-api`` only, decided once per run.

A session asks :meth:`Tracing.resolve` once, when it is made. Without an SDK
(or other real) tracer provider it gets ``None`` and creates no span objects
at all; otherwise the one :class:`Tracing` object is handed to the run, the
input desk and the history, and every node execution, branch, map item and
run gets a span, named and attributed as ``tracing/CATALOGUE.md`` documents.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Final, Literal, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from stageflow._errors import error_text, error_traceback
from stageflow._json import a_python_type
from stageflow._log import SPAN_REPORTED, first_report
from stageflow._segments import SegmentedSpan, Segments

__all__ = [
    "ATTEMPT",
    "BRANCH",
    "CANCEL_REASON",
    "CancelReason",
    "CONDITION_BRANCH",
    "ERROR_HANDLED",
    "ERROR_TYPE",
    "INPUT_TYPE",
    "LINK_KIND",
    "MAP_INDEX",
    "NEXT_NODE",
    "NODE_ID",
    "NODE_TYPE",
    "OUTCOME",
    "PIPELINE_DIGEST",
    "PIPELINE_NAME",
    "POLICY",
    "REJECT_REASON",
    "SESSION_ID",
    "SESSION_STATUS",
    "STAGE",
    "WAIT_SECONDS",
    "SUBPIPELINE",
    "ActiveSpan",
    "active_ids",
    "SpanIds",
    "Tracing",
    "current_ids",
    "enter",
    "enter_span",
    "error_type",
    "exception_attributes",
    "exit_span",
    "bind_span",
    "input_link",
    "measured_in",
    "sender_context",
    "resolve_tracer",
    "restored_link",
    "span_ids",
    "check_provider",
]

SESSION_ID: Final = "stageflow.session.id"
PIPELINE_NAME: Final = "stageflow.pipeline.name"
PIPELINE_DIGEST: Final = "stageflow.pipeline.digest"
NODE_ID: Final = "stageflow.node.id"
NODE_TYPE: Final = "stageflow.node.type"
STAGE: Final = "stageflow.stage"
ATTEMPT: Final = "stageflow.attempt"
OUTCOME: Final = "stageflow.outcome"
POLICY: Final = "stageflow.parallel.policy"
BRANCH: Final = "stageflow.branch"
INPUT_TYPE: Final = "stageflow.input.type"
MAP_INDEX: Final = "stageflow.map.index"
LINK_KIND: Final = "stageflow.link.kind"
CONDITION_BRANCH: Final = "stageflow.condition.branch"
NEXT_NODE: Final = "stageflow.next"
SUBPIPELINE: Final = "stageflow.subpipeline.name"
CANCEL_REASON: Final = "stageflow.cancel.reason"
CancelReason = Literal[
    "lost_race",
    "sibling_failed",
    "terminal_reached",
    "session_cancelled",
    "session_timeout",
    "max_run_seconds",
    "suspended",
    "cancelled",
]
"""Every value of ``stageflow.cancel.reason`` (tracing/CATALOGUE.md lists each)."""
ERROR_TYPE: Final = "error.type"  # OpenTelemetry's semantic convention, not stageflow.*
ERROR_HANDLED: Final = "stageflow.error.handled"
REJECT_REASON: Final = "stageflow.input.reject_reason"
SESSION_STATUS: Final = "stageflow.session.status"
WAIT_SECONDS: Final = "stageflow.wait.seconds"

_NO_PROVIDER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

SpanIds = tuple[str, str, str | None]

# The OpenTelemetry context that enter_span() made current, with the ids of its
# span: every event recorded inside the span needs them, and formatting them
# costs more than checking that this context is still the current one.
# A segmented span is kept instead of its ids: a cut changes them.
_Entered = tuple[otel_context.Context, SpanIds | SegmentedSpan]
_ENTERED: Final[ContextVar[_Entered | None]] = ContextVar("stageflow_entered_span", default=None)


def resolve_tracer(provider: trace.TracerProvider | None, version: str) -> Tracer | None:
    """The tracer for a run, or ``None`` when no real tracer provider is configured."""
    chosen = provider if provider is not None else trace.get_tracer_provider()
    if isinstance(chosen, _NO_PROVIDER):
        return None
    tracer = chosen.get_tracer("stageflow", version)
    # An SDK provider turned off (OTEL_SDK_DISABLED=true) hands out a no-op
    # tracer, whose spans all have the invalid (all-zero) ids: no tracing.
    return None if isinstance(tracer, trace.NoOpTracer) else tracer


def span_ids(span: Span) -> SpanIds:
    """``(trace_id, span_id, parent_span_id)`` of a span, as lowercase hex."""
    context = span.get_span_context()
    parent = getattr(span, "parent", None)
    # Ids are 128 and 64 bits wide; bytes.hex() costs half of format(id, "032x").
    return (
        context.trace_id.to_bytes(16, "big").hex(),
        context.span_id.to_bytes(8, "big").hex(),
        parent.span_id.to_bytes(8, "big").hex() if parent is not None else None,
    )


def current_ids() -> SpanIds | None:
    """Ids of the current span (from the OpenTelemetry context), if it is valid."""
    entered = _ENTERED.get()
    if entered is not None and entered[0] is otel_context.get_current():
        known = entered[1]  # still in the span enter_span() started: ids known
        return known if type(known) is tuple else known.ids  # type: ignore[union-attr]
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    return span_ids(span)


class ActiveSpan(NamedTuple):
    """A span made current by :func:`enter_span`, to be closed by :func:`exit_span`."""

    span: Span
    token: object
    ids: SpanIds
    entered: Token[_Entered | None]


def enter_span(
    tracer: Tracer,
    name: str,
    attributes: dict[str, Any],
    links: list[trace.Link] | None = None,
) -> ActiveSpan:
    """Start a span as a child of the current one and make it current."""
    return enter(tracer.start_span(name, attributes=attributes, links=links))


def active_ids(active: ActiveSpan | None) -> SpanIds | None:
    """The ids of an entered span's live incarnation (what :func:`current_ids` gives in it).

    For the events a node records about itself: they carry its span's ids
    even when the stage left a context of its own attached. ``None`` for no
    span (the history then looks the current span up).
    """
    if active is None:
        return None
    span = active.span
    return span.ids if type(span) is SegmentedSpan else active.ids


def enter(span: Span) -> ActiveSpan:
    """Make a started span current."""
    context = trace.set_span_in_context(span)
    if type(span) is SegmentedSpan:  # not isinstance(): see Segments.start
        return ActiveSpan(
            span, otel_context.attach(context), span.ids, _ENTERED.set((context, span))
        )
    ids = span_ids(span)
    return ActiveSpan(span, otel_context.attach(context), ids, _ENTERED.set((context, ids)))


def measured_in(active: ActiveSpan) -> None:
    """Ready an entered span to be a measurement's exemplar: started again if a cut ended it.

    A node that ends after a cut (cancelled in a long wait) ends in the new
    segment; its duration's exemplar is that incarnation, which carries the
    outcome, not the one the cut ended.
    """
    span = active.span
    if type(span) is SegmentedSpan:
        span.live()


def bind_span(log: Any, active: ActiveSpan) -> Any:
    """``log`` bound to a span's ``trace_id``, ``span_id`` and ``trace_flags``.

    For a span a segment cut ended and started again, the ids of its newest
    incarnation (a cut span is never started again by this).
    """
    span = active.span
    if type(span) is SegmentedSpan:
        trace_id, span_id, _ = span.ids
        flags = span.flags
    else:
        trace_id, span_id, _ = active.ids
        flags = span.get_span_context().trace_flags
    return log.bind(trace_id=trace_id, span_id=span_id, trace_flags=f"{flags:02x}")


def restored_link(trace_id: str, span_id: str) -> trace.Link:
    """A link to the root span of the run a restored session's snapshot came from."""
    context = trace.SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.Link(context, {LINK_KIND: "restored_from"})


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its class, qualified by its public module."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def exception_attributes(error: BaseException) -> dict[str, Any]:
    """The ``exception`` event of a failure: what the SDK's ``record_exception`` writes, bounded.

    Its message and traceback as the log lines have them (cut, see
    :func:`~stageflow._errors.error_traceback`), and never raising: the SDK
    calls ``str()`` on the exception, which may fail or be megabytes long
    for a stage's own ``BaseException`` (no :class:`~stageflow.StageError`
    wraps those).
    """
    return {
        "exception.type": error_type(error),
        "exception.message": error_text(error),
        "exception.stacktrace": error_traceback(error),
        "exception.escaped": "False",
    }


def exit_span(
    active: ActiveSpan,
    outcome: str,
    error: BaseException | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Finish a span with its outcome (ERROR and ``error.type`` only for failures).

    The exception itself is recorded as an event on the first span it ends
    (see :func:`first_report`); the spans it crosses on its way out get the
    status and ``error.type`` only. Restores the span that was current before
    :func:`enter_span`.
    """
    span = active.span
    # A segmented span's last attributes go straight to its incarnation: it
    # will not be started again, so its own record of them needs no update.
    target: Span | None = span
    if type(span) is SegmentedSpan:
        target = span.live() if span.span is not None or span.revivable else None
    if target is not None:  # None: a wait span a cut ended stays as the cut left it
        target.set_attribute(OUTCOME, outcome)
        if attributes:
            target.set_attributes(attributes)
        if error is not None:
            target.set_attribute(ERROR_TYPE, error_type(error))
            if first_report(error, SPAN_REPORTED):
                target.add_event("exception", exception_attributes(error))
            target.set_status(
                Status(StatusCode.ERROR, f"{type(error).__name__}: {error_text(error)}")
            )
    span.end()
    try:  # noqa: SIM105 (contextlib.suppress costs a third of a microsecond per span)
        _ENTERED.reset(active.entered)
    except ValueError:
        # Exited in another context than it was entered in: OpenTelemetry's
        # detach below logs that; the stale entry cannot match a later context.
        pass
    otel_context.detach(active.token)  # type: ignore[arg-type]


def sender_context() -> trace.SpanContext | None:
    """The current span's context when it is valid: who sends an input, for its link."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def input_link(sender: trace.SpanContext) -> None:
    """Link the current span (a stage that got an input) to the span that sent it."""
    trace.get_current_span().add_link(sender, {LINK_KIND: "input_from"})


def add_event(name: str, attributes: dict[str, Any]) -> None:
    """Add an event to the current span (a no-op on a non-recording span)."""
    trace.get_current_span().add_event(name, attributes)


class Tracing:
    """Tracing for one session: its tracer, and the span operations the engine uses.

    A session without a real tracer provider has no ``Tracing`` at all
    (``None``), so the untraced path is one ``is None`` test. ``threshold``
    is the session's ``trace_wait_threshold`` (``None``: waits never cut the
    trace); ``segments`` holds the open spans of the run in progress (set
    by the run for its duration, whether or not its waits may cut it), for
    the cuts and for live snapshots.
    """

    __slots__ = ("segments", "threshold", "tracer")

    def __init__(self, tracer: Tracer, threshold: float | None = None) -> None:
        self.tracer = tracer
        self.threshold = threshold
        self.segments: Segments | None = None

    @classmethod
    def resolve(
        cls, provider: trace.TracerProvider | None, version: str, threshold: float | None = None
    ) -> Tracing | None:
        """Tracing through ``provider`` (the global one if ``None``), or ``None`` without one."""
        tracer = resolve_tracer(provider, version)
        return cls(tracer, threshold) if tracer is not None else None

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        links: list[trace.Link] | None = None,
        *,
        revivable: bool = True,
    ) -> ActiveSpan:
        """Start a span under the current one and make it current (see :func:`enter_span`).

        In a run, the span is a :class:`~stageflow._segments.SegmentedSpan`
        (``revivable=False``: a wait span, which a cut ends for good).
        """
        segments = self.segments
        if segments is None:
            return enter_span(self.tracer, name, attributes, links)
        return enter(segments.start(name, attributes, links, revivable))

    @staticmethod
    def end(
        active: ActiveSpan,
        outcome: str,
        error: BaseException | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Finish a span started by :meth:`start` (see :func:`exit_span`)."""
        exit_span(active, outcome, error, attributes)

    @staticmethod
    def current_ids() -> SpanIds | None:
        """Ids of the current span, for an event recorded now (see :func:`current_ids`)."""
        return current_ids()

    @staticmethod
    def add_event(name: str, attributes: dict[str, Any]) -> None:
        """Add an event to the current span."""
        add_event(name, attributes)

    @staticmethod
    def set_attribute(key: str, value: Any) -> None:
        """Set an attribute on the current span."""
        trace.get_current_span().set_attribute(key, value)


def check_provider(call: str, name: str, provider: object) -> None:
    """Refuse a ``tracer_provider`` or ``meter_provider`` (``name``) that cannot be one.

    ``None`` (the global provider) passes; anything else needs the provider's
    ``get_tracer()`` or ``get_meter()``. ``call`` names what was called
    (``Session``, ``SessionService``) in the message.
    """
    method, kind = (
        ("get_tracer", "TracerProvider")
        if name == "tracer_provider"
        else ("get_meter", "MeterProvider")
    )
    if provider is not None and not callable(getattr(provider, method, None)):
        raise TypeError(
            f"{call}({name}=...) was given {a_python_type(provider)}, which has no {method}(); "
            f"pass an OpenTelemetry {kind} (the SDK's, or the API's no-op one), or leave it out "
            "for the global one"
        )
