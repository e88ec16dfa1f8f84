"""JsonLogic evaluation is bounded in time and memory (issue 19, class 1).

A ``reduce`` that squares its accumulator forty times built a 2^40-bit
integer and froze the event loop; json-logic-js overflows to ``Infinity``
after about ten squarings. Integers past the float range now overflow to an
infinity the same way; ``cat`` and ``merge`` have a size bound. Each hostile
rule runs in a subprocess with a hard timeout, as a hang is the failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow import JsonLogicError, _jsonlogic_compiled, jsonlogic

CONFORMANCE = Path("/work/shared/conformance/jsonlogic/tests.json")

SQUARE_FORTY_TIMES = {
    "reduce": [
        {"var": "steps"},
        {"*": [{"var": "accumulator"}, {"var": "accumulator"}]},
        3,
    ]
}
STEPS = {"steps": list(range(40))}


def run_isolated(rule: Any, data: Any, *, compiled: bool = False) -> str:
    """``apply(rule, data)`` in a subprocess that is killed after 30 s; its printed outcome.

    The outcome is the result's ``repr()`` (``list`` for a list), or the error.

    ``compiled``: the compiled evaluator condition nodes use, not ``apply``.
    """
    evaluate = (
        "_jsonlogic_compiled.compile_rule(rule)(data)"
        if compiled
        else "jsonlogic.apply(rule, data)"
    )
    code = textwrap.dedent(
        f"""
        import json, sys
        from stageflow import JsonLogicError, jsonlogic, _jsonlogic_compiled
        rule, data = json.load(sys.stdin)
        try:
            value = {evaluate}
            print("list" if isinstance(value, list) else repr(value))  # a list may be huge
        except JsonLogicError as exc:
            print("JsonLogicError", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([rule, data]),  # on stdin: no limit on its size, as argv has
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_squaring_forty_times_overflows_to_infinity_in_bounded_time() -> None:
    # JSON has no infinity: apply() returns it as None, as JSON.stringify writes it.
    assert run_isolated(SQUARE_FORTY_TIMES, STEPS) == "None"


def test_squaring_overflows_where_javascript_does() -> None:
    rule = {">": [SQUARE_FORTY_TIMES, 10**300]}
    assert jsonlogic.apply(rule, STEPS) is True
    ten = {"reduce": [{"var": "steps"}, SQUARE_FORTY_TIMES["reduce"][1], 3]}
    # 3 ** (2 ** 9) has 812 bits, kept exactly; one squaring more is past the float range.
    assert jsonlogic.apply(ten, {"steps": list(range(9))}) == 3 ** (2**9)
    assert jsonlogic.apply({"==": [ten, {"/": [1, 0]}]}, {"steps": list(range(10))}) is True


def test_a_doubling_cat_is_refused_in_bounded_time() -> None:
    rule = {"reduce": [{"var": "steps"}, {"cat": [{"var": "accumulator"}] * 2}, "ab"]}
    assert run_isolated(rule, STEPS).startswith("JsonLogicError")


def test_a_doubling_merge_is_refused_in_bounded_time() -> None:
    rule = {"reduce": [{"var": "steps"}, {"merge": [{"var": "accumulator"}] * 2}, [1]]}
    outcome = run_isolated(rule, STEPS)
    assert outcome.startswith("JsonLogicError")
    assert "merge" in outcome


def _shared_tree(items: int) -> dict[str, Any]:
    """A reduce whose step is ``[acc, acc]``: ``items`` lists, 2**items leaves."""
    accumulator = {"var": "accumulator"}
    return {"reduce": [[0] * items, [accumulator, accumulator], 1.5]}


@pytest.mark.parametrize("compiled", [False, True], ids=["apply", "compiled"])
@pytest.mark.parametrize(
    ("rule", "outcome"),
    [
        (_shared_tree(60), "list"),
        ({"==": [_shared_tree(60), _shared_tree(60)]}, "True"),
        ({"===": [_shared_tree(60), _shared_tree(59)]}, "False"),
        ({"in": [_shared_tree(60), [1, _shared_tree(60)]]}, "True"),
        ({"cat": [_shared_tree(60)]}, "JsonLogicError JsonLogic cannot write a list of over"),
    ],
    ids=["result", "equal", "unequal", "in", "cat"],
)
def test_values_that_share_their_lists_are_walked_in_bounded_time(
    rule: Any, outcome: str, compiled: bool
) -> None:
    # [acc, acc] doubles the leaves each step while adding one list: the
    # result's NaN clean-up, ==, in and cat walked every leaf (2**60 here).
    assert run_isolated(rule, {}, compiled=compiled).startswith(outcome)


def test_a_result_that_shares_its_lists_is_cleaned_of_nan_everywhere() -> None:
    accumulator = {"var": "accumulator"}
    rule = {"reduce": [[0, 0], [accumulator, accumulator], {"/": [0, 0]}]}  # NaN leaves
    assert jsonlogic.apply(rule) == [[None, None], [None, None]]
    assert jsonlogic.apply(_shared_tree(2)) == [[1.5, 1.5], [1.5, 1.5]]


@pytest.mark.parametrize("name", ["max", "min"])
def test_min_and_max_overflow_to_an_infinity_as_arithmetic_does(name: str) -> None:
    # They returned the 20,000-bit integer itself, which no JSON writer takes.
    huge = "0x" + "f" * 5000
    rule = {name: [huge if name == "max" else {"-": [huge]}, 1]}
    assert jsonlogic.apply(rule) is None  # an infinity, which JSON writes as null
    assert _jsonlogic_compiled.compile_rule(rule)({}) is None


def test_an_integer_from_the_data_past_the_float_range_is_an_infinity() -> None:
    huge = 10**4000
    assert jsonlogic.apply({"+": [{"var": "n"}, 1]}, {"n": huge}) is None  # +Infinity
    assert jsonlogic.apply({">": [{"*": [{"var": "n"}, 2]}, 10**308]}, {"n": huge}) is True
    assert jsonlogic.apply({"<": [{"var": "n"}, 10**4001]}, {"n": huge}) is True  # exact


@pytest.mark.skipif(not CONFORMANCE.exists(), reason="the shared conformance suite is absent")
def test_the_shared_conformance_suite_still_passes() -> None:
    cases = [c for c in json.loads(CONFORMANCE.read_text()) if not isinstance(c, str)]
    assert cases
    for rule, data, expected in cases:
        assert jsonlogic.apply(rule, data) == expected, (rule, data)


numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, 1, -1, 2, 10**308, -(10**308), 2**1023, 2**1024, 10**4000]),
    st.floats(allow_nan=False),
    st.sampled_from(["1e308", "-0", "0x10", "Infinity", "abc", ""]),
)
ARITHMETIC = ["+", "-", "*", "/", "%", "min", "max", "<", ">", "=="]


