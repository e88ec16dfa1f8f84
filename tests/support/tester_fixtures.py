"""The ``write_cases`` fixture: case files next to copies of the reference example.

A pytest plugin, registered for every test in ``conftest.py``
(``pytest_plugins``); the paths it copies from are in :mod:`tester_support`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tester_support import REFERENCE, Doc


@pytest.fixture
def write_cases(tmp_path: Path) -> Callable[..., Path]:
    """Write a case file next to copies of the reference pipeline and stages."""
    shutil.copy(REFERENCE / "pipeline.json", tmp_path / "pipeline.json")
    shutil.copy(REFERENCE / "stages.py", tmp_path / "stages.py")

    def write(cases: list[Doc], name: str = "ref.stageflow.json", **top: Any) -> Path:
        document = {"pipeline": "pipeline.json", "stages": "stages.py", **top, "cases": cases}
        path = tmp_path / name
        if name.endswith((".yaml", ".yml")):
            path.write_text(yaml.safe_dump(document))
        else:
            path.write_text(json.dumps(document, indent=2))
        return path

    return write
