"""The one place the engine reaches past anyio to trio: chosen once per run.

Everything else in the package is written against anyio. On trio, the
reference backend, two primitives are taken from trio itself because they sit
on the hot path (benchmark rows in ``benchmarks/RESULTS.md``):

- a raw nursery costs about a third of anyio's task group per child
  ("parallel branch, per branch" and "map item" rows);
- trio's own ``checkpoint_if_cancelled`` costs about a third of anyio's, and
  it runs once per node ("sequential stage node, per node" row); the tight
  path tests the flags it tests itself (:func:`cancel_flags`), and awaits it only
  when that flag is up (the same row);
- trio's own ``CancelScope`` for the run's scope: anyio's wraps one, which
  costs about 2 us per run and 230 bytes per live waiting session ("3-node
  run" and "paused session, memory each" rows);
- for an input wait, a one-shot wake-up (:class:`TrioWake`) that parks the
  waiting task with trio's ``wait_task_rescheduled`` itself: trio's ``Event``
  (let alone anyio's, which wraps it) keeps a set of tasks, a closure and one
  more coroutine frame for every waiting session, about 700 bytes and three
  objects the collector walks ("paused session" rows);
- the run's cancellation class is ``(trio.Cancelled, RunSuspended)``: in
  suspend mode the wait that leaves every position blocked raises
  :class:`~stageflow.RunSuspended` at once, where trio would deliver its
  cancellation through a pass of its scheduler, about a quarter of a
  suspended pause ("paused session, suspended" rows).

On any other backend both come from anyio, and work that must finish (a
stage's cleanup) runs in an asyncio task of its own (:func:`to_its_end`):
anyio's shield does not hold off asyncio's own ``Task.cancel()``. The task
groups of branches and map items are anyio's, with a ``KeyboardInterrupt`` or
``SystemExit`` a task raises carried to the task that opened the group
(:class:`CarryingTaskGroup`), as trio's nursery does: asyncio would re-raise it
out of its event loop instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import anyio
import anyio.lowlevel
import sniffio
import trio
import trio.testing

from stageflow._errors import RunSuspended

__all__ = [
    "Backend",
    "CancelFlags",
    "CarryingTaskGroup",
    "CancelScopeLike",
    "Cancellations",
    "EventLike",
    "TrioWake",
    "NO_FLAGS",
    "call_soon_from_thread",
    "call_from_thread",
    "cancel_flags",
    "current_backend",
    "in_trio_run",
    "exit_request",
    "is_cancellation",
    "is_interrupt",
    "host_task",
    "is_stray_cancellation",
    "is_suspension",
    "loop_handles",
    "requested_task",
    "stage_failure",
    "take_stray_request",
    "loop_handles_if_any",
    "run_in_virtual_time",
    "to_its_end",
    "ungrouped",
]

_T = TypeVar("_T")

Cancellations = type[BaseException] | tuple[type[BaseException], ...]
"""What a backend's run counts as a cancellation (an ``isinstance`` class or classes)."""


class CancelScopeLike(Protocol):
    """What the engine uses of a cancel scope: trio's and anyio's both have it."""

    deadline: float

    def cancel(self) -> None:
        """Cancel everything in the scope."""

    @property
    def cancelled_caught(self) -> bool:
        """Whether the scope caught its own cancellation."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> bool: ...


class EventLike(Protocol):
    """What the engine uses of an event: trio's and anyio's both have it."""

    def set(self) -> None:
        """Wake every waiter."""

    def is_set(self) -> bool:
        """Whether it was set."""

    def wait(self) -> Awaitable[Any]:
        """Wait until it is set."""


class TrioWake:
    """A one-shot event for one waiting task, on trio (what ``trio.Event`` does, lighter).

    ``wait()`` returns trio's ``wait_task_rescheduled`` coroutine itself (no
    frame of its own) with this object as the abort function (no closure);
    ``set()`` reschedules the parked task. Only one task may wait on it, and
    it must await ``wait()`` at once: the task is taken when ``wait()`` is called.
    """

    __slots__ = ("_set", "_task")

    def __init__(self) -> None:
        self._set = False
        self._task: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        """Whether it was set."""
        return self._set

    def set(self) -> None:
        """Wake the task waiting on it, if any (once)."""
        if self._set:
            return
        self._set = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    def wait(self) -> Awaitable[Any]:
        """Park the calling task until :meth:`set` (a checkpoint if it was set already)."""
        if self._set:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 (awaited by the caller)
        self._task = trio.lowlevel.current_task()
        return trio.lowlevel.wait_task_rescheduled(self)  # noqa: ASYNC105 (the same)

    def __call__(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        """Trio's abort callback: a cancelled wait stops waiting (``set()`` wakes nobody)."""
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


