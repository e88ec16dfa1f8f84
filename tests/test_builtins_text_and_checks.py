"""Built-in stages: template, assert, fail and log."""

from __future__ import annotations

import re
from typing import Any

import pytest
import structlog
from builtin_support import (
    REGISTRY,
    context_after,
    document,
    failure,
    node,
    problem_at,
    problems,
    run,
)

import stageflow
import stageflow._templates
import stageflow.builtins as builtins
from stageflow.builtins import (
    AssertionFailedError,
    BuiltinArgumentError,
    BuiltinConfigError,
    BuiltinStageError,
    InjectedFailureError,
    TemplateError,
)

pytestmark = pytest.mark.anyio

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


def test_template_placeholder_of_an_unmapped_argument_is_a_load_time_problem() -> None:
    # Every run reaching the node would fail on it: refused before any does.
    message = problem_at(
        "$.nodes[0].config.template",
        template("Hi {usr.name}, {user.name}: {count} {usr.x} {{usr}}", user="u"),
    )
    assert (
        "reads arguments the node does not map, in {count}, {usr.name}, {usr.x} "
        "(it maps: user)" in message
    )
    assert '("arguments": {"usr": "<path>"}) or fix the placeholder' in message


async def test_template_unknown_argument_names_it() -> None:
    # Mapped, but its path holds nothing when the node runs.
    error = await failure(template("Hi {user.name}", person="u", user="nowhere"), payload={"u": {}})
    assert isinstance(error, TemplateError)
    assert isinstance(error, BuiltinArgumentError)
    assert error.placeholder == "user.name"
    assert error.argument == "user"
    assert "{user.name}" in str(error)
    assert "known: person" in str(error)


async def test_template_unknown_key_names_it() -> None:
    error = await failure(template("Hi {user.name}", user="u"), payload={"u": {"nick": "a"}})
    assert isinstance(error, TemplateError)
    assert "has no key 'name' (it has: 'nick')" in str(error)


async def test_template_error_lists_a_few_names_each_quoted() -> None:
    # A message is kept whole in the history, the error description and the
    # logs: an object of 100,000 keys, or a node of as many arguments, is
    # named by twenty and a count; a key from the data is quoted, so a newline
    # or a control character in it cannot forge a line.
    keys = {f"k{i:06}": i for i in range(100_000)}
    keys["a\n\u202e"] = 0
    error = await failure(template("{x.nope}", x="x"), payload={"x": keys})
    assert isinstance(error, TemplateError)
    text = str(error)
    assert "(it has: 'a\\n\\u202e', 'k000000', 'k000001'," in text
    assert "and 99981 more); fix the template or the data" in text
    assert "\n" not in text
    assert len(text) < 1000
    many = {f"a{i:06}": "x" for i in range(100_000)}
    error = await failure(template("{nope}", **many, nope="nowhere"), payload={"x": 1})
    text = str(error)
    assert "(known: a000000, a000001," in text
    assert "and 99980 more); map 'nope'" in text
    assert len(text) < 1000


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
    found = [p for p in problems(template(text, x="x")) if p.location.endswith(".template")]
    # One problem, saying where the text stops being a template (not the
    # pattern's regular expression) and how to write one.
    assert len(found) == 1, found
    assert "is malformed at character " in found[0].message
    assert "a literal brace is written {{ or }}" in found[0].message


def test_a_malformed_template_problem_says_where() -> None:
    message = problem_at(
        "$.nodes[0].config.template", template("Dear {x}, your {order[0]} ships", x="x")
    )
    assert "is malformed at character 15 ('{order[0]} ships')" in message
    assert "does not match" not in message


@pytest.mark.parametrize("text", ["{имя}", "{x.città}"])
def test_template_names_beyond_ascii_are_refused_with_a_hint_that_says_so(text: str) -> None:
    message = problem_at("$.nodes[0].config.template", template(text, x="x", имя="x"))
    assert "(ASCII letters, digits, _ and -)" in message


@pytest.mark.parametrize("text", ["{x[0]}", "{x.__class__!r}", "a}", "{x:>10}"])
async def test_template_syntax_is_rejected_at_run_time_too(text: str) -> None:
    # A registry that skips the config schema: the stage itself must still refuse.
    loose = stageflow.StageRegistry()
    loose.add(builtins.TemplateStage, name="builtins.template", spec=stageflow.StageSpec())
    error = await failure(template(text, x="x"), payload={"x": ["a"]}, registry=loose)
    assert isinstance(error, BuiltinConfigError)
    assert "malformed at character" in str(error)


def test_a_long_template_is_parsed_but_not_kept() -> None:
    # A service that loads the documents it is sent must not keep 512
    # templates of megabytes each alive in the parse cache.
    cache = stageflow._templates._parse_cached
    before = cache.cache_info()
    long_text = "{x} " + "a" * 1_000_000
    stageflow.Pipeline.from_dict(document(template(long_text, x="x")), registry=REGISTRY)
    assert cache.cache_info()[:2] == before[:2]  # neither a hit nor a miss: not looked up
    stageflow.Pipeline.from_dict(document(template("{x} short", x="x")), registry=REGISTRY)
    assert cache.cache_info()[:2] != before[:2]


