"""Driving sessions with scripted inputs, and cutting them into snapshots.

:class:`Script` answers each ``waiting_for_input`` event with the next
payload of that type, the way a user or a service would. The cutters take
snapshots where a run waits, or at any event, put them through
``json.dumps``/``json.loads``, restore them into a fresh session and finish
the run with the inputs that had not been sent yet.

At the end: what the snapshot and restore tests (``tests/engine/``) share,
the examples as cases, and stages that wait for inputs.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from typing import Any

import anyio
import attrs
import sniffio
from example_support import EXAMPLES, load_example
from fakes import fake_registry

import stageflow


async def finish(session: stageflow.Session) -> stageflow.SessionResult:
    """``session.run()``, failing instead of hanging if the restored run never ends.

    A day of virtual time on trio; half a minute of real time on asyncio.
    """
    limit = 86_400 if sniffio.current_async_library() == "trio" else 30
    with anyio.fail_after(limit):
        return await session.run()


class Script:
    """Inputs to send, by type and in order; ``budget`` bounds how many are sent."""

    def __init__(self, inputs: Mapping[str, list[Any]], budget: int | None = None) -> None:
        self.inputs = {t: list(queue) for t, queue in inputs.items()}
        self.budget = budget
        self.session: stageflow.Session | None = None

    def attach(self, session: stageflow.Session) -> stageflow.Session:
        """Answer ``session``'s waits from now on."""
        self.session = session
        session.subscribe(self._on_event)
        return session

    def remaining(self) -> dict[str, list[Any]]:
        """The inputs not sent yet."""
        return copy.deepcopy(self.inputs)

    def _on_event(self, event: stageflow.Event) -> None:
        if event.type != "waiting_for_input" or self.budget == 0:
            return
        queue = self.inputs.get(event.payload["input_type"])
        if queue and self.session is not None:
            if self.budget is not None:
                self.budget -= 1
            self.session.send_input(event.payload["input_type"], queue.pop(0))


TIMED_REPLY: Mapping[str, Any] = {
    "api_version": "1.0",
    "entry": "ask",
    "nodes": [
        {
            "id": "ask",
            "type": "stage",
            "stage": "WaitStage",
            "config": {"input": "reply", "timeout": 600},
            "outputs": {"payload": "reply"},
            "next": "end",
            "on_error": [{"errors": ["InputTimeoutError"], "next": "late"}],
        },
        {"id": "end", "type": "terminal", "result": {"on_time": True}},
        {"id": "late", "type": "terminal", "result": {"on_time": False}},
    ],
}
"""Wait ten minutes for a ``reply``; a timeout ends at ``late``."""


@attrs.frozen
class Outcome:
    """What the equivalence is about: status, result, artifacts (and the node count)."""

    status: stageflow.SessionStatus
    result: Any
    artifacts: Any
    steps: int

    @classmethod
    def of(cls, result: stageflow.SessionResult) -> Outcome:
        artifacts = json.loads(json.dumps(dict(result.artifacts)))
        return cls(result.status, result.result, artifacts, result.history[-1].payload["steps"])


@attrs.frozen
class Case:
    """A pipeline to cut: how to build it, its payload and the inputs it gets."""

    pipeline: stageflow.Pipeline
    registry: stageflow.StageRegistry
    payload: Mapping[str, Any]
    inputs: Mapping[str, list[Any]] = attrs.field(factory=dict)
    history: Any = "all"  # what each snapshot keeps of the history (to_dict(history=...))

    def session(self) -> stageflow.Session:
        return stageflow.Session(
            self.pipeline, registry=self.registry, payload=copy.deepcopy(dict(self.payload))
        )

    def snapshot(self, session: stageflow.Session) -> dict[str, Any]:
        """``session.to_dict()`` with this case's history choice, through JSON text."""
        data: dict[str, Any] = json.loads(json.dumps(session.to_dict(history=self.history)))
        return data

    def restore(self, snapshot: Mapping[str, Any]) -> stageflow.Session:
        """Restore ``snapshot`` as a new process would: from its JSON text."""
        data = json.loads(json.dumps(snapshot))
        return stageflow.Session.from_dict(data, registry=self.registry)


async def uninterrupted(case: Case) -> Outcome:
    """The outcome of a run that is never snapshotted."""
    session = Script(case.inputs).attach(case.session())
    return Outcome.of(await session.run())


