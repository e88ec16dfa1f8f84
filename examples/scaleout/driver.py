"""Two worker processes, one PostgreSQL, and a driver that sends the inputs.

    cd examples/scaleout   # from the repository, after make test
    ../../.venv/bin/python driver.py --store postgresql://user@localhost/db

The driver starts two ``stageflow worker`` processes (``--stages stages.py``),
starts ``--sessions`` sessions of ``pipeline.json`` through ``SessionService``,
sends each the numbers 1..``--rounds`` + 1, one round at a time, the last
one with ``stop``, and waits until every session has completed. Then it
stops the workers with SIGTERM (each finishes its turns in flight and prints
its statistics) and prints one JSON object: the distinct totals (one, 1 + 2
+ 3 + 4 = 10 by default: every session added every number once), how many
worker processes ran turns, and the workers' statistics. Any worker may run
any turn (each takes at most 4 at a time here), so a session's turns may be
spread over both processes.

``--store sqlite:///tally.db`` works too (one machine, a few processes).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

import stageflow
from stageflow.store import SessionService, StoreError, open_store

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent


def start_workers(url: str, schema: str | None, count: int) -> list[subprocess.Popen[str]]:
    """``count`` worker processes on the store."""
    command = [
        sys.executable, "-m", "stageflow", "worker", "--store", url,
        "--stages", str(HERE / "stages.py"), "--no-plugins", "--pipelines", str(HERE),
        "--poll", "0.5", "--concurrency", "4",
    ]  # fmt: skip
    if schema is not None:
        command += ["--schema", schema]
    return [
        subprocess.Popen([*command, f"--worker-id=worker-{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(count)
    ]


async def drive(url: str, schema: str | None, sessions: int, rounds: int) -> dict[str, Any]:
    """Start the sessions, send every round, wait for the end; return the outcome."""
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)
    store = open_store(url, **({"schema": schema} if schema else {}))
    service = SessionService(store, registry=registry)
    try:
        ids = [await service.start(pipeline) for _ in range(sessions)]
        for n in range(1, rounds + 2):
            payload = {"n": n, "stop": n > rounds}
            records = [
                await service.send_input(sid, "msg", payload, idempotency_key=f"round-{n}")
                for sid in ids
            ]
            for record in records:
                await service.wait(record.session_id, seq=record.seq, timeout=60)
        totals, pids = [], set()
        for sid in ids:
            snapshot = await store.load(sid)
            totals.append(snapshot["outcome"]["artifacts"]["total"])
            pids.update(snapshot["outcome"]["artifacts"]["pids"])
        return {"sessions": sessions, "totals": sorted(set(totals)), "worker_pids": len(pids)}
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; print its outcome as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="postgresql://... or sqlite:///...")
    parser.add_argument("--schema", help="PostgreSQL schema (default: stageflow)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workers = start_workers(args.store, args.schema, 2)
    try:
        outcome = anyio.run(drive, args.store, args.schema, args.sessions, args.rounds)
    except StoreError as exc:  # a store that cannot be opened: one line, as the workers say
        print(f"driver.py: {exc}", file=sys.stderr)
        return 2
    finally:
        stats = []
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=60)
            # No statistics: the signal came before the worker took signals,
            # which it does before its first claim, so it ran no turn.
            stats.append(
                json.loads(out)
                if out.strip()
                else {"exit": worker.returncode, "saved": 0, "fenced": 0}
            )
    outcome["workers"] = stats
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
