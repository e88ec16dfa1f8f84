"""Stage packs: discovery by entry point, loading, clashes, failures, strict mode.

The example pack (examples/stage-pack, distribution ``stageflow-echo-pack``)
is installed in the test environment by ``make test``; the other packs are
fake entry points pointing at ``tests/stage_packs.py`` and friends.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path
from typing import Any

import pytest
import stageflow_echo_pack
import trio
from structlog.testing import capture_logs

import stageflow
import stageflow._plugins

ROOT = Path(__file__).parents[1]
PACK_DIR = ROOT / "examples" / "stage-pack"
ECHO_SOURCE = "stage pack 'echo' (stageflow-echo-pack 0.1.0)"
GROUP = stageflow.STAGE_PACK_GROUP


@pytest.fixture(autouse=True)
def _echo_pack_installed() -> None:
    installed = {p.name for p in stageflow.list_stage_packs()}
    assert "echo" in installed, (
        "the example stage pack is not installed in this environment; "
        "run `make test`, or `pip install -e examples/stage-pack`"
    )


@pytest.fixture
def fake_packs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Append (name, 'module:attr') pairs to add fake packs next to the installed ones."""
    added: list[tuple[str, str]] = []
    real = tuple(entry_points(group=GROUP))

    def fake_entry_points(*, group: str) -> EntryPoints:
        assert group == GROUP
        fakes = (EntryPoint(name, value, GROUP) for name, value in added)
        return EntryPoints((*real, *fakes))

    monkeypatch.setattr(stageflow._plugins, "entry_points", fake_entry_points)
    return added


# -- the example pack ------------------------------------------------------------------


def test_example_pack_is_discovered_with_its_distribution() -> None:
    echo = [p for p in stageflow.list_stage_packs() if p.name == "echo"]
    assert echo == [
        stageflow.StagePack(
            name="echo",
            value="stageflow_echo_pack:register",
            distribution="stageflow-echo-pack",
            version="0.1.0",
        )
    ]
    assert echo[0].source == ECHO_SOURCE


@pytest.mark.anyio
async def test_example_pipeline_runs_with_the_pack_loaded_by_entry_point() -> None:
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["echo"])
    assert report.ok
    assert [(p.name, p.distribution, p.version, p.stages) for p in report.loaded] == [
        ("echo", "stageflow-echo-pack", "0.1.0", ("EchoLLM",))
    ]
    assert [(e.name, e.source) for e in registry.catalogue(core=False)] == [
        ("EchoLLM", ECHO_SOURCE)
    ]

    pipeline = stageflow.Pipeline.load(PACK_DIR / "pipeline.json", registry=registry)
    session = stageflow.Session(
        pipeline, registry=registry, payload={"question": "what is a stage pack?"}
    )
    result = await session.run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert result.result == {"status": "answered"}
    assert result.artifacts == {
        "answer.text": "echo-small heard: what is a stage pack?",
        "answer.finish_reason": "stop",
        "answer.usage": {"model": "echo-small", "prompt_tokens": 5, "completion_tokens": 7},
    }
    assert [dict(e.payload) for e in result.history if e.type == "llm_usage"] == [
        {"model": "echo-small", "prompt_tokens": 5, "completion_tokens": 7}
    ]


def test_example_pipeline_needs_the_pack() -> None:
    with pytest.raises(stageflow.PipelineValidationError, match="EchoLLM"):
        stageflow.Pipeline.load(PACK_DIR / "pipeline.json", registry=stageflow.StageRegistry())


def test_example_pack_own_tests_pass() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cov"],
        cwd=PACK_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b7 passed\b", proc.stdout), proc.stdout


def test_example_readme_snippet_runs() -> None:
    readme = (PACK_DIR / "README.md").read_text()
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", readme, re.S)
    assert match is not None, "the README's runnable snippet is missing"
    proc = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    artifacts = proc.stdout.strip().splitlines()[-1]
    assert "'answer.text': 'echo-small heard: what is a stage pack?'" in artifacts


# -- selection ---------------------------------------------------------------------------


