"""The pipeline JSON Schema (schemas/pipeline.schema.json) on its own, without the loader."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).parents[1]
SCHEMA_PATH = ROOT / "schemas" / "pipeline.schema.json"
# The seed's reference pipeline, verbatim: it must validate exactly as written.
REFERENCE_PIPELINE = """\
{
  "api_version": "1.0",
  "entry": "start",
  "metadata": {
    "name": "demo_full_flow"
  },
  "nodes": [
    {
      "id": "start",
      "type": "stage",
      "stage": "InitStage",
      "config": {
        "mode": "demo"
      },
      "arguments": {
        "user_id": "user_id",
        "text": "text"
      },
      "outputs": {
        "score": "score",
        "need_parallel": "need_parallel"
      },
      "next": "decide"
    },
    {
      "id": "decide",
      "type": "condition",
      "conditions": [
        {
          "if": {
            "==": [
              {
                "var": "need_parallel"
              },
              true
            ]
          },
          "then": "fanout"
        }
      ],
      "else": "finish"
    },
    {
      "id": "fanout",
      "type": "parallel",
      "policy": "all",
      "children": [
        "branch_a",
        "branch_b"
      ],
      "next": "finish"
    },
    {
      "id": "branch_a",
      "type": "stage",
      "stage": "WorkerAStage",
      "arguments": {
        "score": "score"
      },
      "outputs": {
        "a_result": "a_result"
      }
    },
    {
      "id": "branch_b",
      "type": "stage",
      "stage": "WorkerBStage",
      "arguments": {
        "score": "score"
      },
      "outputs": {
        "b_result": "b_result"
      }
    },
    {
      "id": "finish",
      "type": "terminal",
      "result": {
        "status": "ok"
      },
      "artifacts": [
        "score",
        "a_result",
        "b_result"
      ]
    }
  ]
}
"""

# Indexes of the reference pipeline's nodes, by id.
START, DECIDE, FANOUT, BRANCH_A, BRANCH_B, FINISH = range(6)

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def schema() -> Doc:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: Doc) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def reference() -> Doc:
    return json.loads(REFERENCE_PIPELINE)


def _errors(validator: jsonschema.Draft202012Validator, doc: Doc) -> list[tuple[str, str]]:
    return [(error.json_path, str(error.validator)) for error in validator.iter_errors(doc)]


def test_schema_is_a_valid_draft_2020_12_schema(schema: Doc) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_id_names_the_document_version(schema: Doc) -> None:
    assert schema["$id"] == "https://stageflow.dev/schemas/pipeline/1.0/pipeline.schema.json"


def _described(schema: Doc, where: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, subschema) for the root, every definition and every property."""
    yield where, schema
    for name, sub in schema.get("$defs", {}).items():
        yield from _described(sub, f"{where}/$defs/{name}")
    for name, sub in schema.get("properties", {}).items():
        yield from _described(sub, f"{where}/properties/{name}")
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict) and "properties" in sub:
            yield from _described(sub, f"{where}/{key}")


def test_every_definition_and_property_has_a_description(schema: Doc) -> None:
    missing = [
        where
        for where, sub in _described(schema, "#")
        if not (isinstance(sub.get("description"), str) and sub["description"].strip())
    ]
    assert missing == []


