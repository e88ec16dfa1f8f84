"""Every route of the inspector, on a SQLite store and on a snapshot directory."""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
import re
import shutil
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import ui_support
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stageflow
from stageflow.store import (
    SessionNotFoundError,
    SessionService,
    SessionStore,
    StoreUnavailableError,
    open_store,
)
from stageflow.testing import measure_coverage
from stageflow.ui import InspectorConfig, create_app
from stageflow.ui._inspect import event_objects
from stageflow.ui._sources import Filters, StoreSource

pytestmark = pytest.mark.anyio

Client = Callable[..., httpx.AsyncClient]


def node_classes(page: str, node_id: str) -> set[str]:
    """The classes of the drawn node ``node_id`` in a page's SVG."""
    found = re.search(rf'<g class="([^"]*)" data-node="{re.escape(node_id)}"', page)
    assert found is not None, f"node {node_id!r} is not drawn"
    return set(found.group(1).split())


def edge_classes(page: str, source: str, target: str) -> set[str]:
    found = re.search(
        rf'<g class="([^"]*)" data-source="{re.escape(source)}" data-target="{re.escape(target)}"',
        page,
    )
    assert found is not None, f"edge {source} -> {target} is not drawn"
    return set(found.group(1).split())


def notice_of(page: str) -> str | None:
    """The text of a page's notice box, if it has one."""
    found = re.search(r'<p class="message notice" role="status">(.*?)</p>', page)
    return html.unescape(found.group(1)) if found else None


async def inbox_head(url: str, session_id: str) -> int:
    store = open_store(url)
    try:
        return (await store.get(session_id)).inbox_head
    finally:
        await store.aclose()


# ------------------------------------------------------------------ sessions page


async def test_sessions_page_lists_each_session_with_its_status(
    make_client: Client, store_url: str
) -> None:
    response = await make_client(store_url=store_url).get("/sessions")
    assert response.status_code == 200
    rows = dict(re.findall(r'<tr data-session="([^"]+)" data-status="([^"]+)">', response.text))
    assert rows == {"done-1": "completed", "failed-1": "failed", "waiting-1": "waiting"}
    assert "request rejected: too big" in response.text  # the failed one's error
    assert 'approval <span class="muted">1.2</span>' in response.text  # pipeline and version


@pytest.mark.parametrize("source", ["store", "snapshots"])
async def test_a_list_cut_at_its_limit_says_that_more_sessions_match(
    make_client: Client,
    store_url: str,
    ui_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    # The list showed the 200 sessions updated last and not a word about the
    # others: a store of 250 looked like one of 200.
    from stageflow.ui import _app

    monkeypatch.setattr(_app, "_LIMIT", 2)
    options: dict[str, Any] = (
        {"store_url": store_url} if source == "store" else {"snapshots": ui_data / "snaps"}
    )
    client = make_client(**options)
    for address in ("/sessions", "/sessions?status=failed"):
        page = (await client.get(address)).text
        listed = re.findall(r'<tr data-session="([^"]+)"', page)
        cut = "More sessions match: only the 2 updated most recently are listed" in page
        assert (len(listed), cut) == ((2, True) if address == "/sessions" else (1, False))
    store = open_store(store_url) if source == "store" else None
    app = create_app(InspectorConfig(store=store, snapshots=None if store else ui_data / "snaps"))
    try:
        (rows,) = await sse_messages(app, "/live/sessions?fp=stale", 1)
    finally:
        if store is not None:
            await store.aclose()
    assert "More sessions match" in rows  # the live rows too


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["failed-1"]),
        ("waiting_for=approval", ["waiting-1"]),
        ("pipeline=approval&status=completed", ["done-1"]),
        ("pipeline=other", []),
    ],
)
async def test_sessions_page_filters(
    make_client: Client, store_url: str, query: str, expected: list[str]
) -> None:
    response = await make_client(store_url=store_url).get(f"/sessions?{query}")
    assert re.findall(r'<tr data-session="([^"]+)"', response.text) == expected


@pytest.mark.parametrize("path", ["/sessions", "/live/sessions"])
async def test_a_status_filter_no_session_can_have_is_a_400_naming_the_statuses(
    make_client: Client, store_url: str, path: str
) -> None:
    # A typo (?status=faild) listed no sessions, as if there were none.
    response = await make_client(store_url=store_url).get(f"{path}?status=faild")
    assert response.status_code == 400
    assert "status &#39;faild&#39; is not a status a stored session has" in response.text
    assert "use one of pending, waiting, completed, failed" in response.text


async def test_home_goes_to_sessions_or_to_pipelines(make_client: Client, store_url: str) -> None:
    assert (await make_client(store_url=store_url).get("/")).headers["location"] == "/sessions"
    assert (await make_client().get("/")).headers["location"] == "/pipelines"
    page = await make_client().get("/sessions")
    assert page.status_code == 404
    assert "--store URL" in page.text


# ------------------------------------------------------------------- session page


async def test_waiting_session_shows_node_states_and_its_input_form(
    make_client: Client, store_url: str
) -> None:
    page = (await make_client(store_url=store_url).get("/sessions/waiting-1")).text
    assert "state-waiting" in node_classes(page, "review")
    assert "state-running" in node_classes(page, "fan")  # its branch waits inside it
    assert "state-visited" in node_classes(page, "audit")
    assert "state-unvisited" in node_classes(page, "decide")
    assert "taken" in edge_classes(page, "prepare", "fan")
    assert "taken" not in edge_classes(page, "decide", "done")
    schema = re.search(r'data-schema="([^"]*)"', page)
    assert schema is not None
    assert json.loads(schema.group(1).replace("&#34;", '"'))["required"] == ["approved"]
    assert 'name="type" value="approval"' in page
    assert "Read-only" in page  # no --allow-actions: no send button
    assert "Send approval" not in page


async def test_failed_session_shows_the_failed_node_and_the_error_chain(
    make_client: Client, store_url: str
) -> None:
    page = (await make_client(store_url=store_url).get("/sessions/failed-1")).text
    assert "state-failed" in node_classes(page, "reject")
    assert "taken" in edge_classes(page, "decide", "reject")
    assert "<code>ValueError</code>: request rejected: too big" in page
    assert "The session has ended" in page


async def test_completed_session_shows_the_path_taken_and_the_result(
    make_client: Client, store_url: str
) -> None:
    page = (await make_client(store_url=store_url).get("/sessions/done-1")).text
    assert "state-visited" in node_classes(page, "done")
    assert "state-unvisited" in node_classes(page, "reject")
    assert "taken" in edge_classes(page, "decide", "done")
    assert '"approved": true' in html.unescape(page)  # the artifacts
    assert "session_completed" in page  # the history


