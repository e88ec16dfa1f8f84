"""The session snapshot JSON Schema (schemas/session-snapshot.schema.json) on its own.

The samples are written by hand from the format of issue 7; the pipelines they
embed are real (they load, and their digests are the loader's), and the
history events and error descriptions of the last tests come from a real run.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fakes import doc, fake_registry, stage, terminal
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow._errors import describe_exception
from stageflow._pipeline import load_schema

ROOT = Path(__file__).parents[2]
SCHEMA_FILE = "session-snapshot.schema.json"

Doc = dict[str, Any]
Path_ = tuple[str | int, ...]


@pytest.fixture(scope="module")
def schema() -> Doc:
    return copy.deepcopy(dict(load_schema("session-snapshot")))


@pytest.fixture(scope="module")
def validator(schema: Doc) -> jsonschema.Draft202012Validator:
    # No format checker, as the engine's validators: the schema must hold without one.
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, snapshot: Any) -> list[tuple[str, str]]:
    return sorted(
        (error.json_path, str(error.validator)) for error in validator.iter_errors(snapshot)
    )


# --------------------------------------------------------------------- the schema itself


def test_schema_is_a_valid_draft_2020_12_schema(schema: Doc) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_id_carries_the_format_version(schema: Doc) -> None:
    assert schema["$id"] == (
        "https://stageflow.dev/schemas/session-snapshot/6/session-snapshot.schema.json"
    )
    assert schema["properties"]["version"]["enum"] == [1, 2, 3, 4, 5, 6]  # 1 to 5 are still read
    assert schema["properties"]["format"]["const"] == "stageflow.session-snapshot"


def test_load_schema_reads_the_file_published_under_schemas() -> None:
    published = json.loads((ROOT / "schemas" / SCHEMA_FILE).read_text(encoding="utf-8"))
    assert load_schema("session-snapshot") == published


def test_wheel_include_rules_ship_the_schema() -> None:
    """``load_schema`` reads it from the package, so the wheel must carry it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hatch = config["tool"]["hatch"]["build"]
    wheel = hatch["targets"]["wheel"]
    shipped = Path("stageflow", "_schemas", SCHEMA_FILE)
    assert (ROOT / shipped).is_file()
    assert any(shipped.is_relative_to(entry) for entry in wheel["only-include"])
    excluded = [*hatch.get("exclude", []), *wheel.get("exclude", [])]
    assert not any(shipped.match(pattern) for pattern in excluded)


