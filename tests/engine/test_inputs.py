"""External inputs and events: broadcast, backlog, timeouts, validation, threads."""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
import trio
import trio.testing
from fakes import doc, fake_registry, load, parallel, stage, terminal, types, wait_until_waiting
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow

pytestmark = pytest.mark.anyio

S = stageflow.SessionStatus


def wait_node(
    node_id: str, input_type: str, out: str, *, next: str | None = None, **config: Any
) -> dict[str, Any]:
    return stage(
        node_id,
        "WaitStage",
        config={"input": input_type, **config},
        outputs={"payload": out},
        next=next,
    )


def chat_registry(**spec: Any) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Ask", spec=stageflow.StageSpec(**spec))
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"answer": await ctx.wait_input("answer")}

    @registry.register("Announce", spec=stageflow.StageSpec(**spec))
    async def announce(ctx: stageflow.StageContext) -> None:
        ctx.emit(ctx.config["event"], ctx.config.get("payload", {}))

    return registry


def new_session(
    document: Mapping[str, Any], registry: stageflow.StageRegistry | None = None, **kw: Any
) -> stageflow.Session:
    registry = registry or fake_registry()
    return stageflow.Session(load(document, registry), registry=registry, **kw)


async def test_an_input_sent_as_the_wait_starts_is_received() -> None:
    # A subscriber of waiting_for_input answers before the stage's task has
    # parked: the wake-up is set before anyone waits on it (issue 18's TrioWake).
    registry = chat_registry()
    session = new_session(
        doc([stage("ask", "Ask", outputs={"answer": "a"}, next="end"), terminal("end", "a")]),
        registry,
    )
    session.subscribe(
        lambda e: session.send_input("answer", "now") if e.type == "waiting_for_input" else None
    )
    result = await session.run()
    assert result.status is S.COMPLETED
    assert result.artifacts == {"a": "now"}


async def test_broadcast_reaches_waiters_in_every_branch() -> None:
    document = doc(
        [
            parallel("fan", ["a", "b", "c"], next="end"),
            wait_node("a", "go", "a"),
            wait_node("b", "go", "b"),
            wait_node("c", "go", "c"),
            terminal("end", "a", "b", "c"),
        ]
    )
    session = new_session(document)
    receipts = []
    async with anyio.create_task_group() as tg:

        async def send_when_all_wait() -> None:
            await wait_until_waiting(session, "go", 3)
            assert session.waiting_for() == ("go",)
            receipts.append(session.send_input("go", {"n": 1}))

        tg.start_soon(send_when_all_wait)
        result = await session.run()
    assert receipts == [stageflow.InputReceipt("go", 3, False)]
    assert result.artifacts == {"a": {"n": 1}, "b": {"n": 1}, "c": {"n": 1}}
    assert types(result).count("input_received") == 3


async def test_an_input_for_the_middle_waiter_leaves_the_others_waiting() -> None:
    # The broker keeps one waiter as itself and several in a tuple: taking
    # the middle one of three must leave the first and the last registered,
    # in order, for the next input.
    document = doc(
        [
            parallel("fan", ["a", "b", "c"], next="end"),
            wait_node("a", "go", "a"),
            wait_node("b", "other", "b"),
            wait_node("c", "go", "c"),
            terminal("end", "a", "b", "c"),
        ]
    )
    session = new_session(document)
    receipts = []
    async with anyio.create_task_group() as tg:

        async def send_when_all_wait() -> None:
            await wait_until_waiting(session, "go", 2)
            await wait_until_waiting(session, "other", 1)
            receipts.append(session.send_input("other", "b"))
            assert session.waiting_for() == ("go",)
            receipts.append(session.send_input("go", "ac"))
            assert session.waiting_for() == ()

        tg.start_soon(send_when_all_wait)
        with anyio.fail_after(5):  # a waiter lost by the broker would wait for ever
            result = await session.run()
    assert receipts == [
        stageflow.InputReceipt("other", 1, False),
        stageflow.InputReceipt("go", 2, False),
    ]
    assert result.artifacts == {"a": "ac", "b": "b", "c": "ac"}
    received = [e.node_id for e in result.history if e.type == "input_received"]
    assert sorted(received) == ["a", "b", "c"]  # each once (woken in the scheduler's order)