async def cut_at_waits(case: Case) -> list[tuple[tuple[str, ...], Outcome]]:
    """For k = 0, 1, ...: answer k waits, suspend, restore, finish; until a run needs no cut.

    Returns what each cut waited for and the outcome after the restore.
    """
    outcomes: list[tuple[frozenset[str], Outcome]] = []
    for answered in range(1000):
        script = Script(case.inputs, budget=answered)
        session = script.attach(case.session())
        suspended = await session.run(suspend=True)
        if suspended.status is not stageflow.SessionStatus.WAITING:
            return outcomes
        restored = Script(script.remaining()).attach(case.restore(case.snapshot(session)))
        assert restored.status is stageflow.SessionStatus.WAITING
        assert restored.waiting_for() == suspended.waiting_for
        outcomes.append((suspended.waiting_for, Outcome.of(await finish(restored))))
    raise AssertionError("the pipeline kept waiting")


async def cut_at_event(case: Case, seq: int) -> Outcome | None:
    """Snapshot in the middle of a run, when event ``seq`` is recorded; restore and finish.

    Returns ``None`` when the run has fewer events.
    """
    pair = await cut_at_event_pair(case, seq)
    return None if pair is None else pair[1]


async def cut_at_event_pair(case: Case, seq: int) -> tuple[Outcome, Outcome] | None:
    """Like :func:`cut_at_event`, with the outcome of the very run that was cut.

    For pipelines whose runs differ with the scheduling order (a fail-fast map
    with concurrency), compare the restore with the run it was cut from.
    """
    session = case.session()
    script = Script(case.inputs)
    taken: list[tuple[dict[str, Any], dict[str, list[Any]]]] = []

    def snapshot(event: stageflow.Event) -> None:
        if event.seq == seq:
            taken.append((case.snapshot(session), script.remaining()))

    session.subscribe(snapshot)  # before the script: it sees the wait unanswered
    script.attach(session)
    original = Outcome.of(await session.run())
    if not taken:
        return None
    data, remaining = taken[0]
    restored = case.restore(data)
    if restored.status.value in {"completed", "failed", "cancelled", "timed_out"}:
        outcome = data["outcome"]
        return original, Outcome(
            restored.status, outcome["result"], outcome["artifacts"], data["steps"]
        )
    Script(remaining).attach(restored)
    return original, Outcome.of(await finish(restored))


async def every_cut(case: Case, expected: Outcome) -> int:
    """Cut the run at each of its events in turn; every restore must end as ``expected``.

    Returns how many events the run had.
    """
    seq = 1
    while (outcome := await cut_at_event(case, seq)) is not None:
        assert outcome == expected, f"cut at event {seq}"
        seq += 1
    return seq - 1


# ------------------------------------------------------- shared by the test files

T0 = datetime.datetime(2030, 1, 1, 9, 0, tzinfo=datetime.UTC)
WAITING = stageflow.SessionStatus.WAITING


def json_round_trip(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` through ``json.dumps`` and ``json.loads``, as a snapshot kept as text."""
    result: dict[str, Any] = json.loads(json.dumps(data))
    return result


def review_registry() -> stageflow.StageRegistry:
    """The fakes, with ``Ask`` (waits for ``config.input``, ``config.timeout``) and ``Nap``."""
    registry = fake_registry()

    @registry.register("Ask")
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        got = await ctx.wait_input(ctx.config["input"], ctx.config.get("timeout"))
        return {"answer": got}

    @registry.register("Nap")
    async def nap(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        await ctx.sleep(ctx.config["seconds"])
        return {"answer": ctx.config["value"]}

    return registry


def nested_registry() -> stageflow.StageRegistry:
    """The fakes, with ``Ask``: waits for ``config.input``, answers it after ``config.prefix``."""
    registry = fake_registry()

    @registry.register("Ask")
    async def ask(ctx: stageflow.StageContext) -> Mapping[str, Any]:
        first = await ctx.wait_input(ctx.config["input"])
        return {"answer": f"{ctx.config.get('prefix', '')}{first}"}

    return registry


def chat_case(messages: list[str]) -> Case:
    """The chat example, greeting Ada, then sent ``messages``."""
    stages, _ = load_example("chat")
    pipeline = stageflow.Pipeline.load(
        EXAMPLES / "chat" / "pipeline.json", registry=stages.registry
    )
    return Case(
        pipeline,
        stages.registry,
        {"user": {"name": "Ada"}},
        {"user_message": [{"text": m} for m in messages]},
    )


def reference_case() -> Case:
    """The reference example with a long text."""
    stages, _ = load_example("reference")
    pipeline = stageflow.Pipeline.load(
        EXAMPLES / "reference" / "pipeline.json", registry=stages.registry
    )
    return Case(pipeline, stages.registry, {"user_id": "u-42", "text": "one two three four five"})


def documents_case() -> Case:
    """The documents example (a map whose items run a subpipeline) on its own document."""
    stages, run = load_example("documents")
    pipeline = stageflow.Pipeline.load(
        EXAMPLES / "documents" / "pipeline.json", registry=stages.registry
    )
    return Case(pipeline, stages.registry, {"document": run.DOCUMENT})
