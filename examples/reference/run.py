"""Run the seed's reference pipeline end to end and print the result as JSON.

    python examples/reference/run.py [--trace otlp|console] [TEXT ...]

``--trace otlp`` exports the run's spans over OTLP/HTTP (endpoint from
``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``), for
example to the collector and Jaeger started from ``tracing/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

import stageflow
import stageflow.tracing

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent


async def main(text: str) -> int:
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=registry)
    session = stageflow.Session(pipeline, payload={"user_id": "u-42", "text": text})
    result = await session.run()
    print(json.dumps(result.to_dict(history=False), indent=2))
    print(f"{len(result.history)} events: {', '.join(e.type for e in result.history)}")
    return 0 if result.status is stageflow.SessionStatus.COMPLETED else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", choices=["otlp", "console", "none"], default="none")
    parser.add_argument("text", nargs="*", default=["please review my order quickly"])
    args = parser.parse_args()
    if args.trace != "none":
        stageflow.tracing.configure(exporter=args.trace)
    try:
        code = trio.run(main, " ".join(args.text))
    finally:
        if args.trace != "none":
            stageflow.tracing.shutdown()
    sys.exit(code)
