"""JSON values: what the engine accepts, copies and freezes."""

from __future__ import annotations

import enum
import math
import sys
from types import MappingProxyType
from typing import Any

import pytest
from fakes import doc, fake_registry, load, run, stage, terminal
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._guard import MAX_VALUES, SAFE_INT_BITS
from stageflow._json import MAX_DEPTH, _walk, a_json_type, copy_json, find_non_json, freeze, thaw


def nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1.5, "text", [], {}, {"a": [1, {"b": None}]}, nested(MAX_DEPTH)],
)
def test_plain_json_is_accepted(value: object) -> None:
    assert find_non_json(value) is None


@pytest.mark.parametrize(
    ("value", "location", "reason"),
    [
        ({"a": {1, 2}}, "$.a", "not a JSON type"),
        ({"a": [0, math.nan]}, "$.a[1]", "not a finite number"),
        ({"a": -math.inf}, "$.a", "not a finite number"),
        ({"a": (1, 2)}, "$.a", "not a JSON type"),
        ({"a": {3: "x"}}, "$.a key 3", "object keys must be strings"),
        # A key that is no plain name is one step, as JSON Schema errors write it.
        ({"order.notes": [math.nan]}, "$['order.notes'][0]", "not a finite number"),
        ({"a": {"it's": math.inf}}, "$.a['it\\'s']", "not a finite number"),
        ({"_x": {"2b": math.inf}}, "$['_x']['2b']", "not a finite number"),
        # UTF-8 cannot carry a lone surrogate: a store's write used to fail on it.
        (
            {"a": ["ok", "é\ud800"]},
            "$.a[1]",
            "it holds a lone surrogate ('\\ud800' at character 1), which is not Unicode "
            "text and cannot be written as UTF-8",
        ),
        (
            {"\udfff": 1},
            "$ key '\\udfff'",
            "it holds a lone surrogate ('\\udfff' at character 0), which is not Unicode "
            "text and cannot be written as UTF-8",
        ),
    ],
)
def test_non_json_parts_are_located(value: object, location: str, reason: str) -> None:
    found = find_non_json(value)
    assert found is not None
    assert (found.location, found.reason) == (location, reason)
    assert found[0] == location  # still indexable as (location, value)


class _Text(str):
    pass


def _edge_int(which: int) -> int:
    """2 ** SAFE_INT_BITS (either sign), or the first integer past the digit budget."""
    if which:
        return 2**which if which > 0 else -(2**-which)
    return 10**4300


# Leaves of every kind the check tells apart: plain scalars, integers at the
# edge of the digit budget, non-finite floats, subclasses and non-JSON types.
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([SAFE_INT_BITS, -SAFE_INT_BITS, 0]).map(_edge_int) | st.just(10**4299),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.sampled_from(["\ud800", "é\udfff", "é"]),
    st.builds(_Text, st.text(max_size=3)),
    st.sampled_from([(1, 2), {1}, b"x", object()]),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=3), st.integers(), st.just("k\ud800")), inner, max_size=4
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, max_depth=st.sampled_from([0, 1, 2, 3, MAX_DEPTH]))
def test_the_quick_check_agrees_with_the_walk(value: object, max_depth: int) -> None:
    # find_non_json answers plain values without the walk: the same answers.
    found = find_non_json(value, "$", max_depth)
    walked = _walk(value, "$", max_depth, sys.maxsize)
    assert (found is None) == (walked is None)
    if found is not None and walked is not None:
        assert (found.location, found.reason) == (walked.location, walked.reason)


@pytest.mark.parametrize("levels", [63, 64, 65, 66, MAX_DEPTH])
def test_values_around_the_quick_checks_depth_are_accepted(levels: int) -> None:
    assert find_non_json({"v": nested(levels)}, "$", levels + 1) is None
    assert find_non_json({"v": nested(levels)}, "$", levels) is not None


def test_a_reference_cycle_is_found_not_followed_forever() -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    found = find_non_json({"v": loop})
    assert found is not None
    assert found.location == "$.v[1].back"
    assert "cycle" in found.reason


def test_a_shared_object_that_is_not_a_cycle_is_fine() -> None:
    shared = {"k": [1, 2]}
    assert find_non_json({"a": shared, "b": [shared, shared]}) is None


