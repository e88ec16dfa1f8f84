"""The stageflow error tree.

Every error stageflow raises on purpose derives from :class:`StageflowError`,
so ``except StageflowError`` catches them all, and the ones raised for several
parallel branches at once are also ``ExceptionGroup`` so ``except*`` works::

    StageflowError
    ├── DefinitionError                 a document (pipeline, rule, case) is wrong (also ValueError)
    │   ├── ProblemsError               .problems: every problem of a document, located
    │   │   ├── PipelineValidationError a pipeline document
    │   │   └── SnapshotError           a session snapshot cannot be restored
    │   │       ├── SnapshotVersionError    written by another snapshot format version
    │   │       └── SnapshotMismatchError   made for another pipeline, or unknown nodes
    │   └── JsonLogicError              a JsonLogic rule cannot be evaluated
    ├── RegistryError                   stage registration and lookup
    │   ├── StageNotFoundError          (also KeyError)
    │   ├── StageConflictError          a name registered twice
    │   ├── PluginLoadError             a stage pack failed to load (.pack, chained __cause__)
    │   └── PluginNotFoundError         no stage pack of that name is installed (also LookupError)
    ├── ContextError                    reading or writing the context
    │   ├── ContextPathError            a malformed path (also ValueError)
    │   └── NonJsonValueError           a value that JSON cannot carry (also TypeError)
    ├── SessionStateError               the session cannot do that now (also RuntimeError)
    ├── InputRejectedError              send_input refused an input (.input_type, .reason)
    ├── SessionTimeoutError             the session deadline passed (also TimeoutError)
    ├── NodeError                       a node failed at run time (.node_id)
    │   ├── StageError                  a stage raised (.attempt, chained __cause__)
    │   ├── StageOutputError            a stage returned something unusable
    │   ├── StageContractError          a stage used an input/event type it did not declare,
    │   │   │                           emitted an invalid event in strict mode, or used
    │   │   │                           its StageContext after its attempt ended
    │   │   └── StageSchemaError        an argument or output value broke its declared schema
    │   │                               (.kind, .key, .expected, .got; strict mode)
    │   ├── ConditionError              no condition matched and no ``else``, or a rule
    │   │                               could not be evaluated (the JsonLogicError its cause)
    │   ├── MergeConflictError          branches wrote one path with different values
    │   ├── LimitExceededError          a session limit was hit (.limit, .value)
    │   ├── SubpipelineError            a subpipeline call could not return its outputs
    │   ├── MapError                    a map's items are not a list, or too many failed
    │   ├── NodeTimeoutError            an attempt ran out of time (also TimeoutError)
    │   ├── InputTimeoutError           wait_input ran out of time (also TimeoutError)
    │   └── RestoredError               a failure recorded in a snapshot, restored
    ├── ParallelRunError                several branches failed (also ExceptionGroup)
    ├── TracingSetupError               stageflow.tracing.configure cannot set up the SDK
    └── LoggingSetupError               a bad stageflow.logging option (also ValueError)

Messages are built from the attributes and say what happened, where, and
how to fix it.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import attrs

from stageflow._json import a_json_type

__all__ = [
    "ConditionError",
    "ContextError",
    "ContextPathError",
    "DefinitionError",
    "InputRejectedError",
    "InputTimeoutError",
    "JsonLogicError",
    "LimitExceededError",
    "LoggingSetupError",
    "MapError",
    "MergeConflictError",
    "NodeError",
    "NodeTimeoutError",
    "NonJsonValueError",
    "ParallelRunError",
    "PipelineValidationError",
    "PluginLoadError",
    "PluginNotFoundError",
    "Problem",
    "ProblemsError",
    "RegistryError",
    "RestoredError",
    "RunSuspended",
    "SessionStateError",
    "SessionTimeoutError",
    "SnapshotError",
    "SnapshotMismatchError",
    "SnapshotVersionError",
    "StageConflictError",
    "StageContractError",
    "StageSchemaError",
    "StageError",
    "StageNotFoundError",
    "StageOutputError",
    "SubpipelineError",
    "StageflowError",
    "TracingSetupError",
]


class StageflowError(Exception):
    """Root of every error stageflow raises on purpose."""

    def to_dict(self) -> dict[str, Any]:
        """Describe the error as JSON: its type, message and cause chain."""
        return describe_exception(self)


def shown_text(show: Callable[[object], str], value: object) -> str:
    """``show(value)`` (``str`` or ``repr``) for a message, never raising.

    An object (a stage pack's, an input type) whose own ``__str__`` or
    ``__repr__`` fails is named by its type, so that the problem at hand is
    reported instead of the message raising.
    """
    try:
        return show(value)
    except Exception:
        return f"<{type(value).__name__} whose {show.__name__}() failed>"


def printable_text(text: str) -> str:
    r"""``text`` with what a terminal would act on escaped (``\n``, ``\x1b``): one line.

    For text written to a terminal line by line (a span's line, a console
    log line): a pipeline's name or a session id may hold line breaks and
    escape sequences, which would start a line that looks like another one,
    or recolor and clear the terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


MAX_ERROR_MESSAGE: Final = 8192
"""Characters of an exception's message that the history, logs and spans keep.

A stage's exception may carry a whole response body in its message; it is
written into several events, the snapshot and the logs. The rest is cut,
and the cut says how much was left out (``docs/errors.md``).
"""


def error_text(exc: BaseException) -> str:
    """``str(exc)`` for the history, logs and spans: never raising, cut to a bound.

    Of another library's or a stage's exception, at most
    :data:`MAX_ERROR_MESSAGE` characters are kept. stageflow's own errors
    are whole: their messages quote such an exception through this function
    already, so the count of characters cut stays the one said there.

    An exception whose ``__str__`` fails is named by its type (see
    :func:`shown_text`), so that the failure it reports is not replaced by
    one raised while reporting it.
    """
    text = shown_text(str, exc)
    if len(text) <= MAX_ERROR_MESSAGE or isinstance(exc, StageflowError):
        return text
    return _cut(text)


def _cut(text: str) -> str:
    """The first :data:`MAX_ERROR_MESSAGE` characters of ``text``, saying how many were cut."""
    return f"{text[:MAX_ERROR_MESSAGE]}... ({len(text) - MAX_ERROR_MESSAGE} more characters cut)"


MAX_TRACEBACK_PART: Final = 2 * MAX_ERROR_MESSAGE
"""Characters of one part of a traceback (a frame, an exception's message) that it keeps.

Twice a message's bound: stageflow's own error quotes a stage's (cut) message
with words of its own, and is kept whole.
"""

MAX_TRACEBACK: Final = 8 * MAX_ERROR_MESSAGE
"""Characters of a traceback (an exception and its chain) that logs and spans keep."""


def error_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and its chain, for a span's event or a log line: bounded.

    As :func:`traceback.format_exception` writes it, except that a part
    longer than :data:`MAX_TRACEBACK_PART` (a frame, or an exception's
    message, which :func:`error_text` cuts elsewhere) is cut to
    :data:`MAX_ERROR_MESSAGE` characters, and a traceback longer than
    :data:`MAX_TRACEBACK` (a chain of thousands of causes) keeps its start
    and its end. Each cut says how much was left out. An exception whose
    traceback cannot be written (a ``__notes__`` that raises) is its type
    and message, and says so.
    """
    try:
        written = traceback.format_exception(exc)
    except Exception:
        written = [
            f"{type(exc).__qualname__}: {error_text(exc)}\n",
            "(its traceback could not be written)\n",
        ]
    text = "".join(
        f"{_cut(part)}\n" if len(part) > MAX_TRACEBACK_PART else part for part in written
    )
    if len(text) <= MAX_TRACEBACK:
        return text
    half = MAX_TRACEBACK // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} more characters cut) ...\n{text[-half:]}"


def shown(value: object) -> str:
    """``repr(value)`` for a message, never raising, cut to 60 characters (ids may be huge)."""
    text = shown_text(repr, value)
    return text if len(text) <= 60 else text[:57] + "..."


_SHOWN_INT: Final = 10**40
"""Integers from here on are too long to quote in a message."""


def shown_scalar(value: object) -> str:
    """A value read from a document that may be damaged, for a message, never raising.

    A short scalar is shown as it is (``'x'``, ``2.5``, ``null``, ``true``);
    anything else by its JSON type, however long or deeply nested it is.
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and abs(value) < _SHOWN_INT:
        return repr(value)
    if isinstance(value, str) and len(value) <= 80:
        return repr(value)
    return a_json_type(value)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Describe any exception as a JSON object (type, message, attributes, causes).

    Used for ``SessionResult.error``, for history events and for the error
    object that error edges put into the context.
    """
    if isinstance(exc, RestoredError):
        restored: dict[str, Any] = dict(exc.description)
        return restored
    out: dict[str, Any] = {"type": type(exc).__name__, "message": error_text(exc)}
    for attr in ("node_id", "attempt", "stage", "limit", "path", "input_type", "timeout"):
        value = getattr(exc, attr, None)
        if isinstance(value, str | int | float | bool):
            out[attr] = value
    causes: list[dict[str, str]] = []
    seen = {id(exc)}
    cause = _cause_of(exc)
    while cause is not None and id(cause) not in seen and len(causes) < 16:
        seen.add(id(cause))
        if isinstance(cause, RestoredError):
            # A failure from before a restore (a map item's, chained to the
            # MapError): its original class and causes, as the run that
            # was never interrupted describes them.
            original = describe_exception(cause)
            causes.append(
                {"type": str(original.get("type")), "message": str(original.get("message"))}
            )
            earlier = original.get("causes")
            if isinstance(earlier, list):
                causes.extend(earlier[: 16 - len(causes)])
            break
        causes.append({"type": type(cause).__name__, "message": error_text(cause)})
        cause = _cause_of(cause)
    out["causes"] = causes
    if isinstance(exc, BaseExceptionGroup):
        out["errors"] = [describe_exception(e) for e in exc.exceptions]
    return out


def error_matches(exc: BaseException, names: tuple[str, ...]) -> bool:
    """Whether ``exc`` matches one of the error class ``names``.

    A name matches when it is the ``__name__`` of a class in the hierarchy of
    the error, of its ``__cause__`` (the exception a stage raised), or of any
    member of an exception group. ``Exception`` matches every failure.
    """
    if "Exception" in names:
        return True
    todo: list[BaseException] = [exc]
    seen = 0
    while todo and seen < 64:
        current = todo.pop()
        seen += 1
        if any(cls.__name__ in names for cls in type(current).__mro__):
            return True
        if isinstance(current, RestoredError) and any(c in names for c in current.classes):
            return True
        if current.__cause__ is not None:
            todo.append(current.__cause__)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
    return False


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


class ProblemsError(DefinitionError):
    """A document has one or more problems; all are listed in ``problems``.

    The base of the errors for each kind of document (pipelines, test cases).

    Attributes:
        problems: each problem with its location and a message saying what to fix.
        source: the file (or label) the document came from, if known.
    """

    document: ClassVar[str] = "document"
    """What the document is called in the message (``pipeline``, ``case file``)."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{self.document}{where} is not valid "
            f"({count} problem{'s' if count != 1 else ''}):\n{lines}"
        )


