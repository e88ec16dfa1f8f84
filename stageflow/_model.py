"""The pipeline model: frozen node classes, structured from a validated document.

No I/O and no async here; :mod:`stageflow._pipeline` builds these from JSON.
Objects in the document (``config``, ``result``, the path mappings) are stored
read-only: mappings as ``MappingProxyType``, arrays as tuples; stages get a
plain JSON copy of their ``config``.
Field names follow the JSON document; where JSON uses a Python keyword the
attribute ends in an underscore (``if_``, ``else_``).
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any, Final, Literal, TypeAlias

import attrs

from stageflow._deadlines import retry_delay
from stageflow._errors import DefinitionError
from stageflow._guard import MAX_INT_DIGITS, MAX_NESTING, int_too_large
from stageflow._json import freeze
from stageflow._jsonlogic_compiled import compile_condition

__all__ = [
    "API_VERSIONS",
    "ConditionBranch",
    "ConditionNode",
    "ErrorHandler",
    "Limits",
    "MapNode",
    "MergeStrategy",
    "Node",
    "ParallelNode",
    "ParallelPolicy",
    "Reducer",
    "RetryPolicy",
    "StageNode",
    "SubpipelineNode",
    "TerminalNode",
    "ValidateEvents",
]

API_VERSIONS: Final = ("1.0",)
"""Pipeline document versions this release reads."""


class Reducer(enum.StrEnum):
    """How a parallel join combines the values several branches wrote to one path.

    The value a branch leaves at the path is its *contribution*; contributions
    are folded into the value the path had before the fork, in ``children``
    order.
    """

    APPEND = "append"
    """Append each contribution to a list."""
    EXTEND = "extend"
    """Concatenate contributions (each a list) to a list."""
    MERGE = "merge"
    """Shallow-merge contributions (each an object) into an object; later keys win."""
    SUM = "sum"
    """Add numeric contributions."""
    MAX = "max"
    """Keep the largest contribution."""
    MIN = "min"
    """Keep the smallest contribution."""


class ParallelPolicy(enum.StrEnum):
    """When a parallel node is done."""

    ALL = "all"
    """Every branch must succeed."""
    ANY = "any"
    """The first branch to succeed wins; the others are cancelled."""


class MergeStrategy(enum.StrEnum):
    """What a parallel join does when branches wrote one path with different values."""

    ERROR = "error"
    """Fail with :class:`~stageflow.MergeConflictError` (the default)."""
    FIRST = "first"
    """Keep the value of the first such branch in ``children`` order."""
    LAST = "last"
    """Keep the value of the last such branch in ``children`` order."""


class ValidateEvents(enum.StrEnum):
    """How inputs and emitted events are checked against their declared schemas."""

    OFF = "off"
    WARN = "warn"
    STRICT = "strict"


# The largest int that converts to a finite float.
_LARGEST_FLOAT: Final = int(sys.float_info.max)


def is_count(value: object, least: int) -> bool:
    """Whether ``value`` is a whole number (an ``int``, not a ``bool``) of at least ``least``.

    At most :data:`~stageflow._guard.MAX_INT_DIGITS` digits: what JSON (a
    snapshot) can write.
    """
    return type(value) is int and value >= least and not int_too_large(value)


def shown_value(value: object) -> str:
    """``repr(value)`` for a message; an integer too long to write is described instead."""
    if isinstance(value, int) and int_too_large(value):
        return f"<an integer of more than {MAX_INT_DIGITS} digits>"
    return repr(value)


def is_seconds(value: object, *, zero: bool) -> bool:
    """Whether ``value`` is a finite number of seconds above 0 (from 0 if ``zero``).

    A float must hold it: an int past the largest float is refused too (a
    run adds it to the clock), without ``math.isfinite``'s overflow on it.
    """
    if type(value) is int:
        return value <= _LARGEST_FLOAT and (value >= 0 if zero else value > 0)
    if isinstance(value, float):  # a subclass too (numpy's float64)
        return math.isfinite(value) and (value >= 0 if zero else value > 0)
    return False


def seconds_wanted(*, zero: bool) -> str:
    """What :func:`is_seconds` accepts, for messages."""
    return f"a finite number of seconds {'0 or more' if zero else 'above 0'}"


def count_check(
    minimum: int, *, optional: bool
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """Validator: a whole number of at least ``minimum`` (or ``None`` if ``optional``).

    What a snapshot can keep and restore: its schema takes the same numbers.
    """

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not is_count(value, minimum):
            bound = " or None for no bound" if optional else ""
            raise DefinitionError(
                f"{type(instance).__name__}({attribute.name}={shown_value(value)}) is not a whole "
                f"number of at least {minimum} (of at most {MAX_INT_DIGITS} digits, what a "
                f"snapshot can write); use one{bound}"
            )

    return check


def seconds_check(
    *, zero: bool, optional: bool
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """Validator: :func:`is_seconds`, or ``None`` if ``optional``.

    An infinite or NaN duration is no JSON: a session holding it could not be
    snapshotted and restored.
    """

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not is_seconds(value, zero=zero):
            bound = ", or None for no bound" if optional else ""
            raise DefinitionError(
                f"{type(instance).__name__}({attribute.name}={shown_value(value)}) is not "
                f"{seconds_wanted(zero=zero)}; "
                f"use one{bound}"
            )

    return check


def _check_max_depth(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """Validator: ``max_depth`` stays within what a snapshot may nest (:data:`MAX_NESTING`)."""
    if not 1 <= value <= MAX_NESTING:
        raise DefinitionError(
            f"Limits(max_depth={value}) is outside 1..{MAX_NESTING}: deeper nesting could "
            f"not be snapshotted and restored; use at most {MAX_NESTING}"
        )


@attrs.frozen
class Limits:
    """Bounds that end a runaway session with a typed error instead of a hang.

    Two kinds: *lifetime* limits count over the whole life of a session,
    across every ``run()`` and restore (``max_steps``; ``max_history`` counts
    the events the session holds in memory); *per-run* limits count within
    one ``run()`` (``max_run_steps``, ``max_run_events``,
    ``max_run_seconds``), which is what a
    session that lives for thousands of turns wants bounded. A session
    stopped by either kind can be resumed once the limit is raised:
    ``Session.from_dict(snapshot, limits=...)`` (see ``docs/snapshots.md``).

    Attributes:
        max_steps: node executions over the session's life (guards loops);
            ``None`` for no lifetime bound.
        max_history: events the session holds (those its snapshot kept plus
            those recorded since); the session fails when a node would start
            beyond it. ``None`` for no bound.
        max_depth: nesting of parallel branches, map items and subpipelines
            (1 to :data:`~stageflow._guard.MAX_NESTING`, 64).
        timeout: session deadline in seconds from the start of ``run()``
            (status ``timed_out``), or ``None`` for none.
        max_input_backlog: inputs of one type kept while nobody waits for it
            (the types no stage declares share one such backlog).
        max_input_bytes: largest input payload, in bytes of compact JSON.
        cleanup_timeout: seconds a stage's ``cleanup()`` may take.
        max_run_steps: node executions within one ``run()``, or ``None``.
        max_run_events: events recorded within one ``run()``, or ``None``.
        max_run_seconds: wall time of one ``run()`` in seconds (on the event
            loop's clock, waits included), or ``None``. Past it the run stops
            as at a step limit: every position is kept, to resume.

    Raises:
        DefinitionError: a value a snapshot could not keep: a count that is
            not a whole number or is below its minimum (1; 0 for
            ``max_input_backlog``), a duration that is not a finite number
            above 0 (0 or more for ``cleanup_timeout``).
    """

    max_steps: int | None = attrs.field(default=10_000, validator=count_check(1, optional=True))
    max_history: int | None = attrs.field(default=100_000, validator=count_check(1, optional=True))
    max_depth: int = attrs.field(
        default=32, validator=[count_check(1, optional=False), _check_max_depth]
    )
    timeout: float | None = attrs.field(
        default=None, validator=seconds_check(zero=False, optional=True)
    )
    max_input_backlog: int = attrs.field(default=100, validator=count_check(0, optional=False))
    max_input_bytes: int = attrs.field(default=1_048_576, validator=count_check(1, optional=False))
    cleanup_timeout: float = attrs.field(
        default=5.0, validator=seconds_check(zero=True, optional=False)
    )
    max_run_steps: int | None = attrs.field(default=None, validator=count_check(1, optional=True))
    max_run_events: int | None = attrs.field(default=None, validator=count_check(1, optional=True))
    max_run_seconds: float | None = attrs.field(
        default=None, validator=seconds_check(zero=False, optional=True)
    )


def _number_within(low: float, high: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """Validator: a finite number (no bool) from ``low`` to ``high``, as the pipeline schema has."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        # An int is compared as it is: math.isfinite overflows on one past a float.
        kind = type(value)
        finite = kind is int or (kind is float and math.isfinite(value))
        if not (finite and low <= value <= high):
            wanted = f"{low:g} or more" if high == _LARGEST_FLOAT else f"from {low:g} to {high:g}"
            raise DefinitionError(
                f"{type(instance).__name__}({attribute.name}={shown_value(value)}) is not a "
                f"finite number {wanted}; use one"
            )

    return check


_ERROR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _error_names(value: Any) -> tuple[str, ...]:
    """Converter: error class names as a tuple (one name alone is refused, not split)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise DefinitionError(
            f"RetryPolicy(retry_on={shown_value(value)}) is not a list of error class names; "
            "use a list or tuple, such as retry_on=('TimeoutError',)"
        )
    names = tuple(value)
    for name in names:
        if not (isinstance(name, str) and _ERROR_NAME.fullmatch(name)):
            raise DefinitionError(
                f"RetryPolicy(retry_on=...) holds {shown_value(name)}, which is no error class "
                "name; use names such as 'TimeoutError', 'ValueError' or 'Exception'"
            )
    if not names:
        raise DefinitionError(
            "RetryPolicy(retry_on=()) retries nothing; name at least one error class, or use "
            "attempts=1 for no retry"
        )
    return names


@attrs.frozen
class RetryPolicy:
    """How often and when a failed stage attempt is tried again.

    The delay before retry ``n`` (1 for the first retry) is
    ``min(max_delay, delay * backoff ** (n - 1))``, multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]``.

    Attributes:
        attempts: total attempts, the first included (1 means no retry).
        delay: seconds before the first retry.
        backoff: multiplier for each further retry.
        max_delay: upper bound of one delay.
        jitter: random spread of each delay, as a fraction.
        retry_on: error class names that are retried (matched against the
            class hierarchy of the error and of its cause).
    """

    # Checked as a snapshot and the error messages need it: a whole number
    # that can be written.
    attempts: int = attrs.field(default=1, validator=count_check(1, optional=False))
    delay: float = attrs.field(default=0.0, validator=_number_within(0, _LARGEST_FLOAT))
    backoff: float = attrs.field(default=2.0, validator=_number_within(1, _LARGEST_FLOAT))
    max_delay: float = attrs.field(default=300.0, validator=_number_within(0, _LARGEST_FLOAT))
    jitter: float = attrs.field(default=0.0, validator=_number_within(0, 1))
    retry_on: tuple[str, ...] = attrs.field(default=("Exception",), converter=_error_names)

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), without jitter.

        A product too large for a float is ``max_delay`` (it would be capped anyway).
        """
        return retry_delay(self.delay, self.backoff, self.max_delay, retry)


