"""The ``stageflow`` command line.

Installed as the ``stageflow`` command (and runnable as ``python -m stageflow``)::

    stageflow run PIPELINE [--payload JSON|@FILE] [--stages MODULE] [--input TYPE=JSON ...]
    stageflow validate PIPELINE...      every problem, with its location
    stageflow schema [--with-stages]    the pipeline JSON Schema
    stageflow graph PIPELINE [--format mermaid|dot|json]
    stageflow stages [--json]           the stage catalogue
    stageflow test CASES...             run test case files
    stageflow worker --store URL        run the stored sessions of a session store
    stageflow sessions ACTION ...       list, show, send, cancel, purge stored sessions
    stageflow ui [SNAPSHOT]             serve the web inspector

``stageflow COMMAND --help`` describes each command; docs/cli.md has the
details. The exit status says what happened (:class:`ExitCode`).
"""

from __future__ import annotations

from stageflow._cli._app import main
from stageflow._cli._common import ExitCode

__all__ = ["ExitCode", "main"]
