"""An invariant fuzzer: random pipelines, random interventions, invariants that must hold.

Each example builds a random valid pipeline (a chain of blocks: stages that
set values, fail routed and unrouted, retry, time out, conditions, parallel
``all`` with a reducer and ``any``, maps with concurrency and tolerated
failures, subpipelines, waits for inputs with and without timeouts, journaled
sleeps), then runs it on trio under an autojumping ``MockClock`` (timeouts and
sleeps cost nothing) several ways in one ``trio.run``:

- **reference**: a driver answers the waits of the answered input types, live
  (from a subscriber, at ``waiting_for_input``) or parked (sent to the
  suspended session); the run is ``run(suspend=True)`` again and again, the
  driver sleeping (virtual time) until ``wake_at`` when nothing can be sent;
- **restored**: a snapshot taken from a subscriber at a random event of the
  reference, through JSON, restored into a new ``Session`` on a clock set
  back to the snapshot's ``taken_at``, driven the same way;
- **restored at every suspension**: the reference's loop with a JSON round
  trip at each suspension;
- **chaos**: inputs of declared and undeclared types and unsendable payloads
  sent from a subscriber at random events, ``cancel()`` at a random event, a
  snapshot (JSON round trip, ``from_dict``) at every event;
- **asyncio**: for plans whose outcome cannot depend on timing, the reference
  on asyncio too.

Invariants: ``run()`` returns (it raises nothing), no send raises anything
but ``InputRejectedError`` / ``SessionStateError``; the history is well formed
(``seq`` without gaps, one final event and last, every ``node_started`` ended
once, or by the suspension / restore that left it); nothing lost (per input
type, the inputs accepted equal those received from a sender or the backlog
plus those in ``inputs_discarded``, and every snapshot the chaos run takes
holds each of them once, counting its backlog, parked waits and
``unseen_inputs``); the restored runs and the asyncio run end
with the reference's status, result and artifacts; every snapshot is JSON that
``from_dict`` accepts.

Where the docs say otherwise the invariants bend: a snapshot taken at the
final event restores a finished session that cannot run again (its outcome is
compared instead); a ``cancel()`` at ``inputs_discarded`` or the final event
comes after the end was decided; a session stopped by a step limit keeps the
inputs its saved waits were given and its backlog (they count as kept); with
``max_steps`` which positions get the last steps depends on task order, so
only the invariants of each run are checked, not equivalence.

To hunt with many more examples locally::

    STAGEFLOW_FUZZ_EXAMPLES=2000 PYTHONPATH=. .venv/bin/python -m pytest \
        tests/engine/test_invariants_fuzz.py -q -p no:cacheprovider
"""

from __future__ import annotations

import collections
import datetime
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import trio
import trio.testing
from fakes import doc, stage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import stageflow
from stageflow._engine._positions import parked_calls

S = stageflow.SessionStatus
FINAL = {"session_completed", "session_failed", "session_cancelled", "session_timed_out"}
ENDS = {"node_finished", "node_failed", "node_cancelled"}
BASE = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
# The meter of metered examples (plan["metered"]): what it measures is not
# looked at, only that a metered session (whose snapshots keep when each wait
# began) runs, suspends and restores as any other.
METER = MeterProvider(metric_readers=[InMemoryMetricReader()])


def _limits(plan: Mapping[str, Any]) -> stageflow.Limits:
    return stageflow.Limits(timeout=1000, max_steps=plan.get("max_steps"))


KINDS = (
    "set",
    "fail_routed",
    "fail",
    "flaky",
    "slow",
    "cond",
    "par_all",
    "par_any",
    "map",
    "sub",
    "wait",
    "sleep",
    "nest",
    "twice",
)
# Kinds whose outcome cannot depend on timing (no timer, no race): asyncio runs them too.
CALM = {"set", "fail_routed", "fail", "cond", "par_all", "map", "sub", "wait", "nest", "twice"}


# ------------------------------------------------------------------ pipelines


