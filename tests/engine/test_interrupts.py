"""A KeyboardInterrupt or SystemExit raised in a branch or a map item reaches the caller.

asyncio re-raises either exception out of its event loop when a task raises
it, where trio's nursery hands it to the task that opened it. Before the fix,
on asyncio it stopped the caller's whole event loop: ``run()``'s caller could
not catch it, and every other task of the program was torn down. On trio it
came out of ``run()`` in the nursery's ``BaseExceptionGroup``, where on the
main path it comes alone: ``except KeyboardInterrupt`` missed it, and a
``SystemExit`` left the program with a traceback and status 1, not its code.
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
        raise raised("stop here") from LookupError("the reason")

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
async def test_an_interrupt_in_a_branch_or_item_reaches_the_caller_alone(
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
        with pytest.raises(raised, match=r"^stop here$") as caught:
            await session.run()
    assert bystander_done.is_set()
    assert repr(caught.value.__cause__) == "LookupError('the reason')"  # kept as raised
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


class _Halt(BaseException):
    """A stage's own BaseException: no Exception, and no cancellation either."""


@pytest.mark.parametrize("where", ["branch", "map item"])
async def test_a_stages_own_base_exception_in_a_branch_or_item_reaches_the_caller_alone(
    where: str,
) -> None:
    # On trio and on asyncio it came in the task group's BaseExceptionGroup,
    # where on the main path it comes alone.
    registry = _registry(_Halt)
    session = stageflow.Session(
        load(_document(where), registry), registry=registry, payload={"items": [1, 2]}
    )
    with pytest.raises(_Halt, match=r"^stop here$") as caught:
        await session.run()
    assert repr(caught.value.__cause__) == "LookupError('the reason')"
    assert session.status is stageflow.SessionStatus.FAILED
    assert session.history[-1].type == "session_failed"
