"""Built-in stages: each run through a real pipeline, with its bad-input errors.

Run-time errors end the session ``failed`` with the built-in error itself as
``SessionResult.error`` (the engine re-raises a ``StageflowError`` from a
stage as is); load-time errors are ``PipelineValidationError`` problems.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import structlog

import stageflow
import stageflow.builtins as builtins
from stageflow._json import thaw
from stageflow.builtins import (
    AssertionFailedError,
    BuiltinArgumentError,
    BuiltinConfigError,
    BuiltinStageError,
    InjectedFailureError,
    TemplateError,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[1]
REGISTRY = builtins.registry()


def node(stage: str, **fields: Any) -> dict[str, Any]:
    return {"id": "op", "type": "stage", "stage": f"builtins.{stage}", **fields, "next": "end"}


def document(*nodes: Mapping[str, Any]) -> dict[str, Any]:
    """Chain ``nodes`` (ids op, op1, op2, ...) into a pipeline ending at a terminal."""
    ids = ["op", *(f"op{i}" for i in range(1, len(nodes))), "end"]
    chained = [{**n, "id": ids[i], "next": ids[i + 1]} for i, n in enumerate(nodes)]
    end = {"id": "end", "type": "terminal", "result": {"done": True}, "artifacts": []}
    return {"api_version": "1.0", "entry": "op", "nodes": [*chained, end]}


async def run(
    *nodes: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    registry: stageflow.StageRegistry = REGISTRY,
) -> tuple[stageflow.SessionResult, dict[str, Any]]:
    pipeline = stageflow.Pipeline.from_dict(document(*nodes), registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload=payload or {})
    result = await session.run()
    return result, json.loads(json.dumps(dict(session.payload)))


async def context_after(*nodes: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
    result, context = await run(*nodes, payload=payload)
    assert result.status is stageflow.SessionStatus.COMPLETED, result.error
    return context


async def failure(
    *nodes: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    registry: stageflow.StageRegistry = REGISTRY,
) -> BuiltinStageError:
    result, _ = await run(*nodes, payload=payload, registry=registry)
    assert result.status is stageflow.SessionStatus.FAILED
    error = result.error
    assert isinstance(error, BuiltinStageError), repr(error)
    assert isinstance(error, stageflow.StageError)
    assert error.node_id == "op"
    assert error.attempt == 1
    assert str(error).startswith(f"stage {error.stage!r} at node 'op': ")
    return error


def problems(*nodes: Mapping[str, Any]) -> list[stageflow.Problem]:
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document(*nodes), registry=REGISTRY)
    return list(info.value.problems)


def problem_at(location: str, *nodes: Mapping[str, Any]) -> str:
    found = problems(*nodes)
    matching = [p.message for p in found if p.location == location]
    assert matching, f"no problem at {location}: {found}"
    assert "'op'" in matching[0]
    return matching[0]


# ----------------------------------------------------------------- registry


def test_every_builtin_is_namespaced_and_registered() -> None:
    assert REGISTRY.names(core=False) == tuple(builtins.STAGES)
    assert all(name.startswith(builtins.PREFIX) for name in builtins.STAGES)
    assert len(builtins.STAGES) == 16
    for name, cls in builtins.STAGES.items():
        entry = REGISTRY.get(name)
        assert entry.target is cls
        assert entry.source == "stageflow.builtins"
        assert isinstance(entry.factory(), stageflow.BaseStage)


def test_registry_returns_a_fresh_registry_each_time() -> None:
    first = builtins.registry()

    @first.register("Mine")
    async def mine(ctx: stageflow.StageContext) -> None:
        return None

    assert "Mine" not in builtins.registry()


def test_register_into_an_existing_registry() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("Mine")
    async def mine(ctx: stageflow.StageContext) -> None:
        return None

    builtins.register(registry)
    assert set(registry.names(core=False)) == {"Mine", *builtins.STAGES}


def test_register_is_all_or_nothing_on_a_clash() -> None:
    registry = stageflow.StageRegistry()

    @registry.register("builtins.pop")
    async def mine(ctx: stageflow.StageContext) -> None:
        return None

    with pytest.raises(stageflow.StageConflictError, match=r"builtins\.pop") as info:
        builtins.register(registry)
    assert "stageflow.builtins" in str(info.value)
    assert registry.names(core=False) == ("builtins.pop",)


def test_default_registry_does_not_get_the_builtins() -> None:
    builtins.registry()
    assert not any(name.startswith("builtins.") for name in stageflow.get_stages())


def test_public_names_are_exported() -> None:
    assert builtins.__all__ == sorted(builtins.__all__, key=lambda n: (not n.isupper(), n))
    for name in builtins.__all__:
        assert getattr(builtins, name) is not None
    for cls in builtins.STAGES.values():
        assert cls.__name__ in builtins.__all__


@pytest.mark.parametrize("name", list(builtins.STAGES))
def test_specs_are_complete(name: str) -> None:
    cls = builtins.STAGES[name]
    spec = cls.spec
    assert spec.description
    assert cls.__doc__
    assert cls.__doc__.startswith(f"``{name}``")
    for schema in (spec.arguments, spec.config, spec.outputs):
        assert schema is not None
        assert schema["type"] == "object"
        for sub in schema.get("properties", {}).values():
            assert sub["description"]
        extra = schema.get("additionalProperties")
        assert extra is False or extra["description"]
    assert spec.config is not None
    assert spec.config["additionalProperties"] is False
    assert spec.outputs is not None
    assert spec.outputs["additionalProperties"] is False


SAMPLES: list[Any] = [None, True, 0, 2.5, 3.0, "s", [], [1], {}, {"a": 1}]


def bare_context(name: str, values: Mapping[str, Any]) -> stageflow.StageContext:
    return stageflow.StageContext(
        arguments=values,
        config={},
        session_id="s",
        node_id="op",
        node_path="op",
        stage=name,
        attempt=1,
        runtime=None,  # type: ignore[arg-type]  # the checks never reach the session
    )


@pytest.mark.parametrize("name", list(builtins.STAGES))
def test_run_time_argument_checks_agree_with_the_schema(name: str) -> None:
    """The fast run-time check accepts exactly what the stage's JSON Schema accepts."""
    from stageflow.builtins._common import arguments

    spec = builtins.STAGES[name].spec
    assert spec.arguments is not None
    schema = thaw(spec.arguments)
    validator = jsonschema.Draft202012Validator(schema)
    properties = schema.get("properties", {})

    def valid_sample(sub: Any) -> Any:
        return next(v for v in SAMPLES if jsonschema.Draft202012Validator(sub).is_valid(v))

    filled = {n: valid_sample(properties[n]) for n in schema.get("required", ())}
    names = list(properties)
    if schema.get("additionalProperties", True) is not False:
        names.append("extra_name")  # unknown names are refused at load time otherwise
    checked = 0
    for arg in names:
        for value in SAMPLES:
            values = {**filled, arg: value}
            ctx = bare_context(name, values)
            if validator.is_valid(values):
                assert arguments(ctx, spec) == values
            else:
                with pytest.raises(BuiltinArgumentError) as info:
                    arguments(ctx, spec)
                assert info.value.argument == arg
            checked += 1
    for missing in filled:
        values = {n: v for n, v in filled.items() if n != missing}
        assert not validator.is_valid(values)
        with pytest.raises(BuiltinArgumentError, match="holds nothing"):
            arguments(bare_context(name, values), spec)
    assert checked == len(names) * len(SAMPLES)


