"""Paused sessions under Python's garbage collector settings (for ``docs/memory.md``).

Holds ``--count`` sessions paused in ``wait_input`` (kept live, or suspended
and kept as ``Session`` objects) and measures the time to pause each one and
to resume each one, under one collector setting per process (each setting
gets a fresh heap). Times are CPU time of the process (``process_time``), so
that other work on a shared machine moves them less than wall time; the
collector's own share is timed with ``gc.callbacks``:

- ``default``: the interpreter's thresholds, nothing frozen;
- ``freeze-startup``: ``gc.freeze()`` once, after imports and the pipeline
  are loaded (the heap a service has before it takes requests);
- ``threshold``: ``gc.set_threshold(50_000, 20, 100)``;
- ``freeze-batches``: ``gc.freeze()`` after every 10,000 sessions paused (and
  ``gc.unfreeze()`` before they resume, so that their cycles can be collected).

Run: ``python -m benchmarks._gc [--count N] [--kind live|suspended]
[--settings a,b]``; it prints one line per setting. Not part of ``python -m benchmarks``: a sweep
of 100,000 sessions per setting takes minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import Any

import trio
import trio.testing

import stageflow
from benchmarks import _shapes as shapes

SETTINGS = ("default", "freeze-startup", "threshold", "freeze-batches")
BATCH = 10_000


def _apply(setting: str) -> None:
    if setting == "freeze-startup":
        gc.collect()
        gc.freeze()
    elif setting == "threshold":
        gc.set_threshold(50_000, 20, 100)


class _Collections:
    """CPU time spent in the collector, and the collections of the oldest generation."""

    def __init__(self) -> None:
        self.ns = 0
        self.full = 0
        self._started = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time_ns()
        else:
            self.ns += time.process_time_ns() - self._started
            self.full += info["generation"] == 2


async def _sweep(setting: str, count: int, kind: str) -> dict[str, Any]:
    reg = shapes.registry()
    pipeline = shapes.waiting(reg)
    # Warm-up: one session, so that lazy imports and caches are in place.
    warm = stageflow.Session(pipeline, registry=reg)
    await warm.run(suspend=True)
    _apply(setting)
    collector = _Collections()
    gc.callbacks.append(collector)
    sessions: list[stageflow.Session] = []
    async with trio.open_nursery() as nursery:
        start = time.process_time_ns()
        for i in range(count):
            session = stageflow.Session(pipeline, registry=reg)
            if kind == "live":
                nursery.start_soon(session.run)
            else:
                await session.run(suspend=True)
            sessions.append(session)
            if setting == "freeze-batches" and (i + 1) % BATCH == 0:
                if kind == "live":
                    await trio.testing.wait_all_tasks_blocked()
                gc.freeze()
        await trio.testing.wait_all_tasks_blocked()
        paused = time.process_time_ns()
        in_gc, full = collector.ns, collector.full
        if setting == "freeze-batches":
            gc.unfreeze()
        for session in sessions:
            session.send_input("go", {"x": 1})
            if kind != "live":
                await session.run()
    done = time.process_time_ns()
    gc.callbacks.remove(collector)
    if any(s.status is not stageflow.SessionStatus.COMPLETED for s in sessions):
        raise RuntimeError("a session did not complete after its input")
    return {
        "setting": setting,
        "kind": kind,
        "count": count,
        "pause_us": round((paused - start) / count / 1000, 2),
        "resume_us": round((done - paused) / count / 1000, 2),
        "gc_share_of_pause": round(in_gc / max(1, paused - start), 2),
        "full_collections_while_pausing": full,
        "gc_share_of_resume": round((collector.ns - in_gc) / max(1, done - paused), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._gc", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--kind", choices=("live", "suspended"), default="live")
    parser.add_argument("--setting", choices=SETTINGS, help="one setting, in this process")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="the settings to compare, comma-separated"
    )
    args = parser.parse_args(argv)
    if args.setting is not None:
        print(json.dumps(trio.run(_sweep, args.setting, args.count, args.kind)), flush=True)
        return
    for setting in args.settings.split(","):
        command = [sys.executable, "-m", "benchmarks._gc", "--count", str(args.count)]
        subprocess.run([*command, "--kind", args.kind, "--setting", setting], check=True)


if __name__ == "__main__":
    main()
