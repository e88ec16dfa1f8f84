"""Compiled JsonLogic rules: the same results and the same errors as ``apply``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._errors import JsonLogicError
from stageflow._json import freeze
from stageflow._jsonlogic_compiled import compile_condition, compile_rule
from stageflow.jsonlogic import MAX_DEPTH, OPERATORS, apply, truthy

SUITE = Path(__file__).parent / "data" / "jsonlogic" / "tests.json"
CASES = [
    pytest.param(rule, data, id=f"case-{number:03d}")
    for number, (rule, data, _) in enumerate(
        (
            entry
            for entry in json.loads(SUITE.read_text(encoding="utf-8"))
            if not isinstance(entry, str)
        ),
        start=1,
    )
]


def outcome(evaluate: Any) -> tuple[str, Any]:
    """What evaluating gives: ("value", a JSON text that tells 1 from 1.0 and True) or the error."""
    try:
        result = evaluate()
    except JsonLogicError as exc:
        return "error", str(exc)
    return "value", json.dumps(_typed(result))


def _typed(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ["list", [_typed(v) for v in value]]
    if isinstance(value, Mapping):
        return ["dict", {k: _typed(v) for k, v in value.items()}]
    return [type(value).__name__, value]


def condition_outcome(rule: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", repr(truthy(apply(rule, data)))
    except JsonLogicError as exc:
        return "error", str(exc)


def compiled_condition_outcome(rule: Any, data: Any) -> tuple[str, Any]:
    test = compile_condition(rule)  # never raises: errors come when evaluated
    try:
        return "value", repr(test(data))  # repr: True, never 1
    except JsonLogicError as exc:
        return "error", str(exc)


@pytest.mark.parametrize(("rule", "data"), CASES)
def test_conformance_suite_compiled_as_loaded_and_as_given(rule: Any, data: Any) -> None:
    expected = outcome(lambda: apply(rule, data))
    assert outcome(lambda: compile_rule(rule)(data)) == expected
    assert outcome(lambda: compile_rule(freeze(rule))(data)) == expected
    assert compiled_condition_outcome(freeze(rule), data) == condition_outcome(rule, data)


# A mix that reaches the compiled operators often, with right and wrong
# argument counts, unknown operators and paths into the data.
KEYS = st.sampled_from(["a", "b", "a.b", "b.0", "", "0", "missing", "1", "a.", ".a"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    # integers past 2**53, the float range and 10**21 (where JavaScript prints exponents)
    | st.sampled_from([2**53 + 1, 10**21, -(10**400), 10**4000])
    | st.sampled_from([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 1e308, 5e-324])
    | st.sampled_from(["", "0", "1", "a", "abc", "Infinity"])
    # numbers JavaScript's Number() reads or refuses, and text beyond ASCII
    | st.sampled_from([" 1 ", "-0", "0x1f", "1e400", "1_0", "\u0661", "e\u0301", "\U0001f600"])
)
DATA = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
OPERATOR_NAMES = st.sampled_from(
    [
        *sorted(OPERATORS),
        *["==", "!=", "===", "!==", "<", "<=", ">", ">=", "in", "!", "!!", "and", "or", "if"] * 3,
        "nope",
    ]
)
RULES = st.recursive(
    SCALARS
    | st.builds(lambda key: {"var": key}, KEYS)
    # a default, and paths that are no string (JavaScript's String(path))
    | st.builds(lambda key, default: {"var": [key, default]}, KEYS | SCALARS, SCALARS),
    lambda inner: (
        st.builds(lambda op, args: {op: args}, OPERATOR_NAMES, st.lists(inner, max_size=4))
        | st.builds(lambda op, arg: {op: arg}, OPERATOR_NAMES, inner)
        | st.lists(inner, max_size=3)
        | st.dictionaries(KEYS, inner, min_size=2, max_size=2)
        # the loops, over arrays of the rule or of the data, with a rule of their own
        | st.builds(
            lambda op, items, rule: {op: [items, rule]},
            st.sampled_from(["map", "filter", "all", "some", "none"]),
            inner,
            inner,
        )
        | st.builds(lambda items, rule, acc: {"reduce": [items, rule, acc]}, inner, inner, inner)
    ),
    max_leaves=16,
)


@settings(max_examples=1500, deadline=None)
@given(rule=RULES, data=DATA)
def test_a_compiled_rule_gives_what_apply_gives(rule: Any, data: Any) -> None:
    expected = outcome(lambda: apply(rule, data))
    assert outcome(lambda: compile_rule(rule)(data)) == expected
    assert outcome(lambda: compile_rule(freeze(rule))(data)) == expected
    assert compiled_condition_outcome(rule, data) == condition_outcome(rule, data)


def _nested(depth: int, leaf: Any, wrap: Any) -> Any:
    rule = leaf
    for _ in range(depth):
        rule = wrap(rule)
    return rule


@pytest.mark.parametrize(
    "wrap",
    [lambda r: {"!": r}, lambda r: {"if": [True, r]}, lambda r: [r], lambda r: {"==": [r, 1]}],
    ids=["not", "if", "array", "equals"],
)
def test_too_deep_rules_compile_and_fail_when_evaluated(wrap: Any) -> None:
    rule = _nested(10_000, True, wrap)
    test = compile_condition(rule)
    with pytest.raises(JsonLogicError, match=f"more than {MAX_DEPTH} levels deep"):
        test({})
    limit = _nested(MAX_DEPTH - 1, {"var": "x"}, lambda r: {"!!": r})
    assert compile_condition(limit)({"x": 1}) is True
    with pytest.raises(JsonLogicError, match="nested more than"):
        compile_condition({"!!": limit})({"x": 1})


def test_errors_wait_for_evaluation_like_apply() -> None:
    rule = {"if": [{"var": "ok"}, "fine", {"nope": 1}]}
    evaluate = compile_rule(rule)
    assert evaluate({"ok": True}) == "fine"
    with pytest.raises(JsonLogicError, match="unknown JsonLogic operator 'nope'"):
        evaluate({"ok": False})
    with pytest.raises(JsonLogicError, match="operator '==' takes 2 arguments, got 3"):
        compile_rule({"==": [1, 2, 3]})(None)
    # "between" evaluates all three arguments before comparing, as apply does.
    with pytest.raises(JsonLogicError, match="'nope'"):
        apply({"<": [2, 1, {"nope": 1}]})
    with pytest.raises(JsonLogicError, match="'nope'"):
        compile_condition({"<": [2, 1, {"nope": 1}]})(None)


def test_non_finite_results_are_false_as_conditions() -> None:
    for rule in ({"/": [1, 0]}, {"/": [0, 0]}, {"-": [{"/": [1, 0]}]}, 0.0):
        assert compile_condition(rule)({}) is False
        assert truthy(apply(rule, {})) is False
    assert compile_condition({"/": [1, 2]})({}) is True
    assert compile_rule({"/": [1, 0]})({}) is None


@pytest.mark.anyio
async def test_a_loaded_condition_branch_matches_with_its_compiled_rule() -> None:
    doc = {
        "api_version": "1.0",
        "entry": "pick",
        "nodes": [
            {
                "id": "pick",
                "type": "condition",
                "conditions": [{"if": {">": [{"var": "order.total"}, 100]}, "then": "big"}],
                "else": "small",
            },
            {"id": "big", "type": "terminal", "result": {"size": "big"}},
            {"id": "small", "type": "terminal", "result": {"size": "small"}},
        ],
    }
    pipeline = stageflow.Pipeline.from_dict(doc)
    node = pipeline.node("pick")
    assert isinstance(node, stageflow.ConditionNode)
    branch = node.conditions[0]
    assert branch.matches({"order": {"total": 101}}) is True
    assert branch.matches({"order": {"total": "100"}}) is False
    assert branch.matches({}) is False
    assert branch == stageflow.ConditionBranch(if_=branch.if_, then="big")
    for total, size in ((150, "big"), (50, "small")):
        result = await stageflow.Session(pipeline, payload={"order": {"total": total}}).run()
        assert result.result == {"size": size}
