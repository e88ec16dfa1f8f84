"""What every built-in stage shares: run-time argument checks and error builders.

A stage's ``StageSpec.arguments`` schema is the single source of truth for
its arguments. When a pipeline is loaded, stageflow checks that each node maps
the required names (and no unknown ones). At run time :func:`arguments` checks
the values read from the context against the same schema's ``required`` and
``type`` keywords -- the only keywords the built-in argument schemas use --
with a few plain ``isinstance`` tests instead of a full JSON Schema validator,
because built-in stages are meant to be nearly free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from stageflow._guard import MAX_DOCUMENT_BYTES
from stageflow._json import JSON_TYPE_ARTICLES as _ARTICLES
from stageflow._json import json_type
from stageflow._specs import StageSpec
from stageflow._stages import StageContext
from stageflow.builtins._errors import (
    BuiltinArgumentError,
    BuiltinConfigError,
    BuiltinStageError,
    preview,
)

__all__ = [
    "MAX_TEXT",
    "absent_error",
    "argument_error",
    "arguments",
    "config_error",
    "describe_type",
    "json_type",
    "matches_type",
    "text_too_long",
    "type_error",
]

MAX_TEXT: Final = MAX_DOCUMENT_BYTES
"""Most characters a built-in stage builds into one string (16 MiB, the largest
document stageflow reads): a loop that doubles a string with ``builtins.concat``
or ``builtins.template`` fails within a few turns, instead of taking all memory."""


def matches_type(value: Any, expected: str | Sequence[str]) -> bool:
    """Tell whether ``value`` has JSON Schema ``type`` ``expected`` (a name or a list)."""
    kinds = (expected,) if isinstance(expected, str) else tuple(expected)
    kind = json_type(value)
    return kind in kinds or (kind == "integer" and "number" in kinds)


def describe_type(expected: str | Sequence[str]) -> str:
    """``"an array"``, ``"a string or an array"``, ... for messages."""
    kinds = (expected,) if isinstance(expected, str) else tuple(expected)
    return " or ".join(_ARTICLES.get(k, k) for k in kinds)


def argument_error(ctx: StageContext, name: str, problem: str) -> BuiltinArgumentError:
    """Build the error for argument ``name`` of the running stage."""
    return BuiltinArgumentError(
        f"argument {name!r} {problem}",
        argument=name,
        node_id=ctx.node_id,
        stage=ctx.stage,
        attempt=ctx.attempt,
    )


def config_error(ctx: StageContext, problem: str) -> BuiltinConfigError:
    """Build the error for an unusable config of the running stage."""
    return BuiltinConfigError(problem, node_id=ctx.node_id, stage=ctx.stage, attempt=ctx.attempt)


def absent_error(
    ctx: StageContext, name: str, expected: str | Sequence[str] | None
) -> BuiltinArgumentError:
    """The error for a required argument whose context path holds nothing."""
    holding = f" that holds {describe_type(expected)}" if expected else ""
    return argument_error(
        ctx,
        name,
        "has no value: the context path mapped to it holds nothing; store a value there "
        f"first (builtins.set can), or map {name!r} in the node's 'arguments' to a path{holding}",
    )


def type_error(
    ctx: StageContext, name: str, value: Any, expected: str | Sequence[str]
) -> Exception:
    """The error for an argument whose value has the wrong JSON type."""
    return argument_error(
        ctx,
        name,
        f"must be {describe_type(expected)}, got {_ARTICLES.get(json_type(value), 'a value')} "
        f"{preview(value, 60)}; map {name!r} to a context path that holds "
        f"{describe_type(expected)}",
    )


def arguments(ctx: StageContext, spec: StageSpec) -> Mapping[str, Any]:
    """Check ``ctx.arguments`` against ``spec.arguments`` and return them.

    Raises:
        BuiltinArgumentError: a required argument holds nothing, or an
            argument is not of the type its schema declares.
    """
    values = ctx.arguments
    schema = spec.arguments
    if schema is None:
        return values
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in values:
            raise absent_error(ctx, name, properties.get(name, {}).get("type"))
    extra = schema.get("additionalProperties", True)
    for name, value in values.items():
        sub = properties.get(name, extra)
        expected = sub.get("type") if isinstance(sub, Mapping) else None
        if expected is not None and not matches_type(value, expected):
            raise type_error(ctx, name, value, expected)
    return values


def text_too_long(ctx: StageContext, what: str) -> BuiltinStageError:
    """The error for a string longer than :data:`MAX_TEXT` that ``what`` would be."""
    return BuiltinStageError(
        f"{what} would be more than {MAX_TEXT:,} characters, the most a built-in stage "
        "builds into one string; a loop that grows a string on every turn ends here. Keep "
        "large text out of the context (store it elsewhere and pass a reference), or build "
        "it in a stage of your own",
        node_id=ctx.node_id,
        stage=ctx.stage,
        attempt=ctx.attempt,
    )
