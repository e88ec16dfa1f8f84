"""Stages of the documents example (examples/documents/pipeline.json).

Each page goes through the ``read_page`` subpipeline: ``CleanText``
normalises its whitespace, ``ClassifyPage`` names its kind from its first
word, and ``ExtractFields`` pulls the number and total out of invoices and
receipts. ``Summarise`` then reads the per-page lists the map collected.

The work is fake but deterministic. ``CleanText`` and ``ExtractFields`` take
a small delay that depends on the page index (virtual time in the tests), so
pages finish out of order; while they work they hold an :class:`Activity`,
which records how many pages were being worked on at once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import anyio

import stageflow

# Seconds of fake work per page, by page index modulo 5: page 1 is quicker
# than page 0, page 4 is the slowest, and so on.
DELAYS = (0.04, 0.01, 0.03, 0.02, 0.05)
KINDS = ("invoice", "receipt", "letter", "blank", "other")
NUMBER = re.compile(r"\bno\.\s*(\d+)", re.IGNORECASE)
TOTAL = re.compile(r"\btotal:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class Activity:
    """How many pages the stages work on right now, and the most at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def work(self, seconds: float) -> None:
        """Hold one slot for ``seconds`` of fake work."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await anyio.sleep(seconds)
        finally:
            self.active -= 1


def _object(properties: Mapping[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": dict(properties),
        "additionalProperties": False,
    }


FIELDS = {"type": ["object", "null"]}


def build_registry(activity: Activity) -> stageflow.StageRegistry:
    """The example's stages, reporting their work to ``activity``."""
    registry = stageflow.StageRegistry()

    @registry.register(
        "CleanText",
        spec=stageflow.StageSpec(
            description="Collapse whitespace and count the words of one page",
            arguments=_object(
                {"text": {"type": "string"}, "index": {"type": "integer"}}, "text", "index"
            ),
            outputs=_object({"text": {"type": "string"}, "words": {"type": "integer"}}),
        ),
    )
    async def clean_text(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        index = ctx.arguments["index"]
        await activity.work(DELAYS[index % len(DELAYS)])
        words = ctx.arguments["text"].split()
        return {"text": " ".join(words), "words": len(words)}

    @registry.register(
        "ClassifyPage",
        spec=stageflow.StageSpec(
            description="Name the kind of a page from its first word",
            arguments=_object({"text": {"type": "string"}}, "text"),
            outputs=_object({"kind": {"enum": list(KINDS)}}),
        ),
    )
    async def classify_page(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        text: str = ctx.arguments["text"]
        first = text.split(maxsplit=1)[0].lower().strip(",.:") if text else ""
        kind = {"invoice": "invoice", "receipt": "receipt", "dear": "letter", "": "blank"}
        return {"kind": kind.get(first, "other")}

    @registry.register(
        "ExtractFields",
        spec=stageflow.StageSpec(
            description="Read the number and the total of an invoice or a receipt",
            arguments=_object(
                {
                    "text": {"type": "string"},
                    "kind": {"enum": list(KINDS)},
                    "index": {"type": "integer"},
                },
                "text",
                "kind",
                "index",
            ),
            outputs=_object({"fields": FIELDS}),
        ),
    )
    async def extract_fields(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        index = ctx.arguments["index"]
        await activity.work(DELAYS[(index + 2) % len(DELAYS)])
        text = ctx.arguments["text"]
        number = NUMBER.search(text)
        total = TOTAL.search(text)
        return {
            "fields": {
                "kind": ctx.arguments["kind"],
                "number": number[1] if number else None,
                "total": float(total[1]) if total else None,
            }
        }

    @registry.register(
        "Summarise",
        spec=stageflow.StageSpec(
            description="Summarise the per-page results of a document",
            arguments=_object(
                {
                    "kinds": {"type": "array"},
                    "fields": {"type": "array"},
                    "words": {"type": "array"},
                },
                "kinds",
                "fields",
                "words",
            ),
            outputs=_object({"summary": {"type": "object"}}),
        ),
    )
    async def summarise(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        kinds: list[str] = ctx.arguments["kinds"]
        fields: list[dict[str, Any] | None] = ctx.arguments["fields"]
        totals = [f["total"] for f in fields if f is not None and f["total"] is not None]
        return {
            "summary": {
                "pages": len(kinds),
                "words": sum(ctx.arguments["words"]),
                "by_kind": dict(sorted(Counter(kinds).items())),
                "extracted_pages": [i for i, f in enumerate(fields) if f is not None],
                "total_amount": round(sum(totals), 2),
            }
        }

    return registry


activity = Activity()
registry = build_registry(activity)