def test_loading_all_goes_in_name_order(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs += [("zeta", "stage_packs:register_shout"), ("alpha", "stage_packs")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins()
    assert [p.name for p in report.loaded] == ["alpha", "echo", "zeta"]
    assert report.failed == ()
    assert registry.names(core=False) == ("EchoLLM", "Lower", "Shout", "Upper")


def test_module_form_entry_point_uses_its_register_function(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs.append(("text", "stage_packs"))
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["text"], strict=True)
    assert [(p.name, p.value, p.distribution, p.stages) for p in report.loaded] == [
        ("text", "stage_packs", None, ("Lower", "Upper"))
    ]
    assert registry.get("Upper").source == "stage pack 'text' (stage_packs)"


def test_named_packs_load_in_the_given_order_once(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs += [("zeta", "stage_packs:register_shout"), ("alpha", "stage_packs")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["zeta", "alpha", "zeta"])
    assert [p.name for p in report.loaded] == ["zeta", "alpha"]
    assert "EchoLLM" not in registry


def test_a_single_string_is_one_name(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs.append(("alpha", "stage_packs"))
    report = stageflow.StageRegistry().load_plugins("alpha")
    assert [p.name for p in report.loaded] == ["alpha"]


def test_empty_selection_loads_nothing() -> None:
    registry = stageflow.StageRegistry()
    assert registry.load_plugins([]) == stageflow.PluginReport()
    assert registry.names(core=False) == ()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (b"echo", r"load_plugins\(names=...\) was given a bytes, b'echo'; pass a list"),
        (5, r"load_plugins\(names=...\) was given an int, 5; pass a list"),
        (["echo", None], r"load_plugins\(names=...\) was given None among the names; pass"),
        ([b"echo"], r"load_plugins\(names=...\) was given a bytes among the names; pass"),
    ],
)
def test_names_that_are_no_pack_names_are_a_type_error(names: Any, message: str) -> None:
    # bytes were read as the names 101, 99, 104, 111; an int said "'int' object is not iterable".
    registry = stageflow.StageRegistry()
    with pytest.raises(TypeError, match=message):
        registry.load_plugins(names)
    assert registry.names(core=False) == ()


def test_unknown_name_is_an_error_listing_installed_packs(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs.append(("alpha", "stage_packs"))
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.PluginNotFoundError) as caught:
        registry.load_plugins(["alpha", "ecko"])
    err = caught.value
    assert isinstance(err, stageflow.RegistryError)
    assert isinstance(err, LookupError)
    assert err.names == ("ecko",)
    assert err.installed == ("alpha", "echo")
    assert "no stage pack named 'ecko' is installed" in str(err)
    assert "installed stage packs: alpha, echo" in str(err)
    assert registry.names(core=False) == (), "nothing is loaded when a requested name is unknown"


def test_pack_names_its_own_stages_source_even_if_it_passes_one(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs.append(("labelled", "stage_packs:register_with_own_source"))
    registry = stageflow.StageRegistry()
    registry.load_plugins(["labelled"], strict=True)
    assert registry.get("Labelled").source == (
        "stage pack 'labelled' (stage_packs:register_with_own_source)"
    )


def test_loading_a_pack_again_changes_nothing() -> None:
    registry = stageflow.StageRegistry()
    first = registry.load_plugins(["echo"])
    entry = registry.get("EchoLLM")
    second = registry.load_plugins(["echo"], strict=True)
    assert second == first
    assert registry.get("EchoLLM") is entry


def test_pack_with_no_stages_loads_empty(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs.append(("empty", "stage_packs:register_nothing"))
    report = stageflow.StageRegistry().load_plugins(["empty"], strict=True)
    assert [(p.name, p.stages) for p in report.loaded] == [("empty", ())]


# -- clashes -----------------------------------------------------------------------------


def test_clash_between_two_packs_names_both_and_the_other_packs_load(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs += [("echo-copy", "stage_packs:register_echo_copy"), ("alpha", "stage_packs")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins()
    assert [p.name for p in report.loaded] == ["alpha", "echo"]
    assert [p.name for p in report.failed] == ["echo-copy"]
    error = report.failed[0].error
    assert error.pack == "echo-copy"
    copy_source = "stage pack 'echo-copy' (stage_packs:register_echo_copy)"
    assert ECHO_SOURCE in str(error)
    assert copy_source in str(error)
    conflict = error.__cause__
    assert isinstance(conflict, stageflow.StageConflictError)
    assert error.cause is conflict
    assert (conflict.name, conflict.first, conflict.second) == ("EchoLLM", ECHO_SOURCE, copy_source)
    assert registry.get("EchoLLM").source == ECHO_SOURCE


def test_clash_with_a_stage_already_registered_names_both(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs.append(("text", "stage_packs"))
    registry = stageflow.StageRegistry()

    @registry.register("Upper", source="stageflow.builtins")
    async def builtin_upper(ctx: stageflow.StageContext) -> None:
        return None

    report = registry.load_plugins(["text"])
    assert report.loaded == ()
    message = str(report.failed[0].error)
    assert "'Upper' is registered by both stageflow.builtins and stage pack 'text'" in message
    assert "Lower" not in registry, "a pack that clashes registers none of its stages"
    assert registry.get("Upper").target is builtin_upper


def test_clash_on_a_later_stage_leaves_none_of_the_pack(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs += [("text", "stage_packs"), ("more", "stage_packs:register_fresh_and_upper")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["text", "more"])
    assert [p.name for p in report.failed] == ["more"]
    assert "Fresh" not in registry
    assert registry.names(core=False) == ("Lower", "Upper")


def test_every_clashing_name_is_listed(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs += [("text", "stage_packs"), ("copy", "stage_packs:register_upper_and_lower")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["text", "copy"])
    message = str(report.failed[0].error)
    assert "stage name 'Lower' is registered by both stage pack 'text'" in message
    assert "(also clashing: 'Upper')" in message


def test_installed_pack_clashing_with_a_registered_stage_names_its_distribution() -> None:
    registry = stageflow.StageRegistry()
    registry.add(stageflow_echo_pack.EchoLLM, name="EchoLLM", source="stageflow.builtins")
    report = registry.load_plugins(["echo"])
    error = report.failed[0].error
    assert (error.pack, error.distribution) == ("echo", "stageflow-echo-pack 0.1.0")
    assert str(error).startswith(
        "stage pack 'echo' (from stageflow-echo-pack 0.1.0) was not loaded: stage name "
        f"'EchoLLM' is registered by both stageflow.builtins and {ECHO_SOURCE}"
    )
    assert registry.get("EchoLLM").source == "stageflow.builtins"


# -- failures ----------------------------------------------------------------------------


def test_broken_pack_is_reported_while_the_others_load(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs += [("broken", "stage_pack_broken:register"), ("text", "stage_packs")]
    registry = stageflow.StageRegistry()
    with capture_logs() as logs:
        report = registry.load_plugins()
    assert not report.ok
    assert [p.name for p in report.loaded] == ["echo", "text"]
    assert [(p.name, p.value) for p in report.failed] == [("broken", "stage_pack_broken:register")]
    error = report.failed[0].error
    assert isinstance(error, stageflow.PluginLoadError)
    assert isinstance(error, stageflow.RegistryError)
    assert error.pack == "broken"
    assert isinstance(error.__cause__, ModuleNotFoundError)
    assert str(error).startswith(
        "stage pack 'broken' could not be imported from 'stage_pack_broken:register': "
        "ModuleNotFoundError: No module named 'stageflow_test_provider_sdk_that_is_not_installed'"
    )
    assert registry.names(core=False) == ("EchoLLM", "Lower", "Upper")
    assert [(log["event"], log["log_level"], log["pack"]) for log in logs] == [
        ("plugin.failed", "warning", "broken")
    ]


def test_register_that_raises_leaves_no_stage_behind(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs.append(("half", "stage_packs:register_then_fail"))
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["half"])
    error = report.failed[0].error
    assert isinstance(error.__cause__, RuntimeError)
    assert "failed in its register function" in str(error)
    assert "provider settings are missing" in str(error)
    assert "HalfDone" not in registry


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("stage_pack_no_register", "has no register(registry) function"),
        ("stage_packs:EchoImpostor", "names the class EchoImpostor"),
        ("stage_packs:NOT_CALLABLE", "names an int, not a function"),
        ("stage_packs:register_async", "is 'async def'"),
        ("stage_packs:register_returning", "returned a list; it must register"),
        ("stage_packs:register_returning_coroutine", "returned a coroutine; it must register"),
        ("stage_packs:no_such_function", "could not be imported"),
        # Both said "AttributeError: 'NoneType' object has no attribute 'group'".
        ("stage-packs:register", "is not 'module' or 'module:function'"),
        ("stage_packs:register()", "is not 'module' or 'module:function'"),
        (
            "stage_packs:register_without_the_registry",
            "has the signature (), so it cannot be called with the registry alone; define "
            "'def register(registry)'",
        ),
        (
            "stage_packs:register_with_more",
            "has the signature (registry: 'stageflow.StageRegistry', settings: 'dict[str, Any]')",
        ),
    ],
)
def test_entry_point_of_the_wrong_shape_is_reported(
    fake_packs: list[tuple[str, str]], value: str, expected: str
) -> None:
    fake_packs.append(("odd", value))
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["odd"])
    assert report.loaded == ()
    assert expected in str(report.failed[0].error)
    assert registry.names(core=False) == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("register_raising_unprintable", "UnprintableError: <UnprintableError whose str() failed>"),
        ("register_exiting_unprintable", "SystemExit(<Unprintable whose repr() failed>)"),
        ("register_with_unprintable_default", "has the signature <Signature whose str() failed>"),
        (
            "register_unprintable_stage",
            "RegistryError: stage 'Unprintable' from stage_packs.<Unprintable whose repr() failed> "
            "is neither",
        ),
    ],
)
def test_a_pack_whose_objects_cannot_be_shown_is_reported(
    fake_packs: list[tuple[str, str]], value: str, expected: str
) -> None:
    # Formatting the message (str(exc), repr of an exit code, of a default in
    # the signature, of the registered object) raised out of load_plugins.
    fake_packs.append(("unprintable", f"stage_packs:{value}"))
    report = stageflow.StageRegistry().load_plugins(["unprintable"])
    assert report.loaded == ()
    assert expected in str(report.failed[0].error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "stage_pack_exits:register",
            "could not be imported from 'stage_pack_exits:register': SystemExit('usage: "
            "stage_pack_exits [--help]'): it called sys.exit()",
            id="at-import",
        ),
        pytest.param(
            "stage_packs:register_exits",
            "failed in its register function 'stage_packs:register_exits': SystemExit(3): "
            "it called sys.exit()",
            id="in-register",
        ),
    ],
)
def test_a_pack_that_exits_fails_and_the_others_load(
    fake_packs: list[tuple[str, str]], value: str, expected: str
) -> None:
    fake_packs += [("exits", value), ("text", "stage_packs")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins()
    assert [p.name for p in report.loaded] == ["echo", "text"]
    assert [p.name for p in report.failed] == ["exits"]
    error = report.failed[0].error
    assert str(error).startswith(f"stage pack 'exits' {expected}")
    assert isinstance(error.__cause__, SystemExit)
    assert "Exited" not in registry
    with pytest.raises(stageflow.PluginLoadError, match=r"it called sys\.exit\(\)"):
        stageflow.StageRegistry().load_plugins(["exits"], strict=True)


def test_a_pack_cannot_take_names_kept_for_the_builtins(
    fake_packs: list[tuple[str, str]],
) -> None:
    """Once it could, in a registry without them: builtins.register then failed on it."""
    import stageflow.builtins

    assert stageflow._plugins.BUILTINS_PREFIX == stageflow.builtins.PREFIX
    fake_packs += [("shadow", "stage_packs:register_builtin_names"), ("text", "stage_packs")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["shadow", "text"])
    assert [p.name for p in report.loaded] == ["text"]
    [failed] = report.failed
    assert str(failed.error) == (
        "stage pack 'shadow' was not loaded: it registers 'builtins.set', 'builtins.shout', in "
        "the 'builtins.' namespace that is kept for stageflow.builtins (so that those names "
        "always mean the built-in stages); rename them in the pack (e.g. 'shadow.<name>'), or "
        "load only the packs you need with load_plugins(names=[...])"
    )
    assert isinstance(failed.error.__cause__, stageflow.RegistryError)
    assert "Fine" not in registry
    stageflow.builtins.register(registry)
    assert registry.get("builtins.set").target is stageflow.builtins.SetStage


def _install(site: Path, name: str, entry_points_txt: str) -> None:
    """A distribution's metadata in ``site`` (a directory put on sys.path), as pip writes it."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points_txt)


def test_a_distribution_with_unreadable_entry_points_hides_no_other_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once one such distribution, stage pack or not, made every lookup raise a bare TypeError."""
    _install(tmp_path, "broken-tool", "[console_scripts]\nbroken-tool\n")
    _install(tmp_path, "text-pack", f"[{GROUP}]\ntext = stage_packs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [(p.name, p.distribution) for p in stageflow.list_stage_packs()] == [
        ("echo", "stageflow-echo-pack"),
        ("text", "text-pack"),
    ]
    registry = stageflow.StageRegistry()
    with capture_logs() as logs:
        report = registry.load_plugins(["text"], strict=True)
    assert [p.name for p in report.loaded] == ["text"]
    assert registry.names(core=False) == ("Lower", "Upper")
    [log] = logs
    assert (log["event"], log["log_level"], log["distribution"]) == (
        "plugin.unreadable",
        "warning",
        "broken-tool 1.0",
    )
    assert log["error"].startswith(
        "the entry point metadata of distribution 'broken-tool' cannot be read (TypeError: "
    )
    assert log["error"].endswith("reinstall or fix that distribution")


def test_same_pack_name_from_two_sources_is_a_failure(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs += [("twice", "stage_packs"), ("twice", "stage_packs:register_shout")]
    registry = stageflow.StageRegistry()
    report = registry.load_plugins(["twice"])
    assert [p.name for p in report.failed] == ["twice"]
    message = str(report.failed[0].error)
    assert "declared by more than one distribution" in message
    assert "stage_packs, stage_packs:register_shout" in message
    assert registry.names(core=False) == ()


# -- strict mode -------------------------------------------------------------------------


def test_strict_raises_the_first_failure(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs += [("broken", "stage_pack_broken:register"), ("text", "stage_packs")]
    registry = stageflow.StageRegistry()
    with capture_logs() as logs, pytest.raises(stageflow.PluginLoadError) as caught:
        registry.load_plugins(strict=True)
    assert logs == [], "the caller gets the error; a plugin.failed warning said it twice"
    assert caught.value.pack == "broken"
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert registry.names(core=False) == (), "'broken' is first by name, so nothing was loaded"


def test_strict_keeps_the_packs_loaded_before_the_failure(
    fake_packs: list[tuple[str, str]],
) -> None:
    fake_packs += [("text", "stage_packs"), ("more", "stage_packs:register_fresh_and_upper")]
    registry = stageflow.StageRegistry()
    with pytest.raises(stageflow.PluginLoadError) as caught:
        registry.load_plugins(["text", "more", "echo"], strict=True)
    assert caught.value.pack == "more"
    assert isinstance(caught.value.__cause__, stageflow.StageConflictError)
    assert registry.names(core=False) == ("Lower", "Upper")


# -- the core stays provider-free ---------------------------------------------------------

PROVIDER_CLIENTS = {
    "aiohttp",
    "anthropic",
    "boto3",
    "cohere",
    "google-genai",
    "google-generativeai",
    "groq",
    "httpx",
    "langchain",
    "langchain-core",
    "litellm",
    "llama-index",
    "mistralai",
    "ollama",
    "openai",
    "requests",
    "tiktoken",
    "transformers",
}


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_core_dependencies_hold_no_provider_client() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_requirement_name(r) for r in project["dependencies"]}
    assert "anyio" in names, "the parse found the real dependency list"
    assert not names & PROVIDER_CLIENTS
    assert not {n for n in names if n.startswith(("langchain", "llama-index", "openai"))}


def test_requirement_names_are_normalised() -> None:
    assert _requirement_name("Google_GenAI[aiohttp]>=1.0; python_version>'3'") == "google-genai"
    assert _requirement_name("openai") in PROVIDER_CLIENTS


# -- docs --------------------------------------------------------------------------------


def test_stage_packs_doc_snippets_run() -> None:
    text = (ROOT / "docs" / "stage-packs.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4, "update this test when the doc's snippets change"
    namespace: dict[str, Any] = {
        "__name__": "stage_packs_doc",
        "__file__": str(PACK_DIR / "tests" / "test_doc.py"),
        "stageflow": stageflow,
        "EchoLLM": stageflow_echo_pack.EchoLLM,
    }
    with capture_logs():
        for block in blocks:
            exec(compile(textwrap.dedent(block), "docs/stage-packs.md", "exec"), namespace)
    registry = stageflow.StageRegistry()
    namespace["register"](registry)
    assert registry.names(core=False) == ("EchoLLM",)
    assert [p.name for p in namespace["report"].loaded] == ["echo"]
    namespace["test_entry_point_registers_the_stage_with_the_pack_as_source"]()
    trio.run(namespace["test_pipeline_gets_the_echoed_reply"])


def test_clash_message_in_the_doc_is_the_real_one(fake_packs: list[tuple[str, str]]) -> None:
    fake_packs.append(("echo-copy", "stage_packs:register_echo_copy"))
    report = stageflow.StageRegistry().load_plugins(["echo", "echo-copy"])
    text = " ".join((ROOT / "docs" / "stage-packs.md").read_text().split())
    shown = str(report.failed[0].error).replace(
        "(stage_packs:register_echo_copy)", "(stageflow-echo-copy 1.0.0)"
    )
    shown = shown.replace("'echo-copy' was", "'echo-copy' (from stageflow-echo-copy 1.0.0) was")
    assert shown in text
