"""The pipeline tester (stageflow.testing): case files, runs, diffs, coverage, pytest plugin."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import trio
import yaml
from tester_support import (
    CASES,
    LONG,
    REFERENCE,
    ROOT,
    SCHEMA_PATH,
    SHORT,
    Doc,
    approval_case,
    run_one,
)

import stageflow
from stageflow.testing import (
    Case,
    CaseLimits,
    CaseOutcome,
    CaseValidationError,
    Edge,
    EdgeKind,
    EventExpectation,
    Expectations,
    MockError,
    ScriptedInput,
    StageMock,
    _diff,
    coverage_of,
    load_cases,
    run_case,
    run_case_files,
)

# ------------------------------------------------------------------ schema


@pytest.fixture(scope="module")
def schema() -> Doc:
    loaded: Doc = json.loads(SCHEMA_PATH.read_text())
    return loaded


def test_schema_is_draft_2020_12_with_its_version_in_the_id(schema: Doc) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "https://stageflow.dev/schemas/test-case/1.0/test-case.schema.json"


def test_schema_ships_inside_the_package() -> None:
    from stageflow._pipeline import load_schema

    assert load_schema("test-case")["$id"].endswith("/1.0/test-case.schema.json")


def test_every_definition_and_property_has_a_description(schema: Doc) -> None:
    missing = []
    todo: list[tuple[str, Any]] = [("#", schema)]
    while todo:
        where, sub = todo.pop()
        if not (isinstance(sub.get("description"), str) and sub["description"].strip()):
            missing.append(where)
        todo.extend((f"{where}/$defs/{k}", v) for k, v in sub.get("$defs", {}).items())
        todo.extend((f"{where}/properties/{k}", v) for k, v in sub.get("properties", {}).items())
    assert missing == []


# Case files are *.stageflow.* (collected by the plugin) or *.cases.* (run by this module).
CASE_FILES = sorted(
    p.name for p in CASES.iterdir() if ".stageflow." in p.name or ".cases." in p.name
)


@pytest.mark.parametrize("path", CASE_FILES)
def test_every_committed_case_file_matches_the_schema(schema: Doc, path: str) -> None:
    text = (CASES / path).read_text()
    document = yaml.safe_load(text) if path.endswith(".yaml") else json.loads(text)
    jsonschema.Draft202012Validator(schema).validate(document)


# ----------------------------------------------------------------- loading


def test_json_and_yaml_case_files_load_the_same_cases(write_cases: Callable[..., Path]) -> None:
    cases = [{"name": "long", "payload": LONG, "expect": {"artifacts_subset": {"score": 5}}}]
    from_json = load_cases(write_cases(cases))
    from_yaml = load_cases(write_cases(cases, name="ref.stageflow.yaml"))
    assert [attrs_without_file(c) for c in from_json] == [attrs_without_file(c) for c in from_yaml]


def attrs_without_file(case: Case) -> Case:
    return attrs.evolve(case, file=None)


def test_pipeline_path_is_relative_to_the_case_file(write_cases: Callable[..., Path]) -> None:
    (case,) = load_cases(write_cases([{"name": "c"}]))
    assert case.pipeline == (write_cases([{"name": "c"}]).parent / "pipeline.json").resolve()


def test_file_mocks_and_limits_are_defaults_that_cases_override(
    write_cases: Callable[..., Path],
) -> None:
    path = write_cases(
        [
            {"name": "inherits"},
            {
                "name": "overrides",
                "mocks": {"WorkerAStage": {"outputs": {"a_result": 2}}},
                "limits": {"max_time": 5},
            },
        ],
        mocks={
            "WorkerAStage": {"outputs": {"a_result": 1}},
            "WorkerBStage": {"outputs": {"b_result": "x"}},
        },
        limits={"max_steps": 50, "max_time": 100},
    )
    inherits, overrides = load_cases(path)
    assert inherits.mocks["WorkerAStage"].outputs == {"a_result": 1}
    assert overrides.mocks["WorkerAStage"].outputs == {"a_result": 2}
    assert overrides.mocks["WorkerBStage"].outputs == {"b_result": "x"}
    assert (inherits.limits.max_steps, inherits.limits.max_time) == (50, 100)
    assert (overrides.limits.max_steps, overrides.limits.max_time) == (50, 5)


def test_a_bad_case_file_lists_every_problem_with_its_location(
    write_cases: Callable[..., Path],
) -> None:
    path = write_cases(
        [
            {"name": "a", "expect": {"status": "done"}},
            {"name": "b", "mocks": {"WorkerAStage": {"output": {}}}},
            {"name": "c", "inputs": [{"type": "approval", "at": -1}]},
        ]
    )
    with pytest.raises(CaseValidationError) as caught:
        load_cases(path)
    problems = {p.location: p.message for p in caught.value.problems}
    assert set(problems) == {
        "$.cases[0].expect.status",
        "$.cases[1].mocks.WorkerAStage",
        "$.cases[2].inputs[0].at",
    }
    assert "case 'a'" in problems["$.cases[0].expect.status"]
    assert '"completed"' in problems["$.cases[0].expect.status"]
    assert "'output'" in problems["$.cases[1].mocks.WorkerAStage"]
    assert str(path) in str(caught.value)


def test_duplicate_case_names_are_rejected(write_cases: Callable[..., Path]) -> None:
    with pytest.raises(CaseValidationError) as caught:
        load_cases(write_cases([{"name": "same"}, {"name": "same"}]))
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[1].name"
    assert "first at $.cases[0]" in problem.message


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.stageflow.json"
    path.write_text('{"pipeline": "p.json",\n "cases": [}')
    with pytest.raises(CaseValidationError, match="line 2 column"):
        load_cases(path)


def test_a_case_file_with_a_key_given_twice_names_the_object(tmp_path: Path) -> None:
    path = tmp_path / "dup.stageflow.json"
    path.write_text('{"pipeline": "p.json", "cases": [{"name": "a", "name": "b"}]}')
    with pytest.raises(CaseValidationError, match=r"the key 'name' appears more than once"):
        load_cases(path)


def test_a_case_file_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.stageflow.yaml"
    path.write_text("- name: a\n")
    with pytest.raises(CaseValidationError, match="a case file is an object, got an array"):
        load_cases(path)


# --------------------------------------------------------- passing cases


def test_the_committed_reference_cases_pass() -> None:
    report = run_case_files([CASES / "reference.stageflow.json", CASES / "loop.stageflow.yaml"])
    assert [(r.case.name, r.outcome) for r in report.results] == [
        ("long text takes the parallel path", CaseOutcome.PASSED),
        ("mocked workers", CaseOutcome.PASSED),
        ("counts to three and fetches", CaseOutcome.PASSED),
        ("a slow fetch costs no real time", CaseOutcome.PASSED),
        ("the step limit stops a long loop", CaseOutcome.PASSED),
        ("a fetch that fails on its first attempt fails the run", CaseOutcome.PASSED),
    ]
    assert report.ok
    assert report.render().endswith("6 passed, 0 failed, 0 errors")


def test_a_passing_result_carries_the_run(write_cases: Callable[..., Path]) -> None:
    result = run_one(write_cases([{"name": "long", "payload": LONG}]))
    assert result.passed
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"status": "ok"}
    assert result.artifacts == {"score": 5, "a_result": 10, "b_result": "high"}
    assert result.visited[:3] == ("start", "decide", "fanout")
    assert result.history[0].type == "session_started"
    assert result.render().startswith("PASSED case 'long'")


def test_a_case_built_in_python_runs_with_a_given_registry() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Hello")
    async def hello(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"greeting": f"hello {ctx.arguments['name']}"}

    pipeline = {
        "api_version": "1.0",
        "entry": "greet",
        "nodes": [
            {
                "id": "greet",
                "type": "stage",
                "stage": "Hello",
                "arguments": {"name": "name"},
                "outputs": {"greeting": "greeting"},
                "next": "end",
            },
            {"id": "end", "type": "terminal", "artifacts": ["greeting"]},
        ],
    }
    case = Case(
        name="greets",
        pipeline=pipeline,
        payload={"name": "Ada"},
        expect=Expectations(artifacts={"greeting": "hello Ada"}, path=("greet", "end")),
    )
    result = run_case(case, registry=registry)
    assert result.passed, result.render()
    wrong = run_case(
        Case(name="wrong", pipeline=pipeline, payload={"name": "Bob"}, expect=case.expect),
        registry=registry,
    )
    assert [f.field for f in wrong.failures] == ["artifacts"]


def test_a_result_expected_in_python_is_checked() -> None:
    # Without has_result=True the result was not checked: any result passed.
    case = Case(
        name="n",
        pipeline=REFERENCE / "pipeline.json",
        stages=(str(REFERENCE / "stages.py"),),
        payload=SHORT,
        expect=Expectations(result={"status": "done"}),
    )
    (failure,) = run_case(case).failures
    assert failure.render() == 'result: expected {"status": "done"}, got {"status": "ok"}'
    none = attrs.evolve(case, expect=Expectations(result=None, has_result=True))
    assert [f.field for f in run_case(none).failures] == ["result"]
    assert not Expectations().has_result


def test_a_pipeline_path_given_as_a_str_is_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was read as the document itself: "a pipeline document is a JSON object, got a string".
    monkeypatch.chdir(REFERENCE)
    case = Case(name="n", pipeline="pipeline.json", payload=SHORT, stages=("stages.py",))
    assert case.pipeline == Path("pipeline.json")
    result = run_case(case)
    assert result.passed, result.render()


@pytest.mark.anyio
async def test_run_case_from_async_code_says_how_to_call_it(
    write_cases: Callable[..., Path], anyio_backend_name: str
) -> None:
    # From a trio test, run_case raised trio's bare "Attempted to call run()
    # from inside a run()", naming neither run_case nor a way out.
    (case,) = load_cases(write_cases([{"name": "long", "payload": LONG}]))
    if anyio_backend_name == "trio":
        with pytest.raises(RuntimeError, match=r"run_case\('long'\) was called from inside a trio"):
            run_case(case)
    import anyio.to_thread

    result = await anyio.to_thread.run_sync(run_case, case)
    assert result.passed, result.render()


def test_one_path_given_where_a_list_is_taken_is_a_type_error(tmp_path: Path) -> None:
    # A str is a sequence: each character was read as a case file or stages module.
    with pytest.raises(TypeError, match=r"run_case_files\(paths=\.\.\.\) was given a str, "):
        run_case_files(str(CASES / "reference.stageflow.json"))
    with pytest.raises(TypeError, match=r"pass paths=\['.*reference.stageflow.json'\]"):
        run_case_files(CASES / "reference.stageflow.json")
    with pytest.raises(TypeError, match=r"pass stages_modules=\['stages.py'\]"):
        run_case_files([CASES / "reference.stageflow.json"], stages_modules="stages.py")
    with pytest.raises(TypeError, match=r"load_cases\(stages_modules=\.\.\.\) was given a str"):
        load_cases(CASES / "reference.stageflow.json", stages_modules="stages.py")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: run_case("reference.stageflow.json"), "run_case() was given a str; pass a "),
        (lambda: run_case(None), "run_case() was given None; pass a stageflow.testing.Case"),
        (
            lambda: run_case(Case(name="n", pipeline={}), registry={}),
            "run_case(registry=...) was given a dict; pass a stageflow.StageRegistry",
        ),
    ],
)
def test_run_case_says_what_it_takes(call: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value).startswith(message)


def test_an_inline_pipeline_in_the_case_file(tmp_path: Path) -> None:
    shutil.copy(REFERENCE / "stages.py", tmp_path / "stages.py")
    document = {
        "pipeline": json.loads((REFERENCE / "pipeline.json").read_text()),
        "stages": "stages.py",
        "cases": [
            {"name": "short", "payload": SHORT, "expect": {"path": ["start", "decide", "finish"]}}
        ],
    }
    path = tmp_path / "inline.stageflow.json"
    path.write_text(json.dumps(document))
    report = run_case_files([path])
    assert report.ok, report.render()
    assert report.coverage[0].source == f"inline in {path}"


# --------------------------------------------------------- failing cases


def test_a_failing_case_lists_every_failed_expectation_with_a_diff() -> None:
    (wrong, _) = load_cases(CASES / "failing.cases.json")
    result = run_case(wrong)
    assert result.outcome is CaseOutcome.FAILED
    assert [f.field for f in result.failures] == ["result", "artifacts", "path", "events[0]"]
    assert result.checks == 6  # status and limit held
    text = result.render()
    assert text.startswith(
        "FAILED case 'wrong expectations' (tests/cases/failing.cases.json $.cases[0]): "
        "4 of 6 checks failed"
    )
    assert 'result: expected {"status": "done"}, got {"status": "ok"}' in text
    # The artifacts as a unified diff of pretty-printed JSON.
    assert '-  "a_result": 11,\n      +  "a_result": 10,' in text
    # The path: both paths, then the nodes that differ.
    assert "expected: start -> decide -> finish" in text
    assert "actual:   start -> decide -> fanout -> " in text
    assert "+fanout" in text
    # The event: what was looked for and the nearest event of that type.
    assert "no event type='scored', payload contains {\"score\": 4}" in text
    assert "payload.score: expected 4, got 5" in text


def test_a_failed_status_shows_the_session_error() -> None:
    (_, worker_fails) = load_cases(CASES / "failing.cases.json")
    result = run_case(worker_fails)
    assert [f.field for f in result.failures] == ["status", "artifacts_subset"]
    status = result.failures[0]
    assert status.message == "expected 'completed', got 'failed'"
    assert "ConnectionError: backend down" in status.details
    assert 'b_result: missing (expected "low")' in result.failures[1].details


def test_json_values_are_compared_as_json(write_cases: Callable[..., Path]) -> None:
    # true is not 1, and 5 is 5.0.
    path = write_cases(
        [
            {
                "name": "n",
                "payload": {"text": "a b c d e"},
                "expect": {"artifacts_subset": {"score": 5.0}},
            }
        ]
    )
    assert run_one(path).passed
    path = write_cases(
        [{"name": "b", "payload": {"text": "a"}, "expect": {"artifacts_subset": {"score": True}}}]
    )
    assert [f.field for f in run_one(path).failures] == ["artifacts_subset"]


def test_values_that_differ_in_too_many_places_list_the_first_places() -> None:
    # A line diff of them takes time that grows with the product of their lengths:
    # two lists of 20,000 numbers differing at every other one took 45 s to report.
    registry = stageflow.StageRegistry()

    @registry.register("Numbers")
    async def numbers(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"xs": list(range(2500))}

    pipeline = {
        "api_version": "1.0",
        "entry": "count",
        "nodes": [
            {"id": "count", "type": "stage", "stage": "Numbers", "outputs": {"xs": "xs"}},
            {"id": "end", "type": "terminal", "artifacts": ["xs"]},
        ],
    }
    pipeline["nodes"][0]["next"] = "end"
    expected = [n if n % 2 else -n - 1 for n in range(2500)]
    case = Case(name="n", pipeline=pipeline, expect=Expectations(artifacts={"xs": expected}))
    (failure,) = run_case(case, registry=registry).failures
    assert failure.field == "artifacts"
    lines = failure.details.splitlines()
    assert lines[:3] == [
        "too many differing lines to diff (2504 expected, 2504 actual); "
        "the first differing places:",
        "  xs[0]: expected -1, got 0",
        "  xs[2]: expected -3, got 2",
    ]
    assert lines[-1] == "  ... and 1230 more"
    assert len(lines) == 22


def test_a_failed_subset_shows_at_most_the_start_of_large_artifacts() -> None:
    # The failure wrote every artifact whole (here 1.2 MB of text per report;
    # a report of a few cases of a document pipeline ran to megabytes).
    registry = stageflow.StageRegistry()

    @registry.register("Big")
    async def big(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"text": "x" * 600_000, "score": 4}

    pipeline: dict[str, Any] = {
        "api_version": "1.0",
        "entry": "make",
        "nodes": [
            {
                "id": "make",
                "type": "stage",
                "stage": "Big",
                "outputs": {"text": "text", "score": "score"},
                "next": "end",
            },
            {"id": "end", "type": "terminal", "artifacts": ["text", "score"]},
        ],
    }
    expected = {"score": 5, "text": "y" * 600_000}
    case = Case(name="big", pipeline=pipeline, expect=Expectations(artifacts_subset=expected))
    (failure,) = run_case(case, registry=registry).failures
    assert failure.field == "artifacts_subset"
    assert len(failure.details) < 3_000, len(failure.details)
    lines = failure.details.splitlines()
    assert lines[0] == "score: expected 5, got 4"
    cut = "... (600,002 characters)"
    assert lines[1] == f'text: expected "{"y" * 199}{cut}, got "{"x" * 199}{cut}'
    assert lines[2].startswith('actual: {"score": 4, "text": "xxx')
    assert lines[2].endswith("... (600,024 characters)")


def test_a_value_that_differs_in_one_place_gets_a_line_diff_whatever_its_size() -> None:
    expected = {"xs": list(range(50_000))}
    actual = {"xs": [*range(25_000), "x", *range(25_001, 50_000)]}
    lines = _diff.text_diff(expected, actual).splitlines()
    changed = lines.index("-    25000,")
    assert lines[changed - 1 : changed + 3] == [
        "     24999,",
        "-    25000,",
        '+    "x",',
        "     25001,",
    ]
    assert lines[:2] == ["--- expected", "+++ actual"]


def test_paths_that_differ_in_too_many_places_list_the_first_places() -> None:
    expected = [f"n{i}" for i in range(2500)]
    actual = [name if i % 2 else f"m{i}" for i, name in enumerate(expected)] + ["extra"]
    lines = _diff.list_diff(expected, actual).splitlines()
    assert lines[:2] == [
        "too many differing lines to diff (2500 expected, 2501 actual); the first differing names:",
        "  #1: expected 'n0', got 'm0'",
    ]
    assert lines[-1] == "  ... and 1231 more"


def test_path_in_order_says_which_node_is_missing(write_cases: Callable[..., Path]) -> None:
    path = write_cases(
        [
            {"name": "never", "payload": SHORT, "expect": {"path_in_order": ["start", "fanout"]}},
            {"name": "order", "payload": LONG, "expect": {"path_in_order": ["fanout", "decide"]}},
            {"name": "ok", "payload": LONG, "expect": {"path_in_order": ["start", "finish"]}},
        ]
    )
    never, order, ok = (run_case(c) for c in load_cases(path))
    assert never.failures[0].message == "'fanout' was never started (matched 1 of 2)"
    assert (
        order.failures[0].message == "'decide' was started, but not after 'fanout' (matched 1 of 2)"
    )
    assert ok.passed


def test_not_visited_names_the_step(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "payload": LONG, "expect": {"not_visited": ["fanout"]}}])
    (failure,) = run_one(path).failures
    assert (failure.field, failure.message) == ("not_visited", "started 'fanout' (step 3)")


def test_an_expectation_naming_a_node_the_pipeline_lacks_is_a_located_error(
    write_cases: Callable[..., Path],
) -> None:
    # "not_visited" or "count": 0 on a misspelt node would hold whatever the run did.
    expect = {
        "not_visited": ["fanuot"],
        "path_in_order": ["start"],
        "events": [{"type": "branch_started", "node_id": "fanot", "count": 0}],
        "error": {"node_id": "strat"},
    }
    path = write_cases([{"name": "n", "payload": LONG, "expect": expect}])
    (case,) = load_cases(path)
    with pytest.raises(CaseValidationError) as caught:
        run_case(case)
    problems = caught.value.problems
    assert [p.location for p in problems] == [
        "$.cases[0].expect.not_visited[0]",
        "$.cases[0].expect.events[0].node_id",
        "$.cases[0].expect.error.node_id",
    ]
    assert problems[0].message.startswith(
        "'fanuot' is not a node of pipeline 'demo_full_flow', so this expectation does not "
        "test the run; use one of branch_a, branch_b, decide, fanout, finish, start"
    )
    report = run_case_files([path])
    assert (report.errors, report.passed) == (1, 0)


def test_an_event_expected_of_an_empty_node_id_is_a_located_error(
    write_cases: Callable[..., Path],
) -> None:
    # The empty id was not checked, and "count": 0 held whatever the run did.
    expect = {"events": [{"type": "node_started", "node_id": "", "count": 0}]}
    (case,) = load_cases(write_cases([{"name": "n", "payload": SHORT, "expect": expect}]))
    with pytest.raises(CaseValidationError) as caught:
        run_case(case)
    (problem,) = caught.value.problems
    assert problem.location == "$.cases[0].expect.events[0].node_id"
    assert problem.message.startswith("'' is not a node of pipeline 'demo_full_flow'")


def test_the_nodes_of_subpipelines_can_be_expected() -> None:
    from stageflow import builtins

    expect = Expectations(path_in_order=("call", "stop"), not_visited=("nothing",))
    case = Case(name="n", pipeline=MAP_AND_SUBPIPELINE, payload={"xs": []}, expect=expect)
    with pytest.raises(CaseValidationError, match="'nothing' is not a node"):
        run_case(case, registry=builtins.registry())
    case = attrs.evolve(case, expect=attrs.evolve(expect, not_visited=()))
    assert run_case(case, registry=builtins.registry()).passed


def _chat_registry(*declared: str) -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()

    async def reply(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.emit("token", {"text": "hi"})
        return {}

    spec = stageflow.StageSpec(allowed_events=[stageflow.EventSpec(t) for t in declared])
    registry.add(reply, name="Reply", spec=spec)
    return registry


_CHAT = {
    "api_version": "1.0",
    "entry": "reply",
    "nodes": [
        {"id": "reply", "type": "stage", "stage": "Reply", "next": "end"},
        {"id": "end", "type": "terminal"},
    ],
}


def test_an_event_type_no_stage_can_emit_is_a_located_error() -> None:
    # "count": 0 of a misspelt type held whatever the stages emitted.
    events = (
        EventExpectation("tokn", count=0),
        EventExpectation("token", node_id="end", count=0),
        EventExpectation("token", node_id="reply"),
        EventExpectation("node_started", node_id="end"),
    )
    case = Case(name="n", pipeline=_CHAT, expect=Expectations(events=events))
    with pytest.raises(CaseValidationError) as caught:
        run_case(case, registry=_chat_registry("token"))
    problems = caught.value.problems
    assert [p.location for p in problems] == [
        "$.cases[0].expect.events[0].type",
        "$.cases[0].expect.events[1].type",
    ]
    assert problems[0].message.startswith(
        "no event of type 'tokn' can be in the history: it is not an engine event, and its "
        "stages of pipeline "
    )
    assert "declare only token (in StageSpec.allowed_events)" in problems[0].message
    assert "node 'end' of pipeline" in problems[1].message
    assert "emit no events of their own" in problems[1].message
    # The two that can hold are checked, and hold.
    case = attrs.evolve(case, expect=Expectations(events=events[2:]))
    assert run_case(case, registry=_chat_registry("token")).passed


def test_an_event_type_is_not_refused_when_a_stage_may_emit_any() -> None:
    # A stage that declares no events may emit any type: "tokn" might be real.
    expect = Expectations(events=(EventExpectation("tokn", count=0),))
    case = Case(name="n", pipeline=_CHAT, expect=expect)
    assert run_case(case, registry=_chat_registry()).passed


def test_event_counts(write_cases: Callable[..., Path]) -> None:
    events = [
        {"type": "branch_started", "node_id": "fanout", "count": 2},
        {"type": "scored", "count": 0},
        {"type": "branch_failed", "count": 0},
    ]
    path = write_cases([{"name": "n", "payload": LONG, "expect": {"events": events}}])
    (failure,) = run_one(path).failures
    assert failure.field == "events[1]"
    assert failure.message == "expected 0 x event type='scored', found 1"
    assert "scored node 'start'" in failure.details


def test_a_missing_event_type_lists_the_types_seen(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "payload": SHORT, "expect": {"events": [{"type": "nope"}]}}])
    (failure,) = run_one(path).failures
    assert failure.details.startswith("no 'nope' event at all; types seen: node_finished")


def test_an_event_expected_of_one_node_is_compared_with_that_nodes_events(
    write_cases: Callable[..., Path],
) -> None:
    # The payload was compared with the first event of the type, another node's.
    events = [
        {"type": "node_finished", "node_id": "decide", "payload": {"next": "fanout"}},
        {"type": "node_finished", "node_id": "fanout", "payload": {"next": "finish"}},
    ]
    path = write_cases([{"name": "n", "payload": SHORT, "expect": {"events": events}}])
    (other, never) = run_one(path).failures
    assert other.details.splitlines() == [
        "events of that type at node 'decide':",
        '#6 node_finished node \'decide\' {"branch": "else", "next": "finish", '
        '"node_type": "condition"}',
        'first one differs: payload.next: expected "fanout", got "finish"',
    ]
    assert never.details.splitlines()[0] == "events of that type:"
    assert never.details.splitlines()[-1] == "none of them at node 'fanout'"


def test_error_expectations_report_each_mismatch(write_cases: Callable[..., Path]) -> None:
    mocks = {"WorkerAStage": {"errors": [{"type": "KeyError", "message": "gone"}]}}
    expect = {
        "status": "failed",
        "error": {
            "type": "ConditionError",
            "node_id": "branch_a",
            "attempt": 2,
            "cause_type": "ValueError",
            "message_contains": "zzz",
        },
    }
    path = write_cases([{"name": "n", "payload": LONG, "mocks": mocks, "expect": expect}])
    (failure,) = run_one(path).failures
    assert failure.message == "4 mismatch(es)"
    assert failure.details.splitlines()[:4] == [
        "type: expected 'ConditionError', got 'StageError'",
        "message does not contain 'zzz'",
        "attempt: expected 2, got 1",
        "no 'ValueError' among the causes (causes: KeyError)",
    ]


def test_expecting_an_error_from_a_run_without_one(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "n", "payload": SHORT, "expect": {"error": {"type": "X"}}}])
    status, error = run_one(path).failures
    assert status.message == "expected 'failed', got 'completed'"
    assert error.message == "expected an error, but the run has none (status completed)"


def test_status_defaults_to_completed(write_cases: Callable[..., Path]) -> None:
    mocks = {"InitStage": {"errors": [{"type": "ValueError"}]}}
    path = write_cases([{"name": "n", "payload": SHORT, "mocks": mocks}])
    result = run_one(path)
    assert [f.field for f in result.failures] == ["status"]


def test_an_expected_error_implies_a_failed_run(write_cases: Callable[..., Path]) -> None:
    # The status still defaulted to completed: a case whose only expectation
    # was the error the run failed with could never pass.
    mocks = {"InitStage": {"errors": [{"type": "ValueError", "message": "boom"}]}}
    expect = {"error": {"cause_type": "ValueError", "node_id": "start"}}
    path = write_cases([{"name": "n", "payload": SHORT, "mocks": mocks, "expect": expect}])
    result = run_one(path)
    assert result.failures == ()
    assert result.status is stageflow.SessionStatus.FAILED


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("max_time", "1e999", "float inf is not JSON (not a finite number)"),
        ("max_time", "NaN", "float nan is not JSON (not a finite number)"),
        ("max_time", "1" + "0" * 400, "is greater than the maximum of 1000000000000"),
        ("at", "NaN", "float nan is not JSON (not a finite number)"),
        ("delay", "Infinity", "float inf is not JSON (not a finite number)"),
    ],
)
def test_a_time_that_is_not_a_finite_number_is_a_located_error(
    tmp_path: Path, field: str, value: str, problem: str
) -> None:
    # max_time 1e999 slept forever (stageflow test hung); NaN raised a bare
    # ValueError that ended the whole run of case files with a traceback.
    case: dict[str, Any] = {"name": "n", "payload": SHORT}
    document: dict[str, Any] = {"pipeline": str(REFERENCE / "pipeline.json"), "cases": [case]}
    location = {
        "max_time": "$.limits.max_time",
        "at": "$.cases[0].inputs[0].at",
        "delay": "$.mocks.InitStage.delay",
    }[field]
    if field == "max_time":
        document["limits"] = {"max_time": "@"}
    elif field == "at":
        case["inputs"] = [{"type": "go", "at": "@"}]
    else:
        document["mocks"] = {"InitStage": {"delay": "@"}}
    path = tmp_path / "case.stageflow.json"
    path.write_text(json.dumps(document).replace('"@"', value))
    with pytest.raises(CaseValidationError) as refused:
        load_cases(path)
    [found] = refused.value.problems
    assert found.location == location
    assert problem in found.message


@pytest.mark.parametrize(
    "make",
    [
        lambda: CaseLimits(max_time=float("inf")),
        lambda: CaseLimits(max_time=0),
        lambda: ScriptedInput("go", at=float("nan")),
        lambda: StageMock(delay=-1.0),
    ],
)
def test_times_built_in_python_are_checked_too(make: Callable[[], object]) -> None:
    with pytest.raises(stageflow.DefinitionError, match="is not a finite number of seconds"):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CaseLimits(max_events="3"), "CaseLimits(max_events='3') is not a whole number"),
        (lambda: CaseLimits(max_events=0), "CaseLimits(max_events=0) is not a whole number"),
        (lambda: CaseLimits(max_steps=1.5), "CaseLimits(max_steps=1.5) is not a whole number"),
        (lambda: EventExpectation("x", count=-1), "EventExpectation(count=-1) is not a whole"),
        (lambda: MockError("E", attempt=True), "MockError(attempt=True) is not a whole number"),
    ],
)
def test_counts_built_in_python_are_checked(make: Callable[[], object], message: str) -> None:
    # max_events="3" made the tester's event counter raise on every event: it was
    # detached, and the limit never applied (the case passed).
    with pytest.raises(stageflow.DefinitionError) as refused:
        make()
    assert str(refused.value).startswith(message)


def test_a_limit_on_events_given_in_python_applies() -> None:
    case = approval_case(inputs=[{"type": "approval", "payload": {"ok": True}}])
    limited = attrs.evolve(case, limits=CaseLimits(max_events=3))
    assert run_case(limited).limit_exceeded == "max_events"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Case(name="n", pipeline={}, expect={"status": "failed"}),
            "Case(expect=...) was given a dict; pass Expectations(status='failed') "
            "(a case file's dicts are read by load_cases)",
        ),
        (
            lambda: Case(name="n", pipeline={}, limits={"max_time": 5}),
            "Case(limits=...) was given a dict; pass CaseLimits(max_time=60) (",
        ),
        (
            lambda: Case(name="n", pipeline={}, mocks={"Fetch": {"outputs": {}}}),
            "Case.mocks['Fetch'] is a dict, not a StageMock; pass StageMock(outputs={...}) (",
        ),
        (
            lambda: Case(name="n", pipeline={}, inputs=({"type": "go"},)),
            "Case.inputs[0] is a dict, not a ScriptedInput; pass ScriptedInput(",
        ),
        (
            lambda: Case(name="n", pipeline={}, stages="stages.py"),
            "Case(stages=...) was given a str, 'stages.py', where it takes a list; "
            "pass stages=['stages.py']",
        ),
        (
            lambda: StageMock(errors=("TimeoutError",)),
            "StageMock.errors[0] is a str, not a MockError; pass MockError('TimeoutError')",
        ),
        (
            lambda: Expectations(events=({"type": "scored"},)),
            "Expectations.events[0] is a dict, not an EventExpectation; pass EventExpectation(",
        ),
        (
            lambda: Expectations(error={"type": "StageError"}),
            "Expectations(error=...) was given a dict; pass ErrorExpectation(type='StageError'), "
            "or None (",
        ),
    ],
)
def test_parts_of_a_case_built_in_python_are_checked(
    make: Callable[[], object], message: str
) -> None:
    # A dict (a case file's form) failed later with "'dict' object has no attribute ...".
    with pytest.raises(stageflow.DefinitionError) as caught:
        make()
    assert str(caught.value).startswith(message)


# ----------------------------------------------------------- pytest plugin


def _plugin_files(pytester: pytest.Pytester) -> None:
    shutil.copy(REFERENCE / "pipeline.json", pytester.path / "pipeline.json")
    shutil.copy(REFERENCE / "stages.py", pytester.path / "stages.py")


def test_plugin_collects_one_item_per_case(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    shutil.copy(CASES / "reference.stageflow.json", pytester.path / "ref.stageflow.json")
    text = (pytester.path / "ref.stageflow.json").read_text()
    (pytester.path / "ref.stageflow.json").write_text(text.replace("../../examples/reference/", ""))
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*ref.stageflow.json::long text takes the parallel path PASSED*",
            "*ref.stageflow.json::mocked workers PASSED*",
        ]
    )


def test_plugin_shows_the_diff_of_a_failing_case(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    text = (CASES / "failing.cases.json").read_text().replace("../../examples/reference/", "")
    (pytester.path / "failing.stageflow.json").write_text(text)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*FAILED case 'wrong expectations' (failing.stageflow.json $.cases?0?): 4 of 6 *",
            '*-  "a_result": 11,',
            '*+  "a_result": 10,',
            "*status: expected 'completed', got 'failed'",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_plugin_shows_where_a_stage_raised_when_the_run_was_not_to_fail(
    pytester: pytest.Pytester,
) -> None:
    # The report named "KeyError: 'missing'", and no line of the stage's.
    pytester.makepyfile(
        buggy=(
            "import stageflow\n"
            "registry = stageflow.StageRegistry()\n"
            "def lookup(row):\n"
            "    return row['missing']\n"
            "@registry.register('Buggy')\n"
            "async def buggy(ctx):\n"
            "    return {'v': lookup({})}\n"
        )
    )
    pipeline = {
        "api_version": "1.0",
        "entry": "s",
        "nodes": [
            {"id": "s", "type": "stage", "stage": "Buggy", "next": "end"},
            {"id": "end", "type": "terminal"},
        ],
    }
    cases = [
        {"name": "not to fail"},
        {"name": "to fail", "expect": {"status": "failed", "result": {"ok": True}}},
    ]
    case = {"pipeline": pipeline, "stages": "buggy.py", "cases": cases}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # What docs/testing.md shows, the file named by its full path.
    shown = doc_blocks("pytb")[0].replace('"buggy.py"', f'"{pytester.path / "buggy.py"}"')
    assert out.index("case 'not to fail'") < out.index(shown) < out.index("case 'to fail'")
    # Only where the run failing is the surprise, and from the stage's own frames.
    # (With CI set, pytest's short summary repeats each failure whole: looked at
    # before it.)
    failures = out.split("short test summary info")[0]
    assert failures.count("Traceback") == 1
    assert "_engine" not in out


@pytest.mark.parametrize("ini", ["trio_mode = true", "anyio_mode = auto"])
def test_plugin_runs_under_the_async_plugins_modes(pytester: pytest.Pytester, ini: str) -> None:
    # pytest-trio's trio_mode reads item.obj on every item (an INTERNALERROR before).
    _plugin_files(pytester)
    case = {
        "pipeline": "pipeline.json",
        "stages": "stages.py",
        "cases": [{"name": "c", "payload": SHORT}],
    }
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    pytester.makepyfile(test_async="async def test_async():\n    pass\n")
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest("-v")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*c.stageflow.json::c PASSED*"])


def test_ctrl_c_in_a_case_stops_pytest(pytester: pytest.Pytester) -> None:
    # It reached pytest in a BaseExceptionGroup: the case failed, and the next one ran.
    pytester.makepyfile(
        stages=(
            "import stageflow\n"
            "registry = stageflow.StageRegistry()\n"
            "@registry.register('Interrupted')\n"
            "async def interrupted(ctx):\n"
            "    raise KeyboardInterrupt\n"
        )
    )
    pipeline = {
        "api_version": "1.0",
        "entry": "ask",
        "nodes": [
            {"id": "ask", "type": "stage", "stage": "Interrupted", "next": "end"},
            {"id": "end", "type": "terminal"},
        ],
    }
    case = {"pipeline": pipeline, "stages": "stages.py", "cases": [{"name": "a"}, {"name": "b"}]}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    (only,) = load_cases(pytester.path / "c.stageflow.json")[:1]
    with pytest.raises(KeyboardInterrupt):
        run_case(only)
    result = pytester.runpytest(no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*", "*no tests ran*"])


def test_plugin_escapes_what_a_terminal_would_act_on_in_test_ids(
    pytester: pytest.Pytester,
) -> None:
    # A newline split the report's lines; an escape sequence reached the terminal.
    _plugin_files(pytester)
    names = ["two\nlines", "clear \x1b[2J", "caf\u00e9 \u202eoverride"]
    cases = [{"name": name, "payload": SHORT} for name in names]
    case = {"pipeline": "pipeline.json", "stages": "stages.py", "cases": cases}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "c.stageflow.json::two\\nlines PASSED" in out
    assert "c.stageflow.json::clear \\x1b[2J PASSED" in out
    assert "c.stageflow.json::caf\u00e9 \\u202eoverride PASSED" in out
    assert "\x1b[2J" not in out
    assert "\u202e" not in out


def test_plugin_reports_a_bad_case_file_as_a_collection_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.stageflow.yaml").write_text("pipeline: p.json\ncases: []\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CaseValidationError: case file in *bad.stageflow.yaml*"])


def test_plugin_patterns_come_from_the_ini_option(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    case = {
        "pipeline": "pipeline.json",
        "stages": "stages.py",
        "cases": [{"name": "c", "payload": SHORT}],
    }
    (pytester.path / "flow-cases.json").write_text(json.dumps(case))
    (pytester.path / "other.stageflow.json").write_text(json.dumps(case))
    pytester.makeini("[pytest]\nstageflow_case_files = flow-*.json\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*flow-cases.json::c PASSED*"])


def test_plugin_patterns_match_file_names_in_any_case(pytester: pytest.Pytester) -> None:
    # load_cases and `stageflow test` read CASES.STAGEFLOW.YAML as YAML; pytest skipped it.
    _plugin_files(pytester)
    case = {
        "pipeline": "pipeline.json",
        "stages": "stages.py",
        "cases": [{"name": "c", "payload": SHORT}],
    }
    (pytester.path / "UPPER.STAGEFLOW.YAML").write_text(yaml.safe_dump(case))
    (pytester.path / "Mixed.Stageflow.Json").write_text(json.dumps(case))
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*Mixed.Stageflow.Json::c PASSED*", "*UPPER.STAGEFLOW.YAML::c PASSED*"]
    )
    pytester.makeini("[pytest]\nstageflow_case_files = FLOW-*.json\n")
    (pytester.path / "flow-cases.JSON").write_text(json.dumps(case))
    pytester.runpytest("-v").assert_outcomes(passed=1)


def test_plugin_adds_stages_modules_from_the_ini_option(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    case = {"pipeline": "pipeline.json", "cases": [{"name": "c", "payload": LONG}]}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    pytester.makeini("[pytest]\nstageflow_stages = stages.py\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_plugin_names_the_ini_option_of_a_stages_module_that_cannot_be_imported(
    pytester: pytest.Pytester,
) -> None:
    # Every case failed, blamed on its case file: "case file in c.stageflow.json is
    # not valid: $.stages: stages module ...", though the file names no stages.
    _plugin_files(pytester)
    case = {"pipeline": "pipeline.json", "cases": [{"name": "a"}, {"name": "b"}]}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    pytester.makeini("[pytest]\nstageflow_stages = no_such_stages_module\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "stageflow_stages (pytest ini option) = no_such_stages_module: no module named "
            "'no_such_stages_module' *; pass an importable module name or a path to a .py file"
        ]
    )
    assert "$.stages" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_plugin_prints_coverage_on_request(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    case = {
        "pipeline": "pipeline.json",
        "stages": "stages.py",
        "cases": [{"name": "c", "payload": LONG}],
    }
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    result = pytester.runpytest("--stageflow-coverage")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*stageflow coverage*",
            "*edges: 5/6 (83.3%)",
            "*edges never taken:",
            "*decide -?else?-> finish",
        ]
    )
    assert "stageflow coverage" not in pytester.runpytest().stdout.str()


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    _plugin_files(pytester)
    case = {"pipeline": "pipeline.json", "stages": "stages.py", "cases": [{"name": "c"}]}
    (pytester.path / "c.stageflow.json").write_text(json.dumps(case))
    result = pytester.runpytest("-p", "no:stageflow")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_loading_the_plugin_imports_nothing_from_stageflow(pytester: pytest.Pytester) -> None:
    # Coverage tools start after plugins load: the plugin must not import stageflow early.
    probe = (
        "import sys, pytest; pytest.main(['--co', '-q', '-p', 'no:cacheprovider']); "
        "print('LOADED', '_stageflow_pytest' in sys.modules, 'stageflow' in sys.modules)"
    )
    result = pytester.run(sys.executable, "-c", probe)
    result.stdout.fnmatch_lines(["LOADED True False"])


# -------------------------------------------------------------------- docs

DOCS = ROOT / "docs" / "testing.md"


def doc_blocks(language: str) -> list[str]:
    text = DOCS.read_text()
    blocks = []
    for chunk in text.split(f"```{language}\n")[1:]:
        blocks.append(chunk.split("```", 1)[0])
    return blocks


def test_docs_case_file_passes(tmp_path: Path) -> None:
    case_file = json.loads(doc_blocks("json")[0])
    (tmp_path / "examples").mkdir()
    shutil.copytree(REFERENCE, tmp_path / "examples" / "reference")
    where = tmp_path / "tests" / "cases"
    where.mkdir(parents=True)
    (where / "doc.stageflow.json").write_text(json.dumps(case_file))
    report = run_case_files([where / "doc.stageflow.json"])
    assert report.ok, report.render()
    assert report.results[0].elapsed == pytest.approx(3600)


def test_docs_show_the_test_ids_pytest_gives_the_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    # The page showed the ids of its own example cases under the name of
    # tests/cases/reference.stageflow.json, whose cases are others.
    monkeypatch.chdir(ROOT)
    path = "tests/cases/reference.stageflow.json"
    shown = doc_blocks("text")[0].splitlines()
    assert shown == [f"{path}::{case.name} PASSED" for case in load_cases(path)]


def test_docs_mock_snippet_is_valid(schema: Doc) -> None:
    mocks = json.loads("{" + doc_blocks("json")[1] + "}")["mocks"]
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/mocks"})
    validator.validate(mocks)


def test_docs_python_snippet_runs(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(ROOT)
    exec(doc_blocks("python")[0], {})
    assert capsys.readouterr().out.rstrip().endswith("2 passed, 0 failed, 0 errors")


def test_docs_show_the_real_failure_and_coverage_output(
    monkeypatch: pytest.MonkeyPatch, write_cases: Callable[..., Path]
) -> None:
    monkeypatch.chdir(ROOT)
    failure_text, coverage_text = (b.rstrip("\n") for b in doc_blocks("text")[1:3])
    (wrong, _) = load_cases(Path("tests/cases/failing.cases.json"))
    # Parallel branches start in either order; the docs show branch_a first.
    rendered = (
        run_case(wrong)
        .render()
        .replace("branch_b -> branch_a", "branch_a -> branch_b")
        .replace("+branch_b\n      +branch_a", "+branch_a\n      +branch_b")
    )
    assert rendered == failure_text
    short = write_cases([{"name": "short", "payload": SHORT}])
    (coverage,) = run_case_files([short]).coverage
    source = "examples/reference/pipeline.json"
    assert attrs.evolve(coverage, source=source).render() == coverage_text


def test_public_names_are_sorted_exported_and_documented() -> None:
    import stageflow.testing as testing

    # Sorted as isort sorts: constants, then classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert testing.__all__ == sorted(testing.__all__, key=kind)
    documented = [n for n in testing.__all__ if n.isupper() or getattr(testing, n).__doc__]
    assert documented == testing.__all__


def test_an_engine_error_propagates_unwrapped(
    monkeypatch: pytest.MonkeyPatch, write_cases: Callable[..., Path]
) -> None:
    async def broken_run(self: stageflow.Session) -> stageflow.SessionResult:
        raise RuntimeError("engine bug")

    (case,) = load_cases(write_cases([{"name": "n", "payload": SHORT}]))
    monkeypatch.setattr(stageflow.Session, "run", broken_run)
    with pytest.raises(RuntimeError, match="engine bug"):
        run_case(case)


class _Halt(BaseException):
    """A BaseException that is no Exception, raised by a stage."""


@pytest.mark.parametrize("raised", [_Halt("halt"), SystemExit(3), GeneratorExit()])
def test_a_stage_raising_a_base_exception_propagates_as_the_session_raises_it(
    raised: BaseException,
) -> None:
    # Session.run() raises it bare; run_case() raised it in its task group's group,
    # then with that group as its __context__ (the KeyError was lost).
    registry = stageflow.StageRegistry()

    @registry.register("Halts")
    async def halts(ctx: stageflow.StageContext) -> dict[str, Any]:
        try:
            return {"v": {}["missing"]}
        except KeyError:
            raise raised from LookupError("the reason")

    pipeline = {
        "api_version": "1.0",
        "entry": "halt",
        "nodes": [
            {"id": "halt", "type": "stage", "stage": "Halts", "next": "end"},
            {"id": "end", "type": "terminal"},
        ],
    }
    with pytest.raises(type(raised)) as caught:
        run_case(Case(name="halts", pipeline=pipeline), registry=registry)
    assert caught.value is raised
    assert repr(caught.value.__cause__) == "LookupError('the reason')"
    assert repr(caught.value.__context__) == "KeyError('missing')"


def test_ctrl_c_in_a_parallel_branch_goes_up_as_keyboard_interrupt() -> None:
    # The session raises it in the parallel node's group: pytest would take it
    # for the case's failure and go on with the next case.
    registry = stageflow.StageRegistry()

    @registry.register("Interrupted")
    async def interrupted(ctx: stageflow.StageContext) -> dict[str, Any]:
        raise KeyboardInterrupt from LookupError("the reason")

    @registry.register("Slow")
    async def slow(ctx: stageflow.StageContext) -> dict[str, Any]:
        await trio.sleep(100)
        return {}

    pipeline = {
        "api_version": "1.0",
        "entry": "fan",
        "nodes": [
            {"id": "fan", "type": "parallel", "children": ["a", "b"], "next": "end"},
            {"id": "a", "type": "stage", "stage": "Interrupted"},
            {"id": "b", "type": "stage", "stage": "Slow"},
            {"id": "end", "type": "terminal"},
        ],
    }
    with pytest.raises(KeyboardInterrupt) as caught:
        run_case(Case(name="ctrl-c", pipeline=pipeline), registry=registry)
    # Kept as Session.run() raises it (its cause was dropped: "from None").
    assert repr(caught.value.__cause__) == "LookupError('the reason')"


def test_an_engine_error_keeps_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    cause = ValueError("the cause")

    async def broken_run(self: stageflow.Session) -> stageflow.SessionResult:
        raise RuntimeError("engine bug") from cause

    monkeypatch.setattr(stageflow.Session, "run", broken_run)
    with pytest.raises(RuntimeError, match="engine bug") as caught:
        run_case(approval_case())
    assert caught.value.__cause__ is cause


def test_docs_retry_mock_snippet_is_the_committed_one() -> None:
    snippet = yaml.safe_load(doc_blocks("yaml")[0])
    committed = yaml.safe_load((CASES / "fetch.stageflow.yaml").read_text())
    assert snippet["mocks"] == committed["cases"][1]["mocks"]


def test_the_pipeline_deadline_gives_timed_out() -> None:
    pipeline = json.loads((CASES / "approval.json").read_text())
    pipeline["limits"] = {"timeout": 100}
    expect = {"status": "timed_out", "error": {"type": "SessionTimeoutError"}}
    result = run_case(approval_case(pipeline=pipeline, expect=expect))
    assert result.passed, result.render()
    assert result.elapsed == pytest.approx(100)
    assert result.limit_exceeded is None


MAP_AND_SUBPIPELINE = {
    "api_version": "1.0",
    "entry": "each",
    "nodes": [
        {
            "id": "each",
            "type": "map",
            "items": "xs",
            "body": "item",
            "item_path": "x",
            "collect": {"y": "seen"},
            "next": "call",
        },
        {
            "id": "item",
            "type": "stage",
            "stage": "builtins.set",
            "config": {"value": 1},
            "outputs": {"value": "y"},
        },
        {"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "end"},
        {"id": "end", "type": "terminal"},
    ],
    "subpipelines": {"inner": {"entry": "stop", "nodes": [{"id": "stop", "type": "terminal"}]}},
}


def test_coverage_counts_map_and_subpipeline_edges() -> None:
    from stageflow import builtins

    case = Case(name="n", pipeline=MAP_AND_SUBPIPELINE, payload={"xs": [1, 2]})
    result = run_case(case, registry=builtins.registry())
    assert result.passed, result.render()
    (coverage,) = coverage_of([result])
    assert coverage.edge_hits == {
        Edge("each", EdgeKind.BODY, "item"): 2,
        Edge("each", EdgeKind.NEXT, "call"): 1,
        Edge("call", EdgeKind.NEXT, "end"): 1,
    }
    assert coverage.complete


def test_coverage_does_not_credit_a_subpipeline_node_to_its_callers_namesake() -> None:
    # The child's "done" ran, the caller's never did: it counted as covered.
    from stageflow import builtins

    pipeline = {
        "api_version": "1.0",
        "entry": "call",
        "nodes": [
            {"id": "call", "type": "subpipeline", "pipeline": "child", "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "conditions": [{"if": {"var": "never"}, "then": "done"}],
                "else": "other",
            },
            {"id": "done", "type": "terminal"},
            {"id": "other", "type": "terminal"},
        ],
        "subpipelines": {
            "child": {
                "entry": "other",
                "nodes": [
                    {
                        "id": "other",
                        "type": "stage",
                        "stage": "builtins.set",
                        "config": {"value": 1},
                        "next": "done",
                    },
                    {"id": "done", "type": "terminal"},
                ],
            }
        },
    }
    result = run_case(Case(name="n", pipeline=pipeline), registry=builtins.registry())
    assert result.visited == ("call", "other", "done", "check", "other")
    (coverage,) = coverage_of([result])
    assert coverage.node_hits == {"call": 1, "check": 1, "done": 0, "other": 1}
    assert coverage.missed_edges == (Edge("check", EdgeKind.THEN, "done", 0),)


def test_coverage_reports_a_map_body_never_entered() -> None:
    from stageflow import builtins

    case = Case(name="n", pipeline=MAP_AND_SUBPIPELINE, payload={"xs": []})
    (coverage,) = coverage_of([run_case(case, registry=builtins.registry())])
    assert coverage.missed_edges == (Edge("each", EdgeKind.BODY, "item"),)
    assert "every node and edge was exercised" not in coverage.render()


def test_a_pipeline_file_given_as_a_case_file_is_named_as_such() -> None:
    report = run_case_files([REFERENCE / "pipeline.json"])
    (error,) = report.file_errors
    assert "this looks like a pipeline (it has 'entry' and 'nodes'), not a case file" in (
        error.message
    )
    assert '{"pipeline": "pipeline.json", "cases": [' in error.message


@pytest.mark.parametrize("path", [1, b"cases.stageflow.json", {"cases": []}])
def test_load_cases_given_no_path_says_what_to_pass(path: object) -> None:
    # Path() raised its own TypeError, which named neither the call nor the fix.
    with pytest.raises(TypeError, match=r"^load_cases\(path=\.\.\.\) was given .*; pass the path"):
        load_cases(path)  # type: ignore[arg-type]
