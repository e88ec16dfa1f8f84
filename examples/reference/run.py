"""Run the seed's reference pipeline end to end and print the result as JSON.

python examples/reference/run.py [TEXT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

import stageflow

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent


async def main(text: str) -> int:
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)
    session = stageflow.Session(
        pipeline, registry=registry, payload={"user_id": "u-42", "text": text}
    )
    result = await session.run()
    print(json.dumps({k: v for k, v in result.to_dict().items() if k != "history"}, indent=2))
    print(f"{len(result.history)} events: {', '.join(e.type for e in result.history)}")
    return 0 if result.status is stageflow.SessionStatus.COMPLETED else 1


if __name__ == "__main__":
    text = " ".join(sys.argv[1:]) or "please review my order quickly"
    sys.exit(trio.run(main, text))
