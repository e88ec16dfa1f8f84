"""Every ``console`` example in docs/cli.md runs and prints what the page shows.

A block is ``$ stageflow ...`` lines, each followed by its expected standard
output; ``...`` in an expected line matches anything. ``> FILE`` at the end
of a command means the output goes to a file: then it must be JSON.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from cli_support import restore_logging  # noqa: F401  (autouse fixture)

from stageflow.cli import ExitCode, main

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "cli.md"


def examples() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    lines = PAGE.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```console$", lines[i])
        i += 1
        if not fence:
            continue
        indent = len(fence[1])
        block: list[str] = []
        while not lines[i].strip().startswith("```"):
            block.append(lines[i][indent:])
            i += 1
        for line in block:
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                found[-1][1].append(line)
    return found


EXAMPLES = examples()


def test_the_page_has_examples() -> None:
    commands = [command.split()[1] for command, _ in EXAMPLES]
    assert {"run", "validate", "schema", "graph", "stages", "test"} <= set(commands)


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_example(
    command: str,
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)
    assert argv[0] == "stageflow"
    redirect = None
    if ">" in argv:
        redirect = argv[argv.index(">") + 1]
        argv = argv[: argv.index(">")]
    code = main(argv[1:])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    if redirect is not None:
        assert expected == []
        assert redirect.endswith(".json")
        json.loads(out)
        return
    got = out.splitlines()
    assert len(got) == len(expected), out
    for line, pattern in zip(got, expected, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.split("..."))
        assert re.fullmatch(regex, line), (line, pattern)


def test_the_broken_copy_prints_what_the_page_shows(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The page's `validate` output for a broken copy of the reference pipeline
    # listed the known stages without the core ones every registry has.
    page = PAGE.read_text()
    shown = page.split("whose second branch uses an unknown\nstage:\n\n```text\n")[1]
    expected = shown.split("\n```")[0].splitlines()
    document = json.loads((ROOT / "examples" / "reference" / "pipeline.json").read_text())
    document["entry"] = "begin"
    document["nodes"][1]["conditions"][0]["then"] = "nowhere"
    document["nodes"][4]["stage"] = "WorkerCStage"
    (tmp_path / "broken.json").write_text(json.dumps(document))
    monkeypatch.chdir(tmp_path)
    stages = str(ROOT / "examples" / "reference" / "stages.py")
    code = main(["validate", "broken.json", "--stages", stages, "--no-plugins"])
    out = capsys.readouterr().out.splitlines()
    assert code == ExitCode.USAGE
    assert len(out) == len(expected), out
    for line, pattern in zip(out, expected, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.split("..."))
        assert re.fullmatch(regex, line), (line, pattern)