def test_template_pattern_matches_the_parser() -> None:
    pattern = re.compile(builtins.TEMPLATE_PATTERN)
    assert pattern.search("a {b} {c.d-e_1} {{ }} {{x}}")
    for bad in ["{", "}", "{a b}", "{{a}", "{a}}", "{é}"]:
        assert not pattern.search(bad), bad


def test_template_is_required_at_load_time() -> None:
    assert problem_at("$.nodes[0].config", node("template", config={}))


async def test_template_refuses_to_build_a_string_past_the_bound() -> None:
    half = "x" * (builtins.MAX_TEXT // 2)
    error = await failure(template("{s}{s}.", s="s"), payload={"s": half})
    assert type(error) is BuiltinStageError
    assert f"would be more than {builtins.MAX_TEXT:,} characters" in str(error)
    after = await context_after(template("{s}{s}", s="s"), payload={"s": half})
    assert len(after["out"]) == builtins.MAX_TEXT


async def test_template_refuses_a_list_that_would_write_a_string_many_times() -> None:
    # A thousand references to one string of a megabyte: little memory, but a
    # gigabyte once written as JSON. It is refused before being written whole.
    many = ["x" * 2**20] * 1000
    error = await failure(template("{many}", many="many"), payload={"many": many})
    assert type(error) is BuiltinStageError
    assert "the filled-in template would be more than" in str(error)
    # Containers are still written as compact JSON, non-ASCII as is.
    after = await context_after(template("{v}", v="v"), payload={"v": {"é": [1, None]}})
    assert after["out"] == '{"é":[1,null]}'


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


async def test_assert_does_not_name_what_a_loop_reads_from_its_items() -> None:
    # The rule 'some' applies reads each item, not the arguments: "price" and
    # reduce's "current" are no arguments to map. What the loops go over, and
    # reduce's initial value, do read the arguments.
    rule = {
        "and": [
            {"some": [{"var": "cart"}, {">": [{"var": "price"}, {"var": "limit"}]}]},
            {"reduce": [{"var": "lines"}, {"var": "current.total"}, {"var": "start"}]},
            {"all": [[1], {"var": ""}]},
            {"var": {"var": "which"}},
        ]
    }
    error = await failure(
        node("assert", arguments={"cart": "cart"}, config={"rule": rule}),
        payload={"cart": [{"price": 1}]},
    )
    assert isinstance(error, AssertionFailedError)
    assert error.unmapped == ("lines", "start", "which")
    assert "the rule reads 'lines', 'start', 'which', not among the arguments" in str(error)


async def test_assert_does_not_name_what_an_object_literal_holds() -> None:
    # An object of several keys is a literal in JsonLogic: nothing in it is read.
    rule = {"==": [{"var": "a"}, {"x": {"var": "b"}, "y": 1}]}
    error = await failure(
        node("assert", arguments={"a": "a"}, config={"rule": rule}), payload={"a": 1}
    )
    assert isinstance(error, AssertionFailedError)
    assert error.unmapped == ()
    assert "fix the data that reaches this node, or the rule in its config" in str(error)


async def test_assert_names_a_few_of_many_unmapped_names() -> None:
    rule = {"or": [{"var": f"name{i:06}"} for i in range(100_000)]}
    error = await failure(node("assert", config={"rule": rule}))
    assert isinstance(error, AssertionFailedError)
    assert len(error.unmapped) == 100_000
    text = str(error)
    assert "the rule reads 'name000000', 'name000001'," in text
    assert "and 99980 more, not among the arguments" in text
    assert len(text) < 2000


async def test_assert_with_a_rule_past_a_jsonlogic_bound_is_a_config_error() -> None:
    # What depends on the data fails when the stage runs; the rest when it loads (below).
    doubled = {"cat": [{"var": "text"}, {"var": "text"}]}
    error = await failure(
        node("assert", arguments={"text": "text"}, config={"rule": doubled}),
        payload={"text": "x" * 600_000},
    )
    assert isinstance(error, BuiltinConfigError)
    assert isinstance(error.__cause__, stageflow.JsonLogicError)


@pytest.mark.parametrize("stage", ["assert", "filter"])
@pytest.mark.parametrize(
    ("rule", "where", "says"),
    [
        ({"nope": []}, "", "unknown JsonLogic operator 'nope'"),
        ({"and": [True, {">": [1]}]}, ".and[1]", "operator '>' takes 2 arguments, got 1"),
        ({"!": 1, "var": "x"}, "", "is a literal in JsonLogic, not operations"),
    ],
    ids=["unknown operator", "arity", "one object"],
)
def test_a_broken_rule_in_config_is_a_load_time_problem(
    stage: str, rule: Any, where: str, says: str
) -> None:
    """As a condition's rule is: found before anything runs, located inside the rule."""
    fields: dict[str, Any] = {"config": {"rule": rule}}
    if stage == "filter":
        fields["arguments"] = {"items": "xs"}
    message = problem_at(f"$.nodes[0].config.rule{where}", node(stage, **fields))
    assert f"config 'rule' of stage 'builtins.{stage}' is a JsonLogic rule" in message
    assert says in message
    assert message.endswith("fix the rule")


def test_a_stage_of_ones_own_declares_a_config_rule_with_format_jsonlogic() -> None:
    registry = stageflow.StageRegistry()

    @registry.register(
        "Route",
        spec=stageflow.StageSpec(
            config={"type": "object", "properties": {"when": {"format": "jsonlogic"}}}
        ),
    )
    async def route(ctx: stageflow.StageContext) -> None:
        return None

    document = {
        "api_version": "1.0",
        "entry": "r",
        "nodes": [
            {
                "id": "r",
                "type": "stage",
                "stage": "Route",
                "config": {"when": {"?": 1}},
                "next": "e",
            },
            {"id": "e", "type": "terminal"},
        ],
    }
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=registry)
    assert [p.location for p in info.value.problems] == ["$.nodes[0].config.when"]
    assert "unknown JsonLogic operator '?'" in info.value.problems[0].message


