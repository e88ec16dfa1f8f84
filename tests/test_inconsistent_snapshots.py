"""Snapshots valid per the schema but inconsistent are SnapshotErrors (issue 19, classes 2 and 4).

A snapshot can pass its schema and still name an impossible date, a map item
past the list, a winner an ``all`` node cannot have, a history not numbered
1..n, counters a restore would replay for ever, or frames nested hundreds
deep. Each is a ``SnapshotError`` naming the field, at ``from_dict``; and a
snapshot restored and snapshotted again is the same snapshot.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any, Final

import anyio
import pytest
import sniffio
from fakes import fake_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stageflow
from stageflow._engine._snapshot import _validator as _snapshot_validator
from stageflow._engine._snapshot_check import INTEGER_FIELDS
from stageflow._guard import MAX_DEPTH, MAX_INT_DIGITS, MAX_NESTING
from stageflow._json import thaw
from stageflow._pipeline import load_schema
from stageflow._specs import MAX_DOCUMENT_ERRORS

pytestmark = pytest.mark.anyio

WAIT = "WaitStage"

DOCUMENT: dict[str, Any] = {
    "api_version": "1.0",
    "entry": "fan",
    "nodes": [
        {"id": "fan", "type": "parallel", "children": ["left", "right"], "next": "race"},
        {
            "id": "left",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "a", "timeout": 600},
            "outputs": {"payload": "left"},
        },
        {
            "id": "right",
            "type": "stage",
            "stage": "Set",
            "config": {"values": {"v": 1}},
            "outputs": {"v": "right"},
        },
        {
            "id": "race",
            "type": "parallel",
            "policy": "any",
            "children": ["slow", "fast"],
            "next": "pages",
        },
        {"id": "slow", "type": "stage", "stage": WAIT, "config": {"input": "never"}},
        {
            "id": "fast",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "b"},
            "outputs": {"payload": "fast"},
        },
        {
            "id": "pages",
            "type": "map",
            "items": "items",
            "body": "page",
            "concurrency": 2,
            "collect": {"got": "pages_out"},
            "next": "sub",
        },
        {
            "id": "page",
            "type": "stage",
            "stage": WAIT,
            "config": {"input": "page"},
            "outputs": {"payload": "got"},
        },
        {"id": "sub", "type": "subpipeline", "pipeline": "inner", "next": "end"},
        {"id": "end", "type": "terminal", "artifacts": ["left", "right", "pages_out"]},
    ],
    "subpipelines": {
        "inner": {
            "entry": "ask",
            "nodes": [
                {
                    "id": "ask",
                    "type": "stage",
                    "stage": WAIT,
                    "config": {"input": "c"},
                    "next": "done",
                },
                {"id": "done", "type": "terminal"},
            ],
        }
    },
}
INPUTS = [("a", {"n": 1}), ("b", {"n": 2}), ("page", 1), ("page", 2), ("page", 3), ("c", {})]
PAYLOAD = {"items": ["p1", "p2", "p3"]}


async def suspensions() -> list[dict[str, Any]]:
    """A snapshot at every suspension of the document's run, restored between inputs."""
    registry = fake_registry()
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload=PAYLOAD, seed=3)
    snapshots: list[dict[str, Any]] = []
    pending = list(INPUTS)
    while True:
        result = await session.run(suspend=True)
        snapshot = json.loads(json.dumps(session.to_dict()))
        snapshots.append(snapshot)
        if result.status is not stageflow.SessionStatus.WAITING:
            return snapshots
        session = stageflow.Session.from_dict(snapshot, registry=registry)
        while pending and pending[0][0] in result.waiting_for:
            input_type, payload = pending.pop(0)
            session.send_input(input_type, payload)


_SNAPSHOTS: dict[str, list[dict[str, Any]]] = {}


