"""The worker: claims due sessions, runs one turn each, saves them fenced.

One claim loop and one heartbeat loop per worker, plus one task per turn in
flight, all in the task group of :meth:`Worker.run`. A turn that fails
outside the session's own error model (a snapshot that no longer loads, a
missing stage, a bug) is released with backoff and never reaches the task
group; after ``max_attempts`` the session is ``poisoned``. A turn whose lease
is lost (a missed heartbeat, a takeover) is cancelled and discarded: the
fenced save would write nothing anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs
import sniffio
from opentelemetry import context as otel_context

from stageflow._engine._backend import deciding_leaf, is_cancellation, is_interrupt
from stageflow._errors import InputRejectedError, SessionStateError
from stageflow._log import get_logger
from stageflow._model import is_count, is_seconds, seconds_wanted
from stageflow._pipeline import Pipeline
from stageflow._result import SessionStatus
from stageflow._session import Session
from stageflow._stages import StageRegistry
from stageflow.store._errors import StoreArgumentError, StoredDataError
from stageflow.store._history import turn_snapshot
from stageflow.store._records import CANCEL_INPUT, Lease, SessionStore
from stageflow.store._shared import LIMIT_MAX, check_name, check_roles

__all__ = ["Worker", "WorkerStatistics", "db_clock"]

logger = get_logger("stageflow.worker")

_GOING_ON = (SessionStatus.PENDING, SessionStatus.WAITING)
_BUILT_PIPELINES = 64  # pipelines rebuilt from snapshots kept per worker (oldest dropped)


def db_clock(
    db_now: datetime.datetime, *, since: float | None = None
) -> Callable[[], datetime.datetime]:
    """A session clock on the database's time: ``db_now`` plus the monotonic time since.

    ``since`` is the ``time.monotonic()`` at which ``db_now`` was asked for
    (taken just before the claim; now if not given). Counted from later, the
    clock would lag the database by the delay in between, and a timer set
    from it would fire that much early.
    """
    start = time.monotonic() if since is None else since

    def now() -> datetime.datetime:
        return db_now + datetime.timedelta(seconds=time.monotonic() - start)

    return now


@attrs.frozen
class WorkerStatistics:
    """What a worker has done so far.

    Attributes:
        claims: claim queries made.
        empty_claims: claim queries that found nothing due.
        claimed: leases taken.
        saved: turns saved.
        fenced: saves rejected because the lease had been lost.
        lost: turns cancelled because a heartbeat found the lease lost.
        released: turns given back after a failure (poisoned ones included).
        running: turns in flight now.
    """

    claims: int
    empty_claims: int
    claimed: int
    saved: int
    fenced: int
    lost: int
    released: int
    running: int


@attrs.define
class _Turn:
    lease: Lease
    scope: anyio.CancelScope
    # time.monotonic() just before the claim: the session's clock counts from it.
    claimed_at: float
    # Set as its fenced save starts: from then on the save decides whether
    # the lease was still held, not a heartbeat (which, running beside a save
    # that has just committed, finds the lease released).
    saving: bool = False


def _cancelled(exc: BaseException, scope: anyio.CancelScope, task: int) -> bool:
    """Whether ``exc`` is a cancellation that was asked for, not one a stage raised.

    On trio only trio makes its ``Cancelled``. On asyncio anyone can raise
    ``CancelledError``: it is a real one when the turn's scope was cancelled
    or the task has a cancellation request pending (``Task.cancelling()``).
    A ``GeneratorExit`` is the turn's coroutine being closed only when it
    comes outside the steps of the turn's task (``task``, its id): ``close()``
    throws it in from wherever the coroutine is dropped, and nothing may be
    awaited then. One that comes in the turn's task a stage raised (alone, or
    out of a branch or map item, as ``run()`` raises it): the turn failed.
    """
    if isinstance(exc, GeneratorExit):  # looked at first: a close may come with no loop running
        return not _in_task(task)
    if not is_cancellation(exc, anyio.get_cancelled_exc_class()):
        return False
    if sniffio.current_async_library() != "asyncio":
        return True
    running = asyncio.current_task()
    return scope.cancel_called or (running is not None and running.cancelling() > 0)


def _in_task(task: int) -> bool:
    """Whether the task of id ``task`` is the one running here."""
    try:
        return anyio.get_current_task().id == task
    except RuntimeError:  # no event loop runs in this thread (anyio's NoEventLoopError)
        return False


def _check_names(queues: Iterable[str], worker_id: str | None) -> tuple[str, ...]:
    """The queues as a tuple; refuse names no session's row can have.

    A worker on such a queue would claim nothing forever (a string passed as
    ``queues`` is read as its letters), and one a store cannot hold would
    fail every claim, logged as an outage.

    Raises:
        StoreArgumentError: ``queues`` is a string or empty, or a queue name
            or ``worker_id`` is no text a store holds (see ``check_name``).
    """
    if isinstance(queues, str):
        raise StoreArgumentError(
            f"Worker(queues={queues!r}): pass a list of queue names, as queues=[{queues!r}] "
            "(a string is read as its letters)"
        )
    names = tuple(queues)
    if not names:
        raise StoreArgumentError("Worker(queues=()): pass at least one queue name ('default')")
    for name in names:
        if name == "":
            raise StoreArgumentError(
                "Worker(queues=...) holds '': a queue is a non-empty string ('default')"
            )
        check_name("queue", name)
    check_name("worker_id", worker_id, optional=True)
    return names


def _check_settings(
    *,
    concurrency: int,
    max_attempts: int,
    lease: float,
    poll: float,
    fetch_cooldown: float,
    shutdown_grace: float,
) -> None:
    """Refuse settings that would make a worker poison healthy sessions or do nothing.

    ``lease=0`` expires every claim at once (the turn runs again and again
    until it is poisoned), ``max_attempts=0`` poisons a session at its first
    claim, ``concurrency=0`` never claims.
    """
    for name, value in (("concurrency", concurrency), ("max_attempts", max_attempts)):
        if not is_count(value, 1):
            raise ValueError(
                f"Worker({name}={value!r}): {name} must be a whole number of at least 1"
            )
    for name, seconds, zero in (
        ("lease", lease, False),
        ("poll", poll, False),
        ("fetch_cooldown", fetch_cooldown, True),
        ("shutdown_grace", shutdown_grace, True),
    ):
        if not is_seconds(seconds, zero=zero):
            raise ValueError(
                f"Worker({name}={seconds!r}): {name} must be {seconds_wanted(zero=zero)}"
            )


class Worker:
    """Runs the sessions of a store: claim, run one turn, save; again.

    Args:
        store: the session store.
        registry: where stages are looked up (the default registry if not given).
        pipelines: pipelines to reuse by digest (others are rebuilt from the
            document a snapshot carries, once per digest: the worker keeps the
            last 64 it built).
        concurrency: turns in flight at most.
        lease: seconds a claim lasts; heartbeats renew it every ``lease / 3``.
        poll: the longest idle wait between claims (the safety net under
            wake-up notifications).
        queues: the queues this worker serves.
        worker_id: its name in the ``lease_owner`` column (host:pid:random if not given).
        max_attempts: failed claims in a row before a session is ``poisoned``.
        fetch_cooldown: after a wake-up whose claim found nothing (another
            worker was faster), seconds (times 1 to 1.5, random) before the
            next claim after a wait: it damps the herd of idle workers that
            one notification wakes. A claim after a turn ended, and one after
            an empty poll, is never delayed. 0 turns it off.
        shutdown_grace: seconds :meth:`shutdown` waits for turns in flight.

    Raises:
        ValueError: a setting out of its range (a lease or poll of 0 or
            less, fewer than 1 attempt or turn in flight, a negative or
            infinite time); :class:`StoreArgumentError` (a ValueError) for
            ``queues`` that are a string or empty, or a queue name or
            ``worker_id`` a store cannot hold.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        registry: StageRegistry | None = None,
        pipelines: Iterable[Pipeline] = (),
        concurrency: int = 32,
        lease: float = 30.0,
        poll: float = 1.0,
        queues: Iterable[str] = ("default",),
        worker_id: str | None = None,
        max_attempts: int = 5,
        fetch_cooldown: float = 0.1,
        shutdown_grace: float = 10.0,
    ) -> None:
        _check_settings(
            concurrency=concurrency,
            lease=lease,
            poll=poll,
            max_attempts=max_attempts,
            fetch_cooldown=fetch_cooldown,
            shutdown_grace=shutdown_grace,
        )
        listed = check_roles("Worker", store, registry, pipelines)
        self.store = store
        self.registry = registry
        self.pipelines = {p.digest: p for p in listed}
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.queues = _check_names(queues, worker_id)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.max_attempts = max_attempts
        self.fetch_cooldown = fetch_cooldown
        self.shutdown_grace = shutdown_grace
        self._built: dict[str, Pipeline] = {}  # rebuilt from snapshots, by digest
        self._turns: dict[str, _Turn] = {}
        self._stopping = False
        self._idle: anyio.CancelScope | None = None
        self._slot: anyio.Event | None = None
        self._counts = dict.fromkeys(
            ("claims", "empty_claims", "claimed", "saved", "fenced", "lost", "released"), 0
        )

    def statistics(self) -> WorkerStatistics:
        """Counters of what this worker did."""
        return WorkerStatistics(running=len(self._turns), **self._counts)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`shutdown` was called (the worker claims no more)."""
        return self._stopping

    def shutdown(self) -> None:
        """Stop claiming; :meth:`run` returns once the turns in flight are saved.

        Turns still running after ``shutdown_grace`` seconds are abandoned:
        their leases expire and another worker runs them again.
        """
        self._stopping = True
        if self._idle is not None:
            self._idle.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Claim and run sessions until cancelled or :meth:`shutdown`."""
        self._stopping = False  # before the migration: a shutdown() during it holds
        await self.store.migrate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            task_status.started()
            await self._claim_loop(tg)
            with anyio.move_on_after(self.shutdown_grace):
                while self._turns:
                    await self._wait_for_slot()
            if self._turns:
                logger.warning("worker.abandoned", turns=len(self._turns))
            tg.cancel_scope.cancel()

    async def _wait_for_slot(self) -> None:
        self._slot = anyio.Event()
        await self._slot.wait()

    async def _claim_loop(self, tg: anyio.abc.TaskGroup) -> None:
        errors = 0
        cooldown_until = -1.0
        # Only an empty claim that a wake-up triggered starts the fetch cooldown:
        # that is the herd (one NOTIFY wakes every idle worker, one of them wins).
        # An empty claim right after a turn ended is the normal case of a
        # sequential conversation (its next input is not sent yet), and an empty
        # poll is the safety net; neither may delay the claim that the next
        # input's NOTIFY triggers a few ms later. (Scaleout row "coordination
        # efficiency E(8)": each turn paid 100-150 ms when every empty claim,
        # plus the worker's own save waking it, started the cooldown.)
        woken = False
        while not self._stopping:
            with anyio.CancelScope() as idle:
                self._idle = idle
                if self._stopping:
                    break
                try:
                    if len(self._turns) >= self.concurrency:
                        await self._wait_for_slot()
                        woken = False
                        continue
                    if woken and cooldown_until > anyio.current_time():
                        await anyio.sleep(cooldown_until - anyio.current_time())
                    claimed_at = time.monotonic()  # before the database reads now()
                    leases = await self.store.claim(
                        self.worker_id,
                        # A concurrency past what LIMIT takes failed every claim.
                        limit=min(self.concurrency - len(self._turns), LIMIT_MAX),
                        lease=self.lease,
                        queues=self.queues,
                    )
                    self._counts["claims"] += 1
                    errors = 0
                    for lease in leases:
                        self._counts["claimed"] += 1
                        self._drop_earlier_turn(lease.session_id)
                        turn = _Turn(lease, anyio.CancelScope(), claimed_at)
                        self._turns[lease.session_id] = turn
                        tg.start_soon(self._turn, turn)
                    if leases:
                        woken = False
                        continue
                    self._counts["empty_claims"] += 1
                    if woken:  # another worker was faster
                        jitter = random.uniform(1.0, 1.5)
                        cooldown_until = anyio.current_time() + self.fetch_cooldown * jitter
                    woken = await self.store.wait_for_work(await self._idle_timeout())
                except Exception as exc:  # a store outage must not stop the worker
                    errors += 1
                    logger.warning("worker.claim_failed", error=str(exc), worker=self.worker_id)
                    await anyio.sleep(min(self.poll * errors, 10.0))
            self._idle = None

    def _drop_earlier_turn(self, session_id: str) -> None:
        """Cancel this worker's turn of a session it has just claimed again.

        That turn's lease expired (its heartbeats failed, or came too late)
        and the new claim fenced it: it can no longer save, and it must not
        run the session's stages beside the new turn. Once a turn's save has
        started the save decides (it committed before the claim, or it is
        fenced), as with a heartbeat.
        """
        earlier = self._turns.get(session_id)
        if earlier is None or earlier.saving or earlier.scope.cancel_called:
            return
        self._counts["lost"] += 1
        logger.warning("worker.lease_lost", session_id=session_id, claimed_again=True)
        earlier.scope.cancel()

    async def _idle_timeout(self) -> float:
        due = await self.store.next_due(queues=self.queues)
        if due is None:
            return self.poll
        wait = (due - await self.store.now()).total_seconds()
        return min(self.poll, max(wait, 0.0))

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            turns = list(self._turns.values())
            if not turns:
                continue
            try:
                held = await self.store.heartbeat(
                    self.worker_id, [t.lease for t in turns], self.lease
                )
            except Exception as exc:
                logger.warning("worker.heartbeat_failed", error=str(exc))
                continue
            for turn in turns:
                if self._turns.get(turn.lease.session_id) is not turn or turn.saving:
                    continue  # saving, saved or released while the heartbeat ran
                if turn.lease.session_id not in held and not turn.scope.cancel_called:
                    self._counts["lost"] += 1
                    logger.warning("worker.lease_lost", session_id=turn.lease.session_id)
                    turn.scope.cancel()

    async def _turn(self, turn: _Turn) -> None:
        lease = turn.lease
        log = logger.bind(session_id=lease.session_id, attempt=lease.attempts)
        task = anyio.get_current_task().id
        try:
            with turn.scope:
                if lease.attempts > self.max_attempts:
                    await self._release(lease, "crashed during its last attempts (crash loop)")
                    return
                try:
                    saved = await self._run_turn(turn)
                except Exception as exc:
                    log.warning("worker.turn_failed", error=repr(exc), exc_info=exc)
                    await self._release(lease, f"{type(exc).__name__}: {exc}")
                    return
                except BaseException as exc:
                    # A stage that raised SystemExit, or a cancellation nobody
                    # asked for (asyncio's CancelledError leaked by a library):
                    # the turn failed, the worker goes on. Ctrl-C and a real
                    # cancellation (of this turn or of the worker) go on up.
                    if is_interrupt(exc) or _cancelled(exc, turn.scope, task):
                        raise
                    # run() raises it alone; two at once (in two branches) come
                    # in a group: the error names the first.
                    leaf = deciding_leaf(exc, anyio.get_cancelled_exc_class())
                    log.warning("worker.turn_failed", error=repr(leaf), exc_info=exc)
                    await self._release(lease, f"{type(leaf).__name__}: {leaf}")
                    return
                self._counts["saved" if saved else "fenced"] += 1
                if not saved:
                    log.warning("worker.save_fenced")
        finally:
            # Only its own entry: the session may have been claimed again already
            # (saved, or its lease lost, while this task was on its way out).
            if self._turns.get(lease.session_id) is turn:
                del self._turns[lease.session_id]
            if self._slot is not None:
                self._slot.set()

    async def _release(self, lease: Lease, error: str) -> None:
        """Give a failed turn's lease back; past ``max_attempts`` the session is poisoned.

        A poisoned session runs no more: that is an ERROR line, once, as
        for a session whose run failed.
        """
        self._counts["released"] += 1
        try:
            released = await self.store.release(lease, error=error, max_attempts=self.max_attempts)
        except Exception as exc:  # the lease expires on its own
            logger.warning("worker.release_failed", session_id=lease.session_id, error=str(exc))
            return
        if released is False:
            # Lost before it was given back: another worker holds the session,
            # which is neither backed off nor poisoned by this failure.
            logger.warning(
                "worker.release_fenced", session_id=lease.session_id, attempts=lease.attempts
            )
            return
        if lease.attempts >= self.max_attempts:
            logger.error(
                "worker.session_poisoned",
                session_id=lease.session_id,
                attempts=lease.attempts,
                error=error,
            )

    async def _run_turn(self, turn: _Turn) -> bool:
        """Restore, deliver the inputs, run until the session waits or ends, save.

        Outside any span: a span current where :meth:`run` was called (one
        the application keeps open as long as the worker runs) is no parent
        of the turns' runs, nor an input's sender. Each turn's run is a new
        trace, linked to the run that saved the snapshot (``restored_from``)
        and sampled as it was.
        """
        token = otel_context.attach(otel_context.Context())
        try:
            return await self._restore_and_run(turn)
        finally:
            otel_context.detach(token)

    async def _restore_and_run(self, turn: _Turn) -> bool:
        lease = turn.lease
        if lease.unreadable is not None:
            raise StoredDataError(lease.unreadable)  # poisoned after max_attempts
        pipeline = self.pipelines.get(lease.digest) or self._built.get(lease.digest)
        session = Session.from_dict(
            lease.snapshot,
            registry=self.registry,
            pipeline=pipeline,
            clock=db_clock(lease.db_now, since=turn.claimed_at),
        )
        if pipeline is None and session.pipeline.digest == lease.digest:
            # Rebuilt from the snapshot's document: keep it for the next turns. Building
            # a pipeline (and resolving its stages, which the engine caches per node
            # object) costs more than the rest of a short turn.
            if len(self._built) >= _BUILT_PIPELINES:
                self._built.pop(next(iter(self._built)))
            self._built[lease.digest] = session.pipeline
        cancel: str | None = None
        for item in lease.inputs:
            if item.type == CANCEL_INPUT:
                # Written by request_cancel (send_input refuses the type); a
                # row of an older stageflow may carry anything.
                payload: Any = item.payload
                reason = payload.get("reason") if isinstance(payload, Mapping) else None
                if cancel is None:
                    cancel = reason if isinstance(reason, str) else "cancelled"
                continue
            # A rejected input is recorded in the history; an ended session takes none.
            with contextlib.suppress(InputRejectedError, SessionStateError):
                session.send_input(item.type, item.payload)
        if cancel is not None:
            # Applied after the turn's other inputs (no stage runs in between): an
            # input that came after the request is then recorded as discarded with
            # the session's end, not refused by a session that has already ended.
            session.cancel(cancel)
        waiting_for: Collection[str] = ()
        wake_at = None
        if session.status in _GOING_ON:
            result = await session.run(suspend=True)
            waiting_for, wake_at = result.waiting_for, result.wake_at
        # The history leaves the snapshot: only this turn's events are written, to the
        # events table, in the same fenced save (a store without one keeps them inline).
        snapshot, events = turn_snapshot(
            session, lease.events_done, keep_history=not self.store.events_table
        )
        turn.saving = True
        return await self.store.complete(
            lease, snapshot, waiting_for=waiting_for, wake_at=wake_at, events=events
        )
