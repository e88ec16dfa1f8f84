"""The ``cli`` fixture: ``stageflow``'s ``main(argv)`` called in-process.

A pytest plugin, registered for every test in ``conftest.py``
(``pytest_plugins``); the types it returns are in :mod:`cli_support`.
"""

from __future__ import annotations

import pytest
from cli_support import Cli, Outcome

from stageflow.cli import main


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Call ``main(list(argv))``: its exit code, and what it printed to stdout and stderr."""

    def call(*argv: str) -> Outcome:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return call