async def snapshots() -> list[dict[str, Any]]:
    backend = sniffio.current_async_library()
    if backend not in _SNAPSHOTS:
        _SNAPSHOTS[backend] = await suspensions()
    return copy.deepcopy(_SNAPSHOTS[backend])


def restore(snapshot: dict[str, Any]) -> stageflow.Session:
    return stageflow.Session.from_dict(snapshot, registry=fake_registry())


def refused(snapshot: dict[str, Any]) -> stageflow.SnapshotError:
    with pytest.raises(stageflow.SnapshotError) as caught:
        restore(snapshot)
    return caught.value


def at(snapshot: dict[str, Any], record: str) -> dict[str, Any]:
    """The first frame (depth first) with ``record`` (parallel, map, subpipeline, stage)."""
    todo = [snapshot["position"]]
    while todo:
        frame = todo.pop()
        if record in frame:
            return frame  # type: ignore[no-any-return]
        for key, listing in (("parallel", "branches"), ("map", "running")):
            if key in frame:
                todo.extend(b["position"] for b in frame[key][listing] if "position" in b)
        if "subpipeline" in frame:
            todo.append(frame["subpipeline"]["position"])
    raise LookupError(record)


async def snapshot_with(record: str, test: Callable[[dict[str, Any]], bool] = bool) -> Any:
    for snapshot in await snapshots():
        try:
            frame = at(snapshot, record)
        except (LookupError, TypeError):
            continue
        if test(frame):
            return snapshot, frame
    raise LookupError(record)


def without_taken_at(snapshot: dict[str, Any]) -> dict[str, Any]:
    # Both say who wrote the snapshot and when: a restored session's own
    # snapshot says this stageflow, now (stageflow_version is for people only).
    return {k: v for k, v in snapshot.items() if k not in ("taken_at", "stageflow_version")}


# ------------------------------------------------------------------------ stability


async def test_the_document_suspends_inside_branches_map_items_and_subpipelines() -> None:
    taken = await snapshots()
    records = {r for s in taken[:-1] for r in ("parallel", "map", "subpipeline") if _has(s, r)}
    assert records == {"parallel", "map", "subpipeline"}
    assert taken[-1]["status"] == "completed"


def _has(snapshot: dict[str, Any], record: str) -> bool:
    try:
        at(snapshot, record)
    except LookupError:
        return False
    return True


async def test_snapshot_restore_snapshot_is_stable() -> None:
    for snapshot in await snapshots():
        again = restore(copy.deepcopy(snapshot)).to_dict()
        assert without_taken_at(again) == without_taken_at(snapshot), snapshot["status"]


async def test_a_completed_session_keeps_its_position_through_a_restore() -> None:
    final = (await snapshots())[-1]
    assert final["position"]["node"] == "end"
    assert restore(final).to_dict()["position"]["node"] == "end"


# --------------------------------------------------------------- one field at a time


async def test_an_impossible_date_names_the_field() -> None:
    snapshot = (await snapshots())[0]
    snapshot["taken_at"] = "2025-02-30T12:00:00+00:00"
    error = refused(snapshot)
    assert error.problems[0].location == "$.taken_at"
    assert "not a real date" in error.problems[0].message


async def test_an_impossible_event_date_names_the_event() -> None:
    snapshot = (await snapshots())[0]
    snapshot["history"][2]["timestamp"] = "2025-13-01T00:00:00+00:00"
    refused(snapshot)  # the schema's pattern already refuses month 13
    snapshot["history"][2]["timestamp"] = "2025-04-31T00:00:00+00:00"
    assert refused(snapshot).problems[0].location == "$.history[2].timestamp"


async def test_history_seq_not_one_to_n_names_the_event() -> None:
    snapshot = (await snapshots())[0]
    snapshot["history"][1]["seq"] = 7
    assert [p.location for p in refused(snapshot).problems] == ["$.history[1].seq"]


