"""``stageflow sessions ...`` against a SQLite store (the worker command runs in test_crash)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from cli_support import restore_logging  # noqa: F401  (autouse fixture)
from store_support import chat_pipeline, registry, running

from stageflow.cli import main
from stageflow.store import SessionService, open_store


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


def start(url: str, session_id: str = "s1") -> str:
    async def body() -> str:
        store = open_store(url)
        try:
            return await SessionService(store, registry=registry).start(
                chat_pipeline(), session_id=session_id
            )
        finally:
            await store.aclose()

    return anyio.run(body)


def test_sessions_list_show_send_cancel_purge(url: str, capsys: Any) -> None:
    start(url)
    code, out, _ = run_cli(capsys, "sessions", "list", "--store", url, "--json")
    assert code == 0
    assert [(r["session_id"], r["status"]) for r in json.loads(out)] == [("s1", "pending")]
    code, out, _ = run_cli(capsys, "sessions", "list", "--store", url, "--status", "completed")
    assert (code, out) == (0, "")
    code, out, _ = run_cli(
        capsys, "sessions", "send", "--store", url, "s1", "msg", '{"n": 1}', "--key", "k", "--json"
    )
    assert (code, json.loads(out)) == (0, {"session_id": "s1", "seq": 1, "duplicate": False})
    retry = ("sessions", "send", "--store", url, "s1", "msg", '{"n":1}', "--key", "k")
    code, out, _ = run_cli(capsys, *retry)
    # It said "input 1 stored", as for a new input.
    assert (code, out) == (0, "input 1 was stored before with key 'k'; nothing new stored\n")
    code, out, err = run_cli(capsys, *retry[:-3], "{}", "--key", "k")
    assert (code, out) == (2, "")
    assert "idempotency key 'k' of session 's1' was first used for input 1" in err
    code, out, _ = run_cli(capsys, "sessions", "cancel", "--store", url, "s1", "--reason", "bye")
    assert (code, out) == (0, "cancel request 2 stored\n")
    code, out, _ = run_cli(capsys, "sessions", "show", "--store", url, "s1", "--events", "--json")
    shown = json.loads(out)
    assert (code, shown["inbox_head"], shown["events"]) == (0, 2, [])
    code, out, _ = run_cli(capsys, "sessions", "purge", "--store", url, "--json")
    assert (code, json.loads(out)) == (0, {"deleted": 0})


def test_sessions_show_writes_its_values_as_json(url: str, capsys: Any) -> None:
    # It wrote Python's repr: "waiting_for: ['msg']", "wake_at: None".
    start(url)
    code, out, _ = run_cli(capsys, "sessions", "show", "--store", url, "s1")
    assert code == 0
    shown = dict(line.split(": ", 1) for line in out.splitlines())
    (row,) = json.loads(run_cli(capsys, "sessions", "list", "--store", url, "--json")[1])
    for key, value in row.items():
        assert shown[key] == (value if isinstance(value, str) else json.dumps(value)), key


def test_sessions_list_and_show_write_an_id_with_escapes_on_one_line(url: str, capsys: Any) -> None:
    # The id (a store takes any text) was written as it is: its escape
    # sequence cleared the terminal, its line break forged a second row.
    session_id = "s1\x1b[2J\nforged  completed"
    start(url, session_id)
    code, out, _ = run_cli(capsys, "sessions", "list", "--store", url)
    assert code == 0
    assert out.splitlines() == ["s1\\x1b[2J\\nforged  completed  pending    chat  waits for: -"]
    code, out, _ = run_cli(capsys, "sessions", "show", "--store", url, session_id, "--events")
    assert code == 0
    assert "\x1b" not in out
    assert "session_id: s1\\x1b[2J\\nforged  completed" in out.splitlines()


def test_unknown_sessions_and_bad_urls_exit_2_with_the_fix(url: str, capsys: Any) -> None:
    start(url)
    code, _, err = run_cli(capsys, "sessions", "show", "--store", url, "nope")
    assert code == 2
    assert "no stored session has id 'nope'" in err
    code, _, err = run_cli(capsys, "sessions", "list", "--store", "mysql://x")
    assert code == 2
    assert "unknown scheme" in err


def test_a_key_or_id_the_store_cannot_hold_exits_2_with_the_reason(url: str, capsys: Any) -> None:
    # A byte that is not UTF-8 in an argument comes as a lone surrogate: it was
    # a UnicodeEncodeError traceback.
    start(url)
    argv = ("sessions", "send", "--store", url, "s1", "msg", "{}", "--key", "k\udcff")
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert "idempotency_key='k\\udcff' cannot be stored: it holds a lone surrogate" in err
    code, out, err = run_cli(capsys, "sessions", "show", "--store", url, "s\udcff")
    assert (code, out) == (2, "")
    assert "no stored session has id 's\\udcff' (it holds a lone surrogate" in err


@pytest.mark.parametrize("command", [["send", "s1", "msg", "{}"], ["cancel", "s1"]])
def test_an_empty_key_exits_2_saying_to_leave_out_key(
    url: str, capsys: Any, command: list[str]
) -> None:
    # The store's refusal told the command line's user to pass None.
    start(url)
    code, out, err = run_cli(capsys, "sessions", *command, "--store", url, "--key", "")
    assert (code, out) == (2, "")
    assert "leave out --key" in err
    assert "None" not in err


def test_a_worker_on_an_unreachable_store_exits_2_with_the_fix(capsys: Any) -> None:
    argv = ("worker", "--store", "sqlite:////nonexistent/dir/s.db", "--no-plugins")
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert "check that the directory exists" in err


def test_a_store_url_with_a_password_is_shown_without_it(capsys: Any) -> None:
    store = "postgresql://app:s3cret@127.0.0.1:1/db"
    for argv in (
        ("worker", "--no-plugins"),
        ("sessions", "list"),
        ("sessions", "send", "s", "t", "{}"),
    ):
        code, out, err = run_cli(capsys, *argv, "--store", store)
        assert (code, out) == (2, "")
        assert "cannot reach the PostgreSQL store 'postgresql://app:***@127.0.0.1:1/db'" in err
        assert "s3cret" not in err


def test_the_worker_takes_its_tuning_options(
    url: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--fetch-cooldown`` (and the other knobs) reach the Worker; ``--help`` names it."""
    import stageflow._cli._store as cli_store

    made: dict[str, Any] = {}

    class Recorder(cli_store.Worker):
        def __init__(self, store: Any, **options: Any) -> None:
            super().__init__(store, **options)
            made.update(options)

        async def run(self, **_: Any) -> None:
            return None

    monkeypatch.setattr(cli_store, "Worker", Recorder)
    argv = ("worker", "--store", url, "--no-plugins", "--fetch-cooldown", "0.02",
            "--concurrency", "4", "--poll", "0.5")  # fmt: skip
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert (made["fetch_cooldown"], made["concurrency"], made["poll"]) == (0.02, 4, 0.5)
    assert json.loads(out)["claims"] == 0
    code, out, _ = run_cli(capsys, "worker", "--help")
    assert (code, "--fetch-cooldown SECONDS" in out) == (0, True)


