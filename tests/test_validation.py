"""Loading: JSON Schema, structure and graph checks, all problems at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal

import stageflow
import stageflow.builtins

FULL = jsonschema.Draft202012Validator(stageflow.pipeline_schema())


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


def test_a_null_where_a_type_is_expected_is_named_once() -> None:
    found = problems({"api_version": "1.0", "entry": "a", "nodes": None})
    assert [p.location for p in found] == ["$.nodes"]
    assert found[0].message.endswith("expected array, got null")
    found = problems({"api_version": "1.0", "entry": "a", "nodes": True})
    assert found[0].message.endswith("expected array, got boolean true")


def test_missing_nodes_is_reported() -> None:
    found = problems({"api_version": "1.0", "entry": "a"})
    assert any('field "nodes" is required; add it' in p.message for p in found)


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
    assert 'api_version "2.0" is not supported; this stageflow reads "1.0"' in found[0].message


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
    assert "branch 'a' can write 'out' and branch 'b' 'out.deep' inside it" in found[0].message
    document["nodes"][0]["merge"] = "last"
    load(document)


@pytest.mark.parametrize("reduced", ["out", "out.deep"])
def test_a_write_inside_another_branchs_path_is_not_told_to_declare_a_reducer(
    reduced: str,
) -> None:
    """A reducer covers writes of exactly its path: declaring one, as told, changed nothing."""
    document = doc(
        [
            parallel("fan", ["a", "b"], next="end"),
            stage("a", "Set", outputs={"v": "out.deep"}),
            stage("b", "Set", outputs={"v": "out"}),
            terminal("end"),
        ],
        reducers={reduced: "merge"},
    )
    [found] = problems(document)
    assert found.location == "$.nodes[0].children"
    assert "branch 'b' can write 'out' and branch 'a' 'out.deep' inside it" in found.message
    assert "declare a reducer" not in found.message
    assert "make both branches write 'out' whole" in found.message


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


# ------------------------------------------------ every problem at once (issue 21)


def test_schema_problems_do_not_hide_the_problems_of_valid_nodes() -> None:
    document = doc(
        [
            {**terminal("end"), "colour": "red"},  # its own shape is invalid
            stage("a", "Nope", next="nowhere"),
            stage("b", "Set", next="end", config={"values": {}}),
        ],
        entry="a",
    )
    found = {(p.location, p.message.split(";")[0]) for p in problems(document)}
    assert ("$.nodes[0]", "node 'end' has unknown field(s) 'colour'") in found
    assert any(loc == "$.nodes[1].next" and "'nowhere'" in msg for loc, msg in found)
    assert any(loc == "$.nodes[1].stage" and "'Nope'" in msg for loc, msg in found)
    # 'end' is invalid but exists: an edge to it is not dangling.
    assert not any("'end', which is not a node" in msg for _, msg in found)


def test_a_top_level_schema_problem_does_not_hide_graph_problems() -> None:
    document = doc([stage("a", "Nope", next="b"), stage("b", "Set", next="b")], colour="red")
    found = problems(document)
    assert [p.location for p in found] == ["$", "$.nodes[0].stage", "$.nodes[0]"]
    assert "ever ends" in found[2].message


def test_a_loop_with_no_way_out_is_refused() -> None:
    document = doc(
        [stage("a", "Set", next="b"), stage("b", "Set", next="a"), terminal("end")],
        entry="a",
    )
    document["nodes"][2] = terminal("end")
    document["nodes"].append(stage("start", "Set", next="a"))
    document["entry"] = "start"
    found = problems(document)
    loop = [p for p in found if "ever ends" in p.message]
    assert len(loop) == 1
    assert "'a', 'b'" in loop[0].message
    assert loop[0].location == "$.nodes[0]"


def test_a_condition_whose_only_edges_loop_is_refused() -> None:
    document = doc(
        [{"id": "c", "type": "condition", "conditions": [{"if": True, "then": "c"}]}],
    )
    assert any("no path from 'c' ever ends" in p.message for p in problems(document))


@pytest.mark.parametrize(
    ("branches", "location"),
    [
        (
            {"conditions": [{"if": False, "then": "end"}, {"if": {"var": "go"}, "then": "c"}]},
            "$.nodes[0].conditions[1].then",
        ),
        ({"conditions": [{"if": {"var": "go"}, "then": "end"}], "else": "c"}, "$.nodes[0].else"),
    ],
    ids=["then", "else"],
)
def test_a_condition_leading_back_to_itself_is_refused(
    branches: dict[str, Any], location: str
) -> None:
    # Nothing runs in between: the same rules read the same context and take
    # the same way again, until limits.max_steps (with it null, forever).
    document = doc([{"id": "c", "type": "condition", **branches}, terminal("end")])
    found = [p for p in problems(document) if p.location == location]
    assert len(found) == 1
    assert "condition node 'c' leads back to itself" in found[0].message
    assert "point it at the node that should run next" in found[0].message


def condition(node_id: str, then: str, otherwise: str) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "condition",
        "conditions": [{"if": {"var": node_id}, "then": then}],
        "else": otherwise,
    }


def test_condition_nodes_leading_around_in_a_loop_are_refused_once_each() -> None:
    # 'a' -> 'b' -> 'a' loaded (each may also go on to 'end', so every path
    # can end): nothing runs in between, so once the way around was taken
    # the session went around until limits.max_steps (with it null, forever).
    document = doc(
        [
            condition("a", "b", "end"),
            condition("b", "end", "a"),
            condition("c", "d", "end"),
            condition("d", "e", "end"),
            condition("e", "c", "d"),  # 'c' -> 'd' -> 'e' -> 'c', and 'd' <-> 'e'
            {"id": "end", "type": "terminal"},
        ],
    )
    document["nodes"][0]["conditions"].append({"if": True, "then": "c"})
    loops = [p for p in problems(document) if "lead around in a loop" in p.message]
    # One problem per group of nodes that loop (c, d and e loop two ways).
    assert [(p.location, p.message.split(":")[0]) for p in loops] == [
        ("$.nodes[0]", "condition nodes lead around in a loop ('a' -> 'b' -> 'a')"),
        ("$.nodes[2]", "condition nodes lead around in a loop ('c' -> 'd' -> 'e' -> 'c')"),
    ]
    assert "point one of them at a node that should run next" in loops[0].message


def test_thousands_of_condition_loops_are_refused_in_linear_time() -> None:
    # Each loop found rebuilt a topological sort of every condition left, so
    # a document of 10,000 such loops took minutes to refuse (the suite's
    # timeout fails it); and a group of conditions that all lead to one
    # another is one problem, at its first node, its shortest way around.
    loops = 10_000
    nodes = []
    for i in range(loops):
        nodes.append(condition(f"a{i}", f"b{i}", f"a{i + 1}" if i + 1 < loops else "end"))
        nodes.append(condition(f"b{i}", f"a{i}", "end"))
    nodes.append({"id": "end", "type": "terminal"})
    found = [p for p in problems(doc(nodes)) if "lead around in a loop" in p.message]
    assert len(found) == loops
    assert [p.location for p in found[:2]] == ["$.nodes[0]", "$.nodes[2]"]
    assert "('a1' -> 'b1' -> 'a1')" in found[1].message
    grouped = doc(
        [
            condition("a", "b", "end"),
            condition("b", "c", "a"),
            condition("c", "d", "end"),
            condition("d", "a", "c"),
            {"id": "end", "type": "terminal"},
        ]
    )
    [one] = [p for p in problems(grouped) if "lead around in a loop" in p.message]
    assert (one.location, one.message.split(":")[0]) == (
        "$.nodes[0]",
        "condition nodes lead around in a loop ('a' -> 'b' -> 'a')",
    )


def test_condition_nodes_with_a_stage_on_the_way_around_may_loop() -> None:
    registry = fake_registry()
    document = doc(
        [
            condition("a", "b", "end"),
            condition("b", "work", "end"),
            stage("work", "Set", config={"values": {"a": False}}, next="a"),
            {"id": "end", "type": "terminal"},
        ],
    )
    load(document, registry)


@pytest.mark.parametrize(
    ("rule", "location"),
    [
        ({"==": [{"var": "x"}, 1], ">": [{"var": "y"}, 2]}, "$.nodes[0].conditions[0].if"),
        ({"or": [True, {"!": [1], "var": "x"}]}, "$.nodes[0].conditions[0].if.or[1]"),
    ],
    ids=["top", "inside"],
)
def test_operations_written_as_one_object_are_refused(rule: Any, location: str) -> None:
    # An object of several keys is a literal in JsonLogic: always true.
    document = doc(
        [
            {
                "id": "c",
                "type": "condition",
                "conditions": [{"if": rule, "then": "a"}],
                "else": "b",
            },
            terminal("a"),
            terminal("b"),
        ]
    )
    found = [p for p in problems(document) if p.location == location]
    assert len(found) == 1
    assert "is a literal in JsonLogic, not operations, and is always true" in found[0].message
    assert '{"and": [' in found[0].message


def test_an_object_literal_that_is_data_is_left_as_it_is() -> None:
    rule = {"==": [{"var": "o"}, {"a": 1, "var": 2}]}  # keys that are not all operators
    load(
        doc(
            [
                {"id": "c", "type": "condition", "conditions": [{"if": rule, "then": "a"}]},
                terminal("a"),
            ]
        )
    )


def test_a_loop_left_only_through_an_error_edge_is_fine() -> None:
    load(doc([{**stage("a", "Set", next="a"), "fallback": "end"}, terminal("end")]))


def test_a_loop_left_through_a_condition_is_fine() -> None:
    load(
        doc(
            [
                stage("ask", "Set", next="check"),
                {
                    "id": "check",
                    "type": "condition",
                    "conditions": [{"if": {"var": "done"}, "then": "end"}],
                    "else": "ask",
                },
                terminal("end"),
            ]
        )
    )


# ------------------------------------------------- messages in JSON terms (issue 21)


def test_a_numeric_api_version_says_to_quote_it() -> None:
    (found,) = problems({"api_version": 1.0, "entry": "e", "nodes": [terminal("e")]})
    assert found.location == "$.api_version"
    assert 'api_version is the string "1.0", not the number 1.0: quote it' in found.message


def test_config_problems_write_values_as_json() -> None:
    registry = stageflow.StageRegistry()

    @registry.register(
        "Flag",
        spec=stageflow.StageSpec(
            config={
                "type": "object",
                "properties": {"on": {"type": "string"}},
                "additionalProperties": False,
            }
        ),
    )
    async def flag(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {}

    document = doc(
        [stage("a", "Flag", next="end", config={"on": True, "x": {"y": 1}}), terminal("end")]
    )
    messages = " | ".join(p.message for p in problems(document, registry))
    assert "got boolean true" in messages
    assert '"x"' in messages
    assert "True" not in messages
    assert "'x'" not in messages


def test_a_bad_context_path_says_what_a_path_looks_like() -> None:
    document = doc([stage("a", "Set", next="end", outputs={"v": "a..b"}), terminal("end")])
    (found,) = problems(document)
    assert found.location == "$.nodes[0].outputs.v"
    assert '"a..b" is not a context path' in found.message
    assert '"order.items.0.sku"' in found.message


def test_an_unregistered_builtin_stage_says_where_the_builtins_are() -> None:
    document = doc([stage("a", "builtins.set", next="end", config={"value": 1}), terminal("end")])
    (found,) = problems(document)
    assert "registry=stageflow.builtins.registry()" in found.message
    assert "--stages stageflow.builtins" in found.message


def test_a_typo_in_an_edge_is_reported_once_with_the_id_it_likely_meant() -> None:
    # The typo came with one "unreachable" problem for every node after it.
    document = doc(
        [
            stage("a", "Set", next="decdie"),
            stage("decide", "Set", next="b"),
            stage("b", "Set", next="end"),
            terminal("end"),
            terminal("orphan"),
        ]
    )
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    assert [(p.location, p.message) for p in info.value.problems] == [
        (
            "$.nodes[0].next",
            "stage node 'a' points at 'decdie', which is not a node; did you mean 'decide'? "
            "use one of: a, b, decide, end, orphan",
        ),
        (
            "$.nodes[4]",
            "node 'orphan' is unreachable from the entry 'a'; connect it with 'next', a "
            "condition, a parallel branch or a map body, or remove it",
        ),
    ]


def test_two_outputs_of_a_stage_at_one_path_are_a_problem() -> None:
    # Before: the output written later replaced the other in silence.
    document = doc([stage("a", "Set", next="end", outputs={"v": "x", "w": "x"}), terminal("end")])
    (found,) = problems(document)
    assert found.location == "$.nodes[0].outputs.w"
    assert "stage node 'a' writes output 'v' and output 'w' both at 'x'" in found.message


def test_a_stage_output_written_around_an_earlier_one_is_a_problem() -> None:
    # Before: "x" replaced the "x.y" written just before it, in silence.
    document = doc([stage("a", "Set", next="end", outputs={"v": "x.y", "w": "x"}), terminal("end")])
    (found,) = problems(document)
    assert found.location == "$.nodes[0].outputs.w"
    assert "writes output 'w' at 'x', around output 'v' written inside it before" in (found.message)
    # The other order writes "x.y" inside the "x" written before it: fine.
    load(doc([stage("a", "Set", next="end", outputs={"w": "x", "v": "x.y"}), terminal("end")]))


def _calling(subpipeline: dict[str, Any]) -> dict[str, Any]:
    """A document whose main path runs ``subpipeline``, declared as ``page``."""
    return doc(
        [{"id": "call", "type": "subpipeline", "pipeline": "page", "next": "end"}, terminal()],
        subpipelines={"page": subpipeline},
    )


def test_a_schema_problem_in_a_subpipeline_names_its_node_or_the_subpipeline() -> None:
    # Before: every problem under $.subpipelines was said of "the pipeline",
    # a node's unknown field included ("the pipeline has unknown field(s) 'nxt'").
    document = _calling(
        {
            "entry": "read",
            "nodes": [
                {**stage("read", "Set", next="done"), "nxt": "done"},
                {**parallel("fan", ["read"], next="done"), "policy": "some"},
                terminal("done"),
            ],
            "colour": "red",
        }
    )
    said = {p.location: p.message for p in problems(document)}
    assert said == {
        "$.subpipelines.page": "subpipeline 'page' has unknown field(s) 'colour'; remove them "
        "or fix the spelling (allowed: entry, metadata, nodes, reducers, subpipelines)",
        "$.subpipelines.page.nodes[0]": "node 'read' has unknown field(s) 'nxt'; remove them "
        "or fix the spelling (allowed: arguments, config, description, fallback, id, next, "
        "on_error, outputs, retry, stage, timeout, type)",
        "$.subpipelines.page.nodes[1].policy": "node 'fan': \"some\" is not allowed here; use "
        'one of "all", "any"',
    }


def test_an_entry_the_schema_refuses_is_reported_once() -> None:
    # Before: the graph checks said it again ("entry 'a b' is not a node id;
    # use one of: ..."), and an empty list of nodes gave "use one of: none".
    document = doc([stage("a", "Nope", next="end"), terminal()], entry="a b")
    found = problems(document)
    assert [p.location for p in found] == ["$.entry", "$.nodes[0].stage"]  # the nodes' own go on
    assert found[0].message.startswith('the pipeline: "a b" is not a node id;')
    empty = _calling({"entry": "read", "nodes": []})
    assert [(p.location, p.message) for p in problems(empty)] == [
        ("$.subpipelines.page.nodes", "subpipeline 'page': [] is too short (at least 1)")
    ]


def test_a_subpipelines_metadata_is_checked_as_the_top_levels() -> None:
    # pipeline-format.md: a subpipeline's metadata is "as at the top level",
    # where description and version are strings; the schema took any value.
    for field in ("description", "version"):
        document = _calling({"entry": "done", "nodes": [terminal("done")]})
        document["subpipelines"]["page"]["metadata"] = {field: 3}
        assert not FULL.is_valid(document)
        [found] = problems(document)
        assert found.location == f"$.subpipelines.page.metadata.{field}"
        assert found.message == "subpipeline 'page': expected string, got integer 3"
        document["subpipelines"]["page"]["metadata"] = {field: "3", "owner": 3}
        assert FULL.is_valid(document)
        load(document)


def test_a_node_id_with_an_accented_letter_says_ids_are_ascii() -> None:
    # Before: '"étape" is not a node id; an id is a letter or "_", ...': é is a letter.
    [found] = problems(doc([stage("a", "Set", next="étape"), terminal()]))
    assert found.location == "$.nodes[0].next"
    assert found.message == (
        'node \'a\': "étape" is not a node id; an id is an ASCII letter or "_", then ASCII '
        'letters, digits, "_", "." or "-" (no accented letter, space, "/" or line break)'
    )


def test_a_misspelt_builtin_stage_is_not_told_to_load_the_builtins_it_was_loaded_with() -> None:
    # Before: "... it is a built-in stage, which a registry holds only when
    # asked: load the pipeline with registry=stageflow.builtins.registry()":
    # the very registry it was given.
    document = doc([stage("a", "builtins.concatt", next="end"), terminal("end")])
    (found,) = problems(document, registry=stageflow.builtins.registry())
    assert found.location == "$.nodes[0].stage"
    assert found.message.endswith("did you mean 'builtins.concat'? fix the name or register it")
    assert "stageflow.builtins.registry()" not in found.message


def test_the_stages_an_unknown_name_is_told_of_are_at_most_twenty() -> None:
    # docs/limits.md: a problem lists 20 names, then "and N more".
    registry = stageflow.StageRegistry()
    for n in range(30):
        registry.register(f"Pack{n:02}")(_nothing)
    (found,) = problems(doc([stage("a", "Nope", next="end"), terminal("end")]), registry)
    assert "(known: Pack00, Pack01, " in found.message
    assert "Pack19 and 12 more); register it or fix the name" in found.message


async def _nothing(ctx: stageflow.StageContext) -> dict[str, Any]:
    return {}


def test_a_schema_problem_outside_the_nodes_does_not_hide_the_subpipeline_calls() -> None:
    # Before: a typo in "limits" or "metadata" hid an undeclared or recursive
    # subpipeline, though every node was valid (pipeline-format.md: schema
    # problems do not hide the others).
    document = _calling({"entry": "again", "nodes": [terminal("again")]})
    document["subpipelines"]["page"]["nodes"] = [
        {"id": "again", "type": "subpipeline", "pipeline": "page", "next": "done"},
        {"id": "lost", "type": "subpipeline", "pipeline": "nope", "next": "done"},
        terminal("done"),
    ]
    document["subpipelines"]["page"]["nodes"][0]["fallback"] = "lost"
    document["limits"] = {"max_stepz": 1}
    document["metadata"] = {"name": 5}
    found = [(p.location, p.message.split(";")[0]) for p in problems(document)]
    assert found == [
        ("$.limits", "the pipeline has unknown field(s) 'max_stepz'"),
        ("$.metadata.name", "the pipeline: expected string, got integer 5"),
        (
            "$.subpipelines.page.nodes[1].pipeline",
            "subpipeline node 'lost' runs 'nope', which is not declared (declared: page)",
        ),
        (
            "$.subpipelines.page.nodes[0].pipeline",
            "subpipeline node 'again' makes the subpipelines recursive (page -> page)",
        ),
    ]
    # An invalid node anywhere still holds them back: they need every node.
    document["nodes"][1]["colour"] = "red"
    assert [p.location for p in problems(document)][-1] == "$.nodes[1]"


def test_limits_the_schema_refuses_do_not_bound_the_nesting_of_subpipelines() -> None:
    # max_depth 100 is refused (at most 64): the calls, 33 deep, are then not
    # measured against the default 32, a bound the document did not set.
    def calling(n: int) -> dict[str, Any]:
        call = {"id": "call", "type": "subpipeline", "pipeline": f"s{n}", "next": "done"}
        return {"entry": "call", "nodes": [call, terminal("done")]}

    document = doc(calling(0)["nodes"], subpipelines={f"s{n}": calling(n + 1) for n in range(33)})
    document["subpipelines"]["s32"] = {"entry": "done", "nodes": [terminal("done")]}
    assert [p.location for p in problems(document)] == ["$.subpipelines"]  # 33 > 32
    document["limits"] = {"max_depth": 100}
    assert [p.location for p in problems(document)] == ["$.limits.max_depth"]


def test_the_unknown_fields_a_problem_names_are_at_most_twenty_each_cut_short() -> None:
    # docs/limits.md: a problem lists 20 names, then "and N more". Before, every
    # unknown key of the document was repeated in full in the message.
    node = {**stage("a", "Set", next="end"), **{f"x{n:02}": n for n in range(30)}}
    node["y" * 5000] = 1
    (found,) = problems(doc([node, terminal("end")]))
    assert found.location == "$.nodes[0]"
    assert found.message.startswith(
        "node 'a' has unknown field(s) 'x00', 'x01', 'x02', 'x03', 'x04', 'x05', 'x06', "
        "'x07', 'x08', 'x09', 'x10', 'x11', 'x12', 'x13', 'x14', 'x15', 'x16', 'x17', "
        "'x18', 'x19' and 11 more; remove them or fix the spelling (allowed: "
    )
    assert len(found.message) < 500
    node = {**stage("a", "Set", next="end"), "y" * 5000: 1}
    (found,) = problems(doc([node, terminal("end")]))
    assert f"unknown field(s) '{'y' * 56}...; remove them" in found.message


def test_a_long_loop_of_conditions_is_named_by_its_ends() -> None:
    # Before: every id of the loop was in the message (thousands of conditions,
    # one message as long as the document); docs/limits.md bounds the names
    # of a problem.
    ids = [f"c{n:02}" for n in range(30)]
    nodes = [condition(c, ids[(n + 1) % 30], "end") for n, c in enumerate(ids)]
    (found,) = problems(doc([*nodes, {"id": "end", "type": "terminal"}]))
    assert found.location == "$.nodes[0]"
    assert found.message.startswith(
        "condition nodes lead around in a loop ('c00' -> 'c01' -> 'c02' -> 'c03' -> 'c04' "
        "-> ... -> 'c26' -> 'c27' -> 'c28' -> 'c29' -> 'c00'): nothing runs"
    )
