"""Read a document page by page and print the summary as JSON.

    python examples/documents/run.py [--backend trio|asyncio]

The ``each_page`` map runs the ``read_page`` subpipeline for every page of
:data:`DOCUMENT`, four pages at a time; the final stage summarises the lists
the map collected in page order. Prints ``{"status", "result", "artifacts"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

import stageflow

sys.path.insert(0, str(Path(__file__).parent))
from stages import registry

HERE = Path(__file__).parent

DOCUMENT: dict[str, Any] = {
    "title": "March post",
    "pages": [
        "INVOICE   No. 1041\n  Office chairs x4\n  Total: 120.50 EUR",
        "Dear customer,\nthank you for   your order.",
        "Receipt\nCoffee beans\nTotal: 19.99 EUR\nPaid by card",
        "   \n  ",
        "Invoice No. 1042\nDesk lamp\nTotal: 80.00 EUR",
        "Terms and conditions apply to every order.",
        "receipt: Total: 5.25",
        "Dear supplier, our invoice No. 1043 follows by post.",
        "INVOICE without a number",
        "Notes: nothing else to report.",
    ],
}


async def read_document(
    document: dict[str, Any], reg: stageflow.StageRegistry = registry
) -> stageflow.SessionResult:
    """Run the pipeline over ``document`` (``{"pages": [text, ...]}``)."""
    pipeline = stageflow.Pipeline.load(HERE / "pipeline.json", registry=reg)
    session = stageflow.Session(pipeline, payload={"document": document})
    return await session.run()


async def main() -> int:
    result = await read_document(DOCUMENT)
    out = {"status": str(result.status), "result": result.result, "artifacts": result.artifacts}
    print(json.dumps(out, indent=2))
    return 0 if result.status is stageflow.SessionStatus.COMPLETED else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    sys.exit(anyio.run(main, backend=args.backend))
