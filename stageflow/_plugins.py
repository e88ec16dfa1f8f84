"""Stage packs: stages shipped in their own distribution, found by entry point.

A stage pack is any installed distribution that declares an entry point in
the ``stageflow.stages`` group::

    [project.entry-points."stageflow.stages"]
    echo = "stageflow_echo_pack:register"

The entry point names a function ``register(registry)`` that registers the
pack's stages into the :class:`~stageflow.StageRegistry` it is given, or a
module that has such a function. :meth:`StageRegistry.load_plugins` loads
every installed pack (or the named ones) and returns a :class:`PluginReport`.

Each pack is loaded all-or-nothing: its ``register`` function runs against a
scratch registry, and its stages are moved into the target registry only when
none of their names is taken there. Every stage a pack brings gets the pack
as its ``source`` (``stage pack 'echo' (stageflow-echo-pack 0.1.0)``), which
the catalogue shows and conflict errors name.

This module sits below :mod:`stageflow._stages` (the registry calls it from
``StageRegistry.load_plugins``): it knows a registry only through the small
:class:`PackRegistry` protocol below and builds its scratch registry as
``type(registry)()``, so the two modules do not import each other.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, distributions, entry_points
from typing import Final, Protocol, TypeVar

import attrs

from stageflow._errors import (
    PluginLoadError,
    PluginNotFoundError,
    RegistryError,
    StageConflictError,
    shown_text,
)
from stageflow._json import a_python_type
from stageflow._log import get_logger
from stageflow._specs import StageSpec

__all__ = [
    "BUILTINS_PREFIX",
    "STAGE_PACK_GROUP",
    "FailedPack",
    "LoadedPack",
    "PackEntry",
    "PackRegistry",
    "PluginReport",
    "StagePack",
    "list_stage_packs",
    "load_plugins",
]

STAGE_PACK_GROUP: Final = "stageflow.stages"
"""The entry point group stage packs declare themselves in."""

_log = get_logger("stageflow.plugins")

_LEAVE_OUT: Final = "or load only the packs you need with load_plugins(names=[...])"

BUILTINS_PREFIX: Final = "builtins."
"""The names of :mod:`stageflow.builtins` (its ``PREFIX``, which sits above this module)."""


class PackEntry(Protocol):
    """What the loader reads of a registered stage (a ``StageEntry``)."""

    @property
    def name(self) -> str:
        """The stage name."""

    @property
    def spec(self) -> StageSpec:
        """The stage's declared spec."""

    @property
    def source(self) -> str:
        """Where the stage comes from."""

    @property
    def target(self) -> object:
        """The registered class or function."""


class PackRegistry(Protocol):
    """What the loader needs of a registry (a ``StageRegistry``); built empty with ``type(r)()``."""

    def __init__(self) -> None:
        """An empty registry."""

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered."""

    def get(self, name: str) -> PackEntry:
        """The entry registered under ``name``."""

    def catalogue(self, *, core: bool = True) -> tuple[PackEntry, ...]:
        """Every entry, sorted by name."""

    def add(
        self,
        target: object,
        *,
        name: str | None = None,
        spec: StageSpec | None = None,
        source: str | None = None,
    ) -> object:
        """Register ``target``."""


_R = TypeVar("_R", bound=PackRegistry)


@attrs.frozen
class StagePack:
    """An installed stage pack: one entry point in the ``stageflow.stages`` group.

    Attributes:
        name: the pack's name (the entry point name), used to select it.
        value: what the entry point points at, ``"module:function"`` or ``"module"``.
        distribution: the name of the distribution declaring it, or ``None``
            when the entry point does not come from an installed distribution.
        version: that distribution's version, or ``None``.
    """

    name: str
    value: str
    distribution: str | None
    version: str | None

    @property
    def source(self) -> str:
        """How the pack's stages are labelled in the catalogue and in errors."""
        if self.distribution is None:
            return f"stage pack {self.name!r} ({self.value})"
        return f"stage pack {self.name!r} ({self.distribution} {self.version})"

    @property
    def _dist_label(self) -> str | None:
        if self.distribution is None:
            return None
        return f"{self.distribution} {self.version}"


@attrs.frozen
class LoadedPack(StagePack):
    """A stage pack whose stages are now in the registry.

    Attributes:
        stages: the names of the stages the pack registered, sorted.
    """

    stages: tuple[str, ...]


@attrs.frozen
class FailedPack(StagePack):
    """A stage pack that could not be loaded; none of its stages were registered.

    Attributes:
        error: what went wrong, with the original exception as its ``__cause__``.
    """

    error: PluginLoadError


@attrs.frozen
class PluginReport:
    """What :meth:`StageRegistry.load_plugins` did.

    Attributes:
        loaded: the packs whose stages were registered, in load order.
        failed: the packs that failed, in load order; their stages were not
            registered.
    """

    loaded: tuple[LoadedPack, ...] = ()
    failed: tuple[FailedPack, ...] = ()

    @property
    def ok(self) -> bool:
        """``True`` when no pack failed."""
        return not self.failed


