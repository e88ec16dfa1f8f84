"""A/B of two stageflow trees in one process: pausing and resuming waiting sessions.

``python -m benchmarks._paused_ab BEFORE AFTER [ROUNDS] [--held N] [--sample S]``:
BEFORE and AFTER are source trees (``git archive main | tar -x -C DIR``
makes one); each tree's ``stageflow`` package is loaded under another name
(``benchmarks._fanout_ab.load``). For each tree and each way of keeping a
waiting session (``live``: a task parked in ``wait_input``; ``suspended``:
``run(suspend=True)``, the ``Session`` kept; ``text``: its snapshot kept as
JSON text, restored with ``from_dict(json.loads(...), pipeline=...)``) a
population of ``N`` (10,000) sessions is paused first and held for the
whole run (built with the collector off, then collected once). Each round
then pauses ``S`` (1,000) more sessions of each kind and tree and resumes
them (an input, the run to its end), the trees in alternating order, timed
with the thread's CPU time (``time.thread_time_ns``), collector on.
Printed per kind: each side's median per session and the median of the
per-round ratios AFTER / BEFORE; then, per session of one more sample, the
bytes held (tracemalloc, as ``benchmarks/_inputs.py`` measures them) and
the objects the collector tracks. Last, each pause with the collector's
full collections added as ``make bench`` adds them
(``benchmarks._inputs.collection_share``), for ``N`` sessions of one kind
held: the rounds seldom meet a full collection (the populations were
moved to the oldest generation once), so their CPU time alone does not
see what one tracked object more or less per session costs. Not part of
``make bench``; the ``paused`` section's rows measure the same in wall
time with 100,000 held.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio
import trio.testing

from benchmarks._fanout_ab import load
from benchmarks._inputs import collection_share, full_collection

KINDS = ("live", "suspended", "text")


class Side:
    """One tree's stageflow, its registry and the waiting pipeline."""

    def __init__(self, sf: Any) -> None:
        self.sf = sf
        reg = self.reg = sf.StageRegistry()

        @reg.register("Await")
        async def await_go(ctx: Any) -> dict[str, Any]:
            return {"v": await ctx.wait_input("go")}

        document = {
            "api_version": "1.0",
            "entry": "wait",
            "nodes": [
                {
                    "id": "wait",
                    "type": "stage",
                    "stage": "Await",
                    "outputs": {"v": "v"},
                    "next": "end",
                },
                {"id": "end", "type": "terminal", "artifacts": ["v"]},
            ],
        }
        self.pipeline = sf.Pipeline.from_dict(document, registry=reg)

    async def pause(self, kind: str, n: int, nursery: trio.Nursery) -> list[Any]:
        sf, reg, pipeline = self.sf, self.reg, self.pipeline
        if kind == "live":
            sessions = [sf.Session(pipeline, registry=reg) for _ in range(n)]
            for session in sessions:
                nursery.start_soon(session.run)
            await trio.testing.wait_all_tasks_blocked()
            return sessions
        kept: list[Any] = []
        for _ in range(n):
            session = sf.Session(pipeline, registry=reg)
            await session.run(suspend=True)
            kept.append(json.dumps(session.to_dict()) if kind == "text" else session)
        return kept

    async def resume(self, kind: str, held: list[Any]) -> None:
        sf, reg, pipeline = self.sf, self.reg, self.pipeline
        if kind == "live":
            for session in held:
                session.send_input("go", {"x": 1})
            await trio.testing.wait_all_tasks_blocked()
            sessions = held
        else:
            sessions = []
            for item in held:
                if kind == "text":
                    item = sf.Session.from_dict(json.loads(item), registry=reg, pipeline=pipeline)
                item.send_input("go", {"x": 1})
                await item.run()
                sessions.append(item)
        if any(s.status.value != "completed" for s in sessions):
            raise RuntimeError(f"a {kind} session did not complete after its input")