async def test_early_input_is_queued_then_consumed() -> None:
    session = new_session(doc([wait_node("w", "go", "got", next="end"), terminal("end", "got")]))
    receipt = session.send_input("go", "early")
    assert receipt == stageflow.InputReceipt("go", 0, True)
    result = await session.run()
    assert result.artifacts == {"got": "early"}
    received = [e for e in result.history if e.type == "input_received"]
    assert received[0].payload == {"input_type": "go", "from": "backlog"}


async def test_backlog_overflow_is_rejected_and_reported() -> None:
    document = doc(
        [wait_node("w", "go", "got", next="end"), terminal("end", "got")],
        limits={"max_input_backlog": 2},
    )
    session = new_session(document)
    session.send_input("go", 1)
    session.send_input("go", 2)
    with pytest.raises(stageflow.InputRejectedError) as info:
        session.send_input("go", 3)
    assert info.value.reason == "backlog_full"
    assert "max_input_backlog" in str(info.value)
    assert [e.payload["reason"] for e in session.history if e.type == "input_rejected"] == [
        "backlog_full"
    ]
    result = await session.run()
    assert result.artifacts == {"got": 1}  # oldest first


async def test_types_no_stage_declares_share_one_backlog() -> None:
    # Each type had a backlog of its own: in warn mode a sender could queue
    # max_input_backlog inputs under every new type name, growing the
    # session's memory and history (two events each) until max_history
    # ended it.
    document = doc(
        [wait_node("w", "go", "got", next="end"), terminal("end", "got")],
        limits={"max_input_backlog": 3},
    )
    session = new_session(document)
    for n in range(3):
        assert session.send_input(f"spam-{n}", n).queued
    with pytest.raises(stageflow.InputRejectedError) as info:
        session.send_input("spam-3", 3)
    assert info.value.reason == "backlog_full"
    assert "types no stage of this pipeline declares" in str(info.value)
    assert "allowed_inputs" in str(info.value)
    # A declared type keeps its own backlog.
    for n in range(3):
        assert session.send_input("go", n).queued
    assert [e.type for e in session.history].count("input_queued") == 6
    result = await session.run()
    assert result.status is S.COMPLETED
    assert result.artifacts == {"got": 0}


async def test_a_stage_that_declares_no_inputs_takes_them_from_the_shared_backlog() -> None:
    registry = chat_registry()  # declares no inputs: it may wait for any type
    document = doc(
        [stage("ask", "Ask", outputs={"answer": "answer"}, next="end"), terminal("end", "answer")],
        limits={"max_input_backlog": 2},
    )
    session = new_session(document, registry)
    session.send_input("other", 1)
    session.send_input("answer", "yes")
    with pytest.raises(stageflow.InputRejectedError, match=r"share limits\.max_input_backlog"):
        session.send_input("third", 3)
    result = await session.run()
    assert result.status is S.COMPLETED
    assert result.artifacts == {"answer": "yes"}


async def test_sequential_waits_each_get_their_own_input() -> None:
    document = doc(
        [
            wait_node("w1", "msg", "first", next="w2"),
            wait_node("w2", "msg", "second", next="end"),
            terminal("end", "first", "second"),
        ]
    )
    session = new_session(document)
    async with anyio.create_task_group() as tg:

        async def converse() -> None:
            for text in ("hello", "again"):
                await wait_until_waiting(session, "msg")
                assert session.send_input("msg", text).delivered == 1

        tg.start_soon(converse)
        result = await session.run()
    assert result.artifacts == {"first": "hello", "second": "again"}


@pytest.mark.trio_only
async def test_wait_timeout_is_typed_and_routable() -> None:
    document = doc(
        [
            wait_node("w", "go", "got", next="end", timeout=3600),
            terminal("end", "got"),
            terminal("late"),
        ]
    )
    document["nodes"][0]["on_error"] = [{"errors": ["InputTimeoutError"], "next": "late"}]
    start = anyio.current_time()
    result = await new_session(document).run()
    assert anyio.current_time() - start == pytest.approx(3600)
    assert result.status is S.COMPLETED
    assert result.artifacts == {}
    assert "input_timeout" in types(result)
    document["nodes"][0].pop("on_error")
    document["nodes"].pop()  # "late" is no longer reachable
    result = await new_session(document).run()
    assert isinstance(result.error, stageflow.InputTimeoutError)
    assert isinstance(result.error, TimeoutError)


