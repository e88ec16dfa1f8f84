"""Built-in stages for lists (and concatenation): append, extend, unique, pop, filter, concat.

Every stage returns a new list; the list read from the context is never
modified, so a failed attempt changes nothing and no two paths share a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from stageflow import jsonlogic
from stageflow._errors import JsonLogicError
from stageflow._json import copy_json
from stageflow._specs import ARGUMENT_FORMAT, JSONLOGIC_FORMAT, StageSpec
from stageflow._stages import BaseStage, StageContext
from stageflow.builtins._common import (
    MAX_TEXT,
    absent_error,
    argument_error,
    arguments,
    config_error,
    json_type,
    text_too_long,
)
from stageflow.builtins._errors import preview
from stageflow.builtins._values import outputs

__all__ = [
    "AppendStage",
    "ConcatStage",
    "ExtendStage",
    "FilterStage",
    "PopStage",
    "UniqueStage",
    "json_key",
]

_LIST: Final = {"type": "array"}
_NO_CONFIG: Final = {"type": "object", "properties": {}, "additionalProperties": False}


class AppendStage(BaseStage):
    """``builtins.append``: output the array ``list`` with ``item`` added at the end."""

    spec: ClassVar[StageSpec] = StageSpec(
        description="Add one item at the end of a list.",
        arguments={
            "type": "object",
            "properties": {
                "list": {**_LIST, "description": "The list to add to."},
                "item": {"description": "The value to add (any JSON value)."},
            },
            "required": ["item", "list"],
            "additionalProperties": False,
        },
        config=_NO_CONFIG,
        outputs=outputs(value={**_LIST, "description": "A new list: `list` then `item`."}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": [*list, item]}``."""
        args = arguments(ctx, self.spec)
        result: list[Any] = copy_json(args["list"])
        result.append(copy_json(args["item"]))
        return {"value": result}