async def test_context_values_are_redacted_by_the_pipeline_and_the_command_line(
    make_client: Client, store_url: str
) -> None:
    plain = html.unescape((await make_client(store_url=store_url).get("/sessions/waiting-1")).text)
    assert "s3cr3t" not in plain  # metadata.redact: ["*.secret"]
    assert "[redacted]" in plain
    assert '"title": "desk"' in plain
    hidden = await make_client(store_url=store_url, redact=("title", "draft.title")).get(
        "/sessions/waiting-1"
    )
    assert '"title": "desk"' not in html.unescape(hidden.text)


async def test_span_links_go_to_jaeger_by_trace_and_span_id(
    make_client: Client, tmp_path: Path
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    session = stageflow.Session(
        ui_support.approval_pipeline(), session_id="traced-1", tracer_provider=provider
    )
    await session.run(suspend=True)
    snapshot = session.to_dict()
    (tmp_path / "traced.json").write_text(json.dumps(snapshot))
    client = make_client(snapshots=tmp_path, jaeger="http://jaeger.local:16686/")
    page = (await client.get("/sessions/traced-1")).text
    started = [e for e in snapshot["history"] if e["type"] == "node_started"]
    assert started
    for event in started:
        link = f"http://jaeger.local:16686/trace/{event['trace_id']}?uiFind={event['span_id']}"
        assert f'href="{link}"' in page


async def test_a_directory_lists_snapshots_whatever_the_case_of_their_suffix(
    make_client: Client, tmp_path: Path
) -> None:
    # The directory was read with glob("*.json"): a snapshot saved as
    # S.JSON (an archive from another system) was left out in silence.
    session = stageflow.Session(ui_support.approval_pipeline(), session_id="upper-1")
    await session.run(suspend=True)
    (tmp_path / "S.JSON").write_text(json.dumps(session.to_dict()))
    (tmp_path / "notes.txt").write_text("not a snapshot")
    page = (await make_client(snapshots=tmp_path).get("/sessions")).text
    assert "upper-1" in page
    assert "notes.txt" not in page


async def test_unknown_session_is_a_404_page_without_a_traceback(
    make_client: Client, store_url: str
) -> None:
    response = await make_client(store_url=store_url).get("/sessions/nope")
    assert response.status_code == 404
    assert "no stored session has id &#39;nope&#39;" in response.text
    assert "Traceback" not in response.text


async def test_the_sessions_address_with_a_final_slash_is_the_list(
    make_client: Client, store_url: str
) -> None:
    # "/sessions/" was the page of the session with the empty id, a 404 that
    # no session can ever answer (a session id is never empty).
    client = make_client(store_url=store_url)
    response = await client.get("/sessions/?status=failed")
    assert response.status_code == 307
    assert response.headers["location"] == "/sessions?status=failed"
    response = await client.get("/sessions/", follow_redirects=True)
    assert response.status_code == 200
    assert "<h1>Sessions</h1>" in response.text


async def test_a_wrong_method_is_a_405_page_that_names_the_allowed_ones(
    make_client: Client, store_url: str
) -> None:
    # The page kept the status but dropped the Allow header a 405 must carry.
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.get("/actions/cancel/waiting-1")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "/actions/cancel/waiting-1: Method Not Allowed" in response.text
    response = await client.post("/sessions")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_unreachable_store_is_a_503_page(make_client: Client, tmp_path: Path) -> None:
    client = make_client(store_url=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    response = await client.get("/sessions")
    assert response.status_code == 503
    assert "cannot open the SQLite store" in response.text
    assert "Traceback" not in response.text


async def test_a_store_file_damaged_while_the_inspector_runs_is_a_503_page(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store_url=store_url)
    assert (await client.get("/sessions")).status_code == 200
    for file in Path(store_url.removeprefix("sqlite:///")).parent.glob("sessions.db*"):
        file.write_bytes(b"not a database " * 1000)
    for path in ("/sessions", "/sessions/waiting-1"):
        response = await client.get(path)
        assert response.status_code == 503, path
        assert "<h1>The session store cannot be read</h1>" in response.text
        assert "cannot be read or written: file is not a database" in response.text


async def test_a_damaged_stored_snapshot_or_history_is_said_on_its_row_and_page_only(
    make_client: Client, store_url: str
) -> None:
    # One row whose snapshot is not JSON made the sessions page, its live
    # updates and that session's page "Internal error" (500); damaged
    # history rows, that session's page.
    with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
        db.execute(
            "UPDATE stageflow_sessions SET snapshot = '{not json' WHERE session_id = 'failed-1'"
        )
        db.execute("UPDATE stageflow_events SET events = '[oops' WHERE session_id = 'done-1'")
        db.commit()
    client = make_client(store_url=store_url)
    response = await client.get("/sessions")
    assert response.status_code == 200
    rows = dict(re.findall(r'<tr data-session="([^"]+)" data-status="([^"]+)">', response.text))
    assert rows == {"done-1": "completed", "failed-1": "failed", "waiting-1": "waiting"}
    said = "session &#39;failed-1&#39;: its stored snapshot cannot be read (Expecting property"
    assert said in response.text
    response = await client.get("/sessions/failed-1")
    assert response.status_code == 422
    assert said in response.text
    assert "the row is damaged: restore it from a backup, or purge the session" in response.text
    response = await client.get("/sessions/done-1")
    assert response.status_code == 422
    assert "session &#39;done-1&#39;: its stored history cannot be read" in response.text
    assert (await client.get("/sessions/waiting-1")).status_code == 200


class BrokenStore:
    """A store whose listing fails with a bug, not a store error."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def list_sessions(self, **_: Any) -> list[Any]:
        raise RuntimeError("a bug with a secret inside")


async def test_an_unexpected_error_is_a_500_page_without_details(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store=BrokenStore(open_store(store_url)))
    response = await client.get("/sessions")
    assert response.status_code == 500
    assert "standard error" in response.text
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def sse_messages(
    app: Any, path: str, count: int, then: Any = None, *, started: Any = None
) -> list[str]:
    """The first ``count`` server-sent events of ``path``; ``then()`` runs after the first,
    ``started()`` once the response has begun (its ``retry`` line is sent)."""
    messages: list[str] = []
    done = anyio.Event()
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": urllib.parse.unquote(path),  # as a server decodes it (%2F included)
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if done.is_set():
            raise OSError("the client went away")  # how an ASGI server reports it
        body = message.get("body", b"").decode()
        if body.startswith("retry:") and started is not None:
            await started()
        if "event:" in body:
            messages.append(body)
            if len(messages) == 1 and then is not None:
                await then()
            if len(messages) >= count:
                done.set()

    with anyio.fail_after(20):
        with contextlib.suppress(OSError):
            await app(scope, receive, send)
    return messages


async def test_sessions_stream_sends_the_rows_again_when_a_session_changes(
    store_url: str,
) -> None:
    store = open_store(store_url)
    app = create_app(InspectorConfig(store=store, refresh=0.01))

    async def change() -> None:
        await SessionService(store).start(ui_support.approval_pipeline(), session_id="new-1")

    try:
        first, second = await sse_messages(app, "/live/sessions?fp=stale", 2, change)
    finally:
        await store.aclose()
    assert first.startswith("event: rows")
    assert 'data: <tr data-session="new-1" data-status="pending">' not in first
    assert 'data-session="new-1"' in second


def sse_data(message: str) -> str:
    """The data of one server-sent event, read as a browser reads the stream."""
    lines = re.split(r"\r\n|\r|\n", message)
    return "\n".join(line.removeprefix("data: ") for line in lines if line.startswith("data: "))


async def _suspended_waiting(session_id: str, input_type: str) -> stageflow.Session:
    """An untraced session suspended at a wait for ``input_type``."""
    pipeline = stageflow.Pipeline.from_dict(
        {
            "api_version": "1.0",
            "entry": "wait",
            "nodes": [
                {
                    "id": "wait",
                    "type": "stage",
                    "stage": "WaitStage",
                    "config": {"input": input_type},
                    "next": "done",
                },
                {"id": "done", "type": "terminal"},
            ],
        }
    )
    session = stageflow.Session(pipeline, session_id=session_id)
    await session.run(suspend=True)
    return session


async def test_the_live_rows_keep_every_character_of_a_session_id(tmp_path: Path) -> None:
    # The rows were cut into data lines by str.splitlines, which also splits at
    # U+2028 and U+0085: the browser read each back as a line feed.
    session = await _suspended_waiting("a\u2028b\x85c", "go")
    (tmp_path / "odd.json").write_text(json.dumps(session.to_dict()))
    app = create_app(InspectorConfig(snapshots=tmp_path))
    (rows,) = await sse_messages(app, "/live/sessions?fp=stale", 1)
    assert rows.startswith("event: rows")
    assert '<tr data-session="a\u2028b\x85c" data-status="waiting">' in sse_data(rows)


async def test_session_stream_says_changed_when_the_session_is_saved_again(
    store_url: str,
) -> None:
    store = open_store(store_url)
    app = create_app(InspectorConfig(store=store, refresh=0.01))
    try:
        fp = f"{(await store.get('waiting-1')).version}.0.waiting."
        poked: list[int] = []

        async def send() -> None:
            poked.append((await store.send_input("waiting-1", "approval", {})).seq)

        with anyio.move_on_after(0.3):  # nothing changed: no event (checked for a while)
            await sse_messages(app, f"/live/sessions/waiting-1?fp={fp}", 1)
            pytest.fail("a changed event came without a change")
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            messages = await sse_messages(app, f"/live/sessions/waiting-1?fp={fp}", 1)
    finally:
        await store.aclose()
    assert poked == [1]
    assert messages[0].startswith("event: changed")


# Starlette's path convertor (.*) stopped at a line break: "two\nlines" had no
# page, and "stream\n" opened the page of "stream".
ODD_IDS = (
    "orders/42",
    "orders/42/stream",
    "stream",
    "x/../y",
    "a b?c#d%2F",
    "über",
    "two\nlines",
    "stream\n",
)


@pytest.fixture
async def odd_ids_url(tmp_path: Path) -> str:
    """A store whose sessions, waiting for ``approval``, have ids that are awkward in a path."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    store = open_store(url)
    try:
        service = SessionService(store, registry=ui_support.registry)
        for sid in ODD_IDS:
            await service.start(
                ui_support.approval_pipeline(), payload={"title": "t"}, session_id=sid
            )
        await ui_support.run_worker_until(store, service, dict.fromkeys(ODD_IDS, False))
    finally:
        await store.aclose()
    return url


async def test_any_session_id_opens_its_page_stream_and_actions(
    make_client: Client, odd_ids_url: str
) -> None:
    client = make_client(store_url=odd_ids_url, allow_actions=True)
    listing = (await client.get("/sessions")).text
    app = client._transport.app  # type: ignore[attr-defined]
    for sid in ODD_IDS:
        found = re.search(
            rf'<tr data-session="{re.escape(html.escape(sid))}"[^>]*>\s*<td><a href="([^"]*)"',
            listing,
        )
        assert found is not None, sid
        page = await client.get(html.unescape(found.group(1)))
        assert page.status_code == 200, sid
        assert f"<title>Session {html.escape(sid)} · stageflow ui</title>" in page.text
        stream = re.search(r'data-stream="([^"]*)"', page.text)
        assert stream is not None
        url = re.sub(r"fp=[^&]*", "fp=stale", html.unescape(stream.group(1)))
        (changed,) = await sse_messages(app, url, 1)
        assert changed.startswith("event: changed"), sid
        action = re.search(r'<form class="input-form" method="post" action="([^"]*)"', page.text)
        assert action is not None
        sent = await client.post(
            html.unescape(action.group(1)), data={"type": "approval", "payload": "{}"}
        )
        assert sent.status_code == 422  # the schema needs "approved": the id was found
        assert f"Session <code>{html.escape(sid)}</code>" in sent.text
        cancel = re.search(r'<form class="cancel-form" method="post" action="([^"]*)"', page.text)
        assert cancel is not None
        done = await client.post(html.unescape(cancel.group(1)), data={"reason": "test"})
        assert done.status_code == 303
        back = await client.get(done.headers["location"])
        assert f"<title>Session {html.escape(sid)} · stageflow ui</title>" in back.text
    for sid in ODD_IDS:
        assert await inbox_head(odd_ids_url, sid) == 1  # its own cancel request, no other


async def test_the_live_stream_of_an_unknown_session_is_a_404_page(
    make_client: Client, store_url: str
) -> None:
    with anyio.fail_after(10):  # not a stream that starts and then breaks
        response = await make_client(store_url=store_url).get("/live/sessions/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "no stored session has id &#39;nope&#39;" in response.text


async def test_the_live_stream_of_an_unreachable_store_is_a_503_page(
    make_client: Client, tmp_path: Path
) -> None:
    client = make_client(store_url=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with anyio.fail_after(10):
        response = await client.get("/live/sessions")
    assert response.status_code == 503
    assert "cannot open the SQLite store" in response.text


async def test_a_session_purged_while_its_page_is_open_gets_a_gone_event(
    store_url: str,
) -> None:
    store = open_store(store_url)
    app = create_app(InspectorConfig(store=store, refresh=0.01))

    async def purge() -> None:
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        assert await store.purge(finished_before=later, inputs_before=later) >= 1

    try:
        fp = f"{(await store.get('done-1')).version}.{(await store.get('done-1')).inbox_head}"
        (gone,) = await sse_messages(
            app, f"/live/sessions/done-1?fp={fp}.completed.", 1, started=purge
        )
    finally:
        await store.aclose()
    assert gone.startswith("event: gone\n")
    assert "no stored session has id 'done-1'" in gone


class FlakyStore:
    """A store whose second look (a listing, or a session's row) fails, then reads again."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _look(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise StoreUnavailableError("the store is down for this test; wait")

    async def list_sessions(self, **options: Any) -> Any:
        self._look()
        return await self.store.list_sessions(**options)

    async def get(self, session_id: str) -> Any:
        self._look()
        return await self.store.get(session_id)


class PurgingStore:
    """A store that purges ``failed-1`` between listing it and loading it."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def load(self, session_id: str) -> Any:
        if session_id == "failed-1":
            raise SessionNotFoundError(session_id)
        return await self.store.load(session_id)


async def test_a_session_purged_while_the_list_is_read_is_left_out(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store=PurgingStore(open_store(store_url)))
    response = await client.get("/sessions")
    assert response.status_code == 200
    assert re.findall(r'<tr data-session="([^"]+)"', response.text) == ["done-1", "waiting-1"]


@pytest.mark.parametrize(
    ("path", "first"),
    [("/live/sessions?fp=stale", "event: rows"), ("/live/sessions/waiting-1?fp=", None)],
)
async def test_a_store_error_during_a_live_stream_is_a_problem_event_and_it_goes_on(
    store_url: str, path: str, first: str | None
) -> None:
    store = open_store(store_url)
    app = create_app(InspectorConfig(store=FlakyStore(store), refresh=0.01))  # type: ignore[arg-type]
    try:
        if first is None:  # the session stream: no change until the fingerprint is right
            row = await store.get("waiting-1")
            path += f"{row.version}.{row.inbox_head}.waiting."
        messages = await sse_messages(app, path, 3 if first else 2)
    finally:
        await store.aclose()
    if first:
        assert messages.pop(0).startswith(first)
    down, back = messages
    assert down == "event: problem\ndata: the store is down for this test; wait\n\n"
    assert back == "event: problem\ndata: \n\n"


# -------------------------------------------------------------------------- actions


async def test_sending_needs_allow_actions(make_client: Client, store_url: str) -> None:
    client = make_client(store_url=store_url)
    response = await client.post(
        "/actions/input/waiting-1", data={"type": "approval", "payload": '{"approved": true}'}
    )
    assert response.status_code == 403
    assert "--allow-actions" in response.text
    assert (await client.post("/actions/cancel/waiting-1")).status_code == 403
    assert await inbox_head(store_url, "waiting-1") == 0


async def test_a_valid_input_is_stored_and_the_page_says_so(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post(
        "/actions/input/waiting-1",
        data={"type": "approval", "payload": '{"approved": true, "note": "fine"}'},
    )
    assert response.status_code == 303
    assert await inbox_head(store_url, "waiting-1") == 1
    page = await client.get(response.headers["location"])
    assert "input #1 stored; a worker delivers it" in page.text


@pytest.mark.parametrize(
    ("type", "payload", "message"),
    [
        ("approval", '{"approved": "yes"}', "$.approved: &#39;yes&#39; is not of type"),
        ("approval", '{"note": "x"}', "&#39;approved&#39; is a required property"),
        ("approval", '{"approved": true, "extra": 1}', "Additional properties"),
        ("approval", "{approved: true}", "is not JSON"),
        ("answer", "{}", "does not wait for input &#39;answer&#39;"),
    ],
)
async def test_a_refused_input_changes_nothing_and_says_why(
    make_client: Client, store_url: str, type: str, payload: str, message: str
) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post(
        "/actions/input/waiting-1", data={"type": type, "payload": payload}
    )
    assert response.status_code == 422
    assert message in response.text
    assert "nothing was sent" in response.text
    assert await inbox_head(store_url, "waiting-1") == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"approved": true, "note": "\\ud800"}', "not a JSON value"),
        ('{"approved": true, "n": ' + "1" * 5000 + "}", "Send a number that long as a string"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["lone-surrogate", "5000-digit-int", "nested-100000-deep"],
)
async def test_a_payload_the_store_cannot_take_is_refused_with_the_reason(
    make_client: Client, store_url: str, payload: str, message: str
) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post(
        "/actions/input/waiting-1", data={"type": "approval", "payload": payload}
    )
    assert response.status_code == 422
    assert message in response.text
    assert "nothing was sent" in response.text
    assert await inbox_head(store_url, "waiting-1") == 0


async def test_input_to_a_finished_session_is_refused(make_client: Client, store_url: str) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post(
        "/actions/input/done-1", data={"type": "approval", "payload": '{"approved": true}'}
    )
    assert response.status_code == 422
    assert "does not wait for input" in response.text
    response = await client.post("/actions/cancel/done-1", data={"reason": "late"})
    assert response.status_code == 422
    assert "is completed" in response.text


async def test_cancel_stores_a_cancel_request(make_client: Client, store_url: str) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post("/actions/cancel/waiting-1", data={"reason": "not needed"})
    assert response.status_code == 303
    assert await inbox_head(store_url, "waiting-1") == 1


async def test_a_cancel_reason_the_store_cannot_keep_is_refused_with_the_reason(
    make_client: Client, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store that refuses the reason with InputRejectedError (PostgreSQL's
    # jsonb refused a NUL character once): the cancel form let it through (500).
    store = open_store(store_url)

    async def refuse(session_id: str, reason: str, **options: Any) -> Any:
        raise stageflow.InputRejectedError(
            f"input 'stageflow.cancel' for session {session_id!r} was rejected: "
            "PostgreSQL's jsonb cannot hold the character U+0000 (NUL) in a string of "
            "the payload; nothing was stored",
            input_type="stageflow.cancel",
            reason="not_json",
        )

    monkeypatch.setattr(store, "request_cancel", refuse)
    client = make_client(store=store, allow_actions=True)
    response = await client.post("/actions/cancel/waiting-1", data={"reason": "a\x00b"})
    assert response.status_code == 422
    assert "cannot hold the character U+0000 (NUL)" in response.text
    assert '<div class="message error-message" role="alert" id="refused">' in response.text
    assert await inbox_head(store_url, "waiting-1") == 0


async def test_a_session_page_shows_only_the_notices_the_inspector_issues(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post("/actions/cancel/waiting-1", data={"reason": "not needed"})
    assert response.headers["location"] == "/sessions/waiting-1?notice=cancel-stored&seq=1"
    page = (await client.get(response.headers["location"])).text
    assert notice_of(page) == "cancel request stored as #1; a worker ends the session"
    for query in (
        "notice=Re-enter+your+password+at+http://evil.example",
        "notice=input-stored&seq=call+us",
        "notice=input-stored",
        "seq=1",
    ):
        page = (await client.get(f"/sessions/waiting-1?{query}")).text
        assert notice_of(page) is None, query
        assert "evil.example" not in page


async def test_a_form_from_another_site_cannot_act(make_client: Client, store_url: str) -> None:
    client = make_client(store_url=store_url, allow_actions=True)
    response = await client.post(
        "/actions/cancel/waiting-1", headers={"origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert await inbox_head(store_url, "waiting-1") == 0


# ---------------------------------------------------------------- snapshot files


async def test_snapshot_directory_lists_sessions_and_unreadable_files(
    make_client: Client, ui_data: Path
) -> None:
    client = make_client(snapshots=ui_data / "snaps", allow_actions=True)
    page = (await client.get("/sessions")).text
    rows = dict(re.findall(r'<tr data-session="([^"]+)" data-status="([^"]+)">', page))
    assert rows == {"done-1": "completed", "failed-1": "failed", "waiting-1": "waiting"}
    assert "broken.json: not JSON" in page
    waiting = (await client.get("/sessions/waiting-1")).text
    assert "state-waiting" in node_classes(waiting, "review")
    assert "Snapshot files take no actions" in waiting


async def test_a_session_in_several_files_is_listed_once_from_its_last_snapshot(
    make_client: Client, tmp_path: Path
) -> None:
    # Each file was a row, and both rows opened the first file by name: the
    # session's later snapshot (here: completed) could not be opened at all.
    session = await _suspended_waiting("twice", "go")
    (tmp_path / "a.json").write_text(json.dumps(session.to_dict()))
    session.send_input("go", {})
    assert (await session.run()).status.value == "completed"
    (tmp_path / "b.json").write_text(json.dumps(session.to_dict()))
    client = make_client(snapshots=tmp_path)
    page = (await client.get("/sessions")).text
    assert re.findall(r'<tr data-session="([^"]+)" data-status="([^"]+)">', page) == [
        ("twice", "completed")
    ]
    assert f"{tmp_path / 'a.json'}: holds session &#39;twice&#39; as b.json does" in page
    page = (await client.get("/sessions/twice")).text
    assert 'id="session-status">completed<' in page
    assert f"<dt>Source</dt><dd>{tmp_path / 'b.json'}</dd>" in page


def copy_snapshots(ui_data: Path, directory: Path) -> Path:
    """A copy of the snapshot directory (``done-1``, ``failed-1``, ``waiting-1``, ``broken``)."""
    shutil.copytree(ui_data / "snaps", directory)
    return directory


async def test_a_fifo_in_a_snapshot_directory_is_listed_as_unreadable_not_opened(
    make_client: Client, ui_data: Path, tmp_path: Path
) -> None:
    snaps = copy_snapshots(ui_data, tmp_path / "snaps")
    fifo = snaps / "zz-pipe.json"
    os.mkfifo(fifo)
    # A writer waits for the FIFO to be opened: an inspector that opens it reads an
    # empty file (and would block for ever without this writer) instead of skipping it.
    writer = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)))
    writer.start()
    try:
        page = (await make_client(snapshots=snaps).get("/sessions")).text
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer go
        writer.join()
    rows = re.findall(r'<tr data-session="([^"]+)"', page)
    assert sorted(rows) == ["done-1", "failed-1", "waiting-1"]
    assert "zz-pipe.json: not a regular file (a FIFO)" in page


async def test_snapshot_files_are_read_off_the_event_loop(
    make_client: Client, ui_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snaps = copy_snapshots(ui_data, tmp_path / "snaps")
    loop_thread = threading.get_ident()
    parsed_in: list[int] = []
    loads = json.loads

    def spy(text: str | bytes, **options: Any) -> Any:
        if '"session_id"' in (text if isinstance(text, str) else text.decode(errors="replace")):
            parsed_in.append(threading.get_ident())
        return loads(text, **options)

    monkeypatch.setattr(json, "loads", spy)
    response = await make_client(snapshots=snaps).get("/sessions")
    assert response.status_code == 200
    assert len(parsed_in) == 3  # done-1, failed-1, waiting-1
    assert loop_thread not in parsed_in


async def test_snapshots_are_checked_off_the_event_loop(
    make_client: Client,
    ui_data: Path,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the file was read in a worker thread: the restore that checks the
    # snapshot, most of the time a big one takes, ran on the event loop.
    loop_thread = threading.get_ident()
    restored_in: list[int] = []
    from_dict = stageflow.Session.from_dict

    def spy(snapshot: Any, **options: Any) -> stageflow.Session:
        restored_in.append(threading.get_ident())
        return from_dict(snapshot, **options)

    monkeypatch.setattr(stageflow.Session, "from_dict", spy)
    snaps = copy_snapshots(ui_data, tmp_path / "snaps")
    for client in (make_client(snapshots=snaps), make_client(store_url=store_url)):
        for address in ("/sessions", "/sessions/waiting-1"):
            assert (await client.get(address)).status_code == 200
    assert len(restored_in) >= 6  # the three sessions, of each source
    assert loop_thread not in restored_in


async def test_graphs_are_drawn_off_the_event_loop(
    make_client: Client, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Laying out a pipeline of a few hundred conditions that share a terminal
    # took seconds on the event loop, and every other page waited.
    from stageflow.ui import _app

    loop_thread = threading.get_ident()
    drawn_in: list[int] = []
    draw = _app.draw

    def spy(graph: Any, **options: Any) -> str:
        drawn_in.append(threading.get_ident())
        return draw(graph, **options)

    monkeypatch.setattr(_app, "draw", spy)
    client = make_client(store_url=store_url)
    for address in ("/sessions/waiting-1", "/pipelines/approval.json"):
        response = await client.get(address)
        assert response.status_code == 200
        assert '<svg xmlns="http://www.w3.org/2000/svg" class="graph"' in response.text
    assert len(drawn_in) == 2
    assert loop_thread not in drawn_in


async def test_pipeline_files_are_read_off_the_event_loop(
    make_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each file was loaded and checked on the event loop: a directory of a
    # hundred pipelines held every other page and live update for two seconds.
    from stageflow.ui import _app

    loop_thread = threading.get_ident()
    read_in: list[int] = []
    read = _app.read_pipeline_file

    def spy(*args: Any) -> Any:
        read_in.append(threading.get_ident())
        return read(*args)

    monkeypatch.setattr(_app, "read_pipeline_file", spy)
    client = make_client()
    for address in ("/pipelines", "/pipelines/approval.json"):
        assert (await client.get(address)).status_code == 200
    assert len(read_in) == 3  # approval.json and invalid.json, then approval.json
    assert loop_thread not in read_in


async def test_a_session_and_its_history_are_read_off_the_event_loop(
    make_client: Client,
    ui_data: Path,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the page shows was worked out from the snapshot and every event on
    # the event loop: a second for a history of 40,000 events.
    from stageflow.ui import _sources

    loop_thread = threading.get_ident()
    read_in: list[int] = []
    view = _sources._view

    def spy(*args: Any) -> Any:
        read_in.append(threading.get_ident())
        return view(*args)

    monkeypatch.setattr(_sources, "_view", spy)
    snaps = copy_snapshots(ui_data, tmp_path / "snaps")
    for client in (make_client(snapshots=snaps), make_client(store_url=store_url)):
        assert (await client.get("/sessions/waiting-1")).status_code == 200
    assert len(read_in) == 2
    assert loop_thread not in read_in


async def test_a_pipeline_is_laid_out_once_for_the_pages_that_draw_it(
    make_client: Client, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every load and live reload of a session page laid the graph out again:
    # seconds each time for a pipeline of a hundred nodes with long edges.
    from stageflow.ui import _drawing

    laid_out: list[int] = []
    layout = _drawing.layout

    def spy(nodes: Any, sizes: Any, edges: Any) -> Any:
        laid_out.append(len(nodes))
        return layout(nodes, sizes, edges)

    monkeypatch.setattr(_drawing, "layout", spy)
    client = make_client(store_url=store_url)
    for address in ("/sessions/waiting-1", "/sessions/done-1", "/pipelines/approval.json"):
        response = await client.get(address)
        assert response.status_code == 200
        assert 'data-node="review"' in response.text
    # Once at most: not at all when a page of an earlier test drew it.
    assert laid_out in ([], [8])  # the start and the seven nodes of the approval pipeline


async def test_the_page_of_a_snapshot_as_session_to_dict_writes_it(
    make_client: Client, tmp_path: Path
) -> None:
    # Session.to_dict() leaves out the null span ids of an untraced session's
    # events; the page read e.span_id and answered 500 for every such snapshot.
    session = await _suspended_waiting("plain-1", "approval")
    snapshot = session.to_dict()
    assert "span_id" not in snapshot["history"][0]
    (tmp_path / "plain-1.json").write_text(json.dumps(snapshot))
    response = await make_client(snapshots=tmp_path / "plain-1.json").get("/sessions/plain-1")
    assert response.status_code == 200
    assert "waiting_for_input" in response.text


async def test_the_page_shows_the_inputs_given_to_waits_that_were_torn_down(
    make_client: Client, tmp_path: Path
) -> None:
    # Kept in the snapshot (unseen_inputs) since format 4; the page showed no
    # trace of them, though the session discards them when it ends.
    registry = stageflow.StageRegistry()

    @registry.register("Work")
    async def work(ctx: stageflow.StageContext) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"v": 1}

    document = {
        "api_version": "1.0",
        "entry": "race",
        "nodes": [
            {
                "id": "race",
                "type": "parallel",
                "policy": "any",
                "children": ["ask", "work"],
                "next": "after",
            },
            {"id": "ask", "type": "stage", "stage": "WaitStage", "config": {"input": "go"}},
            {"id": "work", "type": "stage", "stage": "Work", "outputs": {"v": "v"}},
            {
                "id": "after",
                "type": "stage",
                "stage": "WaitStage",
                "config": {"input": "z"},
                "next": "end",
            },
            {"id": "end", "type": "terminal"},
        ],
    }
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, session_id="raced")

    def send_as_the_race_ends(event: stageflow.Event) -> None:
        if event.type == "branch_finished" and event.payload["branch"] == "work":
            session.send_input("go", {"secret": "s3"})

    session.subscribe(send_as_the_race_ends)
    await session.run(suspend=True)
    snapshot = session.to_dict()
    assert snapshot["unseen_inputs"] == [{"input_type": "go", "payload": {"secret": "s3"}}]
    (tmp_path / "raced.json").write_text(json.dumps(snapshot))
    client = make_client(snapshots=tmp_path, redact=("*secret",))
    page = await client.get("/sessions/raced")
    assert page.status_code == 200
    assert "Given to waits that were torn down" in page.text
    assert "&#34;input_type&#34;: &#34;go&#34;" in page.text
    assert "s3" not in page.text  # redacted as the backlog is


async def test_the_page_of_a_session_ended_by_a_limit_or_its_deadline_shows_its_error(
    make_client: Client, tmp_path: Path
) -> None:
    # A LimitExceededError has no attempt and a SessionTimeoutError no node:
    # the page read error.attempt and error.node_id and answered 500.
    registry = stageflow.StageRegistry()

    @registry.register("Step")
    async def step(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {}

    @registry.register("Stuck")
    async def stuck(ctx: stageflow.StageContext) -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    def pipeline(first: str, then: dict[str, Any]) -> stageflow.Pipeline:
        nodes = [{"id": "a", "type": "stage", "stage": first, "next": "b"}, then]
        nodes.append({"id": "done", "type": "terminal"})
        document = {"api_version": "1.0", "entry": "a", "nodes": nodes}
        return stageflow.Pipeline.from_dict(document, registry=registry)

    loop = {
        "id": "b",
        "type": "condition",
        "conditions": [{"if": {"==": [1, 2]}, "then": "done"}],
        "else": "a",
    }
    limited = stageflow.Session(
        pipeline("Step", loop), session_id="limited", limits=stageflow.Limits(max_run_steps=3)
    )
    late = stageflow.Session(
        pipeline("Stuck", {"id": "b", "type": "stage", "stage": "Step", "next": "done"}),
        session_id="late",
        limits=stageflow.Limits(timeout=0.01),
    )
    for session in (limited, late):
        await session.run()
        (tmp_path / f"{session.session_id}.json").write_text(json.dumps(session.to_dict()))
    client = make_client(snapshots=tmp_path)
    response = await client.get("/sessions/limited")
    assert response.status_code == 200
    assert "<strong>LimitExceededError</strong> at node <code>b</code></p>" in response.text
    response = await client.get("/sessions/late")
    assert response.status_code == 200
    assert "<strong>SessionTimeoutError</strong></p>" in response.text


async def _looped(session_id: str, rounds: int) -> stageflow.Session:
    """A finished, untraced session that ran a stage and a condition ``rounds`` times."""
    registry = stageflow.StageRegistry()

    @registry.register("Count")
    async def count(ctx: stageflow.StageContext) -> dict[str, Any]:
        return {"n": ctx.arguments["n"] + 1}

    document = {
        "api_version": "1.0",
        "entry": "count",
        "nodes": [
            {
                "id": "count",
                "type": "stage",
                "stage": "Count",
                "arguments": {"n": "n"},
                "outputs": {"n": "n"},
                "next": "again",
            },
            {
                "id": "again",
                "type": "condition",
                "conditions": [{"if": {"<": [{"var": "n"}, rounds]}, "then": "count"}],
                "else": "done",
            },
            {"id": "done", "type": "terminal"},
        ],
    }
    pipeline = stageflow.Pipeline.from_dict(document, registry=registry)
    session = stageflow.Session(pipeline, payload={"n": 0}, session_id=session_id)
    await session.run()
    return session


async def test_a_long_history_lists_its_last_events_and_all_on_request(
    make_client: Client, tmp_path: Path
) -> None:
    # Every event was listed: a history of 100,000 events (the default
    # max_history) was a page of tens of megabytes that took a minute to render.
    session = await _looped("long", 300)
    snapshot = session.to_dict()
    total = len(snapshot["history"])
    assert total > 1200
    (tmp_path / "long.json").write_text(json.dumps(snapshot))
    client = make_client(snapshots=tmp_path)

    def listed(page: str) -> list[int]:
        rows = re.findall(r'<tr class="ev [^"]*"[^>]*>\s*<td>(\d+)</td>', page)
        return [int(seq) for seq in rows]

    page = await client.get("/sessions/long")
    assert page.status_code == 200
    assert f"History ({total} events)" in page.text
    assert listed(page.text) == list(range(total - 999, total + 1))
    assert f"The first {total - 1000} events are not listed here" in page.text
    assert '<a href="?history=all">' in page.text
    page = await client.get("/sessions/long?history=all")
    assert page.status_code == 200
    assert listed(page.text) == list(range(1, total + 1))
    assert "are not listed here" not in page.text
    page = await client.get("/sessions/long?history=some")
    assert page.status_code == 400
    assert "use history=all" in page.text


async def test_a_history_read_in_part_is_said_with_how_many_events_are_missing(
    make_client: Client, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A snapshot taken with to_dict(history="none") drew a completed session
    # with every node "not reached" under "History (0 events)", and the events
    # a store holds past the inspector's cap were left out without a word.
    from stageflow.ui import _sources

    session = await _looped("brief", 3)
    recorded = len(session.history)
    for keep in ("none", 5, "all"):
        (tmp_path / "brief.json").write_text(json.dumps(session.to_dict(history=keep)))
        page = (await make_client(snapshots=tmp_path).get("/sessions/brief")).text
        missing = {"none": recorded, 5: recorded - 5, "all": 0}[keep]
        said = f"The session recorded {recorded} events; {missing} of them are not in"
        assert (said in page) == (keep != "all"), keep
    monkeypatch.setattr(_sources, "MAX_EVENTS", 5)
    page = (await make_client(store_url=store_url).get("/sessions/done-1")).text
    found = re.search(r"The session recorded (\d+) events; (\d+) of them are not in", page)
    assert found is not None
    assert int(found.group(1)) - int(found.group(2)) == 5


async def test_a_snapshot_that_does_not_load_is_a_422_page(
    make_client: Client, ui_data: Path, tmp_path: Path
) -> None:
    response = await make_client(snapshots=ui_data / "snaps").get("/sessions/broken")
    assert response.status_code == 422
    assert "broken.json: not JSON" in response.text
    snapshot = json.loads((ui_data / "snaps" / "waiting-1.json").read_text())
    snapshot["version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(snapshot))
    response = await make_client(snapshots=tmp_path / "future.json").get("/sessions/future")
    assert response.status_code == 422
    assert "the snapshot does not load" in response.text


async def test_a_snapshot_file_takes_no_actions(make_client: Client, ui_data: Path) -> None:
    client = make_client(snapshots=ui_data / "snaps" / "waiting-1.json", allow_actions=True)
    response = await client.post(
        "/actions/input/waiting-1", data={"type": "approval", "payload": "{}"}
    )
    assert response.status_code == 403
    assert "open a store" in response.text


# -------------------------------------------------------------------- pipelines


async def test_pipelines_page_lists_files_with_their_problems(make_client: Client) -> None:
    page = (await make_client().get("/pipelines")).text
    assert 'href="/pipelines/approval.json"' in page
    assert 'href="/pipelines/invalid.json"' in page


async def test_an_invalid_pipeline_is_drawn_with_its_problems(make_client: Client) -> None:
    page = (await make_client().get("/pipelines/invalid.json")).text
    assert "has-problems" in node_classes(page, "a")
    assert "node-missing" in node_classes(page, "nowhere")
    assert "$.nodes[0].next" in page


async def test_every_node_of_an_invalid_pipeline_has_its_details(
    make_client: Client, tmp_path: Path
) -> None:
    # The details were keyed by id: of two nodes with one id only the last was
    # listed, and a node without an id (drawn as "#2") or that is not an
    # object had none, though these are the nodes whose JSON needs fixing.
    document = {
        "api_version": "1.0",
        "entry": "a",
        "nodes": [
            {"id": "a", "type": "stage", "stage": "First", "next": "a2"},
            {"id": "a", "type": "terminal"},
            {"type": "stage", "stage": "Nameless"},
            7,
        ],
    }
    (tmp_path / "dup.json").write_text(json.dumps(document))
    page = (await make_client(pipelines=tmp_path).get("/pipelines/dup.json")).text
    summaries = re.findall(r"<summary><code>(.*?)</code> · (\w+|\?)", page)
    assert summaries == [("a", "stage"), ("a", "terminal"), ("#2", "stage"), ("#3", "?")]
    assert "stage First" in page
    assert "stage Nameless" in page
    assert "<pre>7</pre>" in page
    listing = (await make_client(pipelines=tmp_path).get("/pipelines")).text
    assert "<td>4</td>" in listing  # the nodes as written


async def test_pipeline_page_draws_the_coverage_of_the_testers_report(
    make_client: Client, store_url: str, tmp_path: Path
) -> None:
    store = open_store(store_url)
    try:
        histories = [event_objects(await store.events(sid)) for sid in ("done-1", "failed-1")]
    finally:
        await store.aclose()
    coverage = measure_coverage(ui_support.approval_pipeline(), histories)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"coverage": [coverage.to_dict()]}))
    page = (await make_client(coverage=report).get("/pipelines/approval.json")).text
    assert "state-covered" in node_classes(page, "reject")
    assert "2 run(s)" in page
    missed = [(e["source"], e["target"]) for e in coverage.to_dict()["missed_edges"]]
    assert missed  # reject -> done was never taken: the rejection fails
    for source, target in missed:
        assert "missed" in edge_classes(page, source, target)


async def test_a_pipeline_file_whose_name_is_not_utf8_is_listed_and_opens(
    make_client: Client, ui_data: Path, tmp_path: Path
) -> None:
    pipes = tmp_path / "pipes"
    shutil.copytree(ui_data / "pipes", pipes)
    shutil.copy(pipes / "approval.json", os.path.join(os.fsencode(pipes), b"caf\xe9.json"))
    client = make_client(pipelines=pipes)
    listing = await client.get("/pipelines")
    assert listing.status_code == 200
    assert '<a href="/pipelines/caf%E9.json">caf\\xe9.json</a>' in listing.text
    page = await client.get("/pipelines/caf%E9.json")
    assert page.status_code == 200
    assert "<h1>Pipeline approval" in page.text


async def test_snapshot_files_whose_names_are_not_utf8_are_shown_escaped(
    make_client: Client, ui_data: Path, tmp_path: Path
) -> None:
    snaps = copy_snapshots(ui_data, tmp_path / "snaps")
    raw = os.fsencode(snaps)  # names that are bytes in Latin-1, not UTF-8
    os.rename(os.path.join(raw, b"done-1.json"), os.path.join(raw, b"old-caf\xe9.json"))
    shutil.copy(snaps / "broken.json", os.path.join(raw, b"notes-\xe9t\xe9.json"))
    client = make_client(snapshots=snaps)
    listing = await client.get("/sessions")
    assert listing.status_code == 200
    assert 'data-session="done-1"' in listing.text
    assert "notes-\\xe9t\\xe9.json: not JSON" in listing.text
    assert "broken.json: not JSON" in listing.text
    page = await client.get("/sessions/done-1")
    assert page.status_code == 200
    assert "old-caf\\xe9.json</dd>" in page.text


async def test_unknown_pipeline_file_is_a_404_page(make_client: Client) -> None:
    response = await make_client().get("/pipelines/nope.json")
    assert response.status_code == 404
    assert "no pipeline file" in response.text


# --------------------------------------------------------------- assets, health


async def test_assets_ship_in_the_package_and_nothing_loads_from_the_network(
    make_client: Client,
) -> None:
    client = make_client()
    for asset in ("/static/ui.css", "/static/ui.js"):
        assert (await client.get(asset)).status_code == 200
    assert (await client.get("/healthz")).text == "ok"
    root = Path(__file__).parents[2] / "stageflow" / "ui"
    for file in [*root.glob("templates/*.html"), *root.glob("static/*")]:
        text = file.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), file
        assert "@import" not in text, file
        assert "url(http" not in text, file


async def test_an_inspector_mounted_in_another_app_links_inside_its_mount(
    ui_data: Path, store_url: str
) -> None:
    # Every link, form, script, live stream and redirect named an address of
    # the outer app (/sessions, /static/ui.js ...): all 404 there.
    from starlette.applications import Starlette
    from starlette.routing import Mount

    store = open_store(store_url)
    inner = create_app(
        InspectorConfig(store=store, pipelines=ui_data / "pipes", allow_actions=True)
    )
    outer = Starlette(routes=[Mount("/inspector", app=inner)])
    transport = httpx.ASGITransport(app=outer)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            home = await client.get("/inspector/")
            assert home.headers["location"] == "/inspector/sessions"
            for address in (
                "/inspector/sessions",
                "/inspector/sessions/waiting-1",
                "/inspector/pipelines",
            ):
                page = await client.get(address)
                assert page.status_code == 200
                found = re.findall(r'(href|src|action|data-stream)="(/[^"]*)"', page.text)
                assert found
                for kind, link in found:
                    assert link.startswith("/inspector/"), (address, link)
                    if kind in ("href", "src"):
                        assert (await client.get(html.unescape(link))).status_code == 200, link
            done = await client.post("/inspector/actions/cancel/waiting-1", data={"reason": "x"})
            assert done.headers["location"].startswith("/inspector/sessions/waiting-1?")
    finally:
        await store.aclose()


async def test_requests_naming_another_host_are_refused_when_hosts_are_given(
    make_client: Client, store_url: str
) -> None:
    client = make_client(store_url=store_url, allowed_hosts=("127.0.0.1", "localhost"))
    response = await client.get("/sessions", headers={"host": "attacker.example"})
    assert response.status_code == 400
    assert "waiting-1" not in response.text
    ok = await client.get("/sessions", headers={"host": "127.0.0.1:8080"})
    assert ok.status_code == 200


async def test_the_newest_sessions_are_listed_first(store_url: str) -> None:
    store = open_store(store_url)
    try:
        rows, problems = await StoreSource(store, None).rows(Filters(), 2)
        every = await store.list_sessions()
    finally:
        await store.aclose()
    newest = sorted(every, key=lambda r: r.updated_at, reverse=True)[:2]
    assert [r.session_id for r in rows] == [r.session_id for r in newest]
    assert problems == []


async def test_the_newest_sessions_are_listed_past_the_first_ten_thousand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listing took the 10,000 oldest sessions and sorted those: in a larger
    # store the newest were never shown (a limit of 3 stands for 10,000 here).
    from store_support import chat_pipeline, registry

    monkeypatch.setattr("stageflow.ui._sources._MAX_ROWS", 3, raising=False)
    store = open_store(f"sqlite:///{tmp_path / 'many.db'}")
    try:
        for sid in "abcde":
            snap = stageflow.Session(chat_pipeline(), registry=registry, session_id=sid)
            await store.create(snap.to_dict())
        rows, problems = await StoreSource(store, None).rows(Filters(), 2)
    finally:
        await store.aclose()
    assert [r.session_id for r in rows] == ["e", "d"]
    assert problems == []
