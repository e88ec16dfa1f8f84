"""The tight path (``Run.run_path`` over simple stage nodes) against the general one.

Random pipelines (``tight_support``: conditions, retries, timeouts, error
edges, parallel branches, a map, a subpipeline, waits for inputs answered
live or across suspend and restore, a ``cancel()`` from a stage, step limits,
tracing and metrics on and off, with and without a subscriber) run once with
the tight path and once with every node through ``Run.execute``; results,
histories, a snapshot at every event (at the end of each run when nothing
subscribes), the span trees and the metrics' data points must be the same.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import trio.testing
from fakes import doc, fake_registry, map_node, parallel, stage, terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tight_support import BLOCKS, Recording, general_path, record_run

import stageflow
from stageflow import _events
from stageflow._engine import _run

PLANS = st.fixed_dictionaries(
    {
        "blocks": st.lists(
            st.tuples(st.sampled_from(BLOCKS), st.integers(min_value=0, max_value=3)),
            min_size=1,
            max_size=7,
        ),
        "traced": st.booleans(),
        "metered": st.booleans(),
        "suspend": st.booleans(),
        "max_steps": st.sampled_from([None, None, None, 3, 9]),
        "watched": st.booleans(),
    }
)


def _both(backend: str, plan: dict[str, Any]) -> tuple[Recording, Recording]:
    def once() -> Recording:
        options: dict[str, Any] = {}
        if backend == "trio":
            options["clock"] = trio.testing.MockClock(autojump_threshold=0)
            # The same order of tasks in both runs: trio shuffles each batch
            # of runnable tasks with this generator (deterministically under
            # Hypothesis, but the second run would go on from the first's state).
            trio._core._run._r.seed(0)
        return anyio.run(lambda: record_run(**plan), backend=backend, backend_options=options)

    assert _run._TIGHT
    tight = once()
    with general_path():
        general = once()
    return tight, general


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=PLANS)
def test_tight_and_general_paths_are_indistinguishable(backend: str, plan: dict[str, Any]) -> None:
    if backend == "asyncio" and any(kind == "flaky" for kind, _ in plan["blocks"]):
        # A retry's delay on asyncio is real time: whether a restored run
        # finds it passed or suspends again depends on the machine, not on
        # the path. Suspend mode with timers is covered on trio (virtual time).
        plan = {**plan, "suspend": False}
    tight, general = _both(backend, plan)
    assert tight.results == general.results
    assert tight.events == general.events
    assert tight.snapshots == general.snapshots
    assert tight.spans == general.spans
    assert tight.metrics == general.metrics


def _calls_of(
    monkeypatch: pytest.MonkeyPatch, name: str, blocks: list[tuple[str, int]], traced: bool
) -> tuple[int, int]:
    """How many times ``Run.<name>`` ran for ``blocks``: tight path, then general path."""
    calls = [0]
    method = getattr(_run.Run, name)

    async def counting(self: _run.Run, *args: Any) -> Any:
        calls[0] += 1
        return await method(self, *args)

    monkeypatch.setattr(_run.Run, name, counting)
    plan = {"blocks": blocks, "traced": traced, "suspend": False, "max_steps": None}
    anyio.run(lambda: record_run(**plan), backend="trio")
    tight, calls[0] = calls[0], 0
    with general_path():
        anyio.run(lambda: record_run(**plan), backend="trio")
    return tight, calls[0]


@pytest.mark.parametrize("traced", [False, True])
def test_the_tight_path_is_taken(monkeypatch: pytest.MonkeyPatch, traced: bool) -> None:
    """Stage nodes and terminals skip ``execute()``, traced or not; with the switch off not."""
    # No node; then every node.
    assert _calls_of(monkeypatch, "execute", [("chain", 0), ("set", 0)], traced) == (0, 5)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("suspend", [False, True])
@pytest.mark.parametrize("traced", [False, True])
def test_terminals_in_branches_and_after_a_resume_are_alike_on_both_paths(
    backend: str, suspend: bool, traced: bool
) -> None:
    """A terminal in a branch ends the session alike; so does one reached after a restore."""
    for blocks in ([("set", 0), ("parallel_end", 0), ("set", 0)], [("wait", 0), ("set", 0)]):
        plan = {
            "blocks": blocks,
            "traced": traced,
            "metered": traced,
            "suspend": suspend,
            "max_steps": None,
            "watched": not traced,
        }
        tight, general = _both(backend, plan)
        assert tight == general
        assert tight.results


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("fails", [0, 1, 2, 3])
@pytest.mark.parametrize(("watched", "max_steps"), [(True, None), (False, None), (True, 3)])
def test_one_node_map_bodies_are_alike_on_both_paths(
    backend: str, fails: int, watched: bool, max_steps: int | None
) -> None:
    """Every ``map_one`` body (echoing, failing tolerated and not, cancelling), every way."""
    plan = {
        "blocks": [("map_one", fails), ("map_one", 0)],
        "traced": False,
        "metered": False,
        "suspend": False,
        "max_steps": max_steps,
        "watched": watched,
    }
    tight, general = _both(backend, plan)
    assert tight == general


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("fails", [0, 1, 2, 3])
@pytest.mark.parametrize(("watched", "max_steps"), [(True, None), (False, None), (True, 3)])
def test_one_node_branches_are_alike_on_both_paths(
    backend: str, fails: int, watched: bool, max_steps: int | None
) -> None:
    """Every ``parallel_one`` block (echoing, failing, racing, cancelling), every way."""
    plan = {
        "blocks": [("parallel_one", fails), ("parallel_one", 0)],
        "traced": False,
        "metered": False,
        "suspend": False,
        "max_steps": max_steps,
        "watched": watched,
    }
    tight, general = _both(backend, plan)
    assert tight == general


@pytest.mark.parametrize(
    ("traced", "fails", "workers"), [(False, 0, 1), (False, 1, 2), (True, 0, 0)]
)
def test_a_one_node_map_body_runs_through_run_items(
    monkeypatch: pytest.MonkeyPatch, traced: bool, fails: int, workers: int
) -> None:
    """Untraced, each worker runs its new items of a one-stage-node body in one ``run_items``.

    No item then goes through ``run_child``; traced, or on the general path, each does.
    """
    # Two items, echoed (one worker) or failing (two workers); none off the tight path.
    blocks = [("map_one", fails), ("set", 0)]
    assert _calls_of(monkeypatch, "run_items", blocks, traced) == (workers, 0)
    assert _calls_of(monkeypatch, "run_child", blocks, traced) == (0 if workers else 2, 2)


@pytest.mark.anyio
@pytest.mark.parametrize("tight", [True, False])
async def test_a_subscriber_that_joins_mid_run_sees_every_later_event(tight: bool) -> None:
    """A stage subscribes while the tight path records quietly: nothing after it is missed."""
    stages = stageflow.StageRegistry()
    seen: list[tuple[str, str | None]] = []
    holder: list[stageflow.Session] = []

    @stages.register("Join")
    async def join(ctx: stageflow.StageContext) -> dict[str, Any]:
        holder[0].subscribe(lambda event: seen.append((event.type, event.node_id)))
        return {}

    @stages.register("Step")
    async def step(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"n": ctx.arguments["n"] + 1}

    nodes = [
        stage("a", "Step", arguments={"n": "n"}, outputs={"n": "n"}, next="join"),
        stage("join", "Join", next="b"),
        stage("b", "Step", arguments={"n": "n"}, outputs={"n": "n"}, next="end"),
        terminal("end", "n"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)
    session = stageflow.Session(pipeline, registry=stages, payload={"n": 0})
    holder.append(session)
    with contextlib.nullcontext() if tight else general_path():
        result = await session.run()
    assert result.artifacts == {"n": 2}
    assert seen[:3] == [("node_finished", "join"), ("node_started", "b"), ("node_finished", "b")]
    assert [(e.type, e.node_id) for e in result.history][-len(seen) :] == seen


@pytest.mark.anyio
async def test_nodes_of_a_subpipeline_named_as_the_pipelines_own_keep_their_own_plans() -> None:
    # The plans are kept per graph by node id: a subpipeline's "a" (a
    # condition) and "end" are not the pipeline's "a" (a stage) and "end".
    stages = fake_registry()
    inner = {
        "entry": "a",
        "nodes": [
            {"id": "a", "type": "condition", "conditions": [{"if": {"var": "no"}, "then": "end"}],
             "else": "b"},
            stage("b", "Set", config={"values": {"v": 7}}, outputs={"v": "v"}, next="end"),
            terminal("end", "v"),
        ],
    }  # fmt: skip
    nodes = [
        stage("a", "Set", config={"values": {"y": 1}}, outputs={"y": "y"}, next="b"),
        {"id": "b", "type": "subpipeline", "pipeline": "inner", "artifacts": {"v": "v"},
         "next": "end"},
        terminal("end", "y", "v"),
    ]  # fmt: skip
    pipeline = stageflow.Pipeline.from_dict(
        doc(nodes, subpipelines={"inner": inner}), registry=stages
    )
    outcomes = []
    for path in (contextlib.nullcontext(), general_path()):
        with path:
            result = await stageflow.Session(pipeline, registry=stages).run()
        outcomes.append(
            (
                result.status,
                dict(result.artifacts),
                [(e.type, e.path, e.node_id, dict(e.payload)) for e in result.history],
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == (stageflow.SessionStatus.COMPLETED, {"y": 1, "v": 7})
    started = [
        (path, node, payload["node_type"])
        for kind, path, node, payload in outcomes[0][2]
        if kind == "node_started"
    ]
    assert started == [
        ("", "a", "stage"), ("", "b", "subpipeline"), ("b", "a", "condition"),
        ("b", "b", "stage"), ("b", "end", "terminal"), ("", "end", "terminal"),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_a_condition_that_matches_nothing_fails_alike_on_both_paths() -> None:
    stages = stageflow.StageRegistry()
    nodes = [
        {
            "id": "c",
            "type": "condition",
            "conditions": [{"if": {"var": "flag"}, "then": "end"}],
        },
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)
    outcomes = []
    for path in (contextlib.nullcontext(), general_path()):
        with path:
            result = await stageflow.Session(
                pipeline, registry=stages, payload={"flag": False}
            ).run()
        outcomes.append(
            (
                result.status,
                str(result.error),
                [(e.type, e.node_id, dict(e.payload)) for e in result.history],
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] is stageflow.SessionStatus.FAILED
    assert [kind for kind, _, _ in outcomes[0][2]][-3:] == [
        "node_started",
        "node_failed",
        "session_failed",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("tight", [True, False])
async def test_a_rule_past_a_jsonlogic_bound_fails_its_condition_node_by_name(
    tight: bool,
) -> None:
    """A ConditionError naming the node (in a branch too), the JsonLogicError its cause."""
    stages = stageflow.StageRegistry()
    doubled = {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}
    too_long = {"==": [{"reduce": [{"var": "steps"}, doubled, "xx"]}, "y"]}
    nodes = [
        parallel("fan", ["c"], next="end"),
        {
            "id": "c",
            "type": "condition",
            "conditions": [{"if": False, "then": "end"}, {"if": too_long, "then": "end"}],
            "else": "end",
        },
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)
    session = stageflow.Session(pipeline, registry=stages, payload={"steps": list(range(40))})
    with contextlib.nullcontext() if tight else general_path():
        result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.ConditionError)
    assert result.error.node_id == "c"
    assert "the 'if' of conditions[1] ($.nodes[1].conditions[1].if)" in str(result.error)
    assert isinstance(result.error.__cause__, stageflow.JsonLogicError)
    failed = [e for e in result.history if e.type == "node_failed" and e.node_id == "c"]
    assert failed[0].payload["error"]["type"] == "ConditionError"


@pytest.mark.anyio
@pytest.mark.parametrize("tight", [True, False])
async def test_a_rule_of_nested_loops_fails_its_condition_node_within_the_steps(
    tight: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loops in loops multiply: past jsonlogic.MAX_STEPS, a ConditionError naming the node.

    With the real bound, six loops over 30 items froze the event loop for
    hours; here a lower bound keeps the test short.
    """
    monkeypatch.setattr(stageflow.jsonlogic, "MAX_STEPS", 10_000, raising=False)
    loops: Any = {"var": "found"}
    for _ in range(3):  # 27,000 rules
        loops = {"some": [list(range(30)), {"if": [True, loops, False]}]}
    nodes = [
        {
            "id": "c",
            "type": "condition",
            "conditions": [{"if": loops, "then": "end"}],
            "else": "end",
        },
        terminal("end"),
    ]
    stages = stageflow.StageRegistry()
    pipeline = stageflow.Pipeline.from_dict(doc(nodes, entry="c"), registry=stages)
    session = stageflow.Session(pipeline, registry=stages, payload={})
    with contextlib.nullcontext() if tight else general_path():
        result = await session.run()
    assert result.status is stageflow.SessionStatus.FAILED
    assert isinstance(result.error, stageflow.ConditionError)
    assert result.error.node_id == "c"
    assert "the 'if' of conditions[0] ($.nodes[0].conditions[0].if)" in str(result.error)
    assert "took more than 10,000 steps" in str(result.error)
    assert isinstance(result.error.__cause__, stageflow.JsonLogicError)


