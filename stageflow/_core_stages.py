"""The core stages every registry has: ``WaitStage`` and ``SleepStage``."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from stageflow._specs import TIME_FORMAT, StageSpec, time_with_offset
from stageflow._stages import BaseStage, StageContext, register_core_stage

__all__ = ["SleepStage", "WaitStage"]

_UNTIL_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)(?![\s\S])"  # not "$", which allows a final newline
)
"""The JSON Schema ``pattern`` of ``SleepStage``'s ``until``: a date and time with a UTC offset.

Checked when a pipeline loads, so text that is no date and time, or has no
offset, is a validation problem, not a failed run; so is a time this pattern
lets through but the calendar does not have (``TIME_FORMAT``).
"""


class WaitStage(BaseStage):
    """Wait for one external input and return its payload as ``payload``.

    Config: ``input`` (the input type), optional ``timeout`` (seconds) and
    optional ``input_schema`` (the payload's JSON Schema: with
    ``validate_events: strict`` a payload that does not fit is rejected to
    its sender, with ``warn`` it is recorded as ``event_validation_failed``).
    Map ``payload`` to a context path with the node's ``outputs``; route a
    timeout (``InputTimeoutError``) with an error edge::

        {"id": "ask", "type": "stage", "stage": "WaitStage",
         "config": {"input": "user_message", "timeout": 600},
         "outputs": {"payload": "message"}, "next": "answer",
         "on_error": [{"errors": ["InputTimeoutError"], "next": "give_up"}]}
    """

    spec = StageSpec(
        description="Wait for an external input and return its payload",
        arguments={"type": "object", "properties": {}, "additionalProperties": False},
        config={
            "type": "object",
            "required": ["input"],
            "additionalProperties": False,
            "properties": {
                "input": {"type": "string", "minLength": 1, "description": "input type"},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
                "input_schema": {
                    "type": "object",
                    "description": "JSON Schema (draft 2020-12) of the input's payload",
                },
            },
        },
        outputs={"type": "object", "properties": {"payload": {"description": "the input"}}},
        input_from_config="input",
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Wait for the configured input."""
        payload = await ctx.wait_input(ctx.config["input"], ctx.config.get("timeout"))
        return {"payload": payload}


def _until(ctx: StageContext) -> datetime.datetime:
    """``config.until`` as an aware datetime (the loader refuses one that is no time)."""
    text = ctx.config["until"]
    try:
        return time_with_offset(text)
    except ValueError as exc:  # a config the loader did not check
        raise ValueError(
            f"SleepStage at node {ctx.node_id!r}: config 'until' {text!r} is not a time "
            f"stageflow can use ({exc}); write a date and time with a UTC offset, like "
            "2030-01-01T09:00:00+00:00"
        ) from None


class SleepStage(BaseStage):
    """Sleep for ``seconds``, or until ``until`` (a date and time with a UTC offset).

    Returns ``slept``, the seconds it planned to sleep. The deadline is an
    absolute UTC time kept in snapshots: a restored session wakes on time.
    Under trio's ``MockClock`` the sleep is virtual, so tests of long timers
    run instantly.
    """

    spec = StageSpec(
        description="Sleep for a duration or until an absolute time",
        arguments={"type": "object", "properties": {}, "additionalProperties": False},
        config={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "seconds": {"type": "number", "minimum": 0},
                "until": {
                    "type": "string",
                    "format": TIME_FORMAT,
                    "pattern": _UNTIL_PATTERN,
                    "description": "a date and time with a UTC offset, such as "
                    "2030-01-01T09:00:00+00:00",
                },
            },
            "oneOf": [{"required": ["seconds"]}, {"required": ["until"]}],
        },
        outputs={"type": "object", "properties": {"slept": {"type": "number"}}},
    )

    async def run(self, ctx: StageContext) -> Mapping[str, Any]:
        """Sleep as configured; the deadline survives a snapshot and restore."""
        if "seconds" in ctx.config:
            slept = await ctx.sleep(float(ctx.config["seconds"]))
        else:
            slept = await ctx.sleep_until(_until(ctx))
        return {"slept": slept}


register_core_stage(WaitStage, "WaitStage")
register_core_stage(SleepStage, "SleepStage")
