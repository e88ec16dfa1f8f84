import json
import math
import re
from collections import ChainMap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow._errors import JsonLogicError
from stageflow.jsonlogic import MAX_DEPTH, OPERATORS, apply, check, is_rule, truthy

SUITE = Path(__file__).parent / "data" / "jsonlogic" / "tests.json"


def _load_suite() -> list[Any]:
    entries = json.loads(SUITE.read_text(encoding="utf-8"))
    cases = [entry for entry in entries if not isinstance(entry, str)]
    return [
        pytest.param(rule, data, expected, id=f"case-{number:03d}")
        for number, (rule, data, expected) in enumerate(cases, start=1)
    ]


CASES = _load_suite()


def same_json(actual: Any, expected: Any) -> bool:
    """JSON equality that tells bool from int and int from float."""
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(same_json(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same_json(actual[k], expected[k]) for k in expected)
        )
    return type(actual) is type(expected) and actual == expected


def test_suite_is_complete() -> None:
    assert len(CASES) == 277


@pytest.mark.parametrize(("rule", "data", "expected"), CASES)
def test_conformance(rule: Any, data: Any, expected: Any) -> None:
    result = apply(rule, data)
    assert same_json(result, expected), f"{rule!r} on {data!r}: got {result!r}"


def test_same_json_is_strict() -> None:
    assert not same_json(1, True)
    assert not same_json(True, 1)
    assert not same_json([0], [False])
    assert same_json({"a": [1, "x", None]}, {"a": [1, "x", None]})


# --- errors -----------------------------------------------------------------


def test_unknown_operator_names_it_and_lists_supported() -> None:
    with pytest.raises(JsonLogicError, match="unknown JsonLogic operator 'frobnicate'") as info:
        apply({"frobnicate": [1, 2]})
    message = str(info.value)
    for name in ("var", "missing_some", "reduce", "substr"):
        assert f"{name}," in message or message.endswith(name)
    assert isinstance(info.value, ValueError)


def test_unknown_operator_nested_in_an_argument() -> None:
    with pytest.raises(JsonLogicError, match="'nope'"):
        apply({"and": [True, {"nope": 1}]})


def test_method_operator_is_not_supported() -> None:
    with pytest.raises(JsonLogicError, match="method"):
        apply({"method": ["abc", "upper"]})
    assert "method" not in OPERATORS


@pytest.mark.parametrize(
    "rule",
    [{">": [1]}, {"==": [1, 2, 3]}, {"!": []}, {"substr": ["x"]}, {"map": [[1]]}, {"*": []}],
)
def test_wrong_argument_count(rule: dict[str, Any]) -> None:
    (name,) = rule
    with pytest.raises(JsonLogicError, match=re.escape(f"operator {name!r} takes ")):
        apply(rule)


def _nested(depth: int, leaf: Any, wrap: Any) -> Any:
    rule = leaf
    for _ in range(depth):
        rule = wrap(rule)
    return rule


@pytest.mark.parametrize(
    "wrap",
    [lambda r: {"!": r}, lambda r: {"if": [True, r]}, lambda r: [r], lambda r: {"map": [[1], r]}],
    ids=["not", "if", "array", "map"],
)
def test_depth_limit_10000_levels(wrap: Any) -> None:
    rule = _nested(10_000, True, wrap)
    with pytest.raises(JsonLogicError, match=f"more than {MAX_DEPTH} levels deep .*; flatten it"):
        apply(rule, {})


