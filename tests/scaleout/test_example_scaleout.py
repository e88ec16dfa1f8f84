"""The scale-out example (examples/scaleout): two worker processes, one store, a driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from example_support import EXAMPLES

DRIVER = EXAMPLES / "scaleout" / "driver.py"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # PostgreSQL is the point
def test_two_workers_finish_every_session(store_url: str, store_options: dict[str, Any]) -> None:
    command = [sys.executable, str(DRIVER), "--store", store_url, "--sessions", "8"]
    if "schema" in store_options:
        command += ["--schema", store_options["schema"]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["totals"] == [1 + 2 + 3 + 4]  # every session saw every input once
    saved = sum(w["saved"] for w in outcome["workers"])
    # One turn per input, plus the first turn unless the first input came before it ran.
    assert 8 * 4 <= saved <= 8 * 5
    assert all(w["fenced"] == 0 for w in outcome["workers"])
    assert 1 <= outcome["worker_pids"] <= 2


def test_a_store_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # It was a traceback of the StoreUnavailableError, and exit 1.
    url = f"sqlite:///{tmp_path / 'no such directory' / 'tally.db'}"
    command = [sys.executable, str(DRIVER), "--store", url, "--sessions", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("driver.py: cannot open the SQLite store ")
