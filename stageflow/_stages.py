"""Stages: the code a stage node runs, the context it gets, and the registry.

A stage is either a :class:`BaseStage` subclass or a plain ``async def`` that
takes a :class:`StageContext`. Both return a mapping of outputs (or ``None``)
which the node's ``outputs`` mapping writes into the session context.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import math
import numbers
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar

import attrs

from stageflow._errors import (
    CORE_SOURCE,
    RegistryError,
    StageConflictError,
    StageNotFoundError,
    shown_text,
)
from stageflow._json import a_python_type
from stageflow._log import get_logger
from stageflow._plugins import PluginReport, load_plugins
from stageflow._specs import StageSpec

if TYPE_CHECKING:
    from collections.abc import Iterable


__all__ = [
    "BaseStage",
    "StageContext",
    "StageEntry",
    "StageFunction",
    "StageRegistry",
    "get_stages",
    "register_stage",
]

StageOutputs = Mapping[str, Any] | None
StageFunction = Callable[["StageContext"], Awaitable[StageOutputs]]
"""An ``async def stage(ctx) -> Mapping | None`` registered as a stage."""

_T = TypeVar("_T", bound="StageFunction | type[BaseStage]")
"""What ``register`` takes: an ``async def`` stage or a :class:`BaseStage` subclass."""


class StageRuntime(Protocol):
    """What a :class:`StageContext` made with ``StageContext(...)`` calls: one object per attempt.

    A test double for a stage's own unit tests implements these three
    methods. The engine's context is a subclass
    (``stageflow._engine._runtime.StageWork``) that calls the engine itself.
    """

    def emit(self, type: str, payload: Mapping[str, Any] | None) -> None:
        """Record a stage event."""

    def wait_input(self, type: str, timeout: float | None) -> Coroutine[Any, Any, Any]:
        """Return an awaitable that waits for an input of ``type``."""

    def sleep(
        self, seconds: float | None, until: datetime.datetime | None
    ) -> Coroutine[Any, Any, float]:
        """Return an awaitable that sleeps ``seconds`` or until ``until``."""


class StageContext:
    """What a stage sees while it runs: its arguments, config and the session.

    Attributes:
        arguments: argument name -> value read from the context (read-only;
            a path with nothing stored is left out, a stored ``null`` is ``None``).
        config: the node's static ``config``, to read (a ``Mapping``). A node
            with a config gives each attempt a fresh copy, so a stage that
            changes it anyway changes nothing else; a node without one gives
            an empty mapping that cannot be changed.
        session_id: id of the running session.
        node_id: id of the stage node.
        node_path: the node's position, ``parallel/branch/node`` style.
        stage: the registered stage name.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        spec: the stage's declared spec.
        execution_key: a key for this visit of the node, to pass as the
            idempotency key of side effects (a payment, an email): the same
            for every attempt of the visit and when the node runs again after
            a crash or restore, different for every later visit of the node
            (a loop), unique across parallel branches, map items and
            subpipeline calls. ``session_id/node.3`` style; treat it as
            opaque. See ``docs/snapshots.md``, "Side effects".
    """

    # execution_key, node_path and log are properties made when first read:
    # most stages never read them, and the engine's context (a subclass,
    # stageflow._engine._runtime.StageWork) is built by slot stores without
    # __init__'s keyword call ("sequential stage node" benchmark row). The
    # slots behind them: _key / _node_path / _log (left unset until made: a
    # store less each, same row), _origin / _visit / _parent (what they are
    # made from).
    __slots__ = (
        "_key",
        "_log",
        "_node_path",
        "_origin",
        "_parent",
        "_runtime",
        "_visit",
        "arguments",
        "attempt",
        "config",
        "node_id",
        "session_id",
        "spec",
        "stage",
    )

    def __init__(
        self,
        *,
        arguments: Mapping[str, Any],
        config: Mapping[str, Any],
        session_id: str,
        node_id: str,
        node_path: str,
        stage: str,
        attempt: int,
        runtime: StageRuntime,
        spec: StageSpec | None = None,
        execution_key: str | None = None,
    ) -> None:
        self.arguments = arguments
        self.config = config
        self.session_id = session_id
        self.node_id = node_id
        self._node_path: str = node_path
        self._parent = ""
        self.stage = stage
        self.attempt = attempt
        self.spec = spec if spec is not None else StageSpec()
        self._key: str = execution_key if execution_key is not None else f"{session_id}/{node_path}"
        self._origin = ""
        self._visit = 0
        # The engine's side of this attempt (its journal, timer and session).
        self._runtime = runtime
        self._log: Any  # unset until read (see the slots)

    @property
    def node_path(self) -> str:
        """The node's position, ``parallel/branch/node`` style."""
        try:
            return self._node_path
        except AttributeError:  # unset until read (see the slots)
            parent = self._parent
            path = self._node_path = f"{parent}/{self.node_id}" if parent else self.node_id
            return path

    @node_path.setter
    def node_path(self, value: str) -> None:
        self._node_path = value

    @property
    def execution_key(self) -> str:
        """A key for this visit of the node (see the class docstring)."""
        try:
            return self._key
        except AttributeError:  # unset until read (see the slots)
            key = self._key = f"{self.session_id}{self._origin}/{self.node_id}.{self._visit}"
            return key

    @execution_key.setter
    def execution_key(self, value: str) -> None:
        self._key = value

    @property
    def log(self) -> Any:
        """A structlog logger bound to the session, node, stage and attempt.

        It follows the application's structlog configuration; without one it
        logs through the standard ``logging`` module.
        """
        try:
            return self._log
        except AttributeError:  # unset until read (see the slots)
            log = self._log = get_logger("stageflow.stage").bind(
                session_id=self.session_id,
                node_id=self.node_id,
                stage=self.stage,
                attempt=self.attempt,
            )
            return log

    def emit(self, type: str, payload: Mapping[str, Any] | None = None) -> None:
        """Record a stage event of ``type`` with a JSON ``payload`` in the session history."""
        self._runtime.emit(type, payload)

    def wait_input(self, type: str, timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """Wait for an external input of ``type``; ``await`` it for the payload.

        Args:
            type: the input type, as sent with ``session.send_input(type, payload)``.
            timeout: seconds to wait; ``None`` (or infinity) waits as long as
                the session runs, and 0 (or less) takes an input only if one
                is queued.

        Raises:
            TypeError: ``type`` is not a non-empty string (no sender could send
                it), or ``timeout`` is not a number of seconds (NaN included).
            RunSuspended: on trio, ``run(suspend=True)`` suspends the session
                at this wait (see :class:`~stageflow.RunSuspended`).
        """
        # The engine's coroutine itself: one frame less for every waiting session.
        return self._runtime.wait_input(type, input_timeout(self, type, timeout))

    async def sleep(self, seconds: float) -> float:
        """Sleep for ``seconds``; the deadline survives a snapshot and restore.

        Prefer this to ``anyio.sleep`` in stages: a session restored from a
        snapshot taken during the sleep wakes at the original deadline (an
        absolute UTC time), not ``seconds`` after the restore.

        Infinity (or a number past any date) sleeps until the latest time a
        deadline holds, the end of year 9999 (UTC).

        Returns:
            the seconds planned by the first call (also after a restore).

        Raises:
            TypeError: ``seconds`` is not a number (NaN included).
            RunSuspended: on trio, ``run(suspend=True)`` suspends the session
                at this wait (see :class:`~stageflow.RunSuspended`).
        """
        return await self._runtime.sleep(sleep_seconds(self, seconds), None)

    async def sleep_until(self, when: datetime.datetime) -> float:
        """Sleep until the aware datetime ``when`` (at once if it has passed).

        Like :meth:`sleep`, the deadline survives a snapshot and restore.

        Returns:
            the seconds planned by the first call (also after a restore).

        Raises:
            TypeError: ``when`` is not a ``datetime.datetime``.
            ValueError: ``when`` has no UTC offset.
            RunSuspended: on trio, ``run(suspend=True)`` suspends the session
                at this wait (see :class:`~stageflow.RunSuspended`).
        """
        return await self._runtime.sleep(None, sleep_until(self, when))


# The checks of StageContext's waits and sleeps, shared with the engine's
# subclass (stageflow._engine._runtime.StageWork), which calls the engine
# directly instead of through a runtime object.


def input_timeout(ctx: StageContext, type: str, timeout: float | None) -> float | None:
    """``wait_input``'s arguments checked; its timeout as the engine takes it.

    Raises:
        TypeError: ``type`` is not a non-empty string, or ``timeout`` is not a
            number of seconds (NaN included).
    """
    if not isinstance(type, str) or not type:
        # No sender can send such a type (send_input refuses it): the wait would never end.
        raise TypeError(
            f"ctx.wait_input({type!r}) at node {ctx.node_id!r}: the input type must be a "
            "non-empty string, the type a sender passes to session.send_input(type, payload)"
        )
    if timeout is not None and not _is_duration(timeout):
        raise TypeError(
            f"ctx.wait_input({type!r}, timeout={timeout!r}) at node {ctx.node_id!r}: the "
            "timeout must be a number of seconds (not NaN), or None to wait as long as the "
            "session runs"
        )
    if timeout is not None:
        # History and snapshots hold no infinity (not JSON): an endless wait is
        # one without a timeout, and one past its deadline already a poll.
        seconds = _seconds(timeout)
        if seconds == math.inf:
            timeout = None
        elif seconds < 0:
            timeout = 0
    return timeout


def sleep_seconds(ctx: StageContext, seconds: float) -> float:
    """``sleep``'s duration checked, as a float.

    Raises:
        TypeError: ``seconds`` is not a number (NaN included).
    """
    if not _is_duration(seconds):
        raise TypeError(
            f"ctx.sleep({seconds!r}) at node {ctx.node_id!r}: the duration must be a number "
            "of seconds (not NaN); to sleep until a time, use ctx.sleep_until(datetime)"
        )
    return _seconds(seconds)


def sleep_until(ctx: StageContext, when: datetime.datetime) -> datetime.datetime:
    """``sleep_until``'s time checked.

    Raises:
        TypeError: ``when`` is not a ``datetime.datetime``.
        ValueError: ``when`` has no UTC offset.
    """
    if not isinstance(when, datetime.datetime):
        raise TypeError(
            f"sleep_until({when!r}) at node {ctx.node_id!r}: pass an aware datetime.datetime "
            "(for text, datetime.datetime.fromisoformat('2030-01-01T09:00:00+00:00')), or "
            "use ctx.sleep(seconds)"
        )
    if when.tzinfo is None:
        raise ValueError(
            f"sleep_until({when.isoformat()!r}) at node {ctx.node_id!r}: the time has no UTC "
            "offset; pass an aware datetime, e.g. with tzinfo=datetime.UTC"
        )
    return when


def _is_duration(value: object) -> bool:
    """Whether ``value`` is a number of seconds: a real number, not a bool and not NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not (isinstance(value, float) and math.isnan(value))  # an int may be past any float


def _seconds(value: float) -> float:
    """A duration (see :func:`_is_duration`) as a float: an int past any float is infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# The config of a node without one: an empty mapping that cannot be changed,
# shared by every such context (the engine's empty mapping too).
EMPTY_CONFIG: Final[Mapping[str, Any]] = MappingProxyType({})


class BaseStage:
    """Base class for class-based stages.

    Subclasses implement :meth:`run` and may declare a :class:`StageSpec` in
    the class attribute ``spec`` (immutable, so never shared mutable state).
    A fresh instance is created for every attempt.

    Example::

        @stageflow.register_stage("Greet")
        class Greet(stageflow.BaseStage):
            spec = stageflow.StageSpec(description="Say hello")

            async def run(self, ctx):
                return {"greeting": f"hello {ctx.arguments['name']}"}
    """

    spec: ClassVar[StageSpec] = StageSpec()

    async def run(self, ctx: StageContext) -> StageOutputs:
        """Do the stage's work and return its outputs (a mapping) or ``None``."""
        raise NotImplementedError(f"{type(self).__name__}.run() is not implemented")

    async def cleanup(self, ctx: StageContext, outcome: str) -> None:
        """Release what the attempt acquired; called after every attempt.

        Runs shielded from cancellation (on asyncio from ``Task.cancel()``
        too) and bounded by ``limits.cleanup_timeout``.
        ``outcome`` is ``succeeded``, ``failed`` or ``cancelled``. Errors it
        raises are logged and recorded (``cleanup_failed``), never raised.
        """


class _FunctionStage(BaseStage):
    __slots__ = ("_fn",)

    def __init__(self, fn: StageFunction) -> None:
        self._fn = fn

    async def run(self, ctx: StageContext) -> StageOutputs:
        return await self._fn(ctx)


@attrs.frozen
class StageEntry:
    """One registered stage.

    Attributes:
        name: the name pipelines use in ``"stage"``.
        factory: builds a fresh stage instance (called once per attempt).
        spec: the stage's declared spec.
        source: where it was registered from (module, or stage pack name).
        target: the registered class or function.
        has_cleanup: whether the stage overrides :meth:`BaseStage.cleanup`.
        function: the registered ``async def``, which the engine awaits
            directly (``None`` for a stage class: ``factory`` makes one per attempt).
    """

    name: str
    factory: Callable[[], BaseStage]
    spec: StageSpec
    source: str
    target: object
    has_cleanup: bool = False
    function: StageFunction | None = None


def _describe_source(obj: object) -> str:
    if isinstance(obj, functools.partial):
        # Its module is functools and it has no name: say what it binds.
        return f"functools.partial({_describe_source(obj.func)})"
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname if isinstance(qualname, str) else shown_text(repr, obj)}"