@pytest.mark.parametrize(
    "arguments",
    [
        ["sessions", "purge", "--finished-days", "-5"],
        ["sessions", "purge", "--finished-days", "1e9"],
        ["sessions", "purge", "--inputs-days", "nan"],
        ["sessions", "list", "--limit", "-1"],
        ["worker", "--lease", "0"],
        ["worker", "--poll", "nan"],
        ["worker", "--concurrency", "0"],
        ["worker", "--max-attempts", "0"],
    ],
)
def test_numbers_out_of_range_are_usage_errors(arguments: list[str], url: str, capsys: Any) -> None:
    # A negative purge age deleted every finished session and consumed input;
    # 1e9 days, nan and inf printed tracebacks; a lease of 0 was taken.
    code, _, err = run_cli(capsys, *arguments, "--store", url)
    assert code == 2
    assert "is out of range: use a number" in err
    assert "Traceback" not in err


def test_a_sessions_command_on_a_missing_sqlite_file_says_so(tmp_path: Path, capsys: Any) -> None:
    # A typo in the path made an empty database there and listed nothing, exit 0.
    missing = tmp_path / "typo.db"
    code, out, err = run_cli(capsys, "sessions", "list", "--store", f"sqlite:///{missing}")
    assert (code, out) == (2, "")
    assert f"no such SQLite file ({missing}); check the path" in err
    assert not missing.exists()


