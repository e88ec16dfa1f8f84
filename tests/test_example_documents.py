"""The documents example (examples/documents): a map over pages, a subpipeline per page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from example_support import load_example

import stageflow

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "documents"

pytestmark = pytest.mark.anyio

KINDS = [
    "invoice",
    "letter",
    "receipt",
    "blank",
    "invoice",
    "other",
    "receipt",
    "letter",
    "invoice",
    "other",
]
FIELDS = [
    {"kind": "invoice", "number": "1041", "total": 120.5},
    None,
    {"kind": "receipt", "number": None, "total": 19.99},
    None,
    {"kind": "invoice", "number": "1042", "total": 80.0},
    None,
    {"kind": "receipt", "number": None, "total": 5.25},
    None,
    {"kind": "invoice", "number": None, "total": None},
    None,
]
EXPECTED = {
    "status": "completed",
    "result": {"status": "summarised"},
    "artifacts": {
        "summary": {
            "pages": 10,
            "words": 61,
            "by_kind": {"blank": 1, "invoice": 3, "letter": 2, "other": 2, "receipt": 2},
            "extracted_pages": [0, 2, 4, 6, 8],
            "total_amount": 225.74,
        },
        "pages.kinds": KINDS,
        "pages.fields": FIELDS,
        "pages.outcomes": [{"extracted": kind in ("invoice", "receipt")} for kind in KINDS],
    },
}


@pytest.fixture(scope="module")
def example() -> tuple[ModuleType, ModuleType]:
    """(stages, run) of examples/documents."""
    return load_example("documents")


async def _read(
    example: tuple[ModuleType, ModuleType], document: dict[str, Any]
) -> tuple[stageflow.SessionResult, Any]:
    stages, run = example
    activity = stages.Activity()
    result = await run.read_document(document, stages.build_registry(activity))
    return result, activity


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_script_prints_the_result_as_json(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--backend", backend],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(proc.stdout) == EXPECTED


async def test_result_and_artifacts(example: tuple[ModuleType, ModuleType]) -> None:
    result, _ = await _read(example, example[1].DOCUMENT)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert {"status": "completed", "result": result.result, "artifacts": result.artifacts} == (
        EXPECTED
    )


async def test_pages_finish_out_of_order_but_are_collected_in_page_order(
    example: tuple[ModuleType, ModuleType],
) -> None:
    pages = [f"Invoice No. {n}\nTotal: {n}.00" for n in range(12)]
    result, _ = await _read(example, {"pages": pages})
    finished = [e.payload["index"] for e in result.history if e.type == "map_item_completed"]
    assert sorted(finished) == list(range(12))
    assert finished != sorted(finished)
    assert [f["number"] for f in result.artifacts["pages.fields"]] == [str(n) for n in range(12)]
    assert result.artifacts["summary"]["total_amount"] == sum(range(12))


async def test_at_most_four_pages_are_worked_on_at_once(
    example: tuple[ModuleType, ModuleType],
) -> None:
    result, activity = await _read(example, example[1].DOCUMENT)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert activity.peak == 4  # the map's concurrency, reached and never exceeded
    assert activity.active == 0


async def test_no_pages_give_an_empty_summary(example: tuple[ModuleType, ModuleType]) -> None:
    result, activity = await _read(example, {"pages": []})
    assert result.artifacts["pages.kinds"] == []
    assert result.artifacts["summary"]["pages"] == 0
    assert activity.peak == 0


async def test_inner_events_carry_the_page_path(example: tuple[ModuleType, ModuleType]) -> None:
    result, _ = await _read(example, example[1].DOCUMENT)
    page3 = [
        (e.type, e.node_id)
        for e in result.history
        if e.path == "each_page/3/page" and e.type == "node_started"
    ]
    assert page3 == [
        ("node_started", "clean"),
        ("node_started", "classify"),
        ("node_started", "route"),
        ("node_started", "skipped"),
    ]
    item = {(e.type, e.node_id) for e in result.history if e.path == "each_page/3"}
    assert {("map_item_started", "each_page"), ("node_started", "page")} <= item
    assert ("map_item_completed", "each_page") in item
    extract = {
        e.path for e in result.history if e.node_id == "extract" and e.type == "node_started"
    }
    assert extract == {f"each_page/{i}/page" for i in (0, 2, 4, 6, 8)}
