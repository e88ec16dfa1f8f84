"""Ctrl-C in ``stageflow run`` and ``stageflow worker``: exit 130, one line on stderr.

On trio, the KeyboardInterrupt arrives wrapped in an exception group with the
cancellations of the session's tasks; before the fix the CLI printed that
group's traceback and exited 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

STAGES = """
import sys

import anyio

import stageflow

registry = stageflow.StageRegistry()


@registry.register("Block")
async def block(ctx):
    print("ready", file=sys.stderr, flush=True)
    await anyio.sleep_forever()
"""

# The blocking stage runs inside a parallel node: the interrupt crosses a task group.
PIPELINE = {
    "api_version": "1.0",
    "entry": "fan",
    "nodes": [
        {"id": "fan", "type": "parallel", "children": ["a", "b"], "next": "end"},
        {"id": "a", "type": "stage", "stage": "Block"},
        {"id": "b", "type": "stage", "stage": "Block"},
        {"id": "end", "type": "terminal", "result": {}},
    ],
}


# The same, the blocking stage a map's body: the interrupt crosses the map's task group.
MAP_PIPELINE = {
    "api_version": "1.0",
    "entry": "each",
    "nodes": [
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "a",
            "concurrency": 2,
            "next": "end",
        },
        {"id": "a", "type": "stage", "stage": "Block"},
        {"id": "end", "type": "terminal", "result": {}},
    ],
}


def _entry_point() -> str:
    found = shutil.which("stageflow", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stageflow entry point is not installed: pip install -e .")
    return found


def _sigint_by_default() -> None:
    # A test run started in the background (`make test &`, nohup, some CI
    # runners) ignores SIGINT, and an ignored signal stays ignored across
    # exec: the CLI would never see the interrupt. Its user's terminal
    # delivers it; give the child the default disposition, as a terminal's
    # foreground job has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def command(tmp_path: Path) -> list[str]:
    (tmp_path / "blocking.py").write_text(STAGES)
    (tmp_path / "pipeline.json").write_text(json.dumps(PIPELINE))
    return [
        _entry_point(),
        "run",
        str(tmp_path / "pipeline.json"),
        "--stages",
        str(tmp_path / "blocking.py"),
    ]


def _interrupted(argv: list[str], *, stdout: int = subprocess.PIPE) -> tuple[int, str, str]:
    """Run ``argv``; SIGINT once both blocked stages say ``ready``. Code, out, err."""
    proc = subprocess.Popen(
        argv,
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_sigint_by_default,
    )
    try:
        assert proc.stderr is not None
        # Both are blocked once each has said so: then interrupt.
        assert proc.stderr.readline() == "ready\n"
        assert proc.stderr.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        # A process left running would surface later as another test's unraisable warning.
        proc.kill()
        proc.communicate()
    return proc.returncode, out or "", err


@pytest.mark.parametrize("options", [["--no-live"], ["--json"], ["--json", "--history"]])
def test_ctrl_c_exits_130_with_one_line(command: list[str], options: list[str]) -> None:
    code, out, err = _interrupted([*command, *options])
    assert code == 130, err
    assert err.strip().splitlines() == ["stageflow: interrupted"], err
    assert out == ""


def test_ctrl_c_in_a_map_exits_130_with_one_line(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps(MAP_PIPELINE))
    command[2] = str(tmp_path / "map.json")
    code, out, err = _interrupted([*command, "--no-live", "--payload", '{"items": [1, 2]}'])
    assert code == 130, err
    assert err.strip().splitlines() == ["stageflow: interrupted"], err
    assert out == ""


def test_ctrl_c_with_the_live_view_on_a_terminal_exits_130(command: list[str]) -> None:
    # A pseudo-terminal makes stdout a terminal, so the live view is on.
    leader, follower = pty.openpty()
    try:
        code, _, err = _interrupted(command, stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert code == 130, err
    assert err.strip().splitlines() == ["stageflow: interrupted"], err


def _session_in_a_store(tmp_path: Path) -> tuple[str, str]:
    """An SQLite store holding one pending session of PIPELINE; its URL and the session's id."""
    import anyio

    import stageflow
    from stageflow.store import SessionService, open_store

    # The STAGES module of the fixture, read from its file.
    spec = importlib.util.spec_from_file_location("blocking", tmp_path / "blocking.py")
    assert spec is not None
    assert spec.loader is not None
    blocking = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blocking)
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def start() -> str:
        store = open_store(url)
        await store.migrate()
        service = SessionService(store, registry=blocking.registry)
        pipeline = stageflow.Pipeline.from_dict(PIPELINE, registry=blocking.registry)
        return await service.start(pipeline)

    return url, anyio.run(start)


def test_ctrl_c_stops_the_worker_with_130_and_one_line(command: list[str], tmp_path: Path) -> None:
    """Ctrl-C in ``stageflow worker`` mid-turn: 130, its statistics, and the session kept."""
    import anyio

    from stageflow.store import open_store

    url, session_id = _session_in_a_store(tmp_path)
    code, out, err = _interrupted(
        [
            command[0],
            "worker",
            "--store",
            url,
            "--stages",
            str(tmp_path / "blocking.py"),
            "--no-plugins",
            "--shutdown-grace",
            "0",
        ]
    )
    assert code == 130, err
    # The worker's own warning (worker.abandoned: the turn it gave up) comes first.
    assert err.strip().splitlines()[-1:] == ["stageflow: interrupted"], err
    assert "Traceback" not in err
    assert json.loads(out)["claimed"] == 1

    async def stored() -> tuple[str, dict[str, object]]:
        store = open_store(url, create=False)
        return (await store.get(session_id)).status, await store.load(session_id)

    # The abandoned turn saved nothing: the session is as it was stored, for another worker.
    status, snapshot = anyio.run(stored)
    assert status == "pending"
    assert snapshot["status"] == "pending"
