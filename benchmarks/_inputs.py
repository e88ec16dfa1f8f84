"""Sessions paused in ``wait_input``, and snapshots of a paused session.

These measure APIs that land with the inputs and snapshot issues:
``session.send_input(type, payload)`` / ``await ctx.wait_input(type)`` and
``session.to_dict()`` / ``Session.from_dict(data, registry=...)``. Until the
engine has them, their rows say so instead of failing.
"""

from __future__ import annotations

import gc
import inspect
import json
import resource
import statistics
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
import trio.testing

import stageflow
from benchmarks import _shapes as shapes
from benchmarks._harness import (
    NA,
    Row,
    Settings,
    Table,
    at_least,
    at_most,
    clock,
    kib,
    ratio,
    settle,
    size,
    times,
    us,
)

SECTION = "paused"
SNAPSHOT = "snapshot"

Sweep = Callable[[int, bool], Awaitable[tuple[int, int, int]]]
"""``(count, trace memory) -> (pause ns, resume ns, bytes held while paused)``."""


def inputs_available() -> bool:
    """Whether the engine can pause a session in ``wait_input`` and resume it."""
    return callable(getattr(stageflow.Session, "send_input", None))


def snapshots_available() -> bool:
    """Whether sessions can be snapshotted and restored."""
    return callable(getattr(stageflow.Session, "to_dict", None)) and callable(
        getattr(stageflow.Session, "from_dict", None)
    )


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


def session_sweep(reg: stageflow.StageRegistry) -> Sweep:
    """Pause ``count`` sessions in ``wait_input``, then resume each with one input."""
    pipeline = shapes.waiting(reg)

    async def sweep(count: int, memory: bool) -> tuple[int, int, int]:
        settle()
        if memory:
            tracemalloc.start()
        base = _traced() if memory else 0
        sessions: list[stageflow.Session] = []
        async with trio.open_nursery() as nursery:
            start = clock()
            for _ in range(count):
                session = stageflow.Session(pipeline, registry=reg)
                nursery.start_soon(session.run)
                sessions.append(session)
            await trio.testing.wait_all_tasks_blocked()
            paused = clock()
            held = _traced() - base if memory else 0
            if memory:
                tracemalloc.stop()
            for session in sessions:
                await _maybe_await(session.send_input("go", {"x": 1}))
        done = clock()
        unfinished = [s for s in sessions if s.status is not stageflow.SessionStatus.COMPLETED]
        if unfinished:
            raise RuntimeError(
                f"{len(unfinished)} of {count} paused sessions did not complete after their "
                f"input (first: {unfinished[0].status.value})"
            )
        return paused - start, done - paused, held

    return sweep


def suspended_sweep(reg: stageflow.StageRegistry, *, as_text: bool) -> Sweep:
    """Suspend ``count`` sessions (``run(suspend=True)``: no task is left), then resume each.

    With ``as_text`` only each snapshot's JSON text is kept, as a service
    that stores snapshots would; resuming restores from it first, with the
    service's loaded pipeline (``pipeline=``) as a service would.
    """
    pipeline = shapes.waiting(reg)

    async def sweep(count: int, memory: bool) -> tuple[int, int, int]:
        settle()
        if memory:
            tracemalloc.start()
        base = _traced() if memory else 0
        kept: list[Any] = []
        start = clock()
        for _ in range(count):
            session = stageflow.Session(pipeline, registry=reg)
            await session.run(suspend=True)
            kept.append(json.dumps(session.to_dict()) if as_text else session)
        paused = clock()
        held = _traced() - base if memory else 0
        if memory:
            tracemalloc.stop()
        statuses = set()
        for item in kept:
            if as_text:
                item = stageflow.Session.from_dict(
                    json.loads(item), registry=reg, pipeline=pipeline
                )
            item.send_input("go", {"x": 1})
            statuses.add((await item.run()).status)
        done = clock()
        if statuses != {stageflow.SessionStatus.COMPLETED}:
            raise RuntimeError(f"suspended sessions ended {sorted(statuses)}, not all completed")
        return paused - start, done - paused, held

    return sweep


async def _bare_waiter(receive: trio.MemoryReceiveChannel[Any], ctx: dict[str, Any]) -> None:
    ctx["v"] = await receive.receive()


async def _scoped_waiter(receive: trio.MemoryReceiveChannel[Any], ctx: dict[str, Any]) -> None:
    with trio.CancelScope():
        ctx["v"] = await receive.receive()


