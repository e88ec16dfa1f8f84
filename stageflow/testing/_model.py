"""The case model: frozen attrs classes read from a case file.

Field names follow the case file (``schemas/test-case.schema.json``). Objects
from the file (payloads, expected values) are stored read-only, as the
pipeline model stores them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Final

import attrs

from stageflow._errors import DefinitionError, ProblemsError
from stageflow._json import a_python_type, freeze, thaw
from stageflow._model import count_check, seconds_check
from stageflow._specs import each_instance, one_instance

__all__ = [
    "DEFAULT_MAX_TIME",
    "Case",
    "CaseLimits",
    "CaseValidationError",
    "ErrorExpectation",
    "EventExpectation",
    "Expectations",
    "MockError",
    "ScriptedInput",
    "StageMock",
    "check_list",
    "dict_hint",
]

DEFAULT_MAX_TIME: Final = 86_400.0
"""Virtual seconds a case may run when its limits do not say (one virtual day)."""


class CaseValidationError(ProblemsError):
    """A case file (or a case in it) is not valid; every problem is in ``problems``.

    Attributes:
        problems: each problem with its location (``$.cases[2].mocks.Fetch``)
            and a message saying what to fix.
        source: the case file, when the case came from one.
    """

    document = "case file"


def check_list(call: str, name: str, value: object, *, error: type[Exception] = TypeError) -> None:
    """Refuse one path or name given where a list of them is expected.

    A ``str`` is a sequence too: ``run_case_files("cases.json")`` would read
    one file per character.

    Raises:
        TypeError: ``value`` is a ``str``, ``bytes`` or path (``error``
            instead, when given).
    """
    if isinstance(value, str | bytes | PathLike):
        shown = os.fsdecode(value)
        raise error(
            f"{call}({name}=...) was given {a_python_type(value)}, {shown!r}, where it "
            f"takes a list; pass {name}=[{shown!r}]"
        )


def dict_hint(value: object) -> str:
    """A hint for a dict given where a case class is taken (a case file's form)."""
    return " (a case file's dicts are read by load_cases)" if isinstance(value, Mapping) else ""


def _one(kind: type, example: str, *, optional: bool = False) -> Any:
    """Validator: a ``kind`` (or ``None`` if ``optional``); a dict is a case file's form."""
    return one_instance(kind, example, optional=optional, hint=dict_hint)


def _each(kind: type, example: str) -> Any:
    """Validator: a tuple, or a mapping's values, all ``kind`` objects."""
    return each_instance(kind, example, hint=dict_hint)


def _module_list(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_list(type(instance).__name__, attribute.name, value, error=DefinitionError)


def _freeze_optional(value: Any) -> Any:
    return None if value is None else freeze(value)


def _freeze_document(value: str | PathLike[str] | Mapping[str, Any]) -> Path | Mapping[str, Any]:
    # A path given as a str is a path: read as a document, it got "not a JSON object".
    if isinstance(value, str | PathLike):
        return Path(value)
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


@attrs.frozen
class ScriptedInput:
    """An external input the tester sends to the session.

    Attributes:
        type: the input type.
        payload: the JSON payload.
        at: virtual seconds from the start of the run at which it is sent;
            ``None`` sends it when the session waits for ``type``.
    """

    type: str
    payload: Any = attrs.field(default=None, converter=freeze)
    at: float | None = attrs.field(default=None, validator=seconds_check(zero=True, optional=True))

    def describe(self) -> str:
        """One line naming the input and when it is sent."""
        when = f"at t={self.at:g}s" if self.at is not None else "when the session waits for it"
        return f"input {self.type!r} ({when})"


@attrs.frozen
class MockError:
    """An exception a mocked stage raises.

    Attributes:
        type: a built-in exception name, a dotted ``module.Class`` path, or
            any identifier (which becomes an ``Exception`` subclass of that name).
        message: the exception message.
        attempt: the attempt it is raised on; ``None`` for every attempt.
    """

    type: str
    message: str = "mocked error"
    attempt: int | None = attrs.field(default=None, validator=count_check(1, optional=True))

    def applies_to(self, attempt: int) -> bool:
        """Whether this error is raised on ``attempt``."""
        return self.attempt is None or self.attempt == attempt


@attrs.frozen
class StageMock:
    """What a mocked stage does on each attempt.

    It sleeps ``delay`` virtual seconds, then raises the first of ``errors``
    that applies to the attempt, or returns ``outputs``.

    Attributes:
        outputs: the outputs it returns.
        delay: virtual seconds before it returns or raises.
        errors: the errors it raises, by attempt.
    """

    outputs: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze)
    delay: float = attrs.field(default=0.0, validator=seconds_check(zero=True, optional=False))
    errors: tuple[MockError, ...] = attrs.field(
        default=(), validator=_each(MockError, "MockError('TimeoutError')")
    )

    def error_for(self, attempt: int) -> MockError | None:
        """The error raised on ``attempt``, or ``None`` if the attempt succeeds."""
        for error in self.errors:
            if error.applies_to(attempt):
                return error
        return None


@attrs.frozen
class CaseLimits:
    """Bounds on one run of a case.

    Attributes:
        max_steps: node executions (the engine's limit; the pipeline's if ``None``).
        max_events: history events before the tester cancels the run (``None``: no limit).
        max_time: virtual seconds before the tester cancels the run.
    """

    # Checked here as the schema checks a case file: a max_events that is no
    # number made the tester's event counter raise, and the limit never applied.
    max_steps: int | None = attrs.field(default=None, validator=count_check(1, optional=True))
    max_events: int | None = attrs.field(default=None, validator=count_check(1, optional=True))
    max_time: float = attrs.field(
        default=DEFAULT_MAX_TIME, validator=seconds_check(zero=False, optional=False)
    )


@attrs.frozen
class EventExpectation:
    """Events that must be in the history.

    Attributes:
        type: the event type.
        node_id: the node it must concern (``None``: any).
        payload: keys the payload must have with these values (subset match).
        count: exact number of matching events (``None``: at least one).
    """

    type: str
    node_id: str | None = None
    payload: Mapping[str, Any] | None = attrs.field(default=None, converter=_freeze_optional)
    count: int | None = attrs.field(default=None, validator=count_check(0, optional=True))

    def describe(self) -> str:
        """The expectation in one line, as the case file would say it."""
        parts = [f"type={self.type!r}"]
        if self.node_id is not None:
            parts.append(f"node_id={self.node_id!r}")
        if self.payload is not None:
            parts.append(f"payload contains {_json_text(self.payload)}")
        return "event " + ", ".join(parts)


@attrs.frozen
class ErrorExpectation:
    """Checks on the session's error; every field that is not ``None`` must match.

    Attributes:
        type: the error's class name.
        message_contains: text the message must contain.
        node_id: the node the error concerns.
        stage: the stage name (stage errors).
        attempt: the attempt that failed (stage errors).
        cause_type: class name of an exception in the cause chain.
    """

    type: str | None = None
    message_contains: str | None = None
    node_id: str | None = None
    stage: str | None = None
    attempt: int | None = attrs.field(default=None, validator=count_check(1, optional=True))
    cause_type: str | None = None


def _given_result(expectations: Expectations) -> bool:
    return expectations.result is not None


@attrs.frozen
class Expectations:
    """What a run must produce. ``None`` means "not checked".

    Attributes:
        status: the session status (``completed``, ``failed``, ``cancelled``).
            When neither it nor ``limit_exceeded`` is given, ``completed``.
        result: the terminal's result, exactly.
        has_result: whether ``result`` is checked; by default, whether a
            ``result`` is given. ``has_result=True`` with ``result=None``
            expects that no terminal was reached.
        artifacts: the artifacts, exactly.
        artifacts_subset: artifacts that must be present with these values.
        path: the started node ids, exactly.
        path_in_order: node ids that must be started in this order.
        not_visited: node ids that must never be started.
        events: events that must (or, with ``count=0``, must not) be there.
        error: checks on the session's error.
        limit_exceeded: the limit that must end the run.
    """

    status: str | None = None
    result: Mapping[str, Any] | None = attrs.field(default=None, converter=_freeze_optional)
    # A result given in Python is checked without has_result=True: an
    # expectation that is left unchecked would hold whatever the run returned.
    has_result: bool = attrs.field(default=attrs.Factory(_given_result, takes_self=True))
    artifacts: Mapping[str, Any] | None = attrs.field(default=None, converter=_freeze_optional)
    artifacts_subset: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_freeze_optional
    )
    path: tuple[str, ...] | None = None
    path_in_order: tuple[str, ...] | None = None
    not_visited: tuple[str, ...] | None = None
    events: tuple[EventExpectation, ...] = attrs.field(
        default=(),
        validator=_each(EventExpectation, "EventExpectation('node_failed')"),
    )
    error: ErrorExpectation | None = attrs.field(
        default=None,
        validator=_one(ErrorExpectation, "ErrorExpectation(type='StageError')", optional=True),
    )
    limit_exceeded: str | None = None

    @property
    def effective_status(self) -> str | None:
        """The status checked: the given one, else what the other expectations imply.

        ``failed`` when an error is expected, none when a limit is, and
        ``completed`` otherwise.
        """
        if self.status is not None:
            return self.status
        if self.limit_exceeded is not None:
            return None
        return "failed" if self.error is not None else "completed"


