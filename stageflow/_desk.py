"""The session's input desk: ``send_input``, ``wait_input`` and ``emit``.

It checks inputs and stage events against the types and schemas stages
declare (``validate_events`` = off | warn | strict), routes inputs through the
:class:`~stageflow._inputs.InputBroker`, and records every step in the history.
Inputs that arrive into active waits are checked against the waiting stages'
own schemas first; inputs that go to the backlog are checked against every
schema the pipeline's stages declare for that type.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import jsonschema

from stageflow._deadlines import after
from stageflow._errors import (
    InputRejectedError,
    InputTimeoutError,
    LimitExceededError,
    NonJsonValueError,
    StageContractError,
)
from stageflow._events import History
from stageflow._inputs import InputBroker, InputReceipt, Waiter, fulfil
from stageflow._json import copy_json, find_non_json
from stageflow._model import Limits, ValidateEvents
from stageflow._specs import InputSpec, StageSpec, event_type_problem
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
        "clock",
        "on_block",
        "sleeping",
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
        # The session's UTC clock (anchored to the event loop's clock per run):
        # deadlines of waits and sleeps are absolute times on it.
        self.clock: Callable[[], datetime.datetime] = _utc_now
        # Called when a position starts waiting or sleeping (suspend mode).
        self.on_block: Callable[[], None] | None = None
        self.sleeping = 0  # positions sleeping right now
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
                f"value ({bad.reason}); send dict, list, str, int, float, bool or None",
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

    async def wait_input(self, ctx: StageContext, type: str, timeout: float | None) -> Any:
        """Wait for an input of ``type`` on behalf of a stage (journaled for snapshots)."""
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
        entry = self._replayed(ctx, "wait", type)
        if entry is not None and "payload" in entry:
            # Consumed before the snapshot: hand it over again, in order.
            _journal(ctx, entry)
            record("input_received", ctx.node_id, path, {"input_type": type, "from": "replay"})
            return copy_json(entry["payload"])
        remaining = timeout
        restored_deadline = False
        if entry is None:
            entry = {"wait": type, "deadline": None}
            if timeout is not None:
                entry["deadline"] = after(self.clock(), timeout).isoformat()
        elif entry.get("deadline") is not None:
            remaining = self.seconds_until(entry["deadline"])
            restored_deadline = True
        _journal(ctx, entry)
        found, payload = self._broker.take(type)
        if found:
            fulfil(entry, copy_json(payload))
            record("input_received", ctx.node_id, path, {"input_type": type, "from": "backlog"})
            if self.traced:
                add_event("input_received", {INPUT_TYPE: type})
            return payload
        if restored_deadline and remaining is not None and remaining <= 0:
            # Restored after its deadline: it times out now (it does not block,
            # so suspend mode goes on to the timeout's error edge).
            await anyio.lowlevel.checkpoint()
            raise self._timed_out(ctx, type, timeout, path)
        waiter = Waiter(ctx.node_id, path, ctx.spec, entry)
        self._broker.add(type, waiter)
        record("waiting_for_input", ctx.node_id, path, {"input_type": type, "timeout": timeout})
        if self.traced:
            add_event("waiting_for_input", {INPUT_TYPE: type})
        timer = ctx._timer
        if timer is not None:
            timer.pause()
        timed_out = False
        try:
            if self.on_block is not None:
                self.on_block()
            if remaining is None:
                await waiter.arrived.wait()
            else:
                with anyio.move_on_after(remaining) as scope:
                    await waiter.arrived.wait()
                timed_out = scope.cancelled_caught
        finally:
            self._broker.discard(type, waiter)
            if timer is not None:
                timer.resume()
        if timed_out:
            raise self._timed_out(ctx, type, timeout, path)
        record("input_received", ctx.node_id, path, {"input_type": type, "from": "sender"})
        if self.traced:
            add_event("input_received", {INPUT_TYPE: type})
        return waiter.payload

    def _timed_out(
        self, ctx: StageContext, type: str, timeout: float | None, path: str
    ) -> InputTimeoutError:
        """Record ``input_timeout``; the error to raise."""
        self._history.record(
            "input_timeout", ctx.node_id, path, {"input_type": type, "timeout": timeout}
        )
        return InputTimeoutError(
            f"stage {ctx.stage!r} at node {ctx.node_id!r} waited {_or_inf(timeout):g} s for "
            f"input {type!r} and got none; send it sooner, raise the timeout, or route "
            "InputTimeoutError with an error edge",
            node_id=ctx.node_id,
            input_type=type,
            timeout=float(timeout or 0),
        )

    # ----------------------------------------------------------------- timers

    async def sleep(
        self, ctx: StageContext, seconds: float | None, until: datetime.datetime | None
    ) -> float:
        """Sleep on behalf of a stage, to an absolute deadline that snapshots keep."""
        entry = self._replayed(ctx, "sleep", None)
        if entry is None:
            now = self.clock()
            if until is None:
                planned = max(0.0, seconds or 0.0)
                until = after(now, planned)
            else:
                planned = max(0.0, (until - now).total_seconds())
            entry = {"sleep": until.astimezone(datetime.UTC).isoformat(), "seconds": planned}
            remaining = planned
        else:
            remaining = self.seconds_until(entry["sleep"])
        _journal(ctx, entry)
        await self.pause(remaining)
        return float(entry["seconds"])

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` as a position blocked on a timer (for suspend mode).

        A timer that is already due blocks nothing: a session restored at its
        ``wake_at`` goes on instead of suspending again.
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self.sleeping += 1
        try:
            if self.on_block is not None:
                self.on_block()
            await anyio.sleep(seconds)
        finally:
            self.sleeping -= 1

    def seconds_until(self, deadline: str) -> float:
        """Seconds from now to an ISO deadline (0 when it has passed)."""
        left = datetime.datetime.fromisoformat(deadline) - self.clock()
        return max(0.0, left.total_seconds())

    def _replayed(self, ctx: StageContext, kind: str, key: str | None) -> dict[str, Any] | None:
        """The journal entry this call replays after a restore, or ``None`` for a new call.

        A call that does not match the journal (the stage took another way
        this time) ends the replay: it and every later call run live.
        """
        replay = ctx._replay
        if not replay:
            return None
        entry = replay.pop(0)
        if kind in entry and (key is None or entry[kind] == key):
            return entry
        ctx._replay = None
        self._history.record(
            "replay_diverged",
            ctx.node_id,
            ctx.node_path.rpartition("/")[0],
            {"expected": _describe_call(entry), "got": _describe_call({kind: key})},
        )
        return None

    # ---------------------------------------------------------------- events

    def emit(self, ctx: StageContext, type: str, payload: Mapping[str, Any] | None) -> None:
        """Record a stage's own event after checking it against the stage's spec."""
        problem = event_type_problem(type)
        if problem is not None:
            raise StageContractError(
                f"stage {ctx.stage!r} at node {ctx.node_id!r} emitted an event of type "
                f"{type!r}: {problem}; emit a non-empty string naming what happened in the "
                "stage, such as 'order_priced'",
                node_id=ctx.node_id,
            )
        body: Any = {} if payload is None else payload
        if not isinstance(body, Mapping):
            raise NonJsonValueError(f"event {type!r} payload", body, detail="it must be an object")
        bad = find_non_json(body, "payload")
        if bad is not None:
            raise NonJsonValueError(f"event {type!r} {bad[0]}", bad[1], detail=bad.reason)
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


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _journal(ctx: StageContext, entry: dict[str, Any]) -> None:
    """Append a call to the attempt's journal."""
    if ctx._calls is None:
        ctx._calls = []
    ctx._calls.append(entry)


def _describe_call(entry: dict[str, Any]) -> str:
    if "wait" in entry:
        return f"wait_input({entry['wait']!r})"
    return "sleep"


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
