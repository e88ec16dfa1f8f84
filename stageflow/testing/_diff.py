"""JSON comparison and readable diffs for failed expectations."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from stageflow._json import thaw

__all__ = ["json_equal", "json_text", "list_diff", "subset_mismatches", "text_diff"]


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
            return [f"{where}: expected an object, got {json_text(actual)}"]
        out: list[str] = []
        for key, value in expected.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in actual:
                out.append(f"{sub}: missing (expected {json_text(value)})")
            else:
                out.extend(subset_mismatches(value, actual[key], sub))
        return out
    if json_equal(expected, actual):
        return []
    return [f"{where}: expected {json_text(expected)}, got {json_text(actual)}"]


def _diff(expected: Sequence[str], actual: Sequence[str]) -> str:
    lines = difflib.unified_diff(
        list(expected), list(actual), fromfile="expected", tofile="actual", lineterm="", n=3
    )
    return "\n".join(lines)


def text_diff(expected: Any, actual: Any) -> str:
    """A unified diff of two JSON values, pretty-printed with sorted keys."""
    return _diff(
        json_text(expected, indent=2).splitlines(), json_text(actual, indent=2).splitlines()
    )


def list_diff(expected: Sequence[str], actual: Sequence[str]) -> str:
    """A unified diff of two lists of names, one name per line."""
    return _diff(expected, actual)