def test_argument_checks_without_a_schema_and_odd_values() -> None:
    from stageflow.builtins._common import arguments, json_type

    values = {"a": 1}
    assert arguments(bare_context("x", values), stageflow.StageSpec()) is values
    assert json_type({1, 2}) == "set"  # named in messages, never mistaken for JSON
    assert json_type((1,)) == "array"


# ----------------------------------------------------------------- set, copy


async def test_set_outputs_the_configured_constant() -> None:
    after = await context_after(
        node("set", config={"value": {"a": [1, None]}}, outputs={"value": "x.y"}),
        node("set", config={"value": None}, outputs={"value": "z"}),
        payload={},
    )
    assert after == {"x": {"y": {"a": [1, None]}}, "z": None}


def test_set_config_is_checked_at_load_time() -> None:
    message = problem_at("$.nodes[0].config", node("set", config={}))
    assert 'field "value" is required' in message
    assert problem_at("$.nodes[0].config", node("set", config={"value": 1, "valu": 2}))
    assert problem_at(
        "$.nodes[0].arguments.x", node("set", config={"value": 1}, arguments={"x": "a"})
    )
    assert problem_at(
        "$.nodes[0].outputs.other", node("set", config={"value": 1}, outputs={"other": "a"})
    )


async def test_copy_copies_deeply() -> None:
    after = await context_after(
        node("copy", arguments={"value": "a"}, outputs={"value": "b"}),
        node("set", config={"value": 99}, outputs={"value": "b.inner.0"}),
        payload={"a": {"inner": [1, 2]}},
    )
    assert after == {"a": {"inner": [1, 2]}, "b": {"inner": [99, 2]}}


