"""JSON values: the only kind of data a context, an input or an event holds.

Hot path: :func:`copy_json` runs per map item and per copied value ("map
item" rows), :func:`find_non_json` per input, stage output and restored
snapshot ("paused session, time to pause / resume" rows).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeAlias

from stageflow._guard import MAX_DEPTH, MAX_INT_DIGITS, MAX_VALUES, SAFE_INT_BITS, int_too_large

__all__ = [
    "JSON_TYPE_ARTICLES",
    "MAX_DEPTH",
    "JsonValue",
    "NonJson",
    "a_json_type",
    "a_python_type",
    "copy_json",
    "find_non_json",
    "freeze",
    "json_type",
    "too_much_text",
    "thaw",
    "with_article",
]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"

# Scalars the walk accepts as they are (a string is tested for lone surrogates first).
_SCALARS = (bool, type(None))

# A key a location writes as ``.key``: the keys JSON Schema errors write so.
_NAME: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")


def key_step(key: str) -> str:
    """``key`` as a step of a location: ``.name``, or ``['a.b']`` for any other key.

    As JSON Schema errors write it (``json_path``), so that a key with a dot
    in it (an input type, a span attribute) is not read as several steps.
    """
    if _NAME.fullmatch(key):
        return f".{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"['{escaped}']"


class NonJson(NamedTuple):
    """Where a value stops being plain JSON, and why."""

    location: str
    value: object
    reason: str


# How deep _plain recurses before it leaves a value to find_non_json's own
# walk: well within the interpreter's recursion limit, and deeper than the
# values sessions hold.
_FAST_DEPTH: Final = 64
# How much _plain looks at before it leaves the value to the walk: a container
# costs one unit, and one more per 1,024 items it holds (10,000 containers, or
# about 10,000,000 items). It also stops past MAX_VALUES items: the walk
# refuses such a value, long or shared, without going through its items.
_FAST_UNITS: Final = 10_000
# Why a value over MAX_VALUES is refused.
_TOO_MANY: Final = (
    f"it holds more than {MAX_VALUES:,} values written out as JSON "
    "(a list or object shared many times over counts each time)"
)
# The smallest container the walk remembers as found plain (see _walk).
_KEPT_SIZE: Final = 64


# The JSON type names with their article, for messages.
JSON_TYPE_ARTICLES: Final = {
    "null": "null",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
}


def json_type(value: Any) -> str:
    """The JSON type name of a value (``integer`` for whole numbers).

    Anything else is named by its Python type (``set``).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


_JSON_CLASSES: Final = frozenset({bool, int, float, str, list, dict})


def a_json_type(value: Any) -> str:
    """What ``value`` is, for messages: ``"an integer"``, ``"null"``, ``"an array"``, ...

    Named as JSON names it (see :func:`json_type`); anything else by its
    Python type (``"a Python set"``, ``"a Python object"``).
    """
    if value is None or type(value) in _JSON_CLASSES:
        return JSON_TYPE_ARTICLES[json_type(value)]
    # A tuple, a mapping that is no dict, an enum: what find_non_json refuses
    # is not called "an array" or "an object" in the same message.
    return f"a Python {type(value).__name__}"


def a_python_type(value: object) -> str:
    """What ``value`` is, for messages about Python arguments: ``"an int"``, ``"a dict"``.

    Named by its Python type with the article its name takes, and ``None``
    as itself (not ``"a NoneType"``).
    """
    if value is None:
        return "None"
    return with_article(type(value).__name__)


