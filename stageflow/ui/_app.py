"""The inspector's ASGI app: routes, pages, live updates (Starlette, on anyio).

Every page is rendered on the server (Jinja2, autoescaped); the one script
(``static/ui.js``) adds live updates, node selection and the check of an
input against its schema before it is sent. Errors become pages that say
what happened and what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
import jinja2
from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import stageflow
from stageflow._cli._graph import Graph, build_graph
from stageflow._log import get_logger
from stageflow.store import (
    FINISHED_STATUSES,
    SessionFinishedError,
    SessionNotFoundError,
    SessionStore,
    StoreError,
)
from stageflow.ui._drawing import NodeMarks, draw, drawn_kind
from stageflow.ui._errors import ActionsDisabledError, InputRefusedError, InspectorError
from stageflow.ui._inspect import SessionView
from stageflow.ui._pipelines import (
    PipelineFile,
    coverage_marks,
    list_pipeline_files,
    load_coverage,
    read_pipeline_file,
)
from stageflow.ui._sources import (
    MAX_EVENTS,
    Filters,
    Loaded,
    SnapshotSource,
    Source,
    StoreSource,
    check_input,
)

__all__ = ["InspectorConfig", "create_app"]

_HERE = Path(__file__).parent
_LIMIT = 200
# The events a session page shows unless asked for all (?history=all): the last ones.
# A history of 100,000 events (the default max_history) was a 40 MB page that took
# a minute to render, on the event loop.
_HISTORY_SHOWN = 1000
_STATUSES = ("pending", "waiting", "completed", "failed", "cancelled", "timed_out", "poisoned")

log = get_logger("stageflow.ui")


@attrs.frozen
class InspectorConfig:
    """What ``stageflow ui`` was asked to show, and what it may do.

    Attributes:
        store: the session store to read (``None``: no store).
        snapshots: a snapshot file or a directory of them (``None``: none).
        pipelines: a directory of pipeline files for the pipeline pages.
        registry: the stages (``--stages``): their input schemas check the
            input forms; without them only ``WaitStage``'s ``input_schema`` is known.
        jaeger: the Jaeger UI's base URL; each event with span ids links to its span.
        allow_actions: whether the pages may send inputs and cancel sessions.
        redact: path patterns of values to hide (see ``docs/ui.md``).
        coverage: a ``stageflow test --json`` report, drawn on the pipeline pages.
        refresh: seconds between two looks at the store for live updates.
        allowed_hosts: the host names requests may name (``Host``), or ``None``
            for any; ``stageflow ui`` on a loopback address allows only loopback
            names, so a web page cannot reach it by rebinding its own name.
    """

    store: SessionStore | None = None
    snapshots: Path | None = None
    pipelines: Path | None = None
    registry: stageflow.StageRegistry | None = None
    jaeger: str | None = None
    allow_actions: bool = False
    redact: tuple[str, ...] = ()
    coverage: Path | None = None
    refresh: float = 1.0
    allowed_hosts: tuple[str, ...] | None = None


def _plain(value: Any) -> Any:
    """Frozen JSON (read-only mappings, tuples) as plain JSON, for ``json.dumps``."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | frozenset):
        return list(value)
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown_surrogate(found: re.Match[str]) -> str:
    code = ord(found.group())
    # A byte of a file name that is not UTF-8 (os.fsdecode's surrogate escape), as \xNN.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def displayable(text: str) -> str:
    r"""``text`` as UTF-8 can carry it: each lone surrogate written out as an escape.

    A file name that is not UTF-8 (``caf\xe9.json`` in Latin-1) comes from
    the file system with surrogate escapes; the page shows its bytes as
    ``\xNN`` instead of failing to encode.
    """
    return _SURROGATE.sub(_shown_surrogate, text)


def file_path(name: str) -> str:
    """A file name as one path segment: its bytes on disk, percent-encoded."""
    return urllib.parse.quote(os.fsencode(name), safe="")


def _path_file(request: Request) -> str:
    """The file name a ``/pipelines/FILE`` address names, bytes that are not UTF-8 included.

    A server decodes the path as UTF-8 (an undecodable byte becomes U+FFFD),
    so the name is read from the raw path when the server gives it.
    """
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and b"/" in raw:
        segment = raw.partition(b"?")[0].rsplit(b"/", 1)[1]
        return os.fsdecode(urllib.parse.unquote_to_bytes(segment))
    return str(request.path_params["file"])


