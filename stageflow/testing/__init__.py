"""The pipeline tester: cases of payload, inputs and mocks, checked in virtual time.

A *case file* (JSON or YAML, schema ``schemas/test-case.schema.json``) names
a pipeline, the modules its stages come from, and one or more cases. Each
case gives a payload, scripted inputs, stage mocks and limits, and what the
run must produce: status, result, artifacts, the path of visited nodes and
events. :func:`run_case` runs one case on trio with
``trio.testing.MockClock(autojump_threshold=0)``, so an hour of sleeping
costs nothing, and reports every failed expectation with a diff.
:func:`run_case_files` runs whole files and measures which nodes and edges
the cases exercised (:class:`Coverage`).

From pytest, case files named ``*.stageflow.json`` / ``*.stageflow.yaml``
are collected as tests, one per case (see ``docs/testing.md``).

Example::

    from stageflow.testing import load_cases, run_case

    for case in load_cases("tests/cases/orders.stageflow.json"):
        result = run_case(case)
        assert result.passed, result.render()
"""

from stageflow.testing._coverage import Coverage, Edge, EdgeKind, measure_coverage
from stageflow.testing._load import load_cases
from stageflow.testing._mocks import mock_registry
from stageflow.testing._model import (
    DEFAULT_MAX_TIME,
    Case,
    CaseLimits,
    CaseValidationError,
    ErrorExpectation,
    EventExpectation,
    Expectations,
    MockError,
    ScriptedInput,
    StageMock,
)
from stageflow.testing._report import FileError, Report, coverage_of, run_case_files
from stageflow.testing._result import CaseOutcome, CaseResult, Failure, InputRecord
from stageflow.testing._run import run_case

__all__ = [
    "DEFAULT_MAX_TIME",
    "Case",
    "CaseLimits",
    "CaseOutcome",
    "CaseResult",
    "CaseValidationError",
    "Coverage",
    "Edge",
    "EdgeKind",
    "ErrorExpectation",
    "EventExpectation",
    "Expectations",
    "Failure",
    "FileError",
    "InputRecord",
    "MockError",
    "Report",
    "ScriptedInput",
    "StageMock",
    "coverage_of",
    "load_cases",
    "measure_coverage",
    "mock_registry",
    "run_case",
    "run_case_files",
]
