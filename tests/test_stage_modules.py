"""One loader for stages module references: the CLI's ``--stages`` and the tester's ``stages``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import stageflow
from stageflow._stage_modules import StagesModuleError, merge_registries, registry_of
from stageflow._stages import default_registry
from stageflow.testing._mocks import registry_from_modules

ROOT = Path(__file__).parents[1]
REFERENCE_STAGES = ROOT / "examples" / "reference" / "stages.py"

NAMED = """\
import stageflow

REGISTRY = stageflow.StageRegistry()


@REGISTRY.register("Named")
async def named(ctx):
    return {}
"""


def test_a_file_with_an_attribute_names_its_registry(tmp_path: Path) -> None:
    (tmp_path / "named_stages.py").write_text(NAMED)
    registry = registry_of(f"{tmp_path / 'named_stages.py'}:REGISTRY")
    assert "Named" in registry.names(core=False)


def test_a_registry_factory_is_called() -> None:
    registry = registry_of("stageflow.builtins")
    assert "builtins.assert" in registry


def test_the_tester_accepts_a_registry_factory_as_the_cli_does() -> None:
    registry = registry_from_modules(["stageflow.builtins"])
    assert "builtins.assert" in registry


def test_the_cli_accepts_module_and_attribute_as_the_tester_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stageflow.cli import main

    module = tmp_path / "named_stages_cli.py"
    module.write_text(NAMED)
    assert main(["stages", "--no-plugins", "--stages", f"{module}:REGISTRY"]) == 0
    assert "Named" in capsys.readouterr().out


def test_a_missing_attribute_is_named(tmp_path: Path) -> None:
    (tmp_path / "no_attr_stages.py").write_text("x = 1\n")
    with pytest.raises(StagesModuleError, match="has no attribute 'REGISTRY'"):
        registry_of(f"{tmp_path / 'no_attr_stages.py'}:REGISTRY")


def test_the_same_file_is_imported_once(tmp_path: Path) -> None:
    file = tmp_path / "once_stages.py"
    file.write_text(textwrap.dedent(NAMED))
    assert registry_of(f"{file}:REGISTRY") is registry_of(f"{file}:REGISTRY")


def test_merging_keeps_a_stage_reached_twice_once() -> None:
    reference = registry_of(str(REFERENCE_STAGES))
    merged = merge_registries([reference, reference])
    assert merged.names() == reference.names()
    assert isinstance(merged, stageflow.StageRegistry)


def test_a_module_name_is_not_shadowed_by_a_file_imported_under_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shadowed_stages.py").write_text(NAMED.replace("Named", "FromFile"))
    here = tmp_path / "here"
    here.mkdir()
    (here / "shadowed_stages.py").write_text(NAMED.replace("Named", "FromName"))
    assert "FromFile" in registry_of(f"{elsewhere / 'shadowed_stages.py'}:REGISTRY")
    monkeypatch.chdir(here)
    assert "FromName" in registry_of("shadowed_stages:REGISTRY")


def test_the_current_directory_comes_first_even_when_it_is_on_sys_path_already(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    for folder, stage in ((elsewhere, "Elsewhere"), (here, "Here")):
        folder.mkdir()
        (folder / "first_stages.py").write_text(NAMED.replace("Named", stage))
    monkeypatch.syspath_prepend(str(here))
    monkeypatch.syspath_prepend(str(elsewhere))  # elsewhere before here on sys.path
    monkeypatch.chdir(here)
    monkeypatch.delitem(sys.modules, "first_stages", raising=False)
    try:
        assert "Here" in registry_of("first_stages:REGISTRY")
    finally:
        # Not monkeypatch.delitem: it would put this module back after the test, and a
        # later test importing its own first_stages.py would get a hashed name.
        sys.modules.pop("first_stages", None)


def test_a_registry_factory_that_raises_is_named_as_called_not_imported(tmp_path: Path) -> None:
    module = tmp_path / "factory_stages.py"
    module.write_text("import stageflow\n\ndef registry(settings):\n    return None\n")
    with pytest.raises(StagesModuleError) as info:
        registry_of(str(module))
    assert info.value.reason.startswith(
        "calling its 'registry' attribute (a function that takes no arguments) raised "
        "TypeError: registry() missing 1 required positional argument: 'settings'"
    )


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_directory_is_named_as_a_directory(tmp_path: Path, suffix: str) -> None:
    package = tmp_path / "stagepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    with pytest.raises(StagesModuleError) as info:
        registry_of(f"{package}{suffix}")
    assert info.value.reason == (
        f"{package} is a directory, not a .py file; pass a .py file in it, or the package's "
        "module name ('stagepkg') from the directory above it"
    )


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (".", "is a directory, not a .py file; pass a .py file in it"),
        ("..", "is a directory, not a .py file; pass a .py file in it"),
        (".stages", "it is no module name; pass a path to a .py file (such as ./stages.py)"),
        ("", "it is no module name; pass a path to a .py file"),
    ],
)
def test_a_relative_or_empty_reference_is_a_stages_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str, reason: str
) -> None:
    # importlib read "." and ".stages" as relative imports: "importing it
    # raised TypeError: the 'package' argument is required", with its traceback.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StagesModuleError) as info:
        registry_of(ref)
    assert reason in info.value.reason


def test_a_reference_with_a_nul_character_is_a_stages_problem(tmp_path: Path) -> None:
    from stageflow.testing import CaseValidationError, load_cases, run_case

    with pytest.raises(StagesModuleError, match="it contains a NUL character"):
        registry_of("stages\0.py")
    (tmp_path / "pipeline.json").write_text(
        '{"api_version": "1.0", "entry": "end", "nodes": '
        '[{"id": "end", "type": "terminal", "result": {}, "artifacts": []}]}'
    )
    cases = tmp_path / "nul.cases.json"
    cases.write_text(
        '{"pipeline": "pipeline.json", "stages": "stages\\u0000.py", "cases": '
        '[{"name": "done", "payload": {}, "expect": {"status": "completed"}}]}'
    )
    [case] = load_cases(cases)
    with pytest.raises(CaseValidationError) as info:
        run_case(case)
    [problem] = info.value.problems
    assert problem.location == "$.stages"
    assert "it contains a NUL character; pass a module name or a path to a .py file" in (
        problem.message
    )


RAISES = """\
def helper():
    raise RuntimeError("no config")