def _pack_of(entry_point: EntryPoint) -> StagePack:
    dist = entry_point.dist
    if dist is None:
        return StagePack(entry_point.name, entry_point.value, None, None)
    return StagePack(entry_point.name, entry_point.value, dist.name, dist.version)


def _declared() -> list[EntryPoint]:
    """Every entry point in the group, from the distributions whose metadata can be read."""
    try:
        return list(entry_points(group=STAGE_PACK_GROUP))
    except Exception:  # one broken distribution must not hide every pack
        pass
    # Some installed distribution (a stage pack or not) has entry point metadata that
    # cannot be parsed, and importlib.metadata reads all of them for any group: read
    # them one by one instead, the first of each name on sys.path (as it does).
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for dist in distributions():
        name = dist.metadata["Name"] or "?"
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            found.extend(dist.entry_points.select(group=STAGE_PACK_GROUP))
        except Exception as exc:  # reported; the others still load
            _log.warning(
                "plugin.unreadable",
                distribution=f"{name} {dist.version}",
                error=(
                    f"the entry point metadata of distribution {name!r} cannot be read "
                    f"({_raised(exc)}); stage packs it declares, if any, are "
                    "left out: reinstall or fix that distribution"
                ),
            )
    return found


def _discover() -> list[tuple[StagePack, EntryPoint]]:
    found = [(_pack_of(ep), ep) for ep in _declared()]
    found.sort(key=lambda pair: (pair[0].name, pair[0].distribution or "", pair[0].value))
    return found


def list_stage_packs() -> tuple[StagePack, ...]:
    """Return every installed stage pack, sorted by name, without loading any.

    A name declared by two distributions appears twice; loading it fails.
    """
    return tuple(pack for pack, _ in _discover())


class _PackFailure(Exception):
    """Internal: one pack failed; carries the message detail and the cause."""

    def __init__(self, detail: str, cause: BaseException) -> None:
        super().__init__(detail)
        self.detail = detail
        self.cause = cause


def _raised(exc: BaseException) -> str:
    """``Type: message`` for a pack's exception; a ``SystemExit`` says it tried to exit."""
    if isinstance(exc, SystemExit):
        # Loading a pack must never end the process (a command, a worker) that loads
        # it: sys.exit() at import is most often an entry point aimed at a script.
        return (
            f"SystemExit({shown_text(repr, exc.code)}): it called sys.exit() (is the entry point "
            "a script's module rather than the pack's?)"
        )
    return f"{type(exc).__name__}: {shown_text(str, exc)}"


def _register_function(obj: object, pack: StagePack) -> Callable[[_R], object]:
    """Find the ``register(registry)`` callable an entry point leads to."""
    target = obj
    if isinstance(obj, types.ModuleType):
        target = getattr(obj, "register", None)
        if target is None or not callable(target):
            raise TypeError(
                f"entry point {pack.value!r} names module {obj.__name__!r}, which has no "
                f"register(registry) function; add one or point the entry point at the "
                f"function ('{obj.__name__}:register')"
            )
    if inspect.isclass(target):
        raise TypeError(
            f"entry point {pack.value!r} names the class {target.__qualname__}; point it at "
            "a function register(registry) that registers the pack's stages"
        )
    if not callable(target):
        raise TypeError(
            f"entry point {pack.value!r} names {a_python_type(target)}, not a function; "
            "point it at a function register(registry) or at a module that has one"
        )
    if inspect.iscoroutinefunction(target):
        raise TypeError(
            f"register function {pack.value!r} is 'async def'; registering stages is "
            "synchronous, make it a plain 'def'"
        )
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # no signature to check (some C callables)
        signature = None
    if signature is not None:
        try:
            signature.bind(None)
        except TypeError:
            # Checked before the call: a TypeError from inside the function is the pack's bug.
            shown = signature.replace(return_annotation=inspect.Signature.empty)
            raise TypeError(
                f"register function {pack.value!r} has the signature {shown_text(str, shown)}, so "
                "it cannot be called with the registry alone; define 'def register(registry)'"
            ) from None
    fn: Callable[[_R], object] = target
    return fn


def _collect(pack: StagePack, entry_point: EntryPoint, registry: _R) -> _R:
    """Import the pack and run its register function against a scratch registry."""
    if EntryPoint.pattern.match(entry_point.value) is None:
        # load() raised AttributeError: 'NoneType' object has no attribute 'group'.
        malformed = ValueError(
            f"entry point {pack.value!r} is not 'module' or 'module:function' (an import "
            "path: underscores where the distribution name has dashes, no parentheses); fix "
            "it in the pack's pyproject.toml and reinstall the pack"
        )
        raise _PackFailure(f"is not a valid stage pack: {malformed}", malformed)
    try:
        obj = entry_point.load()
    except (Exception, SystemExit) as exc:  # a pack that exits is one that failed
        raise _PackFailure(
            f"could not be imported from {pack.value!r}: {_raised(exc)}; "
            f"fix or reinstall the pack, {_LEAVE_OUT}",
            exc,
        ) from exc
    try:
        register: Callable[[_R], object] = _register_function(obj, pack)
    except TypeError as exc:
        raise _PackFailure(f"is not a valid stage pack: {exc}", exc) from exc
    scratch = type(registry)()
    try:
        returned = register(scratch)
    except (Exception, SystemExit) as exc:
        raise _PackFailure(
            f"failed in its register function {pack.value!r}: {_raised(exc)}; "
            f"fix the pack, {_LEAVE_OUT}",
            exc,
        ) from exc
    if returned is not None:
        if inspect.iscoroutine(returned):
            returned.close()  # never awaited: close it so no warning leaks
        wrong = TypeError(
            f"register function {pack.value!r} returned {a_python_type(returned)}; "
            "it must register stages into the registry it is given and return None"
        )
        raise _PackFailure(f"is not a valid stage pack: {wrong}", wrong)
    return scratch