# The message of the group a carried KeyboardInterrupt or SystemExit comes in:
# anyio's own, as for any other BaseException a task of the group raises.
_CARRIED: Final = "unhandled errors in a TaskGroup"


class CarryingTaskGroup:
    """anyio's task group, with a task's ``KeyboardInterrupt`` or ``SystemExit`` carried out.

    On asyncio a task that raises either exception has it re-raised out of
    the event loop (``Task.__step``): the loop stops, the caller of
    ``run()`` cannot catch it, and every other task of the program is torn
    down. Each task here catches it instead, cancels the group, and the
    group raises it on exit, in a ``BaseExceptionGroup`` as trio's nursery
    (and anyio's task group, for any other ``BaseException``) would, in the
    task that opened the group. Used on asyncio only; on trio the nursery
    does this itself.
    """

    __slots__ = ("_carried", "_group", "cancel_scope")

    def __init__(self) -> None:
        self._group = anyio.create_task_group()
        self._carried: list[BaseException] = []
        self.cancel_scope = self._group.cancel_scope

    async def __aenter__(self) -> CarryingTaskGroup:
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        try:
            suppressed = await self._group.__aexit__(*exc_info)
        except BaseException as exc:
            if not self._carried:
                raise
            # A cancellation that came meanwhile (from outside the group) is
            # dropped: the interrupt goes on up, and ends the run anyway.
            others = [] if is_cancellation(exc, asyncio.CancelledError) else [exc]
            raise BaseExceptionGroup(_CARRIED, [*self._carried, *others]) from None
        if self._carried:
            raise BaseExceptionGroup(_CARRIED, self._carried)
        return bool(suppressed)

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any, name: Any) -> None:
        """Start ``function(*args)`` in the group, its interrupt carried (see the class)."""
        self._group.start_soon(self._carrying, function, *args, name=name)

    async def _carrying(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await function(*args)
        except (KeyboardInterrupt, SystemExit) as exc:
            self._carried.append(exc)
            self._group.cancel_scope.cancel()


class Backend(NamedTuple):
    """The task group opener, checkpoints, cancel scopes and the cancellation class of a run."""

    open_task_group: Callable[[], Any]
    checkpoint: Callable[[], Awaitable[None]]  # a cancellation check; does not yield
    yield_: Callable[[], Awaitable[None]]  # a cancellation check that also yields
    cancelled: Cancellations
    cancel_scope: Callable[[], CancelScopeLike]
    event: Callable[[], EventLike]
    # The event loop's clock: anyio.current_time() finds the backend first, once
    # per call (once per run: "paused session" rows).
    current_time: Callable[[], float]


_TRIO = Backend(
    trio.open_nursery,
    trio.lowlevel.checkpoint_if_cancelled,
    trio.lowlevel.checkpoint,
    (trio.Cancelled, RunSuspended),
    trio.CancelScope,
    TrioWake,
    trio.current_time,
)


# Library name -> anyio's primitives for it, made once: a run keeps its
# backend, and a new one per run was one more object for the collector to walk
# in every live waiting session off trio ("paused session" rows).
_ANYIO: Final[dict[str, Backend]] = {}


def current_backend() -> Backend:
    """The primitives for the event loop running now."""
    library = sniffio.current_async_library()
    if library == "trio":
        return _TRIO
    backend = _ANYIO.get(library)
    if backend is None:
        backend = _ANYIO[library] = Backend(
            CarryingTaskGroup,
            anyio.lowlevel.checkpoint_if_cancelled,
            anyio.lowlevel.checkpoint,
            anyio.get_cancelled_exc_class(),
            anyio.CancelScope,
            anyio.Event,
            anyio.current_time,
        )
    return backend


# Whether trio's tasks have been found to have what cancel_flags reads.
_flags = False
# A CancelFlags made without the named tuple's own __new__, a Python call
# (once per path, so once per map item: "map item" row).
_new_flags: Final = tuple.__new__


class CancelFlags(NamedTuple):
    """What trio's ``checkpoint_if_cancelled`` tests, read once per path.

    ``status`` is the running task's cancel status: the object of the
    innermost cancel scope around the caller, which stays the task's status
    for as long as the caller stays in that scope (scopes entered below it
    restore it on exit). ``runner`` is trio's run state (its ``ki_pending``
    and ``main_task``), ``task`` the running task.
    """

    status: Any
    runner: Any
    task: Any


# What a caller uses for the flags off trio: await the checkpoint every node.
NO_FLAGS: Final = (None, None, None)


def cancel_flags(backend: Backend, host: asyncio.Task[Any] | None = None) -> CancelFlags | None:
    """The flags a cancellation test reads on trio, without a call; ``None`` elsewhere.

    ``checkpoint_if_cancelled`` does nothing but this test (and counts it)
    unless ``status.effectively_cancelled`` or, for the main task,
    ``runner.ki_pending``. The tight path makes the same test and awaits
    ``backend.checkpoint()`` only when it is true: the same checkpoint,
    without a coroutine per node ("sequential stage node" row). ``None``
    (await the checkpoint every time) on asyncio, and on a trio whose tasks
    no longer have these private attributes: they are read here, in the one
    module that reaches into trio.

    Off trio, given the run's ``host``, the flags of a task of the run's own
    (a branch's, a map item's) are ``(None, None, task)``: the tight paths
    look at that task's cancellation requests when a stage returns (see
    :func:`take_stray_request`). ``None`` in the host.
    """
    global _flags
    if backend is not _TRIO:
        if host is None:
            return None
        own = asyncio.current_task()
        return None if own is host else _new_flags(CancelFlags, (None, None, own))
    task = trio.lowlevel.current_task()
    status = getattr(task, "_cancel_status", None)
    runner = getattr(task, "_runner", None)
    if not _flags:
        # Checked on the first task only: every trio task has the same
        # attributes (a map item's or a branch's path is a path of its own:
        # "map item" row).
        if not (
            hasattr(status, "effectively_cancelled")
            and hasattr(runner, "ki_pending")
            and hasattr(runner, "main_task")
        ):  # pragma: no cover - a trio that changed its internals
            return None
        _flags = True
    return _new_flags(CancelFlags, (status, runner, task))


# The event loop the last run ran on: (its raw token, anyio's token for it,
# its thread). anyio makes a new token object per call; every run of a loop
# shares one instead ("paused session, memory each" benchmark row: a live run
# keeps its token). One entry: a process runs one loop at a time per thread.
_loop: tuple[object, anyio.lowlevel.EventLoopToken, int] | None = None


def loop_handles() -> tuple[anyio.lowlevel.EventLoopToken, int]:
    """Anyio's token for the event loop running now, and its thread (shared per loop)."""
    global _loop
    if sniffio.current_async_library() == "trio":
        raw: object = trio.lowlevel.current_trio_token()
    else:
        raw = asyncio.get_running_loop()
    cached = _loop
    thread = threading.get_ident()
    if cached is not None and cached[0] is raw and cached[2] == thread:
        return cached[1], cached[2]
    token = anyio.lowlevel.current_token()
    _loop = (raw, token, thread)
    return token, thread


def loop_handles_if_any() -> tuple[anyio.lowlevel.EventLoopToken, int] | None:
    """:func:`loop_handles` when an event loop runs in this thread, else ``None``."""
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None
    return loop_handles()


def call_soon_from_thread(
    token: anyio.lowlevel.EventLoopToken, function: Callable[..., object], *args: Any
) -> bool:
    """From another thread, have the event loop of ``token`` call ``function(*args)`` soon.

    Does not wait for it (the loop's thread may be the one waiting for the
    caller). ``function`` must not raise: on trio that would crash the run.
    Returns ``False`` when that loop has finished, so nothing will call it.
    """
    native = token.native_token
    try:
        if isinstance(native, trio.lowlevel.TrioToken):
            native.run_sync_soon(function, *args)
        else:
            assert isinstance(native, asyncio.AbstractEventLoop)
            native.call_soon_threadsafe(function, *args)
    except RuntimeError:  # trio's RunFinishedError, asyncio's "Event loop is closed"
        return False
    return True


def call_from_thread(
    token: anyio.lowlevel.EventLoopToken, function: Callable[..., _T], *args: Any
) -> _T:
    """From another thread, have the event loop of ``token`` call ``function(*args)``; wait for it.

    As ``anyio.from_thread.run_sync``, also from a thread that runs a trio
    loop of its own (blocked meanwhile), which trio refuses to block with
    "this is a blocking function; call it from a thread" (a reader of an
    ``events()`` stream there; from an asyncio loop anyio blocks it).
    Returns or raises what ``function`` did.

    Raises:
        anyio.RunFinishedError: that loop has finished.
    """
    if not (
        isinstance(token.native_token, trio.lowlevel.TrioToken) and trio.lowlevel.in_trio_run()
    ):
        return anyio.from_thread.run_sync(function, *args, token=token)
    done = threading.Event()
    returned: list[_T] = []
    raised: list[BaseException] = []

    def call() -> None:
        try:
            returned.append(function(*args))
        except BaseException as exc:  # raised in the caller's thread, not in the loop
            raised.append(exc)
        finally:
            done.set()

    if not call_soon_from_thread(token, call):
        raise anyio.RunFinishedError
    # trio calls whatever run_sync_soon took before its run ends.
    done.wait()
    if raised:
        raise raised[0]
    return returned[0]


async def to_its_end(
    backend: Backend, function: Callable[..., Awaitable[None]], *args: Any
) -> None:
    """Await ``function(*args)`` to its end, in a shielded cancel scope, on any backend.

    anyio's shield holds off anyio's cancellations, but on asyncio not a native
    one (``Task.cancel()``, ``asyncio.timeout``, a ``TaskGroup`` shutting
    down): it stopped the work at its next await. There the work runs in a task
    of its own, awaited to its end; what it raised is raised here, else a
    native cancellation that came meanwhile. On trio the shield is enough.
    """
    if backend is _TRIO:
        await function(*args)
        return
    task = asyncio.ensure_future(_raised(function, *args))
    cancelled: BaseException | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))  # a cancellation of ours leaves the task running
        except asyncio.CancelledError as exc:
            cancelled = exc
    raised = task.result()
    if raised is not None:
        raise raised
    if cancelled is not None:
        raise cancelled