async def test_a_map_position_past_the_list_names_the_field() -> None:
    snapshot, frame = await snapshot_with("map", lambda f: bool(f["map"]["running"]))
    frame["map"]["next"] = 50
    assert refused(snapshot).problems[0].location.endswith(".map.next")
    snapshot, frame = await snapshot_with("map", lambda f: bool(f["map"]["running"]))
    frame["map"]["running"][0]["index"] = 9
    assert refused(snapshot).problems[0].location.endswith(".map.running[0].index")


def _run_one_not_started(state: dict[str, Any]) -> None:
    state["running"][-1]["index"] = state["next"]


def _fail_a_running_one(state: dict[str, Any]) -> None:
    error = {"type": "ValueError", "message": "no", "causes": [], "classes": ["ValueError"]}
    state["failures"].append({"index": state["running"][0]["index"], "error": error})
    state["next"] += 1  # (the counts add up)


@pytest.mark.parametrize(
    ("edit", "location", "says"),
    [
        # Each was restored: an item ran twice, counted as done though it ran
        # on, never ran, lost what it had collected, or counted as failed and
        # ran on.
        (_run_one_not_started, ".map.running[1].index", "is running but is not started"),
        (lambda state: state.update(done=1), ".map", "make 3, not the 2 started"),
        (lambda state: state["running"].pop(), ".map", "make 1, not the 2 started"),
        (lambda state: state["collected"].clear(), ".map.collected", "collects 'got'"),
        (_fail_a_running_one, ".map.running[0].index", "is listed as failed too"),
    ],
)
async def test_map_items_no_run_could_list_are_refused_at_the_field(
    edit: Callable[[dict[str, Any]], None], location: str, says: str
) -> None:
    snapshot, frame = await snapshot_with(
        "map", lambda f: len(f["map"]["running"]) == 2 and f["map"]["next"] == 2
    )
    edit(frame["map"])
    problems = [(p.location, p.message) for p in refused(snapshot).problems]
    assert any(at == f"$.position{location}" and says in text for at, text in problems), problems


async def test_a_winner_an_all_node_cannot_have_names_the_field() -> None:
    snapshot, frame = await snapshot_with("parallel", lambda f: f["node"] == "fan")
    frame["parallel"]["winner"] = 0
    error = refused(snapshot)
    assert error.problems[0].location == "$.position.parallel.winner"
    assert "'any'" in error.problems[0].message


async def test_a_winner_past_the_branches_names_the_field() -> None:
    snapshot, frame = await snapshot_with("parallel", lambda f: f["node"] == "race")
    frame["parallel"]["winner"] = 5
    assert refused(snapshot).problems[0].location == "$.position.parallel.winner"


async def test_a_branch_position_outside_its_branch_names_the_field() -> None:
    snapshot, frame = await snapshot_with("parallel", lambda f: f["node"] == "race")
    running = next(b for b in frame["parallel"]["branches"] if b["state"] == "running")
    running["position"]["node"] = "page"  # a map body node, not in this branch
    running["position"].pop("stage", None)
    error = refused(snapshot)
    assert error.problems[0].location.endswith(".position.node")


async def test_an_attempt_past_the_retry_policy_names_the_field() -> None:
    snapshot, frame = await snapshot_with("stage")
    frame["stage"]["attempt"] = 10**12
    assert refused(snapshot).problems[0].location.endswith(".stage.attempt")


async def test_steps_past_the_limit_name_the_field() -> None:
    snapshot = (await snapshots())[0]
    snapshot["steps"] = 10**15
    assert refused(snapshot).problems[0].location == "$.steps"


async def test_a_huge_integer_in_a_context_is_refused() -> None:
    snapshot = (await snapshots())[0]
    snapshot["position"]["context"]["n"] = 10**MAX_INT_DIGITS
    error = refused(snapshot)
    assert error.problems[0].location == "$.position.context.n"


