"""A/B of the engine's tight path, one process: tight path on and off, alternating.

``python -m benchmarks._tight_ab [ROUNDS] [--traced] [--metered]``: a chain of 1,000 stage nodes
and a 3-node run (batches of 20), timed with the thread's CPU time
(``time.thread_time_ns``, which other processes on a loaded machine move less
than wall time), medians of ROUNDS (15) alternating rounds; per node, a
terminal-only run is subtracted. Not part of ``make bench`` (its rows
"sequential stage node, general path" and "3-node run, general path" time
the same switch in wall time). The switch: docs/internals.md, "The tight path".
With ``--traced``, the SDK tracer provider of the ``tracing`` section
(``BatchSpanProcessor``, an exporter that drops the spans) is installed first,
so both paths make their spans; with ``--metered``, its SDK meter provider
(an in-memory reader), so both record the node duration metric.
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

import stageflow
from benchmarks import _shapes as shapes
from stageflow._engine import _run


async def main() -> None:
    reg = shapes.registry()
    chain = shapes.chain(reg, 1000)
    empty = shapes.empty(reg)
    three = shapes.three_nodes(reg)
    table = shapes.bare_chain_table(1000)

    async def t(pipeline: stageflow.Pipeline, n: int = 1) -> float:
        sessions = [
            stageflow.Session(pipeline, registry=reg, payload={"n": 0, "flag": True})
            for _ in range(n)
        ]
        start = time.thread_time_ns()
        for s in sessions:
            await s.run()
        return (time.thread_time_ns() - start) / n

    async def bare() -> int:
        start = time.thread_time_ns()
        await shapes.bare_chain(table)
        return time.thread_time_ns() - start

    async def run3(n: int = 20) -> float:
        start = time.thread_time_ns()
        for _ in range(n):
            await stageflow.Session(three, registry=reg, payload={"n": 0}).run()
        return (time.thread_time_ns() - start) / n

    res: dict[str, list[float]] = {
        k: [] for k in ("tight", "general", "empty", "bare", "run3_tight", "run3_general")
    }
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    for _ in range(int(numbers[0]) if numbers else 15):
        for tight in (True, False):
            _run._TIGHT = tight
            res["tight" if tight else "general"].append(await t(chain))
            res["run3_tight" if tight else "run3_general"].append(await run3())
        _run._TIGHT = True
        res["empty"].append(await t(empty, 20))
        res["bare"].append(await bare())
    med = {k: statistics.median(v) for k, v in res.items()}
    step = med["bare"] / 1000
    for k in ("tight", "general"):
        per = (med[k] - med["empty"]) / 1000
        print(
            f"stage node {k}: {per / 1000:.2f} us per node, {per / step:.1f}x bare step "
            f"({step / 1000:.2f} us); chain/loop {med[k] / med['bare']:.1f}x"
        )
    for k in ("run3_tight", "run3_general"):
        print(f"{k}: {med[k] / 1000:.1f} us")


if __name__ == "__main__":
    from benchmarks._tracing_worker import _setup

    if "--traced" in sys.argv[1:]:
        _setup("sdk")
    if "--metered" in sys.argv[1:]:
        _setup("metrics")
    trio.run(main)