async def _raised(function: Callable[..., Awaitable[None]], *args: Any) -> BaseException | None:
    """What ``function(*args)`` raised, if anything (:func:`to_its_end`'s task)."""
    try:
        await function(*args)
    except BaseException as exc:  # raised by the task awaiting this one (a KeyboardInterrupt
        return exc  # at a task's top would stop asyncio's event loop instead)
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, groups opened (``exc`` itself if it is none)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def is_cancellation(exc: BaseException, cancelled: Cancellations) -> bool:
    """Whether ``exc`` is the backend's cancellation, or a group of nothing else.

    On trio a cancellation that crosses a task group can arrive wrapped in an
    exception group (its leaves all ``Cancelled``): that is a cancellation
    too, not a failure.
    """
    if not isinstance(exc, BaseExceptionGroup):
        # Most often no group: the test without a generator (every run
        # that suspends makes it: "paused session, suspended" rows).
        return isinstance(exc, cancelled)
    return all(isinstance(leaf, cancelled) for leaf in _leaves(exc))


def is_suspension(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`RunSuspended`, or a group of nothing else.

    What reaches the run's scope when its wait raised it: on trio the scope
    takes out the cancellations of the positions torn down beside it, a
    cancellation of the caller's stays (and is no suspension of the run's).
    :func:`is_cancellation`'s test, with ``RunSuspended`` alone.
    """
    return is_cancellation(exc, RunSuspended)


def ungrouped(exc: BaseException, cancelled: Cancellations) -> BaseException:
    """What ``run()`` raises for ``exc``: the one exception it is about, out of the task groups'.

    A ``BaseException`` that crossed the task group of a parallel node's
    branches or a map's items comes wrapped in an exception group (on trio
    a cancellation too, a group of ``Cancelled``); on the main path it comes
    alone. Whether a pipeline has branches is no business of the caller's:
    ``run()`` raises the same either way. A group of cancellations gives one
    of them (every ``Cancelled`` means the same: a cancel scope tells its own
    by its state, not by the exception object); a group holding one
    exception besides cancellations (a ``KeyboardInterrupt``, a stage's
    ``SystemExit``, which the cancellations of the other branches came with)
    gives that one. Anything else (two branches interrupted at once) is
    ``exc``, as it came.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    others = [leaf for leaf in leaves if not isinstance(leaf, cancelled)]
    if not others:
        # A RunSuspended beside the caller's cancellation: the run is over,
        # the cancellation goes on.
        first = leaves[0] if leaves else exc
        return next((leaf for leaf in leaves if not isinstance(leaf, RunSuspended)), first)
    return others[0] if len(others) == 1 else exc


