"""A map node over many trivial items: time per item, and memory bounded by the concurrency.

The body is one trivial stage (``Inc``); each item's output is collected.
The reference is the same items as a plain loop: await the same function per
item and append its output to a list.

Memory is measured with tracemalloc in a separate, untimed pass. *Peak* is the
highest traced memory during ``run()``; *retained* is what is still traced
once it returned (the history, which grows with the items by design, and the
collected list); *in flight* is peak minus retained: the working memory of the
items being run, which must grow with the concurrency, not with the number
of items.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import stageflow
from benchmarks import _shapes as shapes
from benchmarks._harness import (
    Row,
    Settings,
    Table,
    all_of,
    at_most,
    interleave,
    kib,
    ratio,
    settle,
    times,
    us,
)

SECTION = "map"
CONCURRENCY = (1, 8, 64)

Figures = dict[str, float | None]
Sampler = Callable[[], Coroutine[Any, Any, int]]


def map_document(items: int, concurrency: int) -> dict[str, Any]:
    """A map of ``Inc`` over ``items``, collecting each item's ``n``, then a terminal."""
    return {
        "api_version": "1.0",
        "entry": "each",
        # One step for the map, one per item, one for the terminal.
        "limits": {"max_steps": items + 10},
        "nodes": [
            {
                "id": "each",
                "type": "map",
                "items": "items",
                "body": "inc",
                "item_path": "n",
                "concurrency": concurrency,
                "collect": {"out": "outs"},
                "next": "end",
            },
            {
                "id": "inc",
                "type": "stage",
                "stage": "Inc",
                "arguments": {"n": "n"},
                "outputs": {"n": "out"},
            },
            {"id": "end", "type": "terminal", "artifacts": ["outs"]},
        ],
    }


def map_pipeline(reg: stageflow.StageRegistry, items: int, concurrency: int) -> stageflow.Pipeline:
    """:func:`map_document` as a pipeline of ``reg``."""
    return stageflow.Pipeline.from_dict(map_document(items, concurrency), registry=reg)


def _check(result: stageflow.SessionResult, items: int) -> None:
    shapes.check(result)
    outs = result.artifacts["outs"]
    if len(outs) != items or outs[0] != 1 or outs[-1] != items:
        raise RuntimeError("a benchmarked map did not collect every item in order")


def session_sampler(
    pipeline: stageflow.Pipeline, reg: stageflow.StageRegistry, items: int
) -> Sampler:
    """Time ``run()`` of one session (built before the clock starts), per item."""

    async def sample() -> int:
        session = stageflow.Session(pipeline, registry=reg, payload={"items": list(range(items))})
        start = time.perf_counter_ns()
        result = await session.run()
        elapsed = time.perf_counter_ns() - start
        _check(result, items)
        return elapsed // items

    return sample


async def plain_loop(items: list[int]) -> list[int]:
    """The reference: the same function awaited per item, its output appended."""
    outs = []
    for n in items:
        outs.append((await shapes.bare_inc(n))["n"])
    return outs


def loop_sampler(items: int) -> Sampler:
    async def sample() -> int:
        values = list(range(items))
        start = time.perf_counter_ns()
        outs = await plain_loop(values)
        elapsed = time.perf_counter_ns() - start
        if outs != [n + 1 for n in values]:
            raise RuntimeError("the plain loop did not do its work")
        return elapsed // items

    return sample


def probe_registry(probe_at: int, snapshots: list[tracemalloc.Snapshot]) -> stageflow.StageRegistry:
    """``Inc``, which also takes a tracemalloc snapshot when it runs item ``probe_at``."""
    reg = stageflow.StageRegistry()

    @reg.register("Inc")
    async def inc(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        n = ctx.arguments["n"]
        if n == probe_at:
            snapshots.append(tracemalloc.take_snapshot())
        return {"n": n + 1}

    return reg


def freed_since(mid: tracemalloc.Snapshot, end: tracemalloc.Snapshot) -> int:
    """Bytes traced at ``mid``, by allocating line, that were no longer traced at ``end``."""
    return sum(-diff.size_diff for diff in end.compare_to(mid, "lineno") if diff.size_diff < 0)


async def map_memory(items: int, concurrency: int) -> tuple[int, int, int]:
    """(peak, retained, in flight) bytes traced while one map session runs.

    In flight: what was allocated when the middle item ran and freed by the
    end of the run (by allocating line), i.e. the working memory of the items
    running at that moment.
    """
    snapshots: list[tracemalloc.Snapshot] = []
    reg = probe_registry(items // 2, snapshots)
    pipeline = map_pipeline(reg, items, concurrency)
    session = stageflow.Session(pipeline, registry=reg, payload={"items": list(range(items))})
    settle()
    tracemalloc.start()
    try:
        result = await session.run()
        retained, peak = tracemalloc.get_traced_memory()
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    _check(result, items)
    if len(snapshots) != 1:
        raise RuntimeError("the memory probe did not run exactly once")
    return peak, retained, freed_since(snapshots[0], end)


async def loop_memory(items: int) -> int:
    values = list(range(items))
    settle()
    tracemalloc.start()
    try:
        await plain_loop(values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


async def map_items(settings: Settings, table: Table, figures: Figures) -> None:
    """Time per item and memory of a map at several concurrencies, next to a plain loop."""
    reg = shapes.registry()
    items = settings.size(10_000, 200)
    label = f"map of {items:,} trivial items"
    samplers = [session_sampler(map_pipeline(reg, items, c), reg, items) for c in CONCURRENCY]
    *per_item, loop = await interleave(
        [*samplers, loop_sampler(items)], settings, repeats=settings.fewer(7)
    )
    for concurrency, cost in zip(CONCURRENCY, per_item, strict=True):
        figures[f"map_item_c{concurrency}"] = cost
        table.add(
            Row(
                SECTION,
                f"{label}, per item (concurrency {concurrency})",
                us(cost),
                f"{us(loop)} plain loop per item",
                times(ratio(cost, loop)),
                all_of(
                    "<=4 us and <=25x the plain loop",
                    at_most(4000, cost, ""),
                    at_most(25, ratio(cost, loop), ""),
                ),
            )
        )

    loop_peak = await loop_memory(items)
    fewer = max(items // 10, 2 * CONCURRENCY[-1])
    for concurrency in CONCURRENCY:
        peak, retained, in_flight = await map_memory(items, concurrency)
        figures[f"map_in_flight_c{concurrency}"] = in_flight
        table.add(
            Row(
                SECTION,
                f"{label}, peak memory (concurrency {concurrency}, tracemalloc)",
                f"{kib(peak)} ({kib(retained)} retained: history and outputs)",
                f"{kib(loop_peak)} plain loop",
                times(ratio(peak, loop_peak)),
            )
        )
        # The same map over fewer items (still more than the concurrency): what
        # is in flight must not change with the number of items.
        _, _, in_flight_fewer = await map_memory(fewer, concurrency)
        table.add(
            Row(
                SECTION,
                f"{label}, in flight mid-run (concurrency {concurrency})",
                kib(in_flight),
                f"{kib(in_flight_fewer)} with {fewer:,} items",
                times(ratio(in_flight, in_flight_fewer)),
            )
        )
