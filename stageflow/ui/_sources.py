"""Where the inspected sessions come from: a session store, or snapshot files.

Both kinds answer the same questions (which sessions match these filters,
everything about one session) with the same records, so the pages do not
know which one they read. Only a store takes actions: a snapshot file has no
worker to deliver an input.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import attrs

import stageflow
from stageflow._cli._registry import structural_registry
from stageflow.store import SessionNotFoundError, SessionStore, StoredDataError, StoredSession
from stageflow.ui._errors import InputRefusedError, SnapshotLoadError
from stageflow.ui._inspect import SessionView, inspect_session, pipeline_version, plain

__all__ = [
    "MAX_EVENTS",
    "Filters",
    "Loaded",
    "SessionRow",
    "SnapshotSource",
    "Source",
    "StoreSource",
    "PipelineCache",
    "check_input",
]

_MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
MAX_EVENTS = 100_000
"""The events of one session the inspector reads from a store, the first ones."""


@attrs.frozen
class Filters:
    """What the sessions page filters by; empty strings mean any."""

    status: str = ""
    pipeline: str = ""
    waiting_for: str = ""


@attrs.frozen
class SessionRow:
    """One line of the sessions page.

    Attributes:
        session_id: the id.
        status: ``pending``, ``waiting`` or a finished status.
        pipeline: the pipeline's name.
        version: the pipeline's version (``metadata.version``, else its digest's start).
        waiting_for: the input types it waits for.
        wake_at: when it runs again without input (ISO 8601), if ever.
        updated: when it was last saved (ISO 8601).
        error: its error message (the session's, or the store's last failure), if any.
        turns: saved turns (store only).
    """

    session_id: str
    status: str
    pipeline: str
    version: str
    waiting_for: tuple[str, ...]
    wake_at: str | None
    updated: str | None
    error: str | None
    turns: int | None = None


@attrs.frozen
class Loaded:
    """One session with everything its page needs.

    Attributes:
        row: its line of the sessions page.
        view: what its page shows (redacted).
        source: where it was read (the store URL's kind, or the file).
        store_error: the store's last failure outside the session (a traceback), if any.
    """

    row: SessionRow
    view: SessionView
    source: str
    store_error: str | None = None


class Source(Protocol):
    """What the pages read sessions from."""

    kind: str
    """``store`` or ``snapshots``."""

    async def rows(self, filters: Filters, limit: int) -> tuple[list[SessionRow], list[str]]:
        """Matching sessions (newest update first) and the problems met reading them."""

    async def load(self, session_id: str, redact: Sequence[str]) -> Loaded:
        """Everything about one session. Raises SessionNotFoundError or SnapshotLoadError."""

    async def fingerprint(self, session_id: str) -> str:
        """A short text that changes whenever the session is saved again."""

    async def aclose(self) -> None:
        """Close what the source holds open."""


def _registry_for(
    document: Any, registry: stageflow.StageRegistry | None
) -> stageflow.StageRegistry:
    """``registry`` when it has every stage the document names, else a structural one."""
    structural = structural_registry(document)
    if registry is not None and all(name in registry for name in structural):
        return registry
    return structural


class PipelineCache:
    """Pipelines already loaded from snapshots, by digest (loading one costs ~100 ms)."""

    def __init__(self, registry: stageflow.StageRegistry | None, size: int = 64) -> None:
        self.registry = registry
        self.size = size
        self._pipelines: dict[str, stageflow.Pipeline] = {}

    def restore(self, snapshot: Any, where: str) -> tuple[stageflow.Session, Mapping[str, Any]]:
        """Check a snapshot by restoring it; returns the session and the snapshot.

        Stages the inspector was not given (``--stages``) are stood in for by
        names without specs: nothing runs here, and the document is checked
        all the same. A pipeline is loaded once per digest and reused for a
        snapshot that carries the same document.

        Raises:
            SnapshotLoadError: it is not a snapshot this stageflow restores.
        """
        if not isinstance(snapshot, Mapping):
            raise SnapshotLoadError(f"{where}: not a session snapshot (a JSON object is expected)")
        meta = snapshot.get("pipeline")
        document = meta.get("document") if isinstance(meta, Mapping) else None
        digest = meta.get("digest") if isinstance(meta, Mapping) else None
        known = self._pipelines.get(digest) if isinstance(digest, str) else None
        if known is not None and plain(known.document) != plain(document):
            known = None  # not the document of that digest: a full restore reports it
        try:
            session = stageflow.Session.from_dict(
                snapshot, registry=_registry_for(document, self.registry), pipeline=known
            )
        except stageflow.StageflowError as exc:
            raise SnapshotLoadError(f"{where}: the snapshot does not load: {exc}") from exc
        if known is None and session.pipeline.digest == digest:
            if len(self._pipelines) >= self.size:
                self._pipelines.clear()
            self._pipelines[session.pipeline.digest] = session.pipeline
        return session, snapshot

    async def restore_in_thread(
        self, snapshot: Any, where: str
    ) -> tuple[stageflow.Session, Mapping[str, Any]]:
        """:meth:`restore` in a worker thread: checking a big snapshot takes a while.

        Raises:
            SnapshotLoadError: it is not a snapshot this stageflow restores.
        """
        return await anyio.to_thread.run_sync(self.restore, snapshot, where)


def _view(
    session: stageflow.Session,
    snapshot: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    redact: Sequence[str],
) -> SessionView:
    own = session.pipeline.metadata.get("redact")
    patterns = (
        [*redact, *(p for p in own if isinstance(p, str))]
        if isinstance(own, list | tuple)
        else redact
    )
    return inspect_session(snapshot, events, session.pipeline, redact_paths=tuple(patterns))


async def _view_in_thread(
    session: stageflow.Session,
    snapshot: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    redact: Sequence[str],
) -> SessionView:
    """:func:`_view` in a worker thread: a history of 100,000 events takes seconds to read."""
    return await anyio.to_thread.run_sync(_view, session, snapshot, events, redact)


def _error_of(snapshot: Mapping[str, Any]) -> str | None:
    outcome = snapshot.get("outcome")
    error = outcome.get("error") if isinstance(outcome, Mapping) else None
    return str(error.get("message")) if isinstance(error, Mapping) else None


def _matches(row: SessionRow, filters: Filters) -> bool:
    return (
        (not filters.status or row.status == filters.status)
        and (not filters.pipeline or row.pipeline == filters.pipeline)
        and (not filters.waiting_for or filters.waiting_for in row.waiting_for)
    )


def check_input(view: SessionView, type: str, text: str) -> Any:
    """The payload of an input the session can take now, parsed and checked.

    Raises:
        InputRefusedError: the session does not wait for ``type``, the text is
            not JSON, or the payload does not match the declared schema.
    """
    forms = {f.type: f for f in view.forms}
    if type not in forms:
        waits = ", ".join(sorted(forms)) or "nothing"
        raise InputRefusedError(
            f"session {view.session_id!r} does not wait for input {type!r} (it waits for "
            f"{waits}); nothing was sent. Reload the page to see what it waits for now"
        )
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputRefusedError(
            f"the payload of input {type!r} is not JSON: {exc.msg} at line {exc.lineno} "
            f'column {exc.colno}; nothing was sent. Quote strings ("yes")'
        ) from exc
    except ValueError as exc:  # an integer with more digits than Python converts
        raise InputRefusedError(
            f"the payload of input {type!r} cannot be read: {str(exc).split(':')[0]}; "
            "nothing was sent. Send a number that long as a string"
        ) from exc
    except RecursionError as exc:
        raise InputRefusedError(
            f"the payload of input {type!r} is nested too deeply to read; nothing was "
            "sent. Send a flatter payload"
        ) from exc
    schema = forms[type].schema
    if schema is not None:
        # Checked as the session checks it: no "$ref" fetched, patterns matched in
        # linear time. A schema of a pipeline this stageflow could not load (a
        # "$ref" that resolves to nothing) is refused, saying so.
        try:
            validator = stageflow.InputSpec(type, schema=schema).validator
        except stageflow.DefinitionError as exc:
            raise InputRefusedError(
                f"the payload of input {type!r} cannot be checked: {exc}; nothing was sent. "
                "Fix the schema in the pipeline"
            ) from exc
        assert validator is not None  # a schema was given
        try:
            problems = tuple(
                f"{e.json_path}: {e.message}"
                for e in sorted(validator.iter_errors(payload), key=lambda e: list(e.path))
            )
        except RecursionError as exc:
            raise InputRefusedError(
                f"the payload of input {type!r} is nested too deeply to check against its "
                "schema; nothing was sent. Send a flatter payload"
            ) from exc
        if problems:
            raise InputRefusedError(
                f"the payload of input {type!r} does not match the schema the session "
                f"declares ({len(problems)} problem(s)); nothing was sent. Fix the payload",
                problems,
            )
    return payload


# ------------------------------------------------------------------------ store


def _unreadable(session_id: str, what: str, exc: Exception) -> str:
    """What to say of a stored value another store's reading failed on (a damaged row)."""
    return (
        f"session {session_id!r}: its stored {what} cannot be read ({exc}); the row is "
        "damaged: restore it from a backup, or purge the session"
    )


class StoreSource:
    """Sessions of a session store (read through its public protocol)."""

    kind = "store"

    def __init__(self, store: SessionStore, registry: stageflow.StageRegistry | None) -> None:
        self.store = store
        self.pipelines = PipelineCache(registry)
        # (session id, saved version) -> (pipeline version, error): snapshots do not change.
        self._details: dict[tuple[str, int], tuple[str, str | None]] = {}

    async def _snapshot(self, session_id: str) -> Any:
        """The stored snapshot of ``session_id``.

        Raises:
            SnapshotLoadError: the stored snapshot cannot be read (a damaged row).
        """
        try:
            return await self.store.load(session_id)
        except StoredDataError as exc:
            raise SnapshotLoadError(str(exc)) from exc
        except ValueError as exc:  # another store's JSON error
            raise SnapshotLoadError(_unreadable(session_id, "snapshot", exc)) from exc

    async def _events(self, session_id: str) -> list[dict[str, Any]]:
        """The committed events of ``session_id``.

        Raises:
            SnapshotLoadError: the stored history cannot be read (a damaged row).
        """
        try:
            return await self.store.events(session_id, limit=MAX_EVENTS)
        except StoredDataError as exc:
            raise SnapshotLoadError(str(exc)) from exc
        except ValueError as exc:  # another store's JSON error
            raise SnapshotLoadError(_unreadable(session_id, "history", exc)) from exc

    async def _details_of(self, row: StoredSession) -> tuple[str, str | None]:
        key = (row.session_id, row.version)
        found = self._details.get(key)
        if found is None:
            try:
                snapshot = await self._snapshot(row.session_id)
                session, _ = await self.pipelines.restore_in_thread(
                    snapshot, f"session {row.session_id!r}"
                )
            except SnapshotLoadError as exc:
                found = ("?", str(exc))
            else:
                found = (pipeline_version(session.pipeline), _error_of(snapshot))
            if len(self._details) > 10_000:
                self._details.clear()
            self._details[key] = found
        return found

    def _row(self, row: StoredSession, version: str, error: str | None) -> SessionRow:
        return SessionRow(
            session_id=row.session_id,
            status=row.status,
            pipeline=row.pipeline,
            version=version,
            waiting_for=tuple(row.waiting_for),
            wake_at=row.wake_at.isoformat() if row.wake_at else None,
            updated=row.updated_at.isoformat(),
            error=error or (row.error.strip().splitlines()[-1] if row.error else None),
            turns=row.version,
        )

    async def rows(self, filters: Filters, limit: int) -> tuple[list[SessionRow], list[str]]:
        """Matching sessions, newest update first."""
        found = await self.store.list_sessions(
            status=filters.status or None,
            pipeline=filters.pipeline or None,
            waiting_for=filters.waiting_for or None,
            limit=limit,
            newest=True,
        )
        rows = []
        for row in found:
            try:
                rows.append(self._row(row, *await self._details_of(row)))
            except SessionNotFoundError:
                continue  # purged since it was listed
        return rows, []

    async def load(self, session_id: str, redact: Sequence[str]) -> Loaded:
        """Row, snapshot and committed events of one stored session."""
        stored = await self.store.get(session_id)
        snapshot = await self._snapshot(session_id)
        session, _ = await self.pipelines.restore_in_thread(snapshot, f"session {session_id!r}")
        events = await self._events(session_id)
        if not events:
            events = list(snapshot.get("history") or ())
        version, error = pipeline_version(session.pipeline), _error_of(snapshot)
        return Loaded(
            self._row(stored, version, error),
            await _view_in_thread(session, snapshot, events, redact),
            "store",
            store_error=stored.error,
        )

    async def fingerprint(self, session_id: str) -> str:
        """Changes with every saved turn, new input and lease."""
        row = await self.store.get(session_id)
        return f"{row.version}.{row.inbox_head}.{row.status}.{row.lease_owner or ''}"

    async def aclose(self) -> None:
        """Close the store's connections."""
        await self.store.aclose()


# -------------------------------------------------------------------- snapshots


def _stat(file: Path) -> os.stat_result:
    """The file's status (a ``stat`` does not wait on a FIFO, unlike an ``open``).

    Raises:
        SnapshotLoadError: the file is gone or cannot be looked at.
    """
    try:
        return file.stat()
    except OSError as exc:
        raise SnapshotLoadError(
            f"{file}: cannot read the file: {exc.strerror or exc}; check the path"
        ) from exc


def _check_regular(file: Path, info: os.stat_result) -> None:
    """Refuse what is not a regular file of a size the inspector reads.

    Raises:
        SnapshotLoadError: a FIFO, socket, device or directory (opening a FIFO
            would wait for a writer), or a file that is too big.
    """
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a directory"
            if stat.S_ISDIR(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device or other special file"
        )
        raise SnapshotLoadError(
            f"{file}: not a regular file ({kind}); the inspector reads only regular "
            "snapshot files: move it out of the directory or rename it"
        )
    if info.st_size > _MAX_SNAPSHOT_BYTES:
        raise SnapshotLoadError(
            f"{file}: {info.st_size} bytes is more than the {_MAX_SNAPSHOT_BYTES} the "
            "inspector reads"
        )


def _read_json(file: Path) -> Any:
    """The JSON of a snapshot file (called in a worker thread).

    The file is opened without waiting (``O_NONBLOCK``) and checked again
    once open, so a file swapped for a FIFO after the first look is refused
    instead of blocking the thread for ever.

    Raises:
        SnapshotLoadError: the file cannot be read, is not a regular file, or is not JSON.
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            _check_regular(file, os.fstat(handle.fileno()))
            raw = handle.read(_MAX_SNAPSHOT_BYTES + 1)
        if len(raw) > _MAX_SNAPSHOT_BYTES:
            raise SnapshotLoadError(
                f"{file}: more than the {_MAX_SNAPSHOT_BYTES} bytes the inspector reads"
            )
        return json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotLoadError(f"{file}: cannot read the file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SnapshotLoadError(
            f"{file}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise SnapshotLoadError(f"{file}: the JSON cannot be read: {exc}") from exc


def _taken_at(snapshot: Mapping[str, Any]) -> str:
    """When the snapshot was taken (ISO 8601, UTC: ordered as text), or ``""``."""
    taken = snapshot.get("taken_at")
    return taken if isinstance(taken, str) else ""


def _shadowed(older: Path, newer: Path, session_id: str) -> str:
    """What to say of a file whose session another file holds in a later snapshot."""
    return (
        f"{older}: holds session {session_id!r} as {newer.name} does, in a snapshot taken "
        f"earlier: the sessions list and the session's page show the one of {newer.name}; "
        f"open {older.name} alone with stageflow ui {older}"
    )


class SnapshotSource:
    """Sessions of snapshot files: one ``.json`` file, or every one in a directory."""

    kind = "snapshots"

    def __init__(self, path: Path, registry: stageflow.StageRegistry | None) -> None:
        self.path = path
        self.pipelines = PipelineCache(registry)
        # file -> ((mtime, size), session, snapshot) or the problem reading it
        self._cache: dict[Path, tuple[tuple[int, int], Any]] = {}

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            # By suffix in any case (X.JSON too), as pipeline files are read.
            return sorted(p for p in self.path.iterdir() if p.suffix.lower() == ".json")
        return [self.path]

    async def _read(self, file: Path) -> tuple[stageflow.Session, Mapping[str, Any]]:
        info = _stat(file)
        key = (info.st_mtime_ns, info.st_size)
        cached = self._cache.get(file)
        if cached is not None and cached[0] == key:
            if isinstance(cached[1], SnapshotLoadError):
                raise cached[1]
            out: tuple[stageflow.Session, Mapping[str, Any]] = cached[1]
            return out
        try:
            _check_regular(file, info)
            # Off the event loop: a big file (or a slow disk) must not stall other pages.
            data = await anyio.to_thread.run_sync(_read_json, file)
            loaded = await self.pipelines.restore_in_thread(data, str(file))
        except SnapshotLoadError as exc:
            self._cache[file] = (key, exc)
            raise
        self._cache[file] = (key, loaded)
        return loaded

    def _row(self, session: stageflow.Session, snapshot: Mapping[str, Any]) -> SessionRow:
        view = inspect_session(snapshot, (), session.pipeline)
        return SessionRow(
            session_id=session.session_id,
            status=session.status.value,
            pipeline=session.pipeline.name,
            version=view.version,
            waiting_for=tuple(sorted({f.type for f in view.forms})),
            wake_at=view.wake_at,
            updated=view.taken_at,
            error=_error_of(snapshot),
        )

    async def rows(self, filters: Filters, limit: int) -> tuple[list[SessionRow], list[str]]:
        """The sessions of every readable file; the others as problems.

        A session held by several files is listed once, from the snapshot
        taken last (the one its page shows); each other file is a problem
        that says so.
        """
        latest: dict[str, tuple[Path, SessionRow]] = {}
        problems: list[str] = []
        for file in self._files():
            try:
                session, snapshot = await self._read(file)
            except SnapshotLoadError as exc:
                problems.append(str(exc))
                continue
            row = self._row(session, snapshot)
            known = latest.get(row.session_id)
            if known is None or (row.updated or "") > (known[1].updated or ""):
                latest[row.session_id] = (file, row)
            if known is not None:
                kept = latest[row.session_id][0]
                problems.append(_shadowed(known[0] if kept == file else file, kept, row.session_id))
        rows = [row for _, row in latest.values() if _matches(row, filters)]
        rows.sort(key=lambda r: r.updated or "", reverse=True)
        return rows[:limit], problems

    async def _find(self, session_id: str) -> tuple[Path, stageflow.Session, Mapping[str, Any]]:
        """The file that holds ``session_id`` in the snapshot taken last, with its session.

        Raises:
            SessionNotFoundError: no file holds it.
            SnapshotLoadError: none does, and the file named after it cannot be read.
        """
        found: tuple[Path, stageflow.Session, Mapping[str, Any]] | None = None
        broken: SnapshotLoadError | None = None
        for file in self._files():
            try:
                session, snapshot = await self._read(file)
            except SnapshotLoadError as exc:
                if file.stem == session_id:
                    broken = exc
                continue
            if session.session_id == session_id and (
                found is None or _taken_at(snapshot) > _taken_at(found[2])
            ):
                found = (file, session, snapshot)
        if found is not None:
            return found
        if broken is not None:
            raise broken
        raise SessionNotFoundError(session_id)

    async def load(self, session_id: str, redact: Sequence[str]) -> Loaded:
        """The session of the file that holds it (its history is the snapshot's)."""
        file, session, snapshot = await self._find(session_id)
        events = list(snapshot.get("history") or ())
        return Loaded(
            self._row(session, snapshot),
            await _view_in_thread(session, snapshot, events, redact),
            str(file),
        )

    async def fingerprint(self, session_id: str) -> str:
        """Changes when the file is written again."""
        file, _, _ = await self._find(session_id)
        info = _stat(file)
        return hashlib.sha1(f"{info.st_mtime_ns}.{info.st_size}".encode()).hexdigest()[:12]

    async def aclose(self) -> None:
        """Nothing to close."""
