"""Durations into deadlines, safely: the one place that adds seconds to a time.

A duration is data from a document or a caller (``limits.timeout``, a node's
``timeout``, a ``wait_input`` timeout, a sleep, a retry policy), so it can be
as large as a float allows. Python raises ``OverflowError`` when such a number
meets a ``datetime`` or a float power; here it means "never, in practice":
a deadline past the last representable time is that time, and a retry delay
that overflows is ``max_delay``. A leaf module.
"""

from __future__ import annotations

import datetime
import math
from typing import Final

__all__ = ["LATEST", "after", "retry_delay"]

LATEST: Final = datetime.datetime.max.replace(tzinfo=datetime.UTC)
"""The deadline of a duration too long for a ``datetime``: the end of year 9999 (UTC)."""


def after(start: datetime.datetime, seconds: float) -> datetime.datetime:
    """The time ``seconds`` after ``start``; :data:`LATEST` when that is past any date.

    A negative or NaN duration is none at all (``start``).
    """
    if not seconds > 0:  # also NaN
        return start
    try:
        return start + datetime.timedelta(seconds=seconds)
    except OverflowError:  # past year 9999, or more days than a timedelta holds
        return LATEST if start.tzinfo is not None else LATEST.replace(tzinfo=None)


def retry_delay(delay: float, backoff: float, max_delay: float, retry: int) -> float:
    """``min(max_delay, delay * backoff ** (retry - 1))`` without overflowing.

    Computed in floats (an integer ``backoff`` to a large power would build a
    huge integer first); a product past the float range is ``max_delay``.
    """
    if delay <= 0 or max_delay <= 0:
        return max(0.0, min(float(max_delay), float(delay)))
    try:
        grown = float(delay) * float(backoff) ** (retry - 1)
    except OverflowError:
        return float(max_delay)
    if math.isnan(grown):  # 0 ** -1 and the like cannot happen; inf * 0 can
        return float(max_delay)
    return float(min(float(max_delay), grown))