def bare_sweep(*, scoped: bool = False) -> Sweep:
    """The same with raw trio: one task per waiter, blocked on its own memory channel.

    ``scoped``: each task waits inside a cancel scope of its own, as a live
    session's run does (``Session.cancel()`` cancels that run alone): what
    trio and the collector cost such a task before any of stageflow's.
    """
    waiter = _scoped_waiter if scoped else _bare_waiter

    async def sweep(count: int, memory: bool) -> tuple[int, int, int]:
        settle()
        if memory:
            tracemalloc.start()
        base = _traced() if memory else 0
        senders: list[trio.MemorySendChannel[Any]] = []
        contexts: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            start = clock()
            for _ in range(count):
                send, receive = trio.open_memory_channel[Any](1)
                ctx: dict[str, Any] = {}
                nursery.start_soon(waiter, receive, ctx)
                senders.append(send)
                contexts.append(ctx)
            await trio.testing.wait_all_tasks_blocked()
            paused = clock()
            held = _traced() - base if memory else 0
            if memory:
                tracemalloc.stop()
            for send in senders:
                send.send_nowait({"x": 1})
        done = clock()
        if any("v" not in ctx for ctx in contexts):
            raise RuntimeError("a bare waiter did not get its input")
        return paused - start, done - paused, held

    return sweep


# ------------------------------------------------- a sample on a held population

SAMPLE = 2000
"""Sessions paused and resumed per round on top of a held population."""


class _Kind:
    """Pause ``n`` waiters of one kind (a handle for them) and resume them."""

    def __init__(self, reg: stageflow.StageRegistry | None, nursery: trio.Nursery) -> None:
        self.reg = reg
        self.pipeline = shapes.waiting(reg) if reg is not None else None
        self.nursery = nursery

    async def pause(self, n: int) -> list[Any]:
        raise NotImplementedError

    async def resume(self, held: list[Any]) -> None:
        raise NotImplementedError


class _Live(_Kind):
    async def pause(self, n: int) -> list[Any]:
        sessions = [stageflow.Session(self.pipeline, registry=self.reg) for _ in range(n)]  # type: ignore[arg-type]
        for session in sessions:
            self.nursery.start_soon(session.run)
        await trio.testing.wait_all_tasks_blocked()
        return sessions

    async def resume(self, held: list[Any]) -> None:
        for session in held:
            session.send_input("go", {"x": 1})
        await trio.testing.wait_all_tasks_blocked()  # the resumed sessions ran to their end
        _check_completed(held)


class _Suspended(_Kind):
    as_text = False

    async def pause(self, n: int) -> list[Any]:
        kept: list[Any] = []
        for _ in range(n):
            session = stageflow.Session(self.pipeline, registry=self.reg)  # type: ignore[arg-type]
            await session.run(suspend=True)
            kept.append(json.dumps(session.to_dict()) if self.as_text else session)
        return kept

    async def resume(self, held: list[Any]) -> None:
        sessions = []
        for item in held:
            if self.as_text:
                item = stageflow.Session.from_dict(
                    json.loads(item), registry=self.reg, pipeline=self.pipeline
                )
            item.send_input("go", {"x": 1})
            await item.run()
            sessions.append(item)
        _check_completed(sessions)


class _Text(_Suspended):
    as_text = True


class _Bare(_Kind):
    _waiter = staticmethod(_bare_waiter)

    async def pause(self, n: int) -> list[Any]:
        held = []
        for _ in range(n):
            send, receive = trio.open_memory_channel[Any](1)
            ctx: dict[str, Any] = {}
            self.nursery.start_soon(self._waiter, receive, ctx)
            held.append((send, ctx))
        await trio.testing.wait_all_tasks_blocked()
        return held

    async def resume(self, held: list[Any]) -> None:
        for send, _ in held:
            send.send_nowait({"x": 1})
        await trio.testing.wait_all_tasks_blocked()
        if any("v" not in ctx for _, ctx in held):
            raise RuntimeError("a bare waiter did not get its input")


class _ScopedBare(_Bare):
    _waiter = staticmethod(_scoped_waiter)


def _check_completed(sessions: list[stageflow.Session]) -> None:
    unfinished = [s for s in sessions if s.status is not stageflow.SessionStatus.COMPLETED]
    if unfinished:
        raise RuntimeError(
            f"{len(unfinished)} of {len(sessions)} paused sessions did not complete after "
            f"their input (first: {unfinished[0].status.value})"
        )


