"""Hostile pipeline documents: a located problem in bounded time, and the schema agreeing.

- Wrong types where the graph checks read beside the schema (``reducers``).
- Numbers past the float range in every number field: the schema refuses them
  where they are, as the model cannot hold them.
- A fuzzer over a document using every node kind: every mutation gives a
  pipeline or a ``PipelineValidationError``; what the loader accepts the JSON
  Schema accepts, and what the schema accepts the loader reads without its
  safety net; and a pipeline it loads runs to an end with a typed error or
  none, leaving a snapshot that restores.
- Documents of thousands of nodes whose problems or regions repeat (dangling
  edges, a map body or a parallel branch shared by many nodes) load in
  bounded time, with messages of bounded size.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import jsonschema
import pytest
import trio
import trio.testing
from fakes import fake_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._pipeline import _Invalid, _Loader, _schema_validator, load_schema

FULL = jsonschema.Draft202012Validator(load_schema("pipeline"))


def full_document() -> dict[str, Any]:
    """A valid document with every node kind and most optional fields."""
    return {
        "api_version": "1.0",
        "entry": "start",
        "metadata": {"name": "p", "description": "every kind", "version": "1", "owner": 7},
        "reducers": {"out.list": "append"},
        "limits": {
            "max_steps": 100,
            "max_history": 1000,
            "timeout": 5,
            "max_depth": 8,
            "max_input_backlog": 3,
            "max_input_bytes": 4096,
            "cleanup_timeout": 1,
            "max_run_steps": 90,
            "max_run_events": 900,
            "max_run_seconds": 6,
        },
        "validate_events": "warn",
        "nodes": [
            {
                "id": "start",
                "type": "stage",
                "stage": "Set",
                "config": {"values": {"x": 1}},
                "outputs": {"x": "x"},
                "next": "choose",
                "retry": {
                    "attempts": 2,
                    "delay": 0.1,
                    "backoff": 2,
                    "max_delay": 1,
                    "jitter": 0.5,
                    "retry_on": ["StageError", "Exception"],
                },
                "timeout": 3,
                "on_error": [{"errors": ["ValueError"], "next": "end", "error_path": "err"}],
                "fallback": "end",
            },
            {
                "id": "choose",
                "type": "condition",
                "conditions": [{"if": {">": [{"var": "x"}, 0]}, "then": "fan"}],
                "else": "each",
                "description": "x is set",
            },
            {
                "id": "fan",
                "type": "parallel",
                "children": ["b1", "b2"],
                "policy": "all",
                "cancel_on_error": False,
                "concurrency": 2,
                "merge": "error",
                "next": "each",
                "timeout": 4,
                "on_error": [{"next": "end"}],
                "fallback": "end",
                "description": "two branches",
            },
            {"id": "b1", "type": "stage", "stage": "Set", "outputs": {"v": "out.list"}},
            {"id": "b2", "type": "stage", "stage": "Set", "outputs": {"v": "out.list"}},
            {
                "id": "each",
                "type": "map",
                "items": "list",
                "body": "body",
                "item_path": "it",
                "index_path": "i",
                "collect": {"y": "ys"},
                "concurrency": 2,
                "max_failures": 1,
                "max_failure_ratio": 0.5,
                "failures_path": "fails",
                "next": "sub",
                "timeout": 5,
                "on_error": [{"errors": ["MapError"], "next": "end", "error_path": "map_error"}],
                "fallback": "end",
                "description": "per item",
            },
            {"id": "body", "type": "stage", "stage": "Set", "outputs": {"y": "y"}},
            {
                "id": "sub",
                "type": "subpipeline",
                "pipeline": "inner",
                "inputs": {"a": "x"},
                "result_output": "r",
                "artifacts": {"z": "z"},
                "next": "end",
                "timeout": 2,
                "on_error": [{"next": "end"}],
                "fallback": "end",
                "description": "the inner pipeline",
            },
            {
                "id": "end",
                "type": "terminal",
                "result": {"ok": True},
                "artifacts": ["x"],
                "description": "the end",
            },
        ],
        "subpipelines": {
            "inner": {
                "entry": "i1",
                "metadata": {"name": "inner", "description": "one stage", "version": "2"},
                "reducers": {},
                "nodes": [
                    {
                        "id": "i1",
                        "type": "stage",
                        "stage": "Set",
                        "outputs": {"z": "z"},
                        "next": "i2",
                    },
                    {"id": "i2", "type": "terminal", "artifacts": ["z"]},
                ],
                "subpipelines": {
                    "unused": {"entry": "u", "nodes": [{"id": "u", "type": "terminal"}]}
                },
            }
        },
    }


def problems(document: Any) -> list[stageflow.Problem]:
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    return list(caught.value.problems)


def test_the_full_document_is_valid() -> None:
    assert FULL.is_valid(full_document())
    stageflow.Pipeline.from_dict(full_document(), registry=fake_registry())


@pytest.mark.parametrize("value", [1, True, "append", ["x"], None])
@pytest.mark.parametrize("where", [(), ("subpipelines", "inner")])
def test_reducers_of_the_wrong_type_beside_a_parallel_node_are_a_problem(
    value: Any, where: tuple[str, ...]
) -> None:
    # The graph checks run beside the schema's and read the reducers: a
    # TypeError ("argument of type 'int' is not iterable") came out of from_dict.
    document = full_document()
    graph = document
    for key in where:
        graph = graph[key]
    graph["reducers"] = value
    if where:  # give the subpipeline a parallel node too
        graph["nodes"][1:1] = [
            {"id": "fan", "type": "parallel", "children": ["f1", "f2"], "next": "i2"},
            {"id": "f1", "type": "stage", "stage": "Set", "outputs": {"v": "v"}},
            {"id": "f2", "type": "stage", "stage": "Set", "outputs": {"v": "v"}},
        ]
        graph["nodes"][0]["next"] = "fan"
    found = problems(document)
    prefix = "".join(f".{key}" for key in where)
    assert f"$.{prefix[1:] + '.' if prefix else ''}reducers" in [p.location for p in found]


NUMBER_FIELDS = [
    ("limits", "timeout"),
    ("limits", "cleanup_timeout"),
    ("limits", "max_run_seconds"),
    ("nodes", 0, "timeout"),
    ("nodes", 0, "retry", "delay"),
    ("nodes", 0, "retry", "backoff"),
    ("nodes", 0, "retry", "max_delay"),
    ("nodes", 2, "timeout"),
    ("nodes", 5, "timeout"),
    ("nodes", 7, "timeout"),
]


@pytest.mark.parametrize("path", NUMBER_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_a_number_past_the_float_range_is_a_problem_where_it_is(path: tuple[Any, ...]) -> None:
    # The schema took any number and structuring the node failed: one problem
    # at "$" ("cannot read the document: int too large to convert to float").
    document = full_document()
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = 10**400
    assert not FULL.is_valid(document)  # the schema says so too: it agrees with the loader
    [problem] = problems(document)
    assert problem.location == "$" + "".join(
        f"[{key}]" if isinstance(key, int) else f".{key}" for key in path
    )
    assert "too large" in problem.message
    parent[path[-1]] = 1.7976931348623157e308  # the largest float is fine
    stageflow.Pipeline.from_dict(document, registry=fake_registry())


def test_what_the_schema_misses_the_loader_locates() -> None:
    # The safety net behind the schema: a value the model cannot hold is
    # located in its node, not reported at "$".
    document = full_document()
    document["nodes"][0]["retry"]["delay"] = 10**400
    document["nodes"][2]["timeout"] = 10**400
    document["nodes"][1]["conditions"][0].pop("then")
    with pytest.raises(_Invalid) as caught:
        _Loader(document, fake_registry()).load()
    found = {(p.location, p.message) for p in caught.value.problems}
    assert found == {
        (
            "$.nodes[0].retry.delay",
            "cannot read this value: int too large to convert to float; write a smaller number",
        ),
        (
            "$.nodes[2].timeout",
            "cannot read this value: int too large to convert to float; write a smaller number",
        ),
        ("$.nodes[1].conditions[0].then", "this field is required; add it"),
    }


# --- the fuzzer ---------------------------------------------------------------

HOSTILE = [
    None,
    True,
    0,
    -1,
    2,
    0.5,
    1e308,
    10**30,
    10**400,
    "",
    "x",
    "end",
    "a..b",
    "é",
    "💥" * 3,
    "x" * 300,
    "__proto__",
    [],
    ["end", "end"],
    {},
    {"var": "x"},
    {"nope": 1},
    {"": "x"},
    [[[]]],
    # a node turned into another kind meets that kind's rules
    "stage",
    "condition",
    "parallel",
    "terminal",
    "subpipeline",
    "map",
    "any",
    "last",
    "append",
    "strict",
]
IDS = [
    *("start", "choose", "fan", "b1", "b2", "each", "body", "sub", "end", "inner", "i1", "i2"),
    *("unused", "u"),
]
EXTRA_KEYS = ["extra", "next", "id", "type", "body", "else", "fallback", "subpipelines", "entry"]


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _places(item, (*path, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    document = full_document()
    for _ in range(draw(st.integers(1, 5))):
        place = draw(st.sampled_from(_places(document)[1:]))
        parent: Any = document
        for key in place[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["value", "delete", "add", "copy", "id"]))
        if how == "value":
            parent[place[-1]] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        elif how == "delete":
            del parent[place[-1]]
        elif how == "add" and isinstance(parent, dict):
            key = draw(st.sampled_from(EXTRA_KEYS))
            parent[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE + IDS)))
        elif how == "copy" and isinstance(parent, list):
            parent.append(copy.deepcopy(draw(st.sampled_from(parent))))
        else:
            parent[place[-1]] = draw(st.sampled_from(IDS))
    return document


def _resolves(document: Any, location: str) -> bool:
    """Whether a problem's location leads into the document (its last step may be absent)."""
    steps = re.findall(r"\.([^.\[]+)|\[(\d+)\]", location[1:])
    value = document
    for n, (key, index) in enumerate(steps):
        try:
            value = value[int(index)] if index else value[key]
        except (KeyError, IndexError, TypeError):
            # a missing last step ("no 'next'"), or a key with a dot in it
            return n == len(steps) - 1 or "." in location
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=mutated())
def test_fuzz_the_loader_and_the_schema_agree(document: dict[str, Any]) -> None:
    schema_ok = FULL.is_valid(document)
    # The loader's own check (a compiled fast yes, then jsonschema's errors)
    # says what the exported schema says, with jsonschema, exactly.
    assert (not list(_schema_validator().iter_errors(document))) == schema_ok
    try:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    except stageflow.PipelineValidationError as error:
        for problem in error.problems:
            assert problem.location.startswith("$"), problem
            assert _resolves(document, problem.location), problem
            # The loader's safety net is for what the schema misses: nothing should be.
            assert "cannot read" not in problem.message, problem
        return
    assert schema_ok, [e.message for e in FULL.iter_errors(document)]


