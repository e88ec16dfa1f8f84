"""Stages of the chat example (examples/chat/pipeline.json).

``Greet`` opens the conversation; ``Reply`` answers one user message in the
way its node's ``config.kind`` says. Both keep the conversation in the
``transcript`` list and announce every line the bot says with a declared
``bot_said`` event, which a front end (here ``run.py``) shows to the user.
Waiting for the user's messages is the core ``WaitStage``, so it needs no
code here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stageflow

registry = stageflow.StageRegistry()

BOT_SAID = stageflow.EventSpec(
    "bot_said",
    schema={
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
        "additionalProperties": False,
    },
    description="A line the bot says to the user.",
)

TRANSCRIPT = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["from", "text"],
        "properties": {"from": {"enum": ["bot", "user"]}, "text": {"type": "string"}},
    },
}


def say(ctx: stageflow.StageContext, transcript: list[Any], text: str) -> list[Any]:
    """Announce ``text`` and return the transcript with it added."""
    ctx.emit("bot_said", {"text": text})
    return [*transcript, {"from": "bot", "text": text}]


@registry.register("Greet")
class Greet(stageflow.BaseStage):
    """Start the transcript with a greeting."""

    spec = stageflow.StageSpec(
        description="Greet the user and start the transcript",
        arguments={"type": "object", "properties": {"name": {"type": "string"}}},
        outputs={"type": "object", "properties": {"transcript": TRANSCRIPT}},
        allowed_events=[BOT_SAID],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        name = ctx.arguments.get("name", "there")
        text = f"Hello, {name}! Ask me a question, or say bye to leave."
        return {"transcript": say(ctx, [], text)}


@registry.register("Reply")
class Reply(stageflow.BaseStage):
    """Answer one user message; ``config.kind`` picks the answer."""

    spec = stageflow.StageSpec(
        description="Answer the user's message and extend the transcript",
        arguments={
            "type": "object",
            "required": ["message", "transcript"],
            "properties": {
                "message": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string"}},
                },
                "transcript": TRANSCRIPT,
                "name": {"type": "string"},
            },
        },
        config={
            "type": "object",
            "required": ["kind"],
            "additionalProperties": False,
            "properties": {"kind": {"enum": ["help", "question", "echo", "bye"]}},
        },
        outputs={"type": "object", "properties": {"transcript": TRANSCRIPT}},
        allowed_events=[BOT_SAID],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        text = ctx.arguments["message"]["text"]
        kind = ctx.config["kind"]
        if kind == "help":
            answer = "I answer questions (end them with '?') and repeat everything else."
        elif kind == "question":
            count = len(text.split())
            words = "1 word" if count == 1 else f"{count} words"
            answer = f"Good question! All I can tell you is that it has {words}."
        elif kind == "echo":
            answer = f"You said: {text}"
        else:
            answer = f"Goodbye, {ctx.arguments.get('name', 'friend')}!"
        transcript = [*ctx.arguments["transcript"], {"from": "user", "text": text}]
        return {"transcript": say(ctx, transcript, answer)}
