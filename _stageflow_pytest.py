"""The stageflow pytest plugin: stageflow case files are collected as tests.

Registered as the ``stageflow`` plugin through the ``pytest11`` entry point,
so it is active wherever stageflow is installed; ``-p no:stageflow`` turns
it off. Files whose names match one of the ``stageflow_case_files`` ini
patterns (default ``*.stageflow.json``, ``*.stageflow.yaml``,
``*.stageflow.yml``; names match in any case) are collected, one test item
per case; a failing case shows every failed expectation with its diff.
``--stageflow-coverage`` prints the node and edge coverage of the cases
that ran.

This module sits outside the ``stageflow`` package on purpose: pytest loads
plugins before coverage tools start measuring, and this module imports
nothing from stageflow until a case file is collected. So installing
stageflow adds no import cost to unrelated test runs, and coverage of
stageflow itself is measured correctly. The items live in
``stageflow.testing._plugin``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Final

import pytest

__all__ = ["pytest_addoption", "pytest_collect_file", "pytest_terminal_summary"]

DEFAULT_PATTERNS: Final = ("*.stageflow.json", "*.stageflow.yaml", "*.stageflow.yml")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the plugin's ini options and its command-line flag."""
    parser.addini(
        "stageflow_case_files",
        "glob patterns of stageflow case files to collect (matched against file names, "
        "in any case)",
        type="linelist",
        default=list(DEFAULT_PATTERNS),
    )
    parser.addini(
        "stageflow_stages",
        "stage modules (module names, or .py paths relative to the rootdir) for every case",
        type="linelist",
        default=[],
    )
    group = parser.getgroup("stageflow")
    group.addoption(
        "--stageflow-coverage",
        action="store_true",
        default=False,
        help="print which pipeline nodes and edges the stageflow cases exercised",
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``file_path`` as a case file if its name matches a pattern."""
    patterns: list[str] = parent.config.getini("stageflow_case_files")
    if not _matches(file_path.name, patterns):
        return None
    from stageflow.testing._plugin import CaseFile

    collector: pytest.Collector = CaseFile.from_parent(parent, path=file_path)
    return collector


def _matches(name: str, patterns: list[str]) -> bool:
    """Whether a file name matches one of the patterns, in any case.

    As stageflow reads suffixes everywhere else (``load_cases`` and ``stageflow
    test`` read ``CASES.STAGEFLOW.YAML`` as YAML), and alike on every platform:
    ``fnmatch.fnmatch`` ignores case on Windows only.
    """
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """With ``--stageflow-coverage``, print the coverage of the cases that ran."""
    if config.getoption("stageflow_coverage"):
        from stageflow.testing._plugin import write_coverage

        write_coverage(terminalreporter, config)
