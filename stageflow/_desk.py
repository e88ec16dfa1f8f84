"""The session's input desk: ``send_input``, ``wait_input`` and ``emit``.

It checks inputs and stage events against the types and schemas stages
declare (``validate_events`` = off | warn | strict), routes inputs through the
:class:`~stageflow._inputs.InputBroker`, and records every step in the history.
Inputs that arrive into active waits are checked against the waiting stages'
own schemas first; inputs that go to the backlog are checked against every
schema the pipeline's stages declare for that type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import jsonschema

from stageflow._errors import (
    InputRejectedError,
    InputTimeoutError,
    LimitExceededError,
    NonJsonValueError,
    StageContractError,
)
from stageflow._events import History
from stageflow._inputs import InputBroker, InputReceipt, Waiter
from stageflow._json import copy_json, find_non_json
from stageflow._model import Limits, ValidateEvents
from stageflow._specs import InputSpec, StageSpec
from stageflow._stages import StageContext
from stageflow._telemetry import INPUT_TYPE, add_event

__all__ = ["InputDesk"]


def _schema_errors(validator: jsonschema.protocols.Validator | None, payload: Any) -> list[str]:
    if validator is None:
        return []
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(payload)]


class InputDesk:
    """Everything about inputs and stage events for one session."""

    __slots__ = (
        "_broker",
        "_declared",
        "_history",
        "_limits",
        "_mode",
        "_open",
        "_specs",
        "traced",
    )

    def __init__(
        self,
        history: History,
        limits: Limits,
        mode: ValidateEvents,
        specs: Iterable[StageSpec],
    ) -> None:
        self._history = history
        self._limits = limits
        self._mode = mode
        self.traced = False  # set per run: add span events for waits
        self._broker = InputBroker(limits.max_input_backlog)
        # Input type -> the InputSpecs the pipeline's stages declare for it.
        self._declared: dict[str, list[InputSpec]] = {}
        # True when some stage waits without declaring its inputs: any type may be awaited.
        self._open = False
        for spec in specs:
            if not spec.allowed_inputs:
                self._open = True
            for input_spec in spec.allowed_inputs:
                self._declared.setdefault(input_spec.type, []).append(input_spec)

    @property
    def broker(self) -> InputBroker:
        """The input broker (waiters and backlog)."""
        return self._broker

    def waiting_for(self) -> frozenset[str]:
        """Input types awaited right now."""
        return self._broker.waiting_for()

    # ---------------------------------------------------------------- sending

    def _reject(self, type: str, reason: str, message: str, **extra: Any) -> InputRejectedError:
        self._history.record(
            "input_rejected", None, "", {"input_type": type, "reason": reason, **extra}
        )
        return InputRejectedError(message, input_type=type, reason=reason)

    def send(self, type: str, payload: Any) -> InputReceipt:
        """Deliver ``payload`` to every waiter of ``type``, or queue it."""
        if not isinstance(type, str) or not type:
            raise InputRejectedError(
                f"input type {type!r} is not a non-empty string; pass the type the stage waits for",
                input_type=str(type),
                reason="bad_type",
            )
        bad = find_non_json(payload, "payload")
        if bad is not None:
            raise self._reject(
                type,
                "not_json",
                f"input {type!r} was rejected: {bad[0]} is a {type_name(bad[1])}, not a JSON "
                "value; send dict, list, str, int, float, bool or None",
            )
        size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self._limits.max_input_bytes:
            raise self._reject(
                type,
                "too_large",
                f"input {type!r} was rejected: {size} bytes is over limits.max_input_bytes="
                f"{self._limits.max_input_bytes}; send less, or raise the limit",
                size=size,
            )
        waiters = self._broker.waiters(type)
        if waiters:
            self._check(type, payload, [(_input_spec(w.spec, type), w.node_id) for w in waiters])
            delivered = self._broker.deliver(type, [copy_json(payload) for _ in waiters])
            return InputReceipt(type, delivered, False)
        if not self._open and type not in self._declared and self._mode is ValidateEvents.STRICT:
            raise self._reject(
                type,
                "unknown_type",
                f"input {type!r} was rejected: no stage of this pipeline declares it "
                f"(declared: {', '.join(sorted(self._declared)) or 'none'}); fix the type",
            )
        self._check(type, payload, [(spec, None) for spec in self._declared.get(type, [])])
        if self._broker.backlog_full(type):
            raise self._reject(
                type,
                "backlog_full",
                f"input {type!r} was rejected: {self._broker.max_backlog} inputs of this type "
                "already wait for a stage (limits.max_input_backlog); send it later, or raise "
                "the limit",
            )
        self._broker.enqueue(type, copy_json(payload))
        self._history.record("input_queued", None, "", {"input_type": type})
        return InputReceipt(type, 0, True)

    def _check(
        self, type: str, payload: Any, checks: Iterable[tuple[InputSpec | None, str | None]]
    ) -> None:
        """Validate an input against each ``(spec, waiting node id)``; reject or warn."""
        if self._mode is ValidateEvents.OFF:
            return
        for spec, node_id in checks:
            if spec is None:
                continue
            errors = _schema_errors(spec.validator, payload)
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

    # ---------------------------------------------------------------- waiting

    async def wait(self, ctx: StageContext, type: str, timeout: float | None) -> Any:
        """Wait for an input of ``type`` on behalf of a stage."""
        spec = ctx.spec
        if spec.allowed_inputs and all(s.type != type for s in spec.allowed_inputs):
            declared = ", ".join(s.type for s in spec.allowed_inputs)
            raise StageContractError(
                f"stage {ctx.stage!r} at node {ctx.node_id!r} waits for input {type!r}, which "
                f"its spec does not declare (declared: {declared}); add an InputSpec for it",
                node_id=ctx.node_id,
            )
        path = ctx.node_path.rpartition("/")[0]
        record = self._history.record
        found, payload = self._broker.take(type)
        if found:
            record("input_received", ctx.node_id, path, {"input_type": type, "from": "backlog"})
            if self.traced:
                add_event("input_received", {INPUT_TYPE: type})
            return payload
        waiter = Waiter(ctx.node_id, path, ctx.spec)
        self._broker.add(type, waiter)
        record("waiting_for_input", ctx.node_id, path, {"input_type": type, "timeout": timeout})
        if self.traced:
            add_event("waiting_for_input", {INPUT_TYPE: type})
        timer = ctx._timer
        if timer is not None:
            timer.pause()
        timed_out = False
        try:
            if timeout is None:
                payload = await waiter.receive.receive()
            else:
                with anyio.move_on_after(timeout) as scope:
                    payload = await waiter.receive.receive()
                timed_out = scope.cancelled_caught
        finally:
            self._broker.discard(type, waiter)
            if timer is not None:
                timer.resume()
        if timed_out:
            record("input_timeout", ctx.node_id, path, {"input_type": type, "timeout": timeout})
            raise InputTimeoutError(
                f"stage {ctx.stage!r} at node {ctx.node_id!r} waited {_or_inf(timeout):g} s for "
                f"input {type!r} and got none; send it sooner, raise the timeout, or route "
                "InputTimeoutError with an error edge",
                node_id=ctx.node_id,
                input_type=type,
                timeout=float(timeout or 0),
            )
        record("input_received", ctx.node_id, path, {"input_type": type, "from": "sender"})
        if self.traced:
            add_event("input_received", {INPUT_TYPE: type})
        return payload

    # ---------------------------------------------------------------- events

    def emit(self, ctx: StageContext, type: str, payload: Mapping[str, Any] | None) -> None:
        """Record a stage's own event after checking it against the stage's spec."""
        body: Any = {} if payload is None else payload
        if not isinstance(body, Mapping):
            raise NonJsonValueError(f"event {type!r} payload", body, detail="it must be an object")
        bad = find_non_json(body, "payload")
        if bad is not None:
            raise NonJsonValueError(f"event {type!r} {bad[0]}", bad[1])
        spec = ctx.spec
        path = ctx.node_path.rpartition("/")[0]
        if spec.allowed_events:
            matching = [s for s in spec.allowed_events if s.type == type]
            if not matching:
                declared = ", ".join(s.type for s in spec.allowed_events)
                raise StageContractError(
                    f"stage {ctx.stage!r} at node {ctx.node_id!r} emitted event {type!r}, which "
                    f"its spec does not declare (declared: {declared}); add an EventSpec for it",
                    node_id=ctx.node_id,
                )
            if self._mode is not ValidateEvents.OFF:
                errors = _schema_errors(matching[0].validator, dict(body))
                if errors and self._mode is ValidateEvents.STRICT:
                    raise StageContractError(
                        f"stage {ctx.stage!r} at node {ctx.node_id!r} emitted event {type!r} "
                        f"that does not match its schema: {'; '.join(errors)}",
                        node_id=ctx.node_id,
                    )
                if errors:
                    self._history.record(
                        "event_validation_failed",
                        ctx.node_id,
                        path,
                        {"kind": "event", "event_type": type, "errors": errors},
                    )
        if len(self._history) >= self._limits.max_history:
            raise LimitExceededError(
                limit="max_history", value=self._limits.max_history, node_id=ctx.node_id
            )
        self._history.record(type, ctx.node_id, path, copy_json(body))


def _input_spec(spec: StageSpec, type: str) -> InputSpec | None:
    for input_spec in spec.allowed_inputs:
        if input_spec.type == type:
            return input_spec
    return None


def _or_inf(timeout: float | None) -> float:
    """``timeout`` or infinity."""
    return float("inf") if timeout is None else timeout


def type_name(value: object) -> str:
    """The type name of ``value``, for messages."""
    return type(value).__name__