def test_depth_limit_allows_max_depth() -> None:
    # MAX_DEPTH levels in all: MAX_DEPTH - 1 operators around a `var`.
    assert apply(_nested(MAX_DEPTH - 1, {"var": "x"}, lambda r: {"!!": r}), {"x": 1}) is True
    with pytest.raises(JsonLogicError, match="nested more than"):
        apply(_nested(MAX_DEPTH, {"var": "x"}, lambda r: {"!!": r}), {"x": 1})
    # An argument list is not a level of its own, an array literal is.
    assert apply(_nested(MAX_DEPTH - 1, {"var": "x"}, lambda r: {"!!": [r]}), {"x": 1}) is True
    with pytest.raises(JsonLogicError, match="nested more than"):
        apply(_nested(MAX_DEPTH // 2, {"var": "x"}, lambda r: {"!!": [[r]]}), {"x": 1})


@pytest.mark.parametrize(
    "wrap",
    [lambda r: {"!!": r}, lambda r: {"!!": [r]}, lambda r: {"!!": [[r]]}, lambda r: [r]],
    ids=["bare argument", "argument list", "array literal argument", "array literal"],
)
def test_check_refuses_exactly_what_apply_refuses_for_depth(wrap: Any) -> None:
    # check() counted an operation's argument list as a level: a rule of 51
    # to 100 {"!!": [rule]} levels ran, yet a pipeline holding it was refused.
    for levels in range(1, MAX_DEPTH + 3):
        rule = _nested(levels, {"var": "x"}, wrap)
        try:
            apply(rule, {"x": 1})
            runs = True
        except JsonLogicError:
            runs = False
        assert (check(rule) == []) is runs, levels


def test_deep_data_is_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(JsonLogicError, match="value nested more than"):
        apply({"==": [{"var": "a"}, {"var": "b"}]}, {"a": deep, "b": deep})
    with pytest.raises(JsonLogicError, match="value nested more than"):
        apply({"cat": [{"var": "a"}]}, {"a": deep})
    assert apply({"!!": {"var": "a"}}, {"a": deep}) is True


# --- var and missing ------------------------------------------------------------


def test_no_attribute_access() -> None:
    class Thing:
        secret = "attribute"

    data = {"a": {"b": 1}, "thing": Thing()}
    for path in ("__class__", "a.__class__", "a.keys", "a.__dict__", "thing.secret", "items"):
        assert apply({"var": path}, data) is None
        assert apply({"var": [path, "fallback"]}, data) == "fallback"
    assert apply({"var": "__len__"}, [1, 2]) is None
    assert apply({"var": "upper"}, "text") is None
    assert apply({"var": "a.length"}, {"a": [1, 2]}) is None
    assert apply({"var": "secret"}, Thing()) is None
    assert apply({"missing": ["__class__", "a.__class__"]}, data) == ["__class__", "a.__class__"]


def test_var_list_indexes() -> None:
    data = {"order": {"items": [{"sku": "a"}, {"sku": "b"}]}, "grid": [[1, 2], [3, 4]]}
    assert apply({"var": "order.items.1.sku"}, data) == "b"
    assert apply({"var": "grid.1.0"}, data) == 3
    assert apply({"var": 0}, ["x", "y"]) == "x"
    for path in ("order.items.2.sku", "order.items.-1", "order.items.01", "order.items.1.0"):
        assert apply({"var": [path, "none"]}, data) == "none"
    assert apply({"var": "items.0"}, {"items": ("frozen",)}) == "frozen"
    assert apply({"var": "code.1"}, {"code": "XYZ"}) == "Y"  # as in JavaScript


def test_var_whole_data_and_computed_path() -> None:
    assert apply({"var": ""}, {"a": 1}) == {"a": 1}
    assert apply({"var": [{"cat": ["a", ".b"]}]}, {"a": {"b": 7}}) == 7
    assert apply({"var": ["x", {"+": [1, 2]}]}, {}) == 3


def test_var_present_null_is_not_missing() -> None:
    # json-logic-js: the default replaces only an absent value; a stored null is returned.
    assert apply({"var": ["a", "d"]}, {"a": None}) is None
    assert apply({"var": ["a", "d"]}, {}) == "d"
    assert apply({"var": ["a.b", "d"]}, {"a": None}) == "d"
    # ...but `missing` counts null and "" as missing.
    assert apply({"missing": ["a", "b", "c"]}, {"a": None, "b": "", "c": 0}) == ["a", "b"]


def test_read_only_mappings_as_data_and_rule() -> None:
    data = ChainMap({"x": 1}, {"y": {"z": 2}})
    assert apply({"+": [{"var": "x"}, {"var": "y.z"}]}, data) == 3
    frozen_rule = MappingProxyType({"==": (MappingProxyType({"var": "x"}), 1)})
    assert apply(frozen_rule, MappingProxyType({"x": 1})) is True


# --- arithmetic -----------------------------------------------------------------


def test_division_and_modulo_by_zero() -> None:
    # The result of apply is JSON: NaN and infinities come out as None...
    assert apply({"/": [1, 0]}) is None
    assert apply({"/": [0, 0]}) is None
    assert apply({"/": [1.5, "0"]}) is None
    assert apply({"%": [5, 0]}) is None
    assert apply({"map": [[1, 0], {"/": [1, {"var": ""}]}]}) == [1, None]
    # ...but inside a rule they behave as in JavaScript (Infinity, -Infinity, NaN).
    assert apply({">": [{"/": [1, 0]}, 1e308]}) is True
    assert apply({"<": [{"/": [-1, 0]}, -1e308]}) is True
    assert apply({"<": [{"/": [{"var": "a"}, {"var": "b"}]}, 1]}, {"a": 5, "b": 0}) is False
    assert apply({"if": [{"/": [1, 0]}, "yes", "no"]}) == "yes"
    assert apply({"if": [{"/": [0, 0]}, "yes", "no"]}) == "no"
    assert apply({"==": [{"%": [1, 0]}, {"%": [1, 0]}]}) is False
    assert apply({"cat": [{"/": [1, 0]}, " ", {"/": [0, 0]}]}) == "Infinity NaN"


def test_non_finite_results_are_none() -> None:
    assert apply({"+": ["abc", 1]}) is None
    assert apply({"*": [1e308, 10]}) is None
    assert apply({"max": []}) is None
    assert apply({"min": [1, "x"]}) is None
    assert apply({"-": ["Infinity"]}) is None
    assert apply([[{"+": ["x"]}], 1]) == [[None], 1]
    data = {"a": [1.5, 2.5]}
    assert apply({"var": "a"}, data) is data["a"]  # a list result is copied only if it changes


def test_arithmetic_result_types() -> None:
    assert type(apply({"+": [1, 1]})) is int
    assert type(apply({"/": [4, 2]})) is int
    assert apply({"/": [1, 2]}) == 0.5
    assert type(apply({"+": [1.5, 1.5]})) is float
    assert apply({"%": [-3, 2]}) == -1
    assert apply({"%": [5.5, 2]}) == 1.5
    assert math.copysign(1, apply({"-": [0.0]})) == 1  # JSON has no negative zero


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (" 12 ", 12),
        ("", 0),
        ("0x10", 16),
        ("0b11", 3),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-7", -7),
        ("1_000", None),
        ("12abc", None),
        ("inf", None),
        ("\u0663", None),
    ],
)
def test_number_coercion_like_js_number(text: str, number: float | None) -> None:
    assert apply({"+": [text]}) == number