class _StreamProblem:
    """What a live stream last told the page about the store: each change once.

    A look that fails sends a ``problem`` event with the store's message (and
    logs it), unless it is the message sent last; the first look that reads
    again sends an empty one, which clears it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.text = ""

    def failed(self, exc: Exception) -> str | None:
        """The event for a failed look, or ``None`` when the page already has it."""
        text = str(exc)
        if text == self.text:
            return None
        self.text = text
        log.warning("ui.live_update_failed", path=self.path, error=text)
        return f"event: problem\n{_data(text)}\n"

    def cleared(self) -> str | None:
        """The event for a look that read again after a failure, or ``None``."""
        if not self.text:
            return None
        self.text = ""
        return "event: problem\ndata: \n\n"


def session_path(session_id: str) -> str:
    """A session id as one path segment, for the pages' links and forms.

    Every character but letters, digits and ``-._~`` is percent-encoded, ``/``
    included: a browser then keeps ``a/../b`` as it is. The routes take the
    rest of the path as the id, so ``/sessions/orders/42`` works too.
    """
    return urllib.parse.quote(session_id.encode("utf-8", "surrogatepass"), safe="")


def _root(request: Request) -> str:
    """Where the app is mounted (``""`` at the root), for its own addresses.

    Mounted in another ASGI app (``Mount("/inspector", app)``), every link,
    form, script and redirect named an address of the outer app.
    """
    return str(request.scope.get("root_path", "")).rstrip("/")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json"] = lambda value: json.dumps(
        value, indent=2, ensure_ascii=False, default=_plain
    )
    env.filters["compact"] = lambda value: json.dumps(value, ensure_ascii=False, default=_plain)
    env.filters["id_path"] = session_path
    env.filters["file_path"] = file_path
    env.filters["short_time"] = lambda text: str(text)[:19].replace("T", " ") if text else ""
    return env


_MAX_FORM_BYTES = 2 * 1024 * 1024


async def _form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (the only kind the pages post); the first of each.

    Raises:
        InputRefusedError: the body is larger than the inspector reads.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise InputRefusedError(
                f"the form is larger than {_MAX_FORM_BYTES} bytes; nothing was sent"
            )
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that ends as soon as the client goes away.

    Starlette relies on a failed ``send`` to notice a closed connection under
    ASGI 2.4, so an idle stream (nothing to send) would poll on for ever; this
    one also listens for ``http.disconnect`` while it streams, on every server.
    """

    def __init__(self, content: AsyncIterator[str]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Stream until the content ends or the client disconnects."""
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


# The line ends of the event stream format; str.splitlines also splits at
# U+2028, U+0085, form feeds ..., which the browser then read back as "\n".
_LINE_END = re.compile(r"\r\n|\r|\n")


def _data(text: str) -> str:
    """``text`` as the data lines of a server-sent event (one ``data:`` line per line)."""
    return "".join(f"data: {line}\n" for line in _LINE_END.split(text))


# The notices a session page shows after the app's own redirect, by code: the page
# never shows text from its address, which anyone can write into a link.
_NOTICES = {
    "input-stored": "input #{seq} stored; a worker delivers it",
    "cancel-stored": "cancel request stored as #{seq}; a worker ends the session",
}


def _notice(query: Mapping[str, str]) -> str:
    """The notice ``?notice=CODE&seq=N`` stands for; empty for anything else."""
    template = _NOTICES.get(query.get("notice", ""))
    seq = query.get("seq", "")
    if template is None or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        return ""
    return template.format(seq=int(seq))


def _fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _state_label(view: SessionView, node_id: str) -> NodeMarks:
    state = view.nodes[node_id]
    words = [state.state]
    if state.visits:
        words.append(f"started {state.visits} time{'s' if state.visits != 1 else ''}")
    if state.failures:
        words.append(f"failed {state.failures}")
    waits = sorted({p.waits_for for p in state.positions if p.waits_for})
    if waits:
        words.append("waits for " + ", ".join(waits))
    badge = f"{state.visits}x" if state.visits > 1 else ""
    return NodeMarks(state.state, badge, "; ".join(words))


async def _drawn(graph: Graph, **options: Any) -> str:
    """``draw(graph, **options)`` in a worker thread.

    Laying out a graph of hundreds of nodes with many long edges takes
    seconds: on the event loop, every other page and live update would wait.
    """
    return await anyio.to_thread.run_sync(functools.partial(draw, graph, **options))


async def _read_pipeline(
    directory: Path, file: str, registry: stageflow.StageRegistry | None
) -> PipelineFile:
    """``read_pipeline_file(directory, file, registry)`` in a worker thread.

    Loading and checking a pipeline takes tens of milliseconds: a directory of
    a hundred held every other page and live update for two seconds.

    Raises:
        InspectorError: (404) no such pipeline file in the directory.
    """
    return await anyio.to_thread.run_sync(read_pipeline_file, directory, file, registry)


def _web_address(text: str) -> bool:
    """Whether ``text`` is an absolute http or https URL."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # "http://[::1" and the like
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class Inspector:
    """The app's state: sources, templates, settings. One per app."""

    def __init__(self, config: InspectorConfig) -> None:
        if not (isinstance(config.refresh, int | float) and 0 < config.refresh < math.inf):
            raise InspectorError(
                f"InspectorConfig(refresh={config.refresh!r}): the seconds between two looks "
                "at the store must be a finite number above 0; use e.g. 1.0"
            )
        if config.jaeger is not None and not _web_address(config.jaeger):
            # A link to "localhost:16686/trace/..." is one to the scheme "localhost:".
            raise InspectorError(
                f"the Jaeger UI address {config.jaeger!r} (--jaeger) is not an http or https "
                "URL; use e.g. http://localhost:16686"
            )
        self.config = config
        self.env = _environment()
        self.source: Source | None = None
        if config.store is not None:
            self.source = StoreSource(config.store, config.registry)
        elif config.snapshots is not None:
            self.source = SnapshotSource(config.snapshots, config.registry)
        self.coverage = load_coverage(config.coverage)

    # ---------------------------------------------------------------- helpers

    def page(
        self,
        request: Request,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> Response:
        """Render a page of the inspector."""
        html = self.env.get_template(template).render(
            request=request,
            root=_root(request),
            config=self.config,
            source=self.source,
            has_pipelines=self.config.pipelines is not None,
            **values,
        )
        return HTMLResponse(displayable(html), status_code=status, headers=headers)

    def need_source(self) -> Source:
        """The session source; an error page when the inspector has none."""
        if self.source is None:
            raise InspectorError(
                "this inspector shows no sessions: start it with --store URL or a snapshot "
                "file or directory",
                status_code=404,
            )
        return self.source

    def jaeger_link(self, event: Mapping[str, Any]) -> str | None:
        """The Jaeger UI address of the event's span, when there is one."""
        base = self.config.jaeger
        if not base or not event.get("trace_id"):
            return None
        link = f"{base.rstrip('/')}/trace/{event['trace_id']}"
        if event.get("span_id"):
            link += f"?uiFind={event['span_id']}"
        return link

    # ---------------------------------------------------------------- sessions

    def filters(self, request: Request) -> Filters:
        """The sessions page's filters from the query string."""
        q = request.query_params
        status = q.get("status", "")
        if status and status not in _STATUSES:
            # A typo listed no sessions, as if there were none.
            raise InspectorError(
                f"status {status[:100]!r} is not a status a stored session has; use one of "
                f"{', '.join(_STATUSES)}, or leave it out for every session"
            )
        return Filters(status, q.get("pipeline", ""), q.get("waiting_for", ""))

    def history_shown(self, request: Request, events: tuple[Any, ...]) -> tuple[Any, ...]:
        """The events a session page lists: the last ``_HISTORY_SHOWN``, or ``?history=all``.

        Raises:
            InspectorError: (400) ``history`` is given, but not ``all``.
        """
        choice = request.query_params.get("history", "")
        if choice and choice != "all":
            raise InspectorError(
                f"history {choice[:100]!r} is not a choice; use history=all to list every "
                f"event, or leave it out for the last {_HISTORY_SHOWN}"
            )
        return events if choice == "all" else events[-_HISTORY_SHOWN:]

    async def listing(self, source: Source, filters: Filters, root: str) -> tuple[str, list[str]]:
        """The rows of the sessions list (HTML) and the problems met reading them.

        One session more than the list holds is asked for: a list cut at
        ``_LIMIT`` says so (it looked like every session there was).
        """
        rows, problems = await source.rows(filters, _LIMIT + 1)
        body = self.env.get_template("_rows.html").render(
            rows=rows[:_LIMIT], more=len(rows) > _LIMIT, limit=_LIMIT, root=root
        )
        return displayable(body), problems

    async def sessions(self, request: Request) -> Response:
        """GET /sessions: the sessions, filtered, updated live."""
        source = self.need_source()
        filters = self.filters(request)
        body, problems = await self.listing(source, filters, _root(request))
        query = urllib.parse.urlencode(attrs.asdict(filters))
        return self.page(
            request,
            "sessions.html",
            rows_html=body,
            problems=problems,
            filters=filters,
            statuses=_STATUSES,
            stream=f"{_root(request)}/live/sessions?{query}&fp={_fingerprint(body)}",
        )

    async def sessions_stream(self, request: Request) -> Response:
        """GET /live/sessions: server-sent ``rows`` events whenever the list changes.

        The first look at the store comes before the response starts, so a
        store that cannot be read is the 503 page. Later, a failing look sends
        a ``problem`` event with the store's message (and an empty one when it
        reads again) and the stream goes on looking.
        """
        source = self.need_source()
        filters = self.filters(request)
        last = request.query_params.get("fp", "")
        root = _root(request)
        first, _ = await self.listing(source, filters, root)

        async def changes() -> AsyncIterator[str]:
            nonlocal last
            yield "retry: 2000\n\n"
            body: str | None = first
            problem = _StreamProblem(request.url.path)
            while True:
                if body is not None:
                    fp = _fingerprint(body)
                    if fp != last:
                        last = fp
                        yield f"event: rows\nid: {fp}\n{_data(body)}\n"
                await anyio.sleep(self.config.refresh)
                try:
                    body, _ = await self.listing(source, filters, root)
                except (StoreError, InspectorError) as exc:
                    body = None
                    if (event := problem.failed(exc)) is not None:
                        yield event
                    continue
                if (event := problem.cleared()) is not None:
                    yield event

        return EventStream(changes())

    async def session(self, request: Request) -> Response:
        """GET /sessions/{id}: one session, its graph, history, context and actions."""
        session_id = request.path_params["session_id"]
        if not session_id:  # "/sessions/": no session has the empty id; the list is meant
            query = request.url.query
            target = f"{_root(request)}/sessions" + (f"?{query}" if query else "")
            return RedirectResponse(target, status_code=307)
        return await self.session_page(request, session_id)

    async def session_page(
        self,
        request: Request,
        session_id: str,
        *,
        refused: InputRefusedError | None = None,
        sent: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        """Render the session page (with a refused input's message and payload, if any)."""
        source = self.need_source()
        # Taken before the load: a save between the two then still reloads the page
        # (taken after, the page could show the old state with the new fingerprint).
        fp = await source.fingerprint(session_id)
        loaded = await source.load(session_id, self.config.redact)
        view = loaded.view
        events = self.history_shown(request, view.events)
        marks = {node.id: _state_label(view, node.id) for node in view.pipeline.nodes}
        graph = build_graph(view.pipeline)
        svg = await _drawn(
            graph,
            marks=marks,
            taken={(s, drawn_kind(k), t) for s, k, t in view.taken},
            title=f"pipeline {view.pipeline.name} in session {view.session_id}",
        )
        # The row's status is the store's word (``poisoned`` is never in a snapshot).
        finished = loaded.row.status in FINISHED_STATUSES
        return self.page(
            request,
            "session.html",
            status=status,
            loaded=loaded,
            view=view,
            row=loaded.row,
            svg=svg,
            graph=graph,
            marks=marks,
            nodes={n.id: n for n in view.pipeline.nodes},
            documents={
                str(n.get("id")): n
                for n in view.pipeline.document.get("nodes", ())
                if isinstance(n, Mapping)
            },
            finished=finished,
            events=events,
            max_events=MAX_EVENTS,
            can_act=self.config.allow_actions and source.kind == "store" and not finished,
            refused=refused,
            sent=sent or {},
            notice=_notice(request.query_params),
            jaeger=self.jaeger_link,
            stream=f"{_root(request)}/live/sessions/{session_path(session_id)}?fp={fp}",
        )

    async def session_stream(self, request: Request) -> Response:
        """GET /live/sessions/{id}: a ``changed`` event when the session is saved again.

        An unknown session is the 404 page (looked up before the response
        starts); one that disappears later (purged, its file removed) gets a
        ``gone`` event and the stream ends. A look that fails otherwise sends a
        ``problem`` event, as on the sessions page, and the stream goes on.
        """
        source = self.need_source()
        session_id = request.path_params["session_id"]
        known = request.query_params.get("fp", "")
        first = await source.fingerprint(session_id)

        async def changes() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            fp: str | None = first
            problem = _StreamProblem(request.url.path)
            while True:
                if fp is not None and fp != known:
                    yield f"event: changed\ndata: {fp}\n\n"
                    return
                await anyio.sleep(self.config.refresh)
                try:
                    fp = await source.fingerprint(session_id)
                except SessionNotFoundError as exc:
                    log.info("ui.session_gone", session_id=session_id)
                    yield f"event: gone\n{_data(str(exc))}\n"
                    return
                except (StoreError, InspectorError) as exc:
                    fp = None
                    if (event := problem.failed(exc)) is not None:
                        yield event
                    continue
                if (event := problem.cleared()) is not None:
                    yield event

        return EventStream(changes())

    def _check_action(self, request: Request) -> StoreSource:
        if not self.config.allow_actions:
            raise ActionsDisabledError(
                "this inspector is read-only: sending inputs and cancelling need "
                "stageflow ui --allow-actions"
            )
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise ActionsDisabledError(
                f"a form from another site ({origin}) cannot act on sessions here"
            )
        source = self.need_source()
        if not isinstance(source, StoreSource):
            raise ActionsDisabledError(
                "a snapshot file has no worker to deliver an input: open a store "
                "(--store URL) to send inputs or cancel"
            )
        return source

    async def send_input(self, request: Request) -> Response:
        """POST /actions/input/{id}: check the input, store it, back to the page."""
        source = self._check_action(request)
        session_id = request.path_params["session_id"]
        form = await _form(request)
        type = form.get("type", "")
        text = form.get("payload", "")
        loaded: Loaded = await source.load(session_id, self.config.redact)
        try:
            payload = check_input(loaded.view, type, text)
            record = await source.store.send_input(session_id, type, payload)
        except (InputRefusedError, SessionFinishedError, stageflow.InputRejectedError) as exc:
            if isinstance(exc, InputRefusedError):
                refused = exc
            elif isinstance(exc, SessionFinishedError):
                refused = InputRefusedError(str(exc))
            else:  # the store's own check (a lone surrogate in a string, ...)
                refused = InputRefusedError(f"{exc}; nothing was sent")
            return await self.session_page(
                request, session_id, refused=refused, sent={type: text}, status=422
            )
        log.info("ui.input_sent", session_id=session_id, type=type, seq=record.seq)
        return RedirectResponse(
            f"{_root(request)}/sessions/{session_path(session_id)}?"
            + urllib.parse.urlencode({"notice": "input-stored", "seq": record.seq}),
            status_code=303,
        )

    async def cancel(self, request: Request) -> Response:
        """POST /actions/cancel/{id}: store a cancel request, back to the page."""
        source = self._check_action(request)
        session_id = request.path_params["session_id"]
        form = await _form(request)
        reason = form.get("reason", "").strip() or "cancelled from stageflow ui"
        try:
            record = await source.store.request_cancel(session_id, reason)
        except (SessionFinishedError, stageflow.InputRejectedError) as exc:
            # InputRejectedError: a reason the store cannot keep (a lone
            # surrogate); it was the 500 page.
            return await self.session_page(
                request, session_id, refused=InputRefusedError(str(exc)), status=422
            )
        log.info("ui.cancel_sent", session_id=session_id, seq=record.seq)
        return RedirectResponse(
            f"{_root(request)}/sessions/{session_path(session_id)}?"
            + urllib.parse.urlencode({"notice": "cancel-stored", "seq": record.seq}),
            status_code=303,
        )

    # --------------------------------------------------------------- pipelines

    async def pipelines(self, request: Request) -> Response:
        """GET /pipelines: the pipeline files of --pipelines."""
        directory = self.config.pipelines
        entries = []
        for file in await anyio.to_thread.run_sync(list_pipeline_files, directory):
            assert directory is not None
            loaded = await _read_pipeline(directory, file, self.config.registry)
            cover = coverage_marks(self.coverage.get(loaded.name, ()), file)
            entries.append((loaded, cover))
        return self.page(request, "pipelines.html", entries=entries, directory=directory)

    async def pipeline(self, request: Request) -> Response:
        """GET /pipelines/{file}: one pipeline's graph, node details, problems and coverage."""
        directory = self.config.pipelines
        if directory is None:
            raise InspectorError(
                "no pipeline directory: start stageflow ui with --pipelines DIR", status_code=404
            )
        loaded = await _read_pipeline(directory, _path_file(request), self.config.registry)
        cover = coverage_marks(self.coverage.get(loaded.name, ()), loaded.file)
        svg = None
        if loaded.graph is not None:
            marks: dict[str, NodeMarks] = {}
            if cover is not None:
                for node_id, hits in cover.nodes.items():
                    state = "covered" if hits else "missed"
                    label = f"run {hits} times by the cases" if hits else "never run by the cases"
                    marks[node_id] = NodeMarks(state, f"{hits}x", label)
            svg = await _drawn(
                loaded.graph,
                marks=marks,
                missed=cover.missed if cover else (),
                title=f"pipeline {loaded.name}",
            )
        node_problems = {n.id: n.problems for n in loaded.graph.nodes} if loaded.graph else {}
        return self.page(
            request,
            "pipeline.html",
            loaded=loaded,
            svg=svg,
            cover=cover,
            node_problems=node_problems,
        )

    # ------------------------------------------------------------------ misc

    async def home(self, request: Request) -> Response:
        """GET /: the sessions, or the pipelines when there are no sessions to show."""
        target = "/sessions" if self.source is not None else "/pipelines"
        return RedirectResponse(_root(request) + target, status_code=307)

    async def health(self, request: Request) -> Response:
        """GET /healthz: ``ok`` once the app serves (for readiness checks)."""
        return PlainTextResponse("ok")

    async def error_page(self, request: Request, exc: Exception) -> Response:
        """Any error as a page: what happened and what to do, never a traceback."""
        if isinstance(exc, InputRefusedError):
            status, title = exc.status_code, "Input refused"
        elif isinstance(exc, InspectorError):
            status, title = exc.status_code, "Cannot show this"
        elif isinstance(exc, SessionNotFoundError):
            status, title = 404, "No such session"
        elif isinstance(exc, StoreError):
            status, title = 503, "The session store cannot be read"
        elif isinstance(exc, HTTPException):
            status, title = exc.status_code, str(exc.detail)
        else:
            log.exception("ui.error", path=request.url.path)
            status, title = 500, "Internal error"
            exc = RuntimeError(
                "the inspector failed on this page; its log (standard error) has the details"
            )
        message = str(exc) if not isinstance(exc, HTTPException) else f"{request.url.path}: {title}"
        # An HTTPException's headers belong to its status (Allow on a 405).
        headers = exc.headers if isinstance(exc, HTTPException) else None
        return self.page(
            request, "error.html", status=status, headers=headers, title=title, message=message
        )


class _IdConvertor(PathConvertor):
    """The rest of the path, line breaks included (Starlette's ``path`` stops at one).

    A session id is any text: with ``path``, an id with a line break inside
    had no page, and one ending in a line break opened the page of the id
    without it (``$`` matches before a final newline).
    """

    regex = "(?s:.*)"


register_url_convertor("stageflow_id", _IdConvertor())


def create_app(config: InspectorConfig) -> Starlette:
    """The inspector as an ASGI app (serve it with Hypercorn, on trio or asyncio).

    Raises:
        InspectorError: the coverage report cannot be read, ``refresh`` is
            not a finite number of seconds above 0, or ``jaeger`` is not an
            http or https URL.
    """
    inspector = Inspector(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if inspector.source is not None:
                with anyio.CancelScope(shield=True):
                    await inspector.source.aclose()

    # A session id is any text, "/" included: each route that names one takes the rest
    # of the path as the id, so what is done to the session comes before it.
    routes = [
        Route("/", inspector.home),
        Route("/healthz", inspector.health),
        Route("/sessions", inspector.sessions),
        Route("/sessions/{session_id:stageflow_id}", inspector.session),
        Route("/live/sessions", inspector.sessions_stream),
        Route("/live/sessions/{session_id:stageflow_id}", inspector.session_stream),
        Route("/actions/input/{session_id:stageflow_id}", inspector.send_input, methods=["POST"]),
        Route("/actions/cancel/{session_id:stageflow_id}", inspector.cancel, methods=["POST"]),
        Route("/pipelines", inspector.pipelines),
        Route("/pipelines/{file:str}", inspector.pipeline),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    handlers: Mapping[Any, Any] = {
        Exception: inspector.error_page,
        HTTPException: inspector.error_page,
        stageflow.StageflowError: inspector.error_page,
    }
    middleware = (
        [Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))]
        if config.allowed_hosts is not None
        else []
    )
    return Starlette(
        routes=routes,
        exception_handlers=dict(handlers),
        lifespan=lifespan,
        middleware=middleware,
    )
