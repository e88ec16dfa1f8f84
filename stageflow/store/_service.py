"""What a request handler uses: start sessions, send inputs, read and follow them.

The service never runs a session: it writes rows (one short transaction
each) and reads them. Workers do the running, in this process or another.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import anyio
from opentelemetry import metrics

from stageflow._errors import InputRejectedError
from stageflow._metrics import UNCHECKED_INPUT, Metrics
from stageflow._model import is_count, is_seconds, seconds_wanted
from stageflow._pipeline import Pipeline
from stageflow._result import SessionStatus
from stageflow._session import Session
from stageflow._stages import StageRegistry
from stageflow._telemetry import check_provider
from stageflow._version import __version__
from stageflow.store._records import FINISHED_STATUSES, InputRecord, SessionStore, StoredSession
from stageflow.store._shared import LIMIT_MAX, check_roles

__all__ = ["SessionService"]

_MIN_POLL = 0.005
_MAX_POLL = 0.2  # without save notices (SQLite across processes)
_SENT_MARKS = 10_000  # the save marks of inputs sent and not yet waited for
_STATUSES = sorted({s.value for s in SessionStatus} | FINISHED_STATUSES)  # a row's


def _recorded(stored: StoredSession, seq: int) -> bool:
    """Whether input ``seq`` is in a saved turn and no turn is running."""
    return stored.inbox_done >= seq and stored.version > 0 and stored.lease_owner is None


def _timed_out(
    session_id: str, seq: int | None, finished: bool, timeout: float, stored: StoredSession | None
) -> str:
    """What :meth:`SessionService.wait` waited for in vain, where the session stands, what to do."""
    if finished:
        what = "to finish"
    elif seq:
        what = f"to record input {seq}"
    else:
        what = "to save its first turn"
    message = f"session {session_id!r} did not get {what} within {timeout} s"
    if stored is None:
        return f"{message}; the store did not answer in time: check that it is reachable"
    message += f"; it is {stored.status}"
    if stored.error is not None:
        message += f" (its last attempt failed: {stored.error})"
    if stored.lease_owner is not None:
        return f"{message}, in a turn of worker {stored.lease_owner!r}: wait longer"
    if stored.runnable_at is not None and stored.runnable_at <= datetime.datetime.now(datetime.UTC):
        return (
            f"{message} and due, but no worker took it: check that a worker runs and serves "
            f"queue {stored.queue!r}"
        )
    if stored.waiting_for:
        return f"{message}, for input {', '.join(stored.waiting_for)}: send it, or wait longer"
    return f"{message}: wait longer"


class SessionService:
    """Start, feed, cancel and read stored sessions, from any process.

    Args:
        store: the session store.
        registry: where :meth:`start` checks the pipeline's stages (the
            default registry if not given).
        pipelines: pipelines :meth:`start` accepts by name as well.
        poll: the longest pause of :meth:`wait` and :meth:`follow` between two
            reads of the session when the store notices saves (PostgreSQL with
            ``NOTIFY``): they wake on the notice, and the poll is only the
            safety net. Without notices they poll from 5 ms, doubling up to
            ``min(poll, 0.2)`` s.
        meter_provider: where :meth:`send_input` counts the inputs it
            refuses (``stageflow.inputs.rejected``, input type
            ``(unchecked)``); the global OpenTelemetry meter provider if not
            given, decided once, when the service is made (no provider: no
            metrics, no cost).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        registry: StageRegistry | None = None,
        pipelines: Iterable[Pipeline] = (),
        poll: float = 1.0,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        listed = check_roles("SessionService", store, registry, pipelines)
        check_provider("SessionService", "meter_provider", meter_provider)
        if not is_seconds(poll, zero=False):
            raise ValueError(
                f"SessionService(poll={poll!r}): poll must be {seconds_wanted(zero=False)}"
            )
        self.store = store
        self.registry = registry
        self.pipelines = {p.name: p for p in listed}
        self.poll = poll
        # (session id, seq) -> the save mark taken before the input was sent: until a
        # save of the session is noticed after it, the input cannot be recorded, so
        # wait() need not read the row first (scaleout row "database CPU per turn").
        self._sent: dict[tuple[str, int], int] = {}
        self._metrics = Metrics.resolve(meter_provider, __version__)

    def _pauses(self) -> Iterator[float]:
        """The pauses between reads: fixed with save notices, else doubling from 5 ms."""
        if self.store.save_notices:
            while True:
                yield self.poll
        delay = _MIN_POLL
        while True:
            yield min(delay, self.poll)
            delay = min(delay * 2, _MAX_POLL)

    async def start(
        self,
        pipeline: Pipeline | str,
        *,
        payload: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        idempotency_key: str | None = None,
        queue: str = "default",
    ) -> str:
        """Store a new session; a worker runs it. Returns its id.

        A retried ``idempotency_key`` (or a known ``session_id``) returns the
        existing session's id and creates nothing; given to start another
        pipeline (by name), it raises ``IdempotencyKeyReusedError`` instead.

        Raises:
            LookupError: ``pipeline`` is a name not in ``pipelines``.
            ValueError: ``queue`` is not a non-empty string.
        """
        if isinstance(pipeline, str):
            if pipeline not in self.pipelines:
                known = ", ".join(repr(name) for name in self.pipelines) or "none"
                raise LookupError(
                    f"no pipeline named {pipeline!r} was given to SessionService(pipelines=...) "
                    f"(it has: {known}); pass the Pipeline itself, or add it there"
                )
            pipeline = self.pipelines[pipeline]
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue={queue!r}: a queue is a non-empty string ('default')")
        session = Session(pipeline, registry=self.registry, payload=payload, session_id=session_id)
        created = await self.store.create(
            session.to_dict(), queue=queue, idempotency_key=idempotency_key
        )
        return created.session_id

    async def send_input(
        self, session_id: str, type: str, payload: Any, *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Store an input for the session; a worker delivers it, exactly once.

        Raises:
            SessionNotFoundError: no such session.
            SessionFinishedError: the session has ended (a retried key returns
                its original record instead).
            InputRejectedError: nothing was stored: the payload is not JSON
                (``not_json``), is over the session's ``limits.max_input_bytes``
                (``too_large``), or the type is bad (``bad_type``).
            StoreArgumentError: the idempotency key is no text a store holds
                (``IdempotencyKeyReusedError``: it was first used for
                another input type or payload).
        """
        mark = self.store.save_mark()
        try:
            record = await self.store.send_input(
                session_id, type, payload, idempotency_key=idempotency_key
            )
        except InputRejectedError as refused:
            if self._metrics is not None:
                self._metrics.refused(UNCHECKED_INPUT, refused.reason)
            raise
        if not record.duplicate and self.store.save_notices:
            if len(self._sent) >= _SENT_MARKS:  # never waited for: forget the oldest
                del self._sent[next(iter(self._sent))]
            self._sent[(session_id, record.seq)] = mark
        return record

    async def cancel(
        self, session_id: str, reason: str = "cancelled", *, idempotency_key: str | None = None
    ) -> InputRecord:
        """Ask for the session to be cancelled; its next turn ends it ``cancelled``."""
        return await self.store.request_cancel(session_id, reason, idempotency_key=idempotency_key)

    async def get(self, session_id: str) -> StoredSession:
        """The session's stored state. Raises SessionNotFoundError."""
        return await self.store.get(session_id)

    async def list(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        waiting_for: str | None = None,
        due: bool = False,
        limit: int = 100,
        newest: bool = False,
    ) -> list[StoredSession]:
        """Stored sessions matching every given filter, oldest first.

        ``newest=True`` lists the most recently updated first instead.

        Raises:
            ValueError: ``status`` is not a status a row can have, or
                ``limit`` is not a whole number of at least 1.
        """
        if status is not None and status not in _STATUSES:
            raise ValueError(
                f"list(status={status!r}): no stored session can have it (it would list "
                f"nothing); use one of {', '.join(_STATUSES)}"
            )
        if not is_count(limit, 1):
            raise ValueError(f"list(limit={limit!r}): pass a whole number of at least 1")
        limit = min(limit, LIMIT_MAX)
        return await self.store.list_sessions(
            status=status,
            pipeline=pipeline,
            waiting_for=waiting_for,
            due=due,
            limit=limit,
            newest=newest,
        )

    async def wait(
        self,
        session_id: str,
        *,
        seq: int | None = None,
        finished: bool = False,
        timeout: float,
    ) -> StoredSession:
        """Wait until input ``seq`` is recorded in a saved turn, or the session has finished.

        Without ``seq``: until every input sent so far is recorded (and at
        least one turn was saved). For request/response handlers. With
        ``finished=True``: until the session has ended (timers included).

        Raises:
            TimeoutError: not within ``timeout`` seconds (the message says
                where the session stands: no worker took it, a turn runs ...).
            SessionNotFoundError: no such session.
            ValueError: ``timeout`` is not a number of seconds above 0
                (``math.inf``: no bound), or ``seq`` is not a whole number.
        """
        if not (is_seconds(timeout, zero=False) or timeout == math.inf):
            # NaN: anyio's own message named no argument; 0 or less timed out
            # before the store was read, blaming the store.
            raise ValueError(
                f"wait(timeout={timeout!r}): pass a number of seconds above 0 (math.inf: no bound)"
            )
        if seq is not None and not is_count(seq, 0):
            raise ValueError(
                f"wait(seq={seq!r}): pass the seq of the InputRecord that send_input returned "
                "(a whole number)"
            )
        pauses = self._pauses()
        stored: StoredSession | None = None
        target = seq
        try:
            with anyio.fail_after(timeout) as scope:
                sent = None if seq is None else self._sent.pop((session_id, seq), None)
                if sent is not None:
                    # Sent by this service: until a save is noticed after the send, the
                    # input is not recorded (returns at once if one was noticed already).
                    await self.store.wait_for_save(session_id, sent, next(pauses))
                mark = self.store.save_mark()
                stored = await self.store.get(session_id)
                target = stored.inbox_head if seq is None else seq
                while not (stored.finished or (not finished and _recorded(stored, target))):
                    await self.store.wait_for_save(session_id, mark, next(pauses))
                    mark = self.store.save_mark()
                    stored = await self.store.get(session_id)
                return stored
        except TimeoutError:
            if not scope.cancelled_caught:  # not this wait's deadline
                raise
            raise TimeoutError(_timed_out(session_id, target, finished, timeout, stored)) from None

    async def follow(self, session_id: str, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The committed history events (``Event.to_dict()``), each once, in ``seq`` order.

        Ends after the last event of a finished session. Events of a turn
        that a lost lease discarded never appear.

        Raises:
            ValueError: ``after`` is not a whole number (an event's ``seq``, or 0).
            SessionNotFoundError: no such session.
        """
        if not is_count(after, 0):
            raise ValueError(f"follow(after={after!r}): pass the seq of an event, or 0")
        pauses = self._pauses()
        while True:
            mark = self.store.save_mark()
            batch = await self.store.events(session_id, after=after)
            for event in batch:
                after = int(event["seq"])
                yield event
            if batch:
                pauses = self._pauses()
                continue
            stored = await self.store.get(session_id)
            if stored.finished and stored.events_done <= after:
                return
            await self.store.wait_for_save(session_id, mark, next(pauses))
