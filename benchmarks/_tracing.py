"""Tracing overhead: no provider, API-only no-op, and the SDK, each vs untraced.

Each set-up runs in a fresh process (see :mod:`benchmarks._tracing_worker`);
the variants take turns, round after round, so that load from other processes
hits them alike. A figure is the median over the rounds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._harness import NA, Budget, Row, Settings, Table, at_most, ratio, times, us
from benchmarks._tracing_worker import VARIANTS

SECTION = "tracing"
ROOT = Path(__file__).resolve().parent.parent

LABELS = {
    "none": "no provider configured",
    "noop": "API-only NoOpTracerProvider",
    "sdk": "SDK + BatchSpanProcessor + dropping exporter",
    "sdk-flat": "SDK as above, trace_wait_threshold=None",
    "metrics": "no tracing, SDK MeterProvider",
}


def _worker(variant: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks._tracing_worker", variant]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"tracing worker {variant!r} failed with exit code {done.returncode}:\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get("available") and key in run]
    return statistics.median(values) if values else None


def _na_rows(table: Table, why: str) -> None:
    for variant in ("none", "noop", "sdk"):
        for what in ("per node", "3-node run"):
            table.add(Row(SECTION, f"tracing, {LABELS[variant]}: {what}", why, NA, "n/a"))
    table.add(Row(SECTION, "one SDK span (start_as_current_span), same provider", why, "-", "-"))


async def tracing(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    """Run every variant in its own process, in rounds, and add their rows."""
    rounds = 1 if settings.quick else 3
    first = _worker("sdk", settings.quick)
    if not first.get("available"):
        _na_rows(table, NA)
        table.notes.append(f"tracing: {first.get('reason', 'not available')}")
        return
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    runs["sdk"].append(first)
    for i in range(rounds):
        for variant in VARIANTS:
            if variant == "sdk" and i == 0:
                continue
            runs[variant].append(_worker(variant, settings.quick))
    untraced_available = all(run.get("available") for run in runs["untraced"])
    if not untraced_available:
        table.notes.append(
            "tracing: no untraced reference: "
            + str(runs["untraced"][0].get("reason", "unavailable"))
        )
    span = _median(runs["sdk"], "span")
    for key, what in (("per_node", "per node"), ("run3", "3-node run")):
        base = _median(runs["untraced"], key) if untraced_available else None
        for variant in ("none", "noop", "sdk", "sdk-flat", "metrics"):
            if not all(run.get("available") for run in runs[variant]):
                continue
            value = _median(runs[variant], key)
            r = ratio(value, base)
            budget: Budget | None = None
            if variant == "none" and key == "per_node":
                budget = at_most(1.2, r, "<=1.2x untraced")
            elif variant == "sdk" and key == "per_node":
                extra = None if value is None or base is None else value - base
                limit = None if span is None else span + 10_000
                budget = at_most(limit, extra, "<= one span + 10 us over untraced")
            table.add(
                Row(
                    SECTION,
                    f"tracing, {LABELS[variant]}: {what}",
                    us(value),
                    f"{us(base) if base is not None else 'n/a'} untraced",
                    times(r),
                    budget,
                )
            )
    figures["span"] = span
    table.add(
        Row(SECTION, "one SDK span (start_as_current_span), same provider", us(span), "-", "-")
    )
    attributed = _median(runs["sdk"], "attributed_span")
    if attributed is not None:
        table.add(
            Row(
                SECTION,
                "one SDK span with a stage node span's 5 attributes, same provider",
                us(attributed),
                f"{us(span)} bare",
                times(ratio(attributed, span)),
            )
        )
        # What is left of the SDK row once the untraced node and an SDK span
        # carrying the same attributes are taken off: stageflow's own code
        # (the SDK's work for the attributes is in the reference).
        sdk, base = _median(runs["sdk"], "per_node"), _median(runs["untraced"], "per_node")
        if sdk is not None and base is not None and untraced_available:
            own = sdk - base - attributed
            table.add(
                Row(
                    SECTION,
                    "tracing, SDK: stageflow's own code per node (SDK - untraced - span above)",
                    us(own),
                    f"{us(span)} bare span",
                    times(ratio(own, span)),
                )
            )
