"""IdentityCache: a value per object, found by identity, bounded."""

from __future__ import annotations

from stageflow._identity import IdentityCache


def test_a_value_is_found_for_the_object_itself_only() -> None:
    cache: IdentityCache[str] = IdentityCache()
    key, equal = [1, 2], [1, 2]
    assert cache.put(key, "kept") == "kept"
    assert cache.get(key) == "kept"
    assert cache.get(equal) is None  # equal, but another object


def test_at_its_size_the_cache_starts_over() -> None:
    cache: IdentityCache[int] = IdentityCache(size=2)
    keys = [object(), object(), object()]
    for n, key in enumerate(keys):
        cache.put(key, n)
    assert [cache.get(key) for key in keys] == [None, None, 2]
