"""Running one case: a session in virtual time, scripted inputs, limits, checks."""

from __future__ import annotations

import collections
from pathlib import Path

import anyio
import attrs

from stageflow import (
    Event,
    EventStream,
    LimitExceededError,
    Pipeline,
    Problem,
    Session,
    SessionResult,
    StageflowError,
    StageRegistry,
)
from stageflow._engine._backend import (
    deciding_leaf,
    in_trio_run,
    is_cancellation,
    is_interrupt,
    run_in_virtual_time,
)
from stageflow._json import a_python_type, thaw
from stageflow.testing._expect import Observed, check, unknown_event_types, unknown_nodes
from stageflow.testing._mocks import (
    missing_outputs,
    mock_registry,
    registry_from_modules,
    unused_mocks,
)
from stageflow.testing._model import Case, CaseValidationError, ScriptedInput
from stageflow.testing._result import CaseOutcome, CaseResult, InputRecord

__all__ = ["prepare_case", "run_case"]


@attrs.frozen
class PreparedCase:
    """A case with its pipeline loaded and its registry mocked, ready to run."""

    case: Case
    pipeline: Pipeline
    registry: StageRegistry


def prepare_case(case: Case, *, registry: StageRegistry | None = None) -> PreparedCase:
    """Build the mocked registry and load the pipeline of ``case``.

    Raises:
        CaseValidationError: bad stages modules or mocks (a mock of a stage
            no node uses, or without an output a node writes), a pipeline
            file that cannot be read, or an expectation naming a node the
            pipeline does not have.
        PipelineValidationError: the pipeline is not valid.
    """
    source = str(case.file) if case.file is not None else None
    real = registry if registry is not None else registry_from_modules(case.stages, source=source)
    try:
        mocked = mock_registry(real, case.mocks, where=case.location)
    except CaseValidationError as exc:
        raise CaseValidationError(exc.problems, source=source) from None
    if isinstance(case.pipeline, Path):
        try:
            pipeline = Pipeline.load(case.pipeline, registry=mocked)
        except OSError as exc:
            raise CaseValidationError(
                [
                    Problem(
                        "$.pipeline",
                        f"cannot read {str(case.pipeline)!r}: {exc.strerror or exc}; "
                        "check the path (relative to the case file)",
                    )
                ],
                source=source,
            ) from exc
    else:
        pipeline = Pipeline.from_dict(
            thaw(case.pipeline), registry=mocked, source=f"{source or 'case'} $.pipeline"
        )
    problems = (
        unused_mocks(case, pipeline)
        + missing_outputs(case, pipeline)
        + unknown_nodes(case, pipeline)
        + unknown_event_types(case, pipeline, mocked)
    )
    if problems:
        raise CaseValidationError(problems, source=source)
    return PreparedCase(case, pipeline, mocked)


def run_case(case: Case, *, registry: StageRegistry | None = None) -> CaseResult:
    """Run one case on trio in virtual time and check its expectations.

    The run uses ``trio.testing.MockClock(autojump_threshold=0)``: sleeps,
    mock delays and timeouts cost no real time. Call it from synchronous
    code (it starts its own trio loop); from async code, in a worker thread
    (``await anyio.to_thread.run_sync(run_case, case)``).

    Args:
        case: the case (from :func:`~stageflow.testing.load_cases`, or built in Python).
        registry: the real stages; by default those of ``case.stages``.

    Returns:
        The result; ``result.passed`` tells whether every expectation held
        and ``result.render()`` shows each failure with a diff.

    Raises:
        CaseValidationError: bad stages modules, mocks or inputs, or an
            expectation naming a node the pipeline does not have.
        PipelineValidationError: the pipeline is not valid.
        OSError: the pipeline file cannot be read.
        RuntimeError: called from inside a trio run.
        TypeError: ``case`` is no :class:`Case`, or ``registry`` no
            :class:`~stageflow.StageRegistry`.

    What the session raises (``KeyboardInterrupt``, a stage's ``SystemExit``
    or other ``BaseException`` that is no ``Exception``) goes up as
    :meth:`Session.run <stageflow.Session.run>` raises it.
    """
    if not isinstance(case, Case):
        raise TypeError(
            f"run_case() was given {a_python_type(case)}; pass a stageflow.testing.Case: "
            "one of load_cases(path) for a case file, or Case(name=..., pipeline=...)"
        )
    if registry is not None and not isinstance(registry, StageRegistry):
        raise TypeError(
            f"run_case(registry=...) was given {a_python_type(registry)}; pass a "
            "stageflow.StageRegistry, or leave it out to use the case's stages"
        )
    if in_trio_run():
        # trio.run() inside a trio run says only "Attempted to call run() from inside a run()".
        raise RuntimeError(
            f"run_case({case.name!r}) was called from inside a trio run (an async test, say); "
            "it starts its own trio loop in virtual time, so call it from synchronous code, "
            "or from async code in a worker thread: "
            "await anyio.to_thread.run_sync(run_case, case)"
        )
    prepared = prepare_case(case, registry=registry)
    return run_in_virtual_time(_run_prepared, prepared)


async def _run_prepared(prepared: PreparedCase) -> CaseResult:
    case, pipeline = prepared.case, prepared.pipeline
    limits = pipeline.limits
    if case.limits.max_steps is not None:
        limits = attrs.evolve(limits, max_steps=case.limits.max_steps)
    session = Session(
        pipeline, registry=prepared.registry, payload=thaw(case.payload), limits=limits
    )
    driver = _Driver(case, session)
    observed = await driver.run()
    failures, checks = check(case, observed)
    return CaseResult(
        case=case,
        outcome=CaseOutcome.FAILED if failures else CaseOutcome.PASSED,
        failures=tuple(failures),
        checks=checks,
        status=observed.status,
        result=observed.result,
        artifacts=observed.artifacts,
        error=observed.error,
        history=observed.history,
        elapsed=observed.elapsed,
        limit_exceeded=observed.limit_exceeded,
        inputs=observed.inputs,
        pipeline=pipeline,
    )


