"""Hostile documents and values: only typed errors, in bounded time (issue 19, classes 1 and 2).

Valid JSON can still be unusable: integers of more digits than ``json.dumps``
writes, numbers that overflow to an infinity, nesting deeper than any parser
or walker can follow, YAML aliases that expand to billions of values. Each
place that takes such a value from outside (documents, payloads, stage
outputs, emitted events, inputs, reducers) refuses it with a typed error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from fakes import doc, fake_registry, load, parallel, stage, terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._cli._common import CommandError, read_json_argument
from stageflow._guard import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_NESTING,
    int_too_large,
    parse_yaml_text,
)
from stageflow._json import find_non_json
from stageflow._pipeline import parse_document
from stageflow._specs import MAX_DOCUMENT_ERRORS

BIG = 10**MAX_INT_DIGITS  # MAX_INT_DIGITS + 1 digits: the smallest integer over the limit


def minimal(**top: Any) -> dict[str, Any]:
    return doc([stage("a", "Echo", next="end"), terminal("end")], **top)


def subpipelines(levels: int, *, broken: bool) -> dict[str, Any]:
    """A pipeline whose subpipelines nest ``levels`` deep; the innermost has an unknown field."""
    inner: dict[str, Any] = {"entry": "s", "nodes": [stage("s", "Echo", next="e"), terminal("e")]}
    if broken:
        inner["nodes"][0]["bogus"] = 1
    for _ in range(levels):
        inner = {
            "entry": "c",
            "nodes": [
                {"id": "c", "type": "subpipeline", "pipeline": "p", "next": "e"},
                terminal("e"),
            ],
            "subpipelines": {"p": inner},
        }
    return {"api_version": "1.0", **inner}


# ------------------------------------------------------------------ the value guard


def test_an_integer_of_too_many_digits_is_not_json() -> None:
    assert not int_too_large(BIG - 1)
    assert int_too_large(BIG)
    assert int_too_large(-BIG)
    bad = find_non_json({"n": [1, BIG]}, "$")
    assert bad is not None
    assert bad.location == "$.n[1]"
    assert str(MAX_INT_DIGITS) in bad.reason


def test_a_document_with_a_huge_integer_is_a_validation_error() -> None:
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        load(minimal(metadata={"n": BIG}))
    assert caught.value.problems[0].location == "$.metadata.n"
    assert "digits" in caught.value.problems[0].message


def test_json_text_with_a_huge_integer_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"api_version": "1.0", "metadata": {"n": ' + "9" * 5000 + "}}")
    with pytest.raises(stageflow.PipelineValidationError, match="digits"):
        stageflow.Pipeline.load(path, registry=fake_registry())


def test_a_payload_with_a_huge_integer_is_refused_by_the_session() -> None:
    pipeline = load(minimal())
    with pytest.raises(stageflow.NonJsonValueError, match="digits"):
        stageflow.Session(pipeline, registry=fake_registry(), payload={"n": BIG})


# ------------------------------------------------------------------ depth and size


@pytest.mark.parametrize("yaml_", [False, True], ids=["json", "yaml"])
def test_deeply_nested_text_is_a_validation_error(yaml_: bool) -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(stageflow.PipelineValidationError, match="levels deep"):
        parse_document(text, source="deep", yaml_=yaml_)


def test_text_nested_just_past_the_budget_is_a_validation_error() -> None:
    text = '{"api_version": "1.0", "metadata": {"x": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}}"
    with pytest.raises(stageflow.PipelineValidationError, match="levels deep"):
        stageflow.Pipeline.from_dict(parse_document(text, source="deep"))


def test_subpipelines_nested_past_the_budget_are_a_validation_error() -> None:
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        load(subpipelines(126, broken=True))
    assert f"more than {MAX_NESTING} levels" in str(caught.value)


def test_subpipelines_nested_within_the_budget_report_their_schema_error() -> None:
    with pytest.raises(stageflow.PipelineValidationError, match="bogus"):
        load(subpipelines(MAX_NESTING - 1, broken=True))


def test_limits_max_depth_is_bounded_by_the_schema() -> None:
    with pytest.raises(stageflow.PipelineValidationError, match="max_depth"):
        load(minimal(limits={"max_depth": MAX_NESTING + 1}))


def laughs(levels: int) -> str:
    """A "billion laughs" YAML text: each level repeats the one before nine times."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_within_the_budget_are_read() -> None:
    loaded = parse_document(laughs(2), source="small", yaml_=True)
    assert len(loaded["a2"]) == 9
    assert loaded["a2"][0] == loaded["a1"]


