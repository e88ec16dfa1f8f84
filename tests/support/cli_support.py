"""What the command-line tests share: the reference example's paths, files to pass, logging.

The ``cli`` fixture that calls ``main(argv)`` in-process is in
:mod:`cli_fixtures` (registered for every test in ``conftest.py``); it returns
an :class:`Outcome`. A test module that runs the CLI imports
``restore_logging`` from here (an autouse fixture: the CLI configures logging,
each test of that module restores it).
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "reference"
PIPELINE = str(EXAMPLE / "pipeline.json")
STAGES = str(EXAMPLE / "stages.py")
SUBCOMMANDS = ("run", "validate", "schema", "graph", "stages", "test")

# A stages module whose one stage, ``Boom``, fails.
FAILING_STAGES = """
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Boom")
    async def boom(ctx):
        raise ValueError("the disk is full")
"""


@attrs.frozen
class Outcome:
    """What one ``main(argv)`` call did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Standard output, parsed as JSON."""
        return json.loads(self.out)


Cli = Callable[..., Outcome]


def write_json(path: Path, value: Any) -> str:
    """Write ``value`` to ``path`` as JSON; the path as a command-line argument."""
    path.write_text(json.dumps(value, indent=2))
    return str(path)


def write_module(path: Path, source: str) -> str:
    """Write ``source`` (dedented) to ``path``; the path as a command-line argument."""
    path.write_text(textwrap.dedent(source))
    return str(path)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what ``stageflow.logging.configure`` (called by ``main``) did to the process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()
