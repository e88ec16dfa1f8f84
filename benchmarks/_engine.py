"""The engine's own cost: sequential, condition and parallel nodes, and a whole run.

Per-node figures subtract the cost of a run that has no node of interest
(a terminal-only pipeline, or a fan-out of one branch), so that the fixed cost
of a run is not spread over the nodes.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import stageflow
from benchmarks import _shapes as shapes
from benchmarks._harness import (
    Row,
    Settings,
    Table,
    all_of,
    at_most,
    clock,
    interleave,
    kib,
    ratio,
    settle,
    size,
    times,
    us,
)
from stageflow._engine import _run

SECTION = "engine"
EMPTY_BATCH = 20
"""Terminal-only runs timed together per sample (one alone is mostly timer noise)."""

Figures = dict[str, float | None]


def bare_sampler(
    step: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], batch: int = 1
) -> Callable[[], Awaitable[int]]:
    """Time ``batch`` calls of a bare reference; ``check`` validates each result."""

    async def sample() -> int:
        results = []
        start = clock()
        for _ in range(batch):
            results.append(await step())
        elapsed = clock() - start
        if not all(check(result) for result in results):
            raise RuntimeError("a bare reference did not do its work")
        return elapsed // batch

    return sample


def general_path(sample: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """``sample`` with the engine's tight path off (every node through ``Run.execute``).

    The private switch of docs/internals.md ("The tight path"): the same
    pipeline, timed in the same rounds, with and without it.
    """

    async def general() -> int:
        _run._TIGHT = False
        try:
            return await sample()
        finally:
            _run._TIGHT = True

    return general


async def chain(settings: Settings, table: Table, figures: Figures) -> None:
    """Sequential stage nodes vs the bare-trio loop step."""
    reg = shapes.registry()
    length = settings.chain_length
    table_ = shapes.bare_chain_table(length)
    bare = bare_sampler(lambda: shapes.bare_chain(table_), lambda ctx: ctx["n"] == length)
    chain_pipeline, empty_pipeline = shapes.chain(reg, length), shapes.empty(reg)
    sampler = shapes.session_sampler(chain_pipeline, reg, n=length)
    empty = shapes.session_sampler(empty_pipeline, reg, batch=EMPTY_BATCH)
    run_chain, run_empty, run_bare, run_general = await interleave(
        [sampler, empty, bare, general_path(sampler)],
        settings,
    )
    per_node = (run_chain - run_empty) / length
    per_step = run_bare / length
    figures["chain_per_node"] = per_node
    r = ratio(per_node, per_step)
    table.add(
        Row(
            SECTION,
            f"sequential stage node, per node (chain of {length:,})",
            us(per_node),
            f"{us(per_step)} bare-trio loop step",
            times(r),
            at_most(8, r, "<=8x the bare-trio step"),
        )
    )
    general_per_node = (run_general - run_empty) / length
    table.add(
        Row(
            SECTION,
            f"sequential stage node, general path (tight path off, chain of {length:,})",
            us(general_per_node),
            f"{us(per_step)} bare-trio loop step",
            times(ratio(general_per_node, per_step)),
        )
    )
    table.add(
        Row(
            SECTION,
            f"{length:,}-node chain, Session() to result, vs a plain while loop",
            us(run_chain),
            f"{us(run_bare)} while loop over a dict graph",
            times(ratio(run_chain, run_bare)),
            at_most(10, ratio(run_chain, run_bare), "<=10x the loop"),
        )
    )

    # Peak memory of one whole run, next to the bare loop's.
    peaks = []
    for sample in (sampler, bare):
        settle()
        tracemalloc.start()
        await sample()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    table.add(
        Row(
            SECTION,
            f"peak memory of one run (chain of {length:,}, tracemalloc)",
            kib(peaks[0]),
            f"{kib(peaks[1])} bare-trio loop",
            times(ratio(peaks[0], peaks[1])),
        )
    )

    # What an event costs while it is kept: the bytes a finished run's result
    # holds (its history), per event, the terminal-only run's subtracted.
    held = []
    for pipeline in (chain_pipeline, empty_pipeline):
        settle()
        tracemalloc.start()
        session = stageflow.Session(pipeline, registry=reg, payload={"n": 0, "flag": True})
        result = await session.run()
        del session
        settle()
        held.append((tracemalloc.get_traced_memory()[0], len(result.history)))
        tracemalloc.stop()
        del result
    per_event = (held[0][0] - held[1][0]) / (held[0][1] - held[1][1])
    figures["event_bytes"] = per_event
    table.add(
        Row(
            SECTION,
            f"event retained in history (chain of {length:,}, tracemalloc)",
            size(per_event),
            "-",
            "-",
            at_most(120, per_event, "<=120 B"),
        )
    )


async def conditions(settings: Settings, table: Table, figures: Figures) -> None:
    """Condition nodes in a small and a large graph: the cost must stay flat."""
    reg = shapes.registry()
    per_node: list[float] = []
    sizes = settings.condition_sizes
    empty = shapes.session_sampler(shapes.empty(reg), reg, batch=EMPTY_BATCH)
    for graph_size, name in zip(sizes, ("small", "large"), strict=True):
        count = graph_size - 1
        batch = max(1, 500 // graph_size)
        table_ = shapes.bare_condition_table(graph_size)
        bare = bare_sampler(
            lambda table_=table_: shapes.bare_conditions(table_),
            lambda steps, count=count: steps == count,
            batch,
        )
        pipeline = shapes.conditions(reg, graph_size)
        run_graph, run_empty, run_bare = await interleave(
            [shapes.session_sampler(pipeline, reg, batch=batch), empty, bare], settings
        )
        cost = (run_graph - run_empty) / count
        per_node.append(cost)
        figures[f"condition_{name}"] = cost
        table.add(
            Row(
                SECTION,
                f"condition node, per node ({graph_size:,}-node graph)",
                us(cost),
                f"{us(run_bare / count)} bare lookup + JsonLogic",
                times(ratio(cost, run_bare / count)),
                at_most(figures.get("chain_per_node"), cost, "<= the sequential stage node"),
            )
        )
    flat = ratio(per_node[1], per_node[0])
    table.add(
        Row(
            SECTION,
            f"condition node, {sizes[1]:,}-node vs {sizes[0]:,}-node graph",
            us(per_node[1]),
            f"{us(per_node[0])} in the {sizes[0]:,}-node graph",
            times(flat),
            at_most(1.25, flat, "flat: <=1.25x"),
        )
    )


async def fanout(settings: Settings, table: Table, figures: Figures) -> None:
    """Parallel fan-out: per-branch cost vs a raw trio nursery child."""
    reg = shapes.registry()
    one = shapes.session_sampler(shapes.fanout(reg, 1), reg, batch=EMPTY_BATCH)
    bare_one = bare_sampler(lambda: shapes.bare_fanout(1), lambda ctx: len(ctx) == 2, EMPTY_BATCH)
    sizes = settings.fanout_sizes
    for branches, name in zip(sizes, ("small", "large"), strict=True):
        bare_many = bare_sampler(
            lambda branches=branches: shapes.bare_fanout(branches),
            lambda ctx, branches=branches: len(ctx) == branches + 1,
        )
        run_many, run_one, ref_many, ref_one = await interleave(
            [shapes.session_sampler(shapes.fanout(reg, branches), reg), one, bare_many, bare_one],
            settings,
        )
        per_branch = (run_many - run_one) / (branches - 1)
        per_child = (ref_many - ref_one) / (branches - 1)
        figures[f"fanout_{name}"] = per_branch
        r = ratio(per_branch, per_child)
        table.add(
            Row(
                SECTION,
                f"parallel branch, per branch (fan-out of {branches:,})",
                us(per_branch),
                f"{us(per_child)} raw trio nursery child",
                times(r),
                all_of(
                    "<=30 us and <=4x a nursery child",
                    at_most(30_000, per_branch, ""),
                    at_most(4, r, ""),
                ),
            )
        )


async def three_node_run(settings: Settings, table: Table, figures: Figures) -> None:
    """A 3-node run from ``Session(...)`` to its result: the fixed cost per run."""
    reg = shapes.registry()
    pipeline = shapes.three_nodes(reg)
    table_ = shapes.bare_chain_table(2)

    async def one_run() -> stageflow.SessionResult:
        return await stageflow.Session(pipeline, registry=reg, payload={"n": 0}).run()

    whole = bare_sampler(one_run, lambda result: result.artifacts == {"n": 2}, EMPTY_BATCH)
    run, ref, general = await interleave(
        [
            whole,
            bare_sampler(lambda: shapes.bare_chain(table_), lambda ctx: ctx["n"] == 2, EMPTY_BATCH),
            general_path(whole),
        ],
        settings,
    )
    figures["run3"] = run
    table.add(
        Row(
            SECTION,
            "3-node run, Session() to result (stage, stage, terminal)",
            us(run),
            f"{us(ref)} bare-trio loop, 2 steps",
            times(ratio(run, ref)),
        )
    )
    table.add(
        Row(
            SECTION,
            "3-node run, general path (tight path off)",
            us(general),
            f"{us(ref)} bare-trio loop, 2 steps",
            times(ratio(general, ref)),
        )
    )
