"""A/B of two stageflow trees in one process: map items and fan-out branches, CPU time.

``python -m benchmarks._fanout_ab BEFORE AFTER [ROUNDS] [--asyncio] [--langgraph]``:
BEFORE and AFTER are source trees (``git archive main | tar -x -C DIR``
makes one). Each tree's ``stageflow`` package is copied to a temporary
directory under another name (its imports renamed), so both load into this
process and are timed in alternating rounds, with the thread's CPU time
(``time.thread_time_ns``, which other processes on a loaded machine move
less than wall time). Per round and tree: a map of 2,000 ``Inc`` items at
concurrency 1, 8 and 64 (per item), fan-outs of 1, 100 and 1,000 one-stage
branches (per branch: (N - 1 branch) / (N - 1)), and a 1,000-node chain
less a terminal-only run (per node: a control that neither side's map or
parallel code runs). Printed: the median of each side and the median of
the per-round ratios AFTER / BEFORE. Not part of ``make bench``.

``--langgraph`` (the bench environment, which has LangGraph): LangGraph's
fan-outs of 1, 100 and 1,000 (the ``langgraph`` section's graphs) are timed
in the same rounds, with ``ainvoke`` on asyncio and ``invoke`` on trio, and
every sample (both trees' too) in the process's CPU time
(``time.process_time_ns``: LangGraph's sync API runs branches in a thread
pool). Printed in addition: LangGraph's branch and, per tree, the median of
the per-round ratios LangGraph / stageflow (the ``langgraph`` section's
"parallel branch" rows, in CPU time).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

ITEMS = 2000
_IMPORT = re.compile(r"\bstageflow\.|^(from|import) stageflow\b", re.MULTILINE)


def load(tree: str, name: str, into: Path) -> Any:
    """Import ``tree``'s stageflow package as ``name`` (copied into ``into``)."""
    target = into / name
    shutil.copytree(Path(tree) / "stageflow", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        text = _IMPORT.sub(
            lambda m: f"{name}." if m.group(0).endswith(".") else f"{m.group(1)} {name}", text
        )
        # Not an import: the snapshot format's name, which the schema checks.
        text = text.replace(f'"{name}.session-snapshot"', '"stageflow.session-snapshot"')
        path.write_text(text)
    return importlib.import_module(name)


def shapes(sf: Any) -> tuple[Any, dict[str, tuple[Any, dict[str, Any], int]]]:
    """The registry and the timed pipelines: name -> (pipeline, payload, runs per sample)."""
    reg = sf.StageRegistry()

    @reg.register("Inc")
    async def inc(ctx: Any) -> dict[str, int]:
        return {"n": ctx.arguments["n"] + 1}

    def stage(node_id: str, next_id: str | None, out: str = "n") -> dict[str, Any]:
        node = {
            "id": node_id,
            "type": "stage",
            "stage": "Inc",
            "arguments": {"n": "n"},
            "outputs": {"n": out},
        }
        return node if next_id is None else {**node, "next": next_id}

    end = {"id": "end", "type": "terminal", "artifacts": ["outs"]}

    def pipeline(nodes: list[dict[str, Any]], entry: str, **more: Any) -> Any:
        document = {"api_version": "1.0", "entry": entry, "nodes": nodes, **more}
        return sf.Pipeline.from_dict(document, registry=reg)

    def mapped(concurrency: int) -> Any:
        each = {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "inc",
            "item_path": "n",
            "concurrency": concurrency,
            "collect": {"out": "outs"},
            "next": "end",
        }
        body = stage("inc", None, "out")
        return pipeline([each, body, end], "each", limits={"max_steps": ITEMS + 10})

    def fanout(branches: int) -> Any:
        children = [f"b{i}" for i in range(branches)]
        fan = {"id": "fan", "type": "parallel", "children": children, "next": "end"}
        nodes = [stage(c, None, f"r{i}") for i, c in enumerate(children)]
        return pipeline([fan, *nodes, end], "fan")

    chain = [stage(f"s{i}", f"s{i + 1}" if i < 999 else "end") for i in range(1000)]
    items = {"items": list(range(ITEMS))}
    return reg, {
        "map_c1": (mapped(1), items, 1),
        "map_c8": (mapped(8), items, 1),
        "map_c64": (mapped(64), items, 1),
        "fan1": (fanout(1), {"n": 0}, 20),
        "fan100": (fanout(100), {"n": 0}, 1),
        "fan1000": (fanout(1000), {"n": 0}, 1),
        "chain": (pipeline([*chain, end], "s0"), {"n": 0}, 1),
        "empty": (pipeline([end], "end"), {"n": 0}, 20),
    }


DERIVED: dict[str, Callable[[dict[str, float]], float]] = {
    "map item (concurrency 1)": lambda m: m["map_c1"] / ITEMS,
    "map item (concurrency 8)": lambda m: m["map_c8"] / ITEMS,
    "map item (concurrency 64)": lambda m: m["map_c64"] / ITEMS,
    "branch (fan-out of 100)": lambda m: (m["fan100"] - m["fan1"]) / 99,
    "branch (fan-out of 1,000)": lambda m: (m["fan1000"] - m["fan1"]) / 999,
    "stage node (control)": lambda m: (m["chain"] - m["empty"]) / 1000,
}


# The CPU clock of every sample: the measuring thread's, or the process's
# with --langgraph.
cpu_ns = time.thread_time_ns


async def sample(sf: Any, reg: Any, pipeline: Any, payload: dict[str, Any], runs: int) -> float:
    sessions = [sf.Session(pipeline, registry=reg, payload=dict(payload)) for _ in range(runs)]
    gc.collect()
    start = cpu_ns()
    for session in sessions:
        result = await session.run()
    elapsed = cpu_ns() - start
    if result.status.value != "completed":
        raise RuntimeError(f"a timed run ended {result.status.value}: {result.error}")
    return elapsed / runs


class LangGraphFanouts:
    """LangGraph's fan-outs of 1, 100 and 1,000 (``--langgraph``), per branch as ``DERIVED``."""

    SIZES = (1, 100, 1000)

    def __init__(self, on_asyncio: bool) -> None:
        from benchmarks import _langgraph  # only in the bench environment

        self.on_asyncio = on_asyncio
        self.limit = _langgraph.LIMIT
        mode = "async" if on_asyncio else "sync"
        self.graphs = {n: _langgraph.fanout_graph(n, mode) for n in self.SIZES}

    async def sample(self, branches: int) -> float:
        graph = self.graphs[branches]
        runs = 20 if branches == 1 else 1  # per sample, as the trees' fan-outs
        gc.collect()
        start = cpu_ns()
        for _ in range(runs):
            if self.on_asyncio:
                result = await graph.ainvoke({"n": 0, "r": []}, self.limit)
            else:
                result = graph.invoke({"n": 0, "r": []}, self.limit)  # blocks, as intended
        elapsed = cpu_ns() - start
        if len(result["r"]) != branches:
            raise RuntimeError("a LangGraph fan-out lost a branch")
        return elapsed / runs

    async def round(self) -> dict[str, float]:
        m = {n: await self.sample(n) for n in self.SIZES}
        return {
            "branch (fan-out of 100)": (m[100] - m[1]) / 99,
            "branch (fan-out of 1,000)": (m[1000] - m[1]) / 999,
        }


async def main(sides: list[Any], rounds: int, langgraph: LangGraphFanouts | None = None) -> None:
    built = [(sf, *shapes(sf)) for sf in sides]
    figures: list[list[dict[str, float]]] = [[] for _ in sides]
    theirs: list[dict[str, float]] = []
    for round_ in range(rounds + 1):  # the first round warms up
        order = list(enumerate(built))
        if round_ % 2:
            order.reverse()
        for side, (sf, reg, timed) in order:
            medians = {k: await sample(sf, reg, *shape) for k, shape in timed.items()}
            if round_:
                figures[side].append({k: f(medians) for k, f in DERIVED.items()})
        if langgraph is not None:
            branches = await langgraph.round()
            if round_:
                theirs.append(branches)
    before, after = figures
    print(f"{'':28} {'before':>10} {'after':>10}  after/before (median of rounds)")
    for key in DERIVED:
        b = statistics.median(r[key] for r in before) / 1000
        a = statistics.median(r[key] for r in after) / 1000
        ratio = statistics.median(y[key] / x[key] for x, y in zip(before, after, strict=True))
        print(f"{key:28} {b:8.2f}us {a:8.2f}us  {ratio:.3f}")
    if theirs:
        print(f"{'LangGraph':28} {'per branch':>10}  LangGraph / stageflow (median of rounds)")
        for key in theirs[0]:
            lg = statistics.median(r[key] for r in theirs) / 1000
            cheaper = [
                statistics.median(t[key] / r[key] for t, r in zip(theirs, side, strict=True))
                for side in (before, after)
            ]
            print(f"{key:28} {lg:8.2f}us  before {cheaper[0]:.2f}x, after {cheaper[1]:.2f}x")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--asyncio", "--langgraph")]
    with tempfile.TemporaryDirectory() as scratch:
        sys.path.insert(0, scratch)
        sides = [
            load(args[0], "sf_before", Path(scratch)),
            load(args[1], "sf_after", Path(scratch)),
        ]
        rounds = int(args[2]) if len(args) > 2 else 15
        on_asyncio = "--asyncio" in sys.argv
        langgraph = None
        if "--langgraph" in sys.argv:
            cpu_ns = time.process_time_ns
            langgraph = LangGraphFanouts(on_asyncio)
        if on_asyncio:
            asyncio.run(main(sides, rounds, langgraph))
        else:
            trio.run(main, sides, rounds, langgraph)
