"""Events: the session history, and the subscribers that watch it.

Every state change of a session is an :class:`Event` with a monotonically
increasing ``seq``. Subscribers get events as they are recorded, through a
callback or an async iterator; a subscriber that raises, or that reads too
slowly, never stalls or breaks the run.

Hot path: :meth:`History.record` runs at least twice per node, and a history
is kept by every finished result and waiting session; the tricks here name
the benchmark row that justifies them.
"""

from __future__ import annotations

import datetime
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple, overload

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from stageflow._errors import shown_text
from stageflow._json import copy_json
from stageflow._log import get_logger
from stageflow._telemetry import Tracing

__all__ = [
    "RECORD_SLOTS",
    "Event",
    "EventCallback",
    "EventLog",
    "EventStream",
    "History",
    "node_finished_payload",
    "node_started_payload",
]

_log = get_logger("stageflow.events")

OVERFLOW: Final = "subscriber_overflow"
"""Type of the marker event a slow ``events()`` subscriber gets after a gap."""


_UTC: Final = datetime.UTC
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND: Final = datetime.timedelta(microseconds=1)
_new_tuple: Final = tuple.__new__
_time_ns: Final = time.time_ns


def _stored(timestamp: Any) -> Any:
    """How an event keeps its timestamp: UTC datetimes as integer microseconds since 1970."""
    if type(timestamp) is datetime.datetime and timestamp.tzinfo is _UTC:
        return (timestamp - _EPOCH) // _MICROSECOND
    return timestamp  # anything else is kept (and given back) as it is


def _shown(stored: Any) -> Any:
    """The timestamp an event gives back for what it stores."""
    if type(stored) is int:
        return _EPOCH + datetime.timedelta(microseconds=stored)
    return stored


# A snapshot writes each event's time as ISO 8601 text and a restore reads it
# back; a second's text ("2026-12-05T02:09:17") is made (or read) once and its
# microseconds added to it, three to four times faster than a datetime made
# per event and its isoformat() ("paused session, as snapshot text" rows).
# Both give what the datetime's isoformat() and fromisoformat() give.
_SECOND_TEXT: Final[dict[int, str]] = {}  # seconds since 1970 -> the second as text
_TEXT_SECOND: Final[dict[str, int]] = {}  # the reverse
_MAX_SECONDS: Final = 4096  # seconds kept, at most (then both start over)


def _iso_text(stored: Any) -> str:
    """``_shown(stored).isoformat()``: an event's time as a snapshot writes it."""
    if type(stored) is not int:
        return str(_shown(stored).isoformat())
    seconds, micro = divmod(stored, 1_000_000)
    second = _SECOND_TEXT.get(seconds)
    if second is None:
        if len(_SECOND_TEXT) >= _MAX_SECONDS:
            _SECOND_TEXT.clear()
        second = _SECOND_TEXT[seconds] = _shown(seconds * 1_000_000).isoformat()[:19]
    return f"{second}.{micro:06d}+00:00" if micro else f"{second}+00:00"


def _stored_text(text: str) -> Any:
    """``_stored(datetime.fromisoformat(text))``: an event's time read from a snapshot.

    The text is one the snapshot's check found a valid date and time.
    """
    if len(text) == 32 and text[19] == "." and text.endswith("+00:00"):
        micro = text[20:26]
        if micro.isascii() and micro.isdigit():
            second = _TEXT_SECOND.get(text[:19])
            if second is None:
                if len(_TEXT_SECOND) >= _MAX_SECONDS:
                    _TEXT_SECOND.clear()
                at = datetime.datetime.fromisoformat(f"{text[:19]}+00:00")
                second = _TEXT_SECOND[text[:19]] = _stored(at) // 1_000_000
            return second * 1_000_000 + int(micro)
    return _stored(datetime.datetime.fromisoformat(text))


class _EventFields(NamedTuple):
    """The tuple layout of :class:`Event`: ``timestamp`` as :func:`_stored` keeps it."""

    seq: int
    type: str
    timestamp: Any
    session_id: str
    node_id: str | None
    path: str
    payload: Mapping[str, Any]
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None


# Where the stored timestamp sits, from the start and from the end: derived
# from the field list, so adding a field cannot leave them stale.
_TIMESTAMP: Final = _EventFields._fields.index("timestamp")
_TIMESTAMP_INDEXES: Final = (_TIMESTAMP, _TIMESTAMP - len(_EventFields._fields))


