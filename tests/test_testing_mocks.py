"""The pipeline tester: mocks, virtual time and scripted inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from tester_support import (
    CASES,
    LONG,
    SHORT,
    approval_case,
    fetch_case,
    reference_registry,
    run_one,
)

import stageflow
from stageflow.testing import (
    Case,
    CaseValidationError,
    InputRecord,
    MockError,
    ScriptedInput,
    StageMock,
    load_cases,
    mock_registry,
    run_case,
    run_case_files,
)
from stageflow.testing._expect import Observed, check
from stageflow.testing._load import cases_from_document

# ------------------------------------------------------------------ mocks


def test_mocks_keep_the_real_spec_and_leave_the_real_registry_alone() -> None:
    real = reference_registry()
    mocked = mock_registry(real, {"InitStage": StageMock(outputs={"score": 1})})
    assert mocked is not real
    assert mocked.names() == real.names()
    assert mocked.get("InitStage").spec is real.get("InitStage").spec
    assert mocked.get("InitStage").target is not real.get("InitStage").target
    assert "mock of" in mocked.get("InitStage").source
    assert mocked.get("WorkerAStage").target is real.get("WorkerAStage").target
    assert real.get("InitStage").target.__name__ == "InitStage"


@pytest.mark.parametrize(
    ("registry", "mocks", "message"),
    [
        (
            {},
            {},
            "mock_registry() was given a dict for the registry; pass the stageflow.StageRegistry "
            "that holds the real stages",
        ),
        (
            None,
            [("InitStage", StageMock())],
            "mock_registry() was given a list for the mocks; pass a dict of stage name -> "
            "StageMock, such as {'Fetch': StageMock(outputs={...})}",
        ),
        (
            None,
            {"InitStage": {"outputs": {"score": 1}}},
            "mock_registry() was given a dict as the mock of 'InitStage'; pass a StageMock, "
            "such as {'Fetch': StageMock(outputs={...})} (a case file's dicts are read by "
            "load_cases)",
        ),
    ],
)
def test_mock_registry_says_what_it_takes(registry: object, mocks: object, message: str) -> None:
    # It raised AttributeError: 'dict' object has no attribute 'outputs'.
    real = reference_registry() if registry is None else registry
    with pytest.raises(TypeError) as caught:
        mock_registry(real, mocks)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_a_mock_of_an_unknown_stage_is_rejected(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "mocks": {"InitStag": {}}}])
    with pytest.raises(CaseValidationError) as caught:
        run_one(path)
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[0].mocks.InitStag"
    assert (
        "'InitStag', which is not registered (known: InitStage, SleepStage, WaitStage, Worker"
        in problem.message
    )


def test_a_mock_of_a_stage_no_node_uses_is_rejected() -> None:
    # Fetch is registered but approval.json does not use it: the mock replaced nothing.
    inputs = [{"type": "approval", "payload": {"ok": True}}]
    case = approval_case(inputs=inputs, mocks={"Fetch": {"outputs": {"body": "x"}}})
    with pytest.raises(CaseValidationError) as caught:
        run_case(case)
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[0].mocks.Fetch"
    assert problem.message == (
        "mock for stage 'Fetch', which no node of pipeline 'approval_loop' uses, so it "
        "replaces nothing; mock one of the stages it uses (AskApproval) or remove it"
    )


def test_core_stages_cannot_be_mocked(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "mocks": {"SleepStage": {}}}])
    with pytest.raises(CaseValidationError, match="'SleepStage' is a core stage"):
        run_one(path)


def test_mock_outputs_are_checked_against_the_stage_spec(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "mocks": {"InitStage": {"outputs": {"score": "high"}}}}])
    with pytest.raises(CaseValidationError) as caught:
        run_one(path)
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[0].mocks.InitStage.outputs"
    assert 'expected integer, got string "high"' in problem.message


def test_a_mock_without_an_output_a_node_writes_is_a_located_error(
    write_cases: Callable[..., Path],
) -> None:
    # The run failed with StageOutputError, which says to change the stage or the pipeline.
    mocks = {"InitStage": {"outputs": {"score": 1}}}
    path = write_cases([{"name": "n", "payload": SHORT, "mocks": mocks}])
    with pytest.raises(CaseValidationError) as caught:
        run_one(path)
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[0].mocks.InitStage.outputs"
    assert problem.message == (
        "mock for stage 'InitStage' returns no 'need_parallel', which node 'start' writes to "
        "'need_parallel', so the node fails whenever the mock succeeds; add 'need_parallel' "
        "to the mock's outputs"
    )
    # A mock that fails its first attempt may never return: its outputs are not required.
    mocks["InitStage"]["errors"] = [{"attempt": 1, "type": "ValueError"}]
    assert run_one(write_cases([{"name": "n", "payload": SHORT, "mocks": mocks}])).failures


def test_an_error_on_attempt_1_only(write_cases: Callable[..., Path]) -> None:
    # Without retries, an error on attempt 2 never fires: the run completes.
    mocks = {
        "WorkerBStage": {"outputs": {"b_result": "x"}, "errors": [{"attempt": 2, "type": "E"}]}
    }
    path = write_cases([{"name": "n", "payload": LONG, "mocks": mocks}])
    assert run_one(path).passed
    mocks = {"WorkerBStage": {"errors": [{"attempt": 1, "type": "ValueError", "message": "m"}]}}
    path = write_cases([{"name": "n", "payload": LONG, "mocks": mocks}])
    result = run_one(path)
    assert isinstance(result.error, stageflow.StageError)
    assert (result.error.node_id, result.error.attempt) == ("branch_b", 1)
    assert type(result.error.__cause__) is ValueError


def test_mock_error_types() -> None:
    from stageflow.testing._mocks import exception_class

    assert exception_class("TimeoutError") is TimeoutError
    assert exception_class("json.JSONDecodeError") is json.JSONDecodeError
    synthetic = exception_class("RateLimited")
    assert synthetic.__name__ == "RateLimited"
    assert issubclass(synthetic, Exception)
    assert exception_class("RateLimited") is synthetic
    with pytest.raises(CaseValidationError, match="cannot be imported"):
        exception_class("no_such_module.Error")
    with pytest.raises(CaseValidationError, match="is not an exception class"):
        exception_class("json.dumps")


@pytest.mark.parametrize(
    "name", ["KeyboardInterrupt", "SystemExit", "builtins.GeneratorExit", "trio.Cancelled"]
)
def test_a_mock_error_that_is_no_exception_is_rejected(name: str) -> None:
    # A plain built-in name became an Exception subclass of that name before,
    # so a case "raising KeyboardInterrupt" tested an ordinary stage failure.
    mocks = {"InitStage": StageMock(errors=(MockError(name),))}
    with pytest.raises(CaseValidationError) as caught:
        mock_registry(reference_registry(), mocks)
    (problem,) = caught.value.problems
    assert problem.location == "$.mocks.InitStage.errors[0].type"
    assert problem.message.startswith(
        f"mock error type {name!r} is a BaseException but not an Exception, which would "
        "stop the whole run rather than fail the stage;"
    )


def test_a_mock_error_that_needs_more_than_a_message_is_rejected() -> None:
    mocks = {"InitStage": StageMock(errors=(MockError("json.JSONDecodeError"),))}
    with pytest.raises(CaseValidationError, match="cannot be raised with just a message"):
        mock_registry(reference_registry(), mocks)


def test_a_synthetic_error_type_shows_in_the_session_error(
    write_cases: Callable[..., Path],
) -> None:
    mocks = {"InitStage": {"errors": [{"type": "QuotaExceeded", "message": "no quota"}]}}
    expect = {"status": "failed", "error": {"cause_type": "QuotaExceeded"}}
    path = write_cases([{"name": "n", "payload": SHORT, "mocks": mocks, "expect": expect}])
    result = run_one(path)
    assert result.passed, result.render()
    assert "QuotaExceeded: no quota" in str(result.error)


def test_a_mock_that_fails_on_attempt_2() -> None:
    # Two attempts, no error edges: attempt 1 times out, attempt 2 fails for good.
    changes = {"retry": {"attempts": 2, "delay": 30}, "on_error": None, "fallback": None}
    errors = [
        {"attempt": 1, "type": "TimeoutError"},
        {"attempt": 2, "type": "ConnectionResetError", "message": "reset"},
    ]
    expect = {
        "status": "failed",
        "error": {"type": "StageError", "attempt": 2, "cause_type": "ConnectionResetError"},
        "events": [{"type": "node_retrying", "payload": {"attempt": 1}, "count": 1}],
    }
    result = run_case(fetch_case(changes, mocks={"Fetch": {"errors": errors}}, expect=expect))
    assert result.passed, result.render()
    assert result.elapsed == pytest.approx(30)
    assert isinstance(result.error, stageflow.StageError)
    assert str(result.error.__cause__) == "reset"


def test_an_error_only_on_attempt_2_never_fires_when_attempt_1_succeeds() -> None:
    errors = [{"attempt": 2, "type": "ConnectionResetError"}]
    mocks = {"Fetch": {"outputs": {"body": "first"}, "errors": errors}}
    expect = {"artifacts": {"body": "first"}, "events": [{"type": "node_retrying", "count": 0}]}
    assert run_case(fetch_case(mocks=mocks, expect=expect)).passed


def test_the_committed_retry_and_input_cases_pass() -> None:
    report = run_case_files([CASES / "fetch.stageflow.yaml", CASES / "approval.stageflow.yaml"])
    assert report.ok, report.render()
    assert (report.passed, report.failed) == (8, 0)


# ----------------------------------------------------------- virtual time


def test_an_hour_long_mock_finishes_at_once_in_virtual_time(
    write_cases: Callable[..., Path],
) -> None:
    mocks = {"WorkerAStage": {"delay": 3600, "outputs": {"a_result": 1}}}
    path = write_cases([{"name": "n", "payload": LONG, "mocks": mocks}])
    result = run_one(path)
    assert result.passed, result.render()
    assert result.elapsed == pytest.approx(3600)
    assert result.artifacts["a_result"] == 1


def test_the_time_limit_cancels_a_slow_run(write_cases: Callable[..., Path]) -> None:
    mocks = {"InitStage": {"delay": 7200, "outputs": {"score": 1, "need_parallel": False}}}
    cases = [
        {"name": "unexpected", "payload": SHORT, "mocks": mocks, "limits": {"max_time": 60}},
        {
            "name": "expected",
            "payload": SHORT,
            "mocks": mocks,
            "limits": {"max_time": 60},
            "expect": {"limit_exceeded": "max_time", "status": "cancelled"},
        },
    ]
    unexpected, expected = (run_case(c) for c in load_cases(write_cases(cases)))
    assert unexpected.status is stageflow.SessionStatus.CANCELLED
    assert unexpected.elapsed == pytest.approx(60)
    assert [f.field for f in unexpected.failures] == ["status", "limit"]
    assert unexpected.failures[1].message == (
        "the run was ended by the limit max_time=60 virtual seconds"
    )
    assert expected.passed, expected.render()


def test_a_run_that_ends_at_the_time_limit_is_within_it(
    write_cases: Callable[..., Path],
) -> None:
    # At max_time the clock woke the tester's timer or the mock first, at random:
    # the case failed about half the time.
    mocks = {"InitStage": {"delay": 60, "outputs": {"score": 1, "need_parallel": False}}}
    case = {"name": "n", "payload": SHORT, "mocks": mocks, "limits": {"max_time": 60}}
    (loaded,) = load_cases(write_cases([case]))
    for _ in range(20):
        result = run_case(loaded)
        assert result.passed, result.render()
        assert result.elapsed == pytest.approx(60)


def test_an_input_at_the_time_a_wait_times_out_comes_after_the_timeout() -> None:
    # Which of the input and the timeout came first was random: the run took
    # the input or the fallback about half the time each.
    pipeline = {
        "api_version": "1.0",
        "entry": "wait",
        "nodes": [
            {
                "id": "wait",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "approval", "timeout": 10},
                "next": "done",
                "fallback": "late",
            },
            {"id": "done", "type": "terminal", "result": {"on_time": True}},
            {"id": "late", "type": "terminal", "result": {"on_time": False}},
        ],
    }
    inputs = (ScriptedInput("approval", {"ok": True}, at=10),)
    case = Case(name="n", pipeline=pipeline, inputs=inputs)
    for _ in range(20):
        result = run_case(case)
        assert result.result == {"on_time": False}
        (failure,) = result.failures
        assert failure.details.splitlines()[0] == (
            "input 'approval' (at t=10s): the run ended at t=10s, the time it is sent at"
        )


def test_the_event_limit_cancels_a_run(write_cases: Callable[..., Path]) -> None:
    # The cancellation lands where the run next waits: in the mock's delay.
    mocks = {"WorkerAStage": {"delay": 1, "outputs": {"a_result": 1}}}
    case = {"name": "n", "payload": LONG, "mocks": mocks, "limits": {"max_events": 2}}
    result = run_one(write_cases([case]))
    assert result.limit_exceeded == "max_events"
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert "finish" not in result.visited
    assert [f.field for f in result.failures] == ["status", "limit"]
    assert result.failures[1].message == "the run was ended by the limit max_events=2"
    case["expect"] = {"limit_exceeded": "max_events", "status": "cancelled"}
    assert run_one(write_cases([case])).passed


def test_an_exceeded_event_limit_is_reported_even_if_the_run_ends_first(
    write_cases: Callable[..., Path],
) -> None:
    case = {"name": "n", "payload": SHORT, "limits": {"max_events": 3}}
    result = run_one(write_cases([case]))
    assert result.limit_exceeded == "max_events"
    assert [f.field for f in result.failures][-1] == "limit"


@pytest.mark.parametrize("limit", ["max_run_steps", "max_run_events", "max_run_seconds"])
def test_a_per_run_limit_of_the_pipeline_can_be_expected(
    write_cases: Callable[..., Path], limit: str
) -> None:
    """The tester reports these limits; a case must be able to expect them."""
    mocks = {"WorkerAStage": {"delay": 60, "outputs": {"a_result": 1}}}
    path = write_cases(
        [{"name": "n", "payload": LONG, "mocks": mocks, "expect": {"limit_exceeded": limit}}]
    )
    pipeline = path.parent / "pipeline.json"
    document = json.loads(pipeline.read_text())
    document["limits"] = {limit: 2}
    pipeline.write_text(json.dumps(document))
    result = run_one(path)
    assert result.limit_exceeded == limit
    assert result.passed, result.render()


def test_an_expected_limit_that_is_not_hit_fails(write_cases: Callable[..., Path]) -> None:
    cases = [{"name": "n", "payload": SHORT, "expect": {"limit_exceeded": "max_steps"}}]
    (failure,) = run_one(write_cases(cases)).failures
    assert failure.field == "limit_exceeded"
    assert failure.message.startswith(
        "expected the run to be ended by max_steps, but it ended with status 'completed'"
    )


# ------------------------------------------------------------------ inputs


def test_scripted_inputs_drive_the_session() -> None:
    results = [run_case(c) for c in load_cases(CASES / "approval.stageflow.yaml")]
    assert [r.render() for r in results if not r.passed] == []
    by_name = {r.case.name: r for r in results}
    timed = by_name["an input at a virtual time"]
    assert timed.elapsed == pytest.approx(90)
    assert timed.inputs[0].sent_at == pytest.approx(90)
    assert timed.inputs[0].delivered == 1
    early = by_name["an input sent before anyone waits is kept for the wait"]
    assert early.inputs[0].queued


def test_an_input_never_sent_fails_the_case() -> None:
    document = {
        "pipeline": "approval.json",
        "stages": "stages.py",
        "cases": [
            {
                "name": "n",
                "inputs": [
                    {"type": "approval", "payload": {"ok": True}},
                    {"type": "approval", "payload": {"ok": True}},
                    {"type": "approval", "payload": {"ok": True}, "at": 1000},
                ],
            }
        ],
    }
    (case,) = cases_from_document(document, file=CASES / "virtual.json")
    result = run_case(case)
    (failure,) = result.failures
    assert failure.field == "inputs"
    assert failure.message == "2 scripted input(s) never sent"
    assert failure.details.splitlines()[:2] == [
        "input 'approval' (when the session waits for it): the session never waited for "
        "'approval' while this input was next",
        "input 'approval' (at t=1000s): the run ended at t=10s, before it was due",
    ]


def test_inputs_left_unsent_by_a_broadcast_say_so() -> None:
    # Three map items wait at once and the first input reaches all three; the
    # others were "never waited for", though the session waited three times.
    pipeline = {
        "api_version": "1.0",
        "entry": "each",
        "nodes": [
            {
                "id": "each",
                "type": "map",
                "items": "xs",
                "body": "ask",
                "concurrency": 3,
                "next": "done",
            },
            {"id": "ask", "type": "stage", "stage": "AskApproval"},
            {"id": "done", "type": "terminal"},
        ],
    }
    inputs = [{"type": "approval", "payload": {"ok": ok}} for ok in (True, False)]
    result = run_case(approval_case(pipeline=pipeline, payload={"xs": [1, 2, 3]}, inputs=inputs))
    assert [r.delivered for r in result.inputs] == [3, 0]
    (failure,) = result.failures
    assert failure.details.splitlines()[0] == (
        "input 'approval' (when the session waits for it): the session never waited for "
        "'approval' while this input was next (the one sent at t=0s reached 3 waiting stages "
        "at once: an input goes to every stage waiting for its type)"
    )


def test_an_input_sent_but_never_received_fails_the_case() -> None:
    # Sent at its time and kept, then discarded at the end: the case passed before.
    inputs = [
        {"type": "aproval", "payload": {"ok": True}, "at": 5},
        {"type": "approval", "payload": {"ok": True}, "at": 5},
        {"type": "approval", "payload": {"ok": False}, "at": 6},
    ]
    result = run_case(approval_case(inputs=inputs))
    (failure,) = result.failures
    assert (failure.field, failure.message) == ("inputs", "2 sent but never received")
    assert failure.details.splitlines()[:2] == [
        "input 'aproval' (at t=5s): sent at t=5s and kept for a wait, but no wait took it: "
        "the session discarded it when it ended",
        "input 'approval' (at t=6s): sent at t=6s and kept for a wait, but no wait took it: "
        "the session discarded it when it ended",
    ]
    expect = {"events": [{"type": "inputs_discarded", "payload": {"count": 2}}]}
    assert run_case(approval_case(inputs=inputs, expect=expect)).passed


def test_an_input_given_to_a_wait_torn_down_fails_the_case() -> None:
    # Sent as a wait was seen, at the moment a parallel "any" race was decided,
    # it reached the losing branch's wait, which was torn down before its stage
    # took it: the session discarded it, and the case passed (only inputs kept
    # in the backlog counted). Which task runs first at one virtual time varies,
    # so the run is made up.
    (given, twice, kept) = inputs = (
        ScriptedInput("approval", {"ok": True}, at=5),
        ScriptedInput("approval", {"ok": False}, at=5),
        ScriptedInput("approval", {"ok": True, "again": True}, at=7),
    )
    case = approval_case(inputs=[attrs.asdict(i) for i in inputs])
    observed = Observed(
        status=stageflow.SessionStatus.COMPLETED,
        result=None,
        artifacts={},
        error=None,
        history=(),
        elapsed=10.0,
        limit_exceeded=None,
        limit_detail="",
        inputs=(
            InputRecord(given, sent_at=5.0, delivered=1),
            InputRecord(twice, sent_at=5.0, delivered=2),  # one of its two waits took it
            InputRecord(kept, sent_at=7.0, delivered=1),
        ),
        discarded=(("approval", {"ok": True}), ("approval", {"ok": False})),
    )
    (failures, _) = check(case, observed)
    (failure,) = failures
    assert (failure.field, failure.message) == ("inputs", "1 sent but never received")
    assert failure.details.splitlines()[0] == (
        "input 'approval' (at t=5s): sent at t=5s to a waiting stage, whose branch ended "
        "before the stage took it: the session discarded it when it ended"
    )


def test_a_session_waiting_forever_ends_at_the_time_limit() -> None:
    document = {
        "pipeline": "approval.json",
        "stages": "stages.py",
        "cases": [{"name": "n", "limits": {"max_time": 600}}],
    }
    (case,) = cases_from_document(document, file=CASES / "virtual.json")
    result = run_case(case)
    assert result.elapsed == pytest.approx(600)
    assert result.limit_exceeded == "max_time"
    limit = next(f for f in result.failures if f.field == "limit")
    assert limit.message == (
        "the run was ended by the limit max_time=600 virtual seconds "
        "(the session was waiting for approval)"
    )


def test_a_rejected_input_is_recorded_with_its_reason() -> None:
    pipeline = json.loads((CASES / "approval.json").read_text())
    pipeline["limits"] = {"max_input_backlog": 1}
    inputs = [
        {"type": "approval", "payload": {"ok": True}, "at": 1},
        {"type": "approval", "payload": {"ok": True}, "at": 2},
    ]
    expect = {"events": [{"type": "input_rejected", "payload": {"input_type": "approval"}}]}
    result = run_case(approval_case(pipeline=pipeline, inputs=inputs, expect=expect))
    assert result.passed, result.render()
    first, second = result.inputs
    assert (first.queued, first.error) == (True, None)
    assert second.sent_at == pytest.approx(2)
    assert second.error is not None
    assert "max_input_backlog" in second.error


def test_a_rejected_input_fails_a_case_that_does_not_expect_it() -> None:
    # The case passed: a scripted input the session refused was only recorded.
    pipeline = json.loads((CASES / "approval.json").read_text())
    pipeline["limits"] = {"max_input_backlog": 1}
    inputs = [
        {"type": "approval", "payload": {"ok": True}, "at": 1},
        {"type": "approval", "payload": {"ok": False}, "at": 2},
    ]
    result = run_case(approval_case(pipeline=pipeline, inputs=inputs))
    (failure,) = result.failures
    assert (failure.field, failure.message) == ("inputs", "1 rejected by the session")
    first, last = failure.details.splitlines()
    assert first.startswith(
        "input 'approval' (at t=2s): sent at t=2s; the session said: input 'approval' was "
        "rejected: 1 inputs of this type already wait for a stage (limits.max_input_backlog)"
    )
    assert last.endswith("a case that tests rejections expects the input_rejected event")


def test_scripted_input_descriptions() -> None:
    case = approval_case(inputs=[{"type": "a"}, {"type": "b", "payload": 1, "at": 2.5}])
    assert [i.describe() for i in case.inputs] == [
        "input 'a' (when the session waits for it)",
        "input 'b' (at t=2.5s)",
    ]
