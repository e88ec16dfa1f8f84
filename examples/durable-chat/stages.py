"""Stages of the durable chat example (examples/durable-chat/pipeline.json).

``Say`` opens the conversation with a fixed line, ``Listen`` waits for the
user's name or next message, ``Greet`` greets the user by name and
``Answer`` answers one message (its node's ``config.kind`` says how). They
keep the conversation in the ``transcript`` list and announce every line the
bot says with a declared ``bot_said`` event, which ``run.py`` returns as the
reply to a request.

The transcript keeps the last ``KEEP`` lines only: the context, and so the
snapshot, stays the same size however long the conversation runs (the whole
conversation is in the events table of the session store).

Each stage that talks does so *after* its only wait (or has no wait at all),
and ``Listen`` does nothing before its wait. A stage in flight when a session
is suspended is re-run from its start when the session is restored, so a line
said before a wait would be said again; this layout says every line once.
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

USER_NAME = stageflow.InputSpec(
    "user_name",
    schema={
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}},
        "additionalProperties": False,
    },
    description="The user's answer to 'what is your name?'.",
)

USER_MESSAGE = stageflow.InputSpec(
    "user_message",
    schema={
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 2000}},
        "additionalProperties": False,
    },
    description="A message the user writes.",
)

TRANSCRIPT = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["from", "text"],
        "properties": {"from": {"enum": ["bot", "user"]}, "text": {"type": "string"}},
    },
}


KEEP = 10
"""Lines of the transcript kept in the context (the newest)."""


def say(ctx: stageflow.StageContext, transcript: list[Any], text: str) -> list[Any]:
    """Announce ``text``; return the transcript with it added (its last ``KEEP`` lines)."""
    ctx.emit("bot_said", {"text": text})
    return [*transcript, {"from": "bot", "text": text}][-KEEP:]


@registry.register("Say")
class Say(stageflow.BaseStage):
    """Say the fixed line ``config.text``."""

    spec = stageflow.StageSpec(
        description="Say a fixed line and add it to the transcript",
        arguments={"type": "object", "properties": {"transcript": TRANSCRIPT}},
        config={
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {"text": {"type": "string", "minLength": 1}},
        },
        outputs={"type": "object", "properties": {"transcript": TRANSCRIPT}},
        allowed_events=[BOT_SAID],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        transcript = ctx.arguments.get("transcript", [])
        return {"transcript": say(ctx, transcript, ctx.config["text"])}


@registry.register("Listen")
class Listen(stageflow.BaseStage):
    """Wait for the user's name or next message (``config.input``).

    Unlike the core ``WaitStage`` it declares its inputs with their schemas,
    so in ``validate_events: strict`` a malformed input is rejected to the
    sender (``InputRejectedError``) instead of reaching the conversation.
    """

    spec = stageflow.StageSpec(
        description="Wait for the user's name or next message",
        arguments={"type": "object", "properties": {}, "additionalProperties": False},
        config={
            "type": "object",
            "required": ["input"],
            "additionalProperties": False,
            "properties": {"input": {"enum": [USER_NAME.type, USER_MESSAGE.type]}},
        },
        outputs={"type": "object", "properties": {"payload": {"type": "object"}}},
        allowed_inputs=[USER_NAME, USER_MESSAGE],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        # Nothing before the wait: a restored session re-runs this stage from
        # its start, and the input it had already consumed is replayed to it.
        return {"payload": await ctx.wait_input(ctx.config["input"])}


@registry.register("Greet")
class Greet(stageflow.BaseStage):
    """Greet the user by name."""

    spec = stageflow.StageSpec(
        description="Greet the user by name and extend the transcript",
        arguments={
            "type": "object",
            "required": ["user", "transcript"],
            "properties": {
                "user": {"type": "object", "properties": {"name": {"type": "string"}}},
                "transcript": TRANSCRIPT,
            },
        },
        outputs={"type": "object", "properties": {"transcript": TRANSCRIPT}},
        allowed_events=[BOT_SAID],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        name = ctx.arguments["user"]["name"]
        transcript = [*ctx.arguments["transcript"], {"from": "user", "text": name}]
        text = f"Nice to meet you, {name}! Ask me anything, or say bye to leave."
        return {"transcript": say(ctx, transcript, text)}


@registry.register("Answer")
class Answer(stageflow.BaseStage):
    """Answer one user message; ``config.kind`` picks the answer.

    ``turns`` counts the user's messages, the farewell included.
    """

    spec = stageflow.StageSpec(
        description="Answer the user's message, count the turn and extend the transcript",
        arguments={
            "type": "object",
            "required": ["message", "transcript"],
            "properties": {
                "message": {"type": "object", "properties": {"text": {"type": "string"}}},
                "transcript": TRANSCRIPT,
                "turns": {"type": "integer", "minimum": 0},
                "user": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        config={
            "type": "object",
            "required": ["kind"],
            "additionalProperties": False,
            "properties": {"kind": {"enum": ["question", "echo", "farewell"]}},
        },
        outputs={
            "type": "object",
            "properties": {"transcript": TRANSCRIPT, "turns": {"type": "integer"}},
        },
        allowed_events=[BOT_SAID],
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        text = ctx.arguments["message"]["text"]
        turns = ctx.arguments.get("turns", 0) + 1
        kind = ctx.config["kind"]
        if kind == "question":
            count = len(text.split())
            words = "1 word" if count == 1 else f"{count} words"
            answer = f"Good question! All I can tell you is that it has {words}."
        elif kind == "echo":
            answer = f"You said: {text}"
        else:
            name = ctx.arguments.get("user", {}).get("name", "friend")
            said = "1 message" if turns == 1 else f"{turns} messages"
            answer = f"Goodbye, {name}! We exchanged {said}."
        transcript = [*ctx.arguments["transcript"], {"from": "user", "text": text}]
        return {"transcript": say(ctx, transcript, answer), "turns": turns}