def _full_collection_share(per_waiter_tracked: float) -> float:
    """The collector's full collections, amortized per waiter paused, in ns.

    CPython runs a full collection once the objects that reached the oldest
    generation since the last one pass a quarter of those it holds: with a
    population held, one every ``held objects / 4 / objects per waiter``
    waiters paused (and kept). It also waits for its thresholds: one full
    collection at most every ``t0 * t1 * t2`` objects kept (70,000 with the
    defaults, which the quarter rule outlasts here; 100,000,000 with
    :data:`TUNED`). A sample of a few thousand waiters seldom meets one, so
    one is timed here (the population held) and its cost shared out over
    the waiters between two of them.
    """
    per_object, tracked = full_collection()
    return collection_share(per_object, tracked, per_waiter_tracked)


def full_collection(timer: Callable[[], int] = clock) -> tuple[float, int]:
    """One full collection timed with ``timer`` (ns): its time per object, and the objects.

    The objects are those of the oldest generation after a first collection:
    what a full collection walks when nothing is left to free.
    """
    gc.collect()
    tracked = len(gc.get_objects(generation=2))
    start = timer()
    gc.collect()
    return (timer() - start) / max(tracked, 1), tracked


def collection_share(per_object: float, tracked: float, per_waiter_tracked: float) -> float:
    """The full collections' cost per waiter paused, in the unit of ``per_object``.

    ``per_object``: a full collection's time per tracked object; ``tracked``:
    the objects it walks (the held population's and the rest); the rules
    are :func:`_full_collection_share`'s.
    """
    first, second, third = gc.get_threshold()
    per_waiter = max(per_waiter_tracked, 1.0)
    between = max(1.0, tracked / 4 / per_waiter, first * second * third / per_waiter)
    return per_object * tracked / between


async def _held_sample(
    make: Callable[[trio.Nursery], _Kind], count: int, sample: int, rounds: int
) -> tuple[float, float, float]:
    """Per waiter: pause and resume time of a sample, bytes it holds, with ``count`` held.

    ``count - sample`` waiters are paused first and held (built with the
    collector off, for speed, then collected once so that they sit in the
    oldest generation, as after a build under the collector); each round
    then pauses ``sample`` more and resumes them, timed, with the collector
    on. The pause time adds the amortized full collections
    (:func:`_full_collection_share`). The memory is that of one more sample,
    traced.
    """
    settle()
    async with trio.open_nursery() as nursery:
        kind = make(nursery)
        before = len(gc.get_objects())
        gc.disable()
        try:
            population = await kind.pause(count - sample)
        finally:
            gc.enable()
        per_waiter_tracked = (len(gc.get_objects()) - before) / max(1, count - sample)
        full_share = _full_collection_share(per_waiter_tracked)
        pauses, resumes = [], []
        for _ in range(rounds):
            start = clock()
            held = await kind.pause(sample)
            paused = clock()
            await kind.resume(held)
            pauses.append(paused - start)
            resumes.append(clock() - paused)
        tracemalloc.start()
        base = _traced()
        held = await kind.pause(sample)
        memory = _traced() - base
        tracemalloc.stop()
        await kind.resume(held)
        await kind.resume(population)
    return (
        statistics.median(pauses) / sample + full_share,
        statistics.median(resumes) / sample,
        memory / sample,
    )


TUNED: Final = (50_000, 20, 100)
"""The collector thresholds ``docs/memory.md`` gives a service that holds many sessions."""


async def _held_sweeps(
    reg: stageflow.StageRegistry,
    count: int,
    sample: int,
    rounds: int,
    kinds: tuple[str, ...] = ("live", "suspended", "text"),
) -> list[tuple[float, float, float]]:
    """``kinds`` and the bare trio reference, each on its own population.

    ``"scoped"`` among ``kinds`` is the bare task waiting in a cancel scope
    of its own (:class:`_ScopedBare`).
    """
    makers: dict[str, Callable[[trio.Nursery], _Kind]] = {
        "live": lambda nursery: _Live(reg, nursery),
        "suspended": lambda nursery: _Suspended(reg, nursery),
        "text": lambda nursery: _Text(reg, nursery),
        "scoped": lambda nursery: _ScopedBare(None, nursery),
        "bare": lambda nursery: _Bare(None, nursery),
    }
    return [await _held_sample(makers[kind], count, sample, rounds) for kind in (*kinds, "bare")]