helper()
"""


@pytest.mark.parametrize("by", ["file", "module name"])
def test_the_traceback_of_a_module_that_raised_starts_at_the_users_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    # It started with the frames of this loader and of importlib (9 of them
    # for a module name) before the first line of the module that raised.
    package = tmp_path / "tb_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "raising_stages.py"
    module.write_text(RAISES)
    monkeypatch.chdir(tmp_path)
    ref = str(module) if by == "file" else "tb_pkg.raising_stages"
    try:
        with pytest.raises(StagesModuleError) as info:
            registry_of(ref)
    finally:
        sys.modules.pop("tb_pkg", None)
    module = module.resolve()
    # Without the lines that only point at columns (~~~^^, written by Python 3.13).
    lines = [line for line in info.value.detail.splitlines() if line.strip(" ~^")]
    assert lines[:5] == [
        "Traceback (most recent call last):",
        f'  File "{module}", line 5, in <module>',
        "    helper()",
        f'  File "{module}", line 2, in helper',
        '    raise RuntimeError("no config")',
    ]
    assert lines[-1] == "RuntimeError: no config"


def test_a_syntax_error_shows_the_users_line_without_frames_of_the_loader(
    tmp_path: Path,
) -> None:
    module = tmp_path / "syntax_stages.py"
    module.write_text("def broken(:\n    pass\n")
    with pytest.raises(StagesModuleError) as info:
        registry_of(str(module))
    assert info.value.detail.splitlines()[:2] == [
        f'  File "{module.resolve()}", line 1',
        "    def broken(:",
    ]
    assert "importlib" not in info.value.detail
    assert "_stage_modules" not in info.value.detail


def test_a_registry_under_another_name_is_pointed_at(tmp_path: Path) -> None:
    # `--stages named_other.py` for a module with REGISTRY = StageRegistry()
    # was read as one registering into the default registry: its stages were
    # then "not registered", with the hint to pass --stages, which was given.
    module = tmp_path / "named_other.py"
    module.write_text(NAMED)
    with pytest.raises(StagesModuleError) as info:
        registry_of(str(module))
    assert info.value.reason == (
        "it has no 'registry' attribute and registered no stage into the default registry, "
        f"while it holds a StageRegistry named 'REGISTRY'; pass {module}:REGISTRY, or name it "
        "'registry'"
    )


def test_a_stage_packs_module_is_said_to_be_one(tmp_path: Path) -> None:
    # `--stages stageflow_echo_pack` imported the pack's module, which registers
    # only when its register(registry) is called: it added no stage, silently.
    module = tmp_path / "pack_module.py"
    module.write_text(
        "async def echo(ctx):\n    return {}\n\n\n"
        "def register(registry):\n    registry.add(echo, name='PackEcho')\n"
    )
    with pytest.raises(StagesModuleError) as info:
        registry_of(str(module))
    assert "while it has a register function: is it a stage pack's module?" in info.value.reason
    assert "loaded by its entry point" in info.value.reason


def test_a_module_registering_into_the_default_registry_may_hold_another(
    tmp_path: Path,
) -> None:
    module = tmp_path / "default_and_other.py"
    module.write_text(
        "import stageflow\n\nSPARE = stageflow.StageRegistry()\n\n\n"
        "@stageflow.register_stage('DefaultAndOther')\nasync def stage(ctx):\n    return {}\n"
    )
    try:
        assert "DefaultAndOther" in registry_of(str(module))
    finally:
        # The default registry is process-wide: later tests list it.
        del default_registry()._entries["DefaultAndOther"]
