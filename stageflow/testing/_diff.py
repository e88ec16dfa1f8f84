"""JSON comparison and readable diffs for failed expectations."""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from stageflow._json import thaw

__all__ = [
    "SHOWN_WHOLE",
    "json_equal",
    "json_text",
    "list_diff",
    "short_text",
    "subset_mismatches",
    "text_diff",
]

DIFF_BUDGET: Final = 4_000_000
"""Most line pairs (expected lines times actual lines, once the lines both begin
and end with are set aside) a line diff may compare. difflib's time grows with
their product: two lists of 20,000 items that differ at every other one took
45 s. Larger differences are shown as the first differing places instead."""

_FIRST: Final = 20  # differing places listed when there are too many lines to diff
_SHORT: Final = 200  # characters of a value shown in such a listing
SHOWN_WHOLE: Final = 2_000
"""Characters of a whole actual value (a run's artifacts) a failure shows."""


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text (keys sorted), for messages and diffs."""
    return json.dumps(thaw(value), sort_keys=True, ensure_ascii=False, indent=indent, default=repr)


def json_equal(expected: Any, actual: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``, tuples are lists."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, Mapping):
        return (
            isinstance(actual, Mapping)
            and expected.keys() == actual.keys()
            and all(json_equal(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(expected) == len(actual)
            and all(json_equal(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(actual, Mapping | list | tuple):
        return False
    return bool(expected == actual)


def subset_mismatches(expected: Any, actual: Any, where: str) -> list[str]:
    """How ``actual`` fails to contain ``expected``: one line per mismatch.

    Objects are compared as subsets (every expected key must be there, with a
    matching value, recursively); every other value is compared exactly.
    """
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{where}: expected an object, got {short_text(actual)}"]
        out: list[str] = []
        for key, value in expected.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in actual:
                out.append(f"{sub}: missing (expected {short_text(value)})")
            else:
                out.extend(subset_mismatches(value, actual[key], sub))
        return out
    if json_equal(expected, actual):
        return []
    return [f"{where}: expected {short_text(expected)}, got {short_text(actual)}"]


def _within_budget(expected: Sequence[str], actual: Sequence[str]) -> bool:
    """Whether a line diff of these lines takes bounded time (see :data:`DIFF_BUDGET`)."""
    shortest = min(len(expected), len(actual))
    head = 0
    while head < shortest and expected[head] == actual[head]:
        head += 1
    tail = 0
    while tail < shortest - head and expected[-1 - tail] == actual[-1 - tail]:
        tail += 1
    return (len(expected) - head - tail) * (len(actual) - head - tail) <= DIFF_BUDGET


def _diff(expected: Sequence[str], actual: Sequence[str]) -> str:
    lines = difflib.unified_diff(
        list(expected), list(actual), fromfile="expected", tofile="actual", lineterm="", n=3
    )
    return "\n".join(lines)


def _too_many(expected: Sequence[str], actual: Sequence[str], what: str) -> str:
    return (
        f"too many differing lines to diff ({len(expected)} expected, {len(actual)} "
        f"actual); the first differing {what}:"
    )


def text_diff(expected: Any, actual: Any) -> str:
    """A unified diff of two JSON values, pretty-printed with sorted keys.

    Values that differ in too many places for a line diff (:data:`DIFF_BUDGET`)
    get the first places where they differ instead, each with its JSON path.
    """
    expected_lines = json_text(expected, indent=2).splitlines()
    actual_lines = json_text(actual, indent=2).splitlines()
    if _within_budget(expected_lines, actual_lines):
        return _diff(expected_lines, actual_lines)
    places = _differences(expected, actual, "")
    shown = list(itertools.islice(places, _FIRST))
    more = sum(1 for _ in places)
    listing = "\n".join(f"  {place}" for place in shown)
    tail = f"\n  ... and {more} more" if more else ""
    return f"{_too_many(expected_lines, actual_lines, 'places')}\n{listing}{tail}"


def short_text(value: Any, limit: int = _SHORT) -> str:
    """``value`` as JSON text, cut to ``limit`` characters (saying how long it was)."""
    text = json_text(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _differences(expected: Any, actual: Any, where: str) -> Iterator[str]:
    """Each place where ``actual`` differs from ``expected`` as JSON, in document order."""
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        for key in sorted(expected.keys() | actual.keys()):
            sub = f"{where}.{key}" if where else str(key)
            if key not in actual:
                yield f"{sub}: missing (expected {short_text(expected[key])})"
            elif key not in expected:
                yield f"{sub}: not expected (got {short_text(actual[key])})"
            else:
                yield from _differences(expected[key], actual[key], sub)
        return
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            yield from _differences(e, a, f"{where}[{index}]")
        if len(expected) != len(actual):
            yield f"{where or 'the value'}: expected {len(expected)} items, got {len(actual)}"
        return
    if not json_equal(expected, actual):
        yield f"{where or 'the value'}: expected {short_text(expected)}, got {short_text(actual)}"


def list_diff(expected: Sequence[str], actual: Sequence[str]) -> str:
    """A unified diff of two lists of names, one name per line.

    Lists that differ in too many places for a line diff (:data:`DIFF_BUDGET`)
    get the first places where they differ instead.
    """
    if _within_budget(expected, actual):
        return _diff(expected, actual)
    places = [
        f"  #{index + 1}: expected {e!r}, got {a!r}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=False))
        if e != a
    ]
    if len(expected) != len(actual):
        places.append(f"  expected {len(expected)} names, got {len(actual)}")
    listing = "\n".join(places[:_FIRST])
    tail = f"\n  ... and {len(places) - _FIRST} more" if len(places) > _FIRST else ""
    return f"{_too_many(expected, actual, 'names')}\n{listing}{tail}"
