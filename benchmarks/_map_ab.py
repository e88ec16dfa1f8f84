"""A/B of two stageflow trees in one process: the map rows of ``make bench``, CPU time.

``python -m benchmarks._map_ab BEFORE AFTER [ROUNDS] [--asyncio]``: BEFORE
and AFTER are source trees (``git archive REF | tar -x -C DIR`` makes one),
loaded side by side as in ``benchmarks._fanout_ab``. Per round, alternating
the order: each tree's map of 10,000 ``Inc`` items at concurrency 1, 8 and 64
(per item, the ``map`` section's pipeline), and the section's plain loop over
the same items (per item, the reference of the row's ratio). Times are the
thread's CPU time (``time.thread_time_ns``). Printed: per row, the median of
each side, the median of the per-round ratios AFTER / BEFORE, and each side's
median ratio to the plain loop of the same round. Not part of ``make bench``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks._fanout_ab import load
from benchmarks._map import map_document, plain_loop

ITEMS = 10_000
CONCURRENCY = (1, 8, 64)


def pipelines(sf: Any) -> tuple[Any, dict[int, Any]]:
    """The registry and a map pipeline per concurrency (the ``map`` section's document)."""
    reg = sf.StageRegistry()

    @reg.register("Inc")
    async def inc(ctx: Any) -> dict[str, int]:
        return {"n": ctx.arguments["n"] + 1}

    def mapped(concurrency: int) -> Any:
        return sf.Pipeline.from_dict(map_document(ITEMS, concurrency), registry=reg)

    return reg, {c: mapped(c) for c in CONCURRENCY}


async def map_item(sf: Any, reg: Any, pipeline: Any) -> float:
    session = sf.Session(pipeline, registry=reg, payload={"items": list(range(ITEMS))})
    gc.collect()
    start = time.thread_time_ns()
    result = await session.run()
    elapsed = time.thread_time_ns() - start
    if result.status.value != "completed" or result.artifacts["outs"][-1] != ITEMS:
        raise RuntimeError(f"a timed run ended {result.status.value}: {result.error}")
    return elapsed / ITEMS


async def loop_item() -> float:
    values = list(range(ITEMS))
    gc.collect()
    start = time.thread_time_ns()
    await plain_loop(values)
    return (time.thread_time_ns() - start) / ITEMS


async def main(sides: list[Any], rounds: int) -> None:
    built = [(sf, *pipelines(sf)) for sf in sides]
    rows: list[list[dict[str, float]]] = [[] for _ in sides]
    for round_ in range(rounds + 1):  # the first round warms up
        order = list(enumerate(built))
        if round_ % 2:
            order.reverse()
        loop = await loop_item()
        for side, (sf, reg, timed) in order:
            figures = {f"c{c}": await map_item(sf, reg, p) for c, p in timed.items()}
            figures["loop"] = loop
            if round_:
                rows[side].append(figures)
    before, after = rows
    print(f"{'per item':24} {'before':>9} {'after':>9}  after/before  x loop before / after")
    for key in (*(f"c{c}" for c in CONCURRENCY), "loop"):
        b = statistics.median(r[key] for r in before) / 1000
        a = statistics.median(r[key] for r in after) / 1000
        ratio = statistics.median(y[key] / x[key] for x, y in zip(before, after, strict=True))
        xb = statistics.median(r[key] / r["loop"] for r in before)
        xa = statistics.median(r[key] / r["loop"] for r in after)
        label = "plain loop" if key == "loop" else f"map item (concurrency {key[1:]})"
        print(f"{label:24} {b:7.2f}us {a:7.2f}us  {ratio:12.3f}  {xb:6.1f}x / {xa:.1f}x")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--asyncio"]
    with tempfile.TemporaryDirectory() as scratch:
        sys.path.insert(0, scratch)
        sides = [
            load(args[0], "sf_before", Path(scratch)),
            load(args[1], "sf_after", Path(scratch)),
        ]
        rounds = int(args[2]) if len(args) > 2 else 9
        if "--asyncio" in sys.argv:
            asyncio.run(main(sides, rounds))
        else:
            trio.run(main, sides, rounds)