@pytest.mark.trio_only
async def test_sleep_stage_sleeps_an_hour_in_virtual_time() -> None:
    document = doc(
        [
            stage(
                "nap",
                "SleepStage",
                config={"seconds": 3600},
                outputs={"slept": "slept"},
                next="end",
            ),
            terminal("end", "slept"),
        ]
    )
    start = anyio.current_time()
    result = await new_session(document).run()
    assert anyio.current_time() - start == pytest.approx(3600)
    assert result.artifacts == {"slept": 3600}


async def test_sleep_stage_until_a_past_time_returns_at_once() -> None:
    document = doc(
        [
            stage(
                "nap",
                "SleepStage",
                config={"until": "2000-01-01T00:00:00+00:00"},
                outputs={"slept": "s"},
                next="end",
            ),
            terminal("end", "s"),
        ]
    )
    assert (await new_session(document).run()).artifacts == {"s": 0}


def test_wait_stage_config_is_checked_at_load() -> None:
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(doc([stage("w", "WaitStage", config={"timeout": -1}, next="end"), terminal("end")]))
    assert {p.location for p in info.value.problems} == {
        "$.nodes[0].config",
        "$.nodes[0].config.timeout",
    }


@pytest.mark.parametrize(
    ("schema", "location", "why"),
    [
        ({"type": "nope"}, ".type", "'nope' is not valid under any of the given schemas"),
        (
            {"type": "object", "properties": {"t": {"pattern": "("}}},
            ".properties.t.pattern",
            "'(' is not a 'regex'",
        ),
    ],
)
def test_wait_stage_input_schema_that_is_no_schema_is_refused_at_load(
    schema: dict[str, Any], location: str, why: str
) -> None:
    """Once found only by Session(): `stageflow validate` passed what every run refused."""
    wait = stage("w", "WaitStage", config={"input": "msg", "input_schema": schema}, next="end")
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(doc([wait, terminal("end")]))
    [problem] = info.value.problems
    assert problem.location == f"$.nodes[0].config.input_schema{location}"
    assert problem.message == (
        "stage node 'w': config 'input_schema' of stage 'WaitStage' is not a valid JSON Schema "
        f"(draft 2020-12): {why}; fix it, or leave 'input_schema' out to accept any payload"
    )


@pytest.mark.parametrize(
    "ref", ["http://127.0.0.1:9/payload.json", "#/$defs/missing", "other.json"]
)
def test_wait_stage_input_schema_with_a_reference_nothing_resolves_is_refused_at_load(
    ref: str,
) -> None:
    # It loaded: the first send_input then fetched the URL (jsonschema's default
    # registry retrieves one) or raised referencing's Unresolvable, untyped.
    schema = {"type": "object", "properties": {"x": {"$ref": ref}}, "$defs": {"a": {}}}
    wait = stage("w", "WaitStage", config={"input": "msg", "input_schema": schema}, next="end")
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(doc([wait, terminal("end")]))
    [problem] = info.value.problems
    assert problem.location == "$.nodes[0].config.input_schema"
    assert problem.message == (
        "stage node 'w': config 'input_schema' of stage 'WaitStage' has a reference nothing "
        f"resolves ($ref {ref!r}): stageflow fetches no schema, so a reference must point "
        "inside the schema (such as '#/$defs/name'); fix it, or leave 'input_schema' out to "
        "accept any payload"
    )
    with pytest.raises(stageflow.DefinitionError, match="has a reference nothing resolves"):
        stageflow.InputSpec("msg", schema=schema)


