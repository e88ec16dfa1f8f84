"""Every code block in README.md and docs/*.md runs or validates.

Conventions (an HTML comment on the line right before a fence):

- ```python blocks of one file run in order, in one fresh interpreter, sharing
  their globals like a notebook. ``<!-- docs: skip -->`` skips a fragment
  (one that needs a collector, a running session, a file of its own...).
  Fences may be indented (inside a list item); the marker then is too.
- ``<!-- docs: output -->`` before a ```text block: the previous python block
  must print exactly that text.
- ```json blocks are pipeline documents and must load with
  ``stageflow.Pipeline.from_dict``, with a registry holding the stages named in
  :data:`DOC_STAGES`. ``<!-- docs: fragment -->`` marks a JSON snippet that is
  only parsed. ``<!-- docs: invalid -->`` marks a document that must be
  rejected; the next ```text block is the exact error message.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

import stageflow
from stageflow._specs import ENGINE_EVENT_TYPES

ROOT = Path(__file__).parents[1]

# Pages whose blocks follow their own conventions and are checked by their own tests.
OWN_TESTS = {
    "builtins.md": "test_builtins.py",  # generated from the stage specs; node fragments
    "testing.md": "test_testing.py",  # case files and snippets run in a prepared tree
    "inputs.md": "test_docs_inputs_errors.py",  # snippets build on each other, virtual time
    "errors.md": "test_docs_inputs_errors.py",
}
FILES = sorted(
    [ROOT / "README.md", *(f for f in (ROOT / "docs").glob("*.md") if f.name not in OWN_TESTS)]
)

# The stage names the documents use; the docs say so where they first appear.
DOC_STAGES = ("Classify", "Fetch", "Notify", "Summarize", "Translate")

FENCE = re.compile(
    r"(?:^[ ]*<!-- docs: (?P<marker>[a-z]+) -->\n)?"
    r"^(?P<indent>[ ]*)```(?P<lang>[a-z]*)\n(?P<body>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)


class Block(NamedTuple):
    file: Path
    line: int
    lang: str
    marker: str | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(file: Path) -> list[Block]:
    text = file.read_text()
    return [
        Block(
            file,
            text.count("\n", 0, m.start("body")),
            m["lang"],
            m["marker"],
            textwrap.dedent(m["body"]),  # fences indented in a list item
        )
        for m in FENCE.finditer(text)
    ]


def docs_registry() -> stageflow.StageRegistry:
    registry = stageflow.StageRegistry()
    for name in DOC_STAGES:

        async def stage(ctx: stageflow.StageContext) -> None:
            return None

        registry.register(name)(stage)
    return registry


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(ROOT)) for f in files]


def test_pages_left_out_are_checked_by_their_own_tests() -> None:
    for page, test in OWN_TESTS.items():
        assert (ROOT / "docs" / page).is_file(), page
        text = (ROOT / "tests" / test).read_text()
        assert f'"docs" / "{page}"' in text or f'"{page}"' in text, (page, test)


def test_the_docs_exist_and_have_blocks() -> None:
    names = {f.name for f in FILES}
    assert {"README.md", "concepts.md", "pipeline-format.md", "snapshots.md"} <= names
    for file in FILES:
        assert blocks(file), f"{file} has no code block"


MARKERS = {
    "python": {None, "skip"},
    "json": {None, "fragment", "invalid"},
    "text": {None, "output"},
}


def test_markers_are_known_and_on_blocks_they_apply_to() -> None:
    for file in FILES:
        for block in blocks(file):
            assert block.marker in MARKERS.get(block.lang, {None}), block.where
        # A marker with a typo, or not right before a fence, would be ignored silently.
        markers = re.findall(r"<!-- docs: [^>]*-->", file.read_text())
        assert len(markers) == sum(1 for b in blocks(file) if b.marker), file


RUNNER = """
import contextlib, io, json, sys, traceback
results = []
namespace = {"__name__": "__main__"}
for where, code in json.load(sys.stdin):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, where, "exec"), namespace)
    except BaseException:
        results.append({"stdout": out.getvalue(), "error": traceback.format_exc()})
        break
    results.append({"stdout": out.getvalue(), "error": None})
