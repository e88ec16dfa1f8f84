"""``stageflow ui`` from the command line: its checks, and a real serve and stop."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stageflow._guard import MAX_DOCUMENT_BYTES
from stageflow.cli import main
from stageflow.ui import InspectorConfig, InspectorError, create_app

ROOT = Path(__file__).parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_store_file_that_does_not_exist_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.db"
    code, err = run(capsys, "ui", "--store", f"sqlite:///{missing}")
    assert code == 2
    assert "no such SQLite file" in err
    assert not missing.exists()


def test_a_database_that_is_no_store_is_said_so_and_left_alone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An application's own database given by mistake: the first page made
    # stageflow's tables in it and listed no sessions.
    import httpx

    from stageflow import ui

    app_db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.commit()
    pages: list[httpx.Response] = []

    async def serve(app: Any, host: str, port: int, **options: Any) -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            pages.append(await client.get("/sessions"))

    monkeypatch.setattr(ui, "serve", serve)
    code, err = run(capsys, "ui", "--store", f"sqlite:///{app_db}", "--port", str(_free_port()))
    assert code == 0, err
    assert pages[0].status_code == 503
    assert "holds no stageflow store" in pages[0].text
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("users",)]


def test_nothing_to_show_is_a_usage_error_before_serving(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no store, no snapshot and no pipelines it served pages that all
    # said "cannot show this", and exited 0 at Ctrl-C.
    from stageflow import ui

    served: list[Any] = []

    async def serve(app: Any, host: str, port: int, **options: Any) -> None:
        served.append(app)

    monkeypatch.setattr(ui, "serve", serve)
    monkeypatch.delenv("STAGEFLOW_STORE", raising=False)
    code, err = run(capsys, "ui", "--port", str(_free_port()))
    assert (code, served) == (2, [])
    assert err == (
        "stageflow: nothing to show: give --store URL (or set $STAGEFLOW_STORE), "
        "a SNAPSHOT file or directory, or --pipelines DIR\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such/snapshot.json"], "SNAPSHOT no/such/snapshot.json: no such file"),
        (["--pipelines", "no/such/dir"], "--pipelines no/such/dir: not a directory"),
        (["--store", "mysql://x", "--pipelines", "."], "unknown scheme"),
    ],
)
def test_bad_arguments_say_what_to_fix(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, err = run(capsys, "ui", *args)
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "argument --port: '70000' is out of range: use a number at least 0"),
        (["--port", "-1"], "argument --port: '-1' is out of range"),
        (["--port", "80.5"], "argument --port: '80.5' is not a whole number"),
        (["--refresh", "0"], "argument --refresh: '0' is out of range: use a number above 0"),
        (["--refresh", "-1"], "argument --refresh: '-1' is out of range"),
        (["--refresh", "nan"], "argument --refresh: 'nan' is out of range"),
        (["--refresh", "inf"], "argument --refresh: 'inf' is out of range"),
    ],
)
def test_a_port_or_refresh_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], ui_data: Path, args: list[str], message: str
) -> None:
    code, err = run(capsys, "ui", str(ui_data / "snaps"), *args)
    assert code == 2
    assert f"stageflow ui: error: {message}" in err
    assert "Traceback" not in err


def test_a_port_in_use_is_a_usage_error_that_says_what_to_fix(
    capsys: pytest.CaptureFixture[str], ui_data: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run(capsys, "ui", str(ui_data / "snaps"), "--port", str(port))
    assert code == 2
    assert (
        f"stageflow: --host 127.0.0.1 --port {port}: cannot listen there: Address already in use"
        in err
    )
    assert "pick a free port with --port" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("refresh", [0, -1.0, math.nan, math.inf])
def test_an_embedded_inspector_refuses_a_refresh_out_of_range(
    ui_data: Path, refresh: float
) -> None:
    with pytest.raises(InspectorError, match=r"refresh=.*finite number above 0"):
        create_app(InspectorConfig(snapshots=ui_data / "snaps", refresh=refresh))


@pytest.mark.parametrize(
    "jaeger", ["localhost:16686", "javascript:alert(1)", "http://[::1", "/jaeger"]
)
def test_a_jaeger_address_that_is_not_a_web_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    ui_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    jaeger: str,
) -> None:
    # Taken as given, "localhost:16686" made every span link one to the
    # scheme "localhost:", which no browser opens.
    import stageflow.ui

    async def serve(*args: Any, **options: Any) -> None:
        raise AssertionError("the inspector was served")

    monkeypatch.setattr(stageflow.ui, "serve", serve)
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--jaeger", jaeger)
    assert code == 2
    assert (
        f"stageflow: the Jaeger UI address {jaeger!r} (--jaeger) is not an http or https URL" in err
    )
    assert "use e.g. http://localhost:16686" in err
    with pytest.raises(InspectorError, match=r"is not an http or https URL"):
        create_app(InspectorConfig(snapshots=ui_data / "snaps", jaeger=jaeger))


def test_store_and_snapshot_together_are_refused(
    capsys: pytest.CaptureFixture[str], ui_data: Path
) -> None:
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--store", "sqlite:///x.db")
    assert code == 2
    assert "either --store or SNAPSHOT" in err


def test_a_coverage_file_that_is_not_a_report_is_refused(
    capsys: pytest.CaptureFixture[str], ui_data: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    report.write_text('{"passed": 1}')
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--coverage", str(report))
    assert code == 2
    assert "not a tester's report" in err


def test_a_coverage_report_past_the_budget_is_refused_without_reading_it_whole(
    capsys: pytest.CaptureFixture[str], ui_data: Path, tmp_path: Path
) -> None:
    # The report was read whole: /dev/zero ran out of memory (MemoryError, a
    # traceback), and a huge file was read into memory to fail as JSON.
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: no disk used
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--coverage", str(huge))
    assert code == 2
    assert err.startswith(f"stageflow: --coverage {str(huge)!r}: not read: the text is over ")


def test_a_coverage_path_that_is_a_directory_is_said_to_be_one(
    capsys: pytest.CaptureFixture[str], ui_data: Path, tmp_path: Path
) -> None:
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--coverage", str(tmp_path))
    assert code == 2
    assert err == (  # it quoted "[Errno 21] Is a directory: '...'"
        f"stageflow: --coverage {str(tmp_path)!r}: cannot read the file: Is a directory; "
        "check the path\n"
    )


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"pipeline": "approval", "runs": "3x"}, "$.coverage[0].runs: '3x' is not a whole number"),
        ({"pipeline": "approval", "runs": None}, "$.coverage[0].runs: None is not a whole number"),
        ({"pipeline": "approval", "runs": True}, "$.coverage[0].runs: True is not a whole number"),
        (
            {"pipeline": "approval", "nodes": {"prepare": "two"}},
            "$.coverage[0].nodes.prepare: 'two' is not a whole number",
        ),
        ({"pipeline": "approval", "edges": 12}, "$.coverage[0].edges: is an integer, not a list"),
        (
            {"pipeline": "approval", "missed_edges": [{"source": "a", "kind": 1, "target": "b"}]},
            "$.coverage[0].missed_edges[0].kind: is an integer, not a string",
        ),
        ({"pipeline": 7}, "$.coverage[0].pipeline: is an integer, not a pipeline name"),
        ("approval", "$.coverage[0]: is a string, not an object"),
    ],
)
def test_a_coverage_report_with_a_field_of_the_wrong_type_is_refused_at_start(
    ui_data: Path, tmp_path: Path, entry: Any, where: str
) -> None:
    # At start-up: stageflow ui turns this error into exit 2 with its message (see
    # test_a_coverage_file_that_is_not_a_report_is_refused); the pages were 500s.
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"coverage": [entry]}))
    with pytest.raises(InspectorError) as refused:
        create_app(InspectorConfig(pipelines=ui_data / "pipes", coverage=report))
    assert where in str(refused.value)
    assert str(refused.value).startswith(f"--coverage {str(report)!r}: ")
    assert "stageflow test CASES --json > report.json" in str(refused.value)


def test_without_the_ui_extra_the_command_says_how_to_install_it(ui_data: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the ui extra were not installed\n"
        "from stageflow.cli import main\n"
        f"sys.exit(main(['ui', {str(ui_data / 'snaps')!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 5
    assert "pip install 'stageflow[ui]'" in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serves_snapshots_on_127_0_0_1_until_sigterm(ui_data: Path) -> None:
    port = _free_port()
    env = {**os.environ, "STAGEFLOW_STORE": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "stageflow", "ui", str(ui_data / "snaps"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # poll the socket until it serves
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sessions", timeout=5) as r:
                    page = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert 'data-session="waiting-1"' in page
        assert "read-only" in page
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"inspector on http://127.0.0.1:{port}/" in err
    # Once: Hypercorn's own handler wrote it, and the CLI's root handler again.
    assert err.count(f"Running on http://127.0.0.1:{port}") == 1, err


def _sigint_by_default() -> None:
    # A test run started in the background ignores SIGINT, and an ignored
    # signal stays ignored across exec (see tests/test_cli_interrupt.py).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_inspector_with_130_and_one_line(ui_data: Path) -> None:
    # The server took Ctrl-C's KeyboardInterrupt for a stop and returned: exit 0, no word.
    env = {**os.environ, "STAGEFLOW_STORE": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "stageflow", "ui", str(ui_data / "snaps"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_sigint_by_default,
    )
    try:
        assert process.stderr is not None
        seen = []
        while not seen or "Running on http" not in seen[-1]:
            seen.append(process.stderr.readline())
            assert seen[-1], seen  # it ended before serving
        # Served a page: past the "Running on" line, Ctrl-C reaches the serving server.
        port = seen[-1].split("Running on http://127.0.0.1:")[1].split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sessions", timeout=30) as r:
            assert r.status == 200
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["stageflow: interrupted"], err


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_serve_runs_the_app_under_trio_and_asyncio(ui_data: Path, backend: str) -> None:
    import anyio
    import anyio.from_thread

    from stageflow.ui import InspectorConfig, create_app, serve

    port = _free_port()
    app = create_app(InspectorConfig(snapshots=ui_data / "snaps"))
    with anyio.from_thread.start_blocking_portal(backend=backend) as portal:
        stop = portal.call(anyio.Event)
        running = portal.start_task_soon(
            lambda: serve(app, "127.0.0.1", port, shutdown_trigger=stop.wait)
        )
        try:
            deadline = time.monotonic() + 30
            while True:  # poll the socket until it serves
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/sessions/done-1", timeout=5
                    ) as response:
                        page = response.read().decode()
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
        finally:
            portal.call(stop.set)
            running.result(timeout=30)
    assert 'class="status status-completed"' in page


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_the_address_of_an_ipv6_host_is_said_as_a_url(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ui_data: Path,
    host: str,
) -> None:
    from stageflow import ui

    async def serve(app: Any, host: str, port: int, **options: Any) -> None:
        return None

    monkeypatch.setattr(ui, "serve", serve)
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            port = sock.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    code, err = run(capsys, "ui", str(ui_data / "snaps"), "--host", host, "--port", str(port))
    assert code == 0, err
    # It said http://::1:PORT/, which no browser opens.
    assert f"inspector on http://[::1]:{port}/ (Ctrl-C stops it)" in err