def arithmetic(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return numbers | st.just({"var": "n"})
    inner = arithmetic(depth - 1)
    return numbers | st.builds(
        lambda op, args: {op: args}, st.sampled_from(ARITHMETIC), st.lists(inner, max_size=3)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=arithmetic(4), n=numbers)
def test_fuzz_numeric_rules_give_a_bounded_json_number_or_a_typed_error(rule: Any, n: Any) -> None:
    try:
        result = jsonlogic.apply(rule, {"n": n})
    except JsonLogicError:
        return
    if isinstance(result, int) and not isinstance(result, bool):
        assert result.bit_length() <= max(jsonlogic.MAX_EXACT_BITS, 14_000)
    if isinstance(result, float):
        assert math.isfinite(result)  # apply() makes NaN and infinities None


@settings(max_examples=100, deadline=None)
@given(
    op=st.sampled_from(["*", "+", "cat", "merge"]),
    seed=st.sampled_from([3, 2**500, "ab", [1, 2]]),
    steps=st.integers(0, 60),
)
def test_fuzz_reduce_that_grows_its_accumulator_ends(op: str, seed: Any, steps: int) -> None:
    rule = {"reduce": [{"var": "steps"}, {op: [{"var": "accumulator"}] * 2}, seed]}
    with contextlib.suppress(JsonLogicError):
        jsonlogic.apply(rule, {"steps": list(range(steps))})


@settings(max_examples=100, deadline=None)
@given(
    levels=st.integers(0, 400),
    wrapper=st.sampled_from(["!", "!!", "list", "if", "var"]),
)
def test_fuzz_deep_rules_give_a_result_or_a_typed_error(levels: int, wrapper: str) -> None:
    """Rules nested up to four times past the depth limit: a result or a JsonLogicError."""
    rule: Any = {"var": "n"}
    for _ in range(levels):
        if wrapper == "list":
            rule = [rule]
        elif wrapper == "if":
            rule = {"if": [rule, 1, 0]}
        elif wrapper == "var":
            rule = {"var": [rule]}
        else:
            rule = {wrapper: [rule]}
    if levels < jsonlogic.MAX_DEPTH // 2:  # two levels of rule per wrapper at most
        jsonlogic.apply(rule, {"n": 1})
        return
    with contextlib.suppress(JsonLogicError):
        jsonlogic.apply(rule, {"n": 1})


def nested_loops(levels: int, items: int, op: str) -> Any:
    """``op`` over ``items`` items, inside itself ``levels`` times: items**levels rules.

    The innermost rule keeps ``all`` going (true) and ``some`` (false).
    """
    rule: Any = op == "all"
    for _ in range(levels):
        rule = {op: [list(range(items)), rule]}
    return rule


@pytest.mark.parametrize("compiled", [False, True], ids=["apply", "compiled"])
@pytest.mark.parametrize("op", ["some", "map", "all"])
def test_nested_loops_are_refused_in_bounded_time(op: str, compiled: bool) -> None:
    # Six loops over 30 items: 729 million evaluations, hours of a frozen
    # event loop from a rule of 200 numbers.
    outcome = run_isolated(nested_loops(6, 30, op), {}, compiled=compiled)
    assert outcome.startswith("JsonLogicError JsonLogic rule took more than 10,000,000 steps")
    assert "do not nest the loops" in outcome


@pytest.mark.parametrize("compiled", [False, True], ids=["apply", "compiled"])
@pytest.mark.parametrize(
    "step",
    [
        {"merge": [{"var": "accumulator"}, [{"var": "current"}]]},
        {"cat": [{"var": "accumulator"}, "x"]},
    ],
    ids=["merge", "cat"],
)
def test_a_reduce_that_appends_to_its_accumulator_is_refused_in_bounded_time(
    step: Any, compiled: bool
) -> None:
    # Each item copies the accumulator: 300,000 items copy 45 billion values.
    seed: Any = [] if "merge" in step else ""
    rule = {"reduce": [{"var": "items"}, step, seed]}
    outcome = run_isolated(rule, {"items": [0] * 300_000}, compiled=compiled)
    assert outcome.startswith("JsonLogicError JsonLogic rule took more than")


def evaluators(rule: Any, data: Any) -> list[Any]:
    """What ``apply`` and the compiled rule and condition give: each result or error."""
    outcomes: list[Any] = []
    for evaluate in (
        jsonlogic.apply,
        lambda r, d: _jsonlogic_compiled.compile_rule(r)(d),
        lambda r, d: _jsonlogic_compiled.compile_condition(r)(d),
    ):
        try:
            outcomes.append(evaluate(rule, data))
        except JsonLogicError as exc:
            outcomes.append(str(exc).split(":")[0])
    return outcomes


STEPS_ERROR = "JsonLogic rule took more than 1,000 steps (jsonlogic.MAX_STEPS)"


def test_a_loop_over_a_value_from_the_data_counts_the_items_it_goes_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 'in' scans the accumulator, a list from the data, at every item: the
    # loop is short, its work is the data's size times the items.
    monkeypatch.setattr(jsonlogic, "MAX_STEPS", 1_000, raising=False)
    scan = {"if": [{"in": [-1, {"var": "accumulator"}]}, 0, {"var": "accumulator"}]}
    rule = {"!!": {"reduce": [list(range(20)), scan, {"var": "big"}]}}
    assert evaluators(rule, {"big": list(range(100))}) == [STEPS_ERROR] * 3
    assert evaluators(rule, {"big": list(range(10))}) == [True] * 3


def test_the_loops_of_one_rule_share_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonlogic, "MAX_STEPS", 1_000, raising=False)
    loop = {"some": [list(range(300)), False]}  # 2 steps an item: 600
    assert evaluators(loop, None) == [False] * 3
    assert evaluators({"or": [loop, loop]}, None) == [STEPS_ERROR] * 3


def test_steps_outside_loops_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part of a rule without a loop is evaluated once: nothing to bound."""
    monkeypatch.setattr(jsonlogic, "MAX_STEPS", 10, raising=False)
    data = {"a": list(range(1000)), "b": list(range(1000))}
    assert evaluators({"==": [{"var": "a"}, {"var": "b"}]}, data) == [True] * 3
    assert evaluators({"in": [999, {"merge": [{"var": "a"}, 1]}]}, data) == [True] * 3
    # In a rule with a loop too: the steps are those of the loop only.
    rule = {"and": [{"==": [{"var": "a"}, {"var": "b"}]}, {"some": [[1, 2], True]}]}
    assert evaluators(rule, data) == [True] * 3


@pytest.mark.parametrize("compiled", [False, True], ids=["apply", "compiled"])
def test_a_loop_through_a_large_list_of_the_data_is_within_the_steps(compiled: bool) -> None:
    rule = {"some": [{"var": "items"}, {"==": [{"var": "sku"}, "last"]}]}
    items = [{"sku": str(i)} for i in range(1_000_000)] + [{"sku": "last"}]
    assert run_isolated(rule, {"items": items}, compiled=compiled) == "True"