def test_numeric_coercion_of_non_strings() -> None:
    assert apply({"+": [True, None, [5]]}) == 6
    assert apply({"+": [[]]}) == 0
    assert apply({"+": [{}]}) is None
    assert apply({"+": [[1, 2]]}) is None


# --- comparison and truthiness --------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "loose"),
    [
        (None, 0, False),
        (None, None, True),
        (0, "", True),
        (False, "0", True),
        (True, "1", True),
        (True, 2, False),
        ([1], 1, True),
        ([1, 2], "1,2", True),
        ([], False, True),
        ({"a": 1}, {"a": 1}, True),
        ([True], [1], False),
        ({}, "[object Object]", True),
        ("abc", "abc", True),
        (1, 1.0, True),
    ],
)
def test_loose_equality(a: Any, b: Any, loose: bool) -> None:
    assert apply({"==": [{"var": "a"}, {"var": "b"}]}, {"a": a, "b": b}) is loose
    assert apply({"!=": [{"var": "a"}, {"var": "b"}]}, {"a": a, "b": b}) is not loose


def test_strict_equality() -> None:
    assert apply({"===": [True, 1]}) is False
    assert apply({"===": [1, 1.0]}) is True
    data = {"a": [1, {"k": None}], "b": [1, {"k": None}], "c": [1, {"k": False}]}
    assert apply({"===": [{"var": "a"}, {"var": "b"}]}, data) is True
    assert apply({"===": [{"var": "a"}, {"var": "c"}]}, data) is False
    assert apply({"==": [{"var": "a"}, {"var": "c"}]}, data) is False
    assert apply({"!==": [[1], [1.0]]}) is False
    assert apply({"===": [None, None]}) is True


def test_ordering() -> None:
    assert apply({"<": ["10", "9"]}) is True  # two strings compare as strings
    assert apply({"<": ["10", 9]}) is False
    assert apply({"<": [None, 1]}) is True
    assert apply({"<": ["abc", 1]}) is False
    assert apply({">=": ["abc", "abc"]}) is True
    assert apply({"<=": [1, 1, 1]}) is True
    assert apply({"<": [1, {"var": "x"}, 10]}, {"x": 5}) is True


def test_js_truthiness() -> None:
    for value in (0, 0.0, "", [], None, False, math.nan):
        assert apply({"!!": {"var": "x"}}, {"x": value}) is False
        assert truthy(value) is False
    for value in (1, -0.5, "0", "false", [0], {}, {"a": 1}, True, math.inf):
        assert apply({"!!": {"var": "x"}}, {"x": value}) is True
        assert truthy(value) is True


