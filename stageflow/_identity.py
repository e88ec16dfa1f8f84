"""Values worked out once per object and found again by the object's identity.

For objects that are frozen but not hashable (a :class:`~stageflow.Pipeline`
holds read-only mappings; ``Limits`` are compared by value), so neither a
dict keyed by the object nor a ``WeakKeyDictionary`` serves. The object is
kept beside its value, so that an id reused after garbage collection is
never taken for it; at ``size`` entries the cache starts over, which bounds
what it keeps alive.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["IdentityCache"]

V = TypeVar("V")


class IdentityCache(Generic[V]):
    """At most ``size`` values, each for one object, found by ``is``."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._entries: dict[int, tuple[object, V]] = {}
        self._size = size

    def get(self, key: object) -> V | None:
        """The value kept for ``key`` itself, or ``None``."""
        entry = self._entries.get(id(key))
        return entry[1] if entry is not None and entry[0] is key else None

    def put(self, key: object, value: V) -> V:
        """Keep ``value`` for ``key``; return it."""
        entries = self._entries
        if len(entries) >= self._size:
            entries.clear()
        entries[id(key)] = (key, value)
        return value
