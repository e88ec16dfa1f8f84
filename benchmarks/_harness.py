"""Timing, rows and the table: the parts every benchmark shares.

Every figure is the median of repeated samples taken after warm-up runs. The
samplers of one comparison (stageflow and its reference) are interleaved, one
sample of each per round, so that load from other processes on the machine
hits both sides alike and the ratio stays meaningful even when the absolute
figures drift.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

NA = "n/a (not yet available)"
"""What a row shows when the engine does not offer the API it measures yet."""

Sampler = Callable[[], Awaitable[int]]
"""An async function that runs one sample and returns the nanoseconds it timed."""

"""The same, for code that is not async (LangGraph's sync API, snapshots)."""

clock = time.perf_counter_ns


def settle() -> None:
    """Collect garbage before a sample, so that every sample starts from a similar heap.

    The collector stays on during the sample: collections that the measured
    code triggers are part of its cost, as they are in a service.
    """
    gc.collect()


@dataclass(frozen=True)
class Settings:
    """How hard to run: the full suite, or the quick smoke mode."""

    quick: bool
    repeats: int
    warmups: int
    million: int = 0  # stored sessions for the scale-out --million mode (0: not run)

    @classmethod
    def make(cls, *, quick: bool, million: int = 0) -> Settings:
        return cls(
            quick=quick, repeats=3 if quick else 31, warmups=1 if quick else 3, million=million
        )

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def chain_length(self) -> int:
        return self.size(1000, 20)

    @property
    def condition_sizes(self) -> tuple[int, int]:
        """Node counts of the small and the large condition graph."""
        return self.size(50, 10), self.size(1000, 40)

    @property
    def fanout_sizes(self) -> tuple[int, int]:
        """Branch counts of the small and the large fan-out."""
        return self.size(100, 5), self.size(1000, 20)

    def fewer(self, full: int) -> int:
        """Repeats for the expensive benchmarks (whole-process sweeps, LangGraph)."""
        return min(self.repeats, full)


async def interleave(
    samplers: Sequence[Sampler],
    settings: Settings,
    *,
    repeats: int | None = None,
    warmups: int | None = None,
) -> list[float]:
    """Median nanoseconds of each sampler, sampled in interleaved rounds."""
    rounds = settings.repeats if repeats is None else repeats
    for _ in range(settings.warmups if warmups is None else warmups):
        for sampler in samplers:
            await sampler()
    samples: list[list[int]] = [[] for _ in samplers]
    for _ in range(rounds):
        for i, sampler in enumerate(samplers):
            settle()
            samples[i].append(await sampler())
    return [statistics.median(s) for s in samples]


# ------------------------------------------------------------------ formatting


def us(ns: float | None) -> str:
    """Nanoseconds as microseconds for the table."""
    if ns is None:
        return NA
    value = ns / 1000
    if value >= 100:
        return f"{value:,.0f} us"
    return f"{value:.2f} us"


def kib(nbytes: float | None) -> str:
    """Bytes as KiB for the table."""
    if nbytes is None:
        return NA
    value = nbytes / 1024
    return f"{value:,.0f} KiB" if value >= 100 else f"{value:.2f} KiB"


def size(nbytes: float | None) -> str:
    """A byte count for the table."""
    if nbytes is None:
        return NA
    return f"{nbytes:,.0f} B"


def ratio(measured: float | None, reference: float | None) -> float | None:
    if measured is None or reference is None or reference <= 0:
        return None
    return measured / reference


def times(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


# ------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Budget:
    """A budget from the issue: its wording, and whether this run met it.

    ``met`` is ``None`` when the run could not tell (the figure is missing).
    """

    text: str
    met: bool | None

    def cell(self) -> str:
        if self.met is None:
            return f"n/a ({self.text})"
        return f"{'met' if self.met else 'NOT MET'} ({self.text})"


def at_most(limit: float | None, value: float | None, text: str) -> Budget:
    if limit is None or value is None:
        return Budget(text, None)
    return Budget(text, value <= limit)


def at_least(limit: float | None, value: float | None, text: str) -> Budget:
    if limit is None or value is None:
        return Budget(text, None)
    return Budget(text, value >= limit)


def all_of(text: str, *budgets: Budget) -> Budget:
    if any(b.met is None for b in budgets):
        return Budget(text, None)
    return Budget(text, all(b.met for b in budgets))


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    section: str
    label: str
    measured: str
    reference: str
    ratio: str = "-"
    budget: Budget | None = None
    error: str | None = None

    def cells(self, judge: bool = True) -> list[str]:
        budget = "-"
        if self.budget is not None:
            budget = self.budget.cell() if judge else f"not judged ({self.budget.text})"
        return [self.section, self.label, self.measured, self.reference, self.ratio, budget]


@dataclass
class Table:
    """The rows of one run, in the order they were measured."""

    judge: bool = True
    """Whether budgets are judged (not in quick mode: its sizes are too small to mean anything)."""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def render(self) -> str:
        header = ["section", "benchmark", "measured", "reference", "ratio", "budget"]
        lines = [header, *(row.cells(self.judge) for row in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out.extend(fmt(cells) for cells in lines[1:])
        return "\n".join(out)

    def budget_lines(self) -> list[str]:
        if not self.judge:
            return ["- not judged in quick mode"]
        lines = []
        for row in self.rows:
            if row.budget is None:
                continue
            verdict = {True: "met", False: "NOT MET", None: "n/a"}[row.budget.met]
            lines.append(
                f"- {verdict}: {row.label}: {row.budget.text} (measured {row.measured}, "
                f"ratio {row.ratio})"
            )
        return lines

    @property
    def errors(self) -> list[Row]:
        return [row for row in self.rows if row.error is not None]