class _Driver:
    """Runs the session with the case's inputs and limits, in the current (virtual) clock."""

    def __init__(self, case: Case, session: Session) -> None:
        self.case = case
        self.session = session
        self.limit: str | None = None
        self.limit_detail = ""
        self.waiting_at_end: tuple[str, ...] = ()
        self.start = 0.0
        self.events = 0
        self.records: dict[int, InputRecord] = {
            i: InputRecord(scripted) for i, scripted in enumerate(case.inputs)
        }

    def _stop(self, limit: str, detail: str) -> None:
        if self.limit is None:
            self.limit = limit
            self.limit_detail = detail
            self.waiting_at_end = self.session.waiting_for()
            self.session.cancel(f"the tester stopped the run: {detail}")

    def _count(self, event: Event) -> None:
        self.events += 1
        max_events = self.case.limits.max_events
        if max_events is not None and self.events > max_events:
            self._stop("max_events", f"the limit max_events={max_events}")

    async def _timer(self) -> None:
        max_time = self.case.limits.max_time
        await anyio.sleep(max_time)
        # A run that ends at max_time itself (a mock's delay of max_time) is
        # within the limit: which of this timer and the run the clock woke
        # first decided it at random. Go on once every other task is done
        # with this instant (the mock clock jumps only after that).
        await anyio.wait_all_tasks_blocked()
        self._stop("max_time", f"the limit max_time={max_time:g} virtual seconds")

    def _send(self, index: int) -> None:
        scripted = self.case.inputs[index]
        now = anyio.current_time() - self.start
        try:
            receipt = self.session.send_input(scripted.type, thaw(scripted.payload))
        except StageflowError as exc:
            # Rejected (backlog full, invalid payload): recorded, and the
            # input_rejected event is in the history for expectations.
            self.records[index] = InputRecord(scripted, sent_at=now, error=str(exc))
            return
        self.records[index] = InputRecord(
            scripted, sent_at=now, delivered=receipt.delivered, queued=receipt.queued
        )

    async def _send_timed(self, timed: list[tuple[int, ScriptedInput]]) -> None:
        for index, scripted in timed:
            assert scripted.at is not None
            await anyio.sleep_until(self.start + scripted.at)
            # After what the run does at this instant (a wait's timeout, a
            # sleep's end): in the order the clock woke them, it was random.
            await anyio.wait_all_tasks_blocked()
            self._send(index)

    async def _answer_waits(
        self, stream: EventStream, pending: dict[str, collections.deque[int]]
    ) -> None:
        try:
            async for event in stream:
                if event.type != "waiting_for_input":
                    continue
                wanted = str(event.payload.get("input_type"))
                queue = pending.get(wanted)
                # A broadcast input reaches every waiter: after one send for
                # several waits of one type, the type is no longer waited for.
                if queue and wanted in self.session.waiting_for():
                    self._send(queue.popleft())
                if not any(pending.values()):
                    return
        finally:
            await stream.aclose()

    async def run(self) -> Observed:
        session = self.session
        self.start = anyio.current_time()
        unsubscribe = session.subscribe(self._count)
        pending: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        timed: list[tuple[int, ScriptedInput]] = []
        for i, scripted in enumerate(self.case.inputs):
            if scripted.at is None:
                pending[scripted.type].append(i)
            else:
                timed.append((i, scripted))
        timed.sort(key=lambda item: (item[1].at, item[0]))
        # Subscribe before the run starts so that no wait is missed.
        stream = session.events(buffer=0) if pending else None
        cancelled = anyio.get_cancelled_exc_class()
        # What goes up instead of the task group's group, raised below: out of the
        # except clause, so that the group does not become its __context__ (its own
        # cause and context stay, as Session.run() raised it).
        escaping: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._timer)
                if stream is not None:
                    tg.start_soon(self._answer_waits, stream, pending)
                if timed:
                    tg.start_soon(self._send_timed, timed)
                outcome = await session.run()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if is_interrupt(group):
                # Ctrl-C goes up as KeyboardInterrupt, also from a parallel branch (in
                # the session's group too): in a group, pytest took it for the case's
                # failure and went on with the next case.
                escaping = deciding_leaf(group, cancelled)
            elif len(group.exceptions) == 1 and not is_cancellation(group.exceptions[0], cancelled):
                # One error (an engine bug, a stage raising a BaseException such as
                # SystemExit) goes up as Session.run() raised it.
                escaping = group.exceptions[0]
            else:
                raise
        finally:
            unsubscribe()
        if escaping is not None:
            raise escaping
        return self._observed(outcome)

    def _observed(self, outcome: SessionResult) -> Observed:
        limit, detail = self.limit, self.limit_detail
        if limit is None and isinstance(outcome.error, LimitExceededError):
            limit = outcome.error.limit
            detail = f"the limit {limit}={outcome.error.value}"
        if limit == "max_time" and self.waiting_at_end:
            detail += f" (the session was waiting for {', '.join(self.waiting_at_end)})"
        return Observed(
            status=outcome.status,
            result=outcome.result,
            artifacts=dict(outcome.artifacts),
            error=outcome.error,
            history=outcome.history,
            elapsed=anyio.current_time() - self.start,
            limit_exceeded=limit,
            limit_detail=detail,
            inputs=tuple(self.records[i] for i in range(len(self.case.inputs))),
            discarded=outcome.discarded_inputs,
        )
