"""Paths and case builders shared by the pipeline tester's tests (``test_testing*.py``).

The ``write_cases`` fixture is in :mod:`tester_fixtures` (registered for every
test in ``conftest.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import stageflow
from stageflow.testing import Case, load_cases, run_case
from stageflow.testing._load import cases_from_document

ROOT = Path(__file__).parents[2]
CASES = ROOT / "tests" / "cases"
REFERENCE = ROOT / "examples" / "reference"
SCHEMA_PATH = ROOT / "schemas" / "test-case.schema.json"

Doc = dict[str, Any]

# Payloads for the reference pipeline: a long text and a short one.
LONG = {"user_id": "u1", "text": "one two three four five"}
SHORT = {"user_id": "u1", "text": "hi"}


def run_one(path: Path) -> stageflow.testing.CaseResult:
    """Run the one case of the case file ``path``."""
    (case,) = load_cases(path)
    return run_case(case)


def reference_registry() -> stageflow.StageRegistry:
    """The reference example's stages, loaded the way the tester loads a stages module."""
    from stageflow.testing._mocks import registry_from_modules

    return registry_from_modules([str(REFERENCE / "stages.py")])


def fetch_case(pipeline_changes: Mapping[str, Any] | None = None, **case: Any) -> Case:
    """A case for tests/cases/fetch.json, with changes to its fetch node."""
    pipeline = json.loads((CASES / "fetch.json").read_text())
    fetch = pipeline["nodes"][0]
    for key, value in (pipeline_changes or {}).items():
        if value is None:
            fetch.pop(key)
        else:
            fetch[key] = value
    targets = json.dumps(fetch)
    pipeline["nodes"] = [n for n in pipeline["nodes"] if n is fetch or f'"{n["id"]}"' in targets]
    document = {"pipeline": pipeline, "stages": "stages.py", "cases": [{"name": "n", **case}]}
    (loaded,) = cases_from_document(document, file=CASES / "virtual.json")
    return loaded


def approval_case(**case: Any) -> Case:
    """A case for tests/cases/approval.json (a 10 s pause, then waits for "approval")."""
    pipeline = case.pop("pipeline", "approval.json")
    document = {"pipeline": pipeline, "stages": "stages.py", "cases": [{"name": "n", **case}]}
    (loaded,) = cases_from_document(document, file=CASES / "virtual.json")
    return loaded