class Event(_EventFields):
    """One thing that happened in a session (immutable; a named tuple, cheap to make).

    Attributes:
        seq: position in the session history, from 1, without gaps.
        type: what happened (``node_started``, ``input_received``, a stage's
            own event type, ...).
        timestamp: when, timezone-aware UTC.
        session_id: the session it happened in.
        node_id: the node it concerns, or ``None`` for session-level events.
        path: where in the execution: ``""`` on the main path,
            ``fanout/branch_a`` inside a branch (parallel node / branch entry).
        payload: details, a JSON object.
        trace_id: OpenTelemetry trace id (32 hex digits) when tracing is on.
        span_id: id of the span the event happened in.
        parent_span_id: id of that span's parent.
    """

    # Making a datetime costs most of what recording an event costs, and few
    # events are ever asked for their time: a UTC timestamp is kept as integer
    # microseconds (exact both ways) and made a datetime when it is read.
    # Indexing, iteration, repr, equality and pickling all see the datetime.

    __slots__ = ()

    def __new__(
        cls,
        seq: int,
        type: str,
        timestamp: datetime.datetime,
        session_id: str,
        node_id: str | None,
        path: str,
        payload: Mapping[str, Any],
        trace_id: str | None = None,
        span_id: str | None = None,
        parent_span_id: str | None = None,
    ) -> Event:
        """Make an event (the engine records its own without this check)."""
        return _new_tuple(
            cls,
            (
                seq,
                type,
                _stored(timestamp),
                session_id,
                node_id,
                path,
                payload,
                trace_id,
                span_id,
                parent_span_id,
            ),
        )

    @property
    def timestamp(self) -> datetime.datetime:
        """When it happened, timezone-aware UTC."""
        return _shown(tuple.__getitem__(self, _TIMESTAMP))  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        values = list(tuple.__iter__(self))
        values[_TIMESTAMP] = _shown(values[_TIMESTAMP])
        return iter(values)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        value = tuple.__getitem__(self, index)
        return _shown(value) if index in _TIMESTAMP_INDEXES else value

    def __eq__(self, other: object) -> bool:
        # By the datetime, not the stored form: the same instant written in
        # UTC and in another zone is the same event (tuple equality on the
        # stored forms said they differ).
        if isinstance(other, tuple):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)
        )
        return f"{type(self).__name__}({fields})"

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Event:  # type: ignore[override]
        # Through __new__, so that _replace() keeps the timestamp's stored form.
        return cls(*iterable)

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object (timestamp in ISO 8601 with offset)."""
        return {
            "seq": self.seq,
            "type": self.type,
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "node_id": self.node_id,
            "path": self.path,
            "payload": dict(self.payload),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
        }


EventCallback = Callable[[Event], object]
"""A function called with each event as it is recorded."""


Post = Callable[..., bool]
"""``post(token, function, *args)``: from another thread, have the event loop of
``token`` call ``function(*args)`` soon, without waiting; ``False`` when that
loop has ended (the engine's ``call_soon_from_thread``)."""


class _Subscription:
    __slots__ = ("dropped", "loop", "post", "receive", "send")

    def __init__(self, buffer: int, loop: tuple[Any, int] | None, post: Post | None) -> None:
        self.send: MemoryObjectSendStream[Event]
        self.receive: MemoryObjectReceiveStream[Event]
        size = buffer if buffer > 0 else math.inf
        self.send, self.receive = anyio.create_memory_object_stream[Event](size)
        self.dropped = 0
        # The event loop it is read on, as (token, thread) (or None), and how
        # to hand it work from another thread.
        self.loop = loop
        self.post = post

    def elsewhere(self, here: int) -> tuple[Any, Post] | None:
        """Its loop's token and ``post``, when it is read on another thread's loop than ``here``.

        Its stream may only be used from that loop's thread: a send from
        another thread raised inside the run on trio, and on asyncio left
        the reader asleep.
        """
        if self.loop is None or self.post is None or self.loop[1] == here:
            return None
        return self.loop[0], self.post


class EventStream:
    """An async iterator over a session's events from the moment it was created.

    It ends when the session finishes (at once if it already has). A
    subscriber that falls more than its buffer behind misses the overflowing
    events; the next thing it gets is a ``subscriber_overflow`` marker whose
    payload says how many were dropped (``dropped``) and the ``seq`` it
    resumes at (``next_seq``, ``None`` when the session ended meanwhile). The
    marker's own ``seq`` is the one after the missed events, and it is not
    part of the history, which keeps every event. Leave early with
    :meth:`aclose`, or use the stream as an async context manager; a stream
    left without it stops getting events once nothing refers to it.
    """

    __slots__ = ("_history", "_sub")

    def __init__(self, sub: _Subscription, history: History) -> None:
        self._sub = sub
        self._history = history

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        sub = self._sub
        try:
            return await sub.receive.receive()
        except anyio.EndOfStream:
            sub.receive.close()
            if sub.dropped:
                # Events were lost after the last one delivered: say so before ending.
                return self._history._overflow_marker(sub, None)
            raise StopAsyncIteration from None
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._history._unsubscribe(self._sub)
        self._sub.receive.close()

    def __del__(self) -> None:
        # A reader that left without aclose() (a break, a cancelled task, a
        # web response whose client went away): its subscription kept up to
        # ``buffer`` events, each a copy, and was handed every later one for
        # as long as the session lived. Closed, it is dropped at the next event.
        self._sub.receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_WIDTH: Final = 5
"""Slots per event in ``History._flat``: type, stored timestamp, node id, path, payload."""

RECORD_SLOTS: Final = _WIDTH
"""Slots per event in :attr:`History.records`."""

_NO_SPAN: Final = (None, None, None)
_SPAN_FIELDS: Final = ("trace_id", "span_id", "parent_span_id")


def _event(
    flat: list[Any],
    spans: dict[int, tuple[Any, ...]] | None,
    base: int,
    session_id: str,
    index: int,
) -> Event:
    """The :class:`Event` for the ``index``-th record of a history (from 0)."""
    at = index * _WIDTH
    span = spans.get(index, _NO_SPAN) if spans is not None else _NO_SPAN
    return _new_tuple(
        Event,
        (
            base + index + 1,
            flat[at],
            flat[at + 1],
            session_id,
            flat[at + 2],
            flat[at + 3],
            # A copy, nested values included: a stored payload may be shared by
            # many events (see History.record), and a reader (a subscriber) that
            # changes its event must not change the history a snapshot keeps.
            copy_json(flat[at + 4]),
            span[0],
            span[1],
            span[2],
        ),
    )


class EventLog(Sequence[Event]):
    """A read-only sequence of a session's events, as it held them when asked.

    ``SessionResult.history``, ``Session.history`` and ``CaseResult.history``
    are event logs. The history keeps a compact record per event; each
    :class:`Event` is made when it is read (indexing, iterating), and not
    kept: two reads give equal events, not the same objects, and each has its
    own ``payload`` dict. An event log equals a tuple, list or event log of
    equal events in the same order; slicing gives a tuple.
    """

    __slots__ = ("_base", "_flat", "_length", "_session_id", "_spans")

    def __init__(
        self,
        flat: list[Any],
        spans: dict[int, tuple[Any, ...]] | None,
        base: int,
        session_id: str,
        length: int,
    ) -> None:
        # The history only ever appends to flat and spans (restore() replaces
        # them), so the first `length` records stay what they were.
        self._flat = flat
        self._spans = spans
        self._base = base
        self._session_id = session_id
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Event, ...]: ...

    def __getitem__(self, index: int | slice) -> Event | tuple[Event, ...]:
        if isinstance(index, slice):
            return tuple(self._at(i) for i in range(*index.indices(self._length)))
        position = operator.index(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError("event log index out of range")
        return self._at(position)

    def _at(self, index: int) -> Event:
        return _event(self._flat, self._spans, self._base, self._session_id, index)

    def __iter__(self) -> Iterator[Event]:
        for index in range(self._length):
            yield self._at(index)

    def __reversed__(self) -> Iterator[Event]:
        for index in reversed(range(self._length)):
            yield self._at(index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventLog | tuple | list):
            return NotImplemented
        return len(other) == self._length and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # events hold payload dicts: never hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (and copied) as the tuple of its events.
        return (tuple, (tuple(self),))


class History:
    """The ordered list of a session's events, with its subscribers.

    It holds the events recorded since the session was made or restored, after
    the ones its snapshot kept (all, a tail, or none): ``events[0].seq`` is
    ``base + 1``, and numbering never restarts.

    Each event is kept as five slots of one flat list (type, timestamp as
    :func:`_stored` keeps it, node id, path, payload): ``seq`` is implied by
    the position, the session id is the history's, and span ids (with
    tracing) sit in a dict by position. An :class:`Event` is made only for
    subscribers and when read ("event retained in history" row: a kept
    :class:`Event` with its payload dict was 384 B).
    """

    __slots__ = (
        "_callbacks",
        "_closed",
        "_flat",
        "_muted",
        "_spans",
        "_subscriptions",
        "_tracing",
        "base",
        "quiet",
        "session_id",
    )

    def __init__(
        self,
        session_id: str,
        events: Iterable[Event] | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.session_id = session_id
        # With tracing, each event carries the ids of the span it happened in.
        self._tracing = tracing
        self._flat: list[Any] = []
        # Span ids by event position, made at the first event that has them.
        self._spans: dict[int, tuple[Any, ...]] | None = None
        # Made at the first subscriber: most sessions have none, and a waiting
        # session keeps its history ("paused session, memory each" row).
        self._callbacks: list[EventCallback] | None = None
        self._subscriptions: list[_Subscription] | None = None
        self._closed = False
        # While a suspended run is torn down nothing is recorded: it is not history.
        self._muted = False
        # Whether record() would only append: no tracing, no subscriber, not
        # muted. The engine's tight path then appends a node's events itself
        # (append_quiet, or the list itself: "sequential stage node" row).
        self.quiet = tracing is None
        # Events recorded before the first one held (a session restored from a
        # snapshot that kept none or only a tail of its history): seq goes on.
        self.base = 0
        if events is not None:
            held = list(events)
            self.restore(held, len(held) + 1)

    @property
    def muted(self) -> bool:
        """Whether events are dropped (while a suspended or stopped run is torn down)."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = value
        self._requiet()

    def _requiet(self) -> None:
        """Say again whether record() only appends (see ``quiet``)."""
        self.quiet = (
            self._tracing is None
            and not self._muted
            and not self._subscriptions
            and not self._callbacks
        )

    @property
    def records(self) -> list[Any]:
        """The flat list of records (five slots per event), to append to while ``quiet``.

        Only the engine's tight path appends to it, in :meth:`record`'s order
        (type, timestamp in microseconds, node id, path, payload), and only
        while ``quiet`` is true ("sequential stage node" row).
        """
        return self._flat

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event will get."""
        return self.base + len(self._flat) // _WIDTH + 1

    def restore(self, events: Iterable[Event], next_seq: int) -> None:
        """Hold ``events`` (the tail a snapshot kept, maybe none); go on at ``next_seq``.

        Their ``seq`` follow from ``next_seq`` and their session id is the
        history's (a snapshot's history is checked for both when it is read).
        """
        # New containers, never the old ones changed: event logs handed out share them.
        flat: list[Any] = []
        spans: dict[int, tuple[Any, ...]] = {}
        for index, event in enumerate(events):
            fields = tuple(tuple.__iter__(event))  # the timestamp as stored
            flat += (fields[1], fields[_TIMESTAMP], fields[4], fields[5], fields[6])
            if fields[7:] != _NO_SPAN:
                spans[index] = fields[7:]
        self._flat = flat
        self._spans = spans or None
        self.base = next_seq - 1 - len(flat) // _WIDTH

    def restore_snapshot(self, events: Sequence[Mapping[str, Any]], next_seq: int) -> None:
        """:meth:`restore` from events as a snapshot keeps them (checked when it was read).

        The same as ``restore([event_from_dict(e) for e in events], next_seq)``
        without an :class:`Event` each ("paused session, as snapshot text" row).
        """
        flat: list[Any] = []
        spans: dict[int, tuple[Any, ...]] = {}
        for index, event in enumerate(events):
            flat += (
                event["type"],
                _stored_text(event["timestamp"]),
                event["node_id"],
                event["path"],
                # A copy: the caller keeps its snapshot dict, the history its own.
                copy_json(event["payload"]),
            )
            span = (event.get("trace_id"), event.get("span_id"), event.get("parent_span_id"))
            if span != _NO_SPAN:
                spans[index] = span
        self._flat = flat
        self._spans = spans or None
        self.base = next_seq - 1 - len(flat) // _WIDTH

    def snapshot_events(self, keep: int | None) -> list[dict[str, Any]]:
        """The newest ``keep`` events (``None``: all) as a snapshot keeps them since version 3.

        Each is :meth:`Event.to_dict` without ``session_id`` (the snapshot's)
        and without the span ids that are null, made from the records
        directly, without an :class:`Event` each ("paused session, as
        snapshot text" row).
        """
        flat = self._flat
        spans = self._spans
        length = len(flat) // _WIDTH
        first = 0 if keep is None or keep >= length else length - keep
        out = []
        for index in range(first, length):
            at = index * _WIDTH
            event: dict[str, Any] = {
                "seq": self.base + index + 1,
                "type": flat[at],
                "timestamp": _iso_text(flat[at + 1]),
                "node_id": flat[at + 2],
                "path": flat[at + 3],
                # A copy, nested values included: the snapshot is the caller's.
                "payload": copy_json(flat[at + 4]),
            }
            if spans is not None and index in spans:
                for key, value in zip(_SPAN_FIELDS, spans[index], strict=True):
                    if value is not None:
                        event[key] = value
            out.append(event)
        return out

    @property
    def events(self) -> EventLog:
        """The events recorded so far (an :class:`EventLog`: later events are not in it)."""
        return EventLog(
            self._flat, self._spans, self.base, self.session_id, len(self._flat) // _WIDTH
        )

    def __len__(self) -> int:
        return len(self._flat) // _WIDTH

    def record(
        self,
        type: str,
        node_id: str | None,
        path: str,
        payload: Mapping[str, Any],
        span: tuple[str, str, str | None] | None = None,
    ) -> None:
        """Append an event and hand it to every subscriber.

        ``payload`` is kept as given and never handed out (every read and every
        subscriber gets a copy): callers may pass one dict for many events, as
        :func:`node_started_payload` and :func:`node_finished_payload` give.
        """
        if self._muted:
            return
        flat = self._flat
        if span is None:
            tracing = self._tracing
            if tracing is not None:
                span = tracing.current_ids()
        if span is not None:
            if self._spans is None:
                self._spans = {}
            self._spans[len(flat) // _WIDTH] = span
        # Five slots of one list, no Event, no datetime yet: the fields need no
        # checks, and a record is a list extend ("sequential stage node" and
        # "event retained in history" rows). The order is _event()'s.
        flat += (type, _time_ns() // 1000, node_id, path, payload)
        if self._subscriptions or self._callbacks:
            self._deliver()

    def _deliver(self) -> None:
        """Hand the event just recorded to the subscribers."""
        index = len(self._flat) // _WIDTH - 1
        event = _event(self._flat, self._spans, self.base, self.session_id, index)
        # Streams first: a callback that subscribes while handling this event
        # must not receive it (a stream starts after the event in flight).
        if self._subscriptions:
            self._publish(event, index)
            if self._callbacks:
                # Its own event: one that a stream's reader changes is not the callbacks'.
                event = _event(self._flat, self._spans, self.base, self.session_id, index)
        if self._callbacks:
            self._notify(event, index)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every later event; returns an unsubscribe function."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        self.quiet = False

        def unsubscribe() -> None:
            if self._callbacks is not None and callback in self._callbacks:
                self._callbacks.remove(callback)
                self._requiet()

        return unsubscribe

    def _notify(self, event: Event, index: int) -> None:
        callbacks = self._callbacks
        assert callbacks is not None  # called only when there are callbacks
        for number, callback in enumerate(tuple(callbacks)):
            if number:
                # Each callback its own event: one that changes its payload
                # changes nothing another callback gets.
                event = _event(self._flat, self._spans, self.base, self.session_id, index)
            try:
                callback(event)
            except Exception:
                # A user's hook never breaks the run: log it and detach it.
                _log.exception(
                    "subscriber.detached",
                    session_id=self.session_id,
                    subscriber=shown_text(repr, callback),
                    event_type=event.type,
                )
                callbacks.remove(callback)
                self._requiet()

    def _publish(self, event: Event, index: int) -> None:
        # A copy: a subscriber whose reader is gone is removed while iterating.
        subscriptions = self._subscriptions
        assert subscriptions is not None  # called only when there are subscriptions
        here = threading.get_ident()
        for number, sub in enumerate(tuple(subscriptions)):
            if number:
                # Each reader its own event (see _notify).
                event = _event(self._flat, self._spans, self.base, self.session_id, index)
            away = sub.elsewhere(here)
            if away is not None:
                # Handed to the reader's event loop, in order; none if it has ended.
                token, post = away
                if not post(token, self._send, sub, event):
                    self._unsubscribe(sub)
            else:
                self._send(sub, event)

    def _send(self, sub: _Subscription, event: Event) -> None:
        """Hand ``event`` to one subscription (on the thread of the loop it is read on)."""
        send = sub.send
        try:
            if sub.dropped:
                # The marker and the event go together or not at all, so the
                # marker's next_seq is always the event that follows it.
                stats = send.statistics()
                room = (
                    stats.max_buffer_size - stats.current_buffer_used + stats.tasks_waiting_receive
                )
                # A reader gone (see EventStream.__del__): the send says so.
                if room < 2 and stats.open_receive_streams:
                    sub.dropped += 1
                    return
                send.send_nowait(self._overflow_marker(sub, event.seq))
            send.send_nowait(event)
        except anyio.WouldBlock:
            sub.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._unsubscribe(sub)

    def _overflow_marker(self, sub: _Subscription, next_seq: int | None) -> Event:
        """The marker telling ``sub`` how many events it missed; resets the count."""
        dropped, sub.dropped = sub.dropped, 0
        return Event(
            self.next_seq if next_seq is None else next_seq,
            OVERFLOW,
            datetime.datetime.now(_UTC),
            self.session_id,
            None,
            "",
            {"dropped": dropped, "next_seq": next_seq},
        )

    def stream(
        self, buffer: int, loop: tuple[Any, int] | None = None, post: Post | None = None
    ) -> EventStream:
        """Subscribe now; return an async iterator over the events from here on.

        ``loop``: the event loop the stream is read on, as ``(token, thread)``
        (see :meth:`streams_loop`); events recorded in another thread (a run
        on another thread's event loop) are handed to it with ``post``.
        """
        sub = _Subscription(buffer, loop, post)
        if self._closed:
            sub.send.close()  # nothing more will come: the stream ends at once
        else:
            if self._subscriptions is None:
                self._subscriptions = []
            self._subscriptions.append(sub)
            self.quiet = False
        return EventStream(sub, self)

    def streams_loop(self) -> tuple[Any, int] | None:
        """The ``loop`` of the newest open stream that has one, else ``None``.

        A stream's reader waits on that event loop: events handed to it (or
        its end) must come from that loop's thread, which wakes the reader.
        """
        for sub in reversed(self._subscriptions or ()):
            if sub.loop is not None:
                return sub.loop
        return None

    def _unsubscribe(self, sub: _Subscription) -> None:
        subscriptions = self._subscriptions
        if subscriptions is not None and sub in subscriptions:
            subscriptions.remove(sub)
            self._requiet()
        sub.send.close()

    def reopen(self) -> None:
        """Take new streams again (a suspended session runs on)."""
        self._closed = False

    def close(self) -> None:
        """End every stream, now and later (after the session finished)."""
        self._closed = True
        here = threading.get_ident()
        for sub in self._subscriptions or ():
            away = sub.elsewhere(here)
            if away is not None:
                # After the events handed to its loop; nothing to end if it has ended.
                token, post = away
                post(token, sub.send.close)
            else:
                sub.send.close()
        self._subscriptions = None
        self._requiet()


# Node events' payloads, one dict for all events alike: a history keeps its
# payloads as given and copies them when read ("event retained in history"
# row: a one-key dict is 184 B, four times the rest of a kept event).
_STARTED: Final[dict[str, dict[str, Any]]] = {}
_FINISHED: Final[dict[tuple[str, str | None, int | str | None], dict[str, Any]]] = {}
_MAX_SHARED: Final = 4096
"""Payloads kept for sharing, at most (node ids come from pipelines: few, but unbounded)."""


def node_started_payload(node_type: str) -> Mapping[str, Any]:
    """The payload of a ``node_started`` event (not resumed), shared: do not modify."""
    payload = _STARTED.get(node_type)
    if payload is None:
        payload = {"node_type": node_type}
        if len(_STARTED) < _MAX_SHARED:
            _STARTED[node_type] = payload
    return payload


def node_finished_payload(
    node_type: str, next_id: str | None, branch: int | str | None = None
) -> Mapping[str, Any]:
    """The payload of a ``node_finished`` event, shared: do not modify.

    ``branch`` is the condition that matched (its index, or ``"else"``) for a
    condition node, ``None`` (and left out) otherwise.
    """
    key = (node_type, next_id, branch)
    payload = _FINISHED.get(key)
    if payload is None:
        payload = {"node_type": node_type, "next": next_id}
        if branch is not None:
            payload["branch"] = branch
        if len(_FINISHED) < _MAX_SHARED:
            _FINISHED[key] = payload
    return payload
