"""Built-in stages for single values and objects: set, copy, increment, merge, pick, drop.

Every stage returns new values: nothing it returns shares a container with
the context, so a later write through one path never shows up at another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from stageflow._guard import MAX_INT_DIGITS, int_too_large
from stageflow._json import copy_json
from stageflow._specs import StageSpec
from stageflow._stages import BaseStage, StageContext
from stageflow.builtins._common import argument_error, arguments
from stageflow.builtins._errors import preview

__all__ = [
    "CopyStage",
    "DropStage",
    "IncrementStage",
    "MergeStage",
    "PickStage",
    "SetStage",
    "no_arguments",
    "outputs",
]


def no_arguments() -> dict[str, Any]:
    """The arguments schema of a stage that takes none."""
    return {"type": "object", "properties": {}, "additionalProperties": False}


def outputs(**properties: Mapping[str, Any]) -> dict[str, Any]:
    """An outputs schema listing exactly ``properties``."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": sorted(properties),
        "additionalProperties": False,
    }


_KEYS = {
    "description": "Top-level keys of the object, in the order to keep them.",
    "type": "array",
    "items": {"type": "string"},
    "minItems": 1,
    "uniqueItems": True,
}


class SetStage(BaseStage):
    """``builtins.set``: output the constant ``config.value``.

    Use it to initialise a context path (a counter, an empty list) or to
    record a fixed value on one route of a condition.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Output a constant from the config.",
        arguments=no_arguments(),
        config={
            "type": "object",
            "properties": {
                "value": {"description": "The JSON value to output (any type, null included)."}
            },
            "required": ["value"],
            "additionalProperties": False,
        },
        outputs=outputs(value={"description": "A copy of `config.value`."}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": config.value}``."""
        return {"value": copy_json(ctx.config["value"])}


class CopyStage(BaseStage):
    """``builtins.copy``: output a deep copy of the argument ``value``.

    The copy shares nothing with the source, so later writes below either
    path do not affect the other.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Copy a value from one context path to another.",
        arguments={
            "type": "object",
            "properties": {"value": {"description": "The value to copy (any JSON value)."}},
            "required": ["value"],
            "additionalProperties": False,
        },
        config={"type": "object", "properties": {}, "additionalProperties": False},
        outputs=outputs(value={"description": "A deep copy of the argument `value`."}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <deep copy of the argument>}``."""
        args = arguments(ctx, self.spec)
        return {"value": copy_json(args["value"])}


class IncrementStage(BaseStage):
    """``builtins.increment``: add ``config.by`` (default 1) to the number ``value``.

    Integers stay integers when ``by`` is an integer. A stored value that is
    not a number (``null`` included) is an error rather than being counted as
    zero: initialise the counter with ``builtins.set`` first.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Add a number to a numeric value.",
        arguments={
            "type": "object",
            "properties": {"value": {"description": "The number to add to.", "type": "number"}},
            "required": ["value"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {
                "by": {
                    "description": "How much to add (negative to subtract).",
                    "type": "number",
                    "default": 1,
                }
            },
            "additionalProperties": False,
        },
        outputs=outputs(value={"description": "`value + by`.", "type": "number"}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": value + by}``."""
        value = arguments(ctx, self.spec)["value"]
        by = ctx.config.get("by", 1)
        try:
            result = value + by
        except OverflowError:  # an int too large to add to a float
            result = math.inf
        if isinstance(result, float) and not math.isfinite(result):
            raise argument_error(
                ctx,
                "value",
                f"({preview(value, 40)}) plus {preview(by, 40)} overflows past the largest "
                "float, which JSON cannot hold; keep the counter within the range of a double",
            )
        if isinstance(result, int) and int_too_large(result):
            raise argument_error(
                ctx,
                "value",
                f"({preview(value, 40)}) plus {preview(by, 40)} has more than {MAX_INT_DIGITS} "
                "digits, more than stageflow stores in a context; keep the counter smaller",
            )
        return {"value": result}


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy_json(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = copy_json(value)
    result: dict[str, Any] = merged
    return result


class MergeStage(BaseStage):
    """``builtins.merge``: merge the object ``update`` into the object ``base``.

    Keys of ``update`` win. Shallow by default: a key present in both takes
    ``update``'s value as a whole. With ``config.deep`` true, a key whose
    values are objects on both sides is merged recursively; any other value
    (arrays included) is replaced. Neither argument is modified.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Merge two objects, shallow or deep; keys of `update` win.",
        arguments={
            "type": "object",
            "properties": {
                "base": {"description": "The object to start from.", "type": "object"},
                "update": {"description": "The object whose keys win.", "type": "object"},
            },
            "required": ["base", "update"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {
                "deep": {
                    "description": "Merge nested objects recursively instead of replacing them.",
                    "type": "boolean",
                    "default": False,
                }
            },
            "additionalProperties": False,
        },
        outputs=outputs(value={"description": "The merged object.", "type": "object"}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <base merged with update>}``."""
        args = arguments(ctx, self.spec)
        base, update = args["base"], args["update"]
        if ctx.config.get("deep", False):
            return {"value": _deep_merge(base, update)}
        merged = {key: copy_json(value) for key, value in base.items()}
        merged.update((key, copy_json(value)) for key, value in update.items())
        return {"value": merged}


class PickStage(BaseStage):
    """``builtins.pick``: keep only the listed top-level keys of the object ``value``.

    The result has the keys in ``config.keys`` order; listed keys that the
    object does not have are left out (use ``builtins.assert`` to require them).
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Keep only the listed keys of an object.",
        arguments={
            "type": "object",
            "properties": {"value": {"description": "The object to pick from.", "type": "object"}},
            "required": ["value"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {"keys": _KEYS},
            "required": ["keys"],
            "additionalProperties": False,
        },
        outputs=outputs(
            value={"description": "A new object with only the listed keys.", "type": "object"}
        ),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <object with only config.keys>}``."""
        value = arguments(ctx, self.spec)["value"]
        return {"value": {key: copy_json(value[key]) for key in ctx.config["keys"] if key in value}}


class DropStage(BaseStage):
    """``builtins.drop``: remove the listed top-level keys from the object ``value``.

    Keys the object does not have are ignored. The source object is not modified.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Remove the listed keys from an object.",
        arguments={
            "type": "object",
            "properties": {"value": {"description": "The object to drop from.", "type": "object"}},
            "required": ["value"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {"keys": {**_KEYS, "description": "Top-level keys to remove."}},
            "required": ["keys"],
            "additionalProperties": False,
        },
        outputs=outputs(
            value={"description": "A new object without the listed keys.", "type": "object"}
        ),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <object without config.keys>}``."""
        value = arguments(ctx, self.spec)["value"]
        drop = set(ctx.config["keys"])
        return {"value": {key: copy_json(v) for key, v in value.items() if key not in drop}}