def host_task(backend: Backend) -> asyncio.Task[Any] | None:
    """The task running now, off trio: a run's host (see :func:`is_stray_cancellation`)."""
    return None if backend is _TRIO else asyncio.current_task()


def is_stray_cancellation(
    exc: BaseException, backend: Backend, host: asyncio.Task[Any] | None = None
) -> bool:
    """Whether ``exc`` is asyncio's ``CancelledError`` that no cancellation of the run caused.

    A stage can raise one of its own: a future or task of its own that was
    cancelled, a client library's internal timeout. Taken by its type for the
    run's cancellation, it would go up to the caller of ``run()``, or, in a
    branch or a map item, cancel the others inside a task group that swallows
    it. Every real cancellation of the task (a cancel scope, ``asyncio.timeout``,
    ``Task.cancel``) counts in ``Task.cancelling()``; on trio asyncio's is
    never a cancellation.

    Given ``host``, the task that called ``run()``, one more is stray: a
    cancellation of a task of the run's own (a branch's, a map item's) while
    no cancel scope around it is cancelled. Nothing of the run or its caller
    cancels such a task but through a scope (the caller's ``Task.cancel()``
    reaches the host, whose task group then cancels its scope): only
    ``Task.cancel()`` on that very task can have sent it, from a stage.
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    if backend is _TRIO:
        return True
    task = asyncio.current_task()
    if task is None:
        return False
    if not task.cancelling():
        return True
    return host is not None and task is not host and not _scope_cancelled()


def _scope_cancelled() -> bool:
    """Whether a cancel scope around the running task is cancelled, or past its deadline.

    anyio gives a cancelled scope's deadline as ``-inf``; one past its
    deadline whose timer has not fired yet cancels at the next checkpoint.
    """
    return anyio.current_effective_deadline() <= anyio.current_time()


def requested_task(host: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The running task if it is not ``host`` and has cancellation requests (asyncio only)."""
    task = asyncio.current_task()
    return task if task is not None and task is not host and task.cancelling() else None