def _takes_a_context(fn: Callable[..., Any], *bound: object) -> str | None:
    """``fn``'s signature when it cannot be called with ``bound`` and the context, else None."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check (some C callables)
        return None
    try:
        signature.bind(*bound, None)
    except TypeError:
        return str(signature)
    return None


def _check_stage_class(cls: type[BaseStage], name: str, origin: str) -> None:
    """Catch at registration what would otherwise fail on every run of the stage."""
    if cls.run is BaseStage.run or not inspect.iscoroutinefunction(cls.run):
        raise RegistryError(
            f"stage {name!r} from {origin} does not implement run(); define "
            "'async def run(self, ctx)' returning a mapping of outputs or None"
        )
    wrong = _takes_a_context(cls.run, None)
    if wrong is not None:
        raise RegistryError(
            f"stage {name!r} from {origin} has run{wrong}, which cannot be called with the "
            "stage's context alone; define 'async def run(self, ctx)' and read settings "
            "from ctx.config and ctx.arguments"
        )
    if cls.cleanup is not BaseStage.cleanup:
        wrong = _takes_a_context(cls.cleanup, None, None)
        if not inspect.iscoroutinefunction(cls.cleanup) or wrong is not None:
            what = f"cleanup{wrong}" if wrong is not None else "a cleanup() that is not async"
            raise RegistryError(
                f"stage {name!r} from {origin} has {what}; define 'async def cleanup(self, "
                "ctx, outcome)': the engine awaits it after every attempt"
            )
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to check (some C types)
        return
    try:
        signature.bind()
    except TypeError:
        raise RegistryError(
            f"stage {name!r} from {origin} cannot be built without arguments "
            f"({cls.__name__}{signature}); a fresh instance is made for every attempt, "
            "so read settings from ctx.config instead of __init__ arguments"
        ) from None


_CORE: dict[str, StageEntry] = {}
"""Core stages (``WaitStage``, ``SleepStage``): part of every registry."""


def register_core_stage(target: type[BaseStage], name: str) -> None:
    """Make ``target`` available in every registry under ``name`` (stageflow itself only)."""
    _CORE[name] = StageEntry(name, target, target.spec, CORE_SOURCE, target)


class StageRegistry:
    """A set of named stages that sessions look stages up in.

    Every registry also holds the core stages (``WaitStage``, ``SleepStage``),
    so pipelines can use them without registering anything. Registering a
    name twice, or a core stage's name, is a
    :class:`~stageflow.StageConflictError` naming both sources; nothing is
    overridden silently.
    """

    def __init__(self) -> None:
        self._entries: dict[str, StageEntry] = {}

    def register(
        self, name: str | None = None, *, spec: StageSpec | None = None, source: str | None = None
    ) -> Callable[[_T], _T]:
        """Decorator registering a :class:`BaseStage` subclass or an ``async def`` stage.

        Args:
            name: the name pipelines use; defaults to the class or function name.
            spec: the stage's spec; defaults to the class's ``spec``.
            source: where the stage comes from, shown in the catalogue and in
                conflict errors; defaults to the defining module.
        """
        if name is not None and not isinstance(name, str):
            # `@registry.register` without parentheses passes the stage as the name.
            raise RegistryError(
                f"register() was given {name!r} as the stage name; decorate with "
                "@registry.register() or @registry.register('Name'), with parentheses"
            )

        def decorator(target: _T) -> _T:
            self.add(target, name=name, spec=spec, source=source)
            return target

        return decorator

    def add(
        self,
        target: object,
        *,
        name: str | None = None,
        spec: StageSpec | None = None,
        source: str | None = None,
    ) -> StageEntry:
        """Register ``target`` (see :meth:`register`) and return its entry."""
        if name is not None and (not isinstance(name, str) or not name):
            raise RegistryError(
                f"stage name {name!r} given for {shown_text(repr, target)} is not a non-empty "
                "string; pass name='TheName', or leave it out to use the class or function name"
            )
        if isinstance(target, BaseStage):
            # Before the name: an instance has no __name__, and "pass name=..." would
            # only lead to the next error.
            cls = type(target)
            raise RegistryError(
                f"stage {name or cls.__name__!r} is given as an instance of {cls.__qualname__}; "
                f"register the class itself ({cls.__qualname__}, not {cls.__qualname__}()): "
                "a fresh instance is made for every attempt"
            )
        stage_name = name or getattr(target, "__name__", None)
        if not isinstance(stage_name, str) or not stage_name:
            raise RegistryError(
                f"cannot tell the name of stage {shown_text(repr, target)}; pass name=..."
            )
        origin = source or _describe_source(target)
        factory: Callable[[], BaseStage]
        function: StageFunction | None = None
        if inspect.isclass(target) and issubclass(target, BaseStage):
            _check_stage_class(target, stage_name, origin)
            factory = target
            stage_spec = spec or target.spec
        elif inspect.iscoroutinefunction(target):
            wrong = _takes_a_context(target)
            if wrong is not None:
                raise RegistryError(
                    f"stage {stage_name!r} from {origin} takes {wrong}, so it cannot be "
                    "called with the stage's context alone; define 'async def "
                    f"{getattr(target, '__name__', 'stage')}(ctx)' and read settings from "
                    "ctx.config and ctx.arguments (or bind the others with functools.partial)"
                )
            fn: StageFunction = target
            function = fn

            def factory() -> BaseStage:
                return _FunctionStage(fn)

            stage_spec = spec or StageSpec()
        else:
            raise RegistryError(
                f"stage {stage_name!r} from {origin} is neither a BaseStage subclass nor an "
                "async function; subclass stageflow.BaseStage or use 'async def'"
            )
        if not isinstance(stage_spec, StageSpec):
            raise RegistryError(
                f"stage {stage_name!r} from {origin} has a spec that is "
                f"{a_python_type(stage_spec)}; use stageflow.StageSpec(...)"
            )
        existing = self._entries.get(stage_name) or _CORE.get(stage_name)
        if existing is not None:
            raise StageConflictError(stage_name, existing.source, origin)
        has_cleanup = getattr(target, "cleanup", BaseStage.cleanup) is not BaseStage.cleanup
        entry = StageEntry(stage_name, factory, stage_spec, origin, target, has_cleanup, function)
        self._entries[stage_name] = entry
        return entry

    def load_plugins(
        self, names: Iterable[str] | None = None, *, strict: bool = False
    ) -> PluginReport:
        """Register the stages of installed stage packs (entry point group ``stageflow.stages``).

        Each pack is an entry point naming a function ``register(registry)``, or
        a module with such a function; it is loaded all-or-nothing: a pack
        that fails to import, raises in ``register``, or brings a stage name
        that is already taken registers none of its stages. Stages from a pack
        get ``source`` ``"stage pack 'NAME' (DISTRIBUTION VERSION)"``. Loading
        a pack that is already in this registry again changes nothing.

        Args:
            names: the packs to load, in this order; ``None`` loads every
                installed pack in name order, an empty list loads none. A
                single string is taken as one name.
            strict: raise the first failure instead of reporting it; packs
                loaded before it stay registered.

        Returns:
            A :class:`~stageflow.PluginReport` listing the loaded and the
            failed packs.

        Raises:
            PluginNotFoundError: a requested name is not installed (raised
                before anything is loaded; the message lists the installed packs).
            PluginLoadError: with ``strict=True``, the first pack that failed;
                the original exception is its ``__cause__``.
            TypeError: ``names`` is no string nor list of strings (``b"echo"``, ``5``).
        """
        return load_plugins(self, names, strict=strict)

    def get(self, name: str) -> StageEntry:
        """Return the entry registered under ``name``.

        Raises:
            StageNotFoundError: nothing is registered under that name.
            TypeError: ``name`` is not a string.
        """
        if not isinstance(name, str):
            # An int named itself in the fix ("register it with @registry.register(1)"),
            # a list was dict's "unhashable type". A str subclass (a StrEnum member)
            # is a name, as register() takes it.
            raise TypeError(
                f"StageRegistry.get() was given {a_python_type(name)}; pass a stage name, a "
                f"string (the registry has: {', '.join(self.names())})"
            )
        entry = self._entries.get(name) or _CORE.get(name)
        if entry is None:
            raise StageNotFoundError(name, self.names())
        return entry

    def catalogue(self, *, core: bool = True) -> tuple[StageEntry, ...]:
        """Every stage sorted by name; ``core=False`` leaves out WaitStage and SleepStage."""
        if not core:
            return tuple(self._entries[name] for name in sorted(self._entries))
        return tuple(self.get(name) for name in self.names())

    def names(self, *, core: bool = True) -> tuple[str, ...]:
        """The stage names, sorted; ``core=False`` leaves out WaitStage and SleepStage."""
        return tuple(sorted({*self._entries, *_CORE} if core else self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in _CORE

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"<StageRegistry with {len(self)} stages>"


_default_registry = StageRegistry()


def register_stage(name: str | None = None, *, spec: StageSpec | None = None) -> Callable[[_T], _T]:
    """Register a stage into the default registry (see :meth:`StageRegistry.register`)."""
    return _default_registry.register(name, spec=spec)


def get_stages() -> Mapping[str, StageEntry]:
    """Return the default registry's stages (core ones included): name -> :class:`StageEntry`."""
    return MappingProxyType({entry.name: entry for entry in _default_registry.catalogue()})


def default_registry() -> StageRegistry:
    """Return the registry used when a session is given none."""
    return _default_registry
