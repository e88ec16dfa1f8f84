"""JsonLogic edge cases: pinned to json-logic-js, the compiler held to ``apply``, ``check`` to both.

- ``tests/data/jsonlogic/js-edge-cases.json`` holds rules at the edges of the
  semantics (NaN and infinities, ``-0``, ``1 == true``, strings against
  numbers, how ``cat`` prints floats, negative ``substr`` indexes, ``in`` on
  strings and lists, ``var`` paths and defaults, ``missing``/``missing_some``,
  the array operators on empty lists and nested scopes) with the result that
  json-logic-js 2.0.5 computes. Both evaluators must give it.
- A differential property test: random rules (unknown operators, wrong
  argument counts, rules nested around ``MAX_DEPTH``) on random data (NaN,
  infinities, integers past the float range): ``compile_rule`` gives what
  ``apply`` gives, value or error.
- ``check`` finds, before evaluation, every error of a rule that does not
  depend on the data: a rule it passes never raises an unknown operator, a
  wrong argument count or a too-deep rule.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._errors import JsonLogicError
from stageflow._json import freeze
from stageflow._jsonlogic_compiled import compile_condition, compile_rule
from stageflow.jsonlogic import MAX_DEPTH, OPERATORS, apply, check, truthy

DATA = Path(__file__).parent / "data" / "jsonlogic"
SHARED = Path("/work/shared/conformance/jsonlogic/tests.json")
SUITE_SHA256 = "3f2ef4252eb0285e5e0105b2c2fc14155d6e691519ecf46a4591c6f480587c31"


def _cases(name: str) -> list[Any]:
    entries = json.loads((DATA / name).read_text(encoding="utf-8"))
    return [
        pytest.param(rule, data, expected, id=f"case-{number:03d}")
        for number, (rule, data, expected) in enumerate(
            (entry for entry in entries if not isinstance(entry, str)), start=1
        )
    ]


def js_equal(actual: Any, expected: Any) -> bool:
    """Equal as JavaScript values: numbers by value (JSON has one number type), bools apart."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(actual) == float(expected)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(js_equal(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(js_equal(actual[k], expected[k]) for k in expected)
        )
    return type(actual) is type(expected) and actual == expected


def typed(value: Any) -> Any:
    """A value as JSON text that tells 1 from 1.0 and from true, for exact comparisons."""
    if isinstance(value, list | tuple):
        return ["list", [typed(v) for v in value]]
    if isinstance(value, Mapping):  # a frozen rule's literal objects are read-only views
        return ["dict", {k: typed(v) for k, v in value.items()}]
    return [type(value).__name__, repr(value)]


def outcome(evaluate: Any) -> tuple[str, Any]:
    try:
        result = evaluate()
    except JsonLogicError as exc:
        return "error", str(exc)
    return "value", json.dumps(typed(result))


# --- pinned to json-logic-js ------------------------------------------------------


@pytest.mark.parametrize(("rule", "data", "expected"), _cases("js-edge-cases.json"))
def test_edge_cases_give_what_json_logic_js_gives(rule: Any, data: Any, expected: Any) -> None:
    result = apply(rule, data)
    assert js_equal(result, expected), f"{rule!r} on {data!r}: got {result!r}, want {expected!r}"
    assert outcome(lambda: compile_rule(rule)(data)) == outcome(lambda: result)
    assert outcome(lambda: compile_rule(freeze(rule))(data)) == outcome(lambda: result)
    assert compile_condition(freeze(rule))(data) is truthy(result)


def test_the_project_copy_of_the_official_suite_is_the_pinned_file() -> None:
    assert hashlib.sha256((DATA / "tests.json").read_bytes()).hexdigest() == SUITE_SHA256


@pytest.mark.skipif(not SHARED.exists(), reason="the shared conformance suite is absent")
def test_the_shared_suite_is_the_project_copy() -> None:
    # The tests run the project copy (CI has no /work/shared); the shared one must not drift.
    assert SHARED.read_bytes() == (DATA / "tests.json").read_bytes()


@pytest.mark.parametrize(("rule", "data", "expected"), _cases("tests.json"))
def test_both_evaluators_pass_every_official_case_exactly(
    rule: Any, data: Any, expected: Any
) -> None:
    # Exactly: 1 is not true and not 1.0 (a loose == let a bool pass for a number).
    want = json.dumps(typed(expected))
    assert outcome(lambda: apply(rule, data)) == ("value", want)
    assert outcome(lambda: compile_rule(rule)(data)) == ("value", want)
    assert outcome(lambda: compile_rule(freeze(rule))(data)) == ("value", want)


# --- compiled == interpreted ------------------------------------------------------

