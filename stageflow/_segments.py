"""Trace segments: no span stays open across a long wait; open spans survive a crash.

A run that waits (for a person's input, or a long timer) with nothing else
to do has its open spans ended at once (``stageflow.outcome = waiting``) and
exported: the run is cut into segments. Every span of a traced run is a
:class:`SegmentedSpan`, a span whose *incarnation* (the SDK span behind it)
can end at a cut and be started again, lazily, the first time the run uses
it afterwards (a child span, an event, its end). The incarnations after a cut
form the next segment: a new trace whose root, ``run {pipeline}``, links to
the previous segment's root; every revived span links to its previous
incarnation. The ids events are stamped with are those of the incarnation
current at the time.

A live snapshot lists the incarnations open at that moment (``trace.open``).
If the process dies, they are never exported; restoring the snapshot
rebuilds them with their original ids and exports them once
(:func:`rebuild`), so no exported span has a missing parent and the restored
run's link has a target. Keeping an id takes the provider's cooperation: the
SDK draws ids from its id generator, and :class:`RestoringIdGenerator`-style
generators (``stageflow.tracing`` installs one) ask :func:`wanted_ids` first.

``docs/observability.md`` describes the model for users.
"""

from __future__ import annotations

import contextlib
import random
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, NotRequired, TypedDict, final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, Tracer
from opentelemetry.util.types import Attributes

from stageflow._json import find_non_json

__all__ = [
    "OUTCOME_INTERRUPTED",
    "OUTCOME_WAITING",
    "REBUILT",
    "SEGMENT",
    "OpenSpan",
    "SegmentedSpan",
    "Segments",
    "rebuild",
    "sampled_as",
    "wanted_ids",
    "wanted_trace_id",
]

SEGMENT: Final = "stageflow.segment"
REBUILT: Final = "stageflow.span.rebuilt"
OUTCOME_WAITING: Final = "waiting"
OUTCOME_INTERRUPTED: Final = "interrupted"
_OUTCOME: Final = "stageflow.outcome"
_LINK_KIND: Final = "stageflow.link.kind"

# (trace id, span id) the next span started in this context must get (a rebuild).
_WANTED: Final[ContextVar[tuple[int, int] | None]] = ContextVar(
    "stageflow_wanted_span_ids", default=None
)
# The trace id the root of a new segment, started in this context, must get.
_WANTED_TRACE: Final[ContextVar[int | None]] = ContextVar("stageflow_wanted_trace_id", default=None)
# The bits of a trace id the SDK's ratio sampler decides on (TraceIdRatioBased
# reads the low 64; W3C's "random" trace ids put their randomness there).
_SAMPLING_BITS: Final = (1 << 64) - 1


# The spans rebuilt so far, per id generator (one per provider): a snapshot
# restored again in the same process does not export its spans twice. Past
# the bound (a bound, not a tuning knob) the record starts over.
_REBUILT: Final[weakref.WeakKeyDictionary[Any, set[tuple[int, int]]]] = weakref.WeakKeyDictionary()
_REBUILT_MAX: Final = 65536


def wanted_ids() -> tuple[int, int] | None:
    """The ``(trace_id, span_id)`` a span being rebuilt needs, for an id generator."""
    return _WANTED.get()


def wanted_trace_id() -> int | None:
    """The trace id the root of a new segment needs, for an id generator.

    It keeps the low 64 bits of the previous segment's trace id, the bits
    the SDK's ratio sampler decides on, and draws the others: a run that was
    sampled stays sampled in its later segments, as one that was not stays
    unsampled. A run whose first segment had a parent span was sampled as
    the parent was: its later segments' roots get low bits of 0, which a
    ratio sampler samples.
    """
    return _WANTED_TRACE.get()


@contextlib.contextmanager
def sampled_as(trace_id: int | None) -> Iterator[None]:
    """A new trace started inside is sampled as ``trace_id``'s was (see :func:`wanted_trace_id`).

    For the root of a run's next segment, and of a run restored from a
    snapshot; ``None`` changes nothing.
    """
    if trace_id is None:
        yield
        return
    token = _WANTED_TRACE.set(random.getrandbits(64) << 64 | trace_id & _SAMPLING_BITS)
    try:
        yield
    finally:
        _WANTED_TRACE.reset(token)