# --- strings and arrays ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3"),
        (True, "true"),
        (None, ""),  # json-logic-js joins the arguments: null adds nothing
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (1.2345678901234568e20, "123456789012345680000"),
        (10**22, "1e+22"),
        ([1, [2, None], "x"], "1,2,,x"),
        ({"a": 1}, "[object Object]"),
    ],
)
def test_cat_uses_js_string_conversion(value: Any, text: str) -> None:
    assert apply({"cat": [{"var": "v"}]}, {"v": value}) == text


def test_substr() -> None:
    assert apply({"substr": ["jsonlogic", 20]}) == ""
    assert apply({"substr": ["jsonlogic", -20, 4]}) == "json"
    assert apply({"substr": ["jsonlogic", 2, -20]}) == ""
    assert apply({"substr": [12345, 1, 2]}) == "23"


def test_in() -> None:
    assert apply({"in": [1, [True, "1", 1.0]]}) is True
    assert apply({"in": [1, [True, "1"]]}) is False
    assert apply({"in": [{"var": "a"}, {"var": "b"}]}, {"a": {"k": 1}, "b": [{"k": 1}]}) is True
    assert apply({"in": [[1], [[1], 2]]}) is True
    assert apply({"in": ["", ""]}) is False
    assert apply({"in": [1, "a1"]}) is True
    assert apply({"in": ["a", None]}) is False


def test_array_operators_on_non_arrays() -> None:
    assert apply({"map": [{"var": "x"}, 1]}, {"x": "abc"}) == []
    assert apply({"filter": [None, True]}) == []
    assert apply({"all": [5, True]}) is False
    assert apply({"some": [5, True]}) is False
    assert apply({"none": [5, True]}) is True
    assert apply({"reduce": [5, 1]}) is None


def test_reduce_scope_and_nesting() -> None:
    rule = {
        "map": [
            {"var": "rows"},
            {"reduce": [{"var": ""}, {"max": [{"var": "current"}, {"var": "accumulator"}]}, 0]},
        ]
    }
    assert apply(rule, {"rows": [[1, 5, 2], [], [7]]}) == [5, 0, 7]


def test_if_chains_and_alias() -> None:
    rule = {"if": [{"<": [{"var": "t"}, 0]}, "freezing", {"<": [{"var": "t"}, 20]}, "mild", "hot"]}
    assert [apply(rule, {"t": t}) for t in (-5, 10, 30)] == ["freezing", "mild", "hot"]
    assert apply({"?:": [{"var": "x"}, 1, 2]}, {"x": []}) == 2


def test_log_is_a_silent_pass_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert apply({"log": "apple"}) == "apple"
    assert apply({"log": [{"var": "a"}]}, {"a": [1, 2]}) == [1, 2]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# --- API --------------------------------------------------------------------------


def test_literals_and_non_rule_objects_pass_through() -> None:
    assert apply({}) == {}
    assert apply({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert apply([{"var": "a"}, {"x": 1, "y": 2}], {"a": 0}) == [0, {"x": 1, "y": 2}]


def test_apply_does_not_mutate() -> None:
    rule = {"merge": [{"var": "a"}, [3]]}
    data = {"a": [1, 2]}
    assert apply(rule, data) == [1, 2, 3]
    assert data == {"a": [1, 2]}
    assert rule == {"merge": [{"var": "a"}, [3]]}


def test_is_rule_and_operators() -> None:
    assert is_rule({"var": "a"})
    assert is_rule({"unknown": 1})
    assert not is_rule({})
    assert not is_rule({"a": 1, "b": 2})
    assert not is_rule(["var", "a"])
    assert not is_rule("var")
    assert {"var", "if", "?:", "==", "reduce", "log", "missing_some"} <= OPERATORS
    assert len(OPERATORS) == 35
    assert isinstance(OPERATORS, frozenset)


# --- robustness -------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
_rules = st.recursive(
    _json_values,
    lambda inner: (
        st.builds(lambda op, args: {op: args}, st.sampled_from(sorted(OPERATORS)), inner)
        | st.lists(inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(rule=_rules, data=_json_values)
def test_any_rule_gives_a_json_value_or_a_jsonlogic_error(rule: Any, data: Any) -> None:
    try:
        result = apply(rule, data)
    except JsonLogicError:
        return
    json.dumps(result, allow_nan=False)