async def test_wait_stage_input_schema_may_refer_inside_itself() -> None:
    defs = {"name": {"type": "string", "minLength": 1}}
    schema = {
        "$defs": {**defs, "tagged": {"$anchor": "tag", "enum": ["a", "b"]}},
        "type": "object",
        "properties": {"name": {"$ref": "#/$defs/name"}, "tag": {"$ref": "#tag"}},
        "required": ["name"],
    }
    wait = stage(
        "w",
        "WaitStage",
        config={"input": "msg", "input_schema": schema},
        outputs={"payload": "got"},
        next="end",
    )
    session = stageflow.Session(
        load(doc([wait, terminal("end", "got")])),
        registry=fake_registry(),
        validate_events="strict",
    )
    results: list[stageflow.SessionResult] = []

    async def run() -> None:
        results.append(await session.run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until_waiting(session, "msg")
        with pytest.raises(stageflow.InputRejectedError):
            session.send_input("msg", {"name": "", "tag": "c"})
        session.send_input("msg", {"name": "Ada", "tag": "a"})
    assert results[0].artifacts == {"got": {"name": "Ada", "tag": "a"}}


@pytest.mark.parametrize(
    "until",
    [
        "tomorrow",
        "2030-01-01",
        "2030-01-01T09:00:00",
        "2030-01-01T09:00:00+00:00 ",
        "2030-01-01T09:00:00+00:00\n",  # Python's "$" matches before a final newline
    ],
)
def test_sleep_stage_until_that_is_no_time_with_an_offset_is_refused_at_load(until: str) -> None:
    nap = stage("nap", "SleepStage", config={"until": until}, next="end")
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(doc([nap, terminal("end")]))
    messages = [p.message for p in info.value.problems if p.location == "$.nodes[0].config.until"]
    assert len(messages) == 1
    assert "stage node 'nap'" in messages[0]
    assert "a date and time with a UTC offset, such as 2030-01-01T09:00:00+00:00" in messages[0]


@pytest.mark.parametrize(
    ("until", "why"),
    [
        ("2030-13-01T09:00:00+00:00", "month must be in 1..12"),
        ("2030-02-30T09:00:00+00:00", "day is out of range for month"),
        ("2030-01-01T09:00:00+25:00", "offset must be a timedelta"),
        ("0001-01-01T00:00:00+14:00", "date value out of range"),
        ("9999-12-31T23:59:59-01:00", "date value out of range"),
    ],
)
def test_sleep_stage_until_that_passes_the_pattern_but_is_no_time_is_refused_at_load(
    until: str, why: str
) -> None:
    # It failed every run that reached the node, with a ValueError as the cause.
    nap = stage("nap", "SleepStage", config={"until": until}, next="end")
    with pytest.raises(stageflow.PipelineValidationError) as info:
        load(doc([nap, terminal("end")]))
    [problem] = info.value.problems
    assert problem.location == "$.nodes[0].config.until"
    assert problem.message.startswith(
        "stage node 'nap': config 'until' of stage 'SleepStage' is not a time stageflow can use ("
    )
    assert why in problem.message
    assert problem.message.endswith(
        "write a date and time with a UTC offset, such as 2030-01-01T09:00:00+00:00"
    )


@pytest.mark.parametrize(
    "until", ["2030-01-01T09:00:00+00:00", "2030-01-01 09:00Z", "2030-12-31T23:59:59.5-14:00"]
)
def test_sleep_stage_until_that_is_a_time_loads(until: str) -> None:
    load(doc([stage("nap", "SleepStage", config={"until": until}, next="end"), terminal("end")]))


async def test_sending_after_completion_is_an_error() -> None:
    session = new_session(doc([terminal("end")]))
    await session.run()
    with pytest.raises(stageflow.SessionStateError, match="takes no more inputs"):
        session.send_input("go", 1)


async def test_sending_from_a_thread() -> None:
    session = new_session(doc([wait_node("w", "go", "got", next="end"), terminal("end", "got")]))
    async with anyio.create_task_group() as tg:

        async def from_worker_thread() -> None:
            await wait_until_waiting(session, "go")
            receipt = await anyio.to_thread.run_sync(session.send_input_from_thread, "go", "hi")
            assert receipt.delivered == 1

        tg.start_soon(from_worker_thread)
        result = await session.run()
    assert result.artifacts == {"got": "hi"}


async def test_send_input_from_another_thread_is_refused_and_loses_nothing() -> None:
    # On trio it raised a bare "must be called from async context" after
    # taking the waiter: the stage never got the input and the run hung.
    session = new_session(doc([wait_node("w", "go", "got", next="end"), terminal("end", "got")]))
    async with anyio.create_task_group() as tg:

        async def from_worker_thread() -> None:
            await wait_until_waiting(session, "go")
            with pytest.raises(stageflow.SessionStateError, match="send_input_from_thread"):
                await anyio.to_thread.run_sync(session.send_input, "go", "lost?")
            assert session.waiting_for() == ("go",)
            assert session.send_input("go", "hi").delivered == 1

        tg.start_soon(from_worker_thread)
        result = await session.run()
    assert result.artifacts == {"got": "hi"}


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_cancel_from_a_thread_as_the_runs_event_loop_ends_is_not_lost(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cancel() took the run, then handed the cancellation to its event loop,
    # which had ended meanwhile (the run suspended, the loop returned): the
    # cancellation was dropped, and the session stayed waiting for good.
    session = new_session(doc([wait_node("w", "go", "got", next="end"), terminal("end", "got")]))
    handing = threading.Event()
    loop_ended = threading.Event()
    hand = stageflow._session.call_soon_from_thread

    def late(*args: Any) -> bool:
        handing.set()
        loop_ended.wait()
        return hand(*args)

    monkeypatch.setattr(stageflow._session, "call_soon_from_thread", late)
    canceller = threading.Thread(target=session.cancel, args=("the user left",))

    def on_suspended(event: stageflow.Event) -> None:
        if event.type == "session_suspended":
            canceller.start()
            handing.wait()  # it took the run, whose loop is still running

    session.subscribe(on_suspended)
    result = anyio.run(lambda: session.run(suspend=True), backend=backend)
    loop_ended.set()
    canceller.join()
    assert result.status is stageflow.SessionStatus.WAITING
    assert session.status is stageflow.SessionStatus.CANCELLED
    assert session.history[-1].payload["reason"] == "the user left"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_send_from_a_thread_as_the_runs_event_loop_ends_is_a_typed_error(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send took the run's loop, which ended (the run suspended) before
    # the input was handed over: anyio's RunFinishedError reached the caller.
    session = new_session(doc([wait_node("w", "go", "got", next="end"), terminal("end", "got")]))
    handing = threading.Event()
    loop_ended = threading.Event()
    hand = anyio.from_thread.run_sync
    refused: list[BaseException] = []

    def late(*args: Any, **kwargs: Any) -> Any:
        handing.set()
        loop_ended.wait()
        return hand(*args, **kwargs)

    def send() -> None:
        try:
            session.send_input_from_thread("go", "late")
        except Exception as exc:
            refused.append(exc)

    monkeypatch.setattr(anyio.from_thread, "run_sync", late)
    sender = threading.Thread(target=send)

    def on_suspended(event: stageflow.Event) -> None:
        if event.type == "session_suspended":
            sender.start()
            handing.wait()  # it took the run, whose loop is still running

    session.subscribe(on_suspended)
    anyio.run(lambda: session.run(suspend=True), backend=backend)
    loop_ended.set()
    sender.join()
    assert [type(exc) for exc in refused] == [stageflow.SessionStateError]
    assert "'go' was delivered (it was not)" in str(refused[0])
    assert session.status is stageflow.SessionStatus.WAITING


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_second_run_from_another_thread_as_the_first_starts_is_refused(backend: str) -> None:
    # The first run had taken the session but not yet marked it running (it
    # was reading the clock): a run() on another thread's loop passed the
    # check, and both ran the one session.
    starting = threading.Event()
    checked = threading.Event()

    def clock() -> datetime.datetime:
        if not starting.is_set():  # the first run, as it starts
            starting.set()
            checked.wait()
        return datetime.datetime.now(datetime.UTC)

    session = new_session(doc([terminal("end")]), clock=clock)
    refused: list[Exception] = []

    def second() -> None:
        starting.wait()
        try:
            anyio.run(session.run, backend=backend)
        except stageflow.SessionStateError as exc:
            refused.append(exc)
        finally:
            checked.set()

    thread = threading.Thread(target=second)
    thread.start()
    result = anyio.run(session.run, backend=backend)
    thread.join()
    assert [str(exc) for exc in refused] == [
        f"session {session.session_id!r} is running; a session runs once, create a new "
        "Session to run the pipeline again"
    ]
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert [e.type for e in result.history].count("session_started") == 1


def test_send_from_thread_needs_a_running_session() -> None:
    session = new_session(doc([terminal("end")]))
    with pytest.raises(stageflow.SessionStateError):
        session.send_input_from_thread("go", 1)


async def test_non_json_and_oversized_inputs_are_rejected() -> None:
    session = new_session(doc([terminal("end")], limits={"max_input_bytes": 10}))
    with pytest.raises(stageflow.InputRejectedError) as info:
        session.send_input("go", {"x": object()})
    assert info.value.reason == "not_json"
    with pytest.raises(stageflow.InputRejectedError) as info:
        session.send_input("go", "x" * 20)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("size", [1, 300_000])
async def test_an_input_with_a_lone_surrogate_is_rejected_whatever_its_size(size: int) -> None:
    # A short text once skipped its UTF-8 encoding and was delivered; the
    # snapshot written as UTF-8 text then failed (a long one raised an
    # untyped UnicodeEncodeError).
    session = new_session(doc([terminal("end")]))
    with pytest.raises(stageflow.InputRejectedError, match="lone surrogate") as info:
        session.send_input("go", {"text": "\ud800" * size})
    assert info.value.reason == "not_json"
    assert [e.payload["reason"] for e in session.history if e.type == "input_rejected"] == [
        "not_json"
    ]
    # Nothing of it was kept: the snapshot is still UTF-8 text.
    assert "\\ud800" not in json.dumps(session.to_dict())
    json.dumps(session.to_dict(), ensure_ascii=False).encode()


SCHEMA = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


@pytest.mark.parametrize("mode", ["off", "warn", "strict"])
async def test_input_validation_modes(mode: str) -> None:
    registry = chat_registry(allowed_inputs=[stageflow.InputSpec("answer", SCHEMA)])
    document = doc(
        [stage("ask", "Ask", outputs={"answer": "answer"}, next="end"), terminal("end", "answer")]
    )
    session = new_session(document, registry, validate_events=mode)
    async with anyio.create_task_group() as tg:

        async def answer() -> None:
            await wait_until_waiting(session, "answer")
            if mode == "strict":
                with pytest.raises(stageflow.InputRejectedError) as info:
                    session.send_input("answer", {"text": 42})
                assert info.value.reason == "invalid"
                assert "$.text" in str(info.value)
                session.send_input("answer", {"text": "fine"})
            else:
                session.send_input("answer", {"text": 42})

        tg.start_soon(answer)
        result = await session.run()
    failures = [e for e in result.history if e.type == "event_validation_failed"]
    if mode == "off":
        assert result.artifacts == {"answer": {"text": 42}}
        assert failures == []
    elif mode == "warn":
        assert result.artifacts == {"answer": {"text": 42}}
        assert failures[0].node_id == "ask"
        assert "expected string, got integer 42" in failures[0].payload["errors"][0]
    else:
        assert result.artifacts == {"answer": {"text": "fine"}}
        assert [e.payload["reason"] for e in result.history if e.type == "input_rejected"] == [
            "invalid"
        ]


@pytest.mark.parametrize("mode", ["off", "warn", "strict"])
async def test_event_validation_modes(mode: str) -> None:
    registry = chat_registry(allowed_events=[stageflow.EventSpec("said", SCHEMA)])
    node = stage("a", "Announce", config={"event": "said", "payload": {"text": 1}}, next="end")
    result = await new_session(doc([node, terminal("end")]), registry, validate_events=mode).run()
    if mode == "strict":
        assert isinstance(result.error, stageflow.StageContractError)
        assert "said" not in types(result)
    else:
        assert result.status is S.COMPLETED
        assert "said" in types(result)
        assert ("event_validation_failed" in types(result)) is (mode == "warn")


async def test_undeclared_event_and_input_types_are_errors() -> None:
    registry = chat_registry(
        allowed_events=[stageflow.EventSpec("said")], allowed_inputs=[stageflow.InputSpec("other")]
    )
    emit = stage("a", "Announce", config={"event": "shouted"}, next="end")
    result = await new_session(doc([emit, terminal("end")]), registry).run()
    assert isinstance(result.error, stageflow.StageContractError)
    assert "does not declare" in str(result.error)
    wait = stage("q", "Ask", outputs={"answer": "a"}, next="end")
    result = await new_session(doc([wait, terminal("end")]), registry).run()
    assert isinstance(result.error, stageflow.StageContractError)
    assert "'answer'" in str(result.error)


async def test_strict_mode_rejects_inputs_no_stage_declares() -> None:
    registry = chat_registry(allowed_inputs=[stageflow.InputSpec("answer")])
    document = doc([stage("ask", "Ask", outputs={"answer": "answer"}, next="end"), terminal("end")])
    session = new_session(document, registry, validate_events="strict")
    with pytest.raises(stageflow.InputRejectedError) as info:
        session.send_input("typo", 1)
    assert info.value.reason == "unknown_type"


async def test_events_iterator_starts_at_subscription_and_ends_with_the_session() -> None:
    session = new_session(doc([stage("a", "Set", next="end"), terminal("end")]))
    seen: list[str] = []
    stream = session.events()
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async for event in stream:
                seen.append(event.type)

        tg.start_soon(consume)
        result = await session.run()
    assert seen == types(result)


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["send", "wait"]), st.integers(min_value=0, max_value=3)),
        min_size=1,
        max_size=30,
    )
)
def test_no_input_is_lost_or_delivered_twice(script: list[tuple[str, int]]) -> None:
    """Interleave sends and waits at random virtual times: every input arrives once, in order."""
    sends = sum(1 for op, _ in script if op == "send")
    registry = fake_registry()
    received: list[int] = []

    @registry.register("Consume")
    async def consume(ctx: stageflow.StageContext) -> None:
        for op, pause in script:
            if op == "wait":
                await anyio.sleep(pause)
        for _ in range(sends):
            received.append(await ctx.wait_input("n"))

    document = doc(
        [stage("c", "Consume", next="end"), terminal("end")], limits={"max_input_backlog": 100}
    )

    async def main() -> None:
        session = new_session(document, registry)
        async with anyio.create_task_group() as tg:

            async def producer() -> None:
                n = 0
                for op, pause in script:
                    await anyio.sleep(pause)
                    if op == "send":
                        session.send_input("n", n)
                        n += 1

            tg.start_soon(producer)
            result = await session.run()
        assert result.status is S.COMPLETED

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert received == list(range(sends))


