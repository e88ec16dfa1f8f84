"""Built-in stages: the list stages."""

from __future__ import annotations

from typing import Any

import pytest
from builtin_support import REGISTRY, context_after, failure, node, problem_at, problems, run

import stageflow
import stageflow.builtins as builtins
from stageflow import jsonlogic
from stageflow.builtins import (
    BuiltinArgumentError,
    BuiltinConfigError,
    BuiltinStageError,
)

pytestmark = pytest.mark.anyio

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
    ("items", "index", "what"),
    [([], -1, "is empty"), ([1, 2], 2, "has 2 items"), ([1], -2, "has 1 item,")],
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


async def test_filter_with_a_rule_past_a_jsonlogic_bound_is_a_config_error() -> None:
    # What depends on the data fails when the stage runs; an unknown operator
    # fails when the pipeline loads (test_builtins_text_and_checks.py).
    doubled = {"cat": [{"var": ""}, {"var": ""}]}
    error = await failure(
        node("filter", arguments={"items": "l"}, config={"rule": doubled}, outputs={"value": "o"}),
        payload={"l": ["short", "x" * 600_000, "short"]},
    )
    assert isinstance(error, BuiltinConfigError)
    assert isinstance(error.__cause__, stageflow.JsonLogicError)
    # Which of the items the rule could not be evaluated for, and a glimpse of it.
    assert 'cannot be evaluated for item 1 of 3 ("xxxx' in str(error)
    assert "fix the rule, or the item" in str(error)
    assert len(str(error)) < 1000


async def test_filter_items_share_the_steps_of_one_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each item fits MAX_STEPS alone (about 600 steps of 1,000); two do not.
    # With a fresh count for every item, a rule of seconds per item held the
    # event loop for seconds times the items (no timeout can fire meanwhile).
    monkeypatch.setattr(jsonlogic, "MAX_STEPS", 1_000, raising=False)
    rule = {"some": [{"var": ""}, False]}  # 2 steps for each of the item's 300 values
    filter_node = node("filter", arguments={"items": "l"}, config={"rule": rule}, outputs={})
    row = list(range(300))
    assert await context_after(filter_node, payload={"l": [row]}) == {"l": [row]}
    error = await failure(filter_node, payload={"l": [row, row]})
    assert isinstance(error, BuiltinConfigError)
    assert isinstance(error.__cause__, stageflow.JsonLogicError)
    assert "cannot be evaluated for item 1 of 2" in str(error)
    assert "took more than 1,000 steps (jsonlogic.MAX_STEPS)" in str(error)
    assert "share the jsonlogic.MAX_STEPS steps of one evaluation" in str(error)


async def test_filter_rule_steps_inside_an_item_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As inside JsonLogic's 'filter': '==' spends one step per item it compares.
    monkeypatch.setattr(jsonlogic, "MAX_STEPS", 1_000, raising=False)
    rule = {"==": [{"var": "a"}, {"var": "b"}]}
    filter_node = node("filter", arguments={"items": "l"}, config={"rule": rule}, outputs={})
    row = list(range(2_000))
    error = await failure(filter_node, payload={"l": [{"a": row, "b": row}]})
    assert isinstance(error.__cause__, stageflow.JsonLogicError)
    assert "took more than 1,000 steps" in str(error)


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


def test_concat_of_an_unmapped_name_is_a_load_time_problem() -> None:
    # It would fail every run that reaches the node: refused before any does.
    message = problem_at(
        "$.nodes[0].config.order[1]",
        node(
            "concat",
            arguments={"first": "a", "last": "b"},
            config={"order": ["first", "lst"]},
            outputs={"value": "out"},
        ),
    )
    assert "names argument 'lst', which the node does not map (it maps: first, last)" in message
    assert '("arguments": {"lst": "<path>"}) or fix the name' in message


def test_concat_of_many_unmapped_names_is_one_problem() -> None:
    # One mistake, one message of bounded length: not one per name.
    order = ["a", *(f"n{i:06}" for i in range(50_000))]
    found = problems(
        node("concat", arguments={"a": "a"}, config={"order": order}, outputs={"value": "o"})
    )
    assert [p.location for p in found] == ["$.nodes[0].config.order"]
    message = found[0].message
    assert "names arguments 'n000000', 'n000001'," in message
    assert "and 49980 more, which the node does not map (it maps: a)" in message
    assert '("arguments": {"n000000": "<path>"})' in message
    assert len(message) < 1000


async def test_concat_of_a_name_whose_path_holds_nothing_is_an_error() -> None:
    error = await failure(
        node(
            "concat",
            arguments={"a": "a", "b": "nowhere"},
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


async def test_concat_refuses_to_build_a_string_past_the_bound() -> None:
    half = "x" * (builtins.MAX_TEXT // 2)
    joined = node(
        "concat",
        arguments={"a": "s", "b": "s"},
        config={"order": ["a", "b"], "separator": "-"},
        outputs={"value": "s"},
    )
    error = await failure(joined, payload={"s": half})
    assert type(error) is BuiltinStageError
    assert f"the joined string would be more than {builtins.MAX_TEXT:,} characters" in str(error)
    # Up to the bound is fine: two halves without a separator.
    del joined["config"]["separator"]
    assert len((await context_after(joined, payload={"s": half}))["s"]) == builtins.MAX_TEXT


async def test_a_loop_that_doubles_a_string_fails_within_a_few_turns() -> None:
    # Without the bound every turn doubles the string: thirty turns are 2**30
    # characters per megabyte given, the process's memory long before max_steps.
    document = {
        "api_version": "1.0",
        "entry": "double",
        "limits": {"max_steps": 14},
        "nodes": [
            {
                "id": "double",
                "type": "stage",
                "stage": "builtins.concat",
                "arguments": {"a": "s", "b": "s"},
                "config": {"order": ["a", "b"]},
                "outputs": {"value": "s"},
                "next": "again",
            },
            {
                "id": "again",
                "type": "condition",
                "conditions": [{"if": False, "then": "end"}],
                "else": "double",
            },
            {"id": "end", "type": "terminal"},
        ],
    }
    pipeline = stageflow.Pipeline.from_dict(document, registry=REGISTRY)
    session = stageflow.Session(pipeline, registry=REGISTRY, payload={"s": "x" * 2**20})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert type(result.error) is BuiltinStageError, repr(result.error)
    # 2**20 doubled four times is 2**24, the bound; the fifth turn is refused.
    assert len(session.payload["s"]) == builtins.MAX_TEXT
    turns = [e for e in session.history if e.type == "node_started" and e.node_id == "double"]
    assert len(turns) == 5