def test_a_sessions_command_on_a_database_that_is_no_store_leaves_it_alone(
    tmp_path: Path, capsys: Any
) -> None:
    # An application's own database given by mistake: every sessions command
    # created stageflow's tables in it (and switched it to WAL), and list said
    # nothing, exit 0.
    app = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.commit()
    url = f"sqlite:///{app}"
    for command in (
        ["list"],
        ["show", "s1"],
        ["send", "s1", "msg", "{}"],
        ["cancel", "s1"],
        ["purge"],
    ):
        code, out, err = run_cli(capsys, "sessions", command[0], "--store", url, *command[1:])
        assert (code, out) == (2, ""), command
        assert f"the SQLite file '{app}' holds no stageflow store" in err
        assert "Traceback" not in err
    with contextlib.closing(sqlite3.connect(app)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()
    assert (tables, journal) == ([("users",)], ("delete",))


def test_a_sessions_command_on_a_postgres_schema_without_a_store_creates_nothing(
    postgres_dsn: str, capsys: Any
) -> None:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    code, out, err = run_cli(
        capsys, "sessions", "list", "--store", postgres_dsn, "--schema", schema
    )
    assert (code, out) == (2, "")
    assert f"no stageflow store in schema '{schema}'" in err
    with psycopg.connect(postgres_dsn) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchall()
    assert found == []


@pytest.mark.parametrize("name", ["typo", "file.json"])
def test_a_worker_pipelines_path_that_is_no_directory_is_a_usage_error(
    name: str, url: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A typo (or a file) ran the worker with no pipelines, in silence.
    import stageflow._cli._store as cli_store

    async def run(self: Any, **_: Any) -> None:
        return None  # a worker that ran would stop at once

    monkeypatch.setattr(cli_store.Worker, "run", run)
    (tmp_path / "file.json").write_text("{}")
    where = tmp_path / name
    code, out, err = run_cli(capsys, "worker", "--store", url, "--pipelines", str(where))
    assert (code, out) == (2, "")
    assert err == f"stageflow: --pipelines {where}: not a directory; check the path\n"


@pytest.mark.parametrize("command", [["sessions", "list"], ["worker"]])
def test_schema_with_an_sqlite_store_is_a_usage_error(
    command: list[str], url: str, capsys: Any
) -> None:
    # SQLiteStore(schema=...) raised TypeError: a traceback, exit 1.
    start(url)
    code, out, err = run_cli(capsys, *command, "--store", url, "--schema", "tenant")
    assert (code, out) == (2, "")
    assert err == (
        f"stageflow: --schema tenant: only a PostgreSQL store has schemas, and --store {url} "
        "is not one; leave --schema out\n"
    )


def test_a_status_typo_is_a_usage_error_naming_the_statuses(url: str, capsys: Any) -> None:
    # `--status complted` listed nothing and exited 0, as if no session had ended.
    start(url)
    code, out, err = run_cli(capsys, "sessions", "list", "--store", url, "--status", "complted")
    assert (code, out) == (2, "")
    assert "invalid choice: 'complted'" in err
    assert "'completed'" in err
    assert "'poisoned'" in err


def test_a_damaged_row_is_named_not_a_traceback(url: str, capsys: Any) -> None:
    # A waiting_for that is not JSON text made list and show print a
    # JSONDecodeError traceback (exit 1).
    import sqlite3

    start(url)
    conn = sqlite3.connect(url[len("sqlite:///") :])
    conn.execute("UPDATE stageflow_sessions SET waiting_for = '[\"cut' WHERE session_id = 's1'")
    conn.commit()
    conn.close()
    for command in (("list",), ("show", "s1")):
        code, _, err = run_cli(capsys, "sessions", *command, "--store", url)
        assert code == 2
        assert "session 's1': its stored waiting_for column cannot be read" in err
        assert "Traceback" not in err


def test_the_worker_reads_yaml_pipelines_too(
    url: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --pipelines took only *.json: the YAML pipelines of the directory (which
    # `stageflow ui --pipelines` shows) were left out in silence, and their
    # sessions rebuilt from each snapshot's own document.
    import stageflow._cli._store as cli_store

    given: list[Any] = []

    class Recorder(cli_store.Worker):
        def __init__(self, store: Any, **options: Any) -> None:
            super().__init__(store, **options)
            given.extend(options["pipelines"])

        async def run(self, **_: Any) -> None:
            return None

    monkeypatch.setattr(cli_store, "Worker", Recorder)
    for name in ("a.json", "b.yaml", "c.YML", "d.Yaml"):
        stem = name.split(".")[0]
        document = {
            "api_version": "1.0",
            "entry": "end",
            "metadata": {"name": stem},
            "nodes": [{"id": "end", "type": "terminal"}],
        }
        (tmp_path / name).write_text(json.dumps(document))  # JSON is YAML too
    (tmp_path / "notes.txt").write_text("not a pipeline")
    code, _, err = run_cli(
        capsys, "worker", "--store", url, "--no-plugins", "--pipelines", str(tmp_path)
    )
    assert code == 0, err
    assert sorted(p.name for p in given) == ["a", "b", "c", "d"]
    # Its --help said "pipeline files (*.json)" after it read YAML too.
    code, out, _ = run_cli(capsys, "worker", "--help")
    assert (code, "*.json" in out, ".yaml" in out) == (0, False, True)


def test_sessions_list_newest_lists_the_last_updated_first(url: str, capsys: Any) -> None:
    for sid in ("s1", "s2", "s3"):
        start(url, sid)
    base = ("sessions", "list", "--store", url, "--limit", "2")
    code, out, _ = run_cli(capsys, *base, "--json")
    assert (code, [r["session_id"] for r in json.loads(out)]) == (0, ["s1", "s2"])
    code, out, _ = run_cli(capsys, *base, "--newest", "--json")
    assert (code, [r["session_id"] for r in json.loads(out)]) == (0, ["s3", "s2"])


def test_sending_a_type_the_session_does_not_wait_for_says_so(url: str, capsys: Any) -> None:
    # A misspelt type was stored and printed "input 1 stored", like any
    # other: the session went on waiting, and nothing told the sender.
    async def until_waiting() -> None:
        store = open_store(url)
        try:
            service = SessionService(store, registry=registry)
            sid = await service.start(chat_pipeline(), session_id="s1")
            async with running(open_store(url)):
                assert (await service.wait(sid, timeout=20)).waiting_for == ("msg",)
        finally:
            await store.aclose()

    anyio.run(until_waiting)
    code, out, err = run_cli(capsys, "sessions", "send", "--store", url, "s1", "mgs", "{}")
    assert (code, out) == (0, "input 1 stored\n")
    assert err == (
        "stageflow: note: session 's1' waits for 'msg', not 'mgs'; the input is kept for a "
        "stage that waits for 'mgs' (check the type if that is not meant)\n"
    )
    code, out, err = run_cli(capsys, "sessions", "send", "--store", url, "s1", "msg", "{}")
    assert (code, out, err) == (0, "input 2 stored\n", "")
