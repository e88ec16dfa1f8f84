"""The stageflow error tree.

Every error stageflow raises on purpose derives from :class:`StageflowError`,
so ``except StageflowError`` catches them all, and the ones raised for several
parallel branches at once are also ``ExceptionGroup`` so ``except*`` works::

    StageflowError
    ├── DefinitionError                 a document (pipeline, rule, case) is wrong
    │   ├── PipelineValidationError     .problems: every problem, with its location
    │   └── JsonLogicError              a JsonLogic rule cannot be evaluated
    ├── RegistryError                   stage registration and lookup
    │   ├── StageNotFoundError          (also KeyError)
    │   └── StageConflictError          a name registered twice
    ├── ContextError                    reading or writing the context
    │   ├── ContextPathError            a malformed path
    │   └── NonJsonValueError           a value that JSON cannot carry (also TypeError)
    ├── SessionStateError               the session cannot do that now
    ├── NodeError                       a node failed at run time (.node_id)
    │   ├── StageError                  a stage raised (.attempt, chained __cause__)
    │   ├── StageOutputError            a stage returned something unusable
    │   ├── ConditionError              no condition matched and no ``else``
    │   ├── MergeConflictError          branches wrote one path with different values
    │   └── LimitExceededError          a session limit was hit (.limit, .value)
    └── ParallelRunError                several branches failed (also ExceptionGroup)

Messages are built from the attributes and say what happened, where, and
how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

__all__ = [
    "ConditionError",
    "ContextError",
    "ContextPathError",
    "DefinitionError",
    "JsonLogicError",
    "LimitExceededError",
    "MergeConflictError",
    "NodeError",
    "NonJsonValueError",
    "ParallelRunError",
    "PipelineValidationError",
    "Problem",
    "RegistryError",
    "SessionStateError",
    "StageConflictError",
    "StageError",
    "StageNotFoundError",
    "StageOutputError",
    "StageflowError",
]


class StageflowError(Exception):
    """Root of every error stageflow raises on purpose."""

    def to_dict(self) -> dict[str, Any]:
        """Describe the error as JSON: its type, message and cause chain."""
        return describe_exception(self)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Describe any exception as a JSON object (type, message, attributes, causes).

    Used for ``SessionResult.error``, for history events and for the error
    object that error edges put into the context.
    """
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for attr in ("node_id", "attempt", "stage", "limit", "path"):
        value = getattr(exc, attr, None)
        if isinstance(value, str | int | float | bool):
            out[attr] = value
    causes: list[dict[str, str]] = []
    seen = {id(exc)}
    cause = _cause_of(exc)
    while cause is not None and id(cause) not in seen and len(causes) < 16:
        seen.add(id(cause))
        causes.append({"type": type(cause).__name__, "message": str(cause)})
        cause = _cause_of(cause)
    out["causes"] = causes
    if isinstance(exc, BaseExceptionGroup):
        out["errors"] = [describe_exception(e) for e in exc.exceptions]
    return out


def _cause_of(exc: BaseException) -> BaseException | None:
    """The exception shown as "caused by" in a traceback (``raise ... from None`` hides it)."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


class DefinitionError(StageflowError, ValueError):
    """A document (pipeline, JsonLogic rule, test case) is not valid."""


@attrs.frozen
class Problem:
    """One problem found while loading a document.

    Attributes:
        location: where it is, as a JSON path such as ``$.nodes[3].next``.
        message: what is wrong and how to fix it, naming the node.
    """

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PipelineValidationError(DefinitionError):
    """A pipeline document has one or more problems; all are listed in ``problems``."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"pipeline{where} is not valid ({count} problem{'s' if count != 1 else ''}):\n{lines}"
        )


class JsonLogicError(DefinitionError):
    """A JsonLogic rule cannot be evaluated (unknown operator, bad arity, too deep)."""


class RegistryError(StageflowError):
    """Registering or looking up a stage failed."""


class StageNotFoundError(RegistryError, KeyError):
    """No stage is registered under the requested name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        hint = ", ".join(self.known) if self.known else "none are registered"
        super().__init__(
            f"no stage named {name!r} is registered (known: {hint}); register it with "
            f"@registry.register({name!r}) or fix the name"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StageConflictError(RegistryError):
    """A stage name is registered twice."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        self.first = first
        self.second = second
        super().__init__(
            f"stage name {name!r} is registered by both {first} and {second}; "
            "rename one of them or register into a separate StageRegistry"
        )


class ContextError(StageflowError):
    """Reading or writing the session context failed."""


class ContextPathError(ContextError, ValueError):
    """A context path is malformed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"context path {path!r} is not valid: {reason}; "
            "use dotted keys and list indexes such as 'order.items.0.sku'"
        )


class NonJsonValueError(ContextError, TypeError):
    """A value that JSON cannot represent was about to enter the context or history."""

    def __init__(self, where: str, value: object, *, detail: str = "") -> None:
        self.where = where
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{where} is a {type(value).__name__}, which is not a JSON value{extra}; "
            "return only dict, list, str, int, float, bool or None"
        )


class SessionStateError(StageflowError, RuntimeError):
    """The session is in a state where the requested operation is impossible."""


class NodeError(StageflowError):
    """A node failed while the session ran.

    Attributes:
        node_id: the id of the node that failed.
    """

    def __init__(self, message: str, *, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(message)


class StageError(NodeError):
    """A stage raised; the original exception is the ``__cause__``."""

    def __init__(self, message: str, *, node_id: str, stage: str, attempt: int) -> None:
        self.stage = stage
        self.attempt = attempt
        super().__init__(message, node_id=node_id)


class StageOutputError(NodeError):
    """A stage returned something that cannot be written to the context."""


class ConditionError(NodeError):
    """No condition of a condition node matched and it has no ``else``."""


class MergeConflictError(NodeError):
    """Parallel branches wrote different values to the same context path."""

    def __init__(self, *, node_id: str, path: str, branches: Sequence[str]) -> None:
        self.path = path
        self.branches = tuple(branches)
        names = " and ".join(repr(b) for b in self.branches)
        super().__init__(
            f"parallel node {node_id!r}: branches {names} wrote different values to {path!r}; "
            f'declare a reducer for it (pipeline "reducers": {{"{path}": "append"}}) '
            "or write to different paths",
            node_id=node_id,
        )


class LimitExceededError(NodeError):
    """A session limit (steps, history size, depth, ...) was reached."""

    def __init__(self, *, limit: str, value: int | float, node_id: str) -> None:
        self.limit = limit
        self.value = value
        super().__init__(
            f"session limit {limit}={value} reached at node {node_id!r}; "
            f'raise "limits.{limit}" in the pipeline or the Session, or look for a loop',
            node_id=node_id,
        )


class ParallelRunError(StageflowError, ExceptionGroup[Exception]):
    """Several parallel branches failed; each failure is in ``exceptions``."""

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> ParallelRunError:
        self = super().__new__(cls, message, list(exceptions))
        return self

    def derive(self, excs: Sequence[Exception]) -> ParallelRunError:  # type: ignore[override]
        """Build a group of the same type around a subset (``except*`` support)."""
        return ParallelRunError(self.message, excs)