def _move(pack: StagePack, scratch: _R, registry: _R) -> tuple[str, ...]:
    """Move the scratch registry's stages into ``registry``: all of them or none."""
    source = pack.source
    entries = scratch.catalogue(core=False)
    reserved = [entry.name for entry in entries if entry.name.startswith(BUILTINS_PREFIX)]
    if reserved:
        names = ", ".join(repr(name) for name in reserved)
        wrong = RegistryError(f"stage pack {pack.name!r} registers {names}")
        raise _PackFailure(
            f"was not loaded: it registers {names}, in the {BUILTINS_PREFIX!r} namespace that "
            "is kept for stageflow.builtins (so that those names always mean the built-in "
            f"stages); rename them in the pack (e.g. '{pack.name}.<name>'), {_LEAVE_OUT}",
            wrong,
        )
    clashes = [
        StageConflictError(entry.name, registry.get(entry.name).source, source)
        for entry in entries
        if entry.name in registry
    ]
    if clashes:
        first = clashes[0]
        more = ""
        if len(clashes) > 1:
            others = ", ".join(repr(c.name) for c in clashes[1:])
            more = f" (also clashing: {others})"
        raise _PackFailure(f"was not loaded: {first}{more}, {_LEAVE_OUT}", first)
    # No name is taken and every entry already passed StageRegistry.add once,
    # so these calls cannot fail: the move is all-or-nothing.
    for entry in entries:
        registry.add(entry.target, name=entry.name, spec=entry.spec, source=source)
    return tuple(entry.name for entry in entries)


def _selected(names: Iterable[str] | None, found: list[tuple[StagePack, EntryPoint]]) -> list[str]:
    installed = sorted({pack.name for pack, _ in found})
    if names is None:
        return installed
    if isinstance(names, bytes) or not isinstance(names, str | Iterable):
        # bytes were read as the names 101, 99, ...; an int said "'int' object is not iterable".
        raise TypeError(
            f"load_plugins(names=...) was given {a_python_type(names)}, "
            f"{shown_text(repr, names)}; pass a list "
            "of pack names (the entry point names, such as ['echo']), or None for every pack"
        )
    requested = [names] if isinstance(names, str) else list(names)
    for name in requested:
        if not isinstance(name, str):
            raise TypeError(
                f"load_plugins(names=...) was given {a_python_type(name)} among the names; "
                "pass pack names as strings (the entry point names, such as 'echo')"
            )
    ordered = list(dict.fromkeys(requested))
    unknown = [name for name in ordered if name not in installed]
    if unknown:
        raise PluginNotFoundError(unknown, installed)
    return ordered


def load_plugins(
    registry: PackRegistry, names: Iterable[str] | None = None, *, strict: bool = False
) -> PluginReport:
    """Load installed stage packs into ``registry``; see :meth:`StageRegistry.load_plugins`."""
    found = _discover()
    selected = _selected(names, found)
    by_name: dict[str, list[tuple[StagePack, EntryPoint]]] = {}
    for pack, entry_point in found:
        by_name.setdefault(pack.name, []).append((pack, entry_point))

    loaded: list[LoadedPack] = []
    failed: list[FailedPack] = []
    for name in selected:
        candidates = by_name[name]
        pack, entry_point = candidates[0]
        try:
            if len(candidates) > 1:
                dists = ", ".join(p._dist_label or p.value for p, _ in candidates)
                twice = RuntimeError(f"entry point {name!r} is declared {len(candidates)} times")
                raise _PackFailure(
                    f"is declared by more than one distribution ({dists}); "
                    f"uninstall all but one, {_LEAVE_OUT}",
                    twice,
                )
            already = tuple(e.name for e in registry.catalogue() if e.source == pack.source)
            stages = already or _move(pack, _collect(pack, entry_point, registry), registry)
        except _PackFailure as failure:
            error = PluginLoadError(pack.name, failure.detail, distribution=pack._dist_label)
            error.__cause__ = failure.cause
            if strict:
                # The caller gets the error (the CLI prints it): a warning too said it twice.
                raise error from failure.cause
            _log.warning(
                "plugin.failed", pack=pack.name, distribution=pack._dist_label, error=str(error)
            )
            failed.append(FailedPack(**attrs.asdict(pack, recurse=False), error=error))
            continue
        loaded.append(LoadedPack(**attrs.asdict(pack, recurse=False), stages=tuple(sorted(stages))))
    return PluginReport(tuple(loaded), tuple(failed))
