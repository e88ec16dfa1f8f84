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
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs

from stageflow._json import freeze

__all__ = [
    "API_VERSIONS",
    "ConditionBranch",
    "ConditionNode",
    "Limits",
    "MergeStrategy",
    "Node",
    "ParallelNode",
    "ParallelPolicy",
    "Reducer",
    "StageNode",
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


@attrs.frozen
class Limits:
    """Bounds that end a runaway session with a typed error instead of a hang.

    Attributes:
        max_steps: node executions per session (guards loops).
        max_history: events kept in the history.
        max_depth: nesting of parallel nodes inside each other.
    """

    max_steps: int = 10_000
    max_history: int = 100_000
    max_depth: int = 32


@attrs.frozen
class StageNode:
    """Runs a registered stage.

    Attributes:
        id: unique node id.
        stage: registered stage name.
        config: static configuration passed to the stage as is.
        arguments: argument name -> context path it is read from.
        outputs: output key the stage returns -> context path it is written to.
        next: the node that runs after this one (``None`` ends a branch).
        description: free text for people.
    """

    id: str
    stage: str
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=freeze)
    arguments: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    outputs: Mapping[str, str] = attrs.field(factory=dict, converter=freeze)
    next: str | None = None
    description: str | None = None
    type: Literal["stage"] = "stage"


@attrs.frozen
class ConditionBranch:
    """One ``{"if": rule, "then": node}`` entry of a condition node.

    Attributes:
        if_: the JsonLogic rule (JSON ``if``), stored read-only.
        then: the node taken when the rule is truthy.
    """

    if_: Any = attrs.field(converter=freeze)
    then: str


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
class ParallelNode:
    """Runs branches concurrently and joins them at ``next``.

    Attributes:
        id: unique node id.
        children: entry node of each branch; also the merge order.
        policy: ``all`` or ``any``.
        cancel_on_error: cancel the other branches on the first failure.
        merge: what to do with conflicting writes no reducer covers.
        next: the join: the node that runs after the branches.
        description: free text for people.
    """

    id: str
    children: tuple[str, ...]
    policy: ParallelPolicy = ParallelPolicy.ALL
    cancel_on_error: bool = True
    merge: MergeStrategy = MergeStrategy.ERROR
    next: str | None = None
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


Node: TypeAlias = StageNode | ConditionNode | ParallelNode | TerminalNode
"""Any pipeline node."""
