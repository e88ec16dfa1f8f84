"""Before/after for the ``scaleout`` section: two code trees, measured alternately.

Not part of ``make bench``. Usage::

    git archive main stageflow benchmarks tests/support | tar -x -C /tmp/before
    python benchmarks/_scaleout_ab.py /tmp/before,. 2 turn,pad,eff1,eff8
    python benchmarks/_scaleout_ab.py /tmp/before,. 1 m200000

Each measurement runs in a fresh interpreter whose ``sys.path`` (and its
worker processes' ``PYTHONPATH``) starts with one tree, against one
PostgreSQL server started once (see ``benchmarks/_scaleout.py``), so the two
trees' figures are taken seconds apart under the same load. Modes: ``turn``
(200 sessions x 5 turns, 1 worker process at concurrency 32), ``pad`` (the
same with a 14.5 KB snapshot), ``effW`` (W workers at concurrency 1, a 50 ms
stage, 2W sessions x 20 turns), ``mN`` (``--million`` with N stored sessions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_ONE = r"""
import json, os, pathlib, sys
import anyio
root, dsn, mode = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, root)
os.environ["PYTHONPATH"] = root
from benchmarks import _scaleout as s
s.ROOT = pathlib.Path(root)

async def main():
    if mode.startswith("m"):
        from benchmarks._harness import Table
        table = Table()
        await s._million(dsn, int(mode[1:]), table)
        print(json.dumps({"rows": [[r.label, r.measured] for r in table.rows]}))
        return
    if mode.startswith("eff"):
        w = int(mode[3:])
        r = await s._processes(dsn, workers=w, concurrency=1, sessions=2 * w, turns=20, io=True)
    else:
        payload = s._padding(14_000) if mode == "pad" else None
        r = await s._processes(dsn, workers=1, concurrency=32, sessions=200, turns=5,
                               payload=payload)
    print(json.dumps(r))

anyio.run(main, backend="trio")
"""


def main(argv: list[str]) -> None:
    roots = [str(Path(r).resolve()) for r in argv[0].split(",")]
    reps, modes = int(argv[1]), argv[2].split(",")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import _scaleout

    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with _scaleout._postgres() as dsn:
        assert dsn is not None, "no PostgreSQL server (set STAGEFLOW_BENCH_PG_DSN)"
        for rep in range(reps):
            for mode in modes:
                for root in roots:
                    done = subprocess.run(
                        [sys.executable, "-c", _ONE, root, dsn, mode],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    runs.setdefault((root, mode), []).append(result)
                    load = os.getloadavg()[0]
                    if "rows" in result:
                        for label, measured in result["rows"]:
                            print(f"rep{rep} {root} load={load:.1f} {label}: {measured}")
                        continue
                    print(
                        f"rep{rep} {root} {mode} load={load:.1f} rate={result['rate']:.1f}/s "
                        f"worker={result['worker_ms']:.2f} ms db={result['server_ms']:.2f} ms "
                        f"wal={result['wal'] / 1024:.2f} KiB snapshot={result['snapshot']} B",
                        flush=True,
                    )
    for root in roots:
        for mode in modes:
            if mode.startswith("eff") and mode != "eff1" and (root, "eff1") in runs:
                w = int(mode[3:])
                for one, many in zip(runs[(root, "eff1")], runs[(root, mode)], strict=True):
                    print(f"{root}: E({w}) = {many['rate'] / (w * one['rate']):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