async def take_stray_request(task: asyncio.Task[Any]) -> None:
    """After a stage returned: take its own ``Task.cancel()`` of ``task``, a task of the run's.

    Called when ``task`` (a branch's or a map item's, not the run's host)
    has cancellation requests as its stage returns. While no cancel scope
    around it is cancelled, none is the run's (see
    :func:`is_stray_cancellation`): a request still pending is raised here,
    at a checkpoint, so that the stage's node fails (:func:`stage_failure`
    takes it back) rather than the next node or item this task runs; one
    the stage caught itself is taken back. A cancellation of the run is
    left for the next checkpoint.
    """
    if _scope_cancelled():
        return
    await asyncio.sleep(0)
    _take_back(task)


def _take_back(task: asyncio.Task[Any]) -> None:
    """Take back every cancellation request of ``task``: a stage may have made several."""
    while task.uncancel():
        pass


def stage_failure(
    exc: BaseException, backend: Backend, host: asyncio.Task[Any] | None = None
) -> BaseException | None:
    """What of a ``BaseException`` a stage raised is its own failure, or ``None`` if nothing.

    A ``CancelledError`` no cancellation of the run caused
    (:func:`is_stray_cancellation`, ``host`` the task that called ``run()``)
    is: if it came from ``Task.cancel()`` on the stage's task, the request is
    taken back (``Task.uncancel()``), as asyncio asks of code that swallows
    a cancellation, since the run goes on in that task. And of an exception
    group holding both cancellations and errors (a task of the stage's own
    that raised as it was cancelled, say in its cleanup; trio groups them),
    the errors: the stage failed, as on asyncio,
    whose task groups leave the cancellations out. One error is given as it
    is, several as the group of them. ``None`` for a cancellation, a
    ``KeyboardInterrupt`` or another ``BaseException``.
    """
    if is_stray_cancellation(exc, backend, host):
        task = None if backend is _TRIO else asyncio.current_task()
        if task is not None:
            _take_back(task)
        return exc
    if isinstance(exc, BaseExceptionGroup):
        cancelled = backend.cancelled
        leaves = list(_leaves(exc))
        errors = [leaf for leaf in leaves if isinstance(leaf, Exception)]
        # isinstance takes nested tuples: cancelled may be one.
        if errors and all(isinstance(leaf, (Exception, cancelled)) for leaf in leaves):
            if len(errors) == 1:
                return errors[0]
            return exc.split(Exception)[0]
    return None


