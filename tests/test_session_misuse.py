"""A session used the way an embedding gets it wrong: stages that misbehave, contexts kept."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from fakes import doc, parallel, stage, terminal, wait_until_waiting

import stageflow

pytestmark = pytest.mark.anyio


class Interrupt(BaseException):
    """A BaseException that is neither a cancellation nor an Exception."""


def _registry() -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    @registry.register("Interrupt")
    async def interrupt(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        raise Interrupt("stop")

    return registry


@pytest.mark.parametrize("where", ["main_path", "branch", "item"])
async def test_a_stage_raising_a_base_exception_ends_the_session_failed(where: str) -> None:
    # The exception went up, but the session stayed "running" with no run:
    # inputs were queued for nobody, cancel() did nothing, run() said it was
    # running, events() streams never ended.
    if where == "item":
        nodes = [
            stage("ask", "WaitStage", config={"input": "go"}, next="fan"),
            {"id": "fan", "type": "map", "items": "items", "body": "boom", "next": "end"},
            stage("boom", "Interrupt"),
            terminal("end"),
        ]
    elif where == "branch":
        nodes = [
            stage("ask", "WaitStage", config={"input": "go"}, next="fan"),
            parallel("fan", ["boom"], next="end"),
            stage("boom", "Interrupt"),
            terminal("end"),
        ]
    else:
        nodes = [
            stage("ask", "WaitStage", config={"input": "go"}, next="boom"),
            stage("boom", "Interrupt", next="end"),
            terminal("end"),
        ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=_registry())
    session = stageflow.Session(pipeline, payload={"items": [1]})
    stream = session.events()
    session.send_input("go", {})
    with pytest.RaisesGroup(Interrupt, allow_unwrapped=True, flatten_subgroups=True):
        await session.run()
    assert session.status is stageflow.SessionStatus.FAILED
    last = session.history[-1]
    assert last.type == "session_failed"
    assert "interrupted at node" in last.payload["error"]["message"]
    assert "Interrupt: stop" in last.payload["error"]["message"]
    with anyio.fail_after(5):
        seen = [event.type async for event in stream]
    assert seen[-1] == "session_failed"
    with pytest.raises(stageflow.SessionStateError, match="takes no more inputs"):
        session.send_input("go", {})
    with pytest.raises(stageflow.SessionStateError, match="is failed"):
        await session.run()
    assert session.to_dict()["status"] == "failed"
    # Every node, branch or item it crossed ends in the history, failed with
    # it (they started and never ended, against the history's contract).
    ends = [(e.type, e.node_id) for e in session.history if e.type.endswith("_failed")]
    crossed = [("node_failed", "boom")]
    if where != "main_path":
        crossed += [(f"{where if where == 'branch' else 'map_item'}_failed", "fan")]
        crossed += [("node_failed", "fan")]
    assert ends == [*crossed, ("session_failed", None)]
    failed = next(e for e in session.history if e.type == "node_failed")
    assert failed.payload["error"] == {"type": "Interrupt", "message": "stop", "causes": []}


async def test_a_system_exit_from_a_stage_ends_the_session_cancelled_with_the_reason() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Exit")
    async def leave(ctx: stageflow.StageContext) -> None:
        raise SystemExit(3)

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("leave", "Exit", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline)
    with pytest.raises(SystemExit):
        await session.run()
    assert session.status is stageflow.SessionStatus.CANCELLED
    last = session.history[-1]
    assert (last.type, last.payload["reason"]) == (
        "session_cancelled",
        "interrupted at node 'leave' by SystemExit: 3",
    )
    # The node it crossed ends cancelled, as the session does.
    assert [e.type for e in session.history][-3:] == [
        "node_started",
        "node_cancelled",
        "session_cancelled",
    ]


# ------------------------------------------------------ a context kept too long


def _keeper() -> tuple[stageflow.StageRegistry, list[stageflow.StageContext]]:
    registry = stageflow.StageRegistry()
    kept: list[stageflow.StageContext] = []

    @registry.register("Keep")
    async def keep(ctx: stageflow.StageContext) -> None:
        kept.append(ctx)

    class Tidy(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            return None

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            ctx.emit("tidied", {"outcome": outcome})

    registry.register("Tidy")(Tidy)
    return registry, kept


async def test_a_context_kept_after_the_session_ended_refuses_every_call() -> None:
    # ctx.emit recorded an event after session_completed; ctx.wait_input
    # waited for ever on a session that had ended.
    registry, kept = _keeper()
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("keep", "Keep", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    [ctx] = kept
    with pytest.raises(stageflow.StageContractError, match=r"ctx\.emit\('late'\) after its"):
        ctx.emit("late", {})
    with anyio.fail_after(5):
        with pytest.raises(stageflow.StageContractError, match=r"ctx\.wait_input\('more'\)"):
            await ctx.wait_input("more")
        with pytest.raises(stageflow.StageContractError, match=r"ctx\.sleep\(\) after its"):
            await ctx.sleep(1)
        # It said "called ctx.sleep()" of a sleep_until call.
        later = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        with pytest.raises(stageflow.StageContractError, match=r"ctx\.sleep_until\(\) after"):
            await ctx.sleep_until(later)
    assert session.history == result.history
    assert session.history[-1].type == "session_completed"


@pytest.mark.parametrize("tight", [True, False], ids=["simple_node", "node_with_config"])
async def test_a_context_kept_from_an_earlier_node_cannot_emit_for_it(tight: bool) -> None:
    registry, kept = _keeper()
    keep = stage("keep", "Keep", next="ask", config=None if tight else {"any": 1})
    pipeline = stageflow.Pipeline.from_dict(
        doc(
            [
                keep,
                stage("ask", "WaitStage", config={"input": "go"}, next="tidy"),
                stage("tidy", "Tidy", next="end"),
                terminal("end"),
            ]
        ),
        registry=registry,
    )
    session = stageflow.Session(pipeline)
    waiting = anyio.Event()
    session.subscribe(lambda e: waiting.set() if e.type == "waiting_for_input" else None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await waiting.wait()
        with pytest.raises(stageflow.StageContractError, match=r"at node 'keep' called ctx\.emit"):
            kept[0].emit("late", {})
        session.send_input("go", {})
    assert session.status is stageflow.SessionStatus.COMPLETED
    assert "late" not in [e.type for e in session.history]
    # A cleanup still has its attempt's context.
    assert [e.payload for e in session.history if e.type == "tidied"] == [{"outcome": "succeeded"}]


# ------------------------------------------------------ Session(...) arguments


def _pipeline() -> stageflow.Pipeline:
    return stageflow.Pipeline.from_dict(
        doc([stage("ask", "WaitStage", config={"input": "go"}, next="end"), terminal("end")]),
        registry=stageflow.StageRegistry(),
    )


@pytest.mark.parametrize(
    ("arguments", "error", "says"),
    [
        ({"session_id": ""}, ValueError, r"session_id=''\) is not a non-empty string"),
        ({"session_id": 123}, TypeError, r"session_id=123\) is not a non-empty string"),
        ({"limits": {"max_steps": 3}}, TypeError, r"stageflow\.Limits\(max_steps=100\)"),
        ({"validate_events": "loud"}, ValueError, r"'loud'\) is not one of 'off', 'warn'"),
        ({"clock": 5}, TypeError, r"clock=5\) is not callable"),
        ({"registry": {}}, TypeError, r"registry=\.\.\.\) was given a dict"),
        # "was given a int" before: the article follows the type's name.
        ({"limits": 5}, TypeError, r"limits=\.\.\.\) was given an int;"),
        ({"registry": None, "limits": object()}, TypeError, r"was given an object;"),
        # An AttributeError ('int' object has no attribute 'get_tracer') before.
        ({"tracer_provider": 5}, TypeError, r"tracer_provider=\.\.\.\) was given an int, which"),
        ({"meter_provider": "x"}, TypeError, r"meter_provider=\.\.\.\) was given a str, which"),
    ],
    ids=[
        "empty id",
        "int id",
        "limits dict",
        "bad mode",
        "clock",
        "registry dict",
        "limits int",
        "limits object",
        "tracer provider int",
        "meter provider str",
    ],
)
def test_session_arguments_of_the_wrong_kind_are_named(
    arguments: dict[str, Any], error: type[Exception], says: str
) -> None:
    # An empty id was replaced by a random one and an int id was kept (its
    # snapshot did not restore); a limits dict or a registry dict raised a bare
    # AttributeError; a clock that is not callable failed only when run.
    with pytest.raises(error, match=says):
        stageflow.Session(_pipeline(), **arguments)


@pytest.mark.parametrize(
    ("pipeline", "named"),
    [({"api_version": "1.0"}, "a dict"), ("pipeline.json", "a str"), (None, "None")],
)
def test_a_session_given_no_pipeline_says_how_to_make_one(pipeline: Any, named: str) -> None:
    # AttributeError: 'dict' object has no attribute 'registry' before.
    with pytest.raises(TypeError, match=rf"Session\(pipeline=\.\.\.\) was given {named}; pass a"):
        stageflow.Session(pipeline)


def test_session_arguments_of_the_right_kind_are_taken() -> None:
    session = stageflow.Session(
        _pipeline(),
        session_id="s-1",
        limits=stageflow.Limits(max_steps=5),
        validate_events=stageflow.ValidateEvents.STRICT,
        registry=stageflow.StageRegistry(),
    )
    assert session.session_id == "s-1"
    assert stageflow.Session(_pipeline(), validate_events="off").status.value == "pending"


async def _async_callback(event: stageflow.Event) -> None:
    raise AssertionError("never called")


class _AsyncHook:
    async def __call__(self, event: stageflow.Event) -> None:
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda s: s.events(buffer=-1), ValueError, r"buffer=\.\.\.\) was given -1; pass how many"),
        (lambda s: s.events(buffer=1.5), TypeError, r"was given a float; pass how many"),
        (lambda s: s.events(buffer=None), TypeError, r"was given None; pass how many"),
        (lambda s: s.subscribe(None), TypeError, r"subscribe\(\) was given None, which cannot"),
        (lambda s: s.subscribe("print"), TypeError, r"was given a str, which cannot be called"),
        # Taken before: called, never awaited (a RuntimeWarning), its body never ran.
        (lambda s: s.subscribe(_async_callback), TypeError, r"was given an async function"),
        # Taken after that: an object whose __call__ is an async def.
        (lambda s: s.subscribe(_AsyncHook()), TypeError, r"was given an async function"),
        (lambda s: s.cancel(None), TypeError, r"cancel\(reason=\.\.\.\) was given None; pass a"),
        (lambda s: s.cancel(object()), TypeError, r"was given an object; pass a string"),
    ],
    ids=[
        "buffer -1",
        "buffer float",
        "buffer None",
        "callback None",
        "callback str",
        "callback async",
        "callback async __call__",
        "reason None",
        "reason object",
    ],
)
def test_session_method_arguments_of_the_wrong_kind_are_named(
    call: Any, error: type[Exception], says: str
) -> None:
    # events(buffer=-1) was taken, 1.5 and None raised anyio's or a comparison's
    # TypeError; a callback that cannot be called was taken and failed (logged,
    # detached) at the first event; cancel()'s reason was taken as it came.
    session = stageflow.Session(_pipeline())
    with pytest.raises(error, match=says):
        call(session)
    assert session.status is stageflow.SessionStatus.PENDING


@pytest.mark.parametrize("reason", [None, object()])
async def test_a_cancel_with_no_string_reason_leaves_the_run_and_its_snapshot_whole(
    reason: Any,
) -> None:
    # cancel(None) mid-run made run() raise TypeError (the run took the missing
    # reason for a passed deadline); cancel(object()) put the object in the
    # history, and json.dumps(session.to_dict()) failed.
    session = stageflow.Session(_pipeline())
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(TypeError):
            session.cancel(reason)
        assert session.status is stageflow.SessionStatus.RUNNING
        session.cancel("by the test")
    assert session.status is stageflow.SessionStatus.CANCELLED
    data = json.loads(json.dumps(session.to_dict()))
    assert data["history"][-1]["payload"]["reason"] == "by the test"


# ------------------------------------------------------ subscribers and streams


async def test_a_subscriber_that_changes_its_event_changes_no_other_subscribers() -> None:
    # Every stream and callback got the same Event: the first one to change
    # its payload changed what all the others saw.
    session = stageflow.Session(_pipeline())
    first, second = session.events(), session.events()
    seen: list[Mapping[str, Any]] = []

    def tamper(event: stageflow.Event) -> None:
        event.payload["input_type"] = "tampered"

    session.subscribe(tamper)
    session.subscribe(lambda event: seen.append(dict(event.payload)))
    session.subscribe(tamper)
    session.send_input("go", {})
    mine = await first.__anext__()
    mine.payload["input_type"] = "tampered by a reader"
    theirs = await second.__anext__()
    assert seen == [{"input_type": "go"}]
    assert theirs.payload == {"input_type": "go"}
    assert session.history[0].payload == {"input_type": "go"}
    await first.aclose()
    await second.aclose()


async def test_a_failing_subscriber_whose_repr_fails_too_is_detached_and_the_run_goes_on() -> None:
    # Its detachment was logged with repr(callback): an object whose __repr__
    # raises made the log line raise, out of the run.
    class Hook:
        calls = 0

        def __call__(self, event: stageflow.Event) -> None:
            Hook.calls += 1
            raise ValueError("a broken hook")

        def __repr__(self) -> str:
            raise RuntimeError("a broken repr")

    session = stageflow.Session(_pipeline())
    session.subscribe(Hook())
    session.send_input("go", {})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert Hook.calls == 1


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, Interrupt])
async def test_cleanup_is_told_the_outcome_the_session_ends_with(raised: type) -> None:
    # A KeyboardInterrupt or SystemExit ends the session cancelled, but the
    # stage's cleanup was told "failed".
    told: list[str] = []

    class Tidy(stageflow.BaseStage):
        async def run(self, ctx: stageflow.StageContext) -> None:
            raise raised()

        async def cleanup(self, ctx: stageflow.StageContext, outcome: str) -> None:
            told.append(outcome)

    registry = stageflow.StageRegistry()
    registry.register("Tidy")(Tidy)
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("t", "Tidy", next="end"), terminal("end")]), registry=registry
    )
    session = stageflow.Session(pipeline)
    with pytest.RaisesGroup(raised, allow_unwrapped=True, flatten_subgroups=True):
        await session.run()
    expected = "failed" if raised is Interrupt else "cancelled"
    assert session.status.value == expected
    assert told == [expected]


async def test_a_snapshot_asked_for_from_another_thread_is_taken_on_the_runs_loop() -> None:
    # A live snapshot read the run's clock from the calling thread, where no
    # event loop runs: to_dict() raised anyio's NoEventLoopError.
    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("w", "WaitStage", config={"input": "go"}, next="end"), terminal("end")])
    )
    session = stageflow.Session(pipeline)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await wait_until_waiting(session, "go")
        from_a_thread = await anyio.to_thread.run_sync(session.to_dict)
        here = session.to_dict()
        del from_a_thread["taken_at"], here["taken_at"]  # read on the system clock
        assert from_a_thread == here
        assert from_a_thread["status"] == "running"
        session.send_input("go", 1)
    assert session.status is stageflow.SessionStatus.COMPLETED


@pytest.mark.parametrize(
    ("now", "error", "said"),
    [
        ("now", TypeError, "returned 'now', a str;"),
        (datetime.datetime(2030, 1, 1), ValueError, "a datetime with no UTC offset;"),
    ],
)
async def test_a_clock_that_returns_no_aware_datetime_is_named_and_nothing_runs(
    now: object, error: type[Exception], said: str
) -> None:
    # run() raised an AttributeError from inside the engine, naming no clock
    # (a str), or took the datetime as the machine's local time (a naive one).
    pipeline = stageflow.Pipeline.from_dict(doc([terminal("end")]))
    session = stageflow.Session(pipeline, clock=lambda: now)  # type: ignore[arg-type,return-value]
    with pytest.raises(error, match=r"^Session\(clock=\.\.\.\) ") as caught:
        await session.run()
    assert said in str(caught.value)
    assert "datetime.datetime.now(datetime.UTC)" in str(caught.value)
    assert session.status is stageflow.SessionStatus.PENDING
    assert len(session.history) == 0
