"""The command line on files and modules that are not what it expects (each failed before).

Files that are not UTF-8 text, files too large (or endless) to read whole, a
stages module that calls ``sys.exit()``, a closed standard error, and names
with line breaks in a drawn graph: each gets the documented exit code and
one ``stageflow:`` line, never a traceback of stageflow's own. (The one
traceback shown is a stages module's that raised, which the message
promises.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import PIPELINE, STAGES, Cli, restore_logging, write_json  # noqa: F401
from fakes import doc, stage, terminal

from stageflow._guard import MAX_DOCUMENT_BYTES
from stageflow._stages import default_registry
from stageflow.cli import ExitCode


def latin1(path: Path) -> str:
    path.write_bytes(b'\xff{"text": "caf\xe9"}')
    return str(path)


def test_a_payload_file_that_is_not_utf8_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    # It raised UnicodeDecodeError: a traceback and exit 1.
    payload = latin1(tmp_path / "payload.json")
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", f"@{payload}")
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        f"stageflow: --payload @{payload}: the file is not UTF-8 text (invalid start byte); "
        "save it as UTF-8"
    ]


def test_a_yaml_payload_with_a_date_names_the_file_and_says_to_quote_it(
    cli: Cli, tmp_path: Path
) -> None:
    # It said "payload.text is a date ... return only dict, list, str, ...":
    # the wording for a stage's outputs, with no file and no word on YAML.
    payload = tmp_path / "payload.yaml"
    payload.write_text("text: 2024-01-01\n")
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", f"@{payload}")
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        f"stageflow: --payload @{payload}: $.text: date datetime.date(2024, 1, 1) is not JSON "
        "(not a JSON type); YAML reads unquoted dates and times as such: quote it to make it "
        "a string"
    ]


def test_a_case_file_that_is_not_utf8_is_reported_and_the_others_run(
    cli: Cli, tmp_path: Path
) -> None:
    # load_cases raised UnicodeDecodeError, and the run stopped at it.
    good = write_json(
        tmp_path / "good.json",
        {
            "pipeline": PIPELINE,
            "stages": STAGES,
            "cases": [{"name": "ok", "payload": {"user_id": "u", "text": "a b"}}],
        },
    )
    bad = latin1(tmp_path / "bad.json")
    got = cli("test", good, bad)
    assert got.code == ExitCode.FAILED
    assert "1 passed, 0 failed, 1 errors" in got.out
    assert "the file is not UTF-8 text" in got.out


def test_a_file_past_the_budget_is_refused_without_reading_it_whole(cli: Cli) -> None:
    # /dev/zero never ends: it was read until memory ran out.
    got = cli("validate", "/dev/zero", "--structure-only")
    assert got.code == ExitCode.USAGE
    assert f"over {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB" in got.out + got.err


def test_a_payload_past_the_budget_is_told_to_keep_its_data_out(cli: Cli) -> None:
    # The only advice was to split the document into subpipelines or case
    # files, which a payload cannot be.
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", "@/dev/zero")
    assert got.code == ExitCode.USAGE
    assert got.err == (
        f"stageflow: --payload @/dev/zero: not read: the text is over "
        f"{MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB, the most stageflow reads; keep large "
        "data out of it (pass a path or URL to the data instead), or split it (a pipeline "
        "into subpipelines, a case file into several)\n"
    )


def test_a_stages_module_that_exits_is_a_module_that_cannot_be_imported(
    cli: Cli, tmp_path: Path
) -> None:
    # sys.exit(7) in the module ended the command with exit 7 and no output.
    module = tmp_path / "exiting.py"
    module.write_text("import sys\nsys.exit(7)\n")
    got = cli("stages", "--no-plugins", "--stages", str(module))
    assert got.code == ExitCode.USAGE
    assert "importing it raised SystemExit: 7" in got.err


def test_the_tester_shows_the_traceback_of_a_stages_module_that_raised(
    cli: Cli, tmp_path: Path
) -> None:
    # The message said "(traceback below)" and no traceback followed.
    module = tmp_path / "broken.py"
    module.write_text("def helper():\n    raise RuntimeError('no config')\n\nhelper()\n")
    case = write_json(
        tmp_path / "case.json",
        {"pipeline": PIPELINE, "stages": str(module), "cases": [{"name": "x", "payload": {}}]},
    )
    got = cli("test", case)
    assert got.code == ExitCode.FAILED
    head, _, below = got.out.partition("(traceback below)")
    assert "importing it raised RuntimeError: no config" in head
    assert "Traceback (most recent call last):" in below
    assert "raise RuntimeError('no config')" in below


def test_a_case_file_path_that_names_no_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    # It printed "ERROR nope.json: [Errno 2] No such file or directory" and
    # exited 1, where every other command says "check the path" and exits 2.
    good = write_json(
        tmp_path / "good.json",
        {"pipeline": PIPELINE, "stages": STAGES, "cases": [{"name": "ok", "payload": {}}]},
    )
    got = cli("test", good, str(tmp_path / "nope.json"))
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        f"stageflow: {tmp_path / 'nope.json'}: no such file; check the path "
        "(the other case files were not run)"
    ]
    assert got.out == ""


def test_a_stages_module_that_cannot_be_imported_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    # Every case was an error blamed on its case file's $.stages ("case file in
    # good.json is not valid"), which may name no stages at all, and it exited 1.
    good = write_json(
        tmp_path / "good.json",
        {"pipeline": PIPELINE, "stages": STAGES, "cases": [{"name": "ok", "payload": {}}]},
    )
    got = cli("test", good, "--stages", "no_such_stages_module")
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        "stageflow: --stages no_such_stages_module: no module named 'no_such_stages_module' "
        "(searched the current directory and sys.path); pass an importable module name or "
        "a path to a .py file"
    ]
    assert got.out == ""


def test_a_stages_module_given_to_the_tester_is_imported_once(cli: Cli, tmp_path: Path) -> None:
    # It registers into the default registry: imported twice, its stage clashed with itself.
    (tmp_path / "extra.py").write_text(
        "import stageflow\n"
        "@stageflow.register_stage('ExtraOnce')\n"
        "async def extra(ctx):\n"
        "    return {}\n"
    )
    good = write_json(
        tmp_path / "good.json",
        {"pipeline": PIPELINE, "stages": STAGES, "cases": [{"name": "ok", "payload": {}}]},
    )
    try:
        got = cli("test", good, "--stages", str(tmp_path / "extra.py"), "--no-coverage")
    finally:
        # The default registry is process-wide: later tests list it.
        default_registry()._entries.pop("ExtraOnce", None)
    assert got.code == ExitCode.OK, got.out + got.err


def test_a_stage_that_calls_sys_exit_does_not_end_the_test_command(
    cli: Cli, tmp_path: Path
) -> None:
    # It exited with the stage's code and printed nothing: sys.exit(0) said "all passed".
    (tmp_path / "exits.py").write_text(
        "import sys\n"
        "import stageflow\n"
        "registry = stageflow.StageRegistry()\n"
        "@registry.register('Exits')\n"
        "async def exits(ctx):\n"
        "    sys.exit(0)\n"
    )
    pipeline = doc([stage("s", "Exits", next="end"), terminal("end")])
    case = write_json(
        tmp_path / "case.json",
        {"pipeline": pipeline, "stages": "exits.py", "cases": [{"name": "exits"}]},
    )
    got = cli("test", case, "--no-coverage")
    assert got.code == ExitCode.FAILED
    assert "a stage called sys.exit(0), which would end the whole test run" in got.out
    assert got.out.rstrip().endswith("0 passed, 0 failed, 1 errors")


def test_a_case_file_path_that_names_a_directory_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    # `stageflow test tests/cases` printed "ERROR tests/cases: [Errno 21] Is a
    # directory: 'tests/cases'" and exited 1, as if a case had failed.
    got = cli("test", str(tmp_path))
    assert got.code == ExitCode.USAGE
    assert got.err.strip().splitlines() == [
        f"stageflow: {tmp_path}: a directory, not a case file; pass the case files in it "
        f"(e.g. {tmp_path / '*.stageflow.json'})"
    ]
    assert got.out == ""


def test_the_tester_keeps_the_sessions_log_lines_out_unless_asked(cli: Cli, tmp_path: Path) -> None:
    # A case that expects a failure printed the session's ERROR lines
    # (node.finished, session.finished) around a report saying it passed.
    case = write_json(
        tmp_path / "case.json",
        {
            "pipeline": PIPELINE,
            "stages": STAGES,
            "cases": [
                {
                    "name": "fails as expected",
                    "payload": {"user_id": "u", "text": "a b"},
                    "mocks": {"InitStage": {"errors": [{"type": "ValueError"}]}},
                    "expect": {"status": "failed"},
                }
            ],
        },
    )
    got = cli("test", case, "--no-coverage")
    assert got.code == ExitCode.OK
    assert "session.finished" not in got.err
    asked = cli("test", case, "--no-coverage", "--log-level", "error")
    assert "session.finished" in asked.err


def test_the_tester_writes_a_failed_stages_traceback_with_traceback(
    cli: Cli, tmp_path: Path
) -> None:
    # --traceback alone was taken for no log option: the lines it adds to were left out.
    (tmp_path / "buggy.py").write_text(
        "import stageflow\n"
        "registry = stageflow.StageRegistry()\n"
        "@registry.register('Buggy')\n"
        "async def buggy(ctx):\n"
        "    return {'v': {}['missing']}\n"
    )
    pipeline = doc([stage("s", "Buggy", next="end"), terminal("end")])
    case = write_json(
        tmp_path / "case.json",
        {"pipeline": pipeline, "stages": "buggy.py", "cases": [{"name": "buggy"}]},
    )
    got = cli("test", case, "--no-coverage", "--traceback")
    assert got.code == ExitCode.FAILED
    assert "Traceback (most recent call last)" in got.err
    assert 'buggy.py", line 5, in buggy' in got.err


def test_a_command_runs_with_standard_error_closed() -> None:
    # Python makes sys.stderr None: configuring the logs raised AttributeError.
    done = subprocess.run(
        f"{sys.executable} -m stageflow schema 2>&-",
        shell=True,
        capture_output=False,
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert '"$schema"' in done.stdout


def test_diagnostics_are_dropped_with_standard_error_closed(tmp_path: Path) -> None:
    # print(file=None) writes to standard output: the "waits for input" line
    # went in front of the --json result, which was then no JSON document.
    config = {"input": "approval"}
    pipeline = write_json(
        tmp_path / "ask.json",
        doc([stage("ask", "WaitStage", config=config, next="end"), terminal("end")]),
    )
    done = subprocess.run(
        f"{sys.executable} -m stageflow run {pipeline} --json --no-plugins 2>&-",
        shell=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert done.returncode == ExitCode.NEEDS_INPUT
    assert json.loads(done.stdout)["status"] == "cancelled"


@pytest.mark.parametrize("format", ["mermaid", "dot"])
def test_line_breaks_in_names_and_problems_stay_inside_the_graphs_comments(
    cli: Cli, tmp_path: Path, format: str
) -> None:
    # A newline in metadata.name (or in an id a problem quotes) ended the
    # comment line: the rest became a Mermaid edge, or closed the digraph.
    document = {
        "api_version": "1.0",
        "entry": "zz",
        "metadata": {"name": "x\nA-->B"},
        "nodes": [{"id": "a\n}", "type": "terminal"}],
    }
    got = cli("graph", write_json(tmp_path / "p.json", document), "--format", format)
    comment = "%%" if format == "mermaid" else "//"
    lines = got.out.splitlines()
    assert "A-->B" not in lines
    assert "}" not in lines[:-1]  # the digraph's closing brace is its last line
    assert any(line.strip().startswith(comment) and "\\n" in line for line in lines)


def test_a_json_report_of_a_file_name_that_is_not_utf8_is_valid_json(
    cli: Cli, tmp_path: Path
) -> None:
    # The name came from the OS with a lone surrogate and was written raw:
    # the output was not UTF-8 (or, with PYTHONIOENCODING=utf-8, a traceback).
    name = tmp_path / "bad\udcffname.json"
    name.write_text(
        '{"api_version": "1.0", "entry": "e", "nodes": [{"id": "e", "type": "terminal"}]}'
    )
    got = cli("validate", str(name), "--structure-only", "--json")
    assert got.code == ExitCode.OK
    got.out.encode()  # valid UTF-8
    [report] = got.json()
    assert report["file"] == str(name)


def test_a_stage_function_named_as_the_registry_is_said_to_be_one(cli: Cli, tmp_path: Path) -> None:
    # It was called as a registry factory: "boom() missing 1 required
    # positional argument: 'ctx'; fix the module".
    module = tmp_path / "st.py"
    module.write_text("async def boom(ctx):\n    return {}\n")
    got = cli("stages", "--no-plugins", "--stages", f"{module}:boom")
    assert got.code == ExitCode.USAGE
    assert "its 'boom' attribute is an async function (a stage?)" in got.err


def test_an_empty_attribute_after_the_colon_is_said_to_be_empty(cli: Cli, tmp_path: Path) -> None:
    # "st.py:" was looked up as a module named 'st.py:'.
    module = tmp_path / "st.py"
    module.write_text("import stageflow\nregistry = stageflow.StageRegistry()\n")
    got = cli("stages", "--no-plugins", "--stages", f"{module}:")
    assert got.code == ExitCode.USAGE
    assert "nothing follows the colon" in got.err


def test_a_case_files_missing_pipeline_is_located(cli: Cli, tmp_path: Path) -> None:
    # "setup: [Errno 2] No such file or directory: ..." with no location.
    cases = write_json(
        tmp_path / "c.json",
        {"pipeline": "nope.json", "stages": STAGES, "cases": [{"name": "a", "payload": {}}]},
    )
    got = cli("test", cases)
    assert got.code == ExitCode.FAILED
    assert "$.pipeline: cannot read" in got.out
    assert "check the path (relative to the case file)" in got.out


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "argv",
    [
        ("schema",),
        ("validate", PIPELINE, "--structure-only"),
        ("graph", PIPELINE),
        ("run", PIPELINE, "--stages", STAGES, "--payload", '{"text": "hi"}', "--no-plugins"),
    ],
    ids=["schema", "validate", "graph", "run"],
)
def test_output_that_cannot_be_written_exits_74_with_one_line(argv: tuple[str, ...]) -> None:
    # A full disk raised OSError out of main: a traceback, and exit 1, which
    # says "the session failed" of a run that had completed.
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "stageflow", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 74 == ExitCode.OUTPUT_FAILED
    assert done.stderr.splitlines() == [
        "stageflow: cannot write the output: No space left on device; the results are "
        "lost: free some space, or send the output elsewhere"
    ]


def test_a_run_with_standard_output_closed_still_runs() -> None:
    # Python makes sys.stdout None: the live view's terminal check raised
    # AttributeError after the run had started.
    done = subprocess.run(
        f"{sys.executable} -m stageflow run {PIPELINE} --stages {STAGES} --no-plugins "
        f"""--payload '{{"text": "hi"}}' >&-""",
        shell=True,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (ExitCode.OK, "")


@pytest.mark.parametrize("format", ["mermaid", "dot", "json"])
def test_a_lone_surrogate_in_an_invalid_pipeline_is_drawn_escaped(
    cli: Cli, tmp_path: Path, format: str
) -> None:
    # JSON text may escape a lone surrogate ("\ud800"), which UTF-8 cannot
    # carry: validate reports it, but graph drew it and failed writing it
    # (UnicodeEncodeError, a traceback).
    document = json.loads(Path(PIPELINE).read_text())
    document["metadata"]["name"] = "x\ud800y"
    path = tmp_path / "surrogate.json"
    path.write_text(json.dumps(document))  # ASCII: the surrogate as its escape
    got = cli("graph", str(path), "--format", format)
    assert got.code == ExitCode.USAGE
    assert "lone surrogate" in got.err
    got.out.encode()  # UTF-8 carries all of it
    if format == "json":
        assert got.json()["name"] == "x\ud800y"
    else:
        name_line = got.out.splitlines()[0 if format == "dot" else 1]
        assert name_line in ('digraph "x\\ud800y" {', "    %% pipeline: x\\ud800y")


def test_a_yaml_syntax_error_is_one_line_with_its_line_and_column(cli: Cli, tmp_path: Path) -> None:
    # PyYAML's message spans four lines (a copy of the line and a caret, "in
    # <unicode string>"): validate's one line per problem became five.
    path = tmp_path / "p.yaml"
    path.write_text("api_version: '1.0'\nentry: end\nnodes: [\n")
    got = cli("validate", str(path))
    assert got.code == ExitCode.USAGE
    assert got.out.splitlines() == [
        f"{path}: $: not valid YAML at line 4 column 1: while parsing a flow node: "
        "expected the node content, but found '<stream end>'; fix the syntax",
        "1 of 1 file not valid, 1 problem",
    ]
    payload = tmp_path / "payload.yaml"
    payload.write_text("user: a: b\n")
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", f"@{payload}")
    assert got.code == ExitCode.USAGE
    assert got.err.splitlines() == [
        f"stageflow: --payload @{payload}: not valid YAML at line 1 column 8: mapping values "
        "are not allowed here; fix the file"
    ]


def test_files_saved_as_utf8_with_a_byte_order_mark_are_read(cli: Cli, tmp_path: Path) -> None:
    # An editor's "UTF-8 with BOM" was refused as "not valid JSON at line 1
    # column 1: Unexpected UTF-8 BOM (decode using utf-8-sig)".
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(Path(PIPELINE).read_text(), encoding="utf-8-sig")
    payload = tmp_path / "payload.json"
    payload.write_text('{"text": "one two three four five"}', encoding="utf-8-sig")
    got = cli("run", str(pipeline), "--stages", STAGES, "--payload", f"@{payload}", "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["artifacts"]["score"] == 5


def test_a_payload_file_that_is_not_json_is_told_to_be_fixed(cli: Cli, tmp_path: Path) -> None:
    # The hint was for a payload on the command line: "quote JSON strings ...
    # or pass @FILE", to someone who had passed @FILE.
    payload = tmp_path / "payload.json"
    payload.write_text('{"text": ')
    got = cli("run", PIPELINE, "--stages", STAGES, "--payload", f"@{payload}")
    assert got.code == ExitCode.USAGE
    assert got.err.splitlines() == [
        f"stageflow: --payload @{payload}: not valid JSON at line 1 column 10: Expecting "
        "value; fix the file"
    ]


@pytest.mark.parametrize("name", ["empty.json", "empty.yaml", "blank.json"])
def test_an_empty_pipeline_or_case_file_is_said_to_be_empty(
    cli: Cli, tmp_path: Path, name: str
) -> None:
    # It said "not valid JSON at line 1 column 1: Expecting value" (or, for
    # YAML, "a pipeline document is a JSON object, got null").
    path = tmp_path / name
    path.write_text("" if name.startswith("empty") else "\n  \n")
    got = cli("validate", str(path), "--structure-only")
    assert got.code == ExitCode.USAGE
    assert got.out.splitlines()[0] == f"{path}: $: the file is empty; write the document in it"
    got = cli("test", str(path))
    assert got.code == ExitCode.FAILED
    assert "  - $: the file is empty; write the document in it" in got.out


@pytest.mark.parametrize("option", ["--payload", "--input"])
def test_an_empty_payload_or_input_file_is_said_to_be_empty(
    cli: Cli, tmp_path: Path, option: str
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    value = f"@{path}" if option == "--payload" else f"answer=@{path}"
    got = cli("run", PIPELINE, "--stages", STAGES, option, value)
    assert got.code == ExitCode.USAGE
    where = f"--payload @{path}" if option == "--payload" else f"--input answer @{path}"
    assert got.err.strip().splitlines() == [
        f"stageflow: {where}: the file is empty; write a JSON value in it"
    ]
