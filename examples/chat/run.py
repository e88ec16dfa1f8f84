"""Chat with the example bot while a script plays the user.

    python examples/chat/run.py [--backend trio|asyncio] [--name NAME] [MESSAGE ...]

The script only reacts to the session's events: a ``waiting_for_input``
event means the bot waits for a user message, and the script answers it with
its next message (``session.send_input``); a ``bot_said`` event is a line the
bot says, printed as it comes. When the script runs out of messages before
saying bye, it hangs up (``session.cancel``). Without messages on the command
line it plays a short default conversation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio

import stageflow

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent
DEFAULT_MESSAGES = ("hello", "can you help me?", "what is a pipeline?", "bye")


async def chat(
    messages: Iterable[str],
    *,
    name: str = "Ada",
    hang_up: bool = True,
    show: Callable[[str], object] = print,
) -> stageflow.SessionResult:
    """Run the chat pipeline, answering each wait with the next of ``messages``.

    With ``hang_up=False`` a script that runs out of messages stays silent,
    and the bot's own wait timeout ends the chat.
    """
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)
    session = stageflow.Session(pipeline, payload={"user": {"name": name}})
    script = iter(messages)

    async def play_the_user(events: stageflow.EventStream) -> None:
        async for event in events:
            if event.type == "bot_said":
                show(f"bot: {event.payload['text']}")
            elif event.type == "waiting_for_input":
                text = next(script, None)
                if text is not None:
                    show(f"you: {text}")
                    session.send_input(event.payload["input_type"], {"text": text})
                elif hang_up:
                    show("(no more messages: hanging up)")
                    session.cancel("the user hung up")

    events = session.events()  # subscribed before run(), so no event is missed
    async with anyio.create_task_group() as tg:
        tg.start_soon(play_the_user, events)
        result = await session.run()
    return result


async def main(messages: list[str], name: str) -> int:
    result = await chat(messages, name=name)
    print(f"status: {result.status}")
    print(f"result: {json.dumps(result.result)}")
    if "transcript" in result.artifacts:
        print(f"transcript: {len(result.artifacts['transcript'])} lines")
    return 0 if result.status is stageflow.SessionStatus.COMPLETED else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--name", default="Ada")
    parser.add_argument("messages", nargs="*", default=list(DEFAULT_MESSAGES))
    args = parser.parse_args()
    sys.exit(anyio.run(main, args.messages, args.name, backend=args.backend))
