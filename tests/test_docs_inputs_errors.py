"""Every snippet of docs/inputs.md and docs/errors.md runs, and shows what it prints.

The rules the two pages follow (this test enforces them):

- ``python`` blocks run in order, in one namespace per page (a page's
  snippets build on each other). Async code runs inside ``trio.run`` in the
  snippet itself.
- A block that directly follows a python block (only blank lines between) is
  that snippet's output: what it prints must be exactly that text.
- Every other ``json`` block is a pipeline document and must load with
  ``stageflow.Pipeline.from_dict``, with the built-in stages and the stages
  the page's snippets registered in ``registry``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

import stageflow
import stageflow._errors
import stageflow.builtins

ROOT = Path(__file__).parents[1]
DOCS = ("inputs.md", "errors.md")

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@attrs.frozen
class Block:
    lang: str
    text: str
    line: int
    output: Block | None = None


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, each python block with its output block attached."""
    source = (ROOT / "docs" / page).read_text(encoding="utf-8")
    found: list[tuple[Block, int, int]] = []
    for match in _FENCE.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        found.append(
            (Block(match.group(1).strip(), match.group(2), line), match.start(), match.end())
        )
    result: list[Block] = []
    i = 0
    while i < len(found):
        block, _, end = found[i]
        if block.lang == "python" and i + 1 < len(found):
            following, start, _ = found[i + 1]
            if source[end:start].strip() == "" and following.lang != "python":
                result.append(attrs.evolve(block, output=following))
                i += 2
                continue
        result.append(block)
        i += 1
    return result


def run_snippets(page: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for block in blocks(page):
        if block.lang != "python":
            continue
        out = io.StringIO()
        code = compile(block.text, f"docs/{page}:{block.line}", "exec")
        with contextlib.redirect_stdout(out), capture_logs():
            exec(code, namespace)
        if block.output is not None:
            assert out.getvalue() == block.output.text, (
                f"docs/{page} line {block.output.line}: the shown output is not what the "
                f"snippet at line {block.line} prints:\n{out.getvalue()}"
            )
    return namespace


def validation_registry(namespace: dict[str, Any]) -> stageflow.StageRegistry:
    registry = stageflow.builtins.registry()
    own = namespace.get("registry")
    if isinstance(own, stageflow.StageRegistry):
        for entry in own.catalogue(core=False):
            registry.add(entry.target, name=entry.name, spec=entry.spec)
    return registry


@pytest.mark.parametrize("page", DOCS)
def test_snippets_run_and_print_what_the_page_shows(page: str) -> None:
    namespace = run_snippets(page)
    python = [b for b in blocks(page) if b.lang == "python"]
    assert len(python) >= 5, f"docs/{page} lost its snippets"
    registry = validation_registry(namespace)
    pipelines = 0
    for block in blocks(page):
        if block.lang != "json":
            continue
        pipeline = stageflow.Pipeline.from_dict(
            __import__("json").loads(block.text), registry=registry
        )
        assert pipeline.nodes, f"docs/{page} line {block.line}"
        pipelines += 1
    assert pipelines >= 1


@pytest.mark.parametrize("page", DOCS)
def test_every_block_is_python_json_or_an_output(page: str) -> None:
    for block in blocks(page):
        if page == "errors.md" and block.text.startswith("StageflowError\n"):
            continue  # the error tree, checked by the tests below
        assert block.lang in {"python", "json"}, (
            f"docs/{page} line {block.line}: a {block.lang or 'plain'} block that is not the "
            "output of a python snippet; such blocks are not checked"
        )


# ----------------------------------------------------------------- error tree

_TREE_LINE = re.compile(r"^(?P<indent>(?:[│ ] {3})*)(?:[├└]── )?(?P<name>[A-Za-z]+Error)\b")


def tree_block() -> str:
    [tree] = [b.text for b in blocks("errors.md") if b.text.startswith("StageflowError\n")]
    return tree


def test_error_tree_is_the_one_in_the_errors_module() -> None:
    doc = stageflow._errors.__doc__
    assert doc is not None
    start = doc.index("    StageflowError\n")
    drawn = doc[start : doc.index("\n\n", start)]
    module_tree = "".join(line.removeprefix("    ") + "\n" for line in drawn.splitlines())
    assert tree_block() == module_tree


def test_error_tree_matches_the_classes() -> None:
    parents: list[type] = []
    named = 0
    for line in tree_block().splitlines():
        match = _TREE_LINE.match(line)
        if match is None:
            continue  # a continued description
        depth = len(match["indent"]) // 4 + (0 if line.startswith("StageflowError") else 1)
        cls = getattr(stageflow, match["name"])
        del parents[depth:]
        if parents:
            assert cls.__bases__[0] is parents[-1], f"{cls.__name__} is not under {parents[-1]}"
        alsos = re.findall(r"also (\w+)", line)
        for also in alsos:
            assert issubclass(cls, getattr(builtins, also)), f"{cls.__name__} is no {also}"
        # And every built-in class it derives from besides its parent in the tree is drawn.
        for base in cls.__bases__[1:]:
            if base.__module__ == "builtins":
                assert base.__name__ in alsos, f"{cls.__name__} is also a {base.__name__}"
        parents.append(cls)
        named += 1
    # Every error class: Problem is none, and RunSuspended no StageflowError (the
    # page names it under the tree).
    assert named == len(stageflow._errors.__all__) - 2
    assert "`RunSuspended`" in (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_errors_page_names_every_error_class() -> None:
    # Importing the public submodules adds their errors to the tree.
    import stageflow.builtins
    import stageflow.store
    import stageflow.testing
    import stageflow.ui

    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    # Classes users can import: from stageflow or a public submodule (not the
    # CLI's internal ones, nor those builtins.fail makes at run time).
    namespaces = (stageflow, stageflow.testing, stageflow.builtins, stageflow.store, stageflow.ui)
    public = {
        c
        for c in _subclasses(stageflow.StageflowError)
        if any(getattr(ns, c.__name__, None) is c for ns in namespaces)
    }
    missing = sorted(
        c.__name__
        for c in public
        if f"`{c.__name__}`" not in text and c.__name__ not in tree_block()
    )
    assert missing == []
