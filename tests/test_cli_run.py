"""``stageflow run`` beyond the basics: scripted inputs and the terminal live view."""

from __future__ import annotations

import datetime
import io
import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from cli_support import restore_logging  # noqa: F401  (autouse fixture)
from fakes import doc, parallel, stage, terminal
from rich.console import Console

import stageflow
from stageflow._cli._app import build_parser
from stageflow._cli._common import Streams
from stageflow._cli._live import LiveView
from stageflow._cli._run import ScriptedInputs, _make_view, drive_session
from stageflow._events import Event
from stageflow.cli import ExitCode, main


def waiting_registry() -> stageflow.StageRegistry:
    """``Ask`` waits for ``config.type`` and returns the payload as ``answer``;
    ``Slow`` sleeps ``config.seconds``."""
    registry = stageflow.StageRegistry()

    @registry.register("Ask")
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"answer": await ctx.wait_input(ctx.config["type"])}

    @registry.register("Slow")
    async def slow(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(ctx.config["seconds"])
        return {}

    return registry


def ask(node_id: str, input_type: str, to: str, *, next: str | None = None) -> dict[str, Any]:
    node = stage(node_id, "Ask", next=next, outputs={"answer": to})
    node["config"] = {"type": input_type}
    return node


def session_for(document: dict[str, Any]) -> stageflow.Session:
    registry = waiting_registry()
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    return stageflow.Session(pipeline, registry=registry)


TWO_QUESTIONS = doc(
    [
        ask("first", "answer", "one", next="second"),
        ask("second", "answer", "two", next="end"),
        terminal("end", "one", "two"),
    ]
)


# ------------------------------------------------------------- scripted inputs


@pytest.mark.anyio
async def test_scripted_inputs_are_sent_per_wait_in_order() -> None:
    script = ScriptedInputs.parse(["answer=1", 'answer={"n": 2}'])
    result = await drive_session(session_for(TWO_QUESTIONS), script)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"one": 1, "two": {"n": 2}}
    assert script.sent == [("answer", 1), ("answer", 1)]
    assert script.unused() == {}
    assert script.stop is None


@pytest.mark.anyio
async def test_one_input_reaches_every_branch_waiting_for_it() -> None:
    document = doc(
        [
            parallel("both", ["left", "right"], next="end"),
            ask("left", "go", "left"),
            ask("right", "go", "right"),
            terminal("end", "left", "right"),
        ]
    )
    script = ScriptedInputs.parse(["go=true", "go=false"])
    result = await drive_session(session_for(document), script)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.artifacts == {"left": True, "right": True}
    assert script.sent == [("go", 2)]
    assert script.unused() == {"go": 1}


@pytest.mark.anyio
async def test_a_wait_with_no_scripted_input_left_cancels_the_session() -> None:
    script = ScriptedInputs.parse(["answer=1"])
    result = await drive_session(session_for(TWO_QUESTIONS), script)
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert script.stop is not None
    assert script.stop.exit_code is ExitCode.NEEDS_INPUT
    assert "waits for input 'answer' and no scripted input of that type is left (1 given)" in (
        script.stop.reason
    )
    cancelled = [e for e in result.history if e.type == "session_cancelled"]
    assert cancelled[0].payload["reason"] == script.stop.reason


@pytest.mark.trio
async def test_a_wait_with_a_timeout_is_left_to_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wait = stage("wait", "WaitStage", next="end", outputs={"payload": "answer"})
    wait["config"] = {"input": "approval", "timeout": 30}
    wait["on_error"] = [{"errors": ["InputTimeoutError"], "next": "late"}]
    document = doc([wait, terminal("end", "answer"), terminal("late", result={"late": True})])
    warnings: list[str] = []
    script = ScriptedInputs(warn=warnings.append)
    result = await drive_session(session_for(document), script)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"late": True}
    assert script.stop is None
    assert warnings == [
        "the session waits for input 'approval' and no scripted input of that type is left; "
        "the wait times out after 30 s (send one with --input approval=JSON, or add "
        "--virtual-time to reach the timeout at once)"
    ]


@pytest.mark.trio
async def test_in_virtual_time_the_timeout_is_told_without_the_hint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Without --virtual-time the chat example's 300 s wait is 300 s of real
    # time, and the line said only that: the hint says how to pass it at once.
    wait = stage("wait", "WaitStage", next="end", outputs={"payload": "answer"})
    wait["config"] = {"input": "approval", "timeout": 30}
    wait["on_error"] = [{"errors": ["InputTimeoutError"], "next": "late"}]
    document = doc([wait, terminal("end", "answer"), terminal("late", result={"late": True})])
    warnings: list[str] = []
    script = ScriptedInputs(warn=warnings.append, virtual_time=True)
    result = await drive_session(session_for(document), script)
    assert result.result == {"late": True}
    assert warnings == [
        "the session waits for input 'approval' and no scripted input of that type is left; "
        "the wait times out after 30 s"
    ]


