"""What running a case gives: its outcome, the failed expectations, and the run itself."""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from stageflow import Event, Pipeline, SessionStatus, StageflowError
from stageflow._errors import describe_exception
from stageflow._json import thaw
from stageflow.testing._model import Case, ScriptedInput

__all__ = ["CaseOutcome", "CaseResult", "Failure", "InputRecord", "display_path"]


def display_path(path: Path) -> str:
    """``path`` relative to the current directory when it is under it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class CaseOutcome(enum.StrEnum):
    """How a case ended."""

    PASSED = "passed"
    """Every expectation held."""
    FAILED = "failed"
    """The run finished and at least one expectation did not hold."""
    ERROR = "error"
    """The case could not run: a bad case, pipeline or stages module."""


@attrs.frozen
class Failure:
    """One expectation that did not hold.

    Attributes:
        field: what was checked (``status``, ``artifacts``, ``path``,
            ``events[1]``, ``inputs``, ``limit``, ...).
        message: what went wrong, in one line.
        details: a diff or listing that shows it (may be empty).
    """

    field: str
    message: str
    details: str = ""

    def render(self) -> str:
        """The failure as text: ``field: message`` and the details indented below."""
        head = f"{self.field}: {self.message}"
        if not self.details:
            return head
        return head + "\n" + textwrap.indent(self.details, "    ")


@attrs.frozen
class InputRecord:
    """What happened to one scripted input.

    Attributes:
        input: the scripted input.
        sent_at: virtual seconds from the start when it was sent (``None``: never sent).
        delivered: how many waiting stages received it.
        queued: whether it was kept for a later wait.
        error: why the session rejected it, if it did.
    """

    input: ScriptedInput
    sent_at: float | None = None
    delivered: int = 0
    queued: bool = False
    error: str | None = None


@attrs.frozen
class CaseResult:
    """The outcome of one case (see :func:`~stageflow.testing.run_case`).

    Attributes:
        case: the case that ran.
        outcome: passed, failed, or error (the case could not run).
        failures: every expectation that did not hold, in a fixed order.
        checks: how many expectations were checked.
        status: how the session ended (``None`` if it never ran).
        result: the terminal's result.
        artifacts: the artifacts.
        error: the session's error.
        history: every event of the run.
        elapsed: virtual seconds the run took.
        limit_exceeded: the limit that ended the run, if one did.
        inputs: what happened to each scripted input.
        pipeline: the pipeline that ran (``None`` if it could not be loaded).
    """

    case: Case
    outcome: CaseOutcome
    failures: tuple[Failure, ...] = ()
    checks: int = 0
    status: SessionStatus | None = None
    result: Mapping[str, Any] | None = None
    artifacts: Mapping[str, Any] = attrs.field(factory=dict)
    error: StageflowError | None = None
    history: Sequence[Event] = attrs.field(default=(), repr=False)
    elapsed: float = 0.0
    limit_exceeded: str | None = None
    inputs: tuple[InputRecord, ...] = ()
    pipeline: Pipeline | None = attrs.field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return self.outcome is CaseOutcome.PASSED

    @property
    def visited(self) -> tuple[str, ...]:
        """Ids of the nodes started, in order (from the ``node_started`` events)."""
        return tuple(
            e.node_id for e in self.history if e.type == "node_started" and e.node_id is not None
        )

    def render(self) -> str:
        """The result as text: a headline, then every failure with its diff."""
        where = f" ({display_path(self.case.file)} {self.case.location})" if self.case.file else ""
        name = f"case {self.case.name!r}{where}"
        if self.outcome is CaseOutcome.PASSED:
            return f"PASSED {name}: {self.checks} checks held; {self._summary()}"
        if self.outcome is CaseOutcome.ERROR:
            body = "\n".join(f.render() for f in self.failures)
            return f"ERROR {name}: the case could not run\n" + textwrap.indent(body, "  ")
        lines = [
            f"FAILED {name}: {len(self.failures)} of {self.checks} checks failed",
            *(textwrap.indent(f.render(), "  ") for f in self.failures),
            f"  run: {self._summary()}",
        ]
        return "\n".join(lines)

    def _summary(self) -> str:
        status = self.status.value if self.status is not None else "not run"
        path = " -> ".join(self.visited) or "no nodes"
        return (
            f"status {status}, {len(self.history)} events, {self.elapsed:g} virtual seconds; "
            f"path: {path}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON object (without the history)."""
        return {
            "name": self.case.name,
            "file": str(self.case.file) if self.case.file is not None else None,
            "outcome": self.outcome.value,
            "checks": self.checks,
            "failures": [attrs.asdict(f) for f in self.failures],
            "status": self.status.value if self.status is not None else None,
            "result": thaw(self.result),
            "artifacts": thaw(self.artifacts),
            "error": describe_exception(self.error) if self.error is not None else None,
            "path": list(self.visited),
            "events": len(self.history),
            "elapsed": self.elapsed,
            "limit_exceeded": self.limit_exceeded,
        }