@pytest.mark.anyio
async def test_a_condition_error_in_a_subpipeline_names_where_the_rule_is() -> None:
    """The node id says what, the document path where: the subpipeline's node, not the top's."""
    doubled = {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}
    too_long = {"==": [{"reduce": [list(range(40)), doubled, "xx"]}, "y"]}
    inner = {
        "entry": "c",
        "nodes": [
            {"id": "c", "type": "condition", "conditions": [{"if": too_long, "then": "t"}]},
            terminal("t"),
        ],
    }
    nodes = [
        {"id": "call", "type": "subpipeline", "pipeline": "inner", "next": "end"},
        terminal("end"),
    ]
    stages = stageflow.StageRegistry()
    document = doc(nodes, subpipelines={"inner": inner})
    pipeline = stageflow.Pipeline.from_dict(document, registry=stages)
    result = await stageflow.Session(pipeline, registry=stages).run()
    assert isinstance(result.error, stageflow.ConditionError)
    assert result.error.node_id == "c"
    where = "($.subpipelines.inner.nodes[0].conditions[0].if)"
    assert f"condition node 'c': the 'if' of conditions[0] {where}" in str(result.error)


@pytest.mark.anyio
async def test_a_stage_sees_the_same_context_on_both_paths() -> None:
    """Every attribute of the context the tight path builds itself, in a branch and a map item."""
    stages = stageflow.StageRegistry()
    seen: list[list[Any]] = []

    @stages.register("Look")
    async def look(ctx: stageflow.StageContext) -> dict[str, Any]:
        seen[-1].append(
            (
                dict(ctx.arguments),
                dict(ctx.config),
                ctx.session_id,
                ctx.node_id,
                ctx.node_path,
                ctx.execution_key,
                ctx.stage,
                ctx.attempt,
                ctx.spec,
            )
        )
        return {"n": ctx.arguments.get("n", 0) + 1}

    nodes = [
        stage("a", "Look", arguments={"n": "n"}, outputs={"n": "n"}, next="fan"),
        parallel("fan", ["l", "r"], next="each"),
        stage("l", "Look", arguments={"n": "n"}, outputs={"n": "ln"}),
        stage("r", "Look", outputs={"n": "rn"}),
        # A body of one simple stage node: Run.run_items builds its context.
        map_node("each", "m", {"n": "mn"}, next="end"),
        stage("m", "Look", arguments={"n": "item"}, outputs={"n": "n"}),
        terminal("end", "n", "ln", "rn", "mn"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)
    artifacts = []
    for path in (contextlib.nullcontext(), general_path()):
        seen.append([])
        with path:
            result = await stageflow.Session(
                pipeline, registry=stages, payload={"n": 1, "items": [5, 6]}, session_id="s-1"
            ).run()
        artifacts.append(result.artifacts)
    assert artifacts[0] == artifacts[1] == {"n": 2, "ln": 3, "rn": 1, "mn": [6, 7]}
    assert sorted(seen[0], key=repr) == sorted(seen[1], key=repr)
    assert len(seen[0]) == 5


def _traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.anyio
@pytest.mark.parametrize("tight", [True, False])
@pytest.mark.parametrize("fails", [False, True])
async def test_a_context_a_stage_leaves_attached_does_not_relabel_the_node_events(
    tight: bool, fails: bool
) -> None:
    """The node's end event carries its span's ids on both paths, whatever the stage left."""
    provider, _ = _traced()
    stages = stageflow.StageRegistry()

    @stages.register("Leak")
    async def leak(ctx: stageflow.StageContext) -> dict[str, Any]:
        own = provider.get_tracer("user").start_span("user work")
        otel_context.attach(trace.set_span_in_context(own))  # never detached
        own.end()
        if fails:
            raise ValueError("after leaking")
        return {}

    pipeline = stageflow.Pipeline.from_dict(
        doc([stage("s", "Leak", next="end"), terminal("end")]), registry=stages
    )
    with contextlib.nullcontext() if tight else general_path():
        result = await stageflow.Session(pipeline, registry=stages, tracer_provider=provider).run()
    events = {e.type: e for e in result.history if e.node_id == "s"}
    started = events["node_started"]
    finished = events["node_failed" if fails else "node_finished"]
    assert started.span_id is not None
    assert (finished.trace_id, finished.span_id, finished.parent_span_id) == (
        started.trace_id,
        started.span_id,
        started.parent_span_id,
    )


@pytest.mark.parametrize("tight", [True, False])
def test_an_interrupt_while_a_condition_is_tested_names_no_branch(tight: bool) -> None:
    """A KeyboardInterrupt from a condition's test: the span says no branch was taken."""
    provider, exporter = _traced()
    stages = stageflow.StageRegistry()
    nodes = [
        {
            "id": "c",
            "type": "condition",
            "conditions": [{"if": {"var": "nope"}, "then": "end"}, {"if": True, "then": "end"}],
            "else": "end",
        },
        terminal("end"),
    ]
    pipeline = stageflow.Pipeline.from_dict(doc(nodes), registry=stages)

    def interrupted(data: Any) -> bool:
        raise KeyboardInterrupt

    (node,) = [n for n in pipeline.nodes if n.id == "c"]
    # Ctrl-C delivered while the second test runs (the plan reads the
    # compiled test from the node, so it is replaced before the run).
    object.__setattr__(node.conditions[1], "matches", interrupted)

    async def run() -> None:
        await stageflow.Session(pipeline, registry=stages, tracer_provider=provider).run()

    with contextlib.nullcontext() if tight else general_path(), pytest.raises(KeyboardInterrupt):
        trio.run(run)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "condition c"]
    assert span.attributes is not None
    assert "stageflow.condition.branch" not in span.attributes
    # Cancelled, as the session is (a KeyboardInterrupt is no failure of the node).
    assert span.attributes["stageflow.outcome"] == "cancelled"
    assert span.attributes["stageflow.cancel.reason"] == "cancelled"