def deciding_leaf(exc: BaseException, cancelled: Cancellations) -> BaseException:
    """``exc`` out of the task groups' exception groups: the leaf that says what ended them.

    At each level the first exception that is no cancellation (the others
    were cancelled because of it), or the first one when all are.
    """
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = next(
            (e for e in leaf.exceptions if not is_cancellation(e, cancelled)), leaf.exceptions[0]
        )
    return leaf


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C: a ``KeyboardInterrupt``, alone or grouped with cancellations.

    On trio, a ``KeyboardInterrupt`` raised while tasks run arrives in an
    exception group, with the cancellations of the other tasks.
    """
    leaves = list(_leaves(exc))
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves) and all(
        isinstance(leaf, KeyboardInterrupt | trio.Cancelled | asyncio.CancelledError)
        for leaf in leaves
    )


def exit_request(exc: BaseException) -> SystemExit | None:
    """The ``SystemExit`` in ``exc`` when it is one, alone or grouped with cancellations.

    A stage that calls ``sys.exit()`` while tasks run (on trio always) has it
    arrive in an exception group, with the cancellations of the other tasks.
    """
    leaves = list(_leaves(exc))
    exits = [leaf for leaf in leaves if isinstance(leaf, SystemExit)]
    if exits and all(
        isinstance(leaf, SystemExit | trio.Cancelled | asyncio.CancelledError) for leaf in leaves
    ):
        return exits[0]
    return None


def in_trio_run() -> bool:
    """Whether the calling thread is inside a trio run (where :func:`run_in_virtual_time` fails)."""
    return trio.lowlevel.in_trio_run()


def run_in_virtual_time(function: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Run ``function(*args)`` on trio with an autojumping mock clock (the test kit's loop)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(function, *args, clock=clock)
