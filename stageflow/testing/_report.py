"""Running case files: every case, one report, coverage per pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import attrs

from stageflow import StageflowError
from stageflow._engine._backend import exit_request, is_interrupt
from stageflow._errors import shown_text
from stageflow.testing._coverage import Coverage, measure_coverage
from stageflow.testing._load import load_cases
from stageflow.testing._model import Case, check_list
from stageflow.testing._result import CaseOutcome, CaseResult, Failure, display_path
from stageflow.testing._run import run_case

__all__ = ["FileError", "Report", "coverage_of", "run_case_files"]


@attrs.frozen
class FileError:
    """A case file that could not be read.

    Attributes:
        file: the case file.
        message: what is wrong with it and how to fix it.
    """

    file: Path
    message: str


def coverage_of(results: Sequence[CaseResult]) -> tuple[Coverage, ...]:
    """Coverage of each pipeline by the runs in ``results``, one entry per pipeline.

    Results are grouped by pipeline digest (the same document in several case
    files counts as one pipeline); cases that could not run are left out.
    """
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        if result.pipeline is not None:
            groups.setdefault(result.pipeline.digest, []).append(result)
    coverages = []
    for group in groups.values():
        first = group[0]
        assert first.pipeline is not None
        source = _display(first.case.pipeline, first.case.file)
        coverages.append(
            measure_coverage(first.pipeline, (r.history for r in group), source=source)
        )
    return tuple(coverages)


def _display(pipeline: object, case_file: Path | None) -> str:
    if isinstance(pipeline, Path):
        return display_path(pipeline)
    return f"inline in {display_path(case_file)}" if case_file is not None else "inline"


@attrs.frozen
class Report:
    """The outcome of :func:`run_case_files`.

    Attributes:
        results: one result per case, in file and case order.
        file_errors: case files that could not be read.
        coverage: coverage of each pipeline by the cases that ran it.
    """

    results: tuple[CaseResult, ...]
    file_errors: tuple[FileError, ...] = ()
    coverage: tuple[Coverage, ...] = ()

    @property
    def passed(self) -> int:
        """How many cases passed."""
        return sum(r.outcome is CaseOutcome.PASSED for r in self.results)

    @property
    def failed(self) -> int:
        """How many cases ran and failed an expectation."""
        return sum(r.outcome is CaseOutcome.FAILED for r in self.results)

    @property
    def errors(self) -> int:
        """How many cases, or whole case files, could not run."""
        return sum(r.outcome is CaseOutcome.ERROR for r in self.results) + len(self.file_errors)

    @property
    def ok(self) -> bool:
        """Whether at least one case ran and every case passed."""
        return bool(self.results) and self.passed == len(self.results) and not self.file_errors

    def render(self, *, coverage: bool = True) -> str:
        """The report as text: failures with their diffs, coverage, and a closing count."""
        blocks = [f"ERROR {e.file}: {e.message}" for e in self.file_errors]
        blocks.extend(r.render() for r in self.results if not r.passed)
        if coverage:
            blocks.extend(c.render() for c in self.coverage)
        blocks.append(f"{self.passed} passed, {self.failed} failed, {self.errors} errors")
        return "\n\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "ok": self.ok,
            "results": [r.to_dict() for r in self.results],
            "file_errors": [{"file": str(e.file), "message": e.message} for e in self.file_errors],
            "coverage": [c.to_dict() for c in self.coverage],
        }


def _errored(case: Case, exc: Exception) -> CaseResult:
    return CaseResult(case=case, outcome=CaseOutcome.ERROR, failures=(Failure("setup", str(exc)),))


def _stopped(case: Case, exc: BaseException) -> CaseResult:
    """The error of a case whose stage raised a ``BaseException`` that is no ``Exception``."""
    exiting = exit_request(exc)
    if exiting is not None:
        what = f"called sys.exit({shown_text(repr, exiting.code)}), which"
    else:
        detail = shown_text(str, exc)
        what = (
            f"raised {type(exc).__name__}{f' ({detail})' if detail else ''}, a BaseException that"
        )
    message = (
        f"a stage {what} would end the whole test run; make the stage raise an exception "
        "instead (a case can expect its error)"
    )
    return CaseResult(case=case, outcome=CaseOutcome.ERROR, failures=(Failure("run", message),))


def run_case_files(
    paths: Sequence[str | PathLike[str]], *, stages_modules: Sequence[str] = ()
) -> Report:
    """Run every case of every case file and report, with coverage per pipeline.

    A case file or case that cannot be read or run (bad file, bad pipeline,
    unknown stages module, a stage that calls ``sys.exit()`` or raises another
    ``BaseException`` that is no ``Exception``, Ctrl-C aside) is reported as an
    error; the others still run.

    Args:
        paths: case files (``.json``, ``.yaml``, ``.yml``).
        stages_modules: stage modules for every case, in addition to each
            file's own ``stages`` (module names, or ``.py`` paths).

    Raises:
        TypeError: ``paths`` or ``stages_modules`` is one path or name, not a list.
    """
    check_list("run_case_files", "paths", paths)
    check_list("run_case_files", "stages_modules", stages_modules)
    results: list[CaseResult] = []
    file_errors: list[FileError] = []
    for path in paths:
        try:
            cases = load_cases(path, stages_modules=stages_modules)
        except (StageflowError, OSError) as exc:
            file_errors.append(FileError(Path(path), str(exc)))
            continue
        for case in cases:
            try:
                results.append(run_case(case))
            except (StageflowError, OSError) as exc:
                results.append(_errored(case, exc))
            except BaseException as exc:
                # A stage's sys.exit() (or GeneratorExit, or a BaseException of its
                # own) ended the run, and `stageflow test` with no report: sys.exit(0)
                # said every case passed. Ctrl-C and an engine's own error go on up.
                if isinstance(exc, Exception) or is_interrupt(exc):
                    raise
                results.append(_stopped(case, exc))
    return Report(tuple(results), tuple(file_errors), coverage_of(results))
