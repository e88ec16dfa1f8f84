"""Run the suite and print one table (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from benchmarks import _engine, _inputs, _long, _map, _scaleout, _tracing
from benchmarks._harness import Row, Settings, Table

Figures = dict[str, float | None]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its section, a name for progress lines, and its function."""

    section: str
    name: str
    run: Callable[[Settings, Table, Figures], Awaitable[None] | None]
    is_async: bool = True


def catalogue(with_langgraph: bool) -> list[Benchmark]:
    """The benchmarks, in the order they run (LangGraph last: it needs stageflow's figures)."""
    out = [
        Benchmark("engine", "sequential chain", _engine.chain),
        Benchmark("engine", "condition nodes", _engine.conditions),
        Benchmark("engine", "parallel fan-out", _engine.fanout),
        Benchmark("engine", "3-node run", _engine.three_node_run),
        Benchmark("tracing", "tracing variants", _tracing.tracing),
        Benchmark("paused", "paused sessions", _inputs.paused),
        Benchmark("snapshot", "snapshots", _inputs.snapshots),
        Benchmark("map", "map of trivial items", _map.map_items),
        Benchmark("scaleout", "session store, per turn", _scaleout.scaleout),
        Benchmark("long", "long-lived chat turns", _long.chat_turns),
    ]
    if with_langgraph:
        from benchmarks import _langgraph

        out += [
            Benchmark("langgraph", "LangGraph shapes", _langgraph.shapes, is_async=False),
            Benchmark("langgraph", "LangGraph paused runs", _langgraph.paused, is_async=False),
        ]
    return out


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(settings: Settings, argv: Sequence[str]) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in (
            "stageflow",
            "trio",
            "anyio",
            "opentelemetry-api",
            "opentelemetry-sdk",
            "langgraph",
        )
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"stageflow benchmarks, {now}, {'quick smoke mode' if settings.quick else 'full run'}",
        f"command: python -m benchmarks {' '.join(argv)}".rstrip(),
        f"machine: {cores} cores (nproc), CPU {_cpu_model()}, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.system()} "
        f"{platform.release()}",
        f"packages: {packages}",
        f"method: median of {settings.repeats} interleaved samples after {settings.warmups} "
        "warm-ups (fewer for the whole-process sweeps); ratio = measured / reference",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, few repeats: a smoke test, not figures"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help="run only this section (engine, tracing, paused, snapshot, map, long, scaleout, "
        "langgraph); "
        "repeatable",
    )
    parser.add_argument(
        "--million",
        nargs="?",
        type=int,
        const=1_000_000,
        default=0,
        metavar="N",
        help="scaleout: also claim/send/save among N stored sessions (default 1,000,000; "
        "about 1.5 GB of disk per million and minutes to load; not run in CI)",
    )
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings.make(quick=args.quick, million=args.million)
    with_langgraph = importlib.util.find_spec("langgraph") is not None
    table = Table(judge=not settings.quick)
    if not with_langgraph:
        table.notes.append("langgraph is not installed: its rows are skipped (make bench has it)")
    figures: Figures = {}
    for bench in catalogue(with_langgraph):
        if args.only and bench.section not in args.only:
            continue
        print(f"running {bench.section}: {bench.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            if bench.is_async:
                trio.run(_call, bench, settings, table, figures)
            else:
                bench.run(settings, table, figures)
        except Exception as exc:
            traceback.print_exc()
            table.add(
                Row(
                    bench.section,
                    f"{bench.name}: FAILED",
                    f"{type(exc).__name__}",
                    str(exc).splitlines()[0][:80] if str(exc) else "-",
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
        print(f"  ... {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    print("\n".join(header(settings, argv)))
    print()
    print(table.render())
    print()
    if table.notes:
        for note in table.notes:
            print(f"note: {note}")
        print()
    print("budgets:")
    print("\n".join(table.budget_lines()))
    if table.errors:
        print(f"\n{len(table.errors)} benchmark(s) FAILED; see the tracebacks above")
        return 1
    return 0


async def _call(bench: Benchmark, settings: Settings, table: Table, figures: Figures) -> None:
    pending = bench.run(settings, table, figures)
    if pending is not None:
        await pending
