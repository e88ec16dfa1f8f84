"""What the inspector reads of a snapshot, its layout, and what it may import."""

from __future__ import annotations

import ast
import copy
import itertools
import urllib.request
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._cli._graph import build_invalid_graph
from stageflow.ui._drawing import draw
from stageflow.ui._errors import InputRefusedError, SnapshotLoadError
from stageflow.ui._inspect import REDACTED, inspect_session, redact
from stageflow.ui._layout import _BENDS, _crossings, layout
from stageflow.ui._sources import PipelineCache, check_input

pytestmark = pytest.mark.anyio

NOTE_SCHEMA = {"type": "object", "required": ["text"]}

NESTED = {
    "api_version": "1.0",
    "entry": "each",
    "metadata": {"name": "nested"},
    "nodes": [
        {
            "id": "each",
            "type": "map",
            "items": "items",
            "body": "ask",
            "concurrency": 2,
            "next": "sub",
        },
        {
            "id": "ask",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "answer"},
            "outputs": {"payload": "answer"},
        },
        {"id": "sub", "type": "subpipeline", "pipeline": "notes", "next": "done"},
        {"id": "done", "type": "terminal"},
    ],
    "subpipelines": {
        "notes": {
            "entry": "note",
            "nodes": [
                {
                    "id": "note",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": "note", "input_schema": NOTE_SCHEMA},
                    "next": "end",
                },
                {"id": "end", "type": "terminal"},
            ],
        }
    },
}


async def test_positions_inside_map_items_are_drawn_on_the_body_node() -> None:
    pipeline = stageflow.Pipeline.from_dict(NESTED)
    session = stageflow.Session(pipeline, payload={"items": [1, 2, 3]}, session_id="n-1")
    await session.run(suspend=True)
    view = inspect_session(session.to_dict(), [e.to_dict() for e in session.history], pipeline)
    assert view.nodes["each"].state == "running"
    assert [p.state for p in view.nodes["each"].positions] == ["map"]
    assert view.nodes["ask"].state == "waiting"
    assert len(view.nodes["ask"].positions) == 2  # two items at a time
    assert {p.path for p in view.nodes["ask"].positions} == {"each/0", "each/1"}
    assert view.nodes["sub"].state == "unvisited"
    assert [f.type for f in view.forms] == ["answer"]


async def test_a_position_inside_a_subpipeline_marks_the_subpipeline_node() -> None:
    pipeline = stageflow.Pipeline.from_dict(NESTED)
    session = stageflow.Session(pipeline, payload={"items": []}, session_id="n-2")
    await session.run(suspend=True)
    view = inspect_session(session.to_dict(), [e.to_dict() for e in session.history], pipeline)
    assert view.nodes["each"].state == "visited"
    sub = view.nodes["sub"]
    assert sub.state == "waiting"
    assert [(p.state, p.inner) for p in sub.positions] == [
        ("subpipeline", "sub"),
        ("waiting", "sub/note"),
    ]
    assert "note" not in view.nodes  # the subpipeline's own nodes are not drawn here
    (form,) = view.forms
    assert (form.type, form.nodes) == ("note", ("sub/note",))
    assert form.schema == NOTE_SCHEMA  # from the subpipeline's node config