def _registry() -> stageflow.StageRegistry:
    stages = stageflow.StageRegistry()

    @stages.register("Set")
    async def set_values(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(ctx.config.get("delay", 0))
        return dict(ctx.config.get("values", {}))

    @stages.register("Fail")
    async def fail(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        raise ValueError(ctx.config.get("message", "boom"))

    @stages.register("FailIf")
    async def fail_if(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if ctx.arguments.get("item") == ctx.config["bad"]:
            raise ValueError(f"bad item {ctx.arguments.get('item')}")
        return {"seen": ctx.arguments.get("item")}

    @stages.register("Flaky")
    async def flaky(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        if ctx.attempt <= ctx.config.get("fails", 0):
            raise ValueError(f"attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}

    @stages.register(
        "Twice", spec=stageflow.StageSpec(allowed_events=[stageflow.EventSpec("asked")])
    )
    async def twice(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        ctx.emit("asked", {"n": 1})
        first = await ctx.wait_input(ctx.config["first"])
        ctx.emit("asked", {"n": 2})
        second = await ctx.wait_input(ctx.config["second"])
        return {"both": [first, second]}

    @stages.register("Echo")
    async def echo(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return dict(ctx.arguments)

    return stages


REGISTRY = _registry()


def _set(node_id: str, key: str, value: Any, nxt: str | None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"values": {key: value}}
    if "delay" in extra:
        config["delay"] = extra.pop("delay")
    node = stage(node_id, "Set", config=config, outputs={key: key}, next=nxt)
    node.update(extra)
    return node


def _wait(node_id: str, input_type: str, out: str, nxt: str | None, timeout: int = 0) -> dict:
    config: dict[str, Any] = {"input": input_type}
    if timeout:
        config["timeout"] = timeout
    node = stage(node_id, "WaitStage", config=config, outputs={"payload": out}, next=nxt)
    if timeout and nxt is not None:
        node["on_error"] = [{"errors": ["InputTimeoutError"], "next": nxt}]
    return node


class Built:
    """A pipeline document, the paths its terminal returns and the input types it waits for."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.artifacts: list[str] = ["acc", "error.type"]
        self.types: list[str] = []
        self.subpipelines: dict[str, Any] = {}


def _block(built: Built, kind: str, i: int, nxt: str, v: int) -> None:
    me = f"b{i}"
    add = built.nodes.append
    if kind == "set":
        add(_set(me, f"v{i}", i, nxt))
        built.artifacts.append(f"v{i}")
    elif kind == "fail_routed":
        node = stage(me, "Fail", config={"message": f"boom {i}"}, next=nxt)
        node["on_error"] = [{"errors": ["ValueError"], "next": nxt, "error_path": f"err{i}"}]
        add(node)
        built.artifacts.append(f"err{i}.message")
    elif kind == "fail":
        node = stage(me, "Fail", config={"message": f"boom {i}"}, next=nxt)
        if v:
            node["fallback"] = nxt
        add(node)
    elif kind == "flaky":
        node = stage(me, "Flaky", config={"fails": v}, outputs={"attempt": f"a{i}"}, next=nxt)
        node["retry"] = {"attempts": 3, "delay": 2 * (v % 2)}
        node["fallback"] = nxt
        add(node)
        built.artifacts.append(f"a{i}")
    elif kind == "slow":
        add(_set(me, f"s{i}", i, nxt, delay=10, timeout=5 if v % 2 else 20))
        built.nodes[-1]["retry"] = {"attempts": 2}
        built.nodes[-1]["on_error"] = [{"errors": ["TimeoutError"], "next": nxt}]
        built.artifacts.append(f"s{i}")
    elif kind == "cond":
        add(
            {
                "id": me,
                "type": "condition",
                "conditions": [{"if": {"var": "flag"}, "then": f"{me}_yes"}],
                "else": nxt,
            }
        )
        add(_set(f"{me}_yes", f"c{i}", "yes", nxt))
        built.artifacts.append(f"c{i}")
    elif kind == "par_all":
        children = [f"{me}_l", f"{me}_r"]
        add(_set(f"{me}_l", "acc", [i], None))
        if v == 1:
            add(stage(f"{me}_r", "Fail", config={"message": f"branch {i}"}))
        else:
            add(_set(f"{me}_r", "acc", [i + 100], None))
        if v >= 2:
            children.append(f"{me}_w")
            add(_wait(f"{me}_w", f"w{i}", f"pw{i}", None, timeout=40 if v == 3 else 0))
            built.types.append(f"w{i}")
            built.artifacts.append(f"pw{i}")
        node = {"id": me, "type": "parallel", "children": children, "next": nxt}
        node["on_error"] = [{"errors": ["Exception"], "next": nxt, "error_path": f"perr{i}"}]
        add(node)
        built.artifacts.append(f"perr{i}.type")
    elif kind == "par_any":
        add(_set(f"{me}_l", f"al{i}", 1, None, delay=3))
        if v >= 2:
            add(_wait(f"{me}_r", f"w{i}", f"ar{i}", None))
            built.types.append(f"w{i}")
        else:
            add(_set(f"{me}_r", f"ar{i}", 2, None, delay=1 + 4 * v))
        add(
            {
                "id": me,
                "type": "parallel",
                "policy": "any",
                "children": [f"{me}_l", f"{me}_r"],
                "next": nxt,
            }
        )
        built.artifacts += [f"al{i}", f"ar{i}"]
    elif kind == "map":
        body = [
            stage(f"{me}_e", "Echo", arguments={"item": "item"}, outputs={"item": "got"}, next=None)
        ]
        if v in (1, 3):
            body[0]["next"] = f"{me}_f"
            body.append(
                stage(
                    f"{me}_f",
                    "FailIf",
                    config={"bad": 2},
                    arguments={"item": "item"},
                    outputs={"seen": "seen"},
                )
            )
        elif v == 2:
            body[0]["next"] = f"{me}_w"
            body.append(_wait(f"{me}_w", f"mw{i}", "seen", None))
            built.types.append(f"mw{i}")
        node: dict[str, Any] = {
            "id": me,
            "type": "map",
            "items": "items",
            "body": f"{me}_e",
            "concurrency": 1 + v % 3,
            "collect": {"got": f"outs{i}"},
            "next": nxt,
            "fallback": nxt,
        }
        if v == 3:
            node["max_failures"] = 1
            node["failures_path"] = f"mf{i}"
            built.artifacts.append(f"mf{i}")
        add(node)
        built.nodes += body
        built.artifacts.append(f"outs{i}")
    elif kind == "sub":
        inner_nodes = [_set("s1", "x", i, "s2" if v % 2 else "t")]
        if v % 2:
            inner_nodes.append(_wait("s2", f"s{i}", "y", "t"))
            built.types.append(f"s{i}")
        inner_nodes.append(
            {"id": "t", "type": "terminal", "result": {"in": i}, "artifacts": ["x", "y"]}
        )
        built.subpipelines[f"inner{i}"] = {"entry": "s1", "nodes": inner_nodes}
        add(
            {
                "id": me,
                "type": "subpipeline",
                "pipeline": f"inner{i}",
                "artifacts": {"x": f"sx{i}", "y": f"sy{i}"},
                "next": nxt,
            }
        )
        built.artifacts += [f"sx{i}", f"sy{i}"]
    elif kind == "wait":
        add(_wait(me, f"w{i}", f"m{i}", nxt, timeout=30 * v))
        built.types.append(f"w{i}")
        built.artifacts.append(f"m{i}")
    elif kind == "nest":
        # A map whose body is a parallel: a wait and a set in each item.
        add(
            {
                "id": me,
                "type": "map",
                "items": "items",
                "body": f"{me}_p",
                "concurrency": 1 + v % 2,
                "collect": {f"nw{i}": f"nouts{i}", f"ns{i}": f"nset{i}"},
                "next": nxt,
            }
        )
        add({"id": f"{me}_p", "type": "parallel", "children": [f"{me}_w", f"{me}_s"]})
        add(_wait(f"{me}_w", f"nw{i}", f"nw{i}", None, timeout=25 if v >= 2 else 0))
        add(_set(f"{me}_s", f"ns{i}", i, None))
        built.types.append(f"nw{i}")
        built.artifacts += [f"nouts{i}", f"nset{i}"]
    elif kind == "twice":
        add(
            stage(
                me,
                "Twice",
                config={"first": f"t{i}a", "second": f"t{i}b" if v % 2 else f"t{i}a"},
                outputs={"both": f"both{i}"},
                next=nxt,
            )
        )
        built.types += [f"t{i}a", f"t{i}b"] if v % 2 else [f"t{i}a"]
        built.artifacts.append(f"both{i}")
    elif kind == "sleep":
        add(stage(me, "SleepStage", config={"seconds": 10 * (v + 1)}, next=nxt))
    else:  # pragma: no cover
        raise AssertionError(kind)


def build(blocks: list[tuple[str, int]]) -> tuple[stageflow.Pipeline, Built]:
    built = Built()
    for i, (kind, v) in enumerate(blocks):
        _block(built, kind, i, f"b{i + 1}" if i + 1 < len(blocks) else "end", v)
    built.nodes.append(
        {"id": "end", "type": "terminal", "result": {"ok": True}, "artifacts": built.artifacts}
    )
    top: dict[str, Any] = {"reducers": {"acc": "append"}}
    if built.subpipelines:
        top["subpipelines"] = built.subpipelines
    document = doc(built.nodes, entry="b0", **top)
    return stageflow.Pipeline.from_dict(document, registry=REGISTRY), built


# ------------------------------------------------------------------ driving


class Lineage:
    """One line of sessions (a session and those restored from it) and what was sent to it."""

    def __init__(self, plan: dict[str, Any], pipeline: stageflow.Pipeline, offset: float) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.offset = offset  # virtual seconds the clock is set back by
        self.accepted: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.session: stageflow.Session | None = None
        self.hooks: list[Callable[[stageflow.Session, stageflow.Event], None]] = []
        self.sending = 0  # sends in progress (their events come before their receipt)
        # A metered session keeps when its waits began in its snapshots.
        self.meter = METER if plan["metered"] else None

    def clock(self) -> datetime.datetime:
        return BASE + datetime.timedelta(seconds=anyio.current_time() - self.offset)

    def send(self, input_type: str, payload: Any) -> bool:
        """Send; whether it was accepted (refused only with the documented errors)."""
        assert self.session is not None
        self.sending += 1
        try:
            receipt = self.session.send_input(input_type, payload)
        except (stageflow.InputRejectedError, stageflow.SessionStateError):
            return False
        except Exception as exc:
            self.problems.append(f"send_input raised {exc!r}")
            return False
        finally:
            self.sending -= 1
        if os.environ.get("FZ_DEBUG"):
            print("receipt", receipt)
        if not (receipt.delivered or receipt.queued):
            self.problems.append(f"a receipt that neither delivered nor queued: {receipt}")
        self.accepted[input_type] += receipt.delivered + (1 if receipt.queued else 0)
        return True

    def attach(self, session: stageflow.Session) -> None:
        self.session = session

        def on_event(event: stageflow.Event) -> None:
            try:
                for hook in self.hooks:
                    hook(session, event)
                if (
                    self.plan["live"]
                    and event.type == "waiting_for_input"
                    and event.payload["input_type"] in self.plan["answered"]
                ):
                    self.send(event.payload["input_type"], {"for": event.payload["input_type"]})
            except Exception as exc:
                self.problems.append(f"in a subscriber: {exc!r}")

        session.subscribe(on_event)

    def restore(self, snapshot: dict[str, Any]) -> stageflow.Session:
        data = json.loads(json.dumps(snapshot))
        return stageflow.Session.from_dict(
            data, pipeline=self.pipeline, clock=self.clock, meter_provider=self.meter
        )

    async def drive(self, *, restore_each_suspend: bool = False) -> stageflow.SessionResult:
        assert self.session is not None
        for _ in range(200):
            try:
                result = await self.session.run(suspend=True)
            except Exception as exc:
                raise AssertionError(f"run() raised {exc!r}") from exc
            if result.status is not S.WAITING:
                return result
            if restore_each_suspend:
                self.attach(self.restore(self.session.to_dict()))
            sendable = [t for t in result.waiting_for if t in self.plan["answered"]]
            for input_type in sendable:
                self.send(input_type, {"for": input_type})
            if not sendable:
                assert result.wake_at is not None, "waiting on nothing: the deadline is a timer"
                delay = (result.wake_at - self.clock()).total_seconds()
                await anyio.sleep(max(delay, 0))
        raise AssertionError("the session did not end in 200 runs")


def check_history(result: stageflow.SessionResult) -> None:
    history = list(result.history)
    seqs = [e.seq for e in history]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq has gaps: {seqs}"
    finals = [i for i, e in enumerate(history) if e.type in FINAL]
    assert finals == [len(history) - 1], f"final events at {finals} of {len(history)}"
    open_: collections.Counter[tuple[str | None, str]] = collections.Counter()
    for e in history:
        key = (e.node_id, e.path)
        if e.type == "node_started":
            open_[key] += 1
            assert open_[key] == 1, f"{key} started twice without ending ({e.seq})"
        elif e.type in ENDS:
            assert open_[key] == 1, f"{e.type} of {key} that was not running ({e.seq})"
            open_[key] -= 1
        elif e.type in ("session_suspended", "session_resumed"):
            open_.clear()  # the positions in flight run again (resumed: true)
    left = {key for key, n in open_.items() if n}
    assert not left, f"nodes started and never ended: {sorted(left, key=repr)}"


def check_nothing_lost(lineage: Lineage, result: stageflow.SessionResult) -> None:
    seen: collections.Counter[str] = collections.Counter()
    stopped = isinstance(result.error, stageflow.LimitExceededError)
    if stopped and lineage.session is not None:
        # Stopped by a limit, the session keeps its positions and backlog to
        # go on when restored with the limit raised (documented): inputs its
        # saved waits were given, or that wait in its backlog, are kept there.
        data = lineage.session.to_dict()
        for call in parked_calls(data["position"]):
            seen[call["wait"]] += 1
        for type, payloads in data["backlog"].items():
            seen[type] += len(payloads)
    stop: int | None = None
    # Only a stop of the last run counts: one before its session_resumed was
    # an earlier run's, in a snapshot taken while that stop unwound, which
    # the restored session went on from as a running session.
    last_run = max((e.seq for e in result.history if e.type == "session_resumed"), default=0)
    for e in result.history:
        error = e.payload.get("error") if stopped and e.seq > last_run else None
        if stop is None and isinstance(error, dict) and error.get("type") == "LimitExceededError":
            # The stop saved the positions: a stage that saw a delivered input
            # after it runs again when the session goes on, and sees it then.
            stop = e.seq
        if e.type == "input_received" and e.payload.get("from") in ("sender", "backlog"):
            if stop is None or e.payload["from"] == "backlog":
                seen[e.payload["input_type"]] += 1
        elif e.type == "inputs_discarded":
            for entry in e.payload["inputs"]:
                seen[entry["input_type"]] += 1
    if os.environ.get("FZ_DEBUG") and dict(+seen) != dict(+lineage.accepted):
        for e in result.history:
            print(e.seq, e.type, e.node_id, e.path, dict(e.payload))
    assert dict(+seen) == dict(+lineage.accepted), (
        f"accepted inputs lost or counted twice: accepted {dict(+lineage.accepted)}, "
        f"received or discarded {dict(+seen)}"
    )


def held_inputs(data: Mapping[str, Any]) -> collections.Counter[str]:
    """Per input type, the inputs a snapshot accounts for, each once.

    Received from a sender or the backlog, or discarded (the history); and,
    while the session is active, waiting in the backlog, given to a saved
    wait (parked), or given to a wait torn down before its stage saw it
    (``unseen_inputs``).
    """
    held: collections.Counter[str] = collections.Counter()
    for e in data["history"]:
        if e["type"] == "input_received" and e["payload"].get("from") in ("sender", "backlog"):
            held[e["payload"]["input_type"]] += 1
        elif e["type"] == "inputs_discarded":
            for entry in e["payload"]["inputs"]:
                held[entry["input_type"]] += 1
    if data["status"] in ("running", "waiting"):
        for type, payloads in data["backlog"].items():
            held[type] += len(payloads)
        for call in parked_calls(data["position"]):
            held[call["wait"]] += 1
        for item in data.get("unseen_inputs", ()):
            held[item["input_type"]] += 1
    return held


def outcome(result: stageflow.SessionResult) -> tuple[Any, ...]:
    return (result.status, result.result, dict(result.artifacts))


async def _examine(plan: dict[str, Any]) -> dict[str, Any]:
    pipeline, built = build(plan["blocks"])
    payload = {"flag": plan["flag"], "items": plan["items"], "acc": []}

    def new(lineage: Lineage) -> stageflow.Session:
        return stageflow.Session(
            pipeline,
            payload=payload,
            session_id="fuzz",
            limits=_limits(plan),
            validate_events=plan["validate"],
            seed=1,
            clock=lineage.clock,
            meter_provider=lineage.meter,
        )

    # The reference, with a snapshot at a random event.
    reference = Lineage(plan, pipeline, 0.0)
    taken: dict[str, Any] = {}

    def snap(session: stageflow.Session, event: stageflow.Event) -> None:
        if event.seq == plan["snapshot_at"] and not taken:
            taken["data"] = json.loads(json.dumps(session.to_dict()))
            taken["accepted"] = collections.Counter(reference.accepted)

    reference.hooks.append(snap)
    reference.attach(new(reference))
    ref = await reference.drive()
    check_history(ref)
    check_nothing_lost(reference, ref)
    assert reference.problems == []
    outcomes = {"reference": outcome(ref)}

    # With a step limit, which positions get the last steps depends on the
    # order concurrent branches and items run in: only the reference's own
    # invariants are checked, not equivalence (restored runs order tasks anew).
    same = plan.get("max_steps") is None

    # Restored from the snapshot at a random event, on a clock set back to it.
    if taken:
        at = datetime.datetime.fromisoformat(taken["data"]["taken_at"])
        restored = Lineage(plan, pipeline, anyio.current_time() - (at - BASE).total_seconds())
        restored.accepted = taken["accepted"]
        restored.attach(restored.restore(taken["data"]))
        assert restored.session is not None
        if restored.session.status in (S.WAITING, S.PENDING):
            again = await restored.drive()
            check_history(again)
            check_nothing_lost(restored, again)
            assert restored.problems == []
            got = outcome(again)
        else:
            # Taken at the final event: restored finished, it cannot run again (documented).
            done = taken["data"]["outcome"]
            got = (restored.session.status, done["result"], done["artifacts"])
        assert not same or got == outcomes["reference"], f"restored at {plan['snapshot_at']}"

    # Restored (through JSON) at every suspension.
    chained = Lineage(plan, pipeline, anyio.current_time())
    chained.attach(new(chained))
    chain = await chained.drive(restore_each_suspend=True)
    check_history(chain)
    check_nothing_lost(chained, chain)
    assert chained.problems == []
    assert not same or outcome(chain) == outcomes["reference"], "restored at each suspension"

    # Chaos: stray inputs, a cancel, a snapshot at every event.
    chaos = Lineage(plan, pipeline, anyio.current_time())
    strays = dict(plan["strays"])
    kinds = [*built.types, "junk", "nan"]

    def stir(session: stageflow.Session, event: stageflow.Event) -> None:
        data = session.to_dict()
        stageflow.Session.from_dict(json.loads(json.dumps(data)), pipeline=pipeline)
        # Every snapshot holds each accepted input once (not while a send's
        # own events come, before its receipt; a limit's stop keeps its own).
        if not chaos.sending and data.get("stopped_by_limit") is None:
            held = held_inputs(data)
            if dict(+held) != dict(+chaos.accepted):
                chaos.problems.append(
                    f"the snapshot at event {event.seq} ({event.type}) holds {dict(+held)} "
                    f"of the inputs accepted, {dict(+chaos.accepted)}"
                )
        if event.seq in strays:
            kind = kinds[strays[event.seq] % len(kinds)]
            if kind == "nan":
                if chaos.send("junk", {"x": float("nan")}):
                    chaos.problems.append("a payload JSON cannot carry was accepted")
            else:
                chaos.send(kind, {"stray": event.seq})
        if event.seq == plan["cancel_at"]:
            # inputs_discarded is recorded as the session ends, its outcome decided.
            if event.type not in FINAL and event.type != "inputs_discarded":
                cancelled.append(event.seq)
            session.cancel("chaos")

    cancelled: list[int] = []
    chaos.hooks.append(stir)
    chaos.attach(new(chaos))
    wild = await chaos.drive()
    if cancelled:  # a cancel() before the final event ends the session cancelled
        assert wild.status is S.CANCELLED, f"cancel() at seq {cancelled[0]}: {wild.status}"
    check_history(wild)
    check_nothing_lost(chaos, wild)
    assert chaos.problems == []
    json.dumps(wild.to_dict())
    final = chaos.session.to_dict() if chaos.session else {}
    assert stageflow.Session.from_dict(json.loads(json.dumps(final)), pipeline=pipeline)
    return outcomes


def _asyncio_outcome(plan: dict[str, Any]) -> tuple[Any, ...]:
    async def main() -> tuple[Any, ...]:
        pipeline, _ = build(plan["blocks"])
        lineage = Lineage(plan, pipeline, anyio.current_time())
        lineage.attach(
            stageflow.Session(
                pipeline,
                payload={"flag": plan["flag"], "items": plan["items"], "acc": []},
                session_id="fuzz",
                limits=_limits(plan),
                validate_events=plan["validate"],
                seed=1,
                clock=lineage.clock,
            )
        )
        result = await lineage.drive()
        check_history(result)
        check_nothing_lost(lineage, result)
        assert lineage.problems == []
        return outcome(result)

    return anyio.run(main, backend="asyncio")


PLANS = st.fixed_dictionaries(
    {
        "blocks": st.lists(
            st.tuples(st.sampled_from(KINDS), st.integers(min_value=0, max_value=3)),
            min_size=1,
            max_size=6,
        ),
        "flag": st.booleans(),
        "validate": st.sampled_from(["off", "warn", "strict"]),
        "max_steps": st.sampled_from([None, None, None, 2, 5, 9]),
        "items": st.lists(st.integers(min_value=0, max_value=3), max_size=4),
        "live": st.booleans(),
        "metered": st.booleans(),
        "answered_mask": st.integers(min_value=0, max_value=255),
        "snapshot_at": st.integers(min_value=1, max_value=60),
        "cancel_at": st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
        "strays": st.lists(
            st.tuples(st.integers(min_value=1, max_value=60), st.integers(0, 20)), max_size=5
        ),
    }
)


def _answered(plan: dict[str, Any]) -> dict[str, Any]:
    _, built = build(plan["blocks"])
    answered = {t for n, t in enumerate(built.types) if plan["answered_mask"] >> (n % 8) & 1}
    return {**plan, "answered": answered}


@settings(
    max_examples=int(os.environ.get("STAGEFLOW_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=PLANS)
# Found with --hypothesis-seed=2026: two map items refused by max_steps at
# once counted two steps past the limit, and the live snapshots taken as the
# stop tore the run down were refused (the check allowed one).
@example(
    plan={
        "blocks": [("wait", 0), ("wait", 0), ("nest", 3)],
        "flag": False,
        "validate": "off",
        "max_steps": 9,
        "items": [0, 0, 0],
        "live": False,
        "metered": False,
        "answered_mask": 3,
        "snapshot_at": 1,
        "cancel_at": None,
        "strays": [(1, 2)],
    }
)
def test_invariants_hold_for_random_pipelines_and_interventions(plan: dict[str, Any]) -> None:
    plan = _answered(plan)
    trio._core._run._r.seed(0)  # the same order of runnable tasks in every example
    outcomes = trio.run(_examine, plan, clock=trio.testing.MockClock(autojump_threshold=0))
    calm = all(kind in CALM for kind, v in plan["blocks"]) and all(
        t in plan["answered"] for t in build(plan["blocks"])[1].types
    )
    # par_all with a wait that has a timeout (v == 3) is a timer too.
    calm = calm and not any(k == "par_all" and v == 3 for k, v in plan["blocks"])
    calm = calm and not any(k == "wait" and v for k, v in plan["blocks"])
    calm = calm and not any(k == "nest" and v >= 2 for k, v in plan["blocks"])
    if calm and plan["max_steps"] is None:
        assert _asyncio_outcome(plan) == outcomes["reference"], "trio and asyncio differ"
