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
from builtin_support import REGISTRY, context_after, failure, node, problem_at, problems, run

import stageflow
import stageflow.builtins as builtins
from stageflow._json import thaw
from stageflow.builtins import BuiltinArgumentError
from stageflow.builtins._errors import preview

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[1]
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


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (None, "was given None;"),
        ({}, "was given a dict;"),
        (stageflow.StageRegistry, "was given the class stageflow.StageRegistry, not an instance"),
    ],
)
def test_register_into_something_else_is_a_type_error(given: Any, named: str) -> None:
    with pytest.raises(TypeError, match=r"^stageflow\.builtins\.register\(\)") as info:
        builtins.register(given)
    assert named in str(info.value)
    assert "pass a stageflow.StageRegistry" in str(info.value)


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


@pytest.mark.parametrize("payload", [{"n": "one"}, {}], ids=["wrong type", "absent"])
@pytest.mark.parametrize("mode", ["off", "warn", "strict"])
async def test_which_error_a_bad_argument_raises_in_each_validation_mode(
    mode: str, payload: dict[str, Any]
) -> None:
    """What docs/builtins.md says: strict mode's own check comes first."""
    from builtin_support import document

    raw = document(node("increment", arguments={"value": "n"}, outputs={"value": "n"}))
    pipeline = stageflow.Pipeline.from_dict({**raw, "validate_events": mode}, registry=REGISTRY)
    result = await stageflow.Session(pipeline, registry=REGISTRY, payload=payload).run()
    violations = [e for e in result.history if e.type == "contract_violation"]
    if mode == "strict":
        assert isinstance(result.error, stageflow.StageSchemaError)
        assert result.error.key == "value"
    else:
        assert isinstance(result.error, BuiltinArgumentError)
        assert result.error.argument == "value"
    assert len(violations) == (1 if mode == "warn" else 0)


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


@pytest.mark.parametrize(
    ("value", "by"), [(10**4300 - 1, 1), (-(10**4300) + 1, -1), (1, 10**4300 - 1)]
)
async def test_increment_past_the_largest_integer_stored_is_an_argument_error(
    value: int, by: int
) -> None:
    """Once a generic output error that told the pipeline's author to fix the stage's code."""
    error = await failure(
        node("increment", arguments={"value": "n"}, config={"by": by}, outputs={"value": "n"}),
        payload={"n": value},
    )
    assert isinstance(error, BuiltinArgumentError)
    assert error.argument == "value"
    assert str(error).endswith(
        "has more than 4300 digits, more than stageflow stores in a context; keep the counter "
        "smaller"
    )


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


class _Written:
    """A value the JSON encoder can only write through ``default``: it records that it was."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def __repr__(self) -> str:
        self.seen.append("written")
        return "written"


def test_an_error_preview_writes_only_what_it_shows() -> None:
    # A list holding one long string many times over passes the value guard
    # (it counts values, not characters); the message that previews it in 60
    # characters wrote all of it first: gigabytes for a thousand 16 MiB strings.
    seen: list[str] = []
    long = "x" * 1_000
    text = preview([long, long, _Written(seen), 10**5000], 60)
    assert text == '["' + "x" * 55 + "..."
    assert seen == []
    assert preview({"a": [1, True, None]}, 60) == '{"a":[1,true,null]}'
    assert preview(_Written(seen), 60) == '"written"'
