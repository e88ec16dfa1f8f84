"""The one place the engine reaches past anyio to trio: chosen once per run.

Everything else in the package is written against anyio. On trio, the
reference backend, two primitives are taken from trio itself because they sit
on the hot path (benchmark rows in ``benchmarks/RESULTS.md``):

- a raw nursery costs about a third of anyio's task group per child
  ("parallel branch, per branch" and "map item" rows);
- trio's own ``checkpoint_if_cancelled`` costs about a third of anyio's, and
  it runs once per node ("sequential stage node, per node" row); the tight
  path tests the flag it tests itself (:func:`flag_task`), and awaits it only
  when that flag is up (the same row);
- trio's own ``CancelScope`` for the run's scope: anyio's wraps one, which
  costs about 2 us per run and 230 bytes per live waiting session ("3-node
  run" and "paused session, memory each" rows);
- trio's own ``Event`` for an input wait: anyio's wraps one, and a waiting
  session keeps the wrapper and one more coroutine ("paused session" rows).

On any other backend both come from anyio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio
import anyio.lowlevel
import sniffio
import trio
import trio.testing

__all__ = [
    "Backend",
    "CancelScopeLike",
    "EventLike",
    "current_backend",
    "is_cancellation",
    "flag_task",
    "is_interrupt",
    "run_in_virtual_time",
]

_T = TypeVar("_T")


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


class Backend(NamedTuple):
    """The task group opener, checkpoints, cancel scopes and the cancellation class of a run."""

    open_task_group: Callable[[], Any]
    checkpoint: Callable[[], Awaitable[None]]  # a cancellation check; does not yield
    yield_: Callable[[], Awaitable[None]]  # a cancellation check that also yields
    cancelled: type[BaseException]
    cancel_scope: Callable[[], CancelScopeLike]
    event: Callable[[], EventLike]


_TRIO = Backend(
    trio.open_nursery,
    trio.lowlevel.checkpoint_if_cancelled,
    trio.lowlevel.checkpoint,
    trio.Cancelled,
    trio.CancelScope,
    trio.Event,
)


def current_backend() -> Backend:
    """The primitives for the event loop running now."""
    if sniffio.current_async_library() == "trio":
        return _TRIO
    return Backend(
        anyio.create_task_group,
        anyio.lowlevel.checkpoint_if_cancelled,
        anyio.lowlevel.checkpoint,
        anyio.get_cancelled_exc_class(),
        anyio.CancelScope,
        anyio.Event,
    )


def flag_task(backend: Backend) -> Any:
    """The running trio task, for a cancellation test without a call; ``None`` elsewhere.

    ``checkpoint_if_cancelled`` does nothing but this test (and counts it)
    unless the task is cancelled or, for the main task, a Ctrl-C is pending.
    The tight path makes the same test on the task it returns and awaits
    ``backend.checkpoint()`` only when it is true: the same checkpoint,
    without a coroutine per node ("sequential stage node" row). ``None``
    (await the checkpoint every time) on asyncio, and on a trio whose tasks
    no longer have these private attributes.
    """
    if backend is not _TRIO:
        return None
    task = trio.lowlevel.current_task()
    status = getattr(task, "_cancel_status", None)
    runner = getattr(task, "_runner", None)
    if not (
        hasattr(status, "effectively_cancelled")
        and hasattr(runner, "ki_pending")
        and hasattr(runner, "main_task")
    ):  # pragma: no cover - a trio that changed its internals
        return None
    return task


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, groups opened (``exc`` itself if it is none)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def is_cancellation(exc: BaseException, cancelled: type[BaseException]) -> bool:
    """Whether ``exc`` is the backend's cancellation, or a group of nothing else.

    On trio a cancellation that crosses a task group can arrive wrapped in an
    exception group (its leaves all ``Cancelled``): that is a cancellation
    too, not a failure.
    """
    return all(isinstance(leaf, cancelled) for leaf in _leaves(exc))


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


def run_in_virtual_time(function: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Run ``function(*args)`` on trio with an autojumping mock clock (the test kit's loop)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(function, *args, clock=clock)