async def stopped_by_max_steps() -> dict[str, Any]:
    """A session that ``max_steps=1`` stopped before its second node, as JSON."""
    registry = fake_registry()
    nodes = [
        {"id": "a", "type": "stage", "stage": "Set", "next": "b"},
        {"id": "b", "type": "stage", "stage": "Set", "next": "end"},
        {"id": "end", "type": "terminal"},
    ]
    pipeline = stageflow.Pipeline.from_dict(
        {"api_version": "1.0", "entry": "a", "nodes": nodes}, registry=registry
    )
    session = stageflow.Session(pipeline, registry=registry, limits=stageflow.Limits(max_steps=1))
    await session.run()
    snapshot: dict[str, Any] = json.loads(json.dumps(session.to_dict()))
    assert snapshot["stopped_by_limit"] == "max_steps"
    return snapshot


RAISED = stageflow.Limits(max_steps=100)


async def test_a_stopped_session_restored_with_the_limit_raised_goes_on() -> None:
    session = stageflow.Session.from_dict(
        await stopped_by_max_steps(), registry=fake_registry(), limits=RAISED
    )
    assert (await session.run()).status is stageflow.SessionStatus.COMPLETED


async def test_a_stopped_session_without_a_position_is_refused() -> None:
    """It was restored waiting at nowhere: run() raised an AssertionError."""
    snapshot = await stopped_by_max_steps()
    snapshot["position"] = None
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(snapshot, registry=fake_registry(), limits=RAISED)
    # (Its steps are past the limit too, with no node in flight to count.)
    [problem] = [p for p in caught.value.problems if p.location == "$.position"]
    assert "stopped by limits.max_steps" in problem.message


async def test_the_position_of_a_stopped_session_is_checked() -> None:
    """It is run once the limit is raised, so it is checked as a waiting session's."""
    snapshot = await stopped_by_max_steps()
    snapshot["position"]["stage"]["attempt"] = 7
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(snapshot, registry=fake_registry(), limits=RAISED)
    assert caught.value.problems[0].location == "$.position.stage.attempt"


@pytest.mark.parametrize("status", ["completed", "cancelled"])
async def test_only_a_failed_session_is_stopped_by_a_limit(status: str) -> None:
    snapshot = await stopped_by_max_steps()
    snapshot["status"] = status
    with pytest.raises(stageflow.SnapshotError) as caught:
        stageflow.Session.from_dict(snapshot, registry=fake_registry(), limits=RAISED)
    assert caught.value.problems[0].location == "$.stopped_by_limit"


async def test_a_history_of_many_bad_events_is_explained_by_its_first_errors() -> None:
    """A million bad events took a minute and 3.6 GB: every one became a schema error."""
    snapshot = (await snapshots())[0]
    snapshot["history"] = [0] * (5 * MAX_DOCUMENT_ERRORS)
    errors = list(_snapshot_validator().iter_errors(snapshot))
    assert len(errors) == MAX_DOCUMENT_ERRORS
    assert refused(snapshot).problems[0].location.startswith("$.history[")


async def test_frames_nested_three_hundred_deep_are_refused() -> None:
    snapshot, frame = await snapshot_with("map", lambda f: bool(f["map"]["running"]))
    inner = frame["map"]["running"][0]["position"]
    outer = {k: v for k, v in frame.items() if k != "context"}
    for _ in range(300):
        level = copy.deepcopy(outer)
        level["writes"] = []
        level["map"]["running"] = [{"index": 0, "position": inner}]
        inner = level
    frame["map"]["running"] = [{"index": 0, "position": inner}]
    error = refused(snapshot)
    assert f"more than {MAX_NESTING} frames" in error.problems[0].message