def _subschemas(schema: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, subschema) for every schema object nested in ``schema``."""
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key in ("$defs", "properties", "dependentSchemas"):
        for name, sub in schema.get(key, {}).items():
            yield from _subschemas(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties", "if", "then", "else", "not"):
        yield from _subschemas(schema.get(key), f"{where}/{key}")
    for key in ("prefixItems", "allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from _subschemas(sub, f"{where}/{key}/{i}")


def test_every_definition_has_a_title_and_a_description(schema: Doc) -> None:
    missing = [
        f"#/$defs/{name}"
        for name, sub in schema["$defs"].items()
        if not (sub.get("title", "").strip() and sub.get("description", "").strip())
    ]
    assert missing == []


def test_every_property_has_a_description(schema: Doc) -> None:
    missing = [
        f"{where}/properties/{name}"
        for where, sub in _subschemas(schema, "#")
        # Conditions (if/then/else) restate fields of the object they constrain.
        if where.rpartition("/")[2] not in {"if", "then", "else"}
        for name, prop in sub.get("properties", {}).items()
        # `false` properties forbid a key; they are not fields to describe.
        if prop is not False and not prop.get("description", "").strip()
    ]
    assert missing == []


# Open on purpose: each is closed by the definitions that build on it.
OPEN_BASES = {"#/$defs/error_fields", "#/$defs/branch"}


def test_every_object_shape_is_closed(schema: Doc) -> None:
    open_shapes = [
        where
        for where, sub in _subschemas(schema, "#")
        if where.rpartition("/")[2] != "if"  # a condition, not a shape
        and "object" in sub.get("type", ())
        and "properties" in sub
        and sub.get("additionalProperties") is not False
        and sub.get("unevaluatedProperties") is not False
        and where not in OPEN_BASES
    ]
    assert open_shapes == []


# ------------------------------------------------------------------------- the samples

T0 = "2025-03-01T12:00:00+00:00"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

LIMITS = {
    "max_steps": 10000,
    "max_history": 100000,
    "max_depth": 32,
    "timeout": None,
    "max_input_backlog": 100,
    "max_input_bytes": 1048576,
    "cleanup_timeout": 5.0,
}


def _registry() -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Confirm")
    async def confirm(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        comment = await ctx.wait_input("comment")
        approval = await ctx.wait_input("approval")
        return {"comment": comment, "approved": approval}

    return registry


def minimal_document() -> Doc:
    return doc([terminal("done")])


def rich_document() -> Doc:
    """A map over pages whose body is a subpipeline that runs checks in parallel."""
    review = doc(
        [
            {
                "id": "checks",
                "type": "parallel",
                "children": ["approve", "cooldown", "fetch", "lint", "spell"],
                "cancel_on_error": False,
                "next": "verdict",
            },
            stage("approve", "Confirm", outputs={"approved": "approved"}),
            {
                "id": "cooldown",
                "type": "stage",
                "stage": "SleepStage",
                "config": {"seconds": 30},
            },
            {
                "id": "fetch",
                "type": "stage",
                "stage": "Fail",
                "retry": {"attempts": 3, "delay": 2},
            },
            stage(
                "lint", "Set", config={"values": {"lint": {"ok": True}}}, outputs={"lint": "lint"}
            ),
            stage("spell", "Fail", config={"message": "no dictionary"}),
            terminal("verdict", "approved", result={"reviewed": True}),
        ]
    )
    del review["api_version"]
    return doc(
        [
            {
                "id": "pages",
                "type": "map",
                "items": "pages",
                "body": "summarise",
                "collect": {"approved": "approvals"},
                "max_failures": 1,
                "next": "end",
            },
            {
                "id": "summarise",
                "type": "subpipeline",
                "pipeline": "review",
                "inputs": {"page": "item"},
                "artifacts": {"approved": "approved"},
            },
            terminal("end", "approvals"),
        ],
        metadata={"name": "review_pages"},
        subpipelines={"review": review},
    )


def _pipeline(document: Doc) -> Doc:
    loaded = stageflow.Pipeline.from_dict(document, registry=_registry())
    return {"name": loaded.name, "digest": loaded.digest, "document": document}


def event(seq: int, type: str, node_id: str | None = None, path: str = "") -> Doc:
    return {
        "seq": seq,
        "type": type,
        "timestamp": f"2025-03-01T12:00:0{seq}.250000+00:00",
        "session_id": "s-1",
        "node_id": node_id,
        "path": path,
        "payload": {},
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "parent_span_id": None,
    }


def minimal_snapshot() -> Doc:
    """A session that has not started."""
    return {
        "format": "stageflow.session-snapshot",
        "version": 1,
        "stageflow_version": stageflow.__version__,
        "session_id": "s-1",
        "status": "pending",
        "taken_at": T0,
        "pipeline": _pipeline(minimal_document()),
        "limits": dict(LIMITS),
        "validate_events": "warn",
        "seed": None,
        "rng_draws": 0,
        "steps": 0,
        "deadline": None,
        "trace": None,
        "current_node": None,
        "position": None,
        "backlog": {},
        "outcome": None,
        "history": [],
    }


def error(type: str, message: str, *classes: str, **attributes: Any) -> Doc:
    return {
        "type": type,
        "message": message,
        **attributes,
        "causes": [],
        "classes": [type, *classes],
    }


SPELL_ERROR = {
    "type": "StageError",
    "message": "stage 'Fail' at node 'spell' failed on attempt 1 of 1: no dictionary",
    "node_id": "spell",
    "stage": "Fail",
    "attempt": 1,
    "causes": [{"type": "ValueError", "message": "no dictionary"}],
    "classes": ["StageError", "NodeError", "StageflowError", "Exception", "ValueError"],
}

# Where the sample's nested positions are.
ITEM: Path_ = ("position", "map", "running", 0, "position")
SUB: Path_ = (*ITEM, "subpipeline", "position")
BRANCHES: Path_ = (*SUB, "parallel", "branches")
APPROVE: Path_ = (*BRANCHES, 0, "position")
APPROVE_CALLS: Path_ = (*APPROVE, "stage", "calls")


def rich_snapshot() -> Doc:
    """Waiting: item 1 of a map runs a subpipeline whose parallel branches wait."""
    branch_path = "pages/1/summarise/checks"
    checks = {
        "branches": [
            {
                "child": "approve",
                "state": "running",
                "position": {
                    "path": f"{branch_path}/approve",
                    "node": "approve",
                    "writes": [],
                    "stage": {
                        "attempt": 1,
                        "calls": [
                            {"wait": "comment", "payload": {"text": "typo on line 3"}},
                            {"wait": "approval", "deadline": "2025-03-02T12:00:00+00:00"},
                        ],
                        "retry_at": None,
                    },
                },
            },
            {
                "child": "cooldown",
                "state": "running",
                "position": {
                    "path": f"{branch_path}/cooldown",
                    "node": "cooldown",
                    "writes": [],
                    "stage": {
                        "attempt": 1,
                        "calls": [{"sleep": "2025-03-01T12:00:40.5+00:00", "seconds": 30}],
                        "retry_at": None,
                    },
                },
            },
            {
                "child": "fetch",
                "state": "running",
                "position": {
                    "path": f"{branch_path}/fetch",
                    "node": "fetch",
                    "writes": [],
                    "stage": {"attempt": 2, "calls": [], "retry_at": "2025-03-01T12:00:12Z"},
                },
            },
            {"child": "lint", "state": "finished", "writes": [["lint.ok", True]]},
            {"child": "spell", "state": "failed", "error": SPELL_ERROR},
        ],
        "winner": None,
    }
    page = {"title": "Two", "text": "..."}
    item = {
        "path": "pages/1",
        "node": "summarise",
        "writes": [["item", page], ["index", 1]],
        "subpipeline": {
            "position": {
                "path": "pages/1/summarise",
                "node": "checks",
                "context": {"page": page},
                "parallel": checks,
            }
        },
    }
    snapshot = minimal_snapshot()
    snapshot.update(
        {
            "status": "waiting",
            "taken_at": "2025-03-01T12:00:10.500000+00:00",
            "pipeline": _pipeline(rich_document()),
            "limits": {**LIMITS, "timeout": 86400},
            "validate_events": "strict",
            "seed": 7,
            "rng_draws": 1,
            "steps": 9,
            "deadline": "2025-03-02T12:00:00+00:00",
            "trace": {"trace_id": TRACE_ID, "span_id": SPAN_ID},
            "current_node": "pages",
            "position": {
                "path": "",
                "node": "pages",
                "context": {"pages": [{"title": "One"}, page, {"title": "Three"}]},
                "map": {
                    "next": 2,
                    "done": 1,
                    "collected": {"approvals": [None]},
                    "failures": [
                        {
                            "index": 0,
                            "error": error(
                                "NodeTimeoutError",
                                "node 'checks' timed out after 60 s",
                                "NodeError",
                                "StageflowError",
                                "TimeoutError",
                                node_id="checks",
                                timeout=60,
                            ),
                        }
                    ],
                    "running": [{"index": 1, "position": item}],
                },
            },
            "backlog": {"approval": [], "comment": [{"text": "later"}]},
            "history": [
                event(1, "session_started"),
                event(2, "node_started", "pages"),
                event(3, "item_started", "pages", "pages/1"),
                event(4, "waiting_for_input", "approve", f"{branch_path}/approve"),
            ],
        }
    )
    return copy.deepcopy(snapshot)  # no part shared with the module's constants


def _get(data: Any, path: Path_) -> Any:
    for key in path:
        data = data[key]
    return data


def _json_path(path: Path_) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def test_minimal_snapshot_is_valid(validator: jsonschema.Draft202012Validator) -> None:
    assert _errors(validator, minimal_snapshot()) == []


def test_rich_snapshot_is_valid(validator: jsonschema.Draft202012Validator) -> None:
    assert _errors(validator, rich_snapshot()) == []


def test_rich_snapshot_nests_a_waiting_branch_in_a_subpipeline_in_a_map_item() -> None:
    snapshot = rich_snapshot()
    assert _get(snapshot, ITEM)["path"] == "pages/1"
    assert _get(snapshot, SUB)["parallel"]["branches"][0]["state"] == "running"
    assert _get(snapshot, APPROVE_CALLS)[-1] == {
        "wait": "approval",
        "deadline": "2025-03-02T12:00:00+00:00",
    }


def _frames(frame: Doc) -> Iterator[tuple[Doc, str]]:
    """Yield every frame nested in ``frame`` with the subpipeline it is in ("" for the top)."""
    todo = [(frame, "")]
    while todo:
        current, pipeline = todo.pop()
        yield current, pipeline
        branches = current.get("parallel", {}).get("branches", [])
        todo += [(b["position"], pipeline) for b in branches if b["state"] == "running"]
        todo += [(r["position"], pipeline) for r in current.get("map", {}).get("running", [])]
        if "subpipeline" in current:
            todo.append((current["subpipeline"]["position"], current["node"]))


def test_rich_snapshot_positions_name_nodes_of_its_pipeline() -> None:
    snapshot = rich_snapshot()
    document = snapshot["pipeline"]["document"]
    targets = {n["id"]: n.get("pipeline") for n in document["nodes"]}
    seen = []
    for frame, at in _frames(snapshot["position"]):
        graph = document["subpipelines"][targets[at]] if at else document
        assert frame["node"] in {n["id"] for n in graph["nodes"]}
        seen.append(frame["node"])
    assert sorted(seen) == ["approve", "checks", "cooldown", "fetch", "pages", "summarise"]


def _set(path: Path_, value: Any) -> Callable[[Doc], None]:
    def mutate(snapshot: Doc) -> None:
        _get(snapshot, path[:-1])[path[-1]] = value

    return mutate


def _delete(path: Path_) -> Callable[[Doc], None]:
    def mutate(snapshot: Doc) -> None:
        del _get(snapshot, path[:-1])[path[-1]]

    return mutate


def _all(*mutations: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def mutate(snapshot: Doc) -> None:
        for mutation in mutations:
            mutation(snapshot)

    return mutate


FINISHED = _all(
    _set(("status",), "completed"),
    _set(("position",), None),
    _set(("current_node",), None),
    _set(("outcome",), {"result": {"ok": True}, "artifacts": {"approvals": [None]}, "error": None}),
)

UNSEEN = [{"input_type": "approval", "payload": {"ok": True}}]
VERSION_4 = _all(
    _set(("version",), 4), _set(("history_seq",), 5), _set(("stopped_by_limit",), None)
)

LINK = {"trace_id": TRACE_ID, "span_id": SPAN_ID, "attributes": {"stageflow.link.kind": "x"}}
OPEN_SPAN = {
    "name": "run p",
    "trace_id": TRACE_ID,
    "span_id": "00f067aa0ba902b8",
    "parent_span_id": None,
    "start": 1,
    "attributes": {"stageflow.segment": 2},
}

# Changes to the rich snapshot that keep it valid.
GOOD_VARIANTS = {
    "version 5 with the links of an open span": _set(
        ("trace",),
        {"trace_id": TRACE_ID, "span_id": SPAN_ID, "open": [{**OPEN_SPAN, "links": [LINK]}]},
    ),
    "version 4 with inputs no stage saw": _all(VERSION_4, _set(("unseen_inputs",), UNSEEN)),
    "finished session with its outcome": FINISHED,
    "failed session with describe_exception output": _all(
        FINISHED,
        _set(("status",), "failed"),
        _set(
            ("outcome", "error"),
            {"type": "LimitExceededError", "message": "...", "limit": "max_steps", "causes": []},
        ),
    ),
    "cancelled branch": _set((*BRANCHES, 4), {"child": "spell", "state": "cancelled"}),
    "winner of an any-parallel": _set((*SUB, "parallel", "winner"), 3),
    "pending wait without timeout": _set((*APPROVE_CALLS, 1, "deadline"), None),
    "version 6: a pending wait's start and a parked input's wait": _all(
        _set((*APPROVE_CALLS, 1, "since"), "2025-03-01T12:00:00+00:00"),
        _set((*APPROVE_CALLS, 0, "parked"), True),
        _set((*APPROVE_CALLS, 0, "waited"), 3600.5),
    ),
    "null consumed payload": _set((*APPROVE_CALLS, 0, "payload"), None),
    "timestamp in Z without fraction": _set(("taken_at",), "2025-03-01T12:00:10Z"),
    "frame without a record": _delete((*APPROVE, "stage")),
    "leap second": _set(("taken_at",), "2016-12-31T23:59:60+00:00"),
    "exception group member without classes": _set(
        (*BRANCHES, 4, "error", "errors"),
        [{"type": "ValueError", "message": "x", "causes": []}],
    ),
}


@pytest.mark.parametrize("mutate", GOOD_VARIANTS.values(), ids=GOOD_VARIANTS.keys())
def test_valid_variant(
    validator: jsonschema.Draft202012Validator, mutate: Callable[[Doc], None]
) -> None:
    snapshot = rich_snapshot()
    mutate(snapshot)
    assert _errors(validator, snapshot) == []


NOT = "not"  # the keyword that forbids a second record in a frame

# mutation of the rich snapshot -> every (json_path, keyword) it must be reported at
BAD_SNAPSHOTS: dict[str, tuple[Callable[[Doc], None], list[tuple[Path_, str]]]] = {
    "wrong format": (_set(("format",), "stageflow.snapshot"), [(("format",), "const")]),
    "version as a string": (_set(("version",), "1"), [(("version",), "enum")]),
    "version as a boolean": (_set(("version",), True), [(("version",), "enum")]),
    "a pending wait's start that is no time": (
        _set((*APPROVE_CALLS, 1, "since"), "yesterday"),
        [((*APPROVE_CALLS, 1, "since"), "pattern")],
    ),
    "a parked input that waited less than no time": (
        _set((*APPROVE_CALLS, 0, "waited"), -1),
        [((*APPROVE_CALLS, 0, "waited"), "minimum")],
    ),
    "another version": (_set(("version",), 7), [(("version",), "enum")]),
    "missing version": (_delete(("version",)), [((), "required")]),
    "unknown top-level key": (_set(("context",), {}), [((), "additionalProperties")]),
    "inputs no stage saw in a version 1 snapshot": (
        _set(("unseen_inputs",), UNSEEN),
        [((), NOT)],
    ),
    "an empty list of inputs no stage saw": (
        _all(VERSION_4, _set(("unseen_inputs",), [])),
        [(("unseen_inputs",), "minItems")],
    ),
    "an input no stage saw without its type": (
        _all(VERSION_4, _set(("unseen_inputs",), [{"payload": 1}])),
        [(("unseen_inputs", 0), "required")],
    ),
    "an open span's link without its attributes": (
        _set(
            ("trace",),
            {
                "trace_id": TRACE_ID,
                "span_id": SPAN_ID,
                "open": [{**OPEN_SPAN, "links": [{"trace_id": TRACE_ID, "span_id": SPAN_ID}]}],
            },
        ),
        [(("trace", "open", 0, "links", 0), "required")],
    ),
    "unknown status": (_set(("status",), "paused"), [(("status",), "enum")]),
    "both context and writes at the root": (
        _set(("position", "writes"), []),
        [(("position",), "oneOf")],
    ),
    "both context and writes in a subpipeline frame": (
        _set((*SUB, "writes"), [["page", None]]),
        [(SUB, "oneOf")],
    ),
    "neither context nor writes": (
        _delete((*ITEM, "writes")),
        [(ITEM, "oneOf"), (ITEM, "required")],
    ),
    "root frame with writes instead of a context": (
        _all(_delete(("position", "context")), _set(("position", "writes"), [])),
        [(("position",), "required")],
    ),
    "branch frame with a context instead of writes": (
        _all(_delete((*APPROVE, "writes")), _set((*APPROVE, "context"), {})),
        [(APPROVE, "required")],
    ),
    "stage and parallel records in one frame": (
        _set((*SUB, "stage"), {"attempt": 1, "calls": [], "retry_at": None}),
        [((*SUB, "parallel"), NOT)],
    ),
    "map and subpipeline records in one frame": (
        _set(("position", "subpipeline"), {"position": _get(rich_snapshot(), SUB)}),
        [(("position", "subpipeline"), NOT)],
    ),
    "unknown key in a frame": (_set((*ITEM, "depth"), 2), [(ITEM, "additionalProperties")]),
    "frame at a branch path": (
        _set((*APPROVE, "node"), "checks/approve"),
        [((*APPROVE, "node"), "pattern")],
    ),
    "write that is not a pair": (
        _set((*ITEM, "writes", 1), ["index", 1, 2]),
        [((*ITEM, "writes", 1), "items")],
    ),
    "write to an empty path": (
        _set((*ITEM, "writes", 0), ["", 1]),
        [((*ITEM, "writes", 0, 0), "pattern")],
    ),
    "call without payload or deadline": (
        _set((*APPROVE_CALLS, 1), {"wait": "approval"}),
        [((*APPROVE_CALLS, 1), "required")],
    ),
    "call with payload and deadline": (
        _set((*APPROVE_CALLS, 0, "deadline"), None),
        [((*APPROVE_CALLS, 0), "additionalProperties")],
    ),
    "call that is a string": (
        _set((*APPROVE_CALLS, 0), "approval"),
        [((*APPROVE_CALLS, 0), "type")],
    ),
    "sleep without seconds": (
        _set((*APPROVE_CALLS, 1), {"sleep": T0}),
        [((*APPROVE_CALLS, 1), "required")],
    ),
    "sleep for negative seconds": (
        _set((*APPROVE_CALLS, 1), {"sleep": T0, "seconds": -1}),
        [((*APPROVE_CALLS, 1, "seconds"), "minimum")],
    ),
    "call to an empty input type": (
        _set((*APPROVE_CALLS, 0, "wait"), ""),
        [((*APPROVE_CALLS, 0, "wait"), "minLength")],
    ),
    "attempt 0": (
        _set((*APPROVE, "stage", "attempt"), 0),
        [((*APPROVE, "stage", "attempt"), "minimum")],
    ),
    "unknown branch state": (
        _set((*BRANCHES, 3, "state"), "done"),
        [((*BRANCHES, 3, "state"), "enum")],
    ),
    "running branch without position": (
        _delete((*BRANCHES, 0, "position")),
        [((*BRANCHES, 0), "required")],
    ),
    "finished branch with a position": (
        _set((*BRANCHES, 3, "position"), _get(rich_snapshot(), APPROVE)),
        [((*BRANCHES, 3), "additionalProperties")],
    ),
    "error without classes": (
        _delete((*BRANCHES, 4, "error", "classes")),
        [((*BRANCHES, 4, "error"), "required")],
    ),
    "unknown key in an error": (
        _set((*BRANCHES, 4, "error", "traceback"), "..."),
        [((*BRANCHES, 4, "error"), "unevaluatedProperties")],
    ),
    "unknown key in a cause": (
        _set((*BRANCHES, 4, "error", "causes", 0, "args"), []),
        [((*BRANCHES, 4, "error", "causes", 0), "additionalProperties")],
    ),
    "map item without position": (
        _delete((*ITEM[:-1], "position")),
        [(ITEM[:-1], "required")],
    ),
    "negative map index": (
        _set(("position", "map", "failures", 0, "index"), -1),
        [(("position", "map", "failures", 0, "index"), "minimum")],
    ),
    "collected values not a list": (
        _set(("position", "map", "collected", "approvals"), None),
        [(("position", "map", "collected", "approvals"), "type")],
    ),
    "taken_at with a space": (
        _set(("taken_at",), "2025-03-01 12:00:00+00:00"),
        [(("taken_at",), "pattern")],
    ),
    "naive taken_at": (_set(("taken_at",), "2025-03-01T12:00:00"), [(("taken_at",), "pattern")]),
    "taken_at not in UTC": (
        _set(("taken_at",), "2025-03-01T14:00:00+02:00"),
        [(("taken_at",), "pattern")],
    ),
    "month 13 in a deadline": (
        _set(("deadline",), "2025-13-01T12:00:00+00:00"),
        [(("deadline",), "pattern")],
    ),
    "retry_at not a date": (
        _set((*APPROVE, "stage", "retry_at"), "tomorrow"),
        [((*APPROVE, "stage", "retry_at"), "pattern")],
    ),
    "pending wait deadline as a number": (
        _set((*APPROVE_CALLS, 1, "deadline"), 1740830400),
        [((*APPROVE_CALLS, 1, "deadline"), "type")],
    ),
    "event timestamp without offset": (
        _set(("history", 1, "timestamp"), "2025-03-01T12:00:02"),
        [(("history", 1, "timestamp"), "pattern")],
    ),
    "event without trace_id": (_delete(("history", 0, "trace_id")), [(("history", 0), "required")]),
    "event seq 0": (_set(("history", 0, "seq"), 0), [(("history", 0, "seq"), "minimum")]),
    "uppercase digest": (
        _set(("pipeline", "digest"), "A" * 64),
        [(("pipeline", "digest"), "pattern")],
    ),
    "short trace id": (
        _set(("trace", "trace_id"), "4bf92f35"),
        [(("trace", "trace_id"), "pattern")],
    ),
    "limits without timeout": (_delete(("limits", "timeout")), [(("limits",), "required")]),
    "negative steps": (_set(("steps",), -1), [(("steps",), "minimum")]),
    "backlog entry not a list": (
        _set(("backlog", "comment"), {"text": "later"}),
        [(("backlog", "comment"), "type")],
    ),
    "finished session without outcome": (
        _all(FINISHED, _set(("outcome",), None)),
        [(("outcome",), "type")],
    ),
    "waiting session with an outcome": (
        _set(("outcome",), {"result": None, "artifacts": {}, "error": None}),
        [(("outcome",), "type")],
    ),
    "unknown key in an outcome": (
        _all(FINISHED, _set(("outcome", "status"), "completed")),
        [(("outcome",), "additionalProperties")],
    ),
}


@pytest.mark.parametrize(("mutate", "expected"), BAD_SNAPSHOTS.values(), ids=BAD_SNAPSHOTS.keys())
def test_invalid_snapshot_fails_at_the_expected_path(
    validator: jsonschema.Draft202012Validator,
    mutate: Callable[[Doc], None],
    expected: list[tuple[Path_, str]],
) -> None:
    snapshot = rich_snapshot()
    mutate(snapshot)
    assert _errors(validator, snapshot) == sorted(
        (_json_path(path), keyword) for path, keyword in expected
    )


# ------------------------------------------------------------- parts from real objects


@pytest.mark.anyio
async def test_a_real_runs_history_and_outcome_fit_the_schema(
    validator: jsonschema.Draft202012Validator,
) -> None:
    registry = fake_registry()
    document = doc(
        [
            {
                "id": "fan",
                "type": "parallel",
                "children": ["ok", "bad"],
                "next": "end",
            },
            stage("ok", "Set", config={"values": {"a": 1}}, outputs={"a": "a"}),
            stage("bad", "Fail", config={"message": "no"}),
            terminal("end"),
        ]
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, registry=registry, tracer_provider=provider)
    try:
        result = await session.run()
    finally:
        provider.shutdown()
    assert result.status is stageflow.SessionStatus.FAILED
    as_dict = result.to_dict()
    snapshot = minimal_snapshot()
    snapshot.update(
        {
            "session_id": session.session_id,
            "status": "failed",
            "pipeline": {"name": pipeline.name, "digest": pipeline.digest, "document": document},
            "history": as_dict["history"],
            "outcome": {key: as_dict[key] for key in ("result", "artifacts", "error")},
        }
    )
    assert any(e["path"] == "fan/bad" for e in snapshot["history"])
    assert all(e["trace_id"] for e in snapshot["history"])
    assert _errors(validator, snapshot) == []


def test_describe_exception_of_a_group_with_classes_is_an_error(
    validator: jsonschema.Draft202012Validator,
) -> None:
    try:
        try:
            raise KeyError("page")
        except KeyError as cause:
            raise ValueError("bad page") from cause
    except ValueError as failure:
        group = ExceptionGroup("two branches failed", [failure, OSError("disk")])
    described = describe_exception(group)
    assert described["errors"][0]["causes"] == [{"type": "KeyError", "message": "'page'"}]
    described["classes"] = ["ExceptionGroup", "ValueError", "KeyError", "OSError"]
    snapshot = rich_snapshot()
    _get(snapshot, BRANCHES)[4]["error"] = described
    assert _errors(validator, snapshot) == []
