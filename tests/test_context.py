"""The context: dotted paths, MISSING, copy-on-write forks and what a fork wrote."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
from stageflow import MISSING
from stageflow._context import Context, parse_path


def sample() -> dict[str, Any]:
    return {
        "order": {"items": [{"sku": "a1", "qty": 2}, {"sku": "b2", "qty": None}], "note": None},
        "user": {"name": "Ada"},
        "tags": ["x", "y"],
    }


# -------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("user.name", "Ada"),
        ("order.items.0.sku", "a1"),
        ("order.items.1.qty", None),
        ("tags.1", "y"),
        ("order.items", sample()["order"]["items"]),
    ],
)
def test_get_reads_dict_keys_and_list_indexes(path: str, expected: object) -> None:
    assert Context(sample()).get(path) == expected


@pytest.mark.parametrize(
    "path",
    ["nope", "user.age", "tags.2", "tags.-1", "tags.x", "user.name.first", "order.items.0.sku.0"],
)
def test_get_of_nothing_is_missing(path: str) -> None:
    assert Context(sample()).get(path) is MISSING


def test_stored_none_is_not_missing() -> None:
    ctx = Context(sample())
    assert ctx.get("order.note") is None
    assert ctx.get("order.note", "default") is None
    assert ctx.get("order.gone", "default") == "default"


def test_missing_is_falsy_and_has_a_readable_repr() -> None:
    assert not MISSING
    assert repr(MISSING) == "MISSING"


def test_non_ascii_digits_are_not_list_indexes() -> None:
    # "²".isdigit() is true but int("²") raises: a segment like that is a key, never an index.
    ctx = Context({"a": [10, 11]})
    assert ctx.get("a.²") is MISSING
    assert ctx.get("a.\u0661") is MISSING
    with pytest.raises(stageflow.ContextPathError):
        ctx.set("a.²", 1)


# -------------------------------------------------------------- malformed paths


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "."])
def test_malformed_paths_are_rejected(path: str) -> None:
    ctx = Context(sample())
    with pytest.raises(stageflow.ContextPathError) as info:
        ctx.get(path)
    assert info.value.path == path
    assert "order.items.0.sku" in str(info.value)  # says how a good path looks
    with pytest.raises(stageflow.ContextPathError):
        ctx.set(path, 1)


def test_a_path_that_is_not_a_string_is_rejected() -> None:
    with pytest.raises(stageflow.ContextPathError):
        parse_path(3)  # type: ignore[arg-type]


def test_context_path_error_is_a_value_error_and_a_stageflow_error() -> None:
    with pytest.raises(ValueError, match="empty segment"):
        parse_path("a..b")
    assert issubclass(stageflow.ContextPathError, stageflow.StageflowError)


# -------------------------------------------------------------------- writing


def test_set_creates_intermediate_objects() -> None:
    ctx = Context({})
    ctx.set("a.b.c", 1)
    assert ctx.data == {"a": {"b": {"c": 1}}}


def test_set_replaces_and_appends_list_items() -> None:
    ctx = Context({"l": [1, 2]})
    ctx.set("l.0", 9)
    ctx.set("l.2", 3)  # one past the end appends
    assert ctx.get("l") == [9, 2, 3]


def test_set_past_the_end_of_a_list_is_an_error() -> None:
    ctx = Context({"l": [1]})
    with pytest.raises(stageflow.ContextPathError, match="past the end"):
        ctx.set("l.5", 0)
    with pytest.raises(stageflow.ContextPathError, match="past the end"):
        ctx.set("l.3.x", 0)
    assert ctx.get("l") == [1]


def test_a_word_where_a_list_index_belongs_says_so() -> None:
    ctx = Context({"l": [1]})
    with pytest.raises(stageflow.ContextPathError, match="'x' indexes a list but is not a number"):
        ctx.set("l.x", 0)
    with pytest.raises(stageflow.ContextPathError, match="'x' indexes a list but is not a number"):
        ctx.set("l.x.y", 0)


@pytest.mark.parametrize("path", ["user.name.first", "tags.0.x", "order.note.x"])
def test_writing_through_a_scalar_is_an_error(path: str) -> None:
    ctx = Context(sample())
    before = copy.deepcopy(ctx.data)
    with pytest.raises(stageflow.ContextPathError, match="not an object or list"):
        ctx.set(path, 1)
    assert ctx.data == before


def test_to_dict_is_a_plain_dict() -> None:
    ctx = Context({"a": 1}).fork()
    ctx.set("b", 2)
    assert ctx.to_dict() == {"a": 1, "b": 2}
    assert type(ctx.to_dict()) is dict


# ---------------------------------------------------------------------- forks


def test_nested_writes_in_a_fork_do_not_reach_the_parent() -> None:
    data = sample()
    before = copy.deepcopy(data)
    parent = Context(data)
    fork = parent.fork()
    fork.set("order.items.0.qty", 5)
    fork.set("user.name", "Grace")
    fork.set("tags.2", "z")
    fork.set("new.deep.value", 1)
    assert data == before
    assert parent.get("order.items.0.qty") == 2
    assert fork.get("order.items.0.qty") == 5
    assert fork.get("tags") == ["x", "y", "z"]
    assert fork.get("new.deep.value") == 1
    assert parent.get("new") is MISSING


def test_siblings_do_not_see_each_other() -> None:
    parent = Context(sample())
    left, right = parent.fork(), parent.fork()
    left.set("user.name", "left")
    right.set("user.name", "right")
    assert (left.get("user.name"), right.get("user.name")) == ("left", "right")
    assert parent.get("user.name") == "Ada"


def test_a_fork_reads_the_parent_and_shares_what_it_did_not_write() -> None:
    data = sample()
    parent = Context(data)
    fork = parent.fork()
    fork.set("order.items.0.qty", 5)
    # Untouched subtrees are the parent's own objects: a fork costs what it writes.
    assert fork.get("user") is data["user"]
    assert fork.get("tags") is data["tags"]
    assert fork.get("order.items.1") is data["order"]["items"][1]
    # The containers on the written path were copied once, then reused.
    copied = fork.get("order.items")
    assert copied is not data["order"]["items"]
    fork.set("order.items.0.sku", "c3")
    assert fork.get("order.items") is copied


def test_a_fork_of_a_fork_is_isolated_both_ways() -> None:
    root = Context(sample())
    outer = root.fork()
    outer.set("user.name", "outer")
    inner = outer.fork()
    assert inner.get("user.name") == "outer"
    inner.set("user.name", "inner")
    inner.set("order.items.1.qty", 7)
    assert outer.get("user.name") == "outer"
    assert outer.get("order.items.1.qty") is None
    assert root.get("user.name") == "Ada"


def test_written_lists_paths_in_first_write_order_with_current_values() -> None:
    fork = Context(sample()).fork()
    fork.set("b", 1)
    fork.set("a.x", 1)
    fork.set("b", 2)  # rewriting keeps b's place; the value is the latest
    fork.set("order.note", "n")
    assert list(fork.written()) == [("b", 2), ("a.x", 1), ("order.note", "n")]


def test_a_fork_made_with_top_level_values_is_a_fork_with_them_set() -> None:
    parent = Context({"n": 0, "keep": {"x": 1}})
    made = parent.fork({"item": {"v": 1}, "index": 3})
    reference = parent.fork()
    reference.set("item", {"v": 1})
    reference.set("index", 3)
    assert made.to_dict() == reference.to_dict()
    assert list(made.written()) == list(reference.written())
    assert made.get("keep.x") == 1
    made.set("keep.x", 2)  # copy on write, as for any fork
    assert parent.to_dict() == {"n": 0, "keep": {"x": 1}}


def test_layers_of_a_fork_read_like_get_and_write_like_set() -> None:
    parent = Context({"a": 1, "b": 2})
    fork = parent.fork({"b": 3})
    layers = fork.layers()
    assert layers is not None
    maps, written = layers
    for key in ("a", "b", "c"):
        first = next((layer[key] for layer in maps if key in layer), MISSING)
        assert first == fork.get(key)
    # What the engine's tight path does for a top-level output of a fork.
    maps[0]["c"] = 4
    assert written is not None
    written["c"] = None
    reference = parent.fork({"b": 3})
    reference.set("c", 4)
    assert fork.to_dict() == reference.to_dict()
    assert list(fork.written()) == list(reference.written())
    assert parent.to_dict() == {"a": 1, "b": 2}


@pytest.mark.parametrize("nested", [False, True])
def test_fork_layers_is_a_fork_and_its_layers(nested: bool) -> None:
    root = Context({"a": 1, "b": 2})
    parent = root.fork({"b": 5}) if nested else root
    fork, maps, written = parent.fork_layers({"b": 3, "i": 0})
    reference = parent.fork({"b": 3, "i": 0})
    assert (maps, written) == reference.layers()
    assert fork.layers() == (maps, written)
    assert maps[0] is fork.own()
    assert fork.to_dict() == reference.to_dict()
    assert list(fork.written()) == list(reference.written())
    fork.set("a", 9)  # written into the fork only, as for any fork
    assert root.to_dict() == {"a": 1, "b": 2}
    assert maps[0]["a"] == 9


def test_a_root_has_no_layers() -> None:
    assert Context({"a": 1}).layers() is None


def test_written_is_empty_for_the_root_and_a_fresh_fork() -> None:
    root = Context({})
    root.set("a", 1)
    assert list(root.written()) == []
    assert list(root.fork().written()) == []


def test_a_failed_write_is_not_recorded() -> None:
    fork = Context({"s": "text"}).fork()
    with pytest.raises(stageflow.ContextPathError):
        fork.set("s.x", 1)
    assert list(fork.written()) == []


# ----------------------------------------------------------- property: forks

KEYS = st.sampled_from(["a", "b", "c", "0", "1"])
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=2)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)
DOCS = st.dictionaries(KEYS, JSON, max_size=4)
PATHS = st.lists(KEYS, min_size=1, max_size=4).map(".".join)
OPS = st.lists(st.tuples(PATHS, JSON), max_size=8)


def apply(ctx: Context, ops: list[tuple[str, Any]]) -> list[bool]:
    """Apply writes, returning which ones were rejected."""
    rejected = []
    for path, value in ops:
        try:
            ctx.set(path, copy.deepcopy(value))
        except stageflow.ContextPathError:
            rejected.append(True)
        else:
            rejected.append(False)
    return rejected


@settings(max_examples=300, deadline=None)
@given(data=DOCS, ops=OPS, nested_ops=OPS)
def test_fork_behaves_like_a_deep_copy_and_never_changes_its_parent(
    data: dict[str, Any], ops: list[tuple[str, Any]], nested_ops: list[tuple[str, Any]]
) -> None:
    snapshot = copy.deepcopy(data)
    parent = Context(data)
    fork = parent.fork()
    reference = Context(copy.deepcopy(data))

    assert apply(fork, ops) == apply(reference, ops)
    assert data == snapshot
    assert fork.to_dict() == reference.to_dict()

    inner = fork.fork()
    before_inner = copy.deepcopy(fork.to_dict())
    assert apply(inner, nested_ops) == apply(reference, nested_ops)
    assert inner.to_dict() == reference.to_dict()
    assert fork.to_dict() == before_inner
    assert data == snapshot
    # What the inner fork reports as written reads the same in the reference.
    for path, value in inner.written():
        assert reference.get(path) == value