class PipelineValidationError(ProblemsError):
    """A pipeline document has one or more problems; all are listed in ``problems``."""

    document = "pipeline"


class SnapshotError(ProblemsError):
    """A session snapshot cannot be restored; every problem is in ``problems``."""

    document = "session snapshot"


class SnapshotVersionError(SnapshotError):
    """The snapshot was written in another snapshot format version.

    Attributes:
        found: the version in the snapshot.
        supported: the versions this stageflow reads.
    """

    def __init__(self, found: object, supported: Sequence[int]) -> None:
        self.found = found
        self.supported = tuple(supported)
        versions = ", ".join(str(v) for v in self.supported)
        if type(found) is int and abs(found) < _SHOWN_INT:
            message = (
                f"snapshot format version {found} is not one this stageflow reads "
                f"({versions}); restore it with the stageflow version that wrote it, or "
                "finish the session there"
            )
        else:
            message = (
                f"the snapshot's 'version' is {shown_scalar(found)}, not a format version number "
                f"(this stageflow reads {versions}); the snapshot is damaged: restore "
                "the one session.to_dict() wrote"
            )
        super().__init__([Problem("$.version", message)])


class SnapshotMismatchError(SnapshotError):
    """The snapshot does not fit the pipeline: another digest, or nodes that do not exist."""


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