@attrs.frozen
class ErrorHandler:
    """An error edge: route matching failures of a node to another node.

    Attributes:
        next: the node that runs after the failure.
        errors: error class names handled (class hierarchy of the error and
            of its cause); ``Exception`` handles every failure.
        error_path: where a JSON description of the error is written.
    """

    next: str
    errors: tuple[str, ...] = ("Exception",)
    error_path: str = "error"


class _Routable:
    """What nodes with error edges share: ``on_error`` then ``fallback``."""

    __slots__ = ()
    on_error: tuple[ErrorHandler, ...]
    fallback: str | None

    @property
    def error_handlers(self) -> tuple[ErrorHandler, ...]:
        """``on_error`` followed by ``fallback`` as a catch-all edge."""
        if self.fallback is None:
            return self.on_error
        return (*self.on_error, ErrorHandler(next=self.fallback))


@attrs.frozen
class StageNode(_Routable):
    """Runs a registered stage.

    Attributes:
        id: unique node id.
        stage: registered stage name.
        config: static configuration passed to the stage as is.
        arguments: argument name -> context path it is read from.
        outputs: output key the stage returns -> context path it is written to.
        next: the node that runs after this one (``None`` ends a branch).
        retry: retry policy (``None``: the stage spec's, else no retry).
        timeout: seconds per attempt (``None``: the stage spec's, else none).
        on_error: error edges, tried in order.
        fallback: catch-all error edge writing the error to ``error``.
        description: free text for people.
    """

    id: str
    stage: str
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze)
    arguments: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    outputs: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    next: str | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    on_error: tuple[ErrorHandler, ...] = ()
    fallback: str | None = None
    description: str | None = None
    type: Literal["stage"] = "stage"