def test_a_stage_of_ones_own_declares_config_names_of_arguments_with_format_argument() -> None:
    registry = stageflow.StageRegistry()

    @registry.register(
        "Pick",
        spec=stageflow.StageSpec(
            config={
                "type": "object",
                "properties": {
                    "main": {"type": "string", "format": "argument"},
                    "others": {"type": "array", "items": {"format": "argument"}},
                },
            }
        ),
    )
    async def pick(ctx: stageflow.StageContext) -> None:
        return None

    document: dict[str, Any] = {
        "api_version": "1.0",
        "entry": "p",
        "nodes": [
            {
                "id": "p",
                "type": "stage",
                "stage": "Pick",
                "arguments": {"a": "x", "b": "y"},
                "config": {"main": "c", "others": ["a", "d", "b"]},
                "next": "e",
            },
            {"id": "e", "type": "terminal"},
        ],
    }
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=registry)
    assert [p.location for p in info.value.problems] == [
        "$.nodes[0].config.main",
        "$.nodes[0].config.others[1]",
    ]
    assert "names argument 'c', which the node does not map (it maps: a, b)" in str(info.value)
    document["nodes"][0]["config"] = {"main": "a", "others": ["b"]}
    stageflow.Pipeline.from_dict(document, registry=registry)


def test_a_template_format_below_the_top_of_a_config_keeps_its_pattern_problem() -> None:
    # Only a top-level template is checked (and explained) as one; a pattern
    # failing deeper is reported as the schema says, never dropped.
    registry = stageflow.StageRegistry()
    deep = {"type": "string", "pattern": "^a$", "format": "template"}

    @registry.register(
        "Texts",
        spec=stageflow.StageSpec(
            config={"type": "object", "properties": {"texts": {"type": "array", "items": deep}}}
        ),
    )
    async def texts(ctx: stageflow.StageContext) -> None:
        return None

    document: dict[str, Any] = {
        "api_version": "1.0",
        "entry": "t",
        "nodes": [
            {"id": "t", "type": "stage", "stage": "Texts", "config": {"texts": ["b"]}, "next": "e"},
            {"id": "e", "type": "terminal"},
        ],
    }
    with pytest.raises(stageflow.PipelineValidationError) as info:
        stageflow.Pipeline.from_dict(document, registry=registry)
    assert [p.location for p in info.value.problems] == ["$.nodes[0].config.texts[0]"]
    assert "does not match" in info.value.problems[0].message


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
    "config",
    [
        {},
        {"message": ""},
        {"message": "x", "error_type": "not valid"},
        {"message": 1},
        # A YAML block scalar ends with a newline; Python's "$" matches before it.
        {"message": "x", "error_type": "RateLimited\n"},
    ],
)
def test_fail_config_is_checked_at_load_time(config: dict[str, Any]) -> None:
    found = problems(node("fail", config=config))
    assert [p.location for p in found if p.location.startswith("$.nodes[0].config")]


@pytest.mark.parametrize("name", ["Ошибка", "x" * 101, "9Lives"])
def test_fail_error_type_problem_says_which_names_are_allowed(name: str) -> None:
    # "Ошибка" is a Python identifier, yet refused: the hint says what is taken.
    message = problem_at(
        "$.nodes[0].config.error_type",
        node("fail", config={"message": "x", "error_type": name}),
    )
    assert "ASCII letters, digits and `_`, not starting with a digit, at most 100" in message


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
