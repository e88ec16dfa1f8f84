"""The inspector in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``).

One server (Hypercorn on trio, in a thread, on a free port of 127.0.0.1, with
a worker beside it) and one browser serve the whole module. Without Chromium
these tests are skipped with the reason, unless ``STAGEFLOW_REQUIRE_BROWSER=1``
(set by ``.ci/run``) makes that a failure. Each page's screenshot is saved
under ``test-artifacts/ui/`` (or ``$STAGEFLOW_TEST_ARTIFACTS/ui/``); with
``STAGEFLOW_DOCS_SCREENSHOTS=1`` the ones ``docs/ui.md`` shows are written to
``docs/images/`` too.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
import ui_support

import stageflow
from stageflow.store import Worker, open_store
from stageflow.ui import InspectorConfig, create_app, serve

ROOT = Path(__file__).parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_ENV = "STAGEFLOW_REQUIRE_BROWSER"
DOCS_ENV = "STAGEFLOW_DOCS_SCREENSHOTS"
DOCS_SHOTS = {"sessions", "session-waiting", "session-failed", "pipeline-invalid"}


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"a browser is required ({REQUIRE_ENV}=1) but {reason}")
        pytest.skip(f"no browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = ROOT / "test-artifacts" / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1366,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(base: str, timeout: float = 30.0) -> None:
    """Poll ``/healthz`` until the server answers (a poll of the socket, not a guess)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(ui_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(base URL, store URL)``: the inspector with --allow-actions, and a worker."""
    folder = tmp_path_factory.mktemp("browser-store")
    for file in ui_data.glob("sessions.db*"):
        shutil.copy(file, folder / file.name)
    url = f"sqlite:///{folder / 'sessions.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"

    async def main(stop: anyio.Event) -> None:
        app_store, worker_store = open_store(url), open_store(url)
        app = create_app(
            InspectorConfig(
                store=app_store,
                pipelines=ui_data / "pipes",
                allow_actions=True,
                jaeger="http://127.0.0.1:16686",
                refresh=0.2,
            )
        )
        worker = Worker(worker_store, registry=ui_support.registry, poll=0.1)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                await serve(app, "127.0.0.1", port, shutdown_trigger=stop.wait)
                worker.shutdown()
        finally:
            await app_store.aclose()
            await worker_store.aclose()

    with anyio.from_thread.start_blocking_portal(backend="trio") as portal:
        stop = portal.call(anyio.Event)
        running = portal.start_task_soon(main, stop)
        try:
            _wait_until_serving(base)
            yield base, url
        finally:
            portal.call(stop.set)
            running.result(timeout=30)


def shoot(driver: Any, name: str) -> Path:
    """Save a screenshot of the whole page as a test artefact (and for the docs)."""
    folder = Path(os.environ.get("STAGEFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1366, min(max(int(height), 700), 2600))
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1366, 900)
    if os.environ.get(DOCS_ENV) == "1" and name in DOCS_SHOTS:
        docs = ROOT / "docs" / "images"
        docs.mkdir(exist_ok=True)
        shutil.copy(path, docs / f"ui-{name}.png")
    assert path.stat().st_size > 10_000
    return path


def node_classes(driver: Any, node_id: str) -> set[str]:
    from selenium.webdriver.common.by import By

    node = driver.find_element(By.CSS_SELECTOR, f'svg.graph g.node[data-node="{node_id}"]')
    return set(str(node.get_attribute("class")).split())


def wait_for(driver: Any, condition: Any, timeout: float = 30.0) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page may reload between finding an element and reading it: look again.
    # Stale and missing elements are WebDriverExceptions, and so is what
    # chromedriver raises for an element of the document just replaced ("Node
    # with given id does not belong to the document"; seen once in CI).
    ignored = (WebDriverException,)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition
    )


async def _inbox_head(url: str, session_id: str) -> int:
    store = open_store(url)
    try:
        return (await store.get(session_id)).inbox_head
    finally:
        await store.aclose()


def test_sessions_page_shows_a_completed_a_failed_and_a_waiting_session(
    browser: Any, server: tuple[str, str]
) -> None:
    from selenium.webdriver.common.by import By

    base, _ = server
    browser.get(f"{base}/sessions")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody#rows tr")
    statuses = {r.get_attribute("data-session"): r.get_attribute("data-status") for r in rows}
    assert statuses == {"done-1": "completed", "failed-1": "failed", "waiting-1": "waiting"}
    assert "request rejected: too big" in browser.find_element(By.TAG_NAME, "tbody").text
    shoot(browser, "sessions")


def test_session_pages_draw_each_nodes_state(browser: Any, server: tuple[str, str]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, _ = server
    browser.get(f"{base}/sessions/waiting-1")
    assert "state-waiting" in node_classes(browser, "review")
    assert "state-running" in node_classes(browser, "fan")
    assert "state-visited" in node_classes(browser, "prepare")
    assert "state-unvisited" in node_classes(browser, "decide")
    # Keyboard: Tab reaches the nodes; Enter opens the node's details.
    detail = browser.find_element(By.ID, "node-review")
    assert detail.get_attribute("open") is None
    node = browser.find_element(By.CSS_SELECTOR, 'svg.graph g.node[data-node="review"]')
    browser.execute_script("arguments[0].focus()", node)
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert detail.get_attribute("open") is not None
    shoot(browser, "session-waiting")

    browser.get(f"{base}/sessions/failed-1")
    assert "state-failed" in node_classes(browser, "reject")
    assert "state-visited" in node_classes(browser, "decide")
    assert "state-unvisited" in node_classes(browser, "done")
    assert "request rejected: too big" in browser.find_element(By.CLASS_NAME, "error-box").text
    shoot(browser, "session-failed")


def test_the_form_checks_the_schema_then_the_sent_input_moves_the_session_on(
    browser: Any, server: tuple[str, str]
) -> None:
    from selenium.webdriver.common.by import By

    base, store_url = server
    browser.get(f"{base}/sessions/waiting-1")
    area = browser.find_element(By.CSS_SELECTOR, "form.input-form textarea")
    area.clear()
    area.send_keys('{"approved": "yes"}')
    browser.find_element(By.CSS_SELECTOR, "form.input-form button[type=submit]").click()
    check = browser.find_element(By.CSS_SELECTOR, "form.input-form .check")
    assert "Not sent" in check.text
    assert "is not of type boolean" in check.text
    assert area.get_attribute("aria-invalid") == "true"
    assert anyio.run(_inbox_head, store_url, "waiting-1", backend="trio") == 0
    shoot(browser, "session-refused")

    area.clear()
    area.send_keys('{"approved": true, "note": "fine"}')
    assert check.text == "Matches the schema."
    browser.find_element(By.CSS_SELECTOR, "form.input-form button[type=submit]").click()
    # The worker beside the server runs the turn; the page reloads when it is saved.
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "session-status").text == "completed",
    )
    assert "state-visited" in node_classes(browser, "done")
    assert "state-unvisited" in node_classes(browser, "reject")
    shoot(browser, "session-completed")


def test_pipeline_page_draws_an_invalid_pipelines_problems(
    browser: Any, server: tuple[str, str]
) -> None:
    from selenium.webdriver.common.by import By

    base, _ = server
    browser.get(f"{base}/pipelines/invalid.json")
    assert "has-problems" in node_classes(browser, "a")
    assert "node-missing" in node_classes(browser, "nowhere")
    problems = browser.find_element(By.CLASS_NAME, "problems").text
    assert "$.nodes[0].next" in problems
    shoot(browser, "pipeline-invalid")
    browser.get(f"{base}/pipelines/approval.json")
    assert "node-condition" in node_classes(browser, "decide")
    shoot(browser, "pipeline")


def test_the_in_page_check_reads_only_the_keys_a_schema_and_a_payload_have(
    browser: Any, server: tuple[str, str]
) -> None:
    # The check asked `key in object`, which finds "toString", "constructor"
    # and "__proto__" on every object: such a key passed "additionalProperties:
    # false" and a missing required one was taken as given.
    base, _ = server
    browser.get(f"{base}/sessions")
    check = "return window.stageflowCheck(arguments[0], JSON.parse(arguments[1]))"
    payload = '{"approved": true, "toString": 1, "__proto__": 2}'
    assert browser.execute_script(check, ui_support.APPROVAL_SCHEMA, payload) == [
        "$: additional property 'toString' is not allowed",
        "$: additional property '__proto__' is not allowed",
    ]
    assert browser.execute_script(check, {"required": ["constructor"]}, "{}") == [
        "$: 'constructor' is a required property"
    ]


def test_a_pattern_the_browser_cannot_compile_is_left_to_the_server(
    browser: Any, server: tuple[str, str]
) -> None:
    # "\-" is an escape Python's re reads and a browser's "u" mode refuses: the
    # check threw, and the form said nothing as its payload was typed.
    base, _ = server
    browser.get(f"{base}/sessions")
    check = "return window.stageflowCheck(arguments[0], arguments[1])"
    schema = {"type": "string", "pattern": "^a\\-b$", "maxLength": 2}
    assert browser.execute_script(check, schema, "a-b") == ["$: longer than 2 characters"]
    assert browser.execute_script(check, {"pattern": "^a[-]b$"}, "a+b") == [
        "$: does not match ^a[-]b$"
    ]


def _server_problems(schema: dict[str, Any], payload: Any) -> list[str]:
    validator = stageflow.InputSpec("t", schema=schema).validator
    assert validator is not None
    return [e.message for e in validator.iter_errors(payload)]


def test_the_in_page_check_counts_a_strings_length_in_characters(
    browser: Any, server: tuple[str, str]
) -> None:
    # It counted UTF-16 units, two for an emoji: "maxLength" refused a payload
    # the server takes, and the form would not send it.
    base, _ = server
    browser.get(f"{base}/sessions")
    check = "return window.stageflowCheck(arguments[0], arguments[1])"
    schema = {"type": "string", "minLength": 2, "maxLength": 2}
    assert _server_problems(schema, "😀😀") == []
    assert browser.execute_script(check, schema, "😀😀") == []
    assert browser.execute_script(check, schema, "😀😀😀") == ["$: longer than 2 characters"]
    assert browser.execute_script(check, schema, "😀") == ["$: shorter than 2 characters"]


def test_the_in_page_check_compares_enum_and_const_objects_by_their_members(
    browser: Any, server: tuple[str, str]
) -> None:
    # It compared JSON texts, so {"b": 2, "a": 1} was not the {"a": 1, "b": 2} of an enum.
    base, _ = server
    browser.get(f"{base}/sessions")
    check = "return window.stageflowCheck(arguments[0], JSON.parse(arguments[1]))"
    for schema in ({"enum": [{"a": 1, "b": [True, None]}]}, {"const": {"a": 1, "b": [True, None]}}):
        assert _server_problems(schema, {"b": [True, None], "a": 1}) == []
        assert browser.execute_script(check, schema, '{"b": [true, null], "a": 1}') == []
        assert browser.execute_script(check, schema, '{"b": [true, 1], "a": 1}') != []
        assert browser.execute_script(check, schema, '{"a": 1}') != []


def test_the_in_page_check_leaves_keys_pattern_properties_name_to_them(
    browser: Any, server: tuple[str, str]
) -> None:
    # "additionalProperties: false" refused every key "patternProperties" named.
    base, _ = server
    browser.get(f"{base}/sessions")
    check = "return window.stageflowCheck(arguments[0], JSON.parse(arguments[1]))"
    schema = {
        "properties": {"id": {"type": "integer"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    assert _server_problems(schema, {"id": 1, "x-tag": "a"}) == []
    assert browser.execute_script(check, schema, '{"id": 1, "x-tag": "a"}') == []
    assert browser.execute_script(check, schema, '{"x-tag": 1, "y": 2}') == [
        "$.x-tag: 1 is not of type string",
        "$: additional property 'y' is not allowed",
    ]
    # A pattern the browser cannot compile may name the key: the server decides.
    lenient = {"patternProperties": {"^a\\-": {}}, "additionalProperties": False}
    assert browser.execute_script(check, lenient, '{"a-b": 1}') == []