def _compile(branch: ConditionBranch) -> Callable[[Any], bool]:
    return compile_condition(branch.if_)


@attrs.frozen
class ConditionBranch:
    """One ``{"if": rule, "then": node}`` entry of a condition node.

    Attributes:
        if_: the JsonLogic rule (JSON ``if``), stored read-only.
        then: the node taken when the rule is truthy.
        matches: ``if_`` compiled when the branch is made: ``matches(data)`` is
            ``jsonlogic.truthy(jsonlogic.apply(if_, data))``, without walking
            the rule again on every evaluation.
    """

    if_: Any = attrs.field(converter=freeze)
    then: str
    matches: Callable[[Any], bool] = attrs.field(
        init=False, default=attrs.Factory(_compile, takes_self=True), eq=False, repr=False
    )


@attrs.frozen
class ConditionNode:
    """Chooses the next node with JsonLogic rules evaluated against the payload.

    Attributes:
        id: unique node id.
        conditions: tried in order; the first truthy ``if`` wins.
        else_: taken when no condition matches (JSON ``else``).
        description: free text for people.
    """

    id: str
    conditions: tuple[ConditionBranch, ...]
    else_: str | None = None
    description: str | None = None
    type: Literal["condition"] = "condition"


@attrs.frozen
class ParallelNode(_Routable):
    """Runs branches concurrently and joins them at ``next``.

    Attributes:
        id: unique node id.
        children: entry node of each branch; also the merge order.
        policy: ``all`` or ``any``.
        cancel_on_error: cancel the other branches on the first failure.
        concurrency: branches run at once, started in ``children`` order as
            others end (``None``: every branch starts at once).
        merge: what to do with conflicting writes no reducer covers.
        next: the join: the node that runs after the branches.
        timeout: seconds all branches together may take.
        on_error: error edges, tried in order.
        fallback: catch-all error edge writing the error to ``error``.
        description: free text for people.
    """

    id: str
    children: tuple[str, ...]
    policy: ParallelPolicy = ParallelPolicy.ALL
    cancel_on_error: bool = True
    concurrency: int | None = None
    merge: MergeStrategy = MergeStrategy.ERROR
    next: str | None = None
    timeout: float | None = None
    on_error: tuple[ErrorHandler, ...] = ()
    fallback: str | None = None
    description: str | None = None
    type: Literal["parallel"] = "parallel"