@pytest.mark.trio
async def test_a_scripted_type_one_typo_away_stops_the_run_at_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The wait was left to time out (300 s of real time for the chat example),
    # and only then was the typo reported, as an input never asked for.
    wait = stage("wait", "Ask", next="end", outputs={"answer": "answer"})
    wait["config"] = {"type": "approval"}
    document = doc([wait, terminal("end", "answer")])
    warnings: list[str] = []
    script = ScriptedInputs.parse(['aproval={"ok": true}'])
    script.warn = warnings.append
    result = await drive_session(session_for(document), script)
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert script.stop is not None
    assert script.stop.exit_code == ExitCode.NEEDS_INPUT
    assert warnings == [
        "the session waits for input 'approval', which no scripted input has left, while "
        "--input aproval was never asked for: did you mean --input approval=...? "
        "The run is cancelled"
    ]


def test_a_scripted_type_no_wait_accepts_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every wait of this pipeline is a WaitStage, which declares its type: a
    # type none of them accepts is known to be wrong before anything runs.
    wait = stage("wait", "WaitStage", next="end", outputs={"payload": "answer"})
    wait["config"] = {"input": "approval"}
    pipeline = write(tmp_path, "p.json", json.dumps(doc([wait, terminal("end", "answer")])))
    code = main(["run", pipeline, "--no-plugins", "--input", "aproval=1"])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert out == ""
    assert err.strip() == (
        "stageflow: --input aproval: no wait of this pipeline accepts input type 'aproval' "
        "(did you mean 'approval'?); it accepts 'approval'"
    )


def test_warn_mode_problems_are_told_on_standard_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # validate_events "warn" recorded a contract_violation event and said
    # nothing: the run completed, exit 0, in silence.
    stages = write(tmp_path, "typed.py", textwrap.dedent(TYPED_MODULE))
    node = stage("greet", "Greet", next="end", arguments={"name": "name"})
    pipeline = write(tmp_path, "p.json", json.dumps(doc([node, terminal("end")])))
    code = main(["run", pipeline, "--stages", stages, "--no-plugins", "--payload", '{"name": 5}'])
    _, err = capsys.readouterr()
    assert code == ExitCode.OK
    assert "stageflow: warning: node 'greet': contract_violation {" in err
    assert '"key": "name"' in err


TYPED_MODULE = """
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Greet")
    class Greet(stageflow.BaseStage):
        spec = stageflow.StageSpec(
            arguments={"type": "object", "properties": {"name": {"type": "string"}}}
        )

        async def run(self, ctx):
            return {}
"""


@pytest.mark.anyio
async def test_a_rejected_scripted_input_cancels_the_session() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Count")
    class Count(stageflow.BaseStage):
        spec = stageflow.StageSpec(
            allowed_inputs=[stageflow.InputSpec("count", {"type": "integer"})],
            outputs={"type": "object", "properties": {"n": {}}},
        )

        async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
            return {"n": await ctx.wait_input("count")}

    document = doc(
        [stage("ask", "Count", next="end", outputs={"n": "n"}), terminal("end", "n")],
        validate_events="strict",
    )
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    script = ScriptedInputs.parse(['count="three"'])
    result = await drive_session(stageflow.Session(pipeline, registry=registry), script)
    assert result.status is stageflow.SessionStatus.CANCELLED
    assert script.stop is not None
    assert script.stop.exit_code is ExitCode.USAGE
    assert script.stop.reason.startswith("scripted input 'count' #1 was rejected: input 'count'")
    assert "does not match the schema" in script.stop.reason


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


ASK_MODULE = """
    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Ask")
    async def ask(ctx):
        return {"answer": await ctx.wait_input(ctx.config["type"])}
"""