@pytest.mark.parametrize("ref", ["#/$defs/missing", "https://schemas.example/note.json"])
async def test_an_input_whose_schema_has_a_ref_nothing_resolves_is_refused(
    monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    # Checking a payload against such a schema raised the validator's
    # referencing error, and the page was the 500 one; a URL was fetched first
    # (the inspector reads nothing from the network). This stageflow refuses
    # such a pipeline at load; a stored session may still hold one.
    fetched: list[object] = []

    def urlopen(*args: object, **options: object) -> None:
        fetched.append(args[0])
        raise OSError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    pipeline = stageflow.Pipeline.from_dict(NESTED)
    session = stageflow.Session(pipeline, payload={"items": []}, session_id="n-3")
    await session.run(suspend=True)
    view = inspect_session(session.to_dict(), [e.to_dict() for e in session.history], pipeline)
    bad = tuple(attrs.evolve(form, schema={"$ref": ref}) for form in view.forms)
    with pytest.raises(InputRefusedError, match=r"has a reference nothing resolves") as info:
        check_input(attrs.evolve(view, forms=bad), "note", '{"text": "hi"}')
    assert "nothing was sent" in str(info.value)
    assert fetched == []


def test_a_session_that_has_not_run_is_about_to_start_its_entry_node() -> None:
    # A session no worker has run yet (a store's "pending") is at its entry
    # node with nothing in flight: the page said that node was running.
    pipeline = stageflow.Pipeline.from_dict(NESTED)
    session = stageflow.Session(pipeline, payload={"items": [1]}, session_id="n-4")
    snapshot = session.to_dict()
    assert snapshot["status"] == "pending"
    view = inspect_session(snapshot, [], pipeline)
    (position,) = view.nodes["each"].positions
    assert (position.state, position.detail) == ("next", "starts next")


async def test_a_subpipeline_node_that_starts_a_branch_is_drawn_as_run() -> None:
    # A branch is named after its child (path "fan/sub"): any path naming a
    # subpipeline node was taken for the inside of its call, so the node's own
    # events were left out and it was drawn "not reached", its branch not taken.
    document = {
        "api_version": "1.0",
        "entry": "fan",
        "nodes": [
            {"id": "fan", "type": "parallel", "children": ["sub", "other"], "next": "done"},
            {"id": "sub", "type": "subpipeline", "pipeline": "inner"},
            {"id": "other", "type": "stage", "stage": "SleepStage", "config": {"seconds": 0}},
            {"id": "done", "type": "terminal"},
        ],
        "subpipelines": {
            "inner": {
                "entry": "sub",
                "nodes": [
                    {
                        "id": "sub",
                        "type": "stage",
                        "stage": "SleepStage",
                        "config": {"seconds": 0},
                        "next": "e",
                    },
                    {"id": "e", "type": "terminal"},
                ],
            }
        },
    }
    pipeline = stageflow.Pipeline.from_dict(document)
    session = stageflow.Session(pipeline, session_id="n-5")
    await session.run()
    view = inspect_session(session.to_dict(), [e.to_dict() for e in session.history], pipeline)
    assert {node: (state.state, state.visits) for node, state in view.nodes.items()} == {
        "fan": ("visited", 1),
        "sub": ("visited", 1),  # not also the inner "sub" stage, which has the same id
        "other": ("visited", 1),
        "done": ("visited", 1),
    }
    assert ("fan", "branch", "sub") in view.taken


def test_redact_hides_matching_paths_at_any_depth() -> None:
    value = {"user": {"password": "p", "name": "n"}, "password": "q", "cards": [{"no": 1}]}
    assert redact(value, ["*password", "cards.*.no"]) == {
        "user": {"password": REDACTED, "name": "n"},
        "password": REDACTED,
        "cards": [{"no": REDACTED}],
    }
    assert redact(value, ["user"]) == {**value, "user": REDACTED}
    assert redact(value, []) is value


def test_layout_puts_nodes_in_layers_without_overlaps_and_routes_every_edge() -> None:
    nodes = ["s", "a", "b", "c", "d"]
    edges = [("s", "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "a"), ("a", "d")]
    sizes = {n: (100.0, 40.0) for n in nodes}
    placed = layout(nodes, sizes, edges)
    ys = {n: placed.boxes[n].y for n in nodes}
    assert ys["s"] < ys["a"] < ys["b"] == ys["c"] < ys["d"]  # the loop d -> a goes back up
    for a in nodes:
        for b in nodes:
            if a < b and ys[a] == ys[b]:
                assert abs(placed.boxes[a].x - placed.boxes[b].x) >= 100.0
    for (source, target), route in zip(edges, placed.routes, strict=True):
        assert route[0] == (placed.boxes[source].x, placed.boxes[source].y)
        assert route[-1] == (placed.boxes[target].x, placed.boxes[target].y)
    assert len(placed.routes[6]) == 3  # a -> d spans two layers: one bend between
    assert layout(nodes, sizes, edges) == placed  # the same every time


def _crossings_pair_by_pair(order: list[list[str]], down: dict[str, list[str]]) -> int:
    count = 0
    for upper, lower in itertools.pairwise(order):
        where = {n: i for i, n in enumerate(lower)}
        ends = [(i, where[t]) for i, n in enumerate(upper) for t in down[n] if t in where]
        for k, (a1, b1) in enumerate(ends):
            count += sum(1 for a2, b2 in ends[k + 1 :] if (a1 - a2) * (b1 - b2) < 0)
    return count


@settings(max_examples=300, deadline=None)
@given(data=st.data(), widths=st.lists(st.integers(0, 6), min_size=1, max_size=5))
def test_layout_counts_crossings_as_comparing_every_pair_of_edges_would(
    data: st.DataObject, widths: list[int]
) -> None:
    order = [[f"{r}.{i}" for i in range(width)] for r, width in enumerate(widths)]
    down: dict[str, list[str]] = {n: [] for row in order for n in row}
    for upper, lower in itertools.pairwise(order):
        for n in upper:
            if lower:  # repeated edges included
                down[n] = data.draw(st.lists(st.sampled_from(lower), max_size=3))
    order = [data.draw(st.permutations(row)) for row in order]
    assert _crossings(order, down) == _crossings_pair_by_pair(order, down)


def test_a_graph_of_many_long_edges_is_laid_out_within_a_budget_of_bends() -> None:
    # A chain of n nodes whose error edges all lead to one handler: an edge
    # got a bend per layer it crosses, n * n / 2 in all, and every crossing
    # count compared every pair of them; 1,600 nodes took minutes.
    chain = [f"n{i}" for i in range(300)]
    nodes = [*chain, "handler", "end"]
    edges = [*itertools.pairwise(chain), (chain[-1], "end"), ("handler", "end")]
    edges += [(node, "handler") for node in chain]
    placed = layout(nodes, {n: (80.0, 30.0) for n in nodes}, edges)
    assert sum(len(route) - 2 for route in placed.routes) <= _BENDS
    for (source, target), route in zip(edges, placed.routes, strict=True):
        assert route[0] == (placed.boxes[source].x, placed.boxes[source].y)
        assert route[-1] == (placed.boxes[target].x, placed.boxes[target].y)
    # The first long edges still bend round the nodes in their way.
    assert len(placed.routes[edges.index(("n0", "handler"))]) > 2


def test_drawing_escapes_node_ids_and_labels() -> None:
    document = {
        "api_version": "1.0",
        "entry": "<b>",
        "metadata": {"name": "x&y"},
        "nodes": [{"id": "<b>", "type": "terminal"}],
    }
    with pytest.raises(stageflow.PipelineValidationError) as caught:
        stageflow.Pipeline.from_dict(document)  # such ids are invalid, and drawn all the same
    graph = build_invalid_graph(document, caught.value.problems)
    assert graph is not None
    svg = draw(graph)
    assert "<b>" not in svg
    assert 'data-node="&lt;b&gt;"' in svg


ALLOWED = {"stageflow", "stageflow.store", "stageflow.testing", "stageflow._cli._graph"}
ALLOWED_CLI = {"stageflow._cli._registry"}
# How every part of stageflow logs (structlog when configured, ``logging`` otherwise).
ALLOWED_LOGGING = {"stageflow._log"}


def test_the_inspector_reads_sessions_through_public_apis_only() -> None:
    package = Path(stageflow.__file__).parent / "ui"
    used: set[str] = set()
    for file in package.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
    outside = {m for m in used if m.startswith("stageflow") and not m.startswith("stageflow.ui")}
    # The graph model and the structural stage registry of the CLI (the same top
    # layer) are shared on purpose, and so is the library's logger; nothing
    # else below the public API is imported.
    assert outside <= ALLOWED | ALLOWED_CLI | ALLOWED_LOGGING
    assert "stageflow._cli._graph" in outside


async def test_a_pipeline_is_loaded_once_per_digest_and_a_tampered_snapshot_still_fails() -> None:
    pipeline = stageflow.Pipeline.from_dict(NESTED)
    cache = PipelineCache(None)
    snapshots = []
    for sid in ("c-1", "c-2"):
        session = stageflow.Session(pipeline, payload={"items": [1]}, session_id=sid)
        await session.run(suspend=True)
        snapshots.append(session.to_dict())
    first, _ = cache.restore(snapshots[0], "c-1")
    second, _ = cache.restore(snapshots[1], "c-2")
    assert second.pipeline is first.pipeline
    tampered = copy.deepcopy(snapshots[1])
    tampered["pipeline"]["document"]["nodes"][3]["id"] = "finish"
    tampered["pipeline"]["document"]["nodes"][2]["next"] = "finish"
    with pytest.raises(SnapshotLoadError, match="c-3: the snapshot does not load"):
        cache.restore(tampered, "c-3")