@attrs.frozen
class TerminalNode:
    """Ends the session with a result and artifacts.

    Attributes:
        id: unique node id.
        result: the session result, returned as is.
        artifacts: context paths returned with the result (missing paths give ``null``).
        description: free text for people.
    """

    id: str
    result: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze)
    artifacts: tuple[str, ...] = ()
    description: str | None = None
    type: Literal["terminal"] = "terminal"


@attrs.frozen
class SubpipelineNode(_Routable):
    """Runs a declared subpipeline as one node, in the same session.

    Attributes:
        id: unique node id.
        pipeline: id of a declared subpipeline.
        inputs: child context path -> parent context path it is copied from.
        result_output: parent path for the child's terminal ``result``.
        artifacts: child artifact path -> parent context path.
        next: the node that runs after the child finished.
        timeout: seconds the whole child run may take.
        on_error: error edges, tried in order.
        fallback: catch-all error edge writing the error to ``error``.
        description: free text for people.
    """

    id: str
    pipeline: str
    inputs: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    result_output: str | None = None
    artifacts: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    next: str | None = None
    timeout: float | None = None
    on_error: tuple[ErrorHandler, ...] = ()
    fallback: str | None = None
    description: str | None = None
    type: Literal["subpipeline"] = "subpipeline"


@attrs.frozen
class MapNode(_Routable):
    """Runs the body region once per item of a list and collects outputs in item order.

    Attributes:
        id: unique node id.
        items: context path of the list.
        body: entry node of the body region.
        item_path: where an iteration finds its item.
        index_path: where an iteration finds its index.
        collect: body context path -> parent path of the collected list.
        concurrency: items run at once.
        max_failures: failed items tolerated (0: fail fast).
        max_failure_ratio: tolerated failures as a fraction of the items.
        failures_path: parent path for the list of tolerated failures.
        next: the node that runs after all items.
        timeout: seconds the whole map may take.
        on_error: error edges, tried in order.
        fallback: catch-all error edge writing the error to ``error``.
        description: free text for people.
    """

    id: str
    items: str
    body: str
    item_path: str = "item"
    index_path: str = "index"
    collect: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    concurrency: int = 1
    max_failures: int = 0
    max_failure_ratio: float | None = None
    failures_path: str | None = None
    next: str | None = None
    timeout: float | None = None
    on_error: tuple[ErrorHandler, ...] = ()
    fallback: str | None = None
    description: str | None = None
    type: Literal["map"] = "map"

    def tolerated(self, total: int) -> int:
        """How many failed items are tolerated out of ``total``."""
        if self.max_failure_ratio is not None:
            # The fraction as written: the float 0.29 is just below 29/100, and
            # 0.29 of 100 items tolerates 29, not 28.
            return int(Fraction(repr(self.max_failure_ratio)) * total)
        return self.max_failures


Node: TypeAlias = (
    StageNode | ConditionNode | ParallelNode | TerminalNode | SubpipelineNode | MapNode
)
"""Any pipeline node."""
