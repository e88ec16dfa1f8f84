"""The pytest side of the tester: case files as collectors, cases as items.

The hooks are in the top-level ``_stageflow_pytest`` module (the ``pytest11``
entry point), which imports this module only when a case file is collected.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from stageflow import StageError, StageflowError
from stageflow._stage_modules import (
    StagesModuleError,
    is_file_ref,
    registry_of,
    split_stages_ref,
)
from stageflow.testing._load import load_cases
from stageflow.testing._model import Case
from stageflow.testing._report import coverage_of
from stageflow.testing._result import CaseResult
from stageflow.testing._run import run_case

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

__all__ = [
    "CaseFailedError",
    "CaseFile",
    "CaseItem",
    "StagesOptionError",
    "item_name",
    "stage_tracebacks",
    "write_coverage",
]

_RESULTS: Final = pytest.StashKey[list[CaseResult]]()
_PACKAGE: Final = Path(__file__).resolve().parents[1]  # stageflow/
_DEPTH: Final = 8  # errors wrap errors a few levels deep; a bound, not a tuning knob


class StagesOptionError(Exception):
    """A module of the ``stageflow_stages`` ini option cannot be imported."""


class CaseFile(pytest.File):
    """A case file: one test item per case."""

    def collect(self) -> Iterator[CaseItem]:
        """Read the file and yield an item per case (a bad file is a collection error)."""
        stages: list[str] = self.config.getini("stageflow_stages")
        extra = [_from_root(self.config.rootpath, s) for s in stages]
        for given, ref in zip(stages, extra, strict=True):
            # Imported as the cases import it: a module that cannot be is the
            # option's fault, not (as the cases would say) their case file's.
            try:
                registry_of(ref, unique_name=True)
            except StagesModuleError as exc:
                detail = f"\n{exc.detail}" if exc.detail else ""
                raise StagesOptionError(
                    f"stageflow_stages (pytest ini option) = {given}: {exc.reason}{detail}"
                ) from exc
        for case in load_cases(self.path, stages_modules=extra):
            yield CaseItem.from_parent(self, name=item_name(case.name), case=case)

    def repr_failure(  # type: ignore[override]  # Collector's takes no style
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | TerminalRepr:
        """Show a bad case file as the list of its problems."""
        if isinstance(excinfo.value, StagesOptionError):
            return str(excinfo.value)
        if isinstance(excinfo.value, StageflowError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)


def item_name(name: str) -> str:
    """The pytest test id of a case: its name, with what a terminal would act on escaped.

    A newline split pytest's report lines, and an escape sequence (``ESC [2J``)
    or a bidirectional override in a case file reached the terminal as is.
    """
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _from_root(root: Path, ref: str) -> str:
    module, attr = split_stages_ref(ref)
    if not is_file_ref(module):
        return ref
    path = str(root / module)
    return f"{path}:{attr}" if attr else path


class CaseFailedError(AssertionError):
    """A case ran and an expectation failed; ``result`` has the details."""

    def __init__(self, result: CaseResult) -> None:
        self.result = result
        super().__init__(result.render())


class CaseItem(pytest.Item):
    """One case, run as a test."""

    # No Python function behind the item. Plugins that read ``item.obj`` on
    # every item (pytest-trio's ``trio_mode``) see None, as for doctests.
    obj: object = None

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        """Run the case; raise :class:`CaseFailedError` if an expectation failed."""
        result = run_case(self.case)
        self.config.stash.setdefault(_RESULTS, []).append(result)
        if not result.passed:
            raise CaseFailedError(result)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        """Show a failed case as its rendered result, a bad case as its message."""
        if isinstance(excinfo.value, CaseFailedError):
            result = excinfo.value.result
            return result.render() + stage_tracebacks(result)
        if isinstance(excinfo.value, StageflowError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the case is: its file and name."""
        return self.path, None, f"stageflow case {self.case.name!r}"


def stage_tracebacks(result: CaseResult) -> str:
    """Where the stages that failed the run raised, when the run was not to fail so.

    The report names a stage's exception (``KeyError: 'id'``); a test run
    also needs its line. Given when the ``status`` or ``error`` check failed,
    for each stage error in the session's error whose exception came from
    the stages' own code (a mock's error has no line of the user's to show).
    """
    if result.error is None or not any(f.field in ("status", "error") for f in result.failures):
        return ""
    blocks = []
    for error in _stage_errors(result.error, 0):
        raised = error.__cause__
        assert raised is not None
        report = traceback.TracebackException.from_exception(raised)
        # From the first frame of the stage's own code: the engine's frames say nothing.
        frames = list(report.stack)
        while frames and Path(frames[0].filename).is_relative_to(_PACKAGE):
            del frames[0]
        if not frames:
            continue
        report.stack = traceback.StackSummary.from_list(frames)
        where = f"stage {error.stage!r} at node {error.node_id!r} (attempt {error.attempt})"
        blocks.append(f"\n\n{where} raised:\n" + "".join(report.format()).rstrip())
    return "".join(blocks)


def _stage_errors(error: BaseException, depth: int) -> Iterator[StageError]:
    """The stage errors in a session's error: itself, its causes, a group's members."""
    if depth > _DEPTH:
        return
    if isinstance(error, StageError):
        if error.__cause__ is not None:
            yield error
        return
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _stage_errors(member, depth + 1)
    elif isinstance(error.__cause__, StageflowError):
        yield from _stage_errors(error.__cause__, depth + 1)


def write_coverage(terminalreporter: Any, config: pytest.Config) -> None:
    """Write the coverage of the cases that ran in this pytest session."""
    terminalreporter.section("stageflow coverage")
    results: list[CaseResult] = config.stash.get(_RESULTS, [])
    coverages = coverage_of(results)
    if not coverages:
        terminalreporter.write_line("no stageflow case ran")
    for coverage in coverages:
        for line in coverage.render().splitlines():
            terminalreporter.write_line(line)
