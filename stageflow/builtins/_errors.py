"""Errors raised by the built-in stages.

They extend the stage branch of the stageflow error tree, so a session that a
built-in stage ends reports one of them as ``SessionResult.error``, with the
node id, the stage name and the attempt::

    StageError
    └── BuiltinStageError           a built-in stage could not do its work
        ├── BuiltinArgumentError    an argument is absent or of the wrong type (.argument)
        │   └── TemplateError       a placeholder names nothing in the arguments
        ├── BuiltinConfigError      the config cannot be used (bad rule or template)
        ├── AssertionFailedError    builtins.assert: the rule was false (.rule, .values)
        └── InjectedFailureError    builtins.fail, on purpose (.error_type)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from stageflow._errors import StageError, shown_scalar
from stageflow._graph import listing

__all__ = [
    "AssertionFailedError",
    "BuiltinArgumentError",
    "BuiltinConfigError",
    "BuiltinStageError",
    "InjectedFailureError",
    "TemplateError",
    "injected_failure_class",
    "json_head",
    "preview",
]

_PREVIEW_CHARS = 200


# Not one-shot, iterencode writes piece by piece (the pure-Python encoder).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)


def json_head(value: Any, limit: int) -> str:
    """``value`` as compact JSON, written only until it is longer than ``limit`` characters.

    Whole when it takes ``limit`` characters or fewer; else cut after the
    piece that went past ``limit``. A list that holds one long string many
    times over, which the value guard lets through (it counts values, not
    characters), is gigabytes as a whole.
    """
    pieces: list[str] = []
    size = 0
    for piece in _ENCODER.iterencode(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            break
    return "".join(pieces)


def preview(value: Any, limit: int = _PREVIEW_CHARS) -> str:
    """Compact JSON for a message, cut to ``limit`` characters (written only as far as shown)."""
    text = json_head(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BuiltinStageError(StageError):
    """A built-in stage could not do its work.

    The message starts with the stage name and node id, says what was wrong
    and how to fix it.

    Attributes:
        node_id: the id of the stage node.
        stage: the registered stage name (``builtins.copy``, ...).
        attempt: the attempt that failed (1 for the first).
    """

    def __init__(self, problem: str, *, node_id: str, stage: str, attempt: int) -> None:
        super().__init__(
            f"stage {stage!r} at node {node_id!r}: {problem}",
            node_id=node_id,
            stage=stage,
            attempt=attempt,
        )


class BuiltinArgumentError(BuiltinStageError):
    """An argument of a built-in stage is absent or not of a type it can use.

    Attributes:
        argument: the argument name, as in the node's ``arguments``.
    """

    def __init__(
        self, problem: str, *, argument: str, node_id: str, stage: str, attempt: int
    ) -> None:
        self.argument = argument
        super().__init__(problem, node_id=node_id, stage=stage, attempt=attempt)


class TemplateError(BuiltinArgumentError):
    """A ``builtins.template`` placeholder names nothing in the arguments.

    Attributes:
        placeholder: the placeholder as written, without braces (``user.name``).
    """

    def __init__(
        self, problem: str, *, placeholder: str, node_id: str, stage: str, attempt: int
    ) -> None:
        self.placeholder = placeholder
        super().__init__(
            problem,
            argument=placeholder.partition(".")[0],
            node_id=node_id,
            stage=stage,
            attempt=attempt,
        )


class BuiltinConfigError(BuiltinStageError):
    """The config of a built-in stage cannot be used at run time.

    Most config problems are caught when the pipeline is loaded (the config
    is checked against the stage's JSON Schema, a JsonLogic rule as a
    condition's is); this is for what only the data shows, such as a rule
    that goes past one of JsonLogic's bounds on the values it reads, or a
    ``separator`` for ``builtins.concat`` arguments that are lists. The
    original error, if any, is the ``__cause__``.
    """


class AssertionFailedError(BuiltinStageError):
    """``builtins.assert``: the configured JsonLogic rule was false for the arguments.

    Attributes:
        rule: the rule that was false.
        values: the arguments it was evaluated against.
        reason: the configured ``message``, or ``None``.
        unmapped: names the rule reads (``{"var": ...}``) that are not among
            the arguments, in rule order; not those the rule of a loop
            operator (``map``, ``some``, ``reduce``, ...) reads from each item.
    """

    def __init__(
        self,
        *,
        rule: Any,
        values: Mapping[str, Any],
        reason: str | None,
        node_id: str,
        stage: str,
        attempt: int,
        unmapped: Sequence[str] = (),
    ) -> None:
        self.rule = rule
        self.values = dict(values)
        self.reason = reason
        self.unmapped = tuple(unmapped)
        what = f"assertion failed: {reason}" if reason else "assertion failed"
        fix = "fix the data that reaches this node, or the rule in its config"
        if self.unmapped:
            names = listing(map(shown_scalar, self.unmapped))
            first = self.unmapped[0]
            fix = (
                f"the rule reads {names}, not among the arguments: the rule sees the node's "
                "arguments, not the context (unlike a condition node); map each from a "
                f'context path ("arguments": {{"{first}": "<path>"}}) or check that the path '
                "holds a value"
            )
        super().__init__(
            f"{what}; rule {preview(rule)} is false for the arguments {preview(self.values)}; "
            + fix,
            node_id=node_id,
            stage=stage,
            attempt=attempt,
        )


class InjectedFailureError(BuiltinStageError):
    """``builtins.fail``: a failure raised on purpose, to exercise error routes.

    With ``error_type`` in the node's config, the error raised is a subclass
    of this class *named* ``error_type`` (see :func:`injected_failure_class`),
    so error descriptions and type-name matching see that name.

    Attributes:
        error_type: the configured type name (the class name by default).
        reason: the configured message.
    """

    def __init__(self, reason: str, *, node_id: str, stage: str, attempt: int) -> None:
        self.error_type = type(self).__name__
        self.reason = reason
        super().__init__(
            f"{reason} (failure injected by the pipeline; remove or re-route this node if it "
            "is not meant to fail)",
            node_id=node_id,
            stage=stage,
            attempt=attempt,
        )


@functools.lru_cache(maxsize=256)
def injected_failure_class(name: str) -> type[InjectedFailureError]:
    """Return the subclass of :class:`InjectedFailureError` named ``name`` (cached)."""
    if name == InjectedFailureError.__name__:
        return InjectedFailureError
    cls = type(name, (InjectedFailureError,), {"__module__": "stageflow.builtins"})
    cls.__doc__ = f"A failure injected by builtins.fail with error_type {name!r}."
    return cls