@attrs.frozen
class Case:
    """One case: a run of a pipeline and what it must produce.

    Build cases with :func:`~stageflow.testing.load_cases` (from a file) or
    directly (from Python).

    Attributes:
        name: unique within its file; the pytest test id.
        pipeline: a path to the pipeline file (a ``str`` is taken as a
            path, relative to the current directory), or the pipeline
            document.
        description: what the case checks.
        stages: where stages come from: module names (``pkg.mod`` or
            ``pkg.mod:attr``) or paths to ``.py`` files.
        payload: the initial context.
        inputs: scripted external inputs.
        mocks: stage name -> mock.
        limits: bounds on the run.
        expect: what the run must produce.
        file: the case file (``None`` for a case built in Python).
        index: position of the case in its file (for locations in messages).
    """

    name: str
    pipeline: Path | Mapping[str, Any] = attrs.field(converter=_freeze_document)
    description: str = ""
    stages: tuple[str, ...] = attrs.field(default=(), validator=_module_list)
    payload: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze)
    inputs: tuple[ScriptedInput, ...] = attrs.field(
        default=(),
        validator=_each(ScriptedInput, "ScriptedInput('approval', {'ok': True})"),
    )
    mocks: Mapping[str, StageMock] = attrs.field(
        factory=dict, converter=freeze, validator=_each(StageMock, "StageMock(outputs={...})")
    )
    limits: CaseLimits = attrs.field(
        default=CaseLimits(), validator=_one(CaseLimits, "CaseLimits(max_time=60)")
    )
    expect: Expectations = attrs.field(
        default=Expectations(), validator=_one(Expectations, "Expectations(status='failed')")
    )
    file: Path | None = None
    index: int = 0

    @property
    def label(self) -> str:
        """``'name' in file`` for messages."""
        return f"{self.name!r} in {self.file}" if self.file is not None else repr(self.name)

    @property
    def location(self) -> str:
        """Where the case is in its file, as a JSON path."""
        return f"$.cases[{self.index}]"


def _json_text(value: Any) -> str:
    return json.dumps(thaw(value), sort_keys=True, ensure_ascii=False)
