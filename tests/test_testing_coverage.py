"""The pipeline tester: coverage and the report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tester_support import CASES, LONG, REFERENCE, SHORT, fetch_case, reference_registry

import stageflow
from stageflow.testing import (
    Case,
    CaseOutcome,
    Edge,
    EdgeKind,
    Report,
    coverage_of,
    load_cases,
    measure_coverage,
    run_case,
    run_case_files,
)

# ---------------------------------------------------------------- coverage


def test_measure_coverage_says_what_it_takes() -> None:
    # One history was read as several ("'int' object has no attribute 'type'").
    case = Case(name="n", pipeline=REFERENCE / "pipeline.json", payload=SHORT)
    result = run_case(case, registry=reference_registry())
    assert result.pipeline is not None
    with pytest.raises(TypeError, match=r"the events of one history, .* \[result.history\]"):
        measure_coverage(result.pipeline, result.history)
    with pytest.raises(TypeError, match=r"a CaseResult among the histories; .* for r in results"):
        measure_coverage(result.pipeline, [result])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"given a str for the pipeline; pass the stageflow"):
        measure_coverage("pipeline.json", [result.history])  # type: ignore[arg-type]
    assert measure_coverage(result.pipeline, [result.history]).runs == 1


@pytest.mark.parametrize(
    ("history", "message"),
    [
        # A history read back from JSON (a snapshot's "history"): events as dicts.
        ("dicts", r"given a dict in history #0, where it takes stageflow.Event objects"),
        (None, r"given None as history #0; pass the histories of the runs"),
        ("abc", r"given a str as history #0; pass the histories of the runs"),
    ],
)
def test_measure_coverage_refuses_histories_of_anything_but_events(
    history: object, message: str
) -> None:
    # It raised AttributeError: 'dict' object has no attribute 'path'.
    case = Case(name="n", pipeline=REFERENCE / "pipeline.json", payload=SHORT)
    result = run_case(case, registry=reference_registry())
    assert result.pipeline is not None
    if history == "dicts":
        history = [event.to_dict() for event in result.history]
    with pytest.raises(TypeError, match=message):
        measure_coverage(result.pipeline, [history])  # type: ignore[list-item]


def test_coverage_of_a_case_set_that_misses_the_else_branch() -> None:
    report = run_case_files([CASES / "reference.stageflow.json"])
    (coverage,) = report.coverage
    assert coverage.runs == 2
    assert coverage.missed_nodes == ()
    assert coverage.missed_edges == (Edge("decide", EdgeKind.ELSE, "finish"),)
    text = coverage.render()
    assert "edges: 5/6 (83.3%)" in text
    assert "edges never taken:\n    decide -[else]-> finish" in text


def test_coverage_of_only_the_else_path_names_the_parallel_branches(
    write_cases: Callable[..., Path],
) -> None:
    report = run_case_files([write_cases([{"name": "short", "payload": SHORT}])])
    (coverage,) = report.coverage
    assert coverage.missed_nodes == ("fanout", "branch_a", "branch_b")
    assert [str(e) for e in coverage.missed_edges] == [
        "decide -[then 0]-> fanout",
        "fanout -[branch 0]-> branch_a",
        "fanout -[branch 1]-> branch_b",
        "fanout -[join]-> finish",
    ]
    assert coverage.node_hits == {
        "start": 1,
        "decide": 1,
        "fanout": 0,
        "branch_a": 0,
        "branch_b": 0,
        "finish": 1,
    }
    assert coverage.node_ratio == pytest.approx(0.5)
    assert coverage.edge_ratio == pytest.approx(2 / 6)
    assert "nodes never run:\n    fanout\n    branch_a\n    branch_b" in coverage.render()


def test_coverage_of_both_paths_is_complete(write_cases: Callable[..., Path]) -> None:
    path = write_cases([{"name": "long", "payload": LONG}, {"name": "short", "payload": SHORT}])
    (coverage,) = run_case_files([path]).coverage
    assert coverage.complete
    assert coverage.edge_hits[Edge("start", EdgeKind.NEXT, "decide")] == 2
    assert "every node and edge was exercised" in coverage.render()


def test_coverage_counts_failed_runs_up_to_where_they_stopped(
    write_cases: Callable[..., Path],
) -> None:
    mocks = {"WorkerAStage": {"errors": [{"type": "ValueError"}]}}
    path = write_cases([{"name": "n", "payload": LONG, "mocks": mocks}])
    (coverage,) = run_case_files([path]).coverage
    assert coverage.node_hits["branch_a"] == 1
    assert coverage.node_hits["finish"] == 0
    assert Edge("fanout", EdgeKind.JOIN, "finish") in coverage.missed_edges


REPEATED_TARGETS = {
    "api_version": "1.0",
    "entry": "pick",
    "nodes": [
        {
            "id": "pick",
            "type": "condition",
            "conditions": [
                {"if": {"==": [{"var": "x"}, 1]}, "then": "a"},
                {"if": {"==": [{"var": "x"}, 2]}, "then": "b"},
                {"if": {"==": [{"var": "x"}, 3]}, "then": "a"},
            ],
            "else": "b",
        },
        {"id": "a", "type": "terminal"},
        {"id": "b", "type": "terminal"},
    ],
}


def test_condition_edges_are_counted_per_branch() -> None:
    registry = stageflow.StageRegistry()
    results = [
        run_case(Case(name=str(x), pipeline=REPEATED_TARGETS, payload={"x": x}), registry=registry)
        for x in (1, 2)
    ]
    (coverage,) = coverage_of(results)
    assert coverage.missed_nodes == ()
    assert [str(e) for e in coverage.missed_edges] == ["pick -[then 2]-> a", "pick -[else]-> b"]


def finished(node_id: str, payload: dict[str, Any]) -> stageflow.Event:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    return stageflow.Event(1, "node_finished", now, "s", node_id, "", payload)


@pytest.mark.parametrize(
    ("payload", "credited"),
    [
        ({"next": "b", "branch": "else"}, "pick -[else]-> b"),
        ({"next": "a", "branch": 2}, "pick -[then 2]-> a"),
        # Without the matched branch, the first branch with that target is credited.
        ({"next": "a"}, "pick -[then 0]-> a"),
        ({"next": "b"}, "pick -[then 1]-> b"),
    ],
)
def test_condition_edge_from_the_event(payload: dict[str, Any], credited: str) -> None:
    pipeline = stageflow.Pipeline.from_dict(REPEATED_TARGETS, registry=stageflow.StageRegistry())
    coverage = measure_coverage(pipeline, [[finished("pick", payload)]])
    assert [str(e) for e, hits in coverage.edge_hits.items() if hits] == [credited]


def test_coverage_names_error_edges_never_taken() -> None:
    (success, *_) = load_cases(CASES / "fetch.stageflow.yaml")
    (coverage,) = coverage_of([run_case(success)])
    assert coverage.missed_nodes == ("offline", "broken")
    assert [str(e) for e in coverage.missed_edges] == [
        "fetch -[on_error 0]-> offline",
        "fetch -[fallback]-> broken",
    ]


def test_coverage_tells_error_edges_to_one_target_apart_by_error_path() -> None:
    handlers = [
        {"next": "offline", "errors": ["TimeoutError"], "error_path": "slow"},
        {"next": "offline", "errors": ["ConnectionError"], "error_path": "failure"},
    ]
    changes = {"retry": None, "on_error": handlers, "fallback": "offline"}
    errors = [{"type": "ConnectionResetError"}]
    result = run_case(fetch_case(changes, mocks={"Fetch": {"errors": errors}}))
    (coverage,) = coverage_of([result])
    taken = [str(e) for e, hits in coverage.edge_hits.items() if hits]
    assert taken == ["fetch -[on_error 1]-> offline"]


def test_measure_coverage_from_plain_session_histories() -> None:
    pipeline = stageflow.Pipeline.load(REFERENCE / "pipeline.json", registry=reference_registry())
    coverage = measure_coverage(pipeline, [])
    assert coverage.runs == 0
    assert len(coverage.missed_nodes) == 6
    assert len(coverage.missed_edges) == 6
    assert coverage.to_dict()["missed_edges"][0]["label"] == "start -[next]-> decide"


# ----------------------------------------------------------------- report


def test_run_case_files_reports_broken_files_and_cases_and_runs_the_rest(
    tmp_path: Path, write_cases: Callable[..., Path]
) -> None:
    good = write_cases([{"name": "ok", "payload": SHORT}, {"name": "bad", "mocks": {"Nope": {}}}])
    broken = tmp_path / "broken.stageflow.json"
    broken.write_text("{")
    missing = tmp_path / "missing.stageflow.json"
    report = run_case_files([broken, good, missing])
    assert [e.file for e in report.file_errors] == [broken, missing]
    assert [r.outcome for r in report.results] == [CaseOutcome.PASSED, CaseOutcome.ERROR]
    assert (report.passed, report.failed, report.errors) == (1, 0, 3)
    assert not report.ok
    assert "'Nope', which is not registered" in report.results[1].render()
    assert report.render().endswith("1 passed, 0 failed, 3 errors")
    assert json.loads(json.dumps(report.to_dict()))["errors"] == 3


@pytest.mark.parametrize("parallel", [False, True])
def test_a_stage_that_calls_sys_exit_is_an_error_of_its_case(
    tmp_path: Path, parallel: bool
) -> None:
    # It ended run_case_files, and `stageflow test` with the stage's exit code and no
    # report: sys.exit(0) said every case passed, the failing ones too.
    (tmp_path / "exits.py").write_text(
        "import sys\n"
        "import anyio\n"
        "import stageflow\n"
        "registry = stageflow.StageRegistry()\n"
        "@registry.register('Exits')\n"
        "async def exits(ctx):\n"
        "    sys.exit(0)\n"
        "@registry.register('Waits')\n"
        "async def waits(ctx):\n"
        "    await anyio.sleep(10)\n"
        "    return {}\n"
    )
    nodes: list[dict[str, Any]] = [
        {"id": "s", "type": "stage", "stage": "Exits", "next": "end"},
        {"id": "end", "type": "terminal"},
    ]
    if parallel:  # the session raises it in the parallel node's group
        nodes[:1] = [
            {"id": "fan", "type": "parallel", "children": ["s", "w"], "next": "end"},
            {"id": "s", "type": "stage", "stage": "Exits"},
            {"id": "w", "type": "stage", "stage": "Waits"},
        ]
    pipeline = {"api_version": "1.0", "entry": nodes[0]["id"], "nodes": nodes}
    exits = tmp_path / "exits.stageflow.json"
    document = {"pipeline": pipeline, "stages": "exits.py", "cases": [{"name": "exits"}]}
    exits.write_text(json.dumps(document))
    report = run_case_files([exits, CASES / "failing.cases.json"])
    assert [r.outcome for r in report.results] == [
        CaseOutcome.ERROR,
        CaseOutcome.FAILED,
        CaseOutcome.FAILED,
    ]
    (failure,) = report.results[0].failures
    assert failure.message.startswith(
        "a stage called sys.exit(0), which would end the whole test run"
    )


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        ("GeneratorExit()", "a stage raised GeneratorExit, a BaseException that would end"),
        ("Halt('stop here')", "a stage raised Halt (stop here), a BaseException that would end"),
    ],
)
def test_a_stage_that_raises_another_base_exception_is_an_error_of_its_case(
    tmp_path: Path, raised: str, said: str
) -> None:
    # As for sys.exit(): it ended run_case_files, and `stageflow test` with a
    # traceback and no report of the other cases.
    (tmp_path / "halts.py").write_text(
        "import stageflow\n"
        "class Halt(BaseException):\n"
        "    pass\n"
        "registry = stageflow.StageRegistry()\n"
        "@registry.register('Halts')\n"
        "async def halts(ctx):\n"
        f"    raise {raised}\n"
    )
    nodes = [
        {"id": "s", "type": "stage", "stage": "Halts", "next": "end"},
        {"id": "end", "type": "terminal"},
    ]
    document = {
        "pipeline": {"api_version": "1.0", "entry": "s", "nodes": nodes},
        "stages": "halts.py",
        "cases": [{"name": "halts"}],
    }
    halts = tmp_path / "halts.stageflow.json"
    halts.write_text(json.dumps(document))
    report = run_case_files([halts, CASES / "failing.cases.json"])
    assert [r.outcome for r in report.results] == [
        CaseOutcome.ERROR,
        CaseOutcome.FAILED,
        CaseOutcome.FAILED,
    ]
    (failure,) = report.results[0].failures
    assert failure.message.startswith(said), failure.message


def test_run_case_files_with_extra_stages_modules(tmp_path: Path) -> None:
    shutil.copy(REFERENCE / "pipeline.json", tmp_path / "pipeline.json")
    path = tmp_path / "nostages.stageflow.json"
    path.write_text(
        json.dumps({"pipeline": "pipeline.json", "cases": [{"name": "n", "payload": SHORT}]})
    )
    report = run_case_files([path], stages_modules=[str(REFERENCE / "stages.py")])
    assert report.ok, report.render()


def test_a_stages_module_by_name_and_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mystages.py").write_text(
        (REFERENCE / "stages.py").read_text().replace("registry", "REGISTRY")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    shutil.copy(REFERENCE / "pipeline.json", tmp_path / "pipeline.json")
    document = {
        "pipeline": "pipeline.json",
        "stages": "mystages:REGISTRY",
        "cases": [{"name": "n", "payload": SHORT}],
    }
    path = tmp_path / "named.stageflow.json"
    path.write_text(json.dumps(document))
    assert run_case_files([path]).ok
    document["stages"] = ["mystages:nothing", "no_such_stages_module"]
    path.write_text(json.dumps(document))
    (result,) = run_case_files([path]).results
    text = result.render()
    assert "stages module mystages:nothing: module 'mystages' has no attribute 'nothing'" in text
    assert "stages module no_such_stages_module: no module named 'no_such_stages_module'" in text


def test_an_empty_report_is_not_ok() -> None:
    assert not Report(results=()).ok