KEYS = st.sampled_from(
    ["a", "b", "a.b", "b.0", "0", "1", "", "x.y.z", "current", "accumulator", "a.0.b"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([2**53 + 1, 10**21, 10**400, -(10**400), 2**1024]),
    st.floats(),  # NaN and the infinities included
    st.sampled_from([0.0, -0.0, 0.1, 1e21, 1e-7, 5e-324, 1.7976931348623157e308]),
    st.sampled_from(["", "0", "-0", "1", " 1 ", "1e3", "0x10", "Infinity", "abc", "a.b", "1,2"]),
    st.text(max_size=3),
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)
NAMES = st.sampled_from([*sorted(OPERATORS), "nope", "method", "var", "var", "if", "==", "<"])


def _wrap(rule: Any, levels: int, how: int) -> Any:
    for _ in range(levels):
        rule = (
            {"!": rule},
            [rule],
            {"==": [rule, 1]},
            {"and": [True, rule]},
            {"map": [[1], rule]},
            {"if": [rule, rule, 0]} if levels < 8 else {"!!": [rule]},
        )[how % 6]
    return rule


RULES = st.recursive(
    SCALARS
    | st.builds(lambda key: {"var": key}, KEYS)
    | st.builds(lambda key, default: {"var": [key, default]}, KEYS, SCALARS),
    lambda inner: st.one_of(
        st.builds(lambda op, args: {op: args}, NAMES, st.lists(inner, max_size=4)),
        st.builds(lambda op, arg: {op: arg}, NAMES, inner),
        st.lists(inner, max_size=3),
        st.dictionaries(KEYS, inner, min_size=2, max_size=2),  # a literal, not an operation
        st.builds(
            _wrap,
            inner,
            st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1]),
            st.integers(0, 5),
        ),
    ),
    max_leaves=14,
)


@settings(
    max_examples=700,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rule=RULES, data=JSONISH)
def test_fuzz_compiled_rules_give_what_apply_gives_on_hostile_values(rule: Any, data: Any) -> None:
    for form in (rule, freeze(rule)):
        expected = outcome(lambda: apply(form, data))  # noqa: B023
        assert outcome(lambda: compile_rule(form)(data)) == expected  # noqa: B023
        try:
            want: Any = truthy(apply(form, data))
        except JsonLogicError as exc:
            want = str(exc)
        try:
            got: Any = compile_condition(form)(data)
        except JsonLogicError as exc:
            got = str(exc)
        assert got == want
        assert type(got) is type(want)


# --- check() finds what apply() would raise, before any data ------------------------


def _arity_error(rule: Any) -> str | None:
    try:
        apply(rule, {})
    except JsonLogicError as exc:
        return str(exc) if " takes " in str(exc) else None
    return None


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_check_reports_exactly_the_argument_counts_apply_refuses(name: str) -> None:
    for count in range(6):
        rule = {name: [0] * count}
        error = _arity_error(rule)
        assert check(rule) == ([("", error)] if error else []), (name, count)
    # A value that is not an array is one argument.
    rule = {name: 0}
    error = _arity_error(rule)
    assert check(rule) == ([("", error)] if error else []), name


def test_check_locates_wrong_argument_counts_in_branches_never_taken() -> None:
    rule = {"if": [True, "fine", {"or": [{">": [1]}, {"substr": "x"}]}]}
    assert apply(rule, {}) == "fine"  # apply never evaluates the bad branch
    assert [where for where, _ in check(rule)] == [".if[2].or[0]", ".if[2].or[1]"]
    with pytest.raises(JsonLogicError, match="'>' takes 2 arguments, got 1"):
        apply(rule["if"][2], {})


def test_a_wrong_argument_count_in_a_condition_is_a_load_problem() -> None:
    document = {
        "api_version": "1.0",
        "entry": "pick",
        "nodes": [
            {
                "id": "pick",
                "type": "condition",
                "conditions": [
                    {"if": {"or": [{"var": "vip"}, {">=": [{"var": "total"}]}]}, "then": "end"}
                ],
                "else": "end",
            },
            {"id": "end", "type": "terminal"},
        ],
    }
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document)
    [problem] = caught.value.problems
    assert problem.location == "$.nodes[0].conditions[0].if.or[1]"
    assert "'>=' takes 2 arguments, got 1" in problem.message
    assert '{">=": [a, b]}' in problem.message  # how to write it


def _data_free(exc: JsonLogicError) -> bool:
    """Whether an error is about the rule alone (what check() must find first)."""
    text = str(exc)
    return "unknown JsonLogic operator" in text or " takes " in text or "rule is nested" in text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=RULES, data=JSONISH)
def test_fuzz_a_rule_check_passes_never_fails_for_itself(rule: Any, data: Any) -> None:
    problems = check(rule)
    try:
        apply(rule, data)
    except JsonLogicError as exc:
        missed = _data_free(exc) and not problems
    else:
        missed = False
    assert not missed, "check() found nothing, apply() failed for the rule alone"


def test_nan_and_infinity_from_data_compare_like_javascript() -> None:
    # Python data can hold what JSON cannot: they behave as the JavaScript numbers.
    for rule in ({"var": "x"}, {"+": [{"var": "x"}, 1]}, {"max": [{"var": "x"}, 1]}):
        assert apply(rule, {"x": math.nan}) is None
        assert compile_rule(rule)({"x": math.inf}) is None
    assert apply({"==": [{"var": "x"}, {"var": "x"}]}, {"x": math.nan}) is False
    assert apply({"!!": [{"var": "x"}]}, {"x": math.inf}) is True
    assert compile_condition({"!!": [{"var": "x"}]})({"x": math.nan}) is False
    assert apply({"cat": [{"var": "x"}, {"var": "y"}]}, {"x": math.inf, "y": -math.inf}) == (
        "Infinity-Infinity"
    )