async def _run_to_an_end(pipeline: stageflow.Pipeline) -> None:
    registry = fake_registry()
    session = stageflow.Session(pipeline, registry=registry, payload={"list": [1, "x", None]})
    with trio.fail_after(10**7):  # virtual time: only a hang reaches it
        result = await session.run()
    assert result.status in {
        stageflow.SessionStatus.COMPLETED,
        stageflow.SessionStatus.FAILED,
        stageflow.SessionStatus.TIMED_OUT,
    }
    assert result.error is None or isinstance(result.error, stageflow.StageflowError), repr(
        result.error
    )
    snapshot = json.loads(json.dumps(session.to_dict()))
    assert stageflow.Session.from_dict(snapshot, registry=registry).status is result.status


@settings(
    max_examples=int(os.environ.get("STAGEFLOW_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize="STAGEFLOW_FUZZ_EXAMPLES" not in os.environ,  # the suite: the same examples
    suppress_health_check=[HealthCheck.too_slow],
)
@given(document=mutated())
def test_fuzz_a_document_the_loader_accepts_runs_to_a_typed_end(document: dict[str, Any]) -> None:
    try:
        pipeline = stageflow.Pipeline.from_dict(document, registry=fake_registry())
    except stageflow.PipelineValidationError:
        return
    trio.run(_run_to_an_end, pipeline, clock=trio.testing.MockClock(autojump_threshold=0))


# --- bounded time ---------------------------------------------------------------


def _load_in_subprocess(build: str) -> str:
    """Build ``nodes`` with ``build`` and load them in a fresh interpreter, under a hard timeout.

    Each shape took minutes before (quadratic in its size); now a few seconds.
    """
    code = textwrap.dedent(
        """
        import stageflow
        registry = stageflow.StageRegistry()

        @registry.register("Set")
        async def set_(ctx):
            return {}

        nodes = []
        """
    )
    code += textwrap.dedent(build)
    code += textwrap.dedent(
        """
        document = {"api_version": "1.0", "entry": nodes[0]["id"], "nodes": nodes}
        try:
            stageflow.Pipeline.from_dict(document, registry=registry)
            print("loaded")
        except stageflow.PipelineValidationError as error:
            longest = max(len(p.message) for p in error.problems)
            print("problems", len(error.problems), "longest", longest)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_thousands_of_dangling_edges_are_reported_in_bounded_time_and_text() -> None:
    # Each problem listed every node id ("use one of: ...": text quadratic in
    # the nodes) and compared the missing id with every id for a hint.
    out = _load_in_subprocess(
        """
        for i in range(8000):
            nodes.append({"id": f"n{i}", "type": "stage", "stage": "Set",
                          "next": f"n{i + 1}" if i < 7999 else "end", "fallback": f"gone{i}"})
        nodes.append({"id": "end", "type": "terminal"})
        """
    )
    count, longest = re.fullmatch(r"problems (\d+) longest (\d+)", out).groups()  # type: ignore[union-attr]
    assert int(count) == 8000
    assert int(longest) < 1000


def test_many_maps_sharing_one_long_body_load_in_bounded_time() -> None:
    out = _load_in_subprocess(
        """
        n = 4000
        for i in range(n):
            nodes.append({"id": f"m{i}", "type": "map", "items": "xs", "body": "b0",
                          "collect": {"out0": f"ys{i}"},
                          "next": f"m{i + 1}" if i + 1 < n else "end"})
        for i in range(n):
            node = {"id": f"b{i}", "type": "stage", "stage": "Set", "outputs": {"v": f"out{i}"}}
            if i + 1 < n:
                node["next"] = f"b{i + 1}"
            nodes.append(node)
        nodes.append({"id": "end", "type": "terminal"})
        """
    )
    assert out == "loaded"


def test_many_parallel_nodes_sharing_one_long_branch_load_in_bounded_time() -> None:
    out = _load_in_subprocess(
        """
        n = 4000
        for i in range(n):
            nodes.append({"id": f"p{i}", "type": "parallel", "children": ["b0", "c"],
                          "next": f"p{i + 1}" if i + 1 < n else "end"})
        nodes.append({"id": "c", "type": "stage", "stage": "Set", "outputs": {"v": "c"}})
        for i in range(n):
            node = {"id": f"b{i}", "type": "stage", "stage": "Set", "outputs": {"v": f"out{i}"}}
            if i + 1 < n:
                node["next"] = f"b{i + 1}"
            nodes.append(node)
        nodes.append({"id": "end", "type": "terminal"})
        """
    )
    assert out == "loaded"


segments = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(".".join)


@settings(max_examples=200, deadline=None)
@given(writes=st.lists(segments, min_size=1, max_size=4), source=segments)
def test_fuzz_a_map_collects_exactly_what_overlaps_a_write_of_its_body(
    writes: list[str], source: str
) -> None:
    # The check looks the source up by its prefixes; the rule is overlaps() with each write.
    from stageflow._graph import overlaps

    body = [
        {"id": f"w{i}", "type": "stage", "stage": "Set", "outputs": {"v": path}}
        | ({"next": f"w{i + 1}"} if i + 1 < len(writes) else {})
        for i, path in enumerate(writes)
    ]
    document = {
        "api_version": "1.0",
        "entry": "each",
        "nodes": [
            {"id": "each", "type": "map", "items": "xs", "body": "w0", "collect": {source: "ys"}},
            *body,
        ],
    }
    document["nodes"][0]["next"] = "end"
    document["nodes"].append({"id": "end", "type": "terminal"})
    wanted = any(overlaps(source, path) for path in [*writes, "item", "index"])
    if wanted:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
        return
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    assert [p.location for p in caught.value.problems] == [f"$.nodes[0].collect.{source}"]


def test_a_long_recursive_chain_of_subpipelines_is_named_in_short() -> None:
    # Each call closing a cycle is a problem naming the chain: with every
    # subpipeline of a long chain calling back, text quadratic in the chain.
    count = 40
    subpipelines = {
        f"s{i}": {
            "entry": "call",
            "nodes": [
                {"id": "call", "type": "subpipeline", "pipeline": f"s{(i + 1) % count}"},
            ],
        }
        for i in range(count)
    }
    for i in range(count):
        subpipelines[f"s{i}"]["nodes"][0]["next"] = "end"
        subpipelines[f"s{i}"]["nodes"].append({"id": "end", "type": "terminal"})
    document = {
        "api_version": "1.0",
        "entry": "call",
        "nodes": [
            {"id": "call", "type": "subpipeline", "pipeline": "s0", "next": "end"},
            {"id": "end", "type": "terminal"},
        ],
        "subpipelines": subpipelines,
    }
    [problem] = problems(document)
    assert problem.location == "$.subpipelines.s39.nodes[0].pipeline"
    assert "(s0 -> s1 -> s2 -> s3 -> s4 -> ... -> s36 -> s37 -> s38 -> s39 -> s0)" in (
        problem.message
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("nodes", 8, "id"), "end\n"),
        (("entry",), "start\n"),
        (("nodes", 0, "on_error", 0, "errors", 0), "ValueError\n"),
        (("nodes", 0, "next"), "choose\n"),
    ],
    ids=["id", "entry", "error name", "edge"],
)
def test_a_trailing_newline_does_not_pass_for_a_name(path: tuple[Any, ...], value: str) -> None:
    # Python's re matches $ before a final newline: jsonschema took "end\n" for
    # a node id (the loader then ran it) where JSON Schema's regexes, and the
    # compiled fast check, refuse it.
    import jsonschema_rs

    document = full_document()
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert not FULL.is_valid(document)
    assert not jsonschema_rs.Draft202012Validator(load_schema("pipeline")).is_valid(document)
    found = problems(document)
    where = "$" + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path)
    messages = [p.message for p in found if p.location == where]
    # a node id / an error name, and what one is; not the pattern
    assert any(f"{json.dumps(value)} is not a" in m for m in messages), messages
    assert not any("(?!" in m for m in messages)
