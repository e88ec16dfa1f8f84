"""stageflow's own schemas: a fast yes from jsonschema-rs, the errors from jsonschema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

import stageflow
from stageflow._pipeline import load_schema
from stageflow._specs import DocumentSchema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 0}, "tags": {"type": "array"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "instance",
    [
        {"n": 1},
        {"n": 0, "tags": ["a"]},
        {"n": -1},
        {"m": 1},
        {"n": "one", "x": None},
        [],
        {"n": 10**30},  # beyond 64 bits
    ],
)
def test_the_errors_are_exactly_jsonschemas(instance: Any) -> None:
    expected = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(instance)]
    got = [e.message for e in DocumentSchema(SCHEMA).iter_errors(instance)]
    assert got == expected


def test_a_tuple_is_an_array_for_the_fast_check() -> None:
    assert list(DocumentSchema(SCHEMA).iter_errors({"n": 2, "tags": ("a", "b")})) == []


def test_every_shipped_schema_compiles_for_both_validators() -> None:
    for name in ("pipeline", "test-case", "session-snapshot"):
        checker = DocumentSchema(load_schema(name))
        assert list(checker.iter_errors({})) != []  # none of them accepts an empty object


def test_a_reference_to_another_drafts_metaschema_is_checked_by_jsonschema_alone() -> None:
    # A stage's contract may name a metaschema the spec check resolves (any
    # draft's): jsonschema-rs knows only draft 2020-12's, and refused to build,
    # so the run that checked the arguments raised its ValidationError.
    spec = stageflow.StageSpec(
        arguments={
            "type": "object",
            "properties": {"schema": {"$ref": "http://json-schema.org/draft-07/schema#"}},
        }
    )
    assert spec.arguments is not None
    validator = DocumentSchema(spec.arguments)
    assert list(validator.iter_errors({"schema": {"type": "string"}})) == []
    errors = list(validator.iter_errors({"schema": {"type": 3}}))
    assert [list(e.absolute_path) for e in errors] == [["schema", "type"]]
