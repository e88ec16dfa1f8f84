"""The session's input desk: the sending side of inputs.

It checks inputs against the types and schemas stages declare
(``validate_events`` = off | warn | strict), routes them through the
:class:`~stageflow._engine._inputs.InputBroker`, and records every step in the
history. Inputs that arrive into active waits are checked against the waiting
stages' own schemas first; inputs that go to the backlog are checked against
every schema the pipeline's stages declare for that type. The receiving side
(``wait_input``, ``sleep``, ``emit`` of a running stage) is the run's
:class:`~stageflow._engine._runtime.StageRuntime`.

Hot path: :meth:`InputDesk.send`, once per input ("paused session, time to
resume" rows).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import jsonschema

from stageflow._engine._inputs import InputBroker, InputReceipt, fulfil
from stageflow._engine._positions import Call
from stageflow._errors import InputRejectedError, shown_text
from stageflow._events import History
from stageflow._json import a_json_type, copy_json, find_non_json
from stageflow._metrics import UNDECLARED_INPUT, Metrics
from stageflow._model import Limits, ValidateEvents
from stageflow._specs import InputSpec, StageSpec, json_message
from stageflow._stages import StageEntry

__all__ = [
    "InputDesk",
    "check_input_type",
    "input_json",
    "input_spec",
    "schema_errors",
]

# Compact JSON, as limits.max_input_bytes counts it: one encoder, not one per
# input as json.dumps with options makes ("paused session, time to resume" rows).
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def schema_errors(validator: jsonschema.protocols.Validator | None, payload: Any) -> list[str]:
    """``"path: message"`` for every way ``payload`` breaks the schema (none without one)."""
    if validator is None:
        return []
    return [f"{e.json_path}: {json_message(e)}" for e in validator.iter_errors(payload)]


class InputDesk(InputBroker):
    """The sending side of a session's inputs: checks, the broker, the backlog.

    The desk is its own broker (a subclass, not an object it holds): one
    object less that every session keeps and the collector walks ("paused
    session" rows). :attr:`broker` is the desk itself, seen as the broker.
    """

    __slots__ = (
        "_declared",
        "_history",
        "_limits",
        "_mode",
        "_open",
        "metrics",
        "recorded_rejections",
        "unrecorded_rejections",
    )

    def __init__(
        self,
        history: History,
        limits: Limits,
        mode: ValidateEvents,
        entries: Mapping[int, StageEntry],
    ) -> None:
        self._history = history
        self._limits = limits
        self._mode = mode
        # Rejected inputs recorded in the history, and those past the budget.
        self.recorded_rejections = 0
        self.unrecorded_rejections = 0
        InputBroker.__init__(self, limits.max_input_backlog)
        self.metrics: Metrics | None = None  # set by a metered session: counts rejections
        # Input type -> the InputSpecs the pipeline's stages declare for it, and
        # whether some stage waits without declaring its inputs (any type may
        # be awaited): the same for every session of a resolved pipeline.
        self._declared, self._open = _declared_inputs(entries)

    @property
    def broker(self) -> InputBroker:
        """The input broker (waiters and backlog): the desk itself (see the class)."""
        return self

    def accepted(self) -> tuple[str, ...] | None:
        """The input types the pipeline's stages declare, sorted; ``None`` if one declares none."""
        return None if self._open else tuple(sorted(self._declared))

    # ---------------------------------------------------------------- sending

    def _reject(self, type: str, reason: str, message: str, **extra: Any) -> InputRejectedError:
        """Record a rejection (within its own budget); the error for the sender."""
        # Senders must not be able to grow the history or fill it up and so end
        # the session: rejections have a budget of their own, outside
        # max_history; past it only the sender is told.
        if self.recorded_rejections < self._limits.max_input_backlog:
            self.recorded_rejections += 1
            self._history.record(
                "input_rejected", None, "", {"input_type": type, "reason": reason, **extra}
            )
        else:
            self.unrecorded_rejections += 1
        if self.metrics is not None:
            # A sender's type is a metric attribute only if the pipeline knows it:
            # one series per random type would let a sender grow the metrics.
            known = type in self._declared or type in self.waiting_for()
            label = type if known else UNDECLARED_INPUT
            self.metrics.refused(label, reason)
        return InputRejectedError(message, input_type=type, reason=reason)

    def history_full(self) -> bool:
        """Whether the session's own events reached ``limits.max_history``.

        Recorded rejections do not count: they have a budget of their own.
        """
        limit = self._limits.max_history
        return limit is not None and len(self._history) - self.recorded_rejections >= limit

    def send(
        self,
        type: str,
        payload: Any,
        parked: Sequence[Call] = (),
        now: datetime.datetime | None = None,
    ) -> InputReceipt:
        """Deliver ``payload`` to every waiter of ``type``, or queue it.

        ``parked`` are the unanswered saved waits of a suspended or restored
        session (see :func:`~stageflow._engine._positions.parked_waits`):
        they are waiters too, answered in their journal entries, and checked
        against every schema declared for ``type`` (their stages are not
        running to say which is theirs). A saved wait that kept when it began
        (``since``) keeps how long it waited (``waited``, seconds to ``now``,
        the session clock), measured when its stage takes the input.
        """
        try:
            check_input_type(type)
        except InputRejectedError as refused:
            raise self._reject(refused.input_type, refused.reason, str(refused)) from None
        try:
            _, size = input_json(type, payload)
        except InputRejectedError as refused:
            raise self._reject(type, refused.reason, str(refused)) from None
        if size > self._limits.max_input_bytes:
            raise self._reject(
                type,
                "too_large",
                f"input {type!r} was rejected: {size} bytes is over limits.max_input_bytes="
                f"{self._limits.max_input_bytes}; send less, or raise the limit",
                size=size,
            )
        waiters = self.waiters(type)
        if waiters:
            self._check(type, payload, [(input_spec(w.spec, type), w.node_id) for w in waiters])
            # Checking may record events whose subscribers send inputs of their
            # own: deliver to the waiters still waiting, or queue it as usual.
            delivered = self.deliver(type, waiters, payload)
            if delivered:
                return InputReceipt(type, delivered, False)
        if not parked and not self._open and type not in self._declared:
            self._unknown(type)
        self._check(type, payload, [(spec, None) for spec in self._declared.get(type, ())])
        if parked:
            for entry in parked:
                since = entry.get("since")
                fulfil(entry, copy_json(payload))
                entry["parked"] = True
                if since is not None and now is not None:
                    began = datetime.datetime.fromisoformat(since)
                    entry["waited"] = max(0.0, (now - began).total_seconds())
            return InputReceipt(type, len(parked), False)
        if self.backlog_full(type):
            raise self._reject(
                type,
                "backlog_full",
                f"input {type!r} was rejected: {self.max_backlog} inputs of this type "
                "already wait for a stage (limits.max_input_backlog); send it later, or raise "
                "the limit",
            )
        # Types no stage declares share one backlog: a sender cannot grow the
        # session's memory and history by sending under ever new type names.
        max_backlog = self.max_backlog
        if type not in self._declared and self.queued_besides(self._declared) >= max_backlog:
            raise self._reject(
                type,
                "backlog_full",
                f"input {type!r} was rejected: {max_backlog} inputs of types no stage of this "
                "pipeline declares already wait for a stage (they share limits.max_input_backlog); "
                "send it later, declare the type in the stage's allowed_inputs, or raise the limit",
            )
        self.enqueue(type, copy_json(payload))
        self._history.record("input_queued", None, "", {"input_type": type})
        return InputReceipt(type, 0, True)

    def _unknown(self, type: str) -> None:
        """An input type no wait of the pipeline can ever accept: reject (strict) or warn."""
        if self._mode is ValidateEvents.OFF:
            return
        accepted = sorted(self._declared)
        if self._mode is ValidateEvents.STRICT:
            raise self._reject(
                type,
                "unknown_type",
                f"input {type!r} was rejected: no wait in this pipeline accepts it, so it would "
                f"be queued forever; it accepts {', '.join(map(repr, accepted)) or 'no inputs'}. "
                "Fix the type",
                accepted=accepted,
            )
        # warn: kept (it may be what the caller meant), but never in silence.
        self._history.record(
            "input_unexpected", None, "", {"input_type": type, "accepted": accepted}
        )

    def _check(
        self, type: str, payload: Any, checks: Iterable[tuple[InputSpec | None, str | None]]
    ) -> None:
        """Validate an input against each ``(spec, waiting node id)``; reject or warn."""
        if self._mode is ValidateEvents.OFF:
            return
        for spec, node_id in checks:
            if spec is None:
                continue
            errors = schema_errors(spec.validator, payload)
            if not errors:
                continue
            if self._mode is ValidateEvents.STRICT:
                raise self._reject(
                    type,
                    "invalid",
                    f"input {type!r} was rejected: it does not match the schema declared by "
                    f"{'node ' + repr(node_id) if node_id else 'the pipeline'}: "
                    f"{'; '.join(errors)}; fix the payload",
                    errors=errors,
                )
            self._history.record(
                "event_validation_failed",
                node_id,
                "",
                {"kind": "input", "input_type": type, "errors": errors},
            )


# id(entries) -> (entries, what their stages declare, whether one declares
# nothing): made once per resolved pipeline, not once per session ("paused
# session, memory each" benchmark row). The entries are kept so that an id
# reused after garbage collection is never taken for them.
_DECLARED_SIZE: Final = 1024
_declared: dict[
    int, tuple[Mapping[int, StageEntry], Mapping[str, tuple[InputSpec, ...]], bool]
] = {}


def _declared_inputs(
    entries: Mapping[int, StageEntry],
) -> tuple[Mapping[str, tuple[InputSpec, ...]], bool]:
    """The input specs the stages of ``entries`` declare by type; whether one declares none."""
    cached = _declared.get(id(entries))
    if cached is not None and cached[0] is entries:
        return cached[1], cached[2]
    declared: dict[str, list[InputSpec]] = {}
    open_ = False
    for entry in entries.values():
        spec = entry.spec
        if not spec.allowed_inputs:
            open_ = True
        for declared_input in spec.allowed_inputs:
            declared.setdefault(declared_input.type, []).append(declared_input)
    shared = MappingProxyType({t: tuple(specs) for t, specs in declared.items()})
    if len(_declared) >= _DECLARED_SIZE:
        _declared.clear()
    _declared[id(entries)] = (entries, shared, open_)
    return shared, open_


def input_spec(spec: StageSpec, type: str) -> InputSpec | None:
    """What ``spec`` declares for inputs of ``type``, if anything."""
    for declared in spec.allowed_inputs:
        if declared.type == type:
            return declared
    return None


# The most characters of a bad input type's repr that a rejection keeps.
_SHOWN_TYPE: Final = 60


def check_input_type(type: object) -> None:
    """Refuse an input type that is not a non-empty string (``reason="bad_type"``).

    The error's ``input_type`` is ``""``, or for a type that is no string
    its ``repr`` (``"42"``, ``"None"``) cut to 60 characters: it goes into the
    history, which holds only JSON, and the sender may have passed anything.
    """
    if not isinstance(type, str) or not type:
        shown = shown_text(repr, type)
        shown = shown if len(shown) <= _SHOWN_TYPE else shown[: _SHOWN_TYPE - 3] + "..."
        raise InputRejectedError(
            f"input type {shown} is not a non-empty string; pass the type the stage waits for",
            input_type="" if isinstance(type, str) else shown,
            reason="bad_type",
        )


def input_json(type: str, payload: Any) -> tuple[str, int]:
    """An input's payload as compact JSON text, and its size in UTF-8 bytes.

    The one check of a payload from a sender, for a live session and for a
    session store alike (``limits.max_input_bytes`` counts this size).

    Raises:
        InputRejectedError: ``reason="bad_type"``: the type is not a
            non-empty string; ``reason="not_json"``: the payload is not JSON
            (a lone surrogate in its text included, which UTF-8 cannot carry).
    """
    check_input_type(type)
    bad = find_non_json(payload, "payload")
    if bad is not None:
        raise InputRejectedError(
            f"input {type!r} was rejected: {bad.location} is {a_json_type(bad.value)}, "
            f"not a JSON value ({bad.reason}); send dict, list, str, int, float, bool or None",
            input_type=type,
            reason="not_json",
        )
    text = _COMPACT.encode(payload)
    # One byte per character when ASCII: no encoding needed (the guard above
    # refused a lone surrogate, which UTF-8 cannot carry).
    return text, len(text) if text.isascii() else len(text.encode())