def test_reference_pipeline_is_valid(
    validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    assert _errors(validator, reference) == []


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[str | int, ...]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# (mutation of the reference pipeline, json_path of the error, validator keyword, message part)
BAD_DOCUMENTS = {
    "unknown top-level field": (
        _set(("subgraphs",), {}),
        "$",
        "additionalProperties",
        "'subgraphs'",
    ),
    "guards on a stage node": (
        _set(("nodes", START, "guards"), []),
        f"$.nodes[{START}]",
        "additionalProperties",
        "'guards'",
    ),
    "unknown field on a condition node": (
        _set(("nodes", DECIDE, "default"), "finish"),
        f"$.nodes[{DECIDE}]",
        "additionalProperties",
        "'default'",
    ),
    "unknown field on a parallel node": (
        _set(("nodes", FANOUT, "max_concurrency"), 2),
        f"$.nodes[{FANOUT}]",
        "additionalProperties",
        "'max_concurrency'",
    ),
    "unknown field on a terminal node": (
        _set(("nodes", FINISH, "next"), "start"),
        f"$.nodes[{FINISH}]",
        "additionalProperties",
        "'next'",
    ),
    "unknown field on a condition entry": (
        _set(("nodes", DECIDE, "conditions", 0, "else"), "finish"),
        f"$.nodes[{DECIDE}].conditions[0]",
        "additionalProperties",
        "'else'",
    ),
    "bad parallel policy": (
        _set(("nodes", FANOUT, "policy"), "some"),
        f"$.nodes[{FANOUT}].policy",
        "enum",
        "'some'",
    ),
    "bad parallel merge": (
        _set(("nodes", FANOUT, "merge"), "union"),
        f"$.nodes[{FANOUT}].merge",
        "enum",
        "'union'",
    ),
    "unknown node type": (
        _set(("nodes", START, "type"), "loop"),
        f"$.nodes[{START}].type",
        "enum",
        "'loop'",
    ),
    "node without id": (
        _delete(("nodes", FINISH, "id")),
        f"$.nodes[{FINISH}]",
        "required",
        "'id'",
    ),
    "stage node without stage": (
        _delete(("nodes", START, "stage")),
        f"$.nodes[{START}]",
        "required",
        "'stage'",
    ),
    "parallel node without children": (
        _delete(("nodes", FANOUT, "children")),
        f"$.nodes[{FANOUT}]",
        "required",
        "'children'",
    ),
    "parallel node with a repeated child": (
        _set(("nodes", FANOUT, "children"), ["branch_a", "branch_a"]),
        f"$.nodes[{FANOUT}].children",
        "uniqueItems",
        "non-unique",
    ),
    "nodes given as an object": (
        _set(("nodes",), {}),
        "$.nodes",
        "type",
        "'array'",
    ),
    "empty nodes list": (
        _set(("nodes",), []),
        "$.nodes",
        "minItems",
        "",
    ),
    "api_version 2.0 names the supported version": (
        _set(("api_version",), "2.0"),
        "$.api_version",
        "enum",
        "'1.0'",
    ),
    "missing entry": (
        _delete(("entry",)),
        "$",
        "required",
        "'entry'",
    ),
    "node id with a slash": (
        _set(("nodes", BRANCH_A, "id"), "fanout/branch_a"),
        f"$.nodes[{BRANCH_A}].id",
        "pattern",
        "'fanout/branch_a'",
    ),
    "edge to an id with a slash": (
        _set(("nodes", START, "next"), "fanout/decide"),
        f"$.nodes[{START}].next",
        "pattern",
        "'fanout/decide'",
    ),
    "empty context path in outputs": (
        _set(("nodes", START, "outputs", "score"), ""),
        f"$.nodes[{START}].outputs.score",
        "pattern",
        "''",
    ),
    "empty segment in an outputs context path": (
        _set(("nodes", START, "outputs", "score"), "a..b"),
        f"$.nodes[{START}].outputs.score",
        "pattern",
        "'a..b'",
    ),
    "empty segment in an artifact path": (
        _set(("nodes", FINISH, "artifacts"), ["score."]),
        f"$.nodes[{FINISH}].artifacts[0]",
        "pattern",
        "'score.'",
    ),
    "condition entry without then": (
        _delete(("nodes", DECIDE, "conditions", 0, "then")),
        f"$.nodes[{DECIDE}].conditions[0]",
        "required",
        "'then'",
    ),
    "unknown reducer": (
        _set(("reducers",), {"score": "average"}),
        "$.reducers.score",
        "enum",
        "'average'",
    ),
    "limits.max_steps 0": (
        _set(("limits",), {"max_steps": 0}),
        "$.limits.max_steps",
        "minimum",
        "0",
    ),
    "unknown limit": (
        _set(("limits",), {"max_branches": 4}),
        "$.limits",
        "additionalProperties",
        "'max_branches'",
    ),
}


@pytest.mark.parametrize(
    ("mutate", "json_path", "keyword", "message_part"),
    BAD_DOCUMENTS.values(),
    ids=BAD_DOCUMENTS.keys(),
)
def test_bad_document_reports_the_specific_error(
    validator: jsonschema.Draft202012Validator,
    reference: Doc,
    mutate: Callable[[Doc], None],
    json_path: str,
    keyword: str,
    message_part: str,
) -> None:
    mutate(reference)
    found = [
        error.message
        for error in validator.iter_errors(reference)
        if (error.json_path, error.validator) == (json_path, keyword)
    ]
    assert any(message_part in message for message in found), _errors(validator, reference)


def test_unknown_node_type_is_reported_once(
    validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    reference["nodes"][START]["type"] = "loop"
    assert _errors(validator, reference) == [(f"$.nodes[{START}].type", "enum")]


def test_node_without_type_is_reported_once(
    validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    del reference["nodes"][START]["type"]
    assert _errors(validator, reference) == [(f"$.nodes[{START}]", "required")]


def test_node_that_is_not_an_object_is_reported_once(
    validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    reference["nodes"][START] = "start"
    assert _errors(validator, reference) == [(f"$.nodes[{START}]", "type")]


def test_node_is_checked_only_by_its_own_type_definition(
    schema: Doc, validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    # `children` belongs to parallel nodes; on a stage node it is one error, from stage_node.
    reference["nodes"][START]["children"] = ["branch_a"]
    errors = list(validator.iter_errors(reference))
    assert [(error.json_path, error.validator) for error in errors] == [
        (f"$.nodes[{START}]", "additionalProperties")
    ]
    assert errors[0].schema == schema["$defs"]["stage_node"]


def test_all_problems_of_a_document_are_reported(
    validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    reference["owner"] = "me"
    reference["nodes"][FANOUT]["policy"] = "some"
    reference["nodes"][DECIDE]["conditions"][0].pop("then")
    reference["limits"] = {"max_steps": 0}
    errors = set(_errors(validator, reference))
    assert errors >= {
        ("$", "additionalProperties"),
        (f"$.nodes[{FANOUT}].policy", "enum"),
        (f"$.nodes[{DECIDE}].conditions[0]", "required"),
        ("$.limits.max_steps", "minimum"),
    }


def test_optional_fields_with_their_defaults_are_valid(
    schema: Doc, validator: jsonschema.Draft202012Validator, reference: Doc
) -> None:
    # Writing out every default explicitly must still be a valid document.
    defs = schema["$defs"]
    for node in reference["nodes"]:
        for name, sub in defs[f"{node['type']}_node"]["properties"].items():
            if "default" in sub:
                node[name] = copy.deepcopy(sub["default"])
    reference["limits"] = {
        name: sub["default"]
        for name, sub in defs["limits"]["properties"].items()
        if "default" in sub
    }
    reference["reducers"] = {"a_result": "append", "b_result": "merge"}
    reference["metadata"].update(description="demo", version="3", owner="team-a")
    assert _errors(validator, reference) == []