def _deciding(previous: SpanContext, parent: str | None) -> int:
    """The trace id a later incarnation of a span (sampled as ``previous``) is sampled as.

    ``previous``'s own when it had no parent: a ratio sampler decided on its
    low 64 bits. One with a parent (a run started in a caller's span) was
    sampled as the parent was, whatever its bits: low bits of 0 are sampled
    at any ratio a sampler samples anything at.
    """
    return previous.trace_id if parent is None else previous.trace_id & ~_SAMPLING_BITS


class SpanLink(TypedDict):
    """A link of an open span, as a live snapshot keeps it."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any]


class OpenSpan(TypedDict):
    """An open span as a live snapshot keeps it (``trace.open``)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start: int  # nanoseconds since the epoch
    attributes: dict[str, Any]
    links: NotRequired[list[SpanLink]]  # since format 5; left out when it has none


def _hex_ids(context: SpanContext) -> tuple[str, str]:
    return context.trace_id.to_bytes(16, "big").hex(), context.span_id.to_bytes(8, "big").hex()


@final  # tested with type() is, not isinstance() (see Segments.start)
class SegmentedSpan(Span):
    """A span that a segment cut can end and the run's next use can start again."""

    def __init__(
        self,
        segments: Segments,
        parent: SegmentedSpan | None,
        name: str,
        attributes: dict[str, Any],
        span: Span,
        revivable: bool,
    ) -> None:
        self.segments = segments
        self.owner = parent  # the enclosing stageflow span (None: the run's root)
        self.name = name
        self.attributes = attributes
        self.span: Span | None = span  # the incarnation, None after a cut
        self.previous: SpanContext | None = None  # the incarnation a cut ended
        self._ended: Span | None = None  # that incarnation (for its parent)
        # A wait span is not started again after a cut, nor any span once it ended.
        self.revivable = revivable
        self.ids = _span_ids(span)
        self.flags = span.get_span_context().trace_flags

    @property
    def parent(self) -> SpanContext | None:
        """The parent of the current incarnation (as the SDK's ``Span.parent``).

        Between a cut and the next use, the parent of the incarnation the cut
        ended: reading it starts nothing again.
        """
        return getattr(self.span if self.span is not None else self._ended, "parent", None)

    def live(self) -> Span:
        """The current incarnation, started again if a cut ended it.

        A span ended for good (or a wait span a cut ended) is not: a use
        after its end goes to the incarnation that ended, as it would on a
        plain span (the SDK ignores it).
        """
        span = self.span
        if span is None:
            span = self._revive() if self.revivable else self._ended
            assert span is not None  # no incarnation: ended by a cut or for good
        return span

    def _revive(self) -> Span:
        segments = self.segments
        owner = self.owner
        previous = self.previous
        if previous is not None and not previous.trace_flags.sampled:
            # A run nobody samples stays so: a new segment's root would be
            # sampled afresh. The ended incarnation's ids go on, recording nothing.
            span: Span = trace.NonRecordingSpan(previous)
            self.span, self._ended = span, None
            segments.open[self] = None
            return span
        links = []
        if owner is None:
            # The root of a new segment: a new trace, linked to the previous one.
            # Its number is kept with its attributes: a snapshot's rebuild has it.
            segments.segment += 1
            self.attributes[SEGMENT] = segments.segment
            context = otel_context.Context()
            kind = "previous_segment"
        else:
            if owner.span is None and owner.revivable:
                owner._revive()  # the owner first: reading its context starts nothing
            context = trace.set_span_in_context(owner)
            kind = "continues"
        if self.previous is not None:
            links.append(Link(self.previous, {_LINK_KIND: kind}))
        with sampled_as(_deciding(previous, self.ids[2]) if previous is not None else None):
            span = segments.tracer.start_span(
                self.name, context=context, attributes=dict(self.attributes), links=links
            )
        self.span, self._ended = span, None
        self.ids = _span_ids(span)
        self.flags = span.get_span_context().trace_flags
        segments.open[self] = None
        if owner is None:
            segments.on_root(self)
        return span

    # -- the Span interface: every use goes to the live incarnation

    def get_span_context(self) -> SpanContext:
        """The current incarnation's context; between a cut and the next use, the ended one's.

        Reading a context starts nothing again: a log line, a metric's
        exemplar or a subscriber reads it while the run waits, and the wait
        must stay cut. The run's own uses start the span again first (a child
        from :meth:`Segments.start`, an event, its end; :meth:`Segments.wake`
        after a long wait), so a child gets the live incarnation as parent.
        """
        # Written out: the SDK asks a parent three times per child span
        # ("SDK ... per node" row).
        span = self.span
        if span is None:
            previous = self.previous
            if previous is not None:
                return previous
            span = self._revive()
        return span.get_span_context()

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute (kept for the incarnations to come)."""
        self.attributes[key] = value
        self.live().set_attribute(key, value)

    def set_attributes(self, attributes: dict[str, Any]) -> None:  # type: ignore[override]
        """Set attributes (kept for the incarnations to come)."""
        self.attributes.update(attributes)
        self.live().set_attributes(attributes)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        """Add an event to the current incarnation."""
        self.live().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Add a link to the current incarnation."""
        self.live().add_link(context, attributes)

    def update_name(self, name: str) -> None:
        """Rename the span (and the incarnations to come)."""
        self.name = name
        self.live().update_name(name)

    def is_recording(self) -> bool:
        """Whether the current incarnation records (false between a cut and the next use)."""
        return self.span is not None and self.span.is_recording()

    def set_status(self, status: Status | Any, description: str | None = None) -> None:
        """Set the status of the current incarnation."""
        self.live().set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Record an exception on the current incarnation."""
        self.live().record_exception(exception, attributes, timestamp, escaped)

    def end(self, end_time: int | None = None) -> None:
        """End the span for good (a wait span cut earlier stays as the cut ended it)."""
        span = self.span
        if span is None:
            if not self.revivable:
                return
            span = self._revive()
        span.end(end_time)
        self.segments.open.pop(self, None)
        self.span = None
        self.revivable = False  # for good: a later use starts nothing again
        self.previous, self._ended = span.get_span_context(), span  # what reads see from now


class Segments:
    """The open spans of one traced run, and where its waits cut it."""

    __slots__ = ("on_root", "open", "segment", "threshold", "tracer")

    def __init__(
        self, tracer: Tracer, threshold: float, on_root: Callable[[SegmentedSpan], None]
    ) -> None:
        self.tracer = tracer
        self.threshold = threshold  # a timer (or input timeout) this long or shorter never cuts
        self.on_root = on_root  # told when a new segment's root starts
        self.open: dict[SegmentedSpan, None] = {}  # live incarnations, parents first
        self.segment = 1

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        links: Sequence[Link] | None = None,
        revivable: bool = True,
    ) -> SegmentedSpan:
        """Start a span under the current one (not made current: the caller does that)."""
        current = trace.get_current_span()
        # type(), not isinstance(): Span is an ABC, and its check costs two
        # Python calls per span ("SDK ... per node" row). Nothing subclasses it.
        owner = current if type(current) is SegmentedSpan else None
        if owner is not None:
            if owner.segments is not self:
                owner = None  # another run's span (a session run from inside a stage)
            elif owner.span is None and owner.revivable:
                owner._revive()  # a child of the live incarnation, in the new segment
        span = self.tracer.start_span(name, attributes=attributes, links=links)
        wrapper = SegmentedSpan(self, owner, name, attributes, span, revivable)
        self.open[wrapper] = None
        return wrapper

    def cut(self) -> None:
        """End every live incarnation (children first): the segment is over."""
        for wrapper in reversed(list(self.open)):
            span = wrapper.span
            if span is None:
                continue
            span.set_attribute(_OUTCOME, OUTCOME_WAITING)
            wrapper.previous = span.get_span_context()
            wrapper._ended = span
            span.end()
            wrapper.span = None
        self.open.clear()

    @staticmethod
    def wake() -> None:
        """After a long wait: start the current span again if a cut ended it.

        Code that goes on in it (a stage's own spans) then gets the live
        incarnation as parent, not the one the cut ended.
        """
        current = trace.get_current_span()
        if type(current) is SegmentedSpan and current.span is None and current.revivable:
            current._revive()

    def snapshot(self) -> list[OpenSpan]:
        """The live incarnations, parents first, as a snapshot keeps them."""
        spans: list[OpenSpan] = []
        for wrapper in self.open:
            if not wrapper.flags.sampled:
                continue  # a trace nobody samples: nothing to rebuild
            trace_id, span_id, parent = wrapper.ids
            record: OpenSpan = {
                "name": wrapper.name,
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": parent,
                "start": getattr(wrapper.span, "start_time", None) or time.time_ns(),
                "attributes": _attributes_json(wrapper.attributes),
            }
            links: Sequence[Link] = getattr(wrapper.span, "links", None) or ()
            if links:
                record["links"] = [_link_json(link) for link in links if link.context.is_valid]
            spans.append(record)
        return spans


def _link_json(link: Link) -> SpanLink:
    trace_id, span_id = _hex_ids(link.context)
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "attributes": _attributes_json(link.attributes or {}),
    }


def _attributes_json(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a snapshot keeps (see :func:`_attribute_json`), the outcome left out."""
    return {
        k: kept
        for k, v in attributes.items()
        if k != _OUTCOME and (kept := _attribute_json(v)) is not None
    }


def _attribute_json(value: Any) -> Any:
    """An attribute value as a snapshot keeps it, or ``None`` for one it cannot keep.

    A stage may set any attribute on its span; the snapshot keeps what is
    JSON and an OpenTelemetry value (a scalar or a list of scalars), and
    leaves out the rest (``None``, bytes, NaN, ...): a rebuilt span goes
    without it.
    """
    kept = list(value) if isinstance(value, (list, tuple)) else value
    scalars = kept if type(kept) is list else [kept]
    if any(item is None or isinstance(item, (list, dict)) for item in scalars):
        return None
    return kept if find_non_json(kept) is None else None


def _span_ids(span: Span) -> tuple[str, str, str | None]:
    trace_id, span_id = _hex_ids(span.get_span_context())
    parent = getattr(span, "parent", None)
    return trace_id, span_id, (parent.span_id.to_bytes(8, "big").hex() if parent else None)


def rebuild(tracer: Tracer, spans: Sequence[OpenSpan], end: int) -> int:
    """Export the spans a crashed process left open, with their ids; how many were.

    Each ends at ``end`` (when the snapshot was taken: the last moment it
    was known to be open) with ``stageflow.outcome = interrupted``. A
    provider whose id generator does not honour :func:`wanted_ids` gets
    nothing: a span that did not get its id is left unended, so never
    exported, and the rebuild stops. A span this provider rebuilt already
    (the same snapshot restored again in this process) is skipped. A child
    follows its rebuilt parent's sampling: a provider that samples the
    rebuilt root out exports none of its children either (no orphans).
    """
    done = 0
    rebuilt = _rebuilt(tracer)
    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    flags: dict[int, trace.TraceFlags] = {}  # of the spans rebuilt here, by span id
    for record in spans:
        trace_id, span_id = int(record["trace_id"], 16), int(record["span_id"], 16)
        if rebuilt is not None and (trace_id, span_id) in rebuilt:
            continue
        parent_id = record["parent_span_id"]
        if parent_id is None:
            context = otel_context.Context()
        else:
            # A parent not rebuilt here was sampled (a snapshot lists no other).
            parent_span_id = int(parent_id, 16)
            parent = SpanContext(
                trace_id,
                parent_span_id,
                is_remote=True,
                trace_flags=flags.get(parent_span_id, sampled),
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        attributes = {**record["attributes"], _OUTCOME: OUTCOME_INTERRUPTED, REBUILT: True}
        links = [
            Link(
                SpanContext(int(link["trace_id"], 16), int(link["span_id"], 16), is_remote=True),
                link["attributes"],
            )
            for link in record.get("links", ())
        ]
        token = _WANTED.set((trace_id, span_id))
        try:
            span = tracer.start_span(
                record["name"],
                context=context,
                attributes=attributes,
                links=links,
                start_time=record["start"],
            )
        finally:
            _WANTED.reset(token)
        got = span.get_span_context()
        if (got.trace_id, got.span_id) != (trace_id, span_id):
            return done
        flags[span_id] = got.trace_flags
        span.end(end_time=max(end, record["start"]))
        if rebuilt is not None:
            rebuilt.add((trace_id, span_id))
        done += 1
    return done


def _rebuilt(tracer: Tracer) -> set[tuple[int, int]] | None:
    """The spans rebuilt through ``tracer``'s id generator (``None``: no SDK tracer)."""
    generator = getattr(tracer, "id_generator", None)
    if generator is None:
        return None
    try:
        rebuilt = _REBUILT.setdefault(generator, set())
    except TypeError:  # a generator that takes no weak reference: nothing kept
        return None
    if len(rebuilt) >= _REBUILT_MAX:
        rebuilt.clear()
    return rebuilt