def test_any_number_of_random_draws_restores_at_once() -> None:
    """A restore drew the numbers again (10**15 here); a subprocess bounds it.

    It was then bounded by refusing more than a million draws, which a
    session retrying for months may well count (see test_long_lived.py).
    """
    code = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, "tests/support")
        import stageflow
        from fakes import fake_registry
        registry = fake_registry()
        pipeline = stageflow.Pipeline.from_dict(
            {"api_version": "1.0", "entry": "a", "nodes": [
                {"id": "a", "type": "stage", "stage": "WaitStage",
                  "config": {"input": "x"}, "next": "end"},
                {"id": "end", "type": "terminal"}]}, registry=registry)
        session = stageflow.Session(pipeline, registry=registry, seed=1)
        snapshot = session.to_dict()
        snapshot["rng_draws"] = 10**15
        restored = stageflow.Session.from_dict(snapshot, registry=registry)
        print(restored.to_dict()["rng_draws"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == str(10**15)


# ----------------------------------------------------------------------------- fuzzer

REPLACEMENTS: list[Any] = [
    None,
    0,
    -1,
    1,
    2,
    7,
    10**9,
    10**18,
    1.5,
    "",
    "x",
    "end",
    "page",
    "fan",
    "2025-02-30T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    [],
    {},
    [["x", 1]],
    {"path": "", "node": "end", "context": {}},
]


def locations(value: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [where]
    if isinstance(value, dict):
        for key, sub in value.items():
            out.extend(locations(sub, (*where, key)))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out.extend(locations(sub, (*where, i)))
    return out


def replace(snapshot: dict[str, Any], where: tuple[Any, ...], value: Any) -> None:
    target: Any = snapshot
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value


async def restore_and_run(snapshot: dict[str, Any]) -> stageflow.SessionResult | None:
    """Restore an edited snapshot and run it on; ``None`` if it is refused or already finished.

    An accepted snapshot comes back unchanged from ``to_dict()``, and its run
    ends in bounded time with a typed error or none, leaving a JSON snapshot.
    """
    try:
        session = restore(snapshot)
    except stageflow.SnapshotError:
        return None
    # Accepted: it is kept as it is (a restore that changed it would run differently).
    assert without_taken_at(json.loads(json.dumps(session.to_dict()))) == without_taken_at(snapshot)
    for input_type, payload in INPUTS:
        with contextlib.suppress(stageflow.InputRejectedError, stageflow.SessionStateError):
            session.send_input(input_type, payload)
    if session.status is not stageflow.SessionStatus.WAITING:
        return None  # a finished session does not run again
    limit = 86_400 if sniffio.current_async_library() == "trio" else 10
    with anyio.fail_after(limit):
        result = await session.run(suspend=True)
    assert result.error is None or isinstance(result.error, stageflow.StageflowError)
    json.dumps(session.to_dict())
    return result


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pick=st.integers(0, 10**6),
    spot=st.integers(0, 10**6),
    replacement=st.sampled_from(REPLACEMENTS) | st.integers() | st.text(max_size=6),
    inside=st.sampled_from(["anywhere", "position", "position", "position", "history"]),
)
async def test_fuzz_mutated_snapshots_restore_and_run_or_are_refused(
    pick: int, spot: int, replacement: Any, inside: str
) -> None:
    """One value replaced anywhere (mostly in positions): a SnapshotError, or kept and run.

    A snapshot that is accepted comes back unchanged from ``to_dict()`` and runs
    to a typed outcome in bounded time; anything else must be refused.
    """
    taken = await snapshots()
    snapshot = taken[pick % len(taken)]
    spots = [w for w in locations(snapshot) if w and (inside == "anywhere" or w[0] == inside)]
    if not spots:
        return
    replace(snapshot, spots[spot % len(spots)], copy.deepcopy(replacement))
    result = await restore_and_run(snapshot)
    if result is not None:
        assert result.status in set(stageflow.SessionStatus)


NODE_IDS = sorted(
    {n["id"] for n in DOCUMENT["nodes"]}
    | {n["id"] for n in DOCUMENT["subpipelines"]["inner"]["nodes"]}
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pick=st.integers(0, 10**6),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(["node", "next", "child", "state", "index", "attempt", "winner"]),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=3,
    ),
)
async def test_fuzz_positions_moved_to_other_nodes_restore_and_run_or_are_refused(
    pick: int, edits: list[tuple[int, str, int]]
) -> None:
    """Frames pointed at other real nodes, branches given other states, counters moved.

    Each edit keeps the snapshot valid per the schema, so only the consistency
    checks stand between it and the engine.
    """
    taken = await snapshots()
    snapshot = taken[pick % len(taken)]
    for spot, key, choice in edits:
        spots = [w for w in locations(snapshot) if w and w[0] == "position" and w[-1] == key]
        if not spots:
            continue
        where = spots[spot % len(spots)]
        if key in ("node", "next", "child"):
            value: Any = NODE_IDS[choice % len(NODE_IDS)]
        elif key == "state":
            value = ["running", "finished", "failed", "cancelled"][choice % 4]
        else:
            value = choice % 6
        replace(snapshot, where, value)
    await restore_and_run(snapshot)


# ------------------------------------------------------------ integers as floats


def schema_integer_names() -> set[str]:
    """The names of the fields the snapshot schema types ``integer``."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                kinds = sub.get("type")
                if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
                    names.add(key)
            for sub in node.values():
                visit(sub)
        elif isinstance(node, list):
            for sub in node:
                visit(sub)

    visit(thaw(load_schema("session-snapshot")))
    return names


def test_every_integer_field_of_the_schema_is_checked_for_floats() -> None:
    assert schema_integer_names() == INTEGER_FIELDS


# Where a field of one of those names is data, not the snapshot's own field.
_DATA: Final = ("context", "payload", "writes", "backlog", "pipeline", "collected", "result")


def integer_fields(value: Any, where: str = "$") -> list[tuple[str, Any, str]]:
    """``(location, container, key)`` of every snapshot field named in INTEGER_FIELDS."""
    found: list[tuple[str, Any, str]] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in _DATA:
                continue
            if key in INTEGER_FIELDS and type(sub) is int:
                found.append((f"{where}.{key}", value, key))
            found.extend(integer_fields(sub, f"{where}.{key}"))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found.extend(integer_fields(sub, f"{where}[{i}]"))
    return found


async def test_an_integer_field_written_as_a_float_names_the_field() -> None:
    # JSON Schema counts 2.0 as an integer: such a snapshot restored, then
    # raised TypeError mid-run (steps, rng_draws, a map's next or index) or
    # numbered its events 1.0, 2.0, ... (history_seq).
    checked: set[str] = set()
    for snapshot in await snapshots():
        for location, _, key in integer_fields(snapshot):
            broken = copy.deepcopy(snapshot)
            container = next(c for loc, c, _ in integer_fields(broken) if loc == location)
            container[key] = float(container[key])
            error = refused(broken)
            assert [p.location for p in error.problems] == [location]
            assert error.problems[0].message.endswith(f"write the integer {int(container[key])}")
            checked.add(key)
    # The document's run has every kind but a winner, the trace's fields and
    # the rejection counts (it rejects no input).
    unchecked = {"winner", "start", "seen", *_LIMITS, "seed", "recorded", "unrecorded"}
    assert checked >= INTEGER_FIELDS - unchecked


_LIMITS: Final = {n for n in INTEGER_FIELDS if n.startswith("max_")}


# ------------------------------------------------- settings a snapshot must keep


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", float("inf")),
        ("timeout", float("nan")),
        ("timeout", 0),
        ("timeout", 2**1024),  # past the largest float: the run raised OverflowError
        ("cleanup_timeout", float("inf")),
        ("cleanup_timeout", -1),
        ("max_run_seconds", float("inf")),
        ("max_steps", 0),
        ("max_steps", 2.5),
        ("max_history", True),
        ("max_input_backlog", -1),
        ("max_input_bytes", 0),
        ("max_run_steps", "10"),
        ("max_run_events", 0),
        ("max_depth", 3.0),
        # More digits than json.dumps writes: a count was taken and the session
        # ran, then its snapshot raised ValueError; a duration's message did.
        *(
            pytest.param(field, 10**MAX_INT_DIGITS, id=f"{field}-huge-int")
            for field in ("max_steps", "max_input_backlog", "max_depth", "timeout")
        ),
    ],
)
def test_limits_a_snapshot_could_not_keep_are_refused_when_made(field: str, value: Any) -> None:
    # Each was taken, ran, and made a snapshot that Session.from_dict refused
    # (or that json.dumps could not write).
    with pytest.raises(stageflow.DefinitionError, match=f"Limits\\({field}="):
        stageflow.Limits(**{field: value})


@pytest.mark.parametrize(
    "seed", ["abc", 1.5, b"x", True, pytest.param(10**MAX_INT_DIGITS, id="huge-int")]
)
def test_a_seed_a_snapshot_could_not_keep_is_refused(seed: Any) -> None:
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=fake_registry())
    with pytest.raises(TypeError, match="a seed is a whole number"):
        stageflow.Session(pipeline, registry=fake_registry(), seed=seed)


async def test_limits_at_their_bounds_snapshot_and_restore() -> None:
    limits = stageflow.Limits(
        max_input_bytes=10**MAX_INT_DIGITS - 1,
        timeout=2**1023,
        cleanup_timeout=0,
        max_input_backlog=0,
        max_steps=None,
        max_run_seconds=0.5,
    )
    registry = fake_registry()
    pipeline = stageflow.Pipeline.from_dict(DOCUMENT, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, payload=PAYLOAD, limits=limits)
    await session.run(suspend=True)
    restored = restore(json.loads(json.dumps(session.to_dict())))
    assert restored.to_dict()["limits"] == session.to_dict()["limits"]


def deeper_than_a_value_may_be() -> Any:
    value: Any = 1
    for _ in range(MAX_DEPTH + 44):
        value = [value]
    return value


@pytest.mark.parametrize("region", ["context", "backlog", "history"])
async def test_a_value_nested_past_the_guard_is_a_snapshot_error_at_the_value(
    region: str,
) -> None:
    # The snapshot was checked as a whole, with room for its frames: a context
    # 300 deep reached Session() and failed as a bad *payload*; in the backlog
    # or an event it was taken, though send_input refuses it.
    snapshot = (await snapshots())[0]
    deep = deeper_than_a_value_may_be()
    if region == "context":
        snapshot["position"]["context"]["deep"] = deep
        where = "$.position.context.deep"
    elif region == "backlog":
        snapshot["backlog"]["a"] = [deep]
        where = "$.backlog.a[0]"
    else:
        snapshot["history"][0]["payload"]["deep"] = deep
        where = "$.history[0].payload.deep"
    problem = refused(snapshot).problems[0]
    assert problem.location.startswith(where + "[0]")
    assert f"nests more than {MAX_DEPTH} levels deep" in problem.message


@pytest.mark.parametrize(
    ("region", "where"),
    [
        ("context", "$.position.context['order.notes']"),
        ("backlog", "$.backlog['answer.7'][0]"),
        ("history", r"$.history[0].payload['it\'s']"),
    ],
)
async def test_a_key_with_a_dot_is_one_step_of_the_location(region: str, where: str) -> None:
    # The guard wrote every key as .key: "$.backlog.answer.7[0]" named a
    # backlog of type "answer" holding a field "7", and the schema's own
    # problems wrote the same key as ['answer.7'] (found by the mutation fuzzer).
    snapshot = (await snapshots())[0]
    deep = deeper_than_a_value_may_be()
    if region == "context":
        snapshot["position"]["context"]["order.notes"] = deep
    elif region == "backlog":
        snapshot["backlog"]["answer.7"] = [deep]
    else:
        snapshot["history"][0]["payload"]["it's"] = deep
    problem = refused(snapshot).problems[0]
    assert problem.location.startswith(where + "[0]"), problem
