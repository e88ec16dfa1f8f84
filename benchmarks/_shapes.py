"""The pipelines the benchmarks run, and the bare trio code they are compared with.

The trivial stage reads one argument and returns one output (``n + 1``); the
bare references do the same lookup, await and dict merge by hand, with no
engine around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import trio

import stageflow

TRUE_RULE: Mapping[str, Any] = {"==": [{"var": "flag"}, True]}


def registry() -> stageflow.StageRegistry:
    """``Inc`` (the trivial stage) and ``Await`` (waits for one ``go`` input)."""
    reg = stageflow.StageRegistry()

    @reg.register("Inc")
    async def inc(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"n": ctx.arguments["n"] + 1}

    @reg.register("Await")
    async def await_go(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        return {"v": await ctx.wait_input("go")}

    return reg


def _doc(nodes: list[dict[str, Any]], entry: str) -> dict[str, Any]:
    return {"api_version": "1.0", "entry": entry, "nodes": nodes}


def _inc(node_id: str, next_id: str | None, out: str = "n") -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": node_id,
        "type": "stage",
        "stage": "Inc",
        "arguments": {"n": "n"},
        "outputs": {"n": out},
    }
    if next_id is not None:
        node["next"] = next_id
    return node


def _end(*artifacts: str) -> dict[str, Any]:
    return {"id": "end", "type": "terminal", "result": {"ok": True}, "artifacts": list(artifacts)}


def empty(reg: stageflow.StageRegistry) -> stageflow.Pipeline:
    """Just a terminal: what a run costs before any node of interest."""
    return stageflow.Pipeline.from_dict(_doc([_end()], "end"), registry=reg)


def chain(reg: stageflow.StageRegistry, length: int) -> stageflow.Pipeline:
    """``length`` trivial stage nodes in a row, then a terminal."""
    nodes = [_inc(f"s{i}", f"s{i + 1}" if i < length - 1 else "end") for i in range(length)]
    return stageflow.Pipeline.from_dict(_doc([*nodes, _end("n")], "s0"), registry=reg)


def conditions(reg: stageflow.StageRegistry, size: int) -> stageflow.Pipeline:
    """A graph of ``size`` nodes: ``size - 1`` condition nodes in a row, then a terminal.

    Each condition tests ``flag`` with one JsonLogic rule; the run passes
    through all of them.
    """
    count = size - 1
    nodes = [
        {
            "id": f"c{i}",
            "type": "condition",
            "conditions": [{"if": TRUE_RULE, "then": f"c{i + 1}" if i < count - 1 else "end"}],
            "else": "end",
        }
        for i in range(count)
    ]
    return stageflow.Pipeline.from_dict(_doc([*nodes, _end()], "c0"), registry=reg)


def fanout(reg: stageflow.StageRegistry, branches: int) -> stageflow.Pipeline:
    """A parallel node with ``branches`` one-stage branches, each writing its own path."""
    children = [f"b{i}" for i in range(branches)]
    nodes: list[dict[str, Any]] = [
        {"id": "fan", "type": "parallel", "children": children, "next": "end"},
        *(_inc(child, None, out=f"r{i}") for i, child in enumerate(children)),
        _end(),
    ]
    return stageflow.Pipeline.from_dict(_doc(nodes, "fan"), registry=reg)


def three_nodes(reg: stageflow.StageRegistry) -> stageflow.Pipeline:
    """stage -> stage -> terminal: the fixed cost of a run."""
    nodes = [_inc("a", "b"), _inc("b", "end"), _end("n")]
    return stageflow.Pipeline.from_dict(_doc(nodes, "a"), registry=reg)


def waiting(reg: stageflow.StageRegistry) -> stageflow.Pipeline:
    """One stage that waits for a ``go`` input, then a terminal."""
    nodes = [
        {"id": "wait", "type": "stage", "stage": "Await", "outputs": {"v": "v"}, "next": "end"},
        _end("v"),
    ]
    return stageflow.Pipeline.from_dict(_doc(nodes, "wait"), registry=reg)


def session_sampler(
    pipeline: stageflow.Pipeline,
    reg: stageflow.StageRegistry,
    options: Mapping[str, Any] | None = None,
    *,
    batch: int = 1,
    **artifacts: Any,
) -> Callable[[], Coroutine[Any, Any, int]]:
    """Time ``run()`` alone, per run; the sessions are built before the clock starts.

    ``batch`` runs are timed together (for runs so short that one alone is
    mostly timer and scheduler noise); ``options`` are extra keyword
    arguments for ``Session`` (a tracing switch); ``artifacts`` are checked
    after each run.
    """
    extra = dict(options or {})

    async def sample() -> int:
        sessions = [
            stageflow.Session(pipeline, registry=reg, payload={"n": 0, "flag": True}, **extra)
            for _ in range(batch)
        ]
        results = []
        start = time.perf_counter_ns()
        for session in sessions:
            results.append(await session.run())
        elapsed = time.perf_counter_ns() - start
        for result in results:
            check(result, **artifacts)
        return elapsed // batch

    return sample


def check(result: stageflow.SessionResult, **artifacts: Any) -> None:
    """Fail loudly when a benchmarked run did not do its work."""
    if result.status is not stageflow.SessionStatus.COMPLETED:
        raise RuntimeError(f"benchmark run ended {result.status.value}: {result.error}")
    for key, value in artifacts.items():
        if result.artifacts.get(key) != value:
            raise RuntimeError(f"benchmark run left {key}={result.artifacts.get(key)!r}")


# ------------------------------------------------------------ bare references


async def bare_inc(n: int) -> dict[str, int]:
    return {"n": n + 1}


def bare_chain_table(length: int) -> dict[str, tuple[Any, str, str | None]]:
    """node id -> (step function, argument key, next node id)."""
    return {
        f"s{i}": (bare_inc, "n", f"s{i + 1}" if i < length - 1 else None) for i in range(length)
    }


async def bare_chain(table: Mapping[str, tuple[Any, str, str | None]]) -> dict[str, Any]:
    """The bare-trio loop: look the node up, await its function, merge the dict."""
    ctx: dict[str, Any] = {"n": 0}
    node: str | None = "s0"
    while node is not None:
        fn, arg, node = table[node]
        ctx.update(await fn(ctx[arg]))
    return ctx


def bare_condition_table(size: int) -> dict[str, tuple[Any, str, str | None]]:
    """node id -> (rule, then, else) for ``size - 1`` conditions."""
    count = size - 1
    return {
        f"c{i}": (TRUE_RULE, f"c{i + 1}" if i < count - 1 else "end", "end") for i in range(count)
    }


async def bare_conditions(table: Mapping[str, tuple[Any, str, str | None]]) -> int:
    """Look each condition up and evaluate its rule with the same JsonLogic evaluator."""
    data = {"flag": True}
    node: str | None = "c0"
    steps = 0
    apply = stageflow.jsonlogic.apply
    truthy = stageflow.jsonlogic.truthy
    while node is not None and node != "end":
        rule, then, else_ = table[node]
        node = then if truthy(apply(rule, data)) else else_
        steps += 1
    return steps


async def bare_fanout(branches: int) -> dict[str, Any]:
    """A raw trio nursery with one child per branch doing the trivial step."""
    ctx: dict[str, Any] = {"n": 0}
    results: list[dict[str, int]] = [{}] * branches

    async def child(i: int) -> None:
        results[i] = await bare_inc(ctx["n"])

    async with trio.open_nursery() as nursery:
        for i in range(branches):
            nursery.start_soon(child, i)
    for i, out in enumerate(results):
        ctx[f"r{i}"] = out["n"]
    return ctx
