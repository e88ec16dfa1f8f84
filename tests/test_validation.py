"""Loading: JSON Schema, structure and graph checks, all problems at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal

import stageflow


def problems(
    document: Any, registry: stageflow.StageRegistry | None = None
) -> list[stageflow.Problem]:
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=registry or fake_registry())
    return list(info.value.problems)


def locations(document: Any) -> list[str]:
    return [p.location for p in problems(document)]


def test_valid_document_loads() -> None:
    pipeline = load(
        doc([stage("a", "Set", next="end"), terminal("end")], metadata={"name": "demo"})
    )
    assert pipeline.name == "demo"
    assert pipeline.entry == "a"
    assert isinstance(pipeline.node("a"), stageflow.StageNode)
    assert len(pipeline.digest) == 64


def test_nodes_as_object_is_a_clear_problem_not_a_crash() -> None:
    # Seed defect 2: `nodes` defaulted to {} and parsing crashed deep inside.
    found = problems({"api_version": "1.0", "entry": "a", "nodes": {}})
    assert [p.location for p in found] == ["$.nodes"]
    assert "expected array" in found[0].message


def test_missing_nodes_is_reported() -> None:
    found = problems({"api_version": "1.0", "entry": "a"})
    assert any("'nodes' is a required property" in p.message for p in found)


def test_not_an_object() -> None:
    assert [p.location for p in problems([1, 2])] == ["$"]


def test_every_graph_problem_is_reported_at_once() -> None:
    document = doc(
        [
            stage("start", "Set", next="nowhere"),  # dangling next (seed defect 7)
            stage("dup", "Set", next="cond"),
            stage("dup", "Set", next="cond"),  # duplicate id
            {
                "id": "cond",
                "type": "condition",
                "conditions": [{"if": True, "then": "end"}],
                "else": "gone",
            },
            stage("unknown", "NoSuchStage", next="end"),  # unknown stage
            parallel("fan", ["start"]),  # parallel on the main path without next
            terminal("end"),
        ],
        entry="start",
    )
    document["nodes"][0]["next"] = "nowhere"
    found = problems(document)
    where = [p.location for p in found]
    assert "$.nodes[0].next" in where  # dangling
    assert "$.nodes[2].id" in where  # duplicate
    assert "$.nodes[3].else" in where  # broken else
    assert "$.nodes[4].stage" in where  # unknown stage
    messages = "\n".join(p.message for p in found)
    assert "'nowhere', which is not a node" in messages
    assert "used twice" in messages
    assert "'gone', which is not a node" in messages
    assert "'NoSuchStage', which is not registered" in messages


def test_stage_on_main_path_without_next() -> None:
    # Seed defect 7: a missing edge used to show up only at run time.
    found = problems(doc([stage("a", "Set"), terminal("end")]))
    assert ("$.nodes[0].next", True) in [(p.location, "has no 'next'" in p.message) for p in found]


def test_parallel_on_main_path_without_next() -> None:
    found = problems(doc([parallel("fan", ["a"]), stage("a", "Set")]))
    assert [p.location for p in found] == ["$.nodes[0].next"]
    assert "parallel node 'fan'" in found[0].message


def test_branch_node_without_next_is_fine() -> None:
    load(doc([parallel("fan", ["a"], next="end"), stage("a", "Set"), terminal("end")]))


def test_unreachable_node() -> None:
    found = problems(
        doc([stage("a", "Set", next="end"), stage("lost", "Set", next="end"), terminal("end")])
    )
    assert [(p.location, "unreachable" in p.message) for p in found] == [("$.nodes[1]", True)]


def test_unknown_entry() -> None:
    found = problems(doc([terminal("end")], entry="begin"))
    assert found[0].location == "$.entry"
    assert "use one of: end" in found[0].message


def test_unknown_api_version_names_supported_versions() -> None:
    document = doc([terminal("end")])
    document["api_version"] = "2.0"
    found = problems(document)
    assert found[0].location == "$.api_version"
    assert "'1.0'" in found[0].message


def test_unknown_field_names_node_and_field() -> None:
    document = doc([terminal("end")])
    document["nodes"][0]["guards"] = []
    found = problems(document)
    assert found[0].location == "$.nodes[0]"
    assert "node 'end'" in found[0].message
    assert "'guards'" in found[0].message


def test_unknown_node_type() -> None:
    found = problems(doc([{"id": "x", "type": "loop"}]))
    assert found[0].location == "$.nodes[0].type"
    assert '"stage"' in found[0].message


def test_branches_that_may_write_one_path_need_a_reducer() -> None:
    document = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Set", outputs={"v": "out"}),
            stage("b", "Set", outputs={"v": "out.deep"}),
            terminal("end"),
        ]
    )
    found = problems(document)
    assert [p.location for p in found] == ["$.nodes[0].children"]
    assert "'a' and 'b' can both write 'out'" in found[0].message
    document["nodes"][0]["merge"] = "last"
    load(document)


def test_stage_spec_is_checked() -> None:
    registry = stageflow.StageRegistry()

    @registry.register(
        "Typed",
        spec=stageflow.StageSpec(
            arguments={
                "type": "object",
                "properties": {"x": {}},
                "required": ["x"],
                "additionalProperties": False,
            },
            outputs={"type": "object", "properties": {"y": {}}},
            config={"type": "object", "properties": {"n": {"type": "integer"}}},
        ),
    )
    async def typed(ctx: stageflow.StageContext) -> dict[str, object]:
        return {"y": 1}

    node = stage(
        "t", "Typed", next="end", arguments={"z": "z"}, outputs={"nope": "n"}, config={"n": "x"}
    )
    found = problems(doc([node, terminal("end")]), registry)
    where = sorted(p.location for p in found)
    assert where == [
        "$.nodes[0].arguments",
        "$.nodes[0].arguments.z",
        "$.nodes[0].config.n",
        "$.nodes[0].outputs.nope",
    ]


def test_load_reports_malformed_json_with_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"api_version": "1.0",\n  "entry": }')
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.load(path, registry=fake_registry())
    assert "line 2" in info.value.problems[0].message
    assert str(path) in str(info.value)


def test_load_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("api_version: '1.0'\nentry: end\nnodes:\n  - {id: end, type: terminal}\n")
    assert stageflow.Pipeline.load(path).entry == "end"


def test_load_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc([terminal("end")])))
    assert stageflow.Pipeline.load(path).nodes[0].id == "end"


def test_error_lists_every_problem_in_its_message() -> None:
    document = doc([stage("a", "Nope", next="x"), terminal("end")])
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=fake_registry(), source="mine.json")
    text = str(info.value)
    assert "mine.json" in text
    assert text.count("\n  - ") == len(info.value.problems) >= 3


def test_pipeline_model_is_frozen() -> None:
    pipeline = load(doc([stage("a", "Set", next="end", config={"k": [1]}), terminal("end")]))
    node = pipeline.node("a")
    with pytest.raises(AttributeError):
        node.next = "x"  # type: ignore[misc]
    assert pipeline.to_dict()["nodes"][0]["config"] == {"k": [1]}


def test_unknown_jsonlogic_operator_is_a_load_problem() -> None:
    rule = {"and": [{"==": [{"var": "x"}, 1]}, {"equals": [1, 1]}]}
    document = doc(
        [
            {
                "id": "c",
                "type": "condition",
                "conditions": [{"if": rule, "then": "end"}],
                "else": "end",
            },
            terminal("end"),
        ]
    )
    found = problems(document)
    assert [p.location for p in found] == ["$.nodes[0].conditions[0].if.and[1]"]
    assert "unknown JsonLogic operator 'equals'" in found[0].message


def test_jsonlogic_check_accepts_valid_rules_and_literals() -> None:
    assert (
        stageflow.jsonlogic.check({"if": [{"<": [{"var": "a"}, 3]}, "small", {"a": 1, "b": 2}]})
        == []
    )
    assert stageflow.jsonlogic.check(True) == []