async def test_accepted_inputs_are_the_declared_types_or_none_when_any_may_be_awaited() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Free")
    async def free(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": await ctx.wait_input("anything")}

    def waits(*types: str) -> list[dict[str, Any]]:
        nodes = []
        for i, type in enumerate(types):
            node = stage(f"w{i}", "WaitStage", next=f"w{i + 1}" if i + 1 < len(types) else "end")
            node["config"] = {"input": type}
            nodes.append(node)
        return nodes

    declared = load(doc([*waits("b", "a", "b"), terminal()]), registry)
    assert stageflow.Session(declared, registry=registry).accepted_inputs() == ("a", "b")
    [wait] = waits("a")
    wait["next"] = "f"
    open_ = load(doc([wait, stage("f", "Free", next="end"), terminal()]), registry)
    assert stageflow.Session(open_, registry=registry).accepted_inputs() is None


@pytest.mark.timeout(20)  # Python's re took 40 s here, and hours for 40 a
async def test_a_payload_cannot_make_a_schema_pattern_backtrack_for_hours() -> None:
    """``pattern``, ``patternProperties`` and ``additionalProperties`` match in linear time.

    Python's ``re`` took hours for ``^(a+)+$`` against 40 ``a`` and a ``!``
    (one input sent to a waiting chat blocked the event loop, every session
    with it); each payload below is refused at once now, and a good one
    still goes through.
    """
    evil = "^(a+)+$"
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": evil}},
        "patternProperties": {evil: {"type": "integer"}},
        "additionalProperties": False,
    }
    session = new_session(
        doc(
            [wait_node("w", "go", "got", next="end", input_schema=schema), terminal("end", "got")],
            validate_events="strict",
        )
    )
    attack = "a" * 28 + "!"
    for payload in ({"name": attack}, {attack: 1}, {"aaa": "not an integer"}):
        with pytest.raises(stageflow.InputRejectedError) as info:
            session.send_input("go", payload)
        assert info.value.reason == "invalid", payload
    session.send_input("go", {"name": "aaaa", "aa": 2})
    result = await session.run()
    assert result.artifacts == {"got": {"name": "aaaa", "aa": 2}}


@pytest.mark.timeout(20)  # Python's re took 40 s here, and hours for 40 a
async def test_stage_arguments_cannot_make_their_schema_pattern_backtrack_for_hours() -> None:
    """A stage's arguments schema, checked on values that came from a payload.

    The arguments' fast check said no, then Python's ``re`` walked them again
    for the errors: hours for ``^(a+)+$``. The check ends at once now.
    """
    registry = stageflow.StageRegistry()

    @registry.register(
        "Named",
        spec=stageflow.StageSpec(
            arguments={"type": "object", "properties": {"name": {"pattern": "^(a+)+$"}}}
        ),
    )
    async def named(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {}

    nodes = [
        stage("n", "Named", arguments={"name": "name"}, next="end"),
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes, validate_events="strict"), registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload={"name": "a" * 28 + "!"})
    result = await session.run()
    assert isinstance(result.error, stageflow.StageSchemaError)