def test_values_nested_too_deeply_are_rejected() -> None:
    found = find_non_json(nested(MAX_DEPTH + 1))
    assert found is not None
    assert f"more than {MAX_DEPTH} levels" in found.reason


def test_the_deepest_accepted_value_can_be_copied_and_frozen() -> None:
    value = nested(MAX_DEPTH)
    assert copy_json(value) == value
    assert thaw(freeze(value)) == value


def test_copy_json_copies_every_container_and_shares_scalars() -> None:
    class Tagged(dict[str, Any]):
        pass

    inner = {"b": [1, 2.5, "s", None, True]}
    value = {"a": [inner, Tagged(c=[1])], "t": (1, [2])}
    copied = copy_json(value)
    assert copied == {"a": [inner, {"c": [1]}], "t": [1, [2]]}
    assert copied["a"][0] is not inner
    assert copied["a"][0]["b"] is not inner["b"]
    assert type(copied["a"][1]) is dict
    assert copy_json(MappingProxyType({"k": [1]})) == {"k": [1]}
    big = 2**70
    assert copy_json(big) is big


class Color(enum.IntEnum):
    RED = 1


class Mood(enum.StrEnum):
    CALM = "calm"


class Shouting(str):
    def __str__(self) -> str:
        return self.upper()


class Ratio(float):
    pass


def test_copy_json_turns_subclasses_of_scalars_into_plain_values() -> None:
    # A subclass of a JSON scalar used to be kept as it was, so a session read
    # an IntEnum before a snapshot and an int after one.
    copied = copy_json({"c": Color.RED, "m": [Mood.CALM], "s": Shouting("hey"), "r": Ratio(0.5)})
    assert copied == {"c": 1, "m": ["calm"], "s": "hey", "r": 0.5}
    assert [type(v) for v in (copied["c"], copied["m"][0], copied["s"], copied["r"])] == [
        int,
        str,
        str,
        float,
    ]
    assert copy_json(True) is True


@pytest.mark.anyio
async def test_a_stage_output_of_an_enum_is_stored_as_its_plain_value() -> None:
    registry = fake_registry()

    @registry.register("Paint")
    async def paint(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"color": Color.RED, "mood": Mood.CALM}

    document = doc(
        [
            stage("paint", "Paint", outputs={"color": "color", "mood": "mood"}, next="end"),
            terminal("end", "color", "mood"),
        ]
    )
    session = stageflow.Session(load(document, registry), registry=registry)
    result = await session.run()
    assert result.artifacts == {"color": 1, "mood": "calm"}
    assert type(session.payload["color"]) is int
    assert type(session.payload["mood"]) is str


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, "null"),
        (True, "a boolean"),
        (3, "an integer"),
        (1.5, "a number"),
        ("x", "a string"),
        ([], "an array"),
        ({}, "an object"),
        ({1}, "a Python set"),
        (object(), "a Python object"),
    ],
)
def test_values_are_named_for_messages_as_json_names_them(value: object, named: str) -> None:
    assert a_json_type(value) == named


def test_freeze_makes_containers_read_only() -> None:
    frozen = freeze({"a": [1, {"b": 2}]})
    assert isinstance(frozen, MappingProxyType)
    assert frozen["a"][1]["b"] == 2
    with pytest.raises(TypeError):
        frozen["a"][1]["b"] = 3