async def _tuned_sweeps(
    reg: stageflow.StageRegistry, count: int, sample: int, rounds: int
) -> list[tuple[float, float, float]]:
    """:func:`_held_sweeps` of live and suspended sessions under :data:`TUNED` thresholds."""
    defaults = gc.get_threshold()
    gc.set_threshold(*TUNED)
    try:
        return await _held_sweeps(reg, count, sample, rounds, ("live", "suspended"))
    finally:
        gc.set_threshold(*defaults)


async def _sweeps(
    sweeps: list[Sweep], count: int, rounds: int, warmup: int
) -> list[tuple[float, float, float]]:
    """Median pause and resume time per waiter, and bytes held per waiter, for each sweep."""
    for sweep in sweeps:
        if warmup:
            await sweep(warmup, False)
    pauses: list[list[int]] = [[] for _ in sweeps]
    resumes: list[list[int]] = [[] for _ in sweeps]
    for _ in range(rounds):
        for i, sweep in enumerate(sweeps):
            pause, resume, _ = await sweep(count, False)
            pauses[i].append(pause)
            resumes[i].append(resume)
    out = []
    for i, sweep in enumerate(sweeps):
        _, _, held = await sweep(count, True)
        out.append(
            (
                statistics.median(pauses[i]) / count,
                statistics.median(resumes[i]) / count,
                held / count,
            )
        )
    return out


def _na_paused_rows(table: Table, count: int) -> None:
    table.add(Row(SECTION, f"paused session, memory each ({count:,} paused)", NA, NA, "n/a", None))
    table.add(Row(SECTION, f"paused session, time to pause ({count:,})", NA, NA, "n/a", None))
    table.add(Row(SECTION, f"paused session, time to resume ({count:,})", NA, NA, "n/a", None))