CORE_SOURCE = "stageflow (core)"
"""The ``source`` of the core stages (``WaitStage``, ``SleepStage``), which every registry has."""


class StageConflictError(RegistryError):
    """A stage name is registered twice."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        self.first = first
        self.second = second
        fix = "rename one of them or register into a separate StageRegistry"
        if first == CORE_SOURCE:
            # Every registry has the core stages: a separate one clashes just the same.
            fix = f"rename yours: every StageRegistry has the core stage {name!r}"
        super().__init__(f"stage name {name!r} is registered by both {first} and {second}; {fix}")


class PluginLoadError(RegistryError):
    """A stage pack (a ``stageflow.stages`` entry point) could not be loaded.

    The original exception is the ``__cause__`` (also in :attr:`cause`): an
    ``ImportError`` from the pack's code, the exception its ``register``
    function raised, or a :class:`StageConflictError` naming both sources.

    Attributes:
        pack: the pack's name (the entry point name).
        distribution: ``"name version"`` of the distribution declaring it, or
            ``None`` when unknown.
    """

    def __init__(self, pack: str, detail: str, *, distribution: str | None = None) -> None:
        self.pack = pack
        self.distribution = distribution
        where = f" (from {distribution})" if distribution else ""
        super().__init__(f"stage pack {pack!r}{where} {detail}")

    @property
    def cause(self) -> BaseException | None:
        """The exception that made the pack fail (same as ``__cause__``)."""
        return self.__cause__


class PluginNotFoundError(RegistryError, LookupError):
    """Stage packs were requested by name but no such pack is installed.

    Attributes:
        names: the requested names that are not installed.
        installed: the names of every installed stage pack, sorted.
    """

    def __init__(self, names: Sequence[str], installed: Sequence[str]) -> None:
        self.names = tuple(names)
        self.installed = tuple(sorted(installed))
        missing = ", ".join(repr(n) for n in self.names)
        known = ", ".join(self.installed) if self.installed else "none"
        what = "stage pack named" if len(self.names) == 1 else "stage packs named"
        verb = "is" if len(self.names) == 1 else "are"
        super().__init__(
            f"no {what} {missing} {verb} installed (installed stage packs: {known}); "
            "fix the name, or install the distribution that declares it in the "
            "'stageflow.stages' entry point group"
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

    def __init__(
        self,
        where: str,
        value: object,
        *,
        detail: str = "",
        expected: str = "a JSON value",
        fix: str = "return only dict, list, str, int, float, bool or None",
    ) -> None:
        self.where = where
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{where} is {a_json_type(value)}, which is not {expected}{extra}; {fix}")


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
    """No condition of a condition node matched and it has no ``else``.

    Also a rule that cannot be evaluated at run time (past a JsonLogic bound):
    the :class:`JsonLogicError` is the ``__cause__``.
    """


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
    """A session limit (steps, history size, depth, ...) was reached.

    Attributes:
        limit: the limit's name in :class:`~stageflow.Limits` (``max_steps``, ...).
        value: its value.
    """

    def __init__(
        self, *, limit: str, value: int | float, node_id: str, detail: str | None = None
    ) -> None:
        self.limit = limit
        self.value = value
        super().__init__(
            detail
            or (
                f"session limit {limit}={value} reached at node {node_id!r}; "
                f'raise "limits.{limit}" in the pipeline or the Session, or look for a loop'
            ),
            node_id=node_id,
        )


class InputRejectedError(StageflowError):
    """``send_input`` refused an input; nothing was delivered or queued.

    Attributes:
        input_type: the type of the rejected input (for ``bad_type``, a
            type that is no string, its ``repr()`` cut to 60 characters).
        reason: a short machine-readable reason (``backlog_full``,
            ``bad_type``, ``invalid``, ``too_large``, ``not_json``,
            ``unknown_type``).
    """

    def __init__(self, message: str, *, input_type: str, reason: str) -> None:
        self.input_type = input_type
        self.reason = reason
        super().__init__(message)


class SessionTimeoutError(StageflowError, TimeoutError):
    """The session deadline (``limits.timeout``) passed before a terminal node."""


class StageContractError(NodeError):
    """A stage broke its contract: an undeclared input or event type, invalid data, a stale context.

    A stale context is a :class:`~stageflow.StageContext` used after its attempt ended.
    """


class StageSchemaError(StageContractError):
    """A stage's argument or output value does not match the schema its spec declares.

    Raised in ``validate_events="strict"`` mode (``warn`` records a
    ``contract_violation`` event instead).

    Attributes:
        kind: ``"argument"`` (checked before the stage runs) or ``"output"``
            (checked before anything is written).
        stage: the stage's registered name.
        key: the argument or output name, with the path inside it if the
            problem is nested (``user['name']``).
        expected: what the schema asks for (``type "integer"``, ...).
        got: the value found (JSON, shortened), or ``nothing``.
    """

    def __init__(
        self,
        *,
        kind: str,
        node_id: str,
        stage: str,
        key: str,
        expected: str,
        got: str,
        more: int = 0,
    ) -> None:
        self.kind = kind
        self.stage = stage
        self.key = key
        self.expected = expected
        self.got = got
        also = f" (and {more} more)" if more else ""
        fix = (
            "fix the context value the node maps to it, or the stage's declared arguments schema"
            if kind == "argument"
            else "fix what the stage returns, or its declared outputs schema"
        )
        super().__init__(
            f"stage {stage!r} at node {node_id!r}: {kind} {key!r} does not match its declared "
            f"schema: expected {expected}, got {got}{also}; {fix}",
            node_id=node_id,
        )


class NodeTimeoutError(NodeError, TimeoutError):
    """A node attempt took longer than its ``timeout``."""

    def __init__(self, message: str, *, node_id: str, timeout: float, attempt: int) -> None:
        self.timeout = timeout
        self.attempt = attempt
        super().__init__(message, node_id=node_id)


class SubpipelineError(NodeError):
    """A subpipeline call could not take its inputs or return its outputs.

    It ended without a terminal, or without an artifact the node maps; or an
    input, its result or an artifact cannot be written where the node maps it
    (a path through a number, say): the ``ContextPathError`` is the cause.
    """


class MapError(NodeError):
    """A map node's ``items`` is not a list, or more items failed than tolerated.

    Also a collected list or the failures that cannot be written where
    ``collect`` or ``failures_path`` says (the ``ContextPathError`` is the
    cause; nothing is written).

    Attributes:
        failures: ``(index, error description)`` of each failed item, by index.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str,
        failures: Sequence[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        self.failures = tuple(failures)
        super().__init__(message, node_id=node_id)


class InputTimeoutError(NodeError, TimeoutError):
    """``wait_input`` got no input of the awaited type in time."""

    def __init__(self, message: str, *, node_id: str, input_type: str, timeout: float) -> None:
        self.input_type = input_type
        self.timeout = timeout
        super().__init__(message, node_id=node_id)


class RestoredError(NodeError):
    """A failure that happened before a snapshot, brought back by a restore.

    A branch or map item that had failed when the snapshot was taken has no
    live exception any more; this stands in for it. ``describe_exception``
    gives the original description, and error edges and ``retry_on`` match
    it by the original class names.

    Attributes:
        description: the original error, as ``describe_exception`` gave it.
        classes: class names of the original error, its causes and members.
    """

    def __init__(self, description: dict[str, Any], classes: Sequence[str]) -> None:
        self.description = description
        self.classes = tuple(classes)
        node_id = description.get("node_id")
        super().__init__(
            str(description.get("message", "")),
            node_id=node_id if isinstance(node_id, str) else "",
        )


class RunSuspended(BaseException):
    """The stage's wait is over because ``run(suspend=True)`` suspends the session there.

    On trio, ``ctx.wait_input()``, ``ctx.sleep()`` or ``ctx.sleep_until()``
    raises it in the stage whose wait leaves every active position blocked:
    that wait is where the run suspends, and raising at once spares a pass
    of trio's scheduler to deliver a cancellation (about a quarter of a
    suspended pause). The run catches it and returns the ``waiting`` result;
    the stage runs again from its start when the session resumes, replaying
    its journal. Other positions blocked at that moment (branches, map
    items) are cancelled as before, and on asyncio every position is; so is
    a wait after ``cancel()`` or ``limits.max_run_seconds`` stopped the run.

    Like a cancellation it is a ``BaseException``: clean up in ``finally``
    (or ``except BaseException: ...; raise``) and let it propagate. Made in
    a task of the stage's own task group, it comes out of the group in a
    ``BaseExceptionGroup``. A stage that swallows it is cancelled at its
    next checkpoint.
    """


class ParallelRunError(StageflowError, ExceptionGroup[Exception]):
    """Several parallel branches failed; each failure is in ``exceptions``.

    Attributes:
        node_id: the parallel node, or ``None`` for a group built by hand.
    """

    node_id: str | None

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], *, node_id: str | None = None
    ) -> ParallelRunError:
        self = super().__new__(cls, message, list(exceptions))
        self.node_id = node_id
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], *, node_id: str | None = None
    ) -> None:
        super().__init__(message, list(exceptions))

    def derive(self, excs: Sequence[Exception]) -> ParallelRunError:  # type: ignore[override]
        """Build a group of the same type around a subset (``except*`` support)."""
        return ParallelRunError(self.message, excs, node_id=self.node_id)


class TracingSetupError(StageflowError):
    """:func:`stageflow.tracing.configure` cannot set up tracing as asked.

    Raised for an unknown exporter or protocol, a missing optional exporter
    package (install ``stageflow[otlp]``), or a second global tracer provider.
    """


class LoggingSetupError(StageflowError, ValueError):
    """:func:`stageflow.logging.configure` was given an unknown format or level."""
