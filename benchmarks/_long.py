"""A long-lived chat: the cost of one turn at turn 10, 1,000 and 10,000 (issue 16).

One turn is one request of a service that keeps sessions between requests:
restore the session from its JSON text (``Session.from_dict``), send the
user's message, run it until it waits again (``run(suspend=True)``) and save
it (``to_dict(history="none")`` as JSON text). The chat keeps a bounded
context (the last 10 lines), so with the history out of the snapshot a turn
should cost the same at turn 10,000 as at turn 10: the rows give the median
time of a turn and the snapshot's size at each point, against turn 10.

The session is brought to each point by the same requests, one per turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stageflow
from benchmarks._harness import Row, Settings, Table, at_most, clock, ratio, settle, size, times, us

SECTION = "long"
KEEP = 10

Figures = dict[str, float | None]


def registry() -> stageflow.StageRegistry:
    """``Reply``: answers the message and keeps the last ``KEEP`` lines."""
    reg = stageflow.StageRegistry()

    @reg.register("Reply")
    async def reply(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        text = ctx.arguments["message"]["text"]
        lines = [*ctx.arguments.get("lines", []), text, f"You said: {text}"][-KEEP:]
        return {"lines": lines, "turns": ctx.arguments.get("turns", 0) + 1}

    return reg


def pipeline(reg: stageflow.StageRegistry) -> stageflow.Pipeline:
    """Wait for a message, reply, wait again; per-run limits only."""
    return stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "listen",
            "limits": {"max_steps": None, "max_run_steps": 100},
            "nodes": [
                {
                    "id": "listen",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": "message"},
                    "outputs": {"payload": "message"},
                    "next": "reply",
                    # A way out of the loop (the loader refuses loops without one).
                    "on_error": [{"errors": ["InputTimeoutError"], "next": "end"}],
                },
                {
                    "id": "reply",
                    "type": "stage",
                    "stage": "Reply",
                    "arguments": {"message": "message", "lines": "lines", "turns": "turns"},
                    "outputs": {"lines": "lines", "turns": "turns"},
                    "next": "listen",
                },
                {"id": "end", "type": "terminal"},
            ],
        },
        registry=reg,
    )


async def turn(
    text: str, reg: stageflow.StageRegistry, chat: stageflow.Pipeline, message: str
) -> str:
    """One request: restore, send, run until it waits, save; the new snapshot's text."""
    session = stageflow.Session.from_dict(json.loads(text), registry=reg, pipeline=chat)
    session.send_input("message", {"text": message})
    result = await session.run(suspend=True)
    if result.status is not stageflow.SessionStatus.WAITING:
        raise RuntimeError(f"the chat ended: {result.status.value} {result.error}")
    return json.dumps(session.to_dict(history="none"), separators=(",", ":"))


async def chat_turns(settings: Settings, table: Table, figures: Figures) -> None:
    """Per-turn time and snapshot size at turns 10, 1,000 and 10,000."""
    reg = registry()
    chat = pipeline(reg)
    points = (10, 100, 300) if settings.quick else (10, 1_000, 10_000)
    samples = settings.fewer(21)
    session = stageflow.Session(chat, registry=reg)
    await session.run(suspend=True)
    text = json.dumps(session.to_dict(history="none"), separators=(",", ":"))
    done = 0
    measured: dict[int, tuple[float, int]] = {}
    for point in points:
        while done < point - samples:
            done += 1
            text = await turn(text, reg, chat, f"message {done:05d}")
        settle()
        elapsed: list[int] = []
        while done < point:
            done += 1
            start = clock()
            text = await turn(text, reg, chat, f"message {done:05d}")
            elapsed.append(clock() - start)
        elapsed.sort()
        measured[point] = (elapsed[len(elapsed) // 2], len(text))
    base_time, base_size = measured[points[0]]
    for point in points:
        ns, nbytes = measured[point]
        figures[f"long.turn.{point}"] = ns
        table.add(
            Row(
                SECTION,
                f"chat turn {point:,} (restore, send, run, save; history out): time",
                us(ns),
                f"{us(base_time)} at turn {points[0]}",
                times(ratio(ns, base_time)),
                at_most(1.5, ratio(ns, base_time), "flat: <= 1.5x turn 10"),
            )
        )
        table.add(
            Row(
                SECTION,
                f"chat turn {point:,}: snapshot size",
                size(nbytes),
                f"{size(base_size)} at turn {points[0]}",
                times(ratio(nbytes, base_size)),
                at_most(1.05, ratio(nbytes, base_size), "flat: <= 1.05x turn 10"),
            )
        )