async def paused(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    """10,000 and 100,000 sessions paused in ``wait_input`` in one process."""
    counts = (settings.size(10_000, 50), settings.size(100_000, 200))
    if not inputs_available():
        for count in counts:
            _na_paused_rows(table, count)
        table.add(Row(SECTION, "paused sessions held in one process", NA, "-", "-", None))
        return
    reg = shapes.registry()
    kinds = (
        ("live", "paused session", session_sweep(reg)),
        ("suspended", "paused session, suspended", suspended_sweep(reg, as_text=False)),
        ("text", "paused session, as snapshot text", suspended_sweep(reg, as_text=True)),
    )
    sweeps = [sweep for _, _, sweep in kinds] + [bare_sweep(scoped=True), bare_sweep()]
    for count, name, rounds in zip(
        counts, ("small", "large"), (settings.fewer(5), settings.fewer(5)), strict=True
    ):
        if name == "small":
            warmup = settings.size(1000, 20)
            *measured, scoped, (bare_pause, bare_resume, bare_held) = await _sweeps(
                sweeps, count, rounds, warmup
            )
        else:
            # 100,000 held: a sample paused and resumed on top of a held
            # population (whole sweeps of 100,000 did not finish in 25 min).
            sample = settings.size(SAMPLE, 20)
            *measured, scoped, (bare_pause, bare_resume, bare_held) = await _held_sweeps(
                reg, count, sample, rounds, (*(key for key, _, _ in kinds), "scoped")
            )
        for (key, kind, _), (pause, resume, held) in zip(kinds, measured, strict=True):
            figures[f"paused_{key}_{name}_bytes"] = held
            figures[f"paused_{key}_{name}_pause"] = pause
            figures[f"paused_{key}_{name}_resume"] = resume
            # Issue 18's memory budgets: live <= 6 KiB, suspended <= 3 KiB,
            # snapshot text <= 2 KiB.
            memory_budget = {"live": 6, "suspended": 3, "text": 2}[key]
            rows = (
                (f"memory each ({count:,} paused)", held, bare_held, kib,
                 "trio task on a memory channel", memory_budget * 1024,
                 f"<={memory_budget} KiB"),
                (f"time to pause ({count:,})", pause, bare_pause, us,
                 "start a trio task that blocks", 50_000, "<=50 us"),
                (f"time to resume ({count:,})", resume, bare_resume, us,
                 "send to the channel, task ends", 50_000, "<=50 us"),
            )  # fmt: skip
            for what, value, bare, unit, reference, budget, label in rows:
                table.add(
                    Row(
                        SECTION,
                        f"{kind}, {what}",
                        unit(value),
                        f"{unit(bare)} {reference}",
                        times(ratio(value, bare)),
                        at_most(budget, value, label),
                    )
                )
        # The floor under the live rows: a bare task that waits in a cancel
        # scope of its own, as a live session's run does.
        table.add(
            Row(
                SECTION,
                f"trio task in a cancel scope of its own, time to pause ({count:,})",
                us(scoped[0]),
                f"{us(bare_pause)} start a trio task that blocks",
                times(ratio(scoped[0], bare_pause)),
            )
        )
    # The same 100,000 held under the collector thresholds docs/memory.md
    # gives a service (the rows above keep the interpreter's defaults).
    tuned = await _tuned_sweeps(reg, counts[1], settings.size(SAMPLE, 20), settings.fewer(5))
    *tuned_kinds, (bare_pause, bare_resume, _) = tuned
    setting = f"gc.set_threshold{TUNED}"
    for (key, kind), (pause, resume, _) in zip(
        (("live", "paused session"), ("suspended", "paused session, suspended")),
        tuned_kinds,
        strict=True,
    ):
        figures[f"paused_{key}_tuned_pause"] = pause
        figures[f"paused_{key}_tuned_resume"] = resume
        for what, value, bare, reference in (
            ("pause", pause, bare_pause, "start a trio task that blocks"),
            ("resume", resume, bare_resume, "send to the channel, task ends"),
        ):
            table.add(
                Row(
                    SECTION,
                    f"{kind}, time to {what} ({counts[1]:,}; {setting})",
                    us(value),
                    f"{us(bare)} {reference}, same setting",
                    times(ratio(value, bare)),
                    at_most(50_000, value, "<=50 us"),
                )
            )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table.add(
        Row(
            SECTION,
            "paused sessions held in one process",
            f"{counts[1]:,} (peak RSS {peak_mib:,.0f} MiB)",
            "-",
            "-",
            at_least(100_000, counts[1], ">=100,000"),
        )
    )


# ------------------------------------------------------------------ snapshots


def payload_of(nbytes: int) -> dict[str, Any]:
    """A context of about ``nbytes`` of JSON: one object of 100-character strings."""
    count = max(1, nbytes // 112)
    return {"doc": {f"k{i:06d}": "x" * 100 for i in range(count)}}


async def _time_async(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats + 1):
        settle()
        start = clock()
        await _maybe_await(fn())
        samples.append(clock() - start)
    return statistics.median(samples[1:])


async def snapshots(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    """Snapshot size and ``to_dict`` / ``from_dict`` time as the context grows."""
    sizes = (1024, settings.size(64 * 1024, 16 * 1024), settings.size(1024 * 1024, 32 * 1024))
    labels = [
        f"{n // 1024:,} KiB" if n < 1024 * 1024 else f"{n // (1024 * 1024)} MiB" for n in sizes
    ]
    if not (inputs_available() and snapshots_available()):
        for label in labels:
            for what in ("JSON size", "to_dict time", "from_dict time"):
                table.add(Row(SNAPSHOT, f"snapshot, context {label}: {what}", NA, NA, "n/a"))
        return
    reg = shapes.registry()
    pipeline = shapes.waiting(reg)
    repeats = settings.fewer(11)
    for nbytes, label in zip(sizes, labels, strict=True):
        payload = payload_of(nbytes)
        context_json = json.dumps(payload)
        session = stageflow.Session(pipeline, registry=reg, payload=payload)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await trio.testing.wait_all_tasks_blocked()
            to_dict = await _time_async(session.to_dict, repeats)
            snapshot = await _maybe_await(session.to_dict())
            text = json.dumps(snapshot)
            data = json.loads(text)
            from_dict = await _time_async(
                lambda data=data: stageflow.Session.from_dict(data, registry=reg), repeats
            )
            await _maybe_await(session.send_input("go", {"x": 1}))
        reference = await _time_async(
            lambda payload=payload: json.loads(json.dumps(payload)), repeats
        )
        round_trip = f"{us(reference)} JSON round trip of the context"
        table.add(
            Row(
                SNAPSHOT,
                f"snapshot, context {label}: JSON size",
                size(len(text)),
                f"{size(len(context_json))} the context as JSON",
                times(ratio(len(text), len(context_json))),
            )
        )
        table.add(
            Row(
                SNAPSHOT,
                f"snapshot, context {label}: to_dict time",
                us(to_dict),
                round_trip,
                times(ratio(to_dict, reference)),
            )
        )
        table.add(
            Row(
                SNAPSHOT,
                f"snapshot, context {label}: from_dict time",
                us(from_dict),
                round_trip,
                times(ratio(from_dict, reference)),
            )
        )
