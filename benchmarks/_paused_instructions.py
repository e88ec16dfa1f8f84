"""Suspended and stored waiting sessions in CPU instructions, counted by valgrind (issue 18).

``benchmarks._paused_ab`` measures CPU time, which the host's load and speed
move; an instruction count does not. For each source tree (``git archive
REV | tar -x -C DIR`` makes one) this runs one process per (kind, count)
under ``valgrind --tool=callgrind`` (``PYTHONHASHSEED=0``) and takes the
difference between a process that does ``--count`` operations and one that
does none, so that start-up, imports and warm-up cancel. Kinds:

- ``suspended``: ``Session(pipeline)`` and ``await run(suspend=True)``, the
  session kept (the pause); then ``send_input`` and ``await run()`` to the
  end (the resume, counted as pause and resume less the pause);
- ``text``: the same with ``json.dumps(session.to_dict())`` kept, restored
  with ``Session.from_dict(json.loads(text), registry=, pipeline=)``;
- ``to_dict``, ``from_dict`` (with its ``json.loads``), ``Session``: the
  pieces, on one suspended session.

The pipeline is ``benchmarks/_shapes.py``'s ``waiting`` one, as in the
``paused`` section. Run: ``python -m benchmarks._paused_instructions TREE[,TREE...]
[--count 500] [--kinds suspended,text]`` (each process takes a minute or so
under callgrind). Not part of ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

KINDS = ("suspended", "text", "to_dict", "from_dict", "Session")


def _child(kind: str, count: int, resume: bool) -> None:
    """One measured process: warm up, then ``count`` operations of ``kind``."""
    import gc
    import json
    from typing import Any

    import trio

    import stageflow
    from benchmarks import _shapes as shapes

    reg = shapes.registry()
    pipeline = shapes.waiting(reg)
    text = kind == "text"

    async def pause(n: int) -> list[Any]:
        kept: list[Any] = []
        for _ in range(n):
            session = stageflow.Session(pipeline, registry=reg, session_id="s")
            await session.run(suspend=True)
            kept.append(json.dumps(session.to_dict()) if text else session)
        return kept

    async def go_on(kept: list[Any]) -> None:
        for item in kept:
            if text:
                item = stageflow.Session.from_dict(
                    json.loads(item), registry=reg, pipeline=pipeline
                )
            item.send_input("go", {"x": 1})
            await item.run()

    async def main() -> None:
        await go_on(await pause(100))  # caches and first-use work
        if kind in ("suspended", "text"):
            gc.collect()
            gc.disable()
            kept = await pause(count)
            if resume:
                await go_on(kept)
            return
        session = stageflow.Session(pipeline, registry=reg, session_id="s")
        await session.run(suspend=True)
        snapshot = json.dumps(session.to_dict())
        gc.collect()
        gc.disable()
        for _ in range(count):
            if kind == "to_dict":
                session.to_dict()
            elif kind == "from_dict":
                stageflow.Session.from_dict(json.loads(snapshot), registry=reg, pipeline=pipeline)
            else:
                stageflow.Session(pipeline, registry=reg, session_id="s")

    trio.run(main)


def _instructions(tree: str, kind: str, count: int, resume: bool) -> int:
    """Instructions of one process over ``tree`` (callgrind's summary)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            # This file itself, so that a tree without it can be measured: the
            # tree's stageflow and benchmarks come first on the path.
            os.path.abspath(__file__),
            "--child",
            kind,
            str(count),
            "resume" if resume else "pause",
        ]
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=tree)
        subprocess.run(command, env=env, check=True, capture_output=True, cwd=tree)
        with open(out) as counted:
            found = re.search(r"^summary:\s+(\d+)", counted.read(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no summary in callgrind's output for {kind} in {tree}")
        return int(found.group(1))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]), argv[3] == "resume")
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks._paused_instructions")
    parser.add_argument("trees", help="source trees, comma-separated")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--kinds", default="suspended,text")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    for tree in args.trees.split(","):
        row: dict[str, int] = {}
        for kind in kinds:
            idle = _instructions(tree, kind, 0, True)
            if kind in ("suspended", "text"):
                paused = _instructions(tree, kind, args.count, False)
                both = _instructions(tree, kind, args.count, True)
                row[f"{kind} pause"] = round((paused - idle) / args.count)
                row[f"{kind} resume"] = round((both - paused) / args.count)
            else:
                done = _instructions(tree, kind, args.count, True)
                row[kind] = round((done - idle) / args.count)
        print(tree, "  ".join(f"{name} {value:,}" for name, value in row.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
