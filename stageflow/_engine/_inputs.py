"""External inputs: waiters, broadcast delivery and a bounded backlog.

Every ``wait_input`` call registers a :class:`Waiter` (an event and a slot
for the payload). An input sent while stages wait for its type goes to every
one of them (broadcast); an input sent while nobody waits is kept, per type
and in order, until the next waiter takes it. The broker does no validation
and records no events: the input desk does.

Hot path: :meth:`InputBroker.deliver`, once per input a waiting stage gets
("paused session, time to resume" rows).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Container
from typing import Any, Protocol

import anyio
import attrs

from stageflow._engine._backend import EventLike, TrioWake
from stageflow._engine._positions import Call
from stageflow._json import copy_json
from stageflow._specs import StageSpec
from stageflow._telemetry import sender_context

__all__ = [
    "AttemptTimer",
    "EventWaiter",
    "InputBroker",
    "InputReceipt",
    "TrioWaiter",
    "Waiter",
    "fulfil",
]


@attrs.frozen
class InputReceipt:
    """What ``session.send_input`` did with an input.

    Attributes:
        type: the input type.
        delivered: how many waiting stages received it (0 when queued).
        queued: whether it was kept in the backlog for the next waiter.
    """

    type: str
    delivered: int
    queued: bool


def fulfil(entry: Call, payload: Any) -> None:
    """Mark a journaled wait as answered with ``payload`` (kept for replay)."""
    entry.pop("deadline", None)
    entry.pop("since", None)
    entry["payload"] = payload


class Waiter(Protocol):
    """One pending ``wait_input`` call: who is waiting, for what, its journal entry, its input.

    It gets at most one input (``give``), then it is no longer registered:
    an event and a slot, lighter than a channel. :class:`EventWaiter` on any
    backend, :class:`TrioWaiter` on trio.
    """

    node_id: str
    path: str
    spec: StageSpec
    entry: Call
    type: str
    payload: Any
    sender: Any  # the span that sent the input (when inputs are traced)

    @property
    def arrived(self) -> EventLike:
        """The event set when the input is given."""

    def give(self, payload: Any) -> None:
        """Hand the waiter its input (``payload``) and wake it (``arrived``)."""


class EventWaiter:
    """A :class:`Waiter` with the backend's event (anyio's off trio)."""

    __slots__ = ("arrived", "entry", "node_id", "path", "payload", "sender", "spec", "type")

    def __init__(
        self, node_id: str, path: str, spec: StageSpec, entry: Call, type: str, arrived: EventLike
    ) -> None:
        self.node_id = node_id
        self.path = path
        self.spec = spec
        self.entry = entry
        self.type = type
        self.payload: Any = None
        self.sender: Any = None  # the span that sent the input (when inputs are traced)
        self.arrived = arrived  # the backend's event

    def give(self, payload: Any) -> None:
        """Hand the waiter its input (``payload``) and wake it (``arrived``)."""
        self.payload = payload
        self.arrived.set()


class TrioWaiter(TrioWake):
    """A :class:`Waiter` on trio that is its own one-shot wake-up (``arrived`` is itself).

    One object where a waiter and its :class:`TrioWake` were two: every live
    waiting session keeps its waiter, and the collector walks it ("paused
    session" rows).
    """

    __slots__ = ("entry", "node_id", "path", "payload", "sender", "spec", "type")

    def __init__(self, node_id: str, path: str, spec: StageSpec, entry: Call, type: str) -> None:
        self._set = False
        self._task = None
        self.node_id = node_id
        self.path = path
        self.spec = spec
        self.entry = entry
        self.type = type
        self.payload: Any = None
        self.sender: Any = None  # the span that sent the input (when inputs are traced)

    @property
    def arrived(self) -> TrioWaiter:
        """The waiter itself: the wake-up set when the input is given."""
        return self

    def give(self, payload: Any) -> None:
        """Hand the waiter its input (``payload``) and wake it."""
        self.payload = payload
        self.set()


class InputBroker:
    """Routes inputs to waiters, or to a bounded per-type backlog.

    Its containers are made when first needed, and the waiters of every type
    share one list: a session waiting in memory keeps the broker ("paused
    session, memory each" benchmark row). A session has few waiters at once
    (one per waiting position), so scanning that list costs little.
    """

    __slots__ = (
        "_backlog",
        "_senders",
        "_waiters",
        "blocked",
        "max_backlog",
        "taken_sender",
        "trace_senders",
    )

    def __init__(self, max_backlog: int) -> None:
        self.max_backlog = max_backlog
        # In the order they started; a tuple, not a list: one object of 48 B
        # where a list of one is two of 88 B, which every live waiting session
        # keeps ("paused session, memory each" row). Waiters are few: at most
        # one per position of the run.
        # One waiter is kept as itself, not in a tuple of one: one object less
        # that every live waiting session keeps and the collector walks.
        self._waiters: Waiter | tuple[Waiter, ...] | None = None
        self._backlog: dict[str, deque[Any]] | None = None
        # The span that sent each queued input (None: untraced or restored),
        # kept in step with the backlog, for the input link of its receiver.
        self._senders: dict[str, deque[Any]] | None = None
        self.blocked = 0  # waiters registered right now, over all types
        self.trace_senders = False  # set by a traced run: remember who sent each input
        self.taken_sender: Any = None  # the sender of the input take() returned last

    def _registered(self) -> tuple[Waiter, ...]:
        """The waiters registered right now, in the order they started."""
        waiters = self._waiters
        if waiters is None:
            return ()
        return waiters if isinstance(waiters, tuple) else (waiters,)

    def _keep(self, waiters: tuple[Waiter, ...]) -> None:
        """Register exactly ``waiters`` (none: ``None``; one: itself; else the tuple)."""
        self._waiters = None if not waiters else waiters[0] if len(waiters) == 1 else waiters

    def waiting_for(self) -> frozenset[str]:
        """Input types at least one stage waits for right now."""
        return frozenset(waiter.type for waiter in self._registered())

    def waiters(self, type: str) -> tuple[Waiter, ...]:
        """The stages waiting for ``type`` right now, in the order they started."""
        return tuple(waiter for waiter in self._registered() if waiter.type == type)

    def deliver(self, type: str, waiters: tuple[Waiter, ...], payload: Any) -> int:
        """Hand a copy of ``payload`` to each of ``waiters`` still waiting; they stop waiting.

        ``waiters`` is what :meth:`waiters` returned before the input was
        checked: one that stopped waiting meanwhile (a subscriber of a check's
        event sent it an input) is skipped. Returns how many got it.
        """
        current = self._waiters
        if current is None:
            return 0
        if len(waiters) == 1 and current is waiters[0]:
            # One stage waits, and it is the one chosen: the usual case, without
            # the sets below ("paused session, time to resume" rows).
            chosen: tuple[Waiter, ...] = waiters
            self._waiters = None
        else:
            registered = {id(waiter) for waiter in self._registered()}
            chosen = tuple(waiter for waiter in waiters if id(waiter) in registered)
            if not chosen:
                return 0
            taken = {id(waiter) for waiter in chosen}
            self._keep(tuple(w for w in self._registered() if id(w) not in taken))
        sender = sender_context() if self.trace_senders else None
        for waiter in chosen:
            waiter.sender = sender
            # Journaled now, not when the waiter wakes: a snapshot taken in
            # between must not lose the input.
            fulfil(waiter.entry, copy_json(payload))
            # Not seen by the stage until it wakes: a snapshot taken in between
            # hands it over as sent (input_received "sender"), or discards it.
            waiter.entry["parked"] = True
            waiter.give(copy_json(payload))
        self.blocked -= len(chosen)
        return len(chosen)

    def release(self) -> None:
        """Unregister every waiter: inputs sent from now on are queued (a suspension)."""
        self._waiters = None
        self.blocked = 0

    def backlog_full(self, type: str) -> bool:
        """Whether one more input of ``type`` would exceed the backlog."""
        return len((self._backlog or {}).get(type, ())) >= self.max_backlog

    def queued_besides(self, types: Container[str]) -> int:
        """How many inputs wait in the backlog whose type is not one of ``types``."""
        return sum(len(queue) for t, queue in (self._backlog or {}).items() if t not in types)

    def _queues(self, type: str) -> tuple[deque[Any], deque[Any]]:
        """The backlog of ``type`` and its senders (made when first needed)."""
        if self._backlog is None or self._senders is None:
            self._backlog, self._senders = {}, {}
        queue = self._backlog.get(type)
        if queue is None:
            queue = self._backlog[type] = deque()
            self._senders[type] = deque()
        return queue, self._senders[type]

    def enqueue(self, type: str, payload: Any) -> None:
        """Keep an input for the next waiter of its type."""
        queue, senders = self._queues(type)
        queue.append(payload)
        senders.append(sender_context() if self.trace_senders else None)

    def requeue(self, type: str, payload: Any) -> None:
        """Queue an input ahead of the others of its type (it arrived before them)."""
        queue, senders = self._queues(type)
        queue.appendleft(payload)
        senders.appendleft(None)

    def queued(self) -> bool:
        """Whether some input waits in the backlog."""
        return any(self._backlog.values()) if self._backlog else False

    def backlog(self) -> dict[str, list[Any]]:
        """The queued inputs by type, oldest first (copies, for a snapshot)."""
        return {t: [copy_json(p) for p in queue] for t, queue in (self._backlog or {}).items()}

    def restore_backlog(self, backlog: dict[str, list[Any]]) -> None:
        """Queue the inputs of a snapshot's backlog, replacing what is queued."""
        self._backlog = {t: deque(queue) for t, queue in backlog.items() if queue} or None
        self._senders = (
            {t: deque([None] * len(queue)) for t, queue in self._backlog.items()}
            if self._backlog
            else None
        )

    def take(self, type: str) -> tuple[bool, Any]:
        """Pop the oldest queued input of ``type``: ``(True, payload)`` or ``(False, None)``."""
        if self._backlog is None or self._senders is None:
            return False, None
        queue = self._backlog.get(type)
        if not queue:
            return False, None
        payload = queue.popleft()
        senders = self._senders[type]
        self.taken_sender = senders.popleft()
        if not queue:
            del self._backlog[type]
            del self._senders[type]
        return True, payload

    def add(self, waiter: Waiter) -> None:
        """Register a waiter (for its ``type``)."""
        current = self._waiters
        if current is None:
            self._waiters = waiter
        else:
            self._waiters = (*current, waiter) if isinstance(current, tuple) else (current, waiter)
        self.blocked += 1

    def discard(self, waiter: Waiter) -> None:
        """Forget a waiter that stopped waiting (timeout, cancellation)."""
        waiters = self._registered()
        for i, registered in enumerate(waiters):
            if registered is waiter:
                self._keep((*waiters[:i], *waiters[i + 1 :]))
                self.blocked -= 1
                return


class AttemptTimer:
    """The deadline of one attempt, paused while the stage waits for input."""

    __slots__ = ("_paused", "_remaining", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self._paused = 0
        self._remaining = 0.0

    def pause(self) -> None:
        """Stop the clock (nested pauses are counted)."""
        if self._paused == 0:
            self._remaining = max(0.0, self.scope.deadline - anyio.current_time())
            self.scope.deadline = math.inf
        self._paused += 1

    def resume(self) -> None:
        """Restart the clock with the time that was left."""
        self._paused -= 1
        if self._paused == 0:
            self.scope.deadline = anyio.current_time() + self._remaining