def test_a_document_sharing_one_list_exponentially_is_refused_at_once() -> None:
    """``x = [x, x]`` forty levels deep: 41 lists, 2**41 values as JSON.

    Refused by the value guard's count, not copied as a tree first (which took
    all memory); in a subprocess, so that a regression cannot take the machine.
    """
    code = textwrap.dedent(
        """
        import resource, time
        from types import MappingProxyType
        import stageflow
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
        x = []
        for _ in range(40):
            x = [x, x]
        end = {"id": "end", "type": "terminal"}
        for metadata in ({"x": x}, MappingProxyType({"x": tuple(x)})):
            document = {"api_version": "1.0", "entry": "end", "nodes": [end], "metadata": metadata}
            started = time.monotonic()
            try:
                stageflow.Pipeline.from_dict(document)
            except stageflow.PipelineValidationError as exc:
                print("refused:", exc.problems[0].location, exc.problems[0].message)
            print("seconds:", time.monotonic() - started)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    refused = [line for line in lines if line.startswith("refused:")]
    assert len(refused) == 2, done.stdout
    assert all(line.startswith("refused: $.metadata.x[") for line in refused)
    assert all("10,000,000 values" in line for line in refused)
    assert all(float(line.split()[1]) < 10 for line in lines if line.startswith("seconds:"))


def test_a_document_inside_itself_is_a_located_validation_error() -> None:
    looped: dict[str, Any] = {}
    looped["again"] = looped
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        load(minimal(metadata={"loop": looped}))
    [problem] = caught.value.problems
    assert problem.location == "$.metadata.loop.again"
    assert "contains itself" in problem.message


def test_a_document_sharing_a_list_within_the_budget_loads_as_a_tree() -> None:
    shared = [1, 2, 3]
    pipeline = load(minimal(metadata={"a": shared, "b": shared}))
    assert pipeline.to_dict()["metadata"] == {"a": [1, 2, 3], "b": [1, 2, 3]}


def test_a_billion_laughs_yaml_is_refused_in_bounded_time() -> None:
    """Ten levels would never finish; refused from the parser's events, in a subprocess."""
    code = textwrap.dedent(
        f"""
        import stageflow
        from stageflow._pipeline import parse_document
        try:
            parse_document({laughs(10)!r}, source="lol", yaml_=True)
        except stageflow.PipelineValidationError as exc:
            print("refused:", exc.problems[0].message)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "refused:" in done.stdout
    assert "aliases" in done.stdout


def test_a_json_key_given_twice_is_a_located_validation_error(tmp_path: Path) -> None:
    # json.loads keeps the last value silently: the pipeline ran from "b".
    path = tmp_path / "p.json"
    path.write_text(
        '{"api_version": "1.0", "entry": "a", "nodes": [{"id": "a", "type": "terminal", '
        '"result": {"x": 1, "x": 2}}], "entry": "b"}'
    )
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.load(path)
    [problem] = caught.value.problems
    assert problem.location == "$"  # the outer object first
    assert problem.message.startswith("the key 'entry' appears more than once in this object")
    assert problem.message.endswith("keep one of them")
    path.write_text(json.dumps(minimal()).replace('"type"', '"type": "stage", "type"'))
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.load(path)
    assert caught.value.problems[0].location == "$.nodes[0]"
    with pytest.raises(CommandError, match=r"--payload: not read: the object at \$\.a has the key"):
        read_json_argument('{"a": {"k": 1, "k": 2}}', option="--payload")


def test_a_yaml_key_given_twice_is_a_validation_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("api_version: '1.0'\nentry: a\nnodes:\n  - {id: a, type: terminal}\nentry: b\n")
    with pytest.raises(stageflow.PipelineValidationError, match=r"at line 5 column 1: .*'entry'"):
        stageflow.Pipeline.load(path)
    # Keys a merge brings in may be overridden: that is what merges are for.
    merged = parse_yaml_text("base: &b {k: 1, j: 2}\nover: {<<: *b, k: 3}\n")
    assert merged["over"] == {"k": 3, "j": 2}


def test_a_text_over_the_size_budget_is_refused() -> None:
    text = '{"api_version": "1.0", "metadata": {"x": "' + "a" * (17 * 1024 * 1024) + '"}}'
    with pytest.raises(stageflow.PipelineValidationError, match="MiB"):
        parse_document(text, source="big")


def test_a_document_broken_in_thousands_of_places_lists_its_first_errors() -> None:
    """Each schema error costs a walk: a million bad nodes took minutes and gigabytes."""
    document = doc([stage("a", "Set", next="end"), terminal("end")])
    document["nodes"] += [0] * (3 * MAX_DOCUMENT_ERRORS)
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        load(document)
    assert len(caught.value.problems) == MAX_DOCUMENT_ERRORS
    assert caught.value.problems[0].location == "$.nodes[2]"


# ------------------------------------------------------------ values made at run time


def value_registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Huge")
    async def huge(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": 10 ** ctx.config["digits"]}

    @registry.register("EmitHuge")
    async def emit_huge(ctx: stageflow.StageContext) -> dict[str, Any]:
        ctx.emit("progress", {"n": 10 ** ctx.config["digits"]})
        return {}

    @registry.register("Float")
    async def float_stage(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": float(ctx.config["value"])}

    return registry


async def run_one(node: dict[str, Any], **top: Any) -> stageflow.SessionResult:
    registry = value_registry()
    pipeline = stageflow.Pipeline.from_dict(
        doc([{**node, "next": "end"}, terminal("end", "v")], **top), registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry)
    result = await session.run()
    json.dumps(session.to_dict())  # the session stays serialisable, whatever happened
    return result


@pytest.mark.anyio
async def test_a_stage_output_with_a_huge_integer_fails_the_node() -> None:
    node = stage("a", "Huge", config={"digits": MAX_INT_DIGITS}, outputs={"v": "v"})
    result = await run_one(node)
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageOutputError)
    assert "digits" in str(result.error)


@pytest.mark.anyio
async def test_an_emitted_payload_with_a_huge_integer_fails_the_stage() -> None:
    node = stage("a", "EmitHuge", config={"digits": MAX_INT_DIGITS})
    result = await run_one(node)
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.StageError)
    assert isinstance(result.error.__cause__, stageflow.NonJsonValueError)
    assert "digits" in str(result.error.__cause__)


@pytest.mark.anyio
async def test_an_input_with_a_huge_integer_is_rejected() -> None:
    pipeline = load(
        doc(
            [
                stage("w", "WaitStage", config={"input": "msg"}, next="end"),
                terminal("end"),
            ]
        )
    )
    session = stageflow.Session(pipeline, registry=fake_registry())
    with pytest.raises(stageflow.InputRejectedError) as caught:
        session.send_input("msg", {"n": BIG})
    assert caught.value.reason == "not_json"
    assert "digits" in str(caught.value)
    json.dumps(session.to_dict())


def sum_fan(value: Any, registry_stage: str = "Float") -> dict[str, Any]:
    config = {"value": value} if registry_stage == "Float" else {"digits": value}
    return doc(
        [
            parallel("fan", ["x", "y"], next="end"),
            stage("x", registry_stage, config=config, outputs={"v": "v"}),
            stage("y", registry_stage, config=config, outputs={"v": "v"}),
            terminal("end", "v"),
        ],
        reducers={"v": "sum"},
    )


@pytest.mark.anyio
async def test_a_sum_reducer_that_overflows_to_infinity_fails_the_join() -> None:
    registry = value_registry()
    pipeline = stageflow.Pipeline.from_dict(sum_fan(1.5e308), registry=registry)
    session = stageflow.Session(pipeline, registry=registry)
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.NodeError)
    assert result.error.node_id == "fan"
    assert "finite" in str(result.error)
    json.loads(json.dumps(session.to_dict(), allow_nan=False))


@pytest.mark.anyio
async def test_a_sum_reducer_that_grows_past_the_integer_budget_fails_the_join() -> None:
    registry = value_registry()
    pipeline = stageflow.Pipeline.from_dict(sum_fan(MAX_INT_DIGITS - 1, "Huge"), registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload={"v": BIG - 1})
    result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert "digits" in str(result.error)
    json.dumps(session.to_dict())


# ------------------------------------------------------------------------- fuzzers

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # Integers over the budget (built, not listed: their repr() itself fails).
    st.sampled_from([MAX_INT_DIGITS, 5000]).map(lambda digits: 10**digits),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]),
    st.floats(),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


def nested(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = [value]
    return value


FIELDS = ["metadata", "limits", "reducers", "entry", "nodes", "subpipelines", "validate_events"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(FIELDS),
    value=json_values,
    levels=st.sampled_from([0, 1, MAX_DEPTH - 2, MAX_DEPTH, 5 * MAX_DEPTH]),
)
def test_fuzz_documents_give_a_pipeline_or_a_validation_error(
    field: str, value: Any, levels: int
) -> None:
    """Any JSON-ish value at any top-level field: a pipeline or a PipelineValidationError."""
    document = minimal()
    document[field] = nested(value, levels)
    try:
        pipeline = load(document)
    except stageflow.PipelineValidationError:
        return
    json.dumps(pipeline.to_dict(), allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_texts_give_a_document_or_a_validation_error(data: st.DataObject) -> None:
    """Random edits of a valid JSON or YAML text: parsed, or a located problem, never a crash."""
    yaml_ = data.draw(st.booleans(), label="yaml")
    text = json.dumps(minimal(metadata={"n": [1, 2.5, "x"]}))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(text)), label="at")
        cut = data.draw(st.integers(0, 8), label="cut")
        insert = data.draw(
            st.sampled_from(["[", "{", "]", "&a ", "*a", "9" * 5000, "1e999", "-", '"', ": ", ""])
            | st.text(max_size=4),
            label="insert",
        )
        text = text[:at] + insert * data.draw(st.integers(1, 300), label="times") + text[at + cut :]
    try:
        document = parse_document(text, source="fuzz", yaml_=yaml_)
        load(document)
    except stageflow.PipelineValidationError:
        pass


def test_a_cli_payload_nested_too_deeply_is_a_usage_error() -> None:
    with pytest.raises(CommandError, match="levels deep"):
        read_json_argument("[" * 100_000 + "]" * 100_000, option="--payload")


def test_session_limits_cannot_nest_deeper_than_a_snapshot_may() -> None:
    """A session nesting past the snapshot budget could never be restored."""
    with pytest.raises(stageflow.DefinitionError, match="max_depth"):
        stageflow.Limits(max_depth=MAX_NESTING + 1)
    assert stageflow.Limits(max_depth=MAX_NESTING).max_depth == MAX_NESTING


def test_a_duration_past_the_largest_float_is_a_located_problem() -> None:
    # The schema takes any number; structuring the limits raised a bare
    # cattrs ClassValidationError (OverflowError inside) out of from_dict.
    document = {
        "api_version": "1.0",
        "entry": "end",
        "nodes": [{"id": "end", "type": "terminal"}],
        "limits": {"timeout": 10**400},
    }
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document)
    [problem] = caught.value.problems
    assert problem.location == "$.limits.timeout"
    assert "too large" in problem.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value", "named"),
    [((1, 2), "a Python tuple"), (types.MappingProxyType({"a": 1}), "a Python mappingproxy")],
)
async def test_an_input_holding_a_tuple_or_a_mapping_proxy_names_what_it_is(
    value: Any, named: str
) -> None:
    # "payload.k is an array, not a JSON value": the message called the tuple
    # (and a mapping that is no dict "an object") what it refused it for not being.
    pipeline = load(
        doc([stage("w", "WaitStage", config={"input": "msg"}, next="end"), terminal("end")])
    )
    session = stageflow.Session(pipeline, registry=fake_registry())
    with pytest.raises(stageflow.InputRejectedError, match=rf"payload\.k is {named}, not a JSON"):
        session.send_input("msg", {"k": value})


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("night\nshift", '"night\\nshift"'),
        ("\x1b[2Jcleared", '"\\u001b[2Jcleared"'),
        ("tab\there", '"tab\\there"'),
        ("del\x7f", '"del\\u007f"'),
        ("c1\x85", '"c1\\u0085"'),
        ("trailing\n", '"trailing\\n"'),
    ],
)
def test_a_pipeline_name_with_control_characters_is_refused(name: str, shown: str) -> None:
    # The name is a span name, a metric attribute and a field of every log line.
    for where, subject, document in (
        ("$.metadata.name", "the pipeline", minimal(metadata={"name": name})),
        ("$.subpipelines.p.metadata.name", "subpipeline 'p'", _named_subpipeline(name)),
    ):
        with pytest.raises(stageflow.PipelineValidationError) as caught:
            stageflow.Pipeline.from_dict(document, registry=fake_registry())
        [problem] = caught.value.problems
        assert problem.location == where
        assert problem.message == (
            f"{subject}: {shown} is not a pipeline name; a name is text without control "
            "characters (no line break, tab or escape sequence)"
        )


def _named_subpipeline(name: str) -> dict[str, Any]:
    document = subpipelines(1, broken=False)
    document["subpipelines"]["p"]["metadata"] = {"name": name}
    return document


def test_ids_and_names_are_bounded_and_said_so_shortly() -> None:
    for good in ("n" * 200, "résumé: the night shift ✓"):
        assert load(minimal(metadata={"name": good})).name == good
    long_id = "a" * 201
    document = doc([stage(long_id, "Echo", next="end"), terminal("end")], entry=long_id)
    document["metadata"] = {"name": "n" * 5000}
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document, registry=fake_registry())
    said = {p.location: p.message for p in caught.value.problems}
    cut = '"' + "a" * 56 + "..."
    assert said == {
        "$.entry": f"the pipeline: {cut} is 201 characters long; a node id has at most 200 "
        "(it names spans, metrics and log lines): shorten it",
        "$.metadata.name": f'the pipeline: "{"n" * 56}... is 5000 characters long; a pipeline '
        "name has at most 200 (it names spans, metrics and log lines): shorten it",
        "$.nodes[0].id": f"node '{'a' * 56}...: {cut} is 201 characters long; a node id has "
        "at most 200 (it names spans, metrics and log lines): shorten it",
    }


@pytest.mark.anyio
async def test_the_deepest_path_a_document_may_write_leaves_a_session_that_restores() -> None:
    # A context nests at most 256 levels, as deep as a snapshot holds: a
    # scalar written at a path of 257 segments made a session that ran to its
    # end but whose snapshot could not be restored.
    registry = stageflow.StageRegistry()

    @registry.register("One")
    async def one(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": 1}

    def writing_at(path: str) -> dict[str, Any]:
        return doc([stage("s", "One", next="end") | {"outputs": {"v": path}}, terminal("end")])

    deepest = ".".join(["k"] * 256)
    pipeline = stageflow.Pipeline.from_dict(writing_at(deepest), registry=registry)
    session = stageflow.Session(pipeline)
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED
    snapshot = json.loads(json.dumps(session.to_dict()))
    assert stageflow.Session.from_dict(snapshot, registry=registry).status is (
        stageflow.SessionStatus.COMPLETED
    )
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(writing_at(deepest + ".k"), registry=registry)
    [problem] = caught.value.problems
    assert problem.location == "$.nodes[0].outputs.v"
    assert problem.message == (
        f"node 's': \"{'k.' * 28}... has 257 segments; a context path has at most 256, as deep "
        "as a context nests (a snapshot could not hold a value written deeper): flatten it"
    )


@pytest.mark.parametrize("field", ["inputs", "artifacts"])
def test_the_paths_a_subpipeline_node_maps_from_are_context_paths_too(field: str) -> None:
    # The child's side of "inputs" (where a value is written in the child) was
    # not checked: "a..b" loaded and failed the session when the node ran,
    # and a path of 300 segments made a child whose snapshot could not be restored.
    for path, said in (
        ("a..b", "is not a context path"),
        (".".join(["k"] * 300), "has 300 segments; a context path has at most 256"),
    ):
        document = subpipelines(1, broken=False)
        document["nodes"][0][field] = {path: "x"}
        with pytest.raises(stageflow.PipelineValidationError) as caught:
            stageflow.Pipeline.from_dict(document, registry=fake_registry())
        assert [p.location for p in caught.value.problems] == [f"$.nodes[0].{field}"]
        assert said in caught.value.problems[0].message


def refused_in_bounded_memory(load: str) -> str:
    """What a subprocess with 2 GiB of address space prints after ``load`` (Python code).

    ``"refused: LOCATION MESSAGE"`` for a ``PipelineValidationError``, else
    ``"loaded"``; a regression that runs out of memory fails the subprocess,
    not the machine running the tests.
    """
    code = textwrap.dedent(
        """
        import resource
        import stageflow
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
        try:
            {load}
            print("loaded")
        except stageflow.PipelineValidationError as exc:
            print("refused:", exc.problems[0].location, exc.problems[0].message)
        """
    ).format(load=load)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_yaml_that_repeats_a_long_string_through_aliases_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """A 256 KiB string aliased 100,000 times: a 1 MB text, 25 GiB of text when built.

    Aliases were counted as values only: it loaded, and writing the document
    (its digest) ran out of memory. In a subprocess with bounded memory, so
    that a regression cannot take the machine.
    """
    long = "y" * (256 * 1024)
    path = tmp_path / "many.yaml"
    text = "\n".join(
        [
            'api_version: "1.0"',
            "entry: end",
            "nodes: [{id: end, type: terminal}]",
            "metadata:",
            f"  long: &long {long}",
            "  many:",
            *["    - *long"] * 100_000,
        ]
    )
    path.write_text(text)
    printed = refused_in_bounded_memory(f"stageflow.Pipeline.load({str(path)!r})")
    assert printed.startswith("refused: $ "), printed
    assert "expands to more than 16,777,216 characters of text" in printed


def test_a_document_that_repeats_a_long_string_is_refused_at_it() -> None:
    # The same from Python: one string in a list many times is written out
    # each time, so the document is held to the text a file may hold. Before
    # the fix it loaded, and its digest ran out of memory.
    printed = refused_in_bounded_memory(
        "stageflow.Pipeline.from_dict({'api_version': '1.0', 'entry': 'end', "
        "'nodes': [{'id': 'end', 'type': 'terminal'}], "
        "'metadata': {'many': ['y' * (1 << 20)] * 100_000}})"
    )
    assert printed.startswith("refused: $.metadata.many[1"), printed
    assert "more than 16,777,216 characters of text" in printed
    assert "keep long text out of the document" in printed


def test_a_yaml_file_is_read_as_yaml_whatever_the_case_of_its_suffix(tmp_path: Path) -> None:
    # `pipeline.YAML` was read as JSON: "not valid JSON" for a valid YAML file.
    text = 'api_version: "1.0"\nentry: end\nnodes:\n  - {id: end, type: terminal}\n'
    for name in ("upper.YAML", "mixed.Yml"):
        (tmp_path / name).write_text(text)
        assert stageflow.Pipeline.load(tmp_path / name).entry == "end"
