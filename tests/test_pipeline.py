"""Pipeline loading edge cases: bad files, non-JSON documents, problem order, immutability."""

from __future__ import annotations

import datetime
import enum
import json
import math
from pathlib import Path
from typing import Any

import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal

import stageflow


def problems(document: Any) -> list[stageflow.Problem]:
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    return list(info.value.problems)


def test_schema_problems_are_in_document_order() -> None:
    nodes = [stage(f"s{i}", "Set", next=f"s{i + 1}") for i in range(11)] + [terminal("s11")]
    nodes[2]["typo"] = 1
    nodes[10]["typo"] = 1
    found = problems(doc(nodes))
    assert [p.location for p in found] == ["$.nodes[2]", "$.nodes[10]"]


def test_each_missing_field_is_named_once() -> None:
    # {"entry": "x"} said 'field "api_version" is required' twice and never
    # that "nodes" was missing: each required-field error named the first.
    found = problems({"entry": "x"})
    assert [p.message for p in found] == [
        'the pipeline: field "api_version" is required; add it',
        'the pipeline: field "nodes" is required; add it',
    ]


def test_a_file_that_is_not_utf8_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.json"
    path.write_bytes(b'{"api_version": "1.0", \xff\xfe}')
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.load(path, registry=fake_registry())
    [problem] = info.value.problems
    assert problem.location == "$"
    assert "UTF-8" in problem.message
    assert str(path) in str(info.value)


def test_a_yaml_date_is_reported_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "api_version: '1.0'\n"
        "entry: end\n"
        "nodes:\n"
        "  - id: end\n"
        "    type: terminal\n"
        "    result: {when: 2024-01-01}\n"
    )
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.load(path, registry=fake_registry())
    [problem] = info.value.problems
    assert problem.location == "$.nodes[0].result.when"
    assert "date" in problem.message
    assert "quote" in problem.message


@pytest.mark.parametrize(
    ("value", "location"),
    [
        ({1, 2}, "$.nodes[0].result.x"),
        (math.nan, "$.nodes[0].result.x"),
        ({1: "a"}, "$.nodes[0].result.x key 1"),
        (datetime.datetime(2024, 1, 1), "$.nodes[0].result.x"),
    ],
)
def test_non_json_values_in_a_document_are_problems(value: object, location: str) -> None:
    document = doc([terminal("end", result={"x": value})])
    assert [p.location for p in problems(document)] == [location]


def test_a_document_nested_absurdly_deep_is_a_problem_not_a_recursion_error() -> None:
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"d": deep}
    found = problems(doc([terminal("end", result=deep)]))
    assert len(found) == 1
    assert "levels deep" in found[0].message


def test_reducers_of_a_loaded_pipeline_are_read_only() -> None:
    pipeline = load(
        doc(
            [parallel("fan", ["a"], next="end"), stage("a", "Set"), terminal("end")],
            reducers={"x": "append"},
        )
    )
    assert pipeline.reducers == {"x": stageflow.Reducer.APPEND}
    with pytest.raises(TypeError):
        pipeline.reducers["x"] = stageflow.Reducer.SUM  # type: ignore[index]


def test_condition_rules_of_a_loaded_pipeline_are_read_only() -> None:
    pipeline = load(
        doc(
            [
                {
                    "id": "pick",
                    "type": "condition",
                    "conditions": [{"if": {"==": [{"var": "x"}, [1, 2]]}, "then": "end"}],
                },
                terminal("end"),
            ]
        )
    )
    node = pipeline.node("pick")
    assert isinstance(node, stageflow.ConditionNode)
    rule = node.conditions[0].if_
    with pytest.raises(TypeError):
        rule["=="] = []
    assert rule["=="][1] == (1, 2)
    assert stageflow.jsonlogic.apply(rule, {"x": [1, 2]}) is True


class _Kind(enum.StrEnum):
    STAGE = "stage"
    TERMINAL = "terminal"


class _Attempts(enum.IntEnum):
    THREE = 3


@pytest.mark.anyio
async def test_a_document_with_enum_members_copies_and_snapshots_as_plain_json() -> None:
    # A document built in Python may hold str and int subclasses; to_dict's
    # fast copy (marshal) takes exact types only and once raised ValueError,
    # at every snapshot of the session too.
    document = doc(
        [
            {
                **stage("a", "Set", next="end", config={"values": {"n": _Attempts.THREE}}),
                "type": _Kind.STAGE,
            },
            {**terminal("end"), "type": _Kind.TERMINAL},
        ]
    )
    registry = fake_registry()
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    copied = pipeline.to_dict()
    assert [n["type"] for n in copied["nodes"]] == ["stage", "terminal"]
    assert copied["nodes"][0]["config"]["values"]["n"] == 3
    session = stageflow.Session(pipeline, registry=registry)
    result = await session.run()
    assert result.status == "completed"
    snapshot = session.to_dict()
    assert snapshot["pipeline"]["document"]["nodes"][0]["type"] == "stage"
    restored = stageflow.Session.from_dict(snapshot, registry=registry)
    assert restored.status == "completed"


@pytest.mark.parametrize("registry", [5, {}, "default"])
def test_a_registry_argument_that_is_no_registry_is_refused_by_name(
    tmp_path: Path, registry: object
) -> None:
    # from_dict took it as the pipeline's registry (a later Session failed on
    # it), or raised "argument of type 'int' is not iterable" once a stage
    # node was looked up in it; load() did the same.
    document = {
        "api_version": "1.0",
        "entry": "a",
        "nodes": [
            {"id": "a", "type": "stage", "stage": "WaitStage", "config": {"input": "go"}},
        ],
    }
    file = tmp_path / "p.json"
    file.write_text(json.dumps(document))
    for reading in (
        lambda: stageflow.Pipeline.from_dict(document, registry=registry),  # type: ignore[arg-type]
        lambda: stageflow.Pipeline.from_dict({"api_version": "1.0"}, registry=registry),  # type: ignore[arg-type]
        lambda: stageflow.Pipeline.load(file, registry=registry),  # type: ignore[arg-type]
    ):
        with pytest.raises(
            TypeError, match=r"registry=\.\.\. was given .*; pass a stageflow\.StageRegistry"
        ):
            reading()


@pytest.mark.parametrize(
    ("path", "named"),
    [(1, "an int"), (b"p.json", "a bytes"), ({"api_version": "1.0"}, "a dict")],
)
def test_load_given_no_path_says_what_to_pass(path: object, named: str) -> None:
    # Path() raised its own TypeError, which named neither the call nor the fix
    # (nor from_dict, for a document passed to load).
    with pytest.raises(TypeError, match=r"Pipeline\.load\(path=\.\.\.\) was given ") as caught:
        stageflow.Pipeline.load(path)  # type: ignore[arg-type]
    assert named in str(caught.value)
    assert ("Pipeline.from_dict(document)" in str(caught.value)) is isinstance(path, dict)