async def alive_while_waiting(
    session: stageflow.Session, probe: Callable[[object], bool]
) -> list[object]:
    """The objects ``probe`` picks while ``session`` waits for ``go``; then it completes."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await anyio.wait_all_tasks_blocked()
        assert session.waiting_for() == ("go",)
        gc.collect()
        alive = [o for o in gc.get_objects() if probe(o)]
        session.send_input("go", 1)
    assert session.status is stageflow.SessionStatus.COMPLETED
    return alive


@pytest.mark.anyio
@pytest.mark.parametrize(
    "waiter_fields",
    [{}, {"config": {"k": 1}}, {"retry": {"attempts": 2}}],
    ids=["direct", "with-config", "through-execute"],
)
async def test_a_waiting_node_keeps_no_copy_of_earlier_arguments(
    waiter_fields: dict[str, Any],
) -> None:
    """While a node waits, the path's frame holds no copy of an earlier node's arguments.

    A waiting session keeps that frame for as long as it waits: an earlier
    node's argument dict (its values copied from the context) must be gone,
    whether the waiting node takes the loop's own way (no config),
    ``StageExecutor.context`` (a config) or ``Run.execute`` (a retry policy).
    """
    stages = stageflow.StageRegistry()

    @stages.register("Use")
    async def use(ctx: stageflow.StageContext) -> dict[str, Any]:
        assert len(ctx.arguments["probe_blob"]) == 50
        return {}

    @stages.register("Wait")
    async def wait(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": await ctx.wait_input("go")}

    waiting = {**stage("b", "Wait", outputs={"v": "v"}, next="end"), **waiter_fields}
    pipeline = stageflow.Pipeline.from_dict(
        doc(
            [
                stage("a", "Use", arguments={"probe_blob": "blob"}, next="b"),
                waiting,
                terminal("end"),
            ]
        ),
        registry=stages,
    )
    session = stageflow.Session(
        pipeline, registry=stages, payload={"blob": [{"i": i} for i in range(50)]}
    )
    # Stage "a"'s argument dict is the only dict keyed by "probe_blob".
    assert (
        await alive_while_waiting(session, lambda o: type(o) is dict and set(o) == {"probe_blob"})
        == []
    )


class ProbeError(Exception):
    """Raised by the stage whose error must not outlive its node."""


@pytest.mark.anyio
@pytest.mark.parametrize(
    "waiter_fields", [{}, {"retry": {"attempts": 2}}], ids=["tight", "through-execute"]
)
async def test_a_waiting_node_keeps_no_earlier_outputs_or_error(
    waiter_fields: dict[str, Any],
) -> None:
    """While a node waits, an earlier node's outputs and a routed error are gone.

    "a" writes a list that "b" (a config: StageExecutor's way, which leaves
    the loop's own locals as "a" left them) overwrites in the context; "c"
    fails and its error edge leads to "d", which waits. Neither "a"'s list
    nor "c"'s error (with its traceback, and the frames it holds) may be kept
    alive by the path's frame meanwhile.
    """
    stages = stageflow.StageRegistry()

    @stages.register("Big")
    async def big(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"draft": [{"probe_marker": i} for i in range(50)]}

    @stages.register("Small")
    async def small(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"draft": "short"}

    @stages.register("Fail")
    async def fail(ctx: stageflow.StageContext) -> dict[str, Any]:
        raise ProbeError("routed")

    @stages.register("Wait")
    async def wait(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"v": await ctx.wait_input("go")}

    pipeline = stageflow.Pipeline.from_dict(
        doc(
            [
                stage("a", "Big", outputs={"draft": "draft"}, next="b"),
                {**stage("b", "Small", outputs={"draft": "draft"}, next="c"), "config": {"k": 1}},
                {
                    **stage("c", "Fail", next="end"),
                    "on_error": [{"errors": ["ProbeError"], "next": "d"}],
                },
                {**stage("d", "Wait", outputs={"v": "v"}, next="end"), **waiter_fields},
                terminal("end"),
            ]
        ),
        registry=stages,
    )
    session = stageflow.Session(pipeline, registry=stages)
    alive = await alive_while_waiting(
        session,
        lambda o: (
            type(o) is ProbeError
            or (type(o) is list and bool(o) and type(o[0]) is dict and "probe_marker" in o[0])
        ),
    )
    assert alive == []


def _ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the clock the history is stamped with is one microsecond later."""
    ticks = iter(range(1_700_000_000_000_000_000, 1 << 62, 1000))

    def time_ns() -> int:
        return next(ticks)

    monkeypatch.setattr(_run, "_time_ns", time_ns)
    monkeypatch.setattr(_events, "_time_ns", time_ns)


def _fails_then_recovers() -> tuple[stageflow.Pipeline, stageflow.StageRegistry]:
    """``a`` -> ``bad`` (raises, routed to ``h``) -> ``h`` -> ``end``, on the tight path."""
    stages = stageflow.StageRegistry()

    @stages.register("Ok")
    async def ok(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {}

    @stages.register("Bad")
    async def bad(ctx: stageflow.StageContext) -> dict[str, Any]:
        raise ValueError("bad")

    nodes = [
        stage("a", "Ok", next="bad"),
        {**stage("bad", "Bad", next="end"), "on_error": [{"next": "h"}]},
        stage("h", "Ok", next="end"),
        terminal("end"),
    ]
    return stageflow.Pipeline.from_dict(doc(nodes), registry=stages), stages


@pytest.mark.anyio
async def test_a_node_after_a_routed_error_is_stamped_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node's start shares the previous node's end reading, never an older one."""
    _ticking_clock(monkeypatch)
    pipeline, stages = _fails_then_recovers()
    result = await stageflow.Session(pipeline, registry=stages).run()
    assert result.status is stageflow.SessionStatus.COMPLETED
    stamps = {(e.type, e.node_id): e.timestamp for e in result.history}
    assert stamps[("node_started", "h")] > stamps[("error_routed", "bad")]
    assert stamps[("error_routed", "bad")] > stamps[("node_failed", "bad")]
    times = [e.timestamp for e in result.history]
    assert times == sorted(times)


@pytest.mark.anyio
@pytest.mark.trio_only
async def test_a_node_start_shares_the_reading_of_the_end_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing awaited between them: one reading for both events.

    Trio only: on asyncio the loop awaits a checkpoint before every node,
    and the next start reads the clock again.
    """
    _ticking_clock(monkeypatch)
    pipeline, stages = _fails_then_recovers()
    result = await stageflow.Session(pipeline, registry=stages).run()
    stamps = {(e.type, e.node_id): e.timestamp for e in result.history}
    assert stamps[("node_started", "bad")] == stamps[("node_finished", "a")]
    assert stamps[("node_finished", "a")] > stamps[("node_started", "a")]
