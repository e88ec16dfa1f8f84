"""stageflow-echo-pack: an example stage pack with one stage, ``EchoLLM``.

``EchoLLM`` has the shape of a stage that calls a language model: a prompt
goes in, a reply and token usage come out, and the call goes through a client
object. The client here is :class:`EchoClient`, which answers
deterministically and needs no network, so the pack can be installed and
tested anywhere. A real pack would put its provider's client where
:class:`EchoClient` is, and declare that client as a dependency of the pack,
never of stageflow.

stageflow finds the pack through the entry point declared in its
``pyproject.toml``::

    [project.entry-points."stageflow.stages"]
    echo = "stageflow_echo_pack:register"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio.lowlevel
import attrs

import stageflow

__all__ = ["Completion", "EchoClient", "EchoLLM", "register"]

__version__ = "0.1.0"


@attrs.frozen
class Completion:
    """What one model call returned.

    Attributes:
        text: the reply.
        prompt_tokens: tokens in the prompt (here: words).
        completion_tokens: tokens in the reply (here: words).
        finish_reason: ``"stop"``, or ``"length"`` when ``max_tokens`` cut it.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class EchoClient:
    """A stand-in for a provider's client: replies by echoing the prompt.

    The reply is ``"<model> heard: <prompt>"``, cut to ``max_tokens`` words,
    so the same prompt always gets the same reply.
    """

    async def complete(self, prompt: str, *, model: str, max_tokens: int) -> Completion:
        """Answer ``prompt`` as model ``model`` with at most ``max_tokens`` words."""
        # A real client awaits the network here; keep a checkpoint so the
        # call can be cancelled like one.
        await anyio.lowlevel.checkpoint()
        words = f"{model} heard: {prompt}".split()
        reply = words[:max_tokens]
        return Completion(
            text=" ".join(reply),
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(reply),
            finish_reason="length" if len(words) > max_tokens else "stop",
        )


_USAGE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
    },
    "required": ["model", "prompt_tokens", "completion_tokens"],
    "additionalProperties": False,
}


class EchoLLM(stageflow.BaseStage):
    """Ask the (fake) model: the ``prompt`` argument in, ``reply`` and ``usage`` out."""

    spec = stageflow.StageSpec(
        description="Fake LLM call: replies '<model> heard: <prompt>' (no network)",
        arguments={
            "type": "object",
            "properties": {"prompt": {"type": "string", "minLength": 1}},
            "required": ["prompt"],
            "additionalProperties": False,
        },
        config={
            "type": "object",
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        outputs={
            "type": "object",
            "properties": {
                "reply": {"type": "string"},
                "finish_reason": {"enum": ["stop", "length"]},
                "usage": _USAGE_SCHEMA,
            },
        },
        allowed_events=(
            stageflow.EventSpec(
                "llm_usage", schema=_USAGE_SCHEMA, description="Tokens one model call used"
            ),
        ),
    )

    async def run(self, ctx: stageflow.StageContext) -> Mapping[str, Any]:
        """Send the prompt to the client and return the reply and the usage."""
        model = str(ctx.config.get("model", "echo-1"))
        max_tokens = int(ctx.config.get("max_tokens", 64))
        completion = await EchoClient().complete(
            str(ctx.arguments["prompt"]), model=model, max_tokens=max_tokens
        )
        usage = {
            "model": model,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        }
        ctx.emit("llm_usage", usage)
        return {
            "reply": completion.text,
            "finish_reason": completion.finish_reason,
            "usage": usage,
        }


def register(registry: stageflow.StageRegistry) -> None:
    """Register the pack's stages into ``registry`` (the entry point stageflow calls)."""
    registry.add(EchoLLM, name="EchoLLM")