def test_run_command_feeds_inputs_and_exits_by_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = write(tmp_path, "ask_stages.py", textwrap.dedent(ASK_MODULE))
    pipeline = write(tmp_path, "ask.json", json.dumps(TWO_QUESTIONS))
    answer = write(tmp_path, "answer.json", '{"from": "file"}')
    argv = ["run", pipeline, "--stages", stages, "--json"]

    code = main([*argv, "--input", "answer=1", "--input", f"answer=@{answer}"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    assert json.loads(out)["artifacts"] == {"one": 1, "two": {"from": "file"}}

    code = main([*argv, "--input", "answer=1", "--input", "other=2"])
    out, err = capsys.readouterr()
    assert code == ExitCode.NEEDS_INPUT
    assert json.loads(out)["status"] == "cancelled"
    assert "Send it with --input answer=JSON" in err
    assert "scripted inputs never asked for: other (1)" in err


# -------------------------------------------------------------------- live view


def terminal_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


@pytest.mark.trio
async def test_live_view_shows_the_active_nodes_of_a_long_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = stage("slow_b", "Slow")
    slow["config"] = {"seconds": 60}
    document = doc(
        [
            parallel("fanout", ["quick_a", "slow_b"], next="end"),
            {**stage("quick_a", "Slow"), "config": {"seconds": 1}},
            slow,
            terminal("end"),
        ]
    )
    console, buffer = terminal_console()
    view = LiveView(console, "demo", delay=0.5, period=0.25)
    result = await drive_session(session_for(document), ScriptedInputs(), view)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert view.shown
    drawn = buffer.getvalue()
    assert "demo: 3 active, 0 finished, 0 failed" in drawn
    assert "demo: 2 active, 1 finished, 0 failed" in drawn  # quick_a done, slow_b still going
    assert "slow_b" in drawn
    assert "fanout/slow_b" in drawn


@pytest.mark.trio
async def test_live_view_draws_nothing_for_a_short_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = terminal_console()
    view = LiveView(console, "demo", delay=0.5)
    document = doc([{**stage("s", "Slow", next="end"), "config": {"seconds": 0.1}}, terminal()])
    result = await drive_session(session_for(document), ScriptedInputs(), view)
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert not view.shown
    assert buffer.getvalue() == ""


@pytest.mark.trio
async def test_live_view_rows_follow_the_events(autojump_clock: trio.testing.MockClock) -> None:
    now = datetime.datetime.now(datetime.UTC)

    def ev(seq: int, type: str, node_id: str, path: str = "", **payload: Any) -> Event:
        return Event(seq, type, now, "s", node_id, path, payload)

    console, buffer = terminal_console()
    view = LiveView(console, "demo")
    view.on_event(ev(1, "node_started", "a", node_type="stage"))
    await trio.sleep(2)
    view.on_event(ev(2, "node_started", "b", "par/b", node_type="stage"))
    view.on_event(ev(3, "waiting_for_input", "b", "par/b", input_type="approval"))
    await trio.sleep(1)
    console.print(view.render())
    table = buffer.getvalue()
    assert "demo: 2 active, 0 finished, 0 failed" in table
    rows = [line for line in table.splitlines() if " a " in line or " b " in line]
    assert len(rows) == 2
    assert "3.0 s" in rows[0]
    assert "running" in rows[0]
    assert "par/b" in rows[1]
    assert "1.0 s" in rows[1]
    assert "waiting for 'approval'" in rows[1]

    view.on_event(ev(4, "input_received", "b", "par/b", input_type="approval"))
    view.on_event(ev(5, "node_finished", "a", node_type="stage"))
    view.on_event(ev(6, "node_failed", "x", node_type="stage"))
    buffer.truncate(0)
    buffer.seek(0)
    console.print(view.render())
    table = buffer.getvalue()
    assert "demo: 1 active, 1 finished, 1 failed" in table
    assert "waiting" not in table


@pytest.mark.anyio
async def test_live_view_draws_brackets_in_names_as_they_are() -> None:
    # Rich reads "[/]" as markup: drawing the view raised MarkupError mid-run.
    now = datetime.datetime.now(datetime.UTC)
    console, buffer = terminal_console()
    view = LiveView(console, "demo [/] [red]v2")
    view.on_event(Event(1, "node_started", now, "s", "a", "", {"node_type": "stage"}))
    view.on_event(Event(2, "waiting_for_input", now, "s", "a", "", {"input_type": "ok [/]"}))
    console.print(view.render())
    table = buffer.getvalue()
    assert "demo [/] [red]v2: 1 active" in table
    assert "waiting for 'ok [/]'" in table


@pytest.mark.trio
async def test_a_warning_during_the_live_view_is_printed_above_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The live view redirects sys.stderr to print above its table. Warnings
    # went to the standard error the command started with instead: written
    # after the table's last line, the next redraw erased them.
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    streams = Streams.current()
    console = Console(file=terminal, force_terminal=True, width=120, color_system=None)
    view = LiveView(console, "demo", delay=0)
    async with view.open():
        await trio.sleep(1)
        streams.warn("the session waits for input 'approval'")
        await trio.sleep(1)
    drawn = terminal.getvalue()
    # Printed by the live view's console where the table was, which is drawn again below it.
    assert "stageflow: the session waits for input 'approval'\ndemo: 0 active" in drawn
    assert "┘stageflow" not in drawn  # not glued to the table's last line


@pytest.mark.trio
async def test_a_warning_during_the_live_view_stays_in_a_redirected_standard_error(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 2>err.log the live view still took standard error over: what was
    # written there was printed on the terminal, and never reached the file.
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    streams = Streams.current()
    console, drawn = terminal_console()
    view = LiveView(console, "demo", delay=0)
    async with view.open():
        await trio.sleep(1)
        streams.warn("the session waits for input 'approval'")
        await trio.sleep(1)
    assert log.getvalue() == "stageflow: the session waits for input 'approval'\n"
    assert "stageflow:" not in drawn.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "flags", "live"),
    [
        (True, [], True),
        (True, ["--json"], False),
        (True, ["--no-live"], False),
        # Its redraw timer made virtual time pass in steps: a day of sleep took minutes.
        (True, ["--virtual-time"], False),
        (False, [], False),
    ],
)
def test_the_live_view_is_used_only_on_a_terminal(tty: bool, flags: list[str], live: bool) -> None:
    args = build_parser().parse_args(["run", "p.json", *flags])
    out = FakeTerminal() if tty else io.StringIO()
    view = _make_view(args, Streams(out, io.StringIO()), "demo")
    assert isinstance(view, LiveView) is live


@pytest.mark.anyio
async def test_a_wait_with_no_input_left_is_reported_at_once_with_how_to_send_it() -> None:
    order: list[str] = []
    script = ScriptedInputs.parse([])
    script.warn = lambda message: order.append(f"warn: {message}")
    script.schemas = {"answer": {"type": "integer"}}
    session = session_for(TWO_QUESTIONS)
    session.subscribe(lambda event: order.append(event.type))
    result = await drive_session(session, script)
    assert result.status is stageflow.SessionStatus.CANCELLED
    (warning,) = [line for line in order if line.startswith("warn: ")]
    assert order.index(warning) < order.index("session_cancelled")
    assert "waits for input 'answer'" in warning
    assert 'Send it with --input answer=JSON (a payload matching {"type": "integer"})' in warning


def test_the_hint_for_a_missing_input_shows_the_wait_stage_nodes_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The schema was looked up in the stage catalogue, where WaitStage declares no
    # input: the one its node gives in config.input_schema was never shown.
    config = {"input": "approval", "input_schema": {"type": "boolean"}}
    document = doc([stage("ask", "WaitStage", config=config, next="end"), terminal("end")])
    pipeline = write(tmp_path, "approve.json", json.dumps(document))
    code = main(["run", pipeline, "--no-plugins"])
    err = capsys.readouterr().err
    assert code == ExitCode.NEEDS_INPUT
    assert '--input approval=JSON (a payload matching {"type": "boolean"})' in err


SLEEPY = doc(
    [
        stage("nap", "SleepStage", config={"seconds": 86400}, next="end"),
        terminal("end"),
    ]
)


def test_run_with_virtual_time_passes_a_day_of_sleep_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = write(tmp_path, "sleepy.json", json.dumps(SLEEPY))
    code = main(["run", pipeline, "--virtual-time", "--json", "--no-plugins"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    assert json.loads(out)["status"] == "completed"


def test_run_help_offers_virtual_time(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", "--help"])
    assert "--virtual-time" in capsys.readouterr().out


EXIT_MODULE = """
    import sys

    import stageflow

    registry = stageflow.StageRegistry()


    @registry.register("Exit")
    async def leave(ctx):
        sys.exit(3)
"""


@pytest.mark.parametrize("in_a_branch", [False, True], ids=["alone", "in a branch"])
def test_a_stage_that_calls_sys_exit_ends_the_command_with_its_code(
    tmp_path: Path, in_a_branch: bool
) -> None:
    # On trio the SystemExit came out in exception groups (the branch's task
    # group, the CLI's own): a traceback of the groups, and exit code 1.
    stages = write(tmp_path, "exit_stages.py", textwrap.dedent(EXIT_MODULE))
    nodes = [stage("a", "Exit", next="end")]
    if in_a_branch:
        nodes = [parallel("fan", ["a", "b"], next="end"), stage("a", "Exit"), stage("b", "Exit")]
    pipeline = write(tmp_path, "exits.json", json.dumps(doc([*nodes, terminal()])))
    with pytest.raises(SystemExit) as raised:
        main(["run", pipeline, "--stages", stages, "--no-plugins", "--no-live"])
    assert type(raised.value) is SystemExit
    assert raised.value.code == 3
