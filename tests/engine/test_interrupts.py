"""A KeyboardInterrupt or SystemExit raised in a branch or a map item reaches the caller.

asyncio re-raises either exception out of its event loop when a task raises
it, where trio's nursery hands it to the task that opened it. Before the fix,
on asyncio it stopped the caller's whole event loop: ``run()``'s caller could
not catch it, and every other task of the program was torn down. These tests
run on both backends; before the fix they failed on asyncio only.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fakes import doc, fake_registry, load, parallel, scaled, stage, terminal

import stageflow

pytestmark = pytest.mark.anyio


def _registry(raised: type[BaseException]) -> stageflow.StageRegistry:
    registry = fake_registry()

    @registry.register("Raise")
    async def raise_it(ctx: stageflow.StageContext) -> None:
        # In a map, item 0 raises and item 1 hangs, as the branches do.
        if ctx.arguments.get("index", 0) != 0:
            await anyio.sleep_forever()
        await anyio.sleep(scaled(1))
        raise raised("stop here")

    return registry


def _document(where: str) -> dict[str, Any]:
    if where == "branch":
        return doc(
            [
                parallel("fan", ["bad", "slow"], next="end"),
                stage("bad", "Raise"),
                stage("slow", "Hang"),
                terminal(),
            ]
        )
    return doc(
        [
            {
                "id": "each",
                "type": "map",
                "items": "items",
                "item_path": "item",
                "index_path": "index",
                "body": "bad",
                "concurrency": 2,
                "next": "end",
            },
            stage("bad", "Raise", arguments={"index": "index"}),
            terminal(),
        ]
    )


@pytest.mark.parametrize("where", ["branch", "map item"])
@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
async def test_an_interrupt_in_a_branch_or_item_reaches_the_caller_in_a_group(
    raised: type[BaseException], where: str
) -> None:
    registry = _registry(raised)
    session = stageflow.Session(
        load(_document(where), registry), registry=registry, payload={"items": [1, 2]}
    )
    bystander_done = anyio.Event()

    async def bystander() -> None:
        # Another task of the caller's program: the interrupt is the
        # session's caller's to handle, it does not tear this task down.
        await anyio.sleep(scaled(2))
        bystander_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(bystander)
        with pytest.RaisesGroup(raised, flatten_subgroups=True) as caught:
            await session.run()
    assert bystander_done.is_set()
    (leaf,) = caught.value.exceptions
    assert str(leaf) == "stop here"
    assert session.status is stageflow.SessionStatus.CANCELLED
    last = session.history[-1]
    assert (last.type, last.payload["reason"]) == (
        "session_cancelled",
        f"interrupted at node 'each' by {raised.__name__}: stop here"
        if where == "map item"
        else f"interrupted at node 'fan' by {raised.__name__}: stop here",
    )
    kind = "branch" if where == "branch" else "map_item"
    ended = sorted((e.type, e.path) for e in session.history if e.type.endswith("_cancelled"))
    first, second = ("fan/bad", "fan/slow") if where == "branch" else ("each/0", "each/1")
    assert ended == [
        (f"{kind}_cancelled", first),
        (f"{kind}_cancelled", second),
        ("node_cancelled", ""),
        ("node_cancelled", first),
        ("node_cancelled", second),
        ("session_cancelled", ""),
    ]
