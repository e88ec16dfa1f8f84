"""Tracing's cost per node in CPU instructions, counted by valgrind (issue 15).

Wall-clock rows move with the machine's load and speed; an instruction count
does not. This runs one process per (variant, size) under ``valgrind
--tool=callgrind`` and takes the difference between a run with ``--nodes``
nodes (or bare spans) and one without, so that start-up and imports cancel:

- ``untraced``: a chain of ``--nodes`` trivial stage nodes, the session told
  to make no spans (``tracer_provider=NoOpTracerProvider()``);
- ``sdk``: the same chain with the SDK ``TracerProvider``, a
  ``BatchSpanProcessor`` and an exporter that drops what it gets (the
  ``tracing`` section's SDK row);
- ``span``: ``--nodes`` bare ``start_as_current_span`` spans, same provider.

stageflow's own share per node is ``sdk - untraced - span``; it is printed
in instructions, as a fraction of one bare span, and in microseconds at
``--span-us`` per bare span (the bare-span row of a quiet ``make bench``
run). Every process builds the same pipelines and warms the same paths
(the chain runs once first, so its per-pipeline work is done, as in the
benchmarks' repeated runs); only whether the chain (or the spans) run again
differs.

Run: ``python -m benchmarks._instructions [--nodes 1000] [--span-us 11.52]``
(needs ``valgrind``; each process takes a minute or more under callgrind).
Not part of ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence

VARIANTS = ("untraced", "sdk", "span")


def _child(variant: str, nodes: int, run: bool) -> None:
    """One measured process: build everything, warm up, then run or not."""
    import trio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    import stageflow
    from benchmarks import _shapes as shapes

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    if variant != "untraced":
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropping()))
        trace.set_tracer_provider(provider)
    options = {"tracer_provider": trace.NoOpTracerProvider()} if variant == "untraced" else {}
    reg = shapes.registry()
    chain = shapes.chain(reg, nodes)
    tracer = trace.get_tracer("benchmarks")

    async def main() -> None:
        # The measured chain itself, once: a run's per-pipeline work (the
        # tight path's plan, stage resolution) is done by the first run and
        # reused by every later one, as in the benchmarks' repeated runs.
        await stageflow.Session(chain, registry=reg, payload={"n": 0}, **options).run()
        with tracer.start_as_current_span("warm"):
            pass
        if not run:
            return
        if variant == "span":
            for _ in range(nodes):
                with tracer.start_as_current_span("bench"):
                    pass
        else:
            await stageflow.Session(chain, registry=reg, payload={"n": 0}, **options).run()

    trio.run(main)


def _count(variant: str, nodes: int, run: bool) -> int:
    """Instructions of one child process, as callgrind counts them."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks._instructions",
        "--child",
        variant,
        "--nodes",
        str(nodes),
        *(["--run"] if run else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._instructions")
    parser.add_argument("--nodes", type=int, default=1000, help="nodes (or spans) per run")
    parser.add_argument(
        "--span-us", type=float, default=11.52, help="one bare SDK span, in microseconds"
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.nodes, args.run)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: it counts the instructions")
        return 2
    per: dict[str, float] = {}
    for variant in VARIANTS:
        counts = [_count(variant, args.nodes, run) for run in (False, True)]
        per[variant] = (counts[1] - counts[0]) / args.nodes
        print(
            f"{variant}: {per[variant]:,.0f} instructions per node ({counts[0]:,} -> {counts[1]:,})"
        )
    share = per["sdk"] - per["untraced"] - per["span"]
    fraction = share / per["span"]
    print(
        f"stageflow's own share with the SDK: {share:,.0f} instructions per node, "
        f"{fraction:.2f} of a bare span, {fraction * args.span_us:.2f} us at {args.span_us} us "
        "per bare span"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