async def main(sides: list[Side], rounds: int, held: int, sample: int) -> None:
    pause: dict[tuple[str, int], list[float]] = {(k, i): [] for k in KINDS for i in (0, 1)}
    resume: dict[tuple[str, int], list[float]] = {(k, i): [] for k in KINDS for i in (0, 1)}
    async with trio.open_nursery() as nursery:
        populations = []
        gc.disable()
        try:
            for side in sides:
                for kind in KINDS:
                    populations.append((side, kind, await side.pause(kind, held, nursery)))
        finally:
            gc.enable()
        gc.collect()
        for round_ in range(rounds + 1):  # the first round warms up
            order = list(enumerate(sides))
            if round_ % 2:
                order.reverse()
            for kind in KINDS:
                for i, side in order:
                    start = time.thread_time_ns()
                    batch = await side.pause(kind, sample, nursery)
                    paused = time.thread_time_ns()
                    await side.resume(kind, batch)
                    done = time.thread_time_ns()
                    if round_:
                        pause[kind, i].append((paused - start) / sample)
                        resume[kind, i].append((done - paused) / sample)
        memory: dict[tuple[str, int], tuple[float, float]] = {}
        batch = []  # the last round's, resumed: freed before anything is counted
        for kind in KINDS:
            for i, side in enumerate(sides):
                batch = []
                gc.collect()
                objects = len(gc.get_objects())
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                batch = await side.pause(kind, sample, nursery)
                nbytes = tracemalloc.get_traced_memory()[0] - base
                tracemalloc.stop()
                gc.collect()
                tracked = len(gc.get_objects()) - objects
                memory[kind, i] = (nbytes / sample, tracked / sample)
                await side.resume(kind, batch)
        # A full collection's CPU time per tracked object, the populations
        # held; the objects that are not theirs (modules, the trees' pipelines).
        per_object, oldest = full_collection(time.thread_time_ns)
        others = oldest - sum(
            len(population) * memory[kind, sides.index(side)][1]
            for side, kind, population in populations
        )
        for side, kind, population in populations:
            await side.resume(kind, population)
    print(f"{held:,} held per kind and tree, {sample:,} per round, {rounds} rounds (CPU time)")
    print(f"{'':20} {'before':>10} {'after':>10}  after/before (median of rounds)")
    for kind in KINDS:
        for what, times in (("pause", pause), ("resume", resume)):
            b, a = times[kind, 0], times[kind, 1]
            ratio = statistics.median(y / x for x, y in zip(b, a, strict=True))
            print(
                f"{kind + ' ' + what:20} {statistics.median(b) / 1000:8.2f}us "
                f"{statistics.median(a) / 1000:8.2f}us  {ratio:.3f}"
            )
    for kind in KINDS:
        (b_bytes, b_objs), (a_bytes, a_objs) = memory[kind, 0], memory[kind, 1]
        print(
            f"{kind + ' memory':20} {b_bytes / 1024:8.2f}KiB {a_bytes / 1024:7.2f}KiB"
            f"  tracked objects {b_objs:.1f} -> {a_objs:.1f}"
        )
    print(
        f"pause with the full collections of {held:,} held of one kind "
        f"({per_object:.0f} ns per tracked object):"
    )
    for kind in KINDS:
        with_share = []
        for i in (0, 1):
            each = memory[kind, i][1]
            share = collection_share(per_object, others + held * each, each)
            with_share.append(statistics.median(pause[kind, i]) + share)
        old, new = with_share
        print(f"{kind + ' pause':20} {old / 1000:8.2f}us {new / 1000:8.2f}us  {new / old:.3f}")


def _option(args: list[str], name: str, default: int) -> int:
    if name in args:
        at = args.index(name)
        value = int(args[at + 1])
        del args[at : at + 2]
        return value
    return default


if __name__ == "__main__":
    argv = sys.argv[1:]
    held_n = _option(argv, "--held", 10_000)
    sample_n = _option(argv, "--sample", 1000)
    with tempfile.TemporaryDirectory() as scratch:
        sys.path.insert(0, scratch)
        loaded = [
            Side(load(argv[0], "sf_before", Path(scratch))),
            Side(load(argv[1], "sf_after", Path(scratch))),
        ]
        trio.run(main, loaded, int(argv[2]) if len(argv) > 2 else 11, held_n, sample_n)
