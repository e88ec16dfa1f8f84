"""A store and snapshots for the inspector's tests (tests/ui/): one completed, one failed
and one waiting session of a small approval pipeline, made by a real worker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

import stageflow
from stageflow.store import SessionService, SessionStore, Worker, open_store

registry = stageflow.StageRegistry()


@registry.register("Prepare")
async def prepare(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    """Copy the request's title into the draft."""
    return {"draft": {"title": ctx.arguments.get("title"), "secret": "s3cr3t"}}


@registry.register("Audit")
async def audit(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    """Mark the draft audited."""
    return {"audited": True}


@registry.register("Reject")
async def reject(ctx: stageflow.StageContext) -> Mapping[str, Any]:
    """Fail: a rejected request is an error in this pipeline."""
    raise ValueError(f"request rejected: {ctx.arguments.get('note')}")


APPROVAL_SCHEMA = {
    "type": "object",
    "required": ["approved"],
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string", "maxLength": 80}},
    "additionalProperties": False,
}

APPROVAL = {
    "api_version": "1.0",
    "entry": "prepare",
    "metadata": {"name": "approval", "version": "1.2", "redact": ["*.secret"]},
    "nodes": [
        {
            "id": "prepare",
            "type": "stage",
            "stage": "Prepare",
            "arguments": {"title": "title"},
            "outputs": {"draft": "draft"},
            "next": "fan",
        },
        {"id": "fan", "type": "parallel", "children": ["review", "audit"], "next": "decide"},
        {
            "id": "review",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "approval", "input_schema": APPROVAL_SCHEMA},
            "outputs": {"payload": "approval"},
        },
        {"id": "audit", "type": "stage", "stage": "Audit", "outputs": {"audited": "audited"}},
        {
            "id": "decide",
            "type": "condition",
            "conditions": [{"if": {"var": "approval.approved"}, "then": "done"}],
            "else": "reject",
        },
        {
            "id": "reject",
            "type": "stage",
            "stage": "Reject",
            "arguments": {"note": "approval.note"},
            "next": "done",
        },
        {"id": "done", "type": "terminal", "result": {"ok": True}, "artifacts": ["approval"]},
    ],
}


def approval_pipeline() -> stageflow.Pipeline:
    """The approval pipeline: prepare, then wait for ``approval`` beside an audit."""
    return stageflow.Pipeline.from_dict(APPROVAL, registry=registry)


async def run_worker_until(
    store: SessionStore, service: SessionService, waits: dict[str, bool]
) -> None:
    """Run a worker until each session has saved a turn (``True``: until it has finished)."""
    worker = Worker(store, registry=registry, poll=0.05, fetch_cooldown=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        for session_id, finished in waits.items():
            await service.wait(session_id, finished=finished, timeout=30)
        worker.shutdown()


async def populate(url: str) -> None:
    """Store three sessions at ``url``: ``done-1`` completed, ``failed-1`` failed,
    ``waiting-1`` waiting for ``approval``."""
    store = open_store(url)
    try:
        service = SessionService(store, registry=registry)
        pipeline = approval_pipeline()
        for sid, title in (("done-1", "laptop"), ("failed-1", "yacht"), ("waiting-1", "desk")):
            await service.start(pipeline, payload={"title": title}, session_id=sid)
        await run_worker_until(
            store, service, {"done-1": False, "failed-1": False, "waiting-1": False}
        )
        await service.send_input("done-1", "approval", {"approved": True})
        await service.send_input("failed-1", "approval", {"approved": False, "note": "too big"})
        await run_worker_until(store, service, {"done-1": True, "failed-1": True})
    finally:
        await store.aclose()


def make_store(directory: Path) -> str:
    """A SQLite store in ``directory`` holding the three sessions; returns its URL."""
    url = f"sqlite:///{directory / 'sessions.db'}"
    anyio.run(populate, url, backend="trio")
    return url


async def _snapshots(url: str, directory: Path) -> None:
    store = open_store(url)
    try:
        for sid in ("done-1", "failed-1", "waiting-1"):
            snapshot = await store.load(sid)
            snapshot["history"] = await store.events(sid, limit=10_000)
            (directory / f"{sid}.json").write_text(json.dumps(snapshot), encoding="utf-8")
    finally:
        await store.aclose()


def make_snapshot_dir(url: str, directory: Path) -> Path:
    """Snapshot files of the store's three sessions (history included), plus a broken one."""
    directory.mkdir(parents=True, exist_ok=True)
    anyio.run(_snapshots, url, directory, backend="trio")
    (directory / "broken.json").write_text('{"format": "stageflow.session-snapshot"', "utf-8")
    return directory


def write_pipelines(directory: Path) -> Path:
    """A pipeline directory: the approval pipeline, and an invalid one."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "approval.json").write_text(json.dumps(APPROVAL, indent=2), "utf-8")
    invalid = {
        "api_version": "1.0",
        "entry": "a",
        "metadata": {"name": "invalid"},
        "nodes": [
            {"id": "a", "type": "stage", "stage": "Prepare", "next": "nowhere"},
            {"id": "b", "type": "terminal"},
        ],
    }
    (directory / "invalid.json").write_text(json.dumps(invalid, indent=2), "utf-8")
    return directory