def with_article(name: str) -> str:
    """``name`` after the article it takes by its first letter: ``"an int"``, ``"a Case"``."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _surrogate(text: str) -> str | None:
    """Why ``text`` is no JSON text (its first lone surrogate), or ``None``.

    UTF-8 cannot carry a lone surrogate; ASCII text, the usual case, is
    answered by a flag (``str.isascii``) without encoding it.
    """
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return (
            f"it holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which "
            "is not Unicode text and cannot be written as UTF-8"
        )
    return None


def _plain(value: Any, depth: int, max_depth: int, left: list[int]) -> bool:
    """Whether ``value`` is plainly JSON, tested by exact types without locations.

    ``True`` only when :func:`find_non_json` would find nothing; ``False``
    when it might find something (a subclass, a large integer, a value past
    ``max_depth``: a cycle always gets there), so that its walk decides and
    says where. Every value from outside passes here: a walk that builds no
    location per item costs a few times less ("paused session" rows: an
    input, a stage's outputs and a restored snapshot are checked per pause
    and resume).

    ``left`` counts down what it may still look at (see ``_FAST_UNITS``); at
    zero it gives up and the walk decides. ``left[1]`` counts down the values
    it may still find (:data:`MAX_VALUES`, the value itself counted): past
    them it gives up too, and the walk refuses the value without walking a
    long list item by item. A value that shares one list
    many times over (``x = [x, x]`` twenty levels deep, or one long list a
    thousand times) is exponential or merely huge to walk as a tree: the
    walk counts a shared container it has checked at its size without
    walking it again, and this check must not walk the tree first.
    """
    kind = type(value)
    # The dict and list loops are written out twice: one shared loop over
    # ``value.values()`` needs a pass of its own over the keys, 19% more for
    # a 20-key dict ("paused session" rows).
    if kind is dict:
        if depth >= max_depth or left[0] <= 0:
            return False
        left[0] -= 1 + (len(value) >> 10)
        left[1] -= len(value)
        if left[1] < 0:  # over MAX_VALUES, or shared: the walk counts and says which
            return False
        depth += 1
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or _surrogate(key) is None):
                return False
            kind = type(item)
            if kind is str:
                if item.isascii() or _surrogate(item) is None:
                    continue
                return False
            if kind is bool or item is None:
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
        left[0] -= 1 + (len(value) >> 10)
        left[1] -= len(value)
        if left[1] < 0:  # over MAX_VALUES, or shared: the walk counts and says which
            return False
        depth += 1
        for item in value:
            kind = type(item)
            if kind is str:
                if item.isascii() or _surrogate(item) is None:
                    continue
                return False
            if kind is bool or item is None:
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
    if kind is str:
        return value.isascii() or _surrogate(value) is None
    if kind is bool or value is None:
        return True
    if kind is int:
        return bool(value.bit_length() < SAFE_INT_BITS)
    if kind is float:
        return math.isfinite(value)
    return False


def find_non_json(
    value: Any, where: str = "$", max_depth: int = MAX_DEPTH, max_chars: int | None = None
) -> NonJson | None:
    """Return the first non-JSON part of ``value``: its location, the offending value and why.

    ``None`` means ``value`` is plain JSON: dicts with string keys, lists, strings
    (Unicode text: no lone surrogate, which UTF-8 cannot carry),
    finite numbers, integers of at most :data:`MAX_INT_DIGITS` digits (what
    ``json.dumps`` can write), booleans and ``None``, nested at most ``max_depth``
    levels (:data:`MAX_DEPTH` unless told), without a container inside itself,
    and at most :data:`MAX_VALUES` values once written out (a container
    shared many times over counted each time).
    This is the one guard every value from outside passes (documents, payloads,
    stage outputs, emitted events, inputs, reducer results, snapshots). Plain
    values are answered by a check that recurses at most 64 levels; anything
    else is walked iteratively, so hostile values can neither hit the
    recursion limit nor loop forever.

    With ``max_chars``, the value may also hold at most that many characters
    of text (strings and object keys) once written out, a string shared many
    times over counted each time: documents are held to the size of the text
    they could be read from. Values made at run time are not (counting every
    string's length would cost the check per input and output a third more).
    """
    if max_chars is None:
        fast = max_depth if max_depth < _FAST_DEPTH else _FAST_DEPTH
        if _plain(value, 0, fast, [_FAST_UNITS, MAX_VALUES - 1]):
            return None
        max_chars = sys.maxsize
    return _walk(value, where, max_depth, max_chars)


def _walk(value: Any, where: str, max_depth: int, max_chars: int) -> NonJson | None:
    """:func:`find_non_json` item by item, each with its location.

    A container already found plain is not walked again where it is shared
    (at the same depth or less): it counts at its size, so a value that is
    exponential as a tree costs what its distinct containers cost, and is
    refused once its size as JSON passes :data:`MAX_VALUES` values or
    ``max_chars`` characters.
    """
    # (location, item, depth, values and characters counted when entered);
    # location None marks leaving a container, or with a NonJson a key's
    # problem found when its object was entered.
    stack: list[tuple[str | None, Any, int, int, int]] = [(where, value, 0, 0, 0)]
    inside: set[int] = set()  # ids of the containers on the current path
    # id -> (the container, the depth it was found plain at, its size as JSON
    # in values and in characters), for containers of _KEPT_SIZE values or
    # more (a smaller one is cheaper to walk again than to keep); the
    # container is kept so that its id is not reused during the walk.
    plain: dict[int, tuple[Any, int, int, int]] = {}
    counted = 0
    chars = 0
    while stack:
        loc, item, depth, entered, entered_chars = stack.pop()
        if loc is None:
            if type(item) is NonJson:  # a key's problem, after the values before it
                return item
            inside.discard(id(item))
            if counted - entered >= _KEPT_SIZE:
                plain[id(item)] = (item, depth, counted - entered, chars - entered_chars)
            continue
        counted += 1
        if counted > MAX_VALUES:
            return NonJson(loc, item, _TOO_MANY)
        if isinstance(item, str):
            chars += len(item)
            if chars > max_chars:
                return NonJson(loc, item, too_much_text(max_chars))
            why = _surrogate(item)
            if why is not None:
                return NonJson(loc, item, why)
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
        seen = plain.get(id(item))
        if seen is not None and depth <= seen[1]:
            counted += seen[2] - 1  # its values, itself counted above
            chars += seen[3]
            if chars > max_chars:
                return NonJson(loc, item, too_much_text(max_chars))
            continue
        if depth >= max_depth:
            return NonJson(loc, item, f"it nests more than {max_depth} levels deep")
        if counted + len(item) > MAX_VALUES:  # each item is at least one more value
            return NonJson(loc, item, _TOO_MANY)
        inside.add(id(item))
        stack.append((None, item, depth, counted - 1, chars))
        if isinstance(item, dict):
            bad: NonJson | None = None
            for at, key in enumerate(item):
                if not isinstance(key, str):
                    bad = NonJson(f"{loc} key {key!r}", key, "object keys must be strings")
                else:
                    why = _surrogate(key)
                    chars += len(key)
                    if why is not None:
                        bad = NonJson(f"{loc} key {key!r}", key, why)
                    elif chars > max_chars:
                        bad = NonJson(f"{loc} key", key, too_much_text(max_chars))
                if bad is not None:
                    # Named once the values before the key are walked: one of
                    # them may hold a problem that comes first.
                    stack.append((None, bad, 0, 0, 0))
                    stack.extend(
                        (loc + key_step(key), sub, depth + 1, 0, 0)
                        for key, sub in reversed(list(item.items())[:at])
                    )
                    break
            else:
                # Pushed last first, so that the first problem in document order is found.
                stack.extend(
                    (loc + key_step(key), sub, depth + 1, 0, 0)
                    for key, sub in reversed(item.items())
                )
        else:
            stack.extend(
                (f"{loc}[{i}]", item[i], depth + 1, 0, 0) for i in range(len(item) - 1, -1, -1)
            )
    return None


def too_much_text(max_chars: int) -> str:
    """Why :func:`find_non_json` refuses a value over its ``max_chars``."""
    return (
        f"it holds more than {max_chars:,} characters of text written out as JSON "
        "(a string, or a list or object holding one, met several times counts each time)"
    )


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
    if kind is MappingProxyType:
        # A pipeline's frozen value (a terminal's result, a node's config): as
        # the Mapping branch below copies it, without the ABC's isinstance
        # ("paused session, time to resume" rows: a session's end copies one).
        return {k: v if type(v) in _SHARED else copy_json(v) for k, v in value.items()}
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
