"""The CLI: `stageflow schema`, `stageflow stages`, and stage modules and packs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cli_support import (
    EXAMPLE,
    FAILING_STAGES,
    PIPELINE,
    ROOT,
    STAGES,
    Cli,
    Outcome,
    restore_logging,  # noqa: F401  (autouse fixture)
    write_json,
    write_module,
)
from fakes import doc, stage, terminal

import stageflow
import stageflow._plugins
import stageflow.tracing
from stageflow._stages import default_registry
from stageflow.cli import ExitCode

# ----------------------------------------------------------------------- schema


def test_schema_prints_the_draft_2020_12_pipeline_schema(cli: Cli) -> None:
    got = cli("schema")
    assert got.code == ExitCode.OK
    schema = got.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    assert "enum" not in schema["$defs"]["stage_node"]["properties"]["stage"]


@pytest.mark.parametrize(
    ("options", "given"),
    [(["--stages", STAGES], "--stages"), (["--plugin", "echo"], "--plugin")],
)
def test_schema_with_stage_options_but_not_with_stages_is_a_usage_error(
    cli: Cli, options: list[str], given: str
) -> None:
    # `stageflow schema --stages s.py` printed the schema without the stage
    # names, as if --stages had not been given, and exited 0.
    got = cli("schema", *options)
    assert got.code == ExitCode.USAGE
    assert got.out == ""
    assert got.err.strip().splitlines() == [
        f"stageflow: {given} chooses the stage names of --with-stages, and without it the "
        f"schema names no stage; add --with-stages, or leave {given} out"
    ]


def test_schema_with_stages_lists_the_registered_names(cli: Cli) -> None:
    got = cli("schema", "--with-stages", "--stages", STAGES, "--no-plugins")
    assert got.code == ExitCode.OK
    schema = got.json()
    jsonschema.Draft202012Validator.check_schema(schema)
    stage_field = schema["$defs"]["stage_node"]["properties"]["stage"]
    names = ["InitStage", "SleepStage", "WaitStage", "WorkerAStage", "WorkerBStage"]
    assert stage_field["enum"] == names
    assert f"Registered stages: {', '.join(names)}." in stage_field["description"]
    validator = jsonschema.Draft202012Validator(schema)
    reference = json.loads(Path(PIPELINE).read_text())
    assert list(validator.iter_errors(reference)) == []
    reference["nodes"][3]["stage"] = "WorkerCStage"
    assert [list(e.absolute_path) for e in validator.iter_errors(reference)] == [
        ["nodes", 3, "stage"]
    ]


def test_pipeline_schema_returns_a_fresh_copy() -> None:
    first = stageflow.pipeline_schema(["B", "A", "B"])
    assert first["$defs"]["stage_node"]["properties"]["stage"]["enum"] == ["A", "B"]
    first["$defs"].clear()
    assert "stage_node" in stageflow.pipeline_schema()["$defs"]
    assert "enum" not in stageflow.pipeline_schema()["$defs"]["stage_node"]["properties"]["stage"]


@pytest.mark.parametrize("bad", ["", 3, None])
def test_pipeline_schema_rejects_bad_stage_names(bad: Any) -> None:
    with pytest.raises(stageflow.RegistryError, match="stage names must be non-empty strings"):
        stageflow.pipeline_schema(["ok", bad])


# ----------------------------------------------------------------------- stages


def test_stages_prints_the_catalogue(cli: Cli) -> None:
    got = cli("stages", "--stages", STAGES, "--no-plugins")
    assert got.code == ExitCode.OK
    lines = got.out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert names == ["InitStage", "SleepStage", "WaitStage", "WorkerAStage", "WorkerBStage"]
    assert "WaitStage  (stageflow (core))" in lines
    assert lines[:5] == [
        "InitStage  (stages.InitStage)",
        "    Score a text and decide whether to fan out",
        "    arguments: user_id, text (required)",
        "    config:    mode",
        "    outputs:   score, need_parallel",
    ]
    assert "WorkerAStage  (stages.worker_a)" in got.out
    assert "WorkerBStage  (stages.worker_b)" in got.out


def test_stages_json_has_the_full_specs(cli: Cli) -> None:
    entries = {e["name"]: e for e in cli("stages", "--stages", STAGES, "--json").json()}
    assert {"InitStage", "WorkerAStage", "WorkerBStage", "WaitStage", "EchoLLM"} <= set(entries)
    init = entries["InitStage"]
    assert init["source"] == "stages.InitStage"
    assert init["spec"]["arguments"]["required"] == ["text"]
    assert init["spec"]["config"]["properties"]["mode"] == {"enum": ["demo", "strict"]}
    assert init["spec"]["allowed_inputs"] == []
    assert entries["WorkerAStage"]["spec"]["arguments"] is None
    wait = entries["WaitStage"]["spec"]
    assert wait["config"]["required"] == ["input"]


def test_stages_lists_inputs_and_events(cli: Cli, tmp_path: Path) -> None:
    module = write_module(
        tmp_path / "io_stages.py",
        """
        import stageflow

        registry = stageflow.StageRegistry()


        @registry.register("Ask")
        class Ask(stageflow.BaseStage):
            spec = stageflow.StageSpec(
                description="Ask a person",
                allowed_inputs=[stageflow.InputSpec("answer", {"type": "string"}, "the reply")],
                allowed_events=[stageflow.EventSpec("asked")],
            )

            async def run(self, ctx):
                return None
        """,
    )
    got = cli("stages", "--stages", module)
    assert "    inputs:    answer" in got.out.splitlines()
    assert "    events:    asked" in got.out.splitlines()
    spec = cli("stages", "--stages", module, "--json").json()[0]["spec"]
    assert spec["allowed_inputs"] == [
        {"type": "answer", "description": "the reply", "schema": {"type": "string"}}
    ]


def test_stages_keeps_a_description_of_several_lines_under_its_stage(
    cli: Cli, tmp_path: Path
) -> None:
    # Its later lines were printed flush left, like stages of their own, and
    # an escape sequence in it reached the terminal.
    module = write_module(
        tmp_path / "doc_stages.py",
        '''
        import stageflow

        registry = stageflow.StageRegistry()


        @registry.register(
            "Summarise",
            spec=stageflow.StageSpec(
                description="""Summarise a text.

                Calls the model \\x1b[31mtwice\\x1b[0m.
                """
            ),
        )
        async def summarise(ctx):
            return None
        ''',
    )
    got = cli("stages", "--stages", module, "--no-plugins")
    assert got.code == ExitCode.OK
    lines = got.out.splitlines()
    start = lines.index("Summarise  (doc_stages.summarise)")
    assert lines[start + 1 : start + 4] == [
        "    Summarise a text.",
        "    Calls the model \\x1b[31mtwice\\x1b[0m.",
        "    arguments: any",
    ]


# ------------------------------------------------------- stage modules and packs


@pytest.fixture
def default_stage_names() -> Iterator[list[str]]:
    """Remove what a test registers into the process-wide default registry."""
    added: list[str] = []
    yield added
    for name in added:
        default_registry()._entries.pop(name, None)


def test_a_module_without_registry_registers_into_the_default_one(
    cli: Cli, tmp_path: Path, default_stage_names: list[str]
) -> None:
    default_stage_names.append("CliTestDefault")
    module = write_module(
        tmp_path / "default_stages.py",
        """
        import stageflow


        @stageflow.register_stage("CliTestDefault")
        async def stage(ctx):
            return {"done": True}
        """,
    )
    pipeline = write_json(
        tmp_path / "p.json",
        doc([stage("s", "CliTestDefault", next="end", outputs={"done": "done"}), terminal("end")]),
    )
    got = cli("run", pipeline, "--stages", module, "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["status"] == "completed"
    # Imported again by a second command in the same process: no conflict.
    assert cli("stages", "--stages", module).code == ExitCode.OK


def test_built_in_stages_come_with_stages_stageflow_builtins(cli: Cli, tmp_path: Path) -> None:
    pipeline = write_json(
        tmp_path / "p.json",
        doc(
            [
                {
                    "id": "count",
                    "type": "stage",
                    "stage": "builtins.increment",
                    "arguments": {"value": "n"},
                    "outputs": {"value": "n"},
                    "next": "end",
                },
                terminal("end", "n"),
            ]
        ),
    )
    assert cli("validate", pipeline).code == ExitCode.USAGE
    got = cli("run", pipeline, "--stages", "stageflow.builtins", "--payload", '{"n": 41}', "--json")
    assert got.code == ExitCode.OK, got.err
    assert got.json()["artifacts"] == {"n": 42}


def test_one_name_from_two_modules_is_a_conflict(cli: Cli, tmp_path: Path) -> None:
    first = write_module(tmp_path / "first_stages.py", FAILING_STAGES)
    second = write_module(tmp_path / "second_stages.py", FAILING_STAGES)
    got = cli("stages", "--stages", first, "--stages", second)
    assert got.code == ExitCode.USAGE
    assert "stage name 'Boom' is registered by both first_stages.boom and second_stages.boom" in (
        got.err
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("registry = {}\n", "its 'registry' attribute is a dict, not a stageflow.StageRegistry"),
        ("def registry():\n    return 1\n", "its 'registry' attribute is an int, not a"),
        ("raise RuntimeError('no config')\n", "importing it raised RuntimeError: no config"),
        ("import no_such_dependency_xyz\n", "importing it raised ModuleNotFoundError"),
    ],
)
def test_bad_stages_modules_exit_2(cli: Cli, tmp_path: Path, source: str, message: str) -> None:
    module = write_module(tmp_path / "bad_stages.py", source)
    got = cli("stages", "--stages", module)
    assert got.code == ExitCode.USAGE
    assert message in got.err
    if "raised" in message:
        assert "Traceback (most recent call last)" in got.err


def test_missing_stages_module_exits_2(cli: Cli) -> None:
    got = cli("stages", "--stages", "no_such_module_xyz")
    assert got.code == ExitCode.USAGE
    assert "no module named 'no_such_module_xyz'" in got.err
    got = cli("stages", "--stages", "missing/stages.py")
    assert "--stages missing/stages.py: no such file" in got.err


def test_a_stages_directory_is_said_to_be_one(cli: Cli) -> None:
    # `--stages examples/reference` said "no such file" of a directory that exists.
    got = cli("stages", "--stages", str(EXAMPLE))
    assert got.code == ExitCode.USAGE
    assert got.err.strip() == (
        f"stageflow: --stages {EXAMPLE}: {EXAMPLE} is a directory, not a .py file; pass a .py "
        f"file in it, or the package's module name ('{EXAMPLE.name}') from the directory above it"
    )


def test_a_stages_file_whose_name_is_no_identifier_still_imports(cli: Cli, tmp_path: Path) -> None:
    module = write_module(tmp_path / "my-stages.v2.py", FAILING_STAGES)
    got = cli("stages", "--stages", module)
    assert got.code == ExitCode.OK, got.err
    assert got.out.splitlines()[0].startswith("Boom  (my_stages_v2")


ECHO_SOURCE = "stage pack 'echo' (stageflow-echo-pack 0.1.0)"


@pytest.fixture
def fake_packs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Append (name, 'module:attr') to add stage packs next to the installed ones."""
    added: list[tuple[str, str]] = []
    real = tuple(entry_points(group=stageflow.STAGE_PACK_GROUP))

    def fake_entry_points(*, group: str) -> EntryPoints:
        fakes = (EntryPoint(n, v, group) for n, v in added)
        return EntryPoints((*real, *fakes))

    monkeypatch.setattr(stageflow._plugins, "entry_points", fake_entry_points)
    return added


def sources(got: Outcome) -> dict[str, str]:
    return {e["name"]: e["source"] for e in got.json()}


def test_installed_stage_packs_load_by_default(cli: Cli) -> None:
    got = cli("stages", "--json")
    assert got.code == ExitCode.OK, got.err
    assert sources(got)["EchoLLM"] == ECHO_SOURCE


def test_plugin_loads_only_the_named_packs(cli: Cli, fake_packs: list[tuple[str, str]]) -> None:
    fake_packs.append(("text", "stage_packs"))
    assert {"EchoLLM", "Upper", "Lower"} <= set(sources(cli("stages", "--json")))
    got = cli("stages", "--plugin", "text", "--json")
    assert got.code == ExitCode.OK, got.err
    assert "EchoLLM" not in sources(got)
    assert sources(got)["Upper"] == "stage pack 'text' (stage_packs)"


def test_no_plugins_loads_none(cli: Cli) -> None:
    got = cli("stages", "--no-plugins", "--json")
    assert got.code == ExitCode.OK
    assert "EchoLLM" not in sources(got)
    assert cli("stages", "--no-plugins", "--plugin", "echo").code == ExitCode.USAGE


def test_a_missing_named_pack_is_an_error(cli: Cli) -> None:
    got = cli("stages", "--plugin", "ecko")
    assert got.code == ExitCode.USAGE
    assert "no stage pack named 'ecko' is installed" in got.err


def test_a_broken_pack_is_left_out_with_a_warning_unless_named(
    cli: Cli, fake_packs: list[tuple[str, str]]
) -> None:
    fake_packs.append(("broken", "stage_pack_broken"))
    got = cli("stages", "--json")
    assert got.code == ExitCode.OK
    assert "EchoLLM" in sources(got)
    assert "plugin.failed" in got.err
    assert "broken" in got.err
    got = cli("stages", "--plugin", "broken")
    assert got.code == ExitCode.USAGE
    assert "broken" in got.err
    # Said once, as the error: a plugin.failed warning repeated it.
    assert "plugin.failed" not in got.err
    assert got.err.count("could not be imported") == 1


def test_a_named_packs_error_is_one_escaped_line(
    cli: Cli, fake_packs: list[tuple[str, str]]
) -> None:
    # Its line break started a line of its own, its escape sequence cleared
    # the terminal: the plugin.failed log line escaped them, the error did not.
    fake_packs.append(("odd", "stage_packs:register_raising_escapes"))
    got = cli("stages", "--plugin", "odd")
    assert got.code == ExitCode.USAGE
    (line,) = got.err.splitlines()
    assert line.startswith("stageflow: stage pack 'odd'")
    assert "RuntimeError: provider settings\\n\\x1b[2Jare missing" in line
