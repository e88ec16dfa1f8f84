"""The session context: a JSON ``payload`` addressed by dotted paths.

A path is a sequence of dict keys and list indexes joined by dots:
``order.items.0.sku``. ``""`` is not a path. A stored ``None`` is a value;
a path that leads nowhere is :data:`MISSING`.

Parallel branches work on a *fork*: reads fall through to the parent, writes
copy only the containers on the written path (copy on write), so a fork costs
what the branch writes, never the size of the context. Each fork remembers the
paths it wrote, in order, for the merge at the join.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any, Final

from stageflow._errors import ContextPathError
from stageflow._json import a_json_type

__all__ = ["MISSING", "Context", "parse_path"]


class _Missing:
    """Marker for "no value at this path" (distinct from a stored ``None``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final[Any] = _Missing()
"""What a path with nothing stored reads as: distinct from a stored ``None``; test with ``is``."""

_PATH_CACHE: dict[str, tuple[str, ...]] = {}


def parse_path(path: str) -> tuple[str, ...]:
    """Split a dotted path into its segments, rejecting malformed paths."""
    cached = _PATH_CACHE.get(path)
    if cached is not None:
        return cached
    if not isinstance(path, str) or not path:
        raise ContextPathError(str(path), "a path must be a non-empty string")
    parts = tuple(path.split("."))
    if any(p == "" for p in parts):
        raise ContextPathError(path, "it has an empty segment (two dots, or a dot at an end)")
    if len(_PATH_CACHE) < 65536:
        _PATH_CACHE[path] = parts
    return parts


def _is_index(part: str) -> bool:
    # ASCII only: "²".isdigit() is true, but int("²") raises.
    return part.isascii() and part.isdigit()


def _step(container: Any, part: str) -> Any:
    if isinstance(container, dict | ChainMap):
        return container.get(part, MISSING)
    if isinstance(container, list) and _is_index(part):
        index = int(part)
        return container[index] if index < len(container) else MISSING
    return MISSING


_new_chain: Final = ChainMap.__new__
_new_context: Final = object.__new__


def _top_get(data: MutableMapping[str, Any], key: str) -> Any:
    # ChainMap.get tests membership in every map first: look in each map once instead.
    if type(data) is ChainMap:
        for layer in data.maps:
            value = layer.get(key, MISSING)
            if value is not MISSING:
                return value
        return MISSING
    return data.get(key, MISSING)


def _copy_container(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


class Context:
    """A JSON payload addressed by dotted paths, with cheap forks for branches.

    Args:
        data: the top-level object. The context takes ownership of it.
    """

    __slots__ = ("_data", "_owned", "_written")

    def __init__(self, data: MutableMapping[str, Any] | None = None) -> None:
        self._data: MutableMapping[str, Any] = {} if data is None else data
        # nested containers this context may mutate in place, by id (the value
        # keeps the object alive so its id cannot be reused); None means "all of
        # them": the root context owns its whole tree.
        self._owned: dict[int, Any] | None = None
        # paths written since the fork, in write order (None at the root).
        self._written: dict[str, None] | None = None

    @property
    def data(self) -> MutableMapping[str, Any]:
        """The top-level mapping (a read-through view for forks)."""
        return self._data

    def get(self, path: str, default: Any = MISSING) -> Any:
        """Return the value at ``path``, or ``default`` when nothing is there."""
        parts = _PATH_CACHE.get(path) or parse_path(path)
        data = self._data
        if type(data) is dict:
            value: Any = data.get(parts[0], MISSING)
        else:
            value = _top_get(data, parts[0])
        if len(parts) > 1:
            for part in parts[1:]:
                if value is MISSING:
                    break
                value = _step(value, part)
        return default if value is MISSING else value

    def set(self, path: str, value: Any) -> None:
        """Store ``value`` at ``path``, creating intermediate objects as needed.

        Raises:
            ContextPathError: a segment crosses a value that is not an object
                or list, or indexes past the end of a list.
        """
        parts = _PATH_CACHE.get(path) or parse_path(path)
        if len(parts) == 1:
            # A top-level key: the top level is always an object, and a fork's
            # writes go to its own first map.
            self._data[path] = value
            if self._written is not None:
                self._written[path] = None
            return
        container: Any = self._data
        owned = self._owned
        for part in parts[:-1]:
            child = _step(container, part)
            if child is MISSING:
                if isinstance(container, list):
                    if not _is_index(part):
                        raise ContextPathError(
                            path, f"segment {part!r} indexes a list but is not a number"
                        )
                    raise ContextPathError(path, f"index {part} is past the end of the list")
                child = {}
            elif not isinstance(child, dict | list):
                raise ContextPathError(
                    path,
                    f"segment {part!r} holds {a_json_type(child)}, not an object or list",
                )
            elif owned is None or id(child) in owned:
                container = child
                continue
            else:
                child = _copy_container(child)
            if owned is not None:
                owned[id(child)] = child
            self._assign(container, part, child, path)
            container = child
        self._assign(container, parts[-1], value, path)
        if self._written is not None:
            self._written[path] = None

    def set_all(self, writes: Sequence[tuple[str, Any]]) -> None:
        """Store each ``(path, value)`` in order: all of them, or none.

        A node's outputs (a stage's, a subpipeline's results, a map's
        collected values) are written so: a path that crosses a scalar,
        found after others were written, would leave those behind. When a
        later write can fail (two or more writes, one of them nested), they
        are tried on a fork first, which this context never sees.

        Raises:
            ContextPathError: as :meth:`set`, and nothing was written.
        """
        if len(writes) > 1 and any(
            len(_PATH_CACHE.get(path) or parse_path(path)) > 1 for path, _ in writes
        ):
            trial = self.fork()
            for path, value in writes:
                trial.set(path, value)
        for path, value in writes:
            self.set(path, value)

    @staticmethod
    def _assign(container: Any, part: str, value: Any, path: str) -> None:
        if isinstance(container, list):
            if not _is_index(part):
                raise ContextPathError(path, f"segment {part!r} indexes a list but is not a number")
            index = int(part)
            if index < len(container):
                container[index] = value
            elif index == len(container):
                container.append(value)
            else:
                raise ContextPathError(path, f"index {index} is past the end of the list")
        else:
            container[part] = value

    def fork(self, top: dict[str, Any] | None = None) -> Context:
        """Return a branch context: reads see this one, writes stay in the fork.

        ``top`` maps top-level keys (one-segment paths) to values the fork is
        made with, as if ``set`` wrote them in that order; the fork takes
        ownership of the dict. A map item starts so, with its item and index.
        """
        data = self._data
        chain: ChainMap[str, Any] = _new_chain(ChainMap)  # what ChainMap({}, *maps) makes
        own = {} if top is None else top
        # An exact type test: isinstance on ChainMap (an ABC) costs more than
        # the rest of a fork ("parallel branch" and "map item" rows).
        chain.maps = [own, *data.maps] if type(data) is ChainMap else [own, data]
        child = _new_context(Context)
        child._data = chain
        child._owned = {}
        child._written = {} if top is None else dict.fromkeys(top)
        return child

    def fork_layers(
        self, top: dict[str, Any]
    ) -> tuple[Context, list[MutableMapping[str, Any]], dict[str, None]]:
        """``fork(top)``, with the fork's :meth:`layers`: one call where a map item needs both.

        A map item of a one-node body is forked so, and its node reads and
        writes the fork's top-level keys through the layers ("map item" row).
        Keep it alike with :meth:`fork`.
        """
        data = self._data
        chain: ChainMap[str, Any] = _new_chain(ChainMap)
        maps: list[MutableMapping[str, Any]] = (
            [top, *data.maps] if type(data) is ChainMap else [top, data]
        )
        chain.maps = maps
        child = _new_context(Context)
        child._data = chain
        child._owned = {}
        child._written = written = dict.fromkeys(top)
        return child, maps, written

    def layers(self) -> tuple[list[MutableMapping[str, Any]], dict[str, None] | None] | None:
        """A fork's top-level maps and its record of written paths; ``None`` for a root.

        A top-level key reads as its value in the first of the maps that has
        it, and is written into the first map and recorded in the written
        paths (what :meth:`get` and :meth:`set` do for a one-segment path).
        The engine's tight path reads and writes top-level keys of a fork so,
        without a call per key ("map item" and "parallel branch" rows); no
        one else may change the maps or the record.
        """
        data = self._data
        if type(data) is not ChainMap:
            return None
        return data.maps, self._written

    def own(self) -> MutableMapping[str, Any]:
        """The map a fork writes its top-level keys into; the whole data at the root.

        A fork's own map holds a top-level key exactly when the fork wrote
        that key or a path inside it.
        """
        data = self._data
        return data.maps[0] if type(data) is ChainMap else data

    def wrote(self, path: str) -> bool:
        """Whether this fork wrote ``path``, a path above it or a path inside it.

        Always true at the root, which owns all its data.
        """
        written = self._written
        if written is None:
            return True
        if path in written:
            return True
        inside = path + "."  # what a path inside it starts with
        return any(p.startswith(inside) or inside.startswith(p + ".") for p in written)

    def written(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(path, current value)`` for each path written since the fork.

        A path that a later write above it took away (``a.b`` written, then
        ``a`` replaced by an object without ``b``) is left out: the later
        write, also yielded, says all there is, and a merge or a snapshot
        must never carry :data:`MISSING`.
        """
        written = self._written
        if written is None:
            return
        own = self.own()
        for path in written:
            if "." not in path:
                yield path, own[path]
            else:
                value = self.get(path)
                if value is not MISSING:
                    yield path, value

    def to_dict(self) -> dict[str, Any]:
        """Return the payload as a plain dict (a shallow copy of the top level)."""
        return dict(self._data)
