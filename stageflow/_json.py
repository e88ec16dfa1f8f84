"""JSON values: the only kind of data a context, an input or an event holds.

Hot path: :func:`copy_json` runs per map item and per copied value ("map
item" rows), :func:`find_non_json` per input, stage output and restored
snapshot ("paused session, time to pause / resume" rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeAlias

from stageflow._guard import MAX_DEPTH, MAX_INT_DIGITS, SAFE_INT_BITS, int_too_large

__all__ = ["MAX_DEPTH", "JsonValue", "NonJson", "copy_json", "find_non_json", "freeze", "thaw"]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"

_SCALARS = (str, bool, type(None))


class NonJson(NamedTuple):
    """Where a value stops being plain JSON, and why."""

    location: str
    value: object
    reason: str


# How deep _plain recurses before it leaves a value to find_non_json's own
# walk: well within the interpreter's recursion limit, and deeper than the
# values sessions hold.
_FAST_DEPTH: Final = 64
# How many containers _plain enters before it leaves the value to the walk.
_FAST_CONTAINERS: Final = 10_000


def _plain(value: Any, depth: int, max_depth: int, left: list[int]) -> bool:
    """Whether ``value`` is plainly JSON, tested by exact types without locations.

    ``True`` only when :func:`find_non_json` would find nothing; ``False``
    when it might find something (a subclass, a large integer, a value past
    ``max_depth``: a cycle always gets there), so that its walk decides and
    says where. Every value from outside passes here: a walk that builds no
    location per item costs a few times less ("paused session" rows: an
    input, a stage's outputs and a restored snapshot are checked per pause
    and resume).

    ``left`` counts down the containers it may still enter; at zero it
    gives up and the walk decides. A value that shares one list many times
    over (``x = [x, x]`` twenty levels deep) is exponential to walk as a
    tree: the walk, which takes the last item first, refuses a bad entry
    after it at once, and this check must not walk the tree first.
    """
    kind = type(value)
    # The dict and list loops are written out twice: one shared loop over
    # ``value.values()`` needs a pass of its own over the keys, 19% more for
    # a 20-key dict ("paused session" rows).
    if kind is dict:
        if depth >= max_depth or left[0] <= 0:
            return False
        left[0] -= 1
        depth += 1
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if item.bit_length() >= SAFE_INT_BITS:
                    return False
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif not _plain(item, depth, max_depth, left):
                return False
        return True
    if kind is list:
        if depth >= max_depth or left[0] <= 0:
            return False
        left[0] -= 1
        depth += 1
        for item in value:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if item.bit_length() >= SAFE_INT_BITS:
                    return False
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif not _plain(item, depth, max_depth, left):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(value.bit_length() < SAFE_INT_BITS)
    if kind is float:
        return math.isfinite(value)
    return False


def find_non_json(value: Any, where: str = "$", max_depth: int = MAX_DEPTH) -> NonJson | None:
    """Return the first non-JSON part of ``value``: its location, the offending value and why.

    ``None`` means ``value`` is plain JSON: dicts with string keys, lists, strings,
    finite numbers, integers of at most :data:`MAX_INT_DIGITS` digits (what
    ``json.dumps`` can write), booleans and ``None``, nested at most ``max_depth``
    levels (:data:`MAX_DEPTH` unless told) and without a container inside itself.
    This is the one guard every value from outside passes (documents, payloads,
    stage outputs, emitted events, inputs, reducer results, snapshots). Plain
    values are answered by a check that recurses at most 64 levels; anything
    else is walked iteratively, so hostile values can neither hit the
    recursion limit nor loop forever.
    """
    if _plain(value, 0, max_depth if max_depth < _FAST_DEPTH else _FAST_DEPTH, [_FAST_CONTAINERS]):
        return None
    return _walk(value, where, max_depth)


def _walk(value: Any, where: str, max_depth: int) -> NonJson | None:
    """:func:`find_non_json` item by item, each with its location."""
    # (location, item, depth); location None marks leaving a container.
    stack: list[tuple[str | None, Any, int]] = [(where, value, 0)]
    inside: set[int] = set()  # ids of the containers on the current path
    while stack:
        loc, item, depth = stack.pop()
        if loc is None:
            inside.discard(id(item))
            continue
        if isinstance(item, _SCALARS):
            continue
        if isinstance(item, int):
            if int_too_large(item):
                return NonJson(loc, item, f"an integer of more than {MAX_INT_DIGITS} digits")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return NonJson(loc, item, "not a finite number")
            continue
        if not isinstance(item, dict | list):
            return NonJson(loc, item, "not a JSON type")
        if id(item) in inside:
            return NonJson(loc, item, "it contains itself (a reference cycle)")
        if depth >= max_depth:
            return NonJson(loc, item, f"it nests more than {max_depth} levels deep")
        inside.add(id(item))
        stack.append((None, item, depth))
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    return NonJson(f"{loc} key {key!r}", key, "object keys must be strings")
                stack.append((f"{loc}.{key}", sub, depth + 1))
        else:
            stack.extend((f"{loc}[{i}]", sub, depth + 1) for i, sub in enumerate(item))
    return None


# Scalars a copy shares, tested by exact type before any isinstance: an
# isinstance on the Mapping ABC costs more than the copy of an int ("map item"
# row: an item, its index and the collected list are copied per item or run).
_SHARED: Final = frozenset({str, int, float, bool, type(None)})


def copy_json(value: Any) -> Any:
    """Copy a JSON value (containers copied, scalars shared); much faster than deepcopy."""
    kind = type(value)
    if kind in _SHARED:
        return value
    if kind is dict:
        return {k: v if type(v) in _SHARED else copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SHARED else copy_json(v) for v in value]
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    # A subclass of a JSON scalar (an IntEnum, a StrEnum) becomes the plain
    # value JSON keeps of it, so a session reads the same before and after a
    # snapshot; the base class's own conversion, never the subclass's.
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
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
