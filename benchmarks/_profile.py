"""Run one benchmarked shape in a loop, for a profiler to watch.

The profile of ``python -m benchmarks`` mixes the harness, the bare references
and every benchmark; this runs only stageflow sessions of one shape, on trio,
for a number of seconds (at least one run). For example::

    .bench-venv/bin/pyinstrument -m benchmarks._profile chain
    .bench-venv/bin/py-spy record -r 1000 -o chain.svg -- \\
        .bench-venv/bin/python -m benchmarks._profile chain --seconds 15

Shapes: ``chain`` (1,000 stage nodes), ``conditions`` (999 condition nodes),
``fanout`` (1,000 one-stage branches), ``traced`` (the chain with the SDK
tracer provider of the tracing benchmark). ``--size`` changes the node count.
Every run is checked like a benchmarked one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import trio

import stageflow
from benchmarks import _shapes as shapes
from benchmarks._tracing_worker import _setup

SHAPES = ("chain", "conditions", "fanout", "traced")


def _pipeline(
    shape: str, reg: stageflow.StageRegistry, size: int
) -> tuple[stageflow.Pipeline, dict[str, Any]]:
    """The pipeline of ``shape`` and the artifacts a run of it must leave."""
    if shape in ("chain", "traced"):
        return shapes.chain(reg, size), {"n": size}
    if shape == "conditions":
        return shapes.conditions(reg, size), {}
    return shapes.fanout(reg, size), {}


async def _loop(
    pipeline: stageflow.Pipeline,
    reg: stageflow.StageRegistry,
    seconds: float,
    artifacts: dict[str, Any],
) -> int:
    runs = 0
    end = time.monotonic() + seconds
    while runs == 0 or time.monotonic() < end:
        session = stageflow.Session(pipeline, registry=reg, payload={"n": 0, "flag": True})
        shapes.check(await session.run(), **artifacts)
        runs += 1
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._profile", description=__doc__)
    parser.add_argument("shape", choices=SHAPES)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to loop (10)")
    parser.add_argument("--size", type=int, default=1000, help="nodes or branches (1000)")
    args = parser.parse_args(argv)
    if args.shape == "traced":
        _setup("sdk")
    reg = shapes.registry()
    pipeline, artifacts = _pipeline(args.shape, reg, args.size)
    started = time.perf_counter()
    runs = trio.run(_loop, pipeline, reg, args.seconds, artifacts)
    elapsed = time.perf_counter() - started
    print(
        f"{args.shape}: {runs} runs of {args.size:,} in {elapsed:.1f} s "
        f"({elapsed / runs / args.size * 1e6:.2f} us per node, run overhead included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
