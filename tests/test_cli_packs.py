"""The example stage pack used by a pipeline through the command line (issue 10).

``make test`` installs ``examples/stage-pack`` (distribution
``stageflow-echo-pack``, pack ``echo``) into the test environment, so the
``stageflow`` command finds its ``EchoLLM`` stage by entry point. Most tests
call ``stageflow.cli.main`` in-process; one runs the installed entry point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import stageflow_echo_pack
from cli_support import (
    Cli,
    restore_logging,  # noqa: F401  (autouse fixture)
)

import stageflow
from stageflow.cli import ExitCode
from stageflow.testing import run_case_files

ROOT = Path(__file__).parents[1]
PACK_DIR = ROOT / "examples" / "stage-pack"
PIPELINE = str(PACK_DIR / "pipeline.json")
CASES = PACK_DIR / "tests" / "echo.stageflow.json"
ECHO_SOURCE = f"stage pack 'echo' (stageflow-echo-pack {stageflow_echo_pack.__version__})"
PAYLOAD = '{"question": "what is a stage pack?"}'
EXPECTED = {
    "status": "completed",
    "result": {"status": "answered"},
    "artifacts": {
        "answer.text": "echo-small heard: what is a stage pack?",
        "answer.finish_reason": "stop",
        "answer.usage": {"model": "echo-small", "prompt_tokens": 5, "completion_tokens": 7},
    },
    "error": None,
}
NOT_REGISTERED = (
    "stage node 'ask' uses stage 'EchoLLM', which is not registered "
    "(known: SleepStage, WaitStage); register it or fix the name"
)


@pytest.fixture(autouse=True)
def _echo_pack_installed() -> None:
    assert "echo" in {p.name for p in stageflow.list_stage_packs()}, (
        "the example stage pack is not installed: run `make test`, "
        "or `pip install -e examples/stage-pack`"
    )


# -- stageflow run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "selection", [(), ("--plugin", "echo")], ids=["packs-by-default", "plugin-echo"]
)
def test_run_uses_the_pack_stage(cli: Cli, selection: tuple[str, ...]) -> None:
    got = cli("run", PIPELINE, *selection, "--payload", PAYLOAD, "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json() == EXPECTED


def test_run_history_has_the_pack_event(cli: Cli) -> None:
    got = cli("run", PIPELINE, "--plugin", "echo", "--payload", PAYLOAD, "--json", "--history")
    assert got.code == ExitCode.OK, got.err
    usage = [e for e in got.json()["history"] if e["type"] == "llm_usage"]
    assert [(e["node_id"], e["payload"]) for e in usage] == [
        ("ask", {"model": "echo-small", "prompt_tokens": 5, "completion_tokens": 7})
    ]


def test_run_for_people_prints_the_reply(cli: Cli) -> None:
    got = cli("run", PIPELINE, "--payload", '{"question": "one two three four five six seven"}')
    assert got.code == ExitCode.OK, got.err
    assert got.out.startswith("completed: echo-pack-demo (2 node runs, session ")
    assert '  answer.text: "echo-small heard: one two three four five six"\n' in got.out
    assert '  answer.finish_reason: "length"\n' in got.out


def test_run_without_packs_fails_validation_naming_the_stage(cli: Cli) -> None:
    got = cli("run", PIPELINE, "--no-plugins", "--payload", PAYLOAD, "--json")
    assert got.code == ExitCode.USAGE == 2
    assert got.out == ""
    assert f"$.nodes[0].stage: {NOT_REGISTERED}" in got.err


def test_run_with_another_pack_named_fails_like_no_pack(cli: Cli) -> None:
    got = cli("run", PIPELINE, "--plugin", "ecko", "--payload", PAYLOAD)
    assert got.code == ExitCode.USAGE
    assert "no stage pack named 'ecko' is installed" in got.err
    assert "echo" in got.err  # the message lists the installed packs


def test_entry_point_subprocess_runs_the_pack_pipeline() -> None:
    exe = shutil.which("stageflow", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the stageflow entry point is not installed: pip install -e .")
    for selection in ([], ["--plugin", "echo"]):
        proc = subprocess.run(
            [exe, "run", PIPELINE, *selection, "--payload", PAYLOAD, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == EXPECTED
    proc = subprocess.run(
        [exe, "run", PIPELINE, "--no-plugins", "--payload", PAYLOAD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    assert NOT_REGISTERED in proc.stderr


# -- stageflow stages / validate -------------------------------------------------------------


@pytest.mark.parametrize("selection", [(), ("--plugin", "echo")])
def test_stages_json_shows_the_pack_as_source(cli: Cli, selection: tuple[str, ...]) -> None:
    got = cli("stages", *selection, "--json")
    assert got.code == ExitCode.OK, got.err
    [echo] = [e for e in got.json() if e["name"] == "EchoLLM"]
    assert echo["source"] == ECHO_SOURCE
    spec = stageflow_echo_pack.EchoLLM.spec
    assert echo["spec"]["description"] == spec.description
    assert echo["spec"]["arguments"] == {
        "type": "object",
        "properties": {"prompt": {"type": "string", "minLength": 1}},
        "required": ["prompt"],
        "additionalProperties": False,
    }
    assert [e["type"] for e in echo["spec"]["allowed_events"]] == ["llm_usage"]


def test_stages_text_shows_the_pack_as_source(cli: Cli) -> None:
    got = cli("stages", "--plugin", "echo")
    assert got.code == ExitCode.OK, got.err
    assert f"EchoLLM  ({ECHO_SOURCE})\n" in got.out
    assert "    events:    llm_usage\n" in got.out


def test_stages_without_packs_has_no_echo(cli: Cli) -> None:
    got = cli("stages", "--no-plugins", "--json")
    assert got.code == ExitCode.OK, got.err
    assert "EchoLLM" not in {e["name"] for e in got.json()}


@pytest.mark.parametrize("selection", [(), ("--plugin", "echo")])
def test_validate_the_pack_pipeline(cli: Cli, selection: tuple[str, ...]) -> None:
    got = cli("validate", PIPELINE, *selection, "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json() == [{"file": PIPELINE, "valid": True, "problems": [], "nodes": 2}]


def test_validate_without_packs_names_the_missing_stage(cli: Cli) -> None:
    got = cli("validate", PIPELINE, "--no-plugins", "--json")
    assert got.code == ExitCode.USAGE
    assert got.json() == [
        {
            "file": PIPELINE,
            "valid": False,
            "problems": [{"location": "$.nodes[0].stage", "message": NOT_REGISTERED}],
        }
    ]
    # Without stage checks the document itself is fine.
    assert cli("validate", PIPELINE, "--no-plugins", "--structure-only").code == ExitCode.OK


# -- the pack's case file: the pipeline tester ----------------------------------------------


def test_pack_case_file_passes_with_full_coverage() -> None:
    report = run_case_files([CASES])
    assert report.ok, report.render()
    assert (report.passed, report.failed, report.errors) == (3, 0, 0)
    [coverage] = report.coverage
    assert coverage.complete
    by_name = {r.case.name: r for r in report.results}
    assert by_name["a mocked EchoLLM returns fixed outputs"].elapsed == 30
    failed = by_name["a provider error fails the run: the node does not retry"]
    assert failed.status is stageflow.SessionStatus.FAILED


def test_pack_case_file_through_stageflow_test(cli: Cli) -> None:
    got = cli("test", str(CASES), "--json")
    assert got.code == ExitCode.OK, got.err
    assert (got.json()["passed"], got.json()["failed"], got.json()["errors"]) == (3, 0, 0)


def test_pack_case_file_fails_when_an_expectation_is_wrong(tmp_path: Path) -> None:
    document = json.loads(CASES.read_text())
    document["pipeline"] = str(PACK_DIR / "pipeline.json")
    document["stages"] = str(PACK_DIR / "tests" / "echo_registry.py")
    document["cases"][0]["expect"]["artifacts"]["answer.text"] = "something else"
    document["cases"][1]["mocks"]["EchoLLM"]["outputs"]["reply"] = "another answer"
    broken = tmp_path / "broken.stageflow.json"
    broken.write_text(json.dumps(document))
    report = run_case_files([broken])
    assert (report.passed, report.failed, report.errors) == (1, 2, 0)


def test_stage_packs_doc_shows_the_case_file() -> None:
    text = (ROOT / "docs" / "stage-packs.md").read_text()
    section = text.split("## Testing a pack with the pipeline tester", 1)[1].split("\n## ", 1)[0]
    [shown] = re.findall(r"```json\n(.*?)```", section, re.S)
    assert json.loads(shown) == json.loads(CASES.read_text())
    assert "stageflow test examples/stage-pack/tests/echo.stageflow.json" in section
    [registry_module] = re.findall(r"```python\n(.*?)```", section, re.S)
    module_text = (PACK_DIR / "tests" / "echo_registry.py").read_text()
    assert registry_module.strip() in module_text