print(json.dumps(results))
"""


@pytest.mark.parametrize("file", FILES, ids=_ids(FILES))
def test_python_blocks_run_and_print_what_the_docs_say(file: Path, tmp_path: Path) -> None:
    found = blocks(file)
    runnable = [b for b in found if b.lang == "python" and b.marker != "skip"]
    if not runnable:
        pytest.skip("no python block")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([(b.where, b.body) for b in runnable]),
        capture_output=True,
        text=True,
        cwd=tmp_path,  # blocks that write files write them here
        timeout=120,
        check=True,
    )
    results = json.loads(proc.stdout)
    for block, result in zip(runnable, results, strict=False):
        assert result["error"] is None, f"{block.where} failed:\n{result['error']}"
    assert len(results) == len(runnable)
    stdout = {b.line: r["stdout"] for b, r in zip(runnable, results, strict=True)}
    last_python: Block | None = None
    for block in found:
        if block.lang == "python":
            last_python = block
        elif block.marker == "output":
            assert last_python is not None, block.where
            assert last_python.marker != "skip", block.where
            assert stdout[last_python.line] == block.body, block.where


def test_the_readme_quickstart_prints_what_the_readme_says(tmp_path: Path) -> None:
    readme = ROOT / "README.md"
    [quickstart] = [b for b in blocks(readme) if b.lang == "python"]
    proc = subprocess.run(
        [sys.executable, "-c", quickstart.body],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    printed = proc.stdout.strip()
    assert printed
    assert f"It prints `{printed}`" in " ".join(readme.read_text().split())


JSON_BLOCKS = [b for f in FILES for b in blocks(f) if b.lang == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[b.where for b in JSON_BLOCKS])
def test_json_blocks_are_valid_pipelines_or_fail_as_shown(block: Block) -> None:
    document = json.loads(block.body)
    if block.marker == "fragment":
        return
    if block.marker != "invalid":
        stageflow.Pipeline.from_dict(document, registry=docs_registry())
        return
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=docs_registry())
    found = blocks(block.file)
    following = found[found.index(block) + 1]
    assert following.lang == "text", f"{block.where}: an invalid document needs its error"
    assert str(info.value) + "\n" == following.body, block.where


def test_the_block_parser_reads_markers_and_lines(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint('hi')\n```\n\n<!-- docs: output -->\n```text\nho\n```\n"
        '<!-- docs: invalid -->\n```json\n{"api_version": "1.0"}\n```\n'
    )
    found = blocks(page)
    assert [(b.lang, b.marker, b.line) for b in found] == [
        ("python", None, 1),
        ("text", "output", 6),
        ("json", "invalid", 10),
    ]
    assert found[1].body == "ho\n"


# Sections of pipeline-format.md whose tables list the fields of these schema
# definitions ("" is the top level). id, type and description are in its prose.
FORMAT_SECTIONS = {
    "Top level": ["", "limits"],
    "`stage`": ["stage_node", "retry", "error_handler"],
    "`condition`": ["condition_node"],
    "`parallel`": ["parallel_node"],
    "`terminal`": ["terminal_node"],
    "`subpipeline`": ["subpipeline_node"],
    "`map`": ["map_node"],
    "Subpipelines": ["subpipeline_def"],
}


def test_pipeline_format_tables_list_every_field_the_schema_allows() -> None:
    schema = stageflow.pipeline_schema()
    text = (ROOT / "docs" / "pipeline-format.md").read_text()
    documented: dict[str, set[str]] = {}
    for section in re.split(r"^#+ ", text, flags=re.MULTILINE):
        title = section.split("\n", 1)[0]
        documented[title] = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    for title, definitions in FORMAT_SECTIONS.items():
        for name in definitions:
            definition = schema["$defs"][name] if name else schema
            fields = set(definition["properties"]) - {"id", "type", "description"}
            assert fields <= documented[title], (title, name, fields - documented[title])


def test_the_event_table_of_concepts_lists_the_engines_event_types() -> None:
    text = (ROOT / "docs" / "concepts.md").read_text()
    table = text.split("The engine records:", 1)[1].split("\n\n", 2)[1]
    listed = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[0])
    }
    assert listed == ENGINE_EVENT_TYPES
