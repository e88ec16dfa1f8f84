"""JSON values: the only kind of data a context, an input or an event holds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

__all__ = ["JsonValue", "copy_json", "find_non_json", "freeze", "thaw"]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"

_SCALARS = (str, int, bool, type(None))


def find_non_json(value: Any, where: str = "$") -> tuple[str, object] | None:
    """Return ``(location, offending value)`` for the first non-JSON part of ``value``.

    ``None`` means ``value`` is plain JSON: dicts with string keys, lists, strings,
    finite numbers, booleans and ``None``. Iterative, so deep values cannot hit
    the recursion limit.
    """
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, _SCALARS):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return loc, item
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    return f"{loc} key {key!r}", key
                stack.append((f"{loc}.{key}", sub))
        elif isinstance(item, list):
            stack.extend((f"{loc}[{i}]", sub) for i, sub in enumerate(item))
        else:
            return loc, item
    return None


def copy_json(value: Any) -> Any:
    """Copy a JSON value (containers copied, scalars shared); much faster than deepcopy."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    return value


def freeze(value: Any) -> Any:
    """Make a JSON value read-only: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Turn a frozen value back into plain ``dict``/``list`` JSON."""
    return copy_json(value)