class ExtendStage(BaseStage):
    """``builtins.extend``: output the array ``list`` followed by the items of ``items``."""

    spec: ClassVar[StageSpec] = StageSpec(
        description="Add the items of one list at the end of another.",
        arguments={
            "type": "object",
            "properties": {
                "list": {**_LIST, "description": "The list to add to."},
                "items": {**_LIST, "description": "The items to add, in order."},
            },
            "required": ["items", "list"],
            "additionalProperties": False,
        },
        config=_NO_CONFIG,
        outputs=outputs(value={**_LIST, "description": "A new list: `list` then `items`."}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": [*list, *items]}``."""
        args = arguments(ctx, self.spec)
        result: list[Any] = copy_json(args["list"])
        result.extend(copy_json(args["items"]))
        return {"value": result}


def json_key(value: Any) -> Any:
    """A hashable key equal for equal JSON values.

    As in JSON Schema's ``uniqueItems``: ``1`` equals ``1.0``, ``true`` is not
    ``1``, and objects are equal when their keys and values are, in any order.
    """
    if value is None or isinstance(value, bool | str):
        return (type(value).__name__, value)
    if isinstance(value, float) and value.is_integer():
        return ("number", int(value))
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list | tuple):
        return ("array", tuple(json_key(v) for v in value))
    # The context holds JSON only, so what is left is an object.
    return ("object", frozenset((k, json_key(v)) for k, v in value.items()))


class UniqueStage(BaseStage):
    """``builtins.unique``: output the array ``list`` without repeated items.

    The first occurrence of each value is kept, in order. Items are compared
    as JSON values: ``1`` equals ``1.0``, ``true`` differs from ``1``, and two
    objects are equal when they have the same keys and values in any order.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Remove repeated items from a list, keeping the first of each.",
        arguments={
            "type": "object",
            "properties": {"list": {**_LIST, "description": "The list to deduplicate."}},
            "required": ["list"],
            "additionalProperties": False,
        },
        config=_NO_CONFIG,
        outputs=outputs(
            value={**_LIST, "description": "A new list with the first of each distinct item."}
        ),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <list without repeats>}``."""
        seen: set[Any] = set()
        result: list[Any] = []
        for item in arguments(ctx, self.spec)["list"]:
            key = json_key(item)
            if key not in seen:
                seen.add(key)
                result.append(copy_json(item))
        return {"value": result}


class PopStage(BaseStage):
    """``builtins.pop``: take one item out of the array ``list``.

    ``config.index`` picks the item as in Python: ``-1`` (the default) is the
    last item, ``0`` the first (a queue). Popping from an empty list, or at an
    index the list does not have, is an error: route around it with a
    condition on the list's length first.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Remove one item from a list and output it and the rest.",
        arguments={
            "type": "object",
            "properties": {"list": {**_LIST, "description": "The list to take the item from."}},
            "required": ["list"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {
                "index": {
                    "description": "Position of the item; negative counts from the end.",
                    "type": "integer",
                    "default": -1,
                }
            },
            "additionalProperties": False,
        },
        outputs=outputs(
            item={"description": "The item taken out."},
            value={**_LIST, "description": "A new list without that item."},
        ),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"item": list[index], "value": <list without it>}``."""
        source: Sequence[Any] = arguments(ctx, self.spec)["list"]
        index = int(ctx.config.get("index", -1))
        if not -len(source) <= index < len(source):
            count = len(source)
            what = "is empty" if not count else f"has {count} item{'' if count == 1 else 's'}"
            raise argument_error(
                ctx,
                "list",
                f"{what}, so there is no item at index {index} to pop; check the list's "
                "length with a condition node before this one",
            )
        result: list[Any] = copy_json(source)
        item = result.pop(index)
        return {"item": item, "value": result}


class FilterStage(BaseStage):
    """``builtins.filter``: keep the items of ``items`` for which ``config.rule`` is true.

    The rule is JsonLogic (:func:`stageflow.jsonlogic.apply`) and is evaluated
    once per item, in order; an item is kept when the result is truthy in
    JsonLogic's sense (``0``, ``""``, ``null``, ``false`` and ``[]`` are false).
    The whole list is one evaluation, as for JsonLogic's own ``filter``: the
    items share the :data:`stageflow.jsonlogic.MAX_STEPS` steps (each spends
    one plus one per value of the rule, and loops inside the rule theirs), so
    the stage ends within seconds instead of taking them again for every item.

    What the rule reads (``config.data``):

    - ``"item"`` (default): the item itself, so ``{"var": "price"}`` reads
      ``item.price`` and ``{"var": ""}`` the whole item.
    - ``"scope"``: an object ``{"item": <item>, "index": <0-based position>,
      "arguments": <every argument of the node>}``, so a rule can compare items
      with other context values mapped as extra arguments, e.g.
      ``{"<=": [{"var": "item.price"}, {"var": "arguments.budget"}]}``.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Keep the list items for which a JsonLogic rule is true.",
        arguments={
            "type": "object",
            "properties": {"items": {**_LIST, "description": "The list to filter."}},
            "required": ["items"],
            "additionalProperties": {
                "description": 'Any other argument: with `data` "scope" the rule reads it '
                "as `arguments.<name>`."
            },
        },
        config={
            "type": "object",
            "properties": {
                "rule": {
                    "description": "The JsonLogic rule; an item is kept when it is truthy.",
                    "format": JSONLOGIC_FORMAT,
                },
                "data": {
                    "description": 'What the rule reads: the item itself ("item"), or '
                    '`{"item", "index", "arguments"}` ("scope").',
                    "enum": ["item", "scope"],
                    "default": "item",
                },
            },
            "required": ["rule"],
            "additionalProperties": False,
        },
        outputs=outputs(value={**_LIST, "description": "A new list of the kept items, in order."}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <the items the rule keeps>}``."""
        args = arguments(ctx, self.spec)
        rule = ctx.config["rule"]
        scoped = ctx.config.get("data", "item") == "scope"
        cost = 1 + jsonlogic.rule_size(rule)  # per item, as the 'filter' operator spends

        def keep(items: list[Any]) -> list[Any]:
            kept: list[Any] = []
            for index, item in enumerate(items):
                data = {"item": item, "index": index, "arguments": args} if scoped else item
                try:
                    result = jsonlogic.apply_item(rule, data, cost)
                except JsonLogicError as exc:
                    raise config_error(
                        ctx,
                        f"config 'rule' cannot be evaluated for item {index} of {len(items)} "
                        f"({preview(item, 60)}): {exc}; fix the rule, or the item (all the items "
                        "share the jsonlogic.MAX_STEPS steps of one evaluation, as the items of "
                        "JsonLogic's 'filter' do)",
                    ) from exc
                if jsonlogic.truthy(result):
                    kept.append(copy_json(item))
            return kept

        # One evaluation over all the items: a rule that takes seconds per item
        # must not hold the event loop for seconds times the items.
        return {"value": jsonlogic.counting_steps(keep, args["items"])}


_CONCAT_TYPES: Final = ["string", "array"]


class ConcatStage(BaseStage):
    """``builtins.concat``: join strings, or concatenate lists, in ``config.order``.

    The node maps any argument names it likes; ``config.order`` lists the
    ones to join, in order (JSON objects have no reliable order, so the
    order is never taken from ``arguments``); a name in ``order`` that the
    node does not map is a load-time problem. They must be all strings --
    joined with ``config.separator`` (default ``""``) -- or all arrays,
    concatenated (a ``separator`` is then an error). A joined string longer
    than :data:`MAX_TEXT` characters is refused.
    """

    spec: ClassVar[StageSpec] = StageSpec(
        description="Join strings or concatenate lists, in a configured order.",
        arguments={
            "type": "object",
            "properties": {},
            "additionalProperties": {
                "description": "A string or list to join; name it in `order`.",
                "type": _CONCAT_TYPES,
            },
        },
        config={
            "type": "object",
            "properties": {
                "order": {
                    "description": "Argument names to join, in order; each mapped in `arguments`.",
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "format": ARGUMENT_FORMAT},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "separator": {
                    "description": "Put between strings (strings only).",
                    "type": "string",
                    "default": "",
                },
            },
            "required": ["order"],
            "additionalProperties": False,
        },
        outputs=outputs(value={"description": "The joined string or list.", "type": _CONCAT_TYPES}),
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Return ``{"value": <joined string or list>}``."""
        args = arguments(ctx, self.spec)
        order: list[str] = ctx.config["order"]
        for name in order:
            if name not in args:
                raise absent_error(ctx, name, _CONCAT_TYPES)
        first = order[0]
        kind = json_type(args[first])
        for name in order[1:]:
            if json_type(args[name]) != kind:
                raise argument_error(
                    ctx,
                    name,
                    f"is {'a string' if kind == 'array' else 'an array'} "
                    f"{preview(args[name], 60)}, but {first!r} is "
                    f"{'a string' if kind == 'string' else 'an array'}; concat joins all "
                    "strings or all lists, not a mix",
                )
        if kind == "string":
            separator: str = ctx.config.get("separator", "")
            size = sum(len(args[name]) for name in order) + len(separator) * (len(order) - 1)
            if size > MAX_TEXT:
                raise text_too_long(ctx, "the joined string")
            return {"value": separator.join(args[name] for name in order)}
        if "separator" in ctx.config:
            raise config_error(
                ctx,
                "config 'separator' only applies to strings, and the arguments are lists; "
                "remove 'separator', or build the lists with the separator as an item",
            )
        joined: list[Any] = []
        for name in order:
            joined.extend(copy_json(args[name]))
        return {"value": joined}
