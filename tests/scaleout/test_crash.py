"""Worker processes that die or freeze mid-stage (``stageflow worker`` subprocesses).

The ``Gate`` stage writes a mark and then blocks on a gate file, so the test
knows a worker is inside the stage before it kills or freezes it; nothing
waits on a timed sleep. Leases are 1 s so a takeover comes quickly.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from store_support import gate_pipeline, read_marks, registry, wait_until

from stageflow.store import SessionService, SessionStore

SUPPORT = Path(__file__).parents[1] / "support"


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return anyio.run(functools.partial(fn, *args, **kwargs))


@pytest.fixture
def spawn(
    store_url: str, store_options: dict[str, Any], tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(name: str) -> subprocess.Popen[str]:
        command = [
            sys.executable, "-m", "stageflow", "worker", "--store", store_url,
            "--stages", "store_support", "--no-plugins", "--lease", "1", "--poll", "0.2",
            "--worker-id", name, "--shutdown-grace", "30",
        ]  # fmt: skip
        if "schema" in store_options:
            command += ["--schema", store_options["schema"]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get(
            "PYTHONPATH", "")])}  # fmt: skip
        with open(tmp_path / f"{name}.err", "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM: the worker finishes its turn in flight, prints its statistics, exits 0."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    stats: dict[str, Any] = json.loads(out)
    return stats


def start_gated(store: SessionStore, tmp_path: Path) -> tuple[SessionService, str]:
    """A session with inputs 1 and 2 (each sent twice with one key) before the gate."""
    service = SessionService(store, registry=registry)
    sid = call(service.start, gate_pipeline(tmp_path / "marks", tmp_path / "gate"))
    for n in (1, 2):
        for _ in range(2):
            call(service.send_input, sid, "msg", {"n": n}, idempotency_key=f"m{n}")
    return service, sid


def test_kill_9_mid_stage_the_session_completes_on_another_worker(
    store: SessionStore, spawn: Callable[[str], subprocess.Popen[str]], tmp_path: Path
) -> None:
    service, sid = start_gated(store, tmp_path)
    first = spawn("A")
    wait_until(lambda: len(read_marks(tmp_path / "marks")) == 1, what="A inside the stage")
    first.kill()  # SIGKILL: no cleanup, the lease stays until it expires
    first.wait(timeout=30)
    (tmp_path / "gate").touch()
    second = spawn("B")
    done = call(service.wait, sid, finished=True, timeout=60)
    stats = stop(second)
    assert done.status == "completed"
    assert (done.inbox_head, done.inbox_done, done.version) == (2, 2, 1)
    snapshot = call(store.load, sid)
    assert snapshot["outcome"]["artifacts"]["seen"] == [1, 2]  # each input recorded once
    marks = read_marks(tmp_path / "marks")
    assert [m["node"] for m in marks] == ["gate", "gate"]  # the stage ran twice
    assert marks[0]["pid"] == first.pid
    assert marks[1]["pid"] == second.pid
    # The re-run after the crash gets the same ctx.execution_key: a side effect keyed by it
    # (a payment, a mail) is made once.
    key = marks[0]["execution_key"]
    assert key is not None
    assert key.startswith(f"{sid}/gate.")
    assert marks[1]["execution_key"] == key
    assert (stats["saved"], stats["fenced"]) == (1, 0)
    events = call(store.events, sid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


# PostgreSQL only: a SQLite worker frozen inside a heartbeat's write transaction would hold
# the file's write lock and stall every other writer (see docs/scaleout.md); a PostgreSQL
# statement, once sent, commits on the server whatever the client does.
@pytest.mark.parametrize("backend", ["postgres"])
def test_a_worker_frozen_past_its_lease_cannot_save_late(
    store: SessionStore, spawn: Callable[[str], subprocess.Popen[str]], tmp_path: Path
) -> None:
    service, sid = start_gated(store, tmp_path)
    frozen = spawn("A")
    wait_until(lambda: len(read_marks(tmp_path / "marks")) == 1, what="A inside the stage")
    os.kill(frozen.pid, signal.SIGSTOP)
    (tmp_path / "gate").touch()
    other = spawn("B")
    done = call(service.wait, sid, finished=True, timeout=60)
    assert (done.status, done.version) == ("completed", 1)
    saved = call(store.load, sid)
    os.kill(frozen.pid, signal.SIGCONT)  # it wakes inside the stage; the gate is open
    late = stop(frozen)
    # Its save was fenced, or its heartbeat found the lease lost first (or both, when the
    # save was already in flight): either way nothing was written.
    assert late["saved"] == 0
    assert late["fenced"] + late["lost"] >= 1
    after = call(store.get, sid)
    assert (after.status, after.version, after.lease_owner) == ("completed", 1, None)
    assert call(store.load, sid) == saved
    assert stop(other)["saved"] == 1
    assert len(read_marks(tmp_path / "marks")) == 2


def test_sigterm_lets_the_turn_in_flight_finish_and_save(
    store: SessionStore, spawn: Callable[[str], subprocess.Popen[str]], tmp_path: Path
) -> None:
    _, sid = start_gated(store, tmp_path)
    worker = spawn("A")
    wait_until(lambda: len(read_marks(tmp_path / "marks")) == 1, what="A inside the stage")
    worker.send_signal(signal.SIGTERM)  # stop claiming; the turn goes on (grace 30 s)
    (tmp_path / "gate").touch()
    out, _ = worker.communicate(timeout=60)  # it exits once the turn is saved
    assert worker.returncode == 0, out
    stats = json.loads(out)
    assert (stats["saved"], stats["fenced"], stats["lost"], stats["running"]) == (1, 0, 0, 0)
    done = call(store.get, sid)
    assert (done.status, done.version, done.lease_owner) == ("completed", 1, None)
    assert len(read_marks(tmp_path / "marks")) == 1