async def test_copy_of_a_path_holding_nothing_is_an_argument_error() -> None:
    error = await failure(node("copy", arguments={"value": "nowhere"}, outputs={"value": "b"}))
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "value"
    assert "holds nothing" in str(error)
    assert "builtins.set" in str(error)


async def test_copy_of_a_stored_null_copies_null() -> None:
    after = await context_after(
        node("copy", arguments={"value": "a"}, outputs={"value": "b"}), payload={"a": None}
    )
    assert after == {"a": None, "b": None}


def test_copy_requires_its_argument_at_load_time() -> None:
    message = problem_at("$.nodes[0].arguments", node("copy", outputs={"value": "b"}))
    assert "requires argument 'value'" in message


# ---------------------------------------------------------------- increment


@pytest.mark.parametrize(
    ("start", "config", "expected"),
    [(2, {}, 3), (2, {"by": 5}, 7), (2, {"by": -5}, -3), (1.5, {"by": 0.25}, 1.75)],
)
async def test_increment(start: float, config: dict[str, Any], expected: float) -> None:
    after = await context_after(
        node("increment", arguments={"value": "n"}, config=config, outputs={"value": "n"}),
        payload={"n": start},
    )
    assert after["n"] == expected
    assert type(after["n"]) is type(expected)


@pytest.mark.parametrize("bad", ["3", True, None, [1], {"n": 1}])
async def test_increment_rejects_a_non_number(bad: Any) -> None:
    error = await failure(
        node("increment", arguments={"value": "n"}, outputs={"value": "n"}), payload={"n": bad}
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "value"
    assert "must be a number, got" in str(error)
    assert json.dumps(bad, separators=(",", ":")) in str(error)


async def test_increment_overflow_is_an_argument_error() -> None:
    error = await failure(
        node("increment", arguments={"value": "n"}, config={"by": 1e308}, outputs={"value": "n"}),
        payload={"n": 1e308},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert "overflows" in str(error)


async def test_increment_overflow_of_a_huge_integer_is_an_argument_error() -> None:
    error = await failure(
        node("increment", arguments={"value": "n"}, config={"by": 0.5}, outputs={"value": "n"}),
        payload={"n": 10**400},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert "overflows" in str(error)


async def test_increment_of_a_path_holding_nothing_is_an_error() -> None:
    error = await failure(node("increment", arguments={"value": "n"}, outputs={"value": "n"}))
    assert isinstance(error, BuiltinArgumentError)
    assert "holds nothing" in str(error)
    assert "a path that holds a number" in str(error)


def test_increment_config_is_checked_at_load_time() -> None:
    message = problem_at(
        "$.nodes[0].config.by",
        node("increment", arguments={"value": "n"}, config={"by": "1"}, outputs={"value": "n"}),
    )
    assert 'expected number, got string "1"' in message


# ------------------------------------------------------------ merge, pick, drop

BASE = {"a": 1, "nested": {"x": 1, "y": [1]}, "keep": True}
UPDATE = {"a": 2, "nested": {"y": [2], "z": 3}}


async def test_merge_is_shallow_by_default() -> None:
    after = await context_after(
        node("merge", arguments={"base": "b", "update": "u"}, outputs={"value": "m"}),
        payload={"b": BASE, "u": UPDATE},
    )
    assert after["m"] == {"a": 2, "nested": {"y": [2], "z": 3}, "keep": True}
    assert after["b"] == BASE
    assert after["u"] == UPDATE


async def test_merge_deep_merges_objects_and_replaces_arrays() -> None:
    after = await context_after(
        node(
            "merge",
            arguments={"base": "b", "update": "u"},
            config={"deep": True},
            outputs={"value": "m"},
        ),
        node("set", config={"value": 0}, outputs={"value": "m.nested.y.0"}),
        payload={"b": BASE, "u": UPDATE},
    )
    assert after["m"] == {"a": 2, "nested": {"x": 1, "y": [0], "z": 3}, "keep": True}
    assert after["b"] == BASE  # nothing shared with the inputs
    assert after["u"] == UPDATE


@pytest.mark.parametrize(("base", "update", "bad"), [([1], {}, "base"), ({}, "x", "update")])
async def test_merge_rejects_non_objects(base: Any, update: Any, bad: str) -> None:
    error = await failure(
        node("merge", arguments={"base": "b", "update": "u"}, outputs={"value": "m"}),
        payload={"b": base, "u": update},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == bad
    assert "must be an object" in str(error)


def test_merge_config_is_checked_at_load_time() -> None:
    assert problem_at(
        "$.nodes[0].config.deep",
        node("merge", arguments={"base": "b", "update": "u"}, config={"deep": "yes"}),
    )


async def test_pick_keeps_listed_keys_in_config_order_and_skips_absent_ones() -> None:
    after = await context_after(
        node(
            "pick",
            arguments={"value": "u"},
            config={"keys": ["b", "a", "zz"]},
            outputs={"value": "p"},
        ),
        payload={"u": {"a": 1, "b": {"c": 2}, "secret": 3}},
    )
    assert after["p"] == {"b": {"c": 2}, "a": 1}
    assert list(after["p"]) == ["b", "a"]


async def test_drop_removes_listed_keys() -> None:
    after = await context_after(
        node(
            "drop",
            arguments={"value": "u"},
            config={"keys": ["secret", "zz"]},
            outputs={"value": "u"},
        ),
        payload={"u": {"a": 1, "secret": 3}},
    )
    assert after == {"u": {"a": 1}}


@pytest.mark.parametrize("stage", ["pick", "drop"])
async def test_pick_and_drop_reject_non_objects(stage: str) -> None:
    error = await failure(
        node(stage, arguments={"value": "u"}, config={"keys": ["a"]}, outputs={"value": "p"}),
        payload={"u": ["a"]},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert "must be an object, got an array" in str(error)


@pytest.mark.parametrize("keys", [[], ["a", "a"], [1], "a"])
@pytest.mark.parametrize("stage", ["pick", "drop"])
def test_pick_and_drop_keys_are_checked_at_load_time(stage: str, keys: Any) -> None:
    found = problems(node(stage, arguments={"value": "u"}, config={"keys": keys}))
    assert [p for p in found if p.location.startswith("$.nodes[0].config.keys")]


# ------------------------------------------------------------------- lists


async def test_append_returns_a_new_list() -> None:
    after = await context_after(
        node("append", arguments={"list": "l", "item": "i"}, outputs={"value": "out"}),
        payload={"l": [1, {"a": 1}], "i": {"b": 2}},
    )
    assert after == {"l": [1, {"a": 1}], "i": {"b": 2}, "out": [1, {"a": 1}, {"b": 2}]}


async def test_append_null_item() -> None:
    after = await context_after(
        node("append", arguments={"list": "l", "item": "i"}, outputs={"value": "l"}),
        payload={"l": [], "i": None},
    )
    assert after["l"] == [None]


async def test_append_to_a_non_list_is_an_error() -> None:
    error = await failure(
        node("append", arguments={"list": "l", "item": "i"}, outputs={"value": "l"}),
        payload={"l": "abc", "i": 1},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "list"
    assert 'must be an array, got a string "abc"' in str(error)


async def test_append_without_an_item_is_an_error() -> None:
    error = await failure(
        node("append", arguments={"list": "l", "item": "i"}, outputs={"value": "l"}),
        payload={"l": []},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "item"


async def test_extend() -> None:
    after = await context_after(
        node("extend", arguments={"list": "l", "items": "i"}, outputs={"value": "l"}),
        payload={"l": [1], "i": [2, [3]]},
    )
    assert after == {"l": [1, 2, [3]], "i": [2, [3]]}


async def test_extend_with_a_non_list_is_an_error() -> None:
    error = await failure(
        node("extend", arguments={"list": "l", "items": "i"}, outputs={"value": "l"}),
        payload={"l": [1], "i": {"a": 1}},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "items"


async def test_unique_compares_json_values() -> None:
    items = [1, 1.0, True, "1", {"a": 1, "b": 2}, {"b": 2, "a": 1}, [1], [1.0], None, None, 2.5]
    after = await context_after(
        node("unique", arguments={"list": "l"}, outputs={"value": "u"}), payload={"l": items}
    )
    assert after["u"] == [1, True, "1", {"a": 1, "b": 2}, [1], None, 2.5]
    assert after["u"][1] is True


async def test_unique_rejects_a_non_list() -> None:
    error = await failure(
        node("unique", arguments={"list": "l"}, outputs={"value": "u"}), payload={"l": {"a": 1}}
    )
    assert isinstance(error, BuiltinArgumentError)


@pytest.mark.parametrize(
    ("config", "item", "rest"),
    [({}, "c", ["a", "b"]), ({"index": 0}, "a", ["b", "c"]), ({"index": -2}, "b", ["a", "c"])],
)
async def test_pop(config: dict[str, Any], item: str, rest: list[str]) -> None:
    after = await context_after(
        node(
            "pop",
            arguments={"list": "q"},
            config=config,
            outputs={"item": "got", "value": "rest"},
        ),
        payload={"q": ["a", "b", "c"]},
    )
    assert after == {"q": ["a", "b", "c"], "got": item, "rest": rest}


@pytest.mark.parametrize(
    ("items", "index", "what"), [([], -1, "is empty"), ([1, 2], 2, "has 2 items")]
)
async def test_pop_out_of_range_is_an_error(items: list[Any], index: int, what: str) -> None:
    error = await failure(
        node("pop", arguments={"list": "q"}, config={"index": index}, outputs={"item": "got"}),
        payload={"q": items},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert what in str(error)
    assert f"no item at index {index}" in str(error)


async def test_failed_pop_writes_nothing() -> None:
    result, context = await run(
        node("pop", arguments={"list": "q"}, outputs={"item": "got", "value": "q"}),
        payload={"q": []},
    )
    assert result.status is stageflow.SessionStatus.FAILED
    assert context == {"q": []}


@pytest.mark.parametrize("index", ["first", 1.5, None])
def test_pop_index_is_checked_at_load_time(index: Any) -> None:
    assert problem_at(
        "$.nodes[0].config.index", node("pop", arguments={"list": "q"}, config={"index": index})
    )


CART = [{"sku": "a", "price": 5}, {"sku": "b", "price": 20}, {"sku": "c", "price": 12}]


async def test_filter_on_the_item() -> None:
    after = await context_after(
        node(
            "filter",
            arguments={"items": "cart"},
            config={"rule": {">": [{"var": "price"}, 10]}},
            outputs={"value": "out"},
        ),
        payload={"cart": CART},
    )
    assert after["out"] == [CART[1], CART[2]]
    assert after["cart"] == CART


async def test_filter_truthiness_of_the_whole_item() -> None:
    after = await context_after(
        node(
            "filter",
            arguments={"items": "l"},
            config={"rule": {"var": ""}},
            outputs={"value": "out"},
        ),
        payload={"l": [0, 1, "", "a", None, [], [0], {}, False]},
    )
    assert after["out"] == [1, "a", [0], {}]


async def test_filter_in_scope_reads_item_index_and_arguments() -> None:
    rule = {
        "and": [
            {"<=": [{"var": "item.price"}, {"var": "arguments.budget"}]},
            {"!=": [{"var": "index"}, 0]},
        ]
    }
    after = await context_after(
        node(
            "filter",
            arguments={"items": "cart", "budget": "limits.budget"},
            config={"rule": rule, "data": "scope"},
            outputs={"value": "out"},
        ),
        payload={"cart": CART, "limits": {"budget": 15}},
    )
    assert after["out"] == [CART[2]]


async def test_filter_with_an_unknown_operator_is_a_config_error() -> None:
    error = await failure(
        node(
            "filter",
            arguments={"items": "l"},
            config={"rule": {"frobnicate": [1]}},
            outputs={"value": "out"},
        ),
        payload={"l": [1]},
    )
    assert isinstance(error, BuiltinConfigError)
    assert isinstance(error.__cause__, stageflow.JsonLogicError)
    assert "frobnicate" in str(error)
    assert "fix the rule" in str(error)


async def test_filter_of_a_non_list_is_an_error() -> None:
    error = await failure(
        node("filter", arguments={"items": "l"}, config={"rule": True}, outputs={"value": "o"}),
        payload={"l": "abc"},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "items"


def test_filter_config_is_checked_at_load_time() -> None:
    assert problem_at("$.nodes[0].config", node("filter", arguments={"items": "l"}, config={}))
    assert problem_at(
        "$.nodes[0].config.data",
        node("filter", arguments={"items": "l"}, config={"rule": True, "data": "all"}),
    )


async def test_concat_strings_in_configured_order() -> None:
    after = await context_after(
        node(
            "concat",
            arguments={"b": "x.b", "a": "x.a", "c": "x.c"},
            config={"order": ["a", "b", "c"], "separator": ", "},
            outputs={"value": "out"},
        ),
        payload={"x": {"a": "one", "b": "two", "c": ""}},
    )
    assert after["out"] == "one, two, "


async def test_concat_lists() -> None:
    after = await context_after(
        node(
            "concat",
            arguments={"a": "a", "b": "b"},
            config={"order": ["b", "a"]},
            outputs={"value": "out"},
        ),
        payload={"a": [1, {"k": 1}], "b": []},
    )
    assert after["out"] == [1, {"k": 1}]


async def test_concat_of_a_mix_is_an_error_naming_the_odd_one() -> None:
    error = await failure(
        node(
            "concat",
            arguments={"a": "a", "b": "b"},
            config={"order": ["a", "b"]},
            outputs={"value": "out"},
        ),
        payload={"a": "x", "b": ["y"]},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "b"
    assert "but 'a' is a string" in str(error)


async def test_concat_of_a_number_is_a_type_error() -> None:
    error = await failure(
        node("concat", arguments={"a": "a"}, config={"order": ["a"]}, outputs={"value": "o"}),
        payload={"a": 5},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert "must be a string or an array, got an integer 5" in str(error)


async def test_concat_of_an_unmapped_name_is_an_error() -> None:
    error = await failure(
        node(
            "concat",
            arguments={"a": "a"},
            config={"order": ["a", "b"]},
            outputs={"value": "out"},
        ),
        payload={"a": "x"},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "b"


async def test_concat_separator_with_lists_is_a_config_error() -> None:
    error = await failure(
        node(
            "concat",
            arguments={"a": "a"},
            config={"order": ["a"], "separator": ","},
            outputs={"value": "out"},
        ),
        payload={"a": [1]},
    )
    assert isinstance(error, BuiltinConfigError)
    assert "only applies to strings" in str(error)


@pytest.mark.parametrize(
    "config", [{}, {"order": []}, {"order": ["a", "a"]}, {"order": ["a"], "sep": ""}]
)
def test_concat_config_is_checked_at_load_time(config: dict[str, Any]) -> None:
    found = problems(node("concat", arguments={"a": "a"}, config=config))
    assert [p.location for p in found if p.location.startswith("$.nodes[0].config")]


# ---------------------------------------------------------------- template


def template(text: str, **arguments: str) -> dict[str, Any]:
    return node(
        "template", arguments=arguments, config={"template": text}, outputs={"value": "out"}
    )


async def test_template_fills_placeholders() -> None:
    after = await context_after(
        template(
            "{{{greeting}}}, {user.name}! {n} {flag} {none} {list} {obj} }}{{",
            greeting="g",
            user="u",
            n="n",
            flag="f",
            none="z",
            list="l",
            obj="o",
        ),
        payload={
            "g": "Hi",
            "u": {"name": "Ada"},
            "n": 2.5,
            "f": True,
            "z": None,
            "l": [1, "a"],
            "o": {"k": "é"},
        },
    )
    assert after["out"] == '{Hi}, Ada! 2.5 true null [1,"a"] {"k":"é"} }{'


async def test_template_without_placeholders() -> None:
    after = await context_after(template("plain text"), payload={})
    assert after["out"] == "plain text"


async def test_template_unknown_argument_names_it() -> None:
    error = await failure(template("Hi {user.name}", person="u"), payload={"u": {}})
    assert isinstance(error, TemplateError)
    assert isinstance(error, BuiltinArgumentError)
    assert error.placeholder == "user.name"
    assert error.argument == "user"
    assert "{user.name}" in str(error)
    assert "known: person" in str(error)


async def test_template_unknown_key_names_it() -> None:
    error = await failure(template("Hi {user.name}", user="u"), payload={"u": {"nick": "a"}})
    assert isinstance(error, TemplateError)
    assert "has no key 'name' (it has: nick)" in str(error)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{x.__class__}", "a string"),
        ("{x.__class__.__name__}", {"a": 1}),
        ("{x.upper}", "abc"),
        ("{x.0}", ["first"]),
        ("{x.real}", 5),
        ("{x.__dict__}", {}),
    ],
)
async def test_template_cannot_reach_attributes(text: str, value: Any) -> None:
    error = await failure(template(text, x="x"), payload={"x": value})
    assert isinstance(error, TemplateError)
    assert "looks up object keys only" in str(error) or "has no key" in str(error)


async def test_template_dotted_names_are_only_keys() -> None:
    after = await context_after(
        template("{x.__class__}", x="x"), payload={"x": {"__class__": "just data"}}
    )
    assert after["out"] == "just data"


@pytest.mark.parametrize(
    "text",
    ["{x[0]}", "{x!r}", "{x:>10}", "{}", "{ x }", "{x", "x}", "{x.}", "{.x}", "{x..y}", "{0[0]}"],
)
def test_template_syntax_beyond_keys_is_rejected_at_load_time(text: str) -> None:
    message = problem_at("$.nodes[0].config.template", template(text, x="x"))
    assert "does not match" in message


@pytest.mark.parametrize("text", ["{x[0]}", "{x.__class__!r}", "a}", "{x:>10}"])
async def test_template_syntax_is_rejected_at_run_time_too(text: str) -> None:
    # A registry that skips the config schema: the stage itself must still refuse.
    loose = stageflow.StageRegistry()
    loose.add(builtins.TemplateStage, name="builtins.template", spec=stageflow.StageSpec())
    error = await failure(template(text, x="x"), payload={"x": ["a"]}, registry=loose)
    assert isinstance(error, BuiltinConfigError)
    assert "malformed at character" in str(error)


def test_template_pattern_matches_the_parser() -> None:
    pattern = re.compile(builtins.TEMPLATE_PATTERN)
    assert pattern.search("a {b} {c.d-e_1} {{ }} {{x}}")
    for bad in ["{", "}", "{a b}", "{{a}", "{a}}", "{é}"]:
        assert not pattern.search(bad), bad


def test_template_is_required_at_load_time() -> None:
    assert problem_at("$.nodes[0].config", node("template", config={}))


# ------------------------------------------------------- assert, fail, log


async def test_assert_passes_and_writes_nothing() -> None:
    after = await context_after(
        node(
            "assert",
            arguments={"total": "o.total", "items": "o.items"},
            config={"rule": {"and": [{">": [{"var": "total"}, 0]}, {"var": "items.0"}]}},
        ),
        payload={"o": {"total": 5, "items": ["a"]}},
    )
    assert after == {"o": {"total": 5, "items": ["a"]}}


async def test_assert_failure_carries_rule_values_and_message() -> None:
    rule = {">": [{"var": "total"}, 0]}
    error = await failure(
        node(
            "assert",
            arguments={"total": "o.total", "absent": "nowhere"},
            config={"rule": rule, "message": "the total is positive"},
        ),
        payload={"o": {"total": 0}},
    )
    assert isinstance(error, AssertionFailedError)
    assert error.rule == rule
    assert error.values == {"total": 0}
    assert error.reason == "the total is positive"
    text = str(error)
    assert "assertion failed: the total is positive" in text
    assert '{">":[{"var":"total"},0]}' in text
    assert '{"total":0}' in text


async def test_assert_reads_absent_arguments_as_missing() -> None:
    error = await failure(
        node("assert", arguments={"a": "nowhere"}, config={"rule": {"!": {"missing": ["a"]}}}),
    )
    assert isinstance(error, AssertionFailedError)
    assert error.reason is None


async def test_assert_says_its_rule_sees_the_arguments_not_the_context() -> None:
    # A condition node would read "order.total" from the context; this rule
    # sees only the node's arguments, and the message says so.
    error = await failure(
        node("assert", config={"rule": {">": [{"var": "order.total"}, 0]}}),
        payload={"order": {"total": 5}},
    )
    assert isinstance(error, AssertionFailedError)
    assert error.unmapped == ("order",)
    text = str(error)
    assert "the rule reads 'order', not among the arguments" in text
    assert "the rule sees the node's arguments, not the context" in text
    assert '"arguments": {"order": "<path>"}' in text


async def test_assert_with_an_unknown_operator_is_a_config_error() -> None:
    error = await failure(node("assert", config={"rule": {"nope": []}}))
    assert isinstance(error, BuiltinConfigError)
    assert isinstance(error.__cause__, stageflow.JsonLogicError)


def test_assert_has_no_outputs() -> None:
    message = problem_at(
        "$.nodes[0].outputs.value", node("assert", config={"rule": True}, outputs={"value": "x"})
    )
    assert "returns: nothing" in message


async def test_fail_raises_the_injected_failure() -> None:
    result, _ = await run(node("fail", config={"message": "boom"}))
    error = result.error
    assert type(error) is InjectedFailureError
    assert error.error_type == "InjectedFailureError"
    assert error.reason == "boom"
    assert str(error).startswith("stage 'builtins.fail' at node 'op': boom")


async def test_fail_with_a_type_name() -> None:
    error = await failure(node("fail", config={"message": "429", "error_type": "RateLimited"}))
    assert isinstance(error, InjectedFailureError)
    assert type(error).__name__ == "RateLimited"
    assert error.error_type == "RateLimited"
    assert error.to_dict()["type"] == "RateLimited"
    again = await failure(node("fail", config={"message": "x", "error_type": "RateLimited"}))
    assert type(again) is type(error)


@pytest.mark.parametrize(
    "config", [{}, {"message": ""}, {"message": "x", "error_type": "not valid"}, {"message": 1}]
)
def test_fail_config_is_checked_at_load_time(config: dict[str, Any]) -> None:
    found = problems(node("fail", config=config))
    assert [p.location for p in found if p.location.startswith("$.nodes[0].config")]


async def test_log_writes_one_structured_line() -> None:
    with structlog.testing.capture_logs() as logs:
        result, after = await run(
            node(
                "log",
                arguments={"order": "o.id", "event": "o.items"},
                config={"event": "order.flagged", "level": "warning"},
            ),
            payload={"o": {"id": "o-1", "items": [1]}},
        )
    assert result.status is stageflow.SessionStatus.COMPLETED
    assert after == {"o": {"id": "o-1", "items": [1]}}
    lines = [line for line in logs if line["event"] == "order.flagged"]
    assert len(lines) == 1
    line = lines[0]
    assert line["log_level"] == "warning"
    assert line["arguments"] == {"order": "o-1", "event": [1]}
    assert line["node_id"] == "op"
    assert "session_id" in line


async def test_log_defaults_to_info() -> None:
    with structlog.testing.capture_logs() as logs:
        result, _ = await run(node("log"))
    assert result.status is stageflow.SessionStatus.COMPLETED
    lines = [line for line in logs if line["event"] == "builtins.log"]
    assert [(line["log_level"], line["arguments"]) for line in lines] == [("info", {})]


def test_log_config_is_checked_at_load_time() -> None:
    assert problem_at("$.nodes[0].config.level", node("log", config={"level": "loud"}))


# -------------------------------------------------------------------- docs


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_builtins", ROOT / "docs" / "gen_builtins.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_builtins"] = module
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_catalogue_is_generated_from_the_specs() -> None:
    committed = (ROOT / "docs" / "builtins.md").read_text(encoding="utf-8")
    assert committed == GEN.render(), "docs/builtins.md is stale: run python docs/gen_builtins.py"


def test_catalogue_documents_every_stage() -> None:
    text = GEN.render()
    for name, cls in builtins.STAGES.items():
        assert f"## `{name}`" in text
        assert cls.spec.description in text
        assert name in GEN.EXAMPLES


EXAMPLES = [
    pytest.param(example, id=f"{name}-{i}")
    for name, examples in GEN.EXAMPLES.items()
    for i, example in enumerate(examples)
]


@pytest.mark.parametrize("example", EXAMPLES)
async def test_catalogue_example_runs_as_documented(example: Any) -> None:
    assert (example.after is None) != (example.error is None)
    result, after = await run(
        {"id": "op", "type": "stage", **example.node}, payload=example.payload
    )
    if example.error is not None:
        assert result.status is stageflow.SessionStatus.FAILED
        assert type(result.error).__name__ == example.error
    else:
        assert result.status is stageflow.SessionStatus.COMPLETED, result.error
        assert after == example.after


def test_python_snippets_in_the_catalogue_run() -> None:
    text = (ROOT / "docs" / "builtins.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs/builtins.md", "exec"), {"__name__": "snippet"})


def test_generator_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "builtins.md"
    stale.write_text("old", encoding="utf-8")
    monkeypatch.setattr(GEN, "OUTPUT", stale)
    assert GEN.main(["--check"]) == 1
    assert GEN.main([]) == 0
    assert GEN.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == GEN.render()