@pytest.mark.anyio
async def test_a_stage_returning_a_very_deep_value_fails_the_session_cleanly() -> None:
    # Before the depth limit, the terminal's copy of the artifact raised RecursionError
    # out of run() instead of failing the session.
    registry = fake_registry()

    @registry.register("Deep")
    async def deep(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": nested(5000)}

    document = doc([stage("deep", "Deep", outputs={"v": "v"}, next="end"), terminal("end", "v")])
    result = await run(document, registry=registry)
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageOutputError)
    assert result.error.node_id == "deep"


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["v", "a.b.c", "l.0.b"])
async def test_an_output_nests_no_deeper_in_the_context_than_a_snapshot_holds(path: str) -> None:
    # A value as deep as a payload may be is too deep below a path of several
    # levels: the session took it, and its snapshot could not be restored.
    levels = MAX_DEPTH - path.count(".") - 1  # the deepest that fits below the path
    registry = fake_registry()

    @registry.register("Deep")
    async def deep(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": nested(ctx.config["levels"])}

    for extra in (0, 1):
        document = doc(
            [
                stage(
                    "deep",
                    "Deep",
                    outputs={"v": path},
                    next="end",
                    config={"levels": levels + extra},
                ),
                terminal("end"),
            ]
        )
        session = stageflow.Session(
            load(document, registry=registry), registry=registry, payload={"l": [{}]}
        )
        result = await session.run()
        if extra:
            assert result.status is stageflow.SessionStatus.FAILED
            assert isinstance(result.error, stageflow.StageOutputError)
            assert f"cannot be written at {path!r}" in str(result.error)
            assert f"more than {MAX_DEPTH} levels deep" in str(result.error)
            assert dict(session.payload) == {"l": [{}]}  # nothing written
            assert [e.type for e in result.history][-1] == "session_failed"
        else:
            assert result.status is stageflow.SessionStatus.COMPLETED, result.error
        restored = stageflow.Session.from_dict(session.to_dict(), registry=registry)
        assert restored.to_dict()["status"] == session.to_dict()["status"]


def test_a_bad_value_after_a_shared_list_is_found_without_walking_the_tree() -> None:
    # x = [x, x], forty levels: 2**40 items as a tree, 40 lists as objects.
    # The quick check once walked that tree first, item by item, before the
    # walk could refuse anything; here it would never have ended (the suite's
    # timeout fails it). The first problem in document order is the shared
    # list's size, then the NaN after it.
    shared: list[Any] = []
    for _ in range(40):
        shared = [shared, shared]
    bad = find_non_json({"a": shared, "z": math.nan}, "payload")
    assert bad is not None
    assert bad.location.startswith("payload.a[0]")
    assert "values written out as JSON" in bad.reason
    bad = find_non_json({"a": shared_levels(10), "z": math.nan}, "payload")
    assert bad is not None
    assert (bad.location, bad.reason) == ("payload.z", "not a finite number")


def test_the_first_problem_in_document_order_is_the_one_named() -> None:
    # The walk took each container's last item first, so a value with two
    # problems was named by the later one ("the first non-JSON part").
    assert find_non_json([{1}, {2}]) == ("$[0]", {1}, "not a JSON type")
    found = find_non_json({"a": [1, [2, {3}]], "b": math.nan, "c": {4}})
    assert found is not None
    assert (found.location, found.reason) == ("$.a[1][1]", "not a JSON type")
    found = find_non_json([math.inf, {5}], "payload")
    assert found is not None
    assert found.location == "payload[0]"
    # An object's keys were all checked before any of its values: a bad key
    # after a bad value was named first.
    found = find_non_json({"a": {1}, 2: "x"})
    assert found is not None
    assert (found.location, found.reason) == ("$.a", "not a JSON type")
    found = find_non_json({"a": [1, "ok"], "b": {"c": math.nan}, 3: 1, "\ud800": 2})
    assert found is not None
    assert (found.location, found.reason) == ("$.b.c", "not a finite number")
    found = find_non_json({"a": 1, 2: {3}, "b": {4}})
    assert found is not None
    assert (found.location, found.reason) == ("$ key 2", "object keys must be strings")


def test_a_document_holds_at_most_its_budget_of_text_a_long_string_counted_each_time() -> None:
    # One string of 1 MiB in a list 100,000 times is 100 GiB of JSON text:
    # a document holding it loaded, then writing it (its digest, to_dict
    # for a snapshot or the inspector) ran out of memory.
    big = "y" * (1 << 20)
    assert find_non_json([big] * 100_000) is None  # values made at run time: not counted
    found = find_non_json([big] * 100_000, "$", max_chars=16 << 20)
    assert found is not None
    assert found.location == "$[16]"  # 16 strings are 16 MiB: the 17th passes the bound
    assert "more than 16,777,216 characters of text" in found.reason
    # Shared containers holding the string count it each time too.
    shared = [big] * 80
    found = find_non_json({"a": shared, "b": shared, "c": shared}, "$", max_chars=100 << 20)
    assert found is not None
    assert found.location == "$.b"
    # 160 MiB of strings and the two keys.
    assert find_non_json({"a": shared, "b": shared}, "$", max_chars=(160 << 20) + 2) is None


def shared_levels(levels: int) -> list[Any]:
    """``x = [x, x]`` ``levels`` times: ``levels + 1`` lists, 2 ** (levels + 1) - 1 as JSON."""
    shared: list[Any] = []
    for _ in range(levels):
        shared = [shared, shared]
    return shared


def test_a_value_that_expands_past_the_budget_is_refused_without_walking_it() -> None:
    # x = [x, x], forty levels, all plain: it used to be walked as a tree of
    # 2**41 lists, so a payload, an input or a snapshot holding it never
    # returned (the suite's timeout fails a walk that does).
    bad = find_non_json({"v": shared_levels(40)}, "payload")
    assert bad is not None
    assert bad.location.startswith("payload.v[0][0]")
    assert bad.reason == (
        f"it holds more than {MAX_VALUES:,} values written out as JSON "
        "(a list or object shared many times over counts each time)"
    )
    # Shared, but within the budget (2**21 - 1 values): accepted, and walked
    # once per distinct list.
    assert find_non_json({"v": shared_levels(20)}) is None


@pytest.mark.anyio
async def test_a_session_refuses_a_payload_and_an_input_that_expand_past_the_budget() -> None:
    registry = fake_registry()
    registry.add(stageflow.WaitStage, name="Wait")
    document = doc([stage("w", "Wait", config={"input": "answer"}, next="end"), terminal("end")])
    pipeline = load(document, registry)
    with pytest.raises(stageflow.NonJsonValueError, match="shared many times over"):
        stageflow.Session(pipeline, registry=registry, payload={"v": shared_levels(40)})
    session = stageflow.Session(pipeline, registry=registry)
    with pytest.raises(stageflow.InputRejectedError, match="shared many times over"):
        session.send_input("answer", shared_levels(40))


def test_long_containers_are_held_to_the_value_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only shared containers were counted: one long list (or several), each
    # of its items distinct, passed the quick check at any length.
    monkeypatch.setattr("stageflow._json.MAX_VALUES", 1000)
    assert find_non_json([0] * 999) is None  # 1,000 values, the list counted
    assert find_non_json({"a": [0] * 500, "b": [0] * 497}) is None
    for value in ([0] * 1000, {"a": [0] * 500, "b": [0] * 498}, [[0] * 600, [0] * 600]):
        bad = find_non_json(value)
        assert bad is not None
        assert "values written out as JSON" in bad.reason


@pytest.mark.anyio
async def test_a_long_output_or_event_payload_is_refused_at_once() -> None:
    # A stage returning a list of 33M items (extended by itself 25 times)
    # completed: every item was checked and copied, for seconds.
    registry = fake_registry()
    too_long = [0] * MAX_VALUES

    @registry.register("Long")
    async def long(ctx: stageflow.StageContext) -> dict[str, Any]:
        if ctx.config.get("emit"):
            ctx.emit("long", {"v": too_long})
        return {"v": too_long}

    for config in ({}, {"emit": True}):
        document = doc(
            [stage("long", "Long", config=config, outputs={"v": "v"}, next="end"), terminal()]
        )
        result = await run(document, registry=registry)
        assert result.status is stageflow.SessionStatus.FAILED
        assert result.error is not None
        assert result.error.node_id == "long"
        assert f"more than {MAX_VALUES:,} values" in str(result.error)
        if not config:
            assert isinstance(result.error, stageflow.StageOutputError)


@pytest.mark.anyio
async def test_a_payload_or_an_output_with_a_lone_surrogate_is_refused() -> None:
    # Only inputs were checked for lone surrogates: a payload or a stage
    # output holding one was taken, and a session store then failed to write
    # the snapshot with a bare UnicodeEncodeError.
    registry = fake_registry()
    document = doc([stage("s", "Set", config={"values": {"v": "x"}}, next="end"), terminal()])
    pipeline = load(document, registry)
    with pytest.raises(stageflow.NonJsonValueError, match="lone surrogate"):
        stageflow.Session(pipeline, registry=registry, payload={"name": "a\ud800b"})

    @registry.register("Broken")
    async def broken(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": ["fine", "\udc80"]}

    document = doc([stage("b", "Broken", outputs={"v": "v"}, next="end"), terminal("end", "v")])
    result = await run(document, registry=registry)
    assert isinstance(result.error, stageflow.StageOutputError)
    assert "output 'v[1]' is a string" in str(result.error)
    assert "lone surrogate" in str(result.error)
