"""Scripted fake stages and small pipeline builders shared by the tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import trio

import stageflow


def doc(
    nodes: Sequence[Mapping[str, Any]], *, entry: str | None = None, **top: Any
) -> dict[str, Any]:
    """A pipeline document with ``nodes``; the entry defaults to the first node."""
    return {"api_version": "1.0", "entry": entry or nodes[0]["id"], "nodes": list(nodes), **top}


def stage(
    node_id: str,
    name: str,
    *,
    next: str | None = None,
    arguments: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": "stage", "stage": name}
    if next is not None:
        node["next"] = next
    if arguments:
        node["arguments"] = dict(arguments)
    if outputs:
        node["outputs"] = dict(outputs)
    if config:
        node["config"] = dict(config)
    return node


def terminal(
    node_id: str = "end", *artifacts: str, result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "terminal",
        "result": dict(result or {"ok": True}),
        "artifacts": list(artifacts),
    }


def parallel(
    node_id: str, children: Sequence[str], *, next: str | None = None, **extra: Any
) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": "parallel", "children": list(children), **extra}
    if next is not None:
        node["next"] = next
    return node


def map_node(
    node_id: str,
    body: str,
    collect: Mapping[str, str],
    *,
    items: str = "items",
    next: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A map node running ``body`` for each item of ``items``, collecting ``collect``."""
    node: dict[str, Any] = {
        "id": node_id,
        "type": "map",
        "items": items,
        "body": body,
        "collect": dict(collect),
        **extra,
    }
    if next is not None:
        node["next"] = next
    return node


def scaled(seconds: float) -> float:
    """Delays are virtual on trio; on asyncio (real time) a scripted second is 20 ms."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return seconds * 0.02
    return seconds


def fake_registry() -> stageflow.StageRegistry:
    """Stages driven by their ``config``.

    ``Set`` returns ``config["values"]`` after sleeping ``config.get("delay", 0)``
    seconds; ``Fail`` raises ``ValueError(config["message"])`` after its delay;
    ``Hang`` sleeps forever; ``Echo`` returns its arguments.
    """
    registry = stageflow.StageRegistry()

    @registry.register("Set")
    async def set_values(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(scaled(ctx.config.get("delay", 0)))
        return dict(ctx.config.get("values", {}))

    @registry.register("Fail")
    async def fail(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep(scaled(ctx.config.get("delay", 0)))
        raise ValueError(ctx.config.get("message", "boom"))

    @registry.register("Hang")
    async def hang(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    @registry.register("Echo")
    async def echo(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return dict(ctx.arguments)

    return registry


def load(
    document: Mapping[str, Any], registry: stageflow.StageRegistry | None = None
) -> stageflow.Pipeline:
    return stageflow.Pipeline.from_dict(document, registry=registry or fake_registry())


async def run(
    document: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    registry: stageflow.StageRegistry | None = None,
) -> stageflow.SessionResult:
    registry = registry or fake_registry()
    session = stageflow.Session(load(document, registry), registry=registry, payload=payload)
    return await session.run()


def types(result: stageflow.SessionResult, *, node_id: str | None = None) -> list[str]:
    """The event types of a result, optionally only those of one node."""
    return [e.type for e in result.history if node_id is None or e.node_id == node_id]


async def wait_until_waiting(session: stageflow.Session, input_type: str, count: int = 1) -> None:
    """Block until ``count`` stages wait for ``input_type`` (driven by events, no polling).

    Checks the state first: the waits may have started before this subscribed.
    """
    stream = session.events(buffer=0)
    try:
        while len(session._state.desk.broker.waiters(input_type)) < count:
            await stream.__anext__()
    finally:
        await stream.aclose()


async def wait_again_after_cancellation(
    ctx: stageflow.StageContext, wait: str, seen: list[str]
) -> Mapping[str, Any]:
    """A stage body that works until cancelled, catches it, then blocks again.

    Notes ``"cancelled"``, then the name of what ends its second wait
    (``wait``: ``"wait_input"`` for an input ``go``, or ``"sleep"`` for an hour).
    """
    try:
        await anyio.Event().wait()  # work, no wait of the run's
    except anyio.get_cancelled_exc_class():
        seen.append("cancelled")
    try:
        if wait == "sleep":
            await ctx.sleep(3600)
            return {}
        return {"got": await ctx.wait_input("go")}
    except BaseException as exc:
        seen.append(type(exc).__name__)
        raise
