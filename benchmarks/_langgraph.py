"""The same shapes on LangGraph, installed only in the benchmark environment.

Each LangGraph figure is measured with its sync API (``invoke``) and with its
async API (``ainvoke`` on asyncio, async node functions), and the faster of
the two is reported, so the comparison never flatters stageflow. stageflow
runs the same shape in the same interleaved rounds as LangGraph: on trio
next to ``invoke`` (called from the trio task), on asyncio next to
``ainvoke``. The reference column holds stageflow's figure from the rounds
of the mode reported, so load changes both sides alike; the ratio is
LangGraph / stageflow.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import statistics
import tracemalloc
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypedDict

import trio
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from benchmarks import _shapes
from benchmarks._harness import (
    Row,
    Settings,
    Table,
    at_least,
    clock,
    interleave,
    kib,
    ratio,
    settle,
    times,
    us,
)

SECTION = "langgraph"


class Counter(TypedDict):
    n: int


class Flagged(TypedDict):
    flag: bool


class Fanned(TypedDict):
    n: int
    r: Annotated[list[int], operator.add]


class Waiting(TypedDict):
    v: Any


def _inc_nodes(mode: str) -> Callable[..., Any]:
    if mode == "async":

        async def inc_async(state: Counter) -> dict[str, int]:
            return {"n": state["n"] + 1}

        return inc_async

    def inc(state: Counter) -> dict[str, int]:
        return {"n": state["n"] + 1}

    return inc


def chain_graph(length: int, mode: str) -> Any:
    graph = StateGraph(Counter)
    fn = _inc_nodes(mode)
    for i in range(length):
        graph.add_node(f"s{i}", fn)
    graph.add_edge(START, "s0")
    for i in range(length - 1):
        graph.add_edge(f"s{i}", f"s{i + 1}")
    graph.add_edge(f"s{length - 1}", END)
    return graph.compile()


def condition_graph(size: int, mode: str) -> Any:
    """``size - 1`` pass-through nodes, each followed by a conditional edge on ``flag``."""
    count = size - 1
    graph = StateGraph(Flagged)

    def route(state: Flagged) -> bool:
        return state["flag"] is True

    if mode == "async":

        async def passthrough_async(state: Flagged) -> None:
            return None

        node: Callable[..., Any] = passthrough_async
    else:

        def passthrough(state: Flagged) -> None:
            return None

        node = passthrough
    for i in range(count):
        graph.add_node(f"c{i}", node)
    graph.add_edge(START, "c0")
    for i in range(count):
        target = f"c{i + 1}" if i < count - 1 else END
        graph.add_conditional_edges(f"c{i}", route, {True: target, False: END})
    return graph.compile()


def fanout_graph(branches: int, mode: str) -> Any:
    graph = StateGraph(Fanned)
    if mode == "async":

        async def branch_async(state: Fanned) -> dict[str, list[int]]:
            return {"r": [state["n"] + 1]}

        async def fan_async(state: Fanned) -> None:
            return None

        branch: Callable[..., Any] = branch_async
        fan: Callable[..., Any] = fan_async
    else:

        def branch_sync(state: Fanned) -> dict[str, list[int]]:
            return {"r": [state["n"] + 1]}

        def fan_sync(state: Fanned) -> None:
            return None

        branch, fan = branch_sync, fan_sync
    graph.add_node("fan", fan)
    graph.add_edge(START, "fan")
    for i in range(branches):
        graph.add_node(f"b{i}", branch)
        graph.add_edge("fan", f"b{i}")
        graph.add_edge(f"b{i}", END)
    return graph.compile()


def waiting_graph(mode: str) -> Any:
    graph = StateGraph(Waiting)
    if mode == "async":

        async def wait_async(state: Waiting) -> dict[str, Any]:
            return {"v": interrupt("go")}

        graph.add_node("wait", wait_async)
    else:

        def wait_sync(state: Waiting) -> dict[str, Any]:
            return {"v": interrupt("go")}

        graph.add_node("wait", wait_sync)
    graph.add_edge(START, "wait")
    graph.add_edge("wait", END)
    return graph.compile(checkpointer=InMemorySaver())


# ------------------------------------------------------------------ timing

LIMIT = {"recursion_limit": 100_000}


Ours = Sequence[Callable[[], Coroutine[Any, Any, int]]]


def _medians(
    graphs: list[Any],
    inputs: list[Any],
    check: Callable[[Any, int], None],
    ours: Ours,
    settings: Settings,
) -> dict[str, tuple[list[float], list[float]]]:
    """Median ns per invocation of each graph and of each of ``ours``, for each mode.

    ``ours`` are stageflow samplers of the same shapes, interleaved with
    LangGraph's in the same rounds: on trio for the sync mode, on asyncio
    for the async one.
    """
    repeats = settings.fewer(7)

    def sync_sampler(i: int) -> Callable[[], Coroutine[Any, Any, int]]:
        graph = graphs[i]["sync"]

        async def sample() -> int:
            start = clock()
            result = graph.invoke(inputs[i], LIMIT)  # blocks the trio task, as intended
            elapsed = clock() - start
            check(result, i)
            return elapsed

        return sample

    def async_sampler(i: int) -> Callable[[], Coroutine[Any, Any, int]]:
        graph = graphs[i]["async"]

        async def sample() -> int:
            start = clock()
            result = await graph.ainvoke(inputs[i], LIMIT)
            elapsed = clock() - start
            check(result, i)
            return elapsed

        return sample

    out: dict[str, tuple[list[float], list[float]]] = {}
    count = len(graphs)
    sync = [sync_sampler(i) for i in range(count)] + list(ours)
    medians = trio.run(functools.partial(interleave, sync, settings, repeats=repeats))
    out["sync"] = (medians[:count], medians[count:])
    async_ = [async_sampler(i) for i in range(count)] + list(ours)
    medians = asyncio.run(interleave(async_, settings, repeats=repeats))
    out["async"] = (medians[:count], medians[count:])
    return out


def _per_item(
    medians: dict[str, tuple[list[float], list[float]]], count: int
) -> tuple[float, str, float]:
    """(large - small) / (count - 1) in LangGraph's faster mode, the mode, and stageflow's."""
    best = min(medians, key=lambda mode: medians[mode][0][0])
    theirs, ours = medians[best]
    return (theirs[0] - theirs[1]) / (count - 1), best, (ours[0] - ours[1]) / (count - 1)


def _row(
    table: Table,
    label: str,
    value: float,
    mode: str,
    reference: float | None,
    what: str,
    interleaved: bool = True,
    **budget: Any,
) -> None:
    r = ratio(value, reference)
    # stageflow measured in LangGraph's rounds: on trio next to invoke, on asyncio next to ainvoke.
    where = f" ({'trio' if mode == 'sync' else 'asyncio'}, same rounds)" if interleaved else ""
    table.add(
        Row(
            SECTION,
            f"LangGraph: {label} [{mode}]",
            us(value),
            f"{us(reference) if reference is not None else 'n/a'} stageflow {what}{where}",
            times(r),
            at_least(budget["least"], r, budget["text"]) if budget else None,
        )
    )


def shapes(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    """Chain, conditional, fan-out and 3-node run on LangGraph and stageflow, interleaved."""
    reg = _shapes.registry()

    def ours(*pipelines: Any, batch: int = 1) -> Ours:
        return [_shapes.session_sampler(p, reg, batch=batch) for p in pipelines]

    # Chain: (N-node chain - 1-node chain) / (N - 1).
    length = settings.chain_length
    graphs = [{m: chain_graph(n, m) for m in ("sync", "async")} for n in (length, 1)]

    def check_chain(result: Any, i: int) -> None:
        if result["n"] != (length if i == 0 else 1):
            raise RuntimeError(f"LangGraph chain ended with n={result['n']}")

    chains = ours(_shapes.chain(reg, length), _shapes.chain(reg, 1))
    value, mode, reference = _per_item(
        _medians(graphs, [{"n": 0}] * 2, check_chain, chains, settings), length
    )
    _row(
        table,
        f"sequential node, per node (chain of {length:,})",
        value,
        mode,
        reference,
        "per node",
        least=30,
        text="stageflow >=30x cheaper",
    )

    # Conditional edges in the same two graph sizes as stageflow's condition nodes.
    for graph_size in settings.condition_sizes:
        graphs = [{m: condition_graph(n, m) for m in ("sync", "async")} for n in (graph_size, 2)]

        def check_flag(result: Any, i: int) -> None:
            if result["flag"] is not True:
                raise RuntimeError("LangGraph conditional graph lost its state")

        conditions = ours(_shapes.conditions(reg, graph_size), _shapes.conditions(reg, 2))
        value, mode, reference = _per_item(
            _medians(graphs, [{"flag": True}] * 2, check_flag, conditions, settings),
            graph_size - 1,
        )
        _row(
            table,
            f"node + conditional edge, per node ({graph_size:,}-node graph)",
            value,
            mode,
            reference,
            "condition node",
        )

    # Fan-out: (N branches - 1 branch) / (N - 1).
    for branches in settings.fanout_sizes:
        graphs = [{m: fanout_graph(n, m) for m in ("sync", "async")} for n in (branches, 1)]

        def check_fan(result: Any, i: int, branches: int = branches) -> None:
            if len(result["r"]) != (branches if i == 0 else 1):
                raise RuntimeError("LangGraph fan-out lost a branch")

        fans = ours(_shapes.fanout(reg, branches), _shapes.fanout(reg, 1))
        value, mode, reference = _per_item(
            _medians(graphs, [{"n": 0, "r": []}] * 2, check_fan, fans, settings), branches
        )
        _row(
            table,
            f"parallel branch, per branch (fan-out of {branches:,})",
            value,
            mode,
            reference,
            "per branch",
            least=10,
            text="stageflow >=10x cheaper",
        )

    # A 3-node run: two nodes and the end.
    graphs = [{m: chain_graph(2, m) for m in ("sync", "async")}]

    def check_run(result: Any, i: int) -> None:
        if result["n"] != 2:
            raise RuntimeError("LangGraph 3-node run did not run both nodes")

    medians = _medians(
        graphs, [{"n": 0}], check_run, ours(_shapes.three_nodes(reg), batch=10), settings
    )
    mode = min(medians, key=lambda m: medians[m][0][0])
    _row(
        table,
        "2 nodes + end, invoke to result",
        medians[mode][0][0],
        mode,
        medians[mode][1][0],
        "3-node run",
        least=20,
        text="stageflow >=20x cheaper",
    )


def _paused_sweep(mode: str, count: int, memory: bool) -> tuple[int, int, int]:
    graph = waiting_graph(mode)
    configs = [{"configurable": {"thread_id": f"t{i}"}} for i in range(count)]
    settle()
    if memory:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if memory else 0

    async def drive() -> tuple[int, int, int, list[Any]]:
        start = clock()
        for config in configs:
            await graph.ainvoke({"v": None}, config)
        paused = clock()
        held = tracemalloc.get_traced_memory()[0] - base if memory else 0
        if memory:
            tracemalloc.stop()
        results = [await graph.ainvoke(Command(resume={"x": 1}), c) for c in configs]
        return start, paused, held, results

    if mode == "async":
        start, paused, held, results = asyncio.run(drive())
    else:
        start = clock()
        for config in configs:
            graph.invoke({"v": None}, config)
        paused = clock()
        held = tracemalloc.get_traced_memory()[0] - base if memory else 0
        if memory:
            tracemalloc.stop()
        results = [graph.invoke(Command(resume={"x": 1}), c) for c in configs]
    done = clock()
    if any(result != {"v": {"x": 1}} for result in results):
        raise RuntimeError("a LangGraph run did not resume with its input")
    return paused - start, done - paused, held


def paused(settings: Settings, table: Table, figures: dict[str, float | None]) -> None:
    """Runs paused in ``interrupt()`` with an in-memory checkpointer: memory and time each."""
    count = settings.size(1000, 20)
    rounds = settings.fewer(3)
    stats: dict[str, tuple[float, float]] = {}
    for mode in ("sync", "async"):
        _paused_sweep(mode, min(count, 100), False)
        pauses, resumes = [], []
        for _ in range(rounds):
            pause, resume, _ = _paused_sweep(mode, count, False)
            pauses.append(pause)
            resumes.append(resume)
        stats[mode] = (statistics.median(pauses) / count, statistics.median(resumes) / count)
    _, _, held = _paused_sweep("sync", count, True)
    held_each = held / count
    stageflow_held = figures.get("paused_live_small_bytes")
    table.add(
        Row(
            SECTION,
            f"LangGraph: paused run, memory each ({count:,} paused, InMemorySaver)",
            kib(held_each),
            f"{kib(stageflow_held) if stageflow_held is not None else 'n/a'} stageflow session",
            times(ratio(held_each, stageflow_held)),
        )
    )
    for index, what in ((0, "pause"), (1, "resume")):
        mode = min(stats, key=lambda m: stats[m][index])
        _row(
            table,
            f"paused run, time to {what} ({count:,})",
            stats[mode][index],
            mode,
            figures.get(f"paused_live_small_{what}"),
            f"time to {what}",
            interleaved=False,
        )
