"""The registry's web pages in a real browser (headless Chromium through selenium) against
`create_app` served by uvicorn on a loopback port, plus the same pages' escaping and login
through the test client."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from regtestlib import DIGEST, make_adapter

from registry.api import create_app

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
XSS = '<img src=x onerror="document.title=\'pwned\'">'


def _fill(reg, tmp_path):
    reg.publish("sst2", make_adapter(tmp_path / "a1", seed=1), base_digest=DIGEST, method="lora",
                metrics={"dev_accuracy": 0.91, "pct_of_full": 101.1},
                tags={"team": "nlp", "note": XSS},
                lineage={"mlflow_run_id": "run123", "prefect_flow_run_id": "flow456"},
                aliases=["production"], actor="alice")
    reg.publish("sst2", make_adapter(tmp_path / "a2", seed=2), base_digest=DIGEST,
                method="bitfit", metrics={"dev_accuracy": 0.85, "pct_of_full": 94.4})
    reg.set_alias("sst2", "production", 2, actor="bob")
    reg.publish("cola", make_adapter(tmp_path / "a3", seed=3), base_digest=DIGEST,
                method="lora", metrics={"dev_matthews": 0.4}, tags={"team": "nlp"})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread on 127.0.0.1; stopped by stop()."""

    def __init__(self, app):
        import uvicorn

        self.port = _port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


class _Runs(BaseHTTPRequestHandler):
    """Stands in for the MLflow and Prefect UIs: answers every GET with its path."""

    def do_GET(self):  # noqa: N802
        body = f"<title>run page</title><p id='path'>{self.path}</p>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _follow(browser, locator: tuple[str, str], timeout: float = 20) -> None:
    """Click the link or button at ``locator`` that loads a new page and wait (bounded) until that
    page has loaded: a click returns as soon as the event is sent, so reading straight after it
    races. ChromeDriver now and then loses the node it is clicking ("Node with given id does not
    belong to the document"); then, unless the click went through anyway, the element is found
    again and clicked again (at most three tries)."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        try:
            browser.find_element(*locator).click()
            break
        except WebDriverException:
            if attempt == 2:
                raise
            try:
                WebDriverWait(browser, 2).until(ec.staleness_of(old))
                break  # the page went away: the click did go through
            except TimeoutException:
                continue
    wait = WebDriverWait(browser, timeout)
    wait.until(ec.staleness_of(old))
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")


def _back(browser, timeout: float = 20) -> None:
    """browser.back(), waiting (bounded) for the previous page to be shown again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.back()
    wait = WebDriverWait(browser, timeout)
    wait.until(ec.staleness_of(old))
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")


def test_pages_escape_user_text_and_search_errors(reg, tmp_path):
    _fill(reg, tmp_path)
    c = TestClient(create_app(reg, "w", mlflow_ui_url="http://127.0.0.1:5000",
                              prefect_ui_url="http://127.0.0.1:4200"))
    page = c.get("/ui/tasks/sst2/versions/1").text
    assert XSS not in page and "&lt;img src=x" in page
    assert 'href="http://127.0.0.1:5000/#/runs/run123"' in page
    assert 'href="http://127.0.0.1:4200/runs/flow-run/flow456"' in page
    assert "peftops registry export ./adapters sst2:1" in page
    r = c.get("/ui/search", params={"metric": "accuracy>=0.9"})
    assert r.status_code == 422 and "dev_accuracy" in r.text and "pct_of_full" in r.text
    hist = c.get("/tasks/sst2/aliases/production/history").json()
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in hist] == \
        [(1, 2, "bob"), (None, 1, "alice")]
    assert c.get("/ui/tasks/nope").status_code == 404


def test_pages_honour_the_read_token(reg, tmp_path):
    _fill(reg, tmp_path)
    c = TestClient(create_app(reg, "w", "r"))
    r = c.get("/ui/tasks/sst2", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert c.post("/ui/login", data={"token": "wrong"}).status_code == 401
    r = c.post("/ui/login", data={"token": "r", "next": "//evil.example"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    assert c.get("/ui/tasks/sst2").status_code == 200  # the cookie
    assert c.get("/tasks").status_code == 401  # the JSON API still wants the header


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_registry_pages_in_a_browser(reg, tmp_path, browser):
    from selenium.webdriver.common.by import By

    _fill(reg, tmp_path)
    runs = ThreadingHTTPServer(("127.0.0.1", 0), _Runs)
    threading.Thread(target=runs.serve_forever, daemon=True).start()
    runs_url = f"http://127.0.0.1:{runs.server_address[1]}"
    server = _Server(create_app(reg, "w", "r-token", mlflow_ui_url=runs_url,
                                prefect_ui_url=runs_url))
    base = f"http://127.0.0.1:{server.port}"
    try:
        browser.get(base + "/ui")  # the read token: log in first
        assert "/ui/login" in browser.current_url
        browser.find_element(By.ID, "token").send_keys("r-token")
        _follow(browser, (By.ID, "login-button"))
        tasks = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#tasks a.task-link")]
        assert tasks == ["cola", "sst2"]

        _follow(browser, (By.LINK_TEXT, "sst2"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["v2", "v1"]
        assert "94.4%" in rows[0].text
        history = browser.find_element(By.ID, "alias-history").text
        assert "bob" in history and "alice" in history

        _follow(browser, (By.LINK_TEXT, "v1"))
        assert "dev_accuracy" in browser.find_element(By.ID, "metrics").text
        assert XSS in browser.find_element(By.ID, "tags").text  # shown as text, not run
        assert browser.title != "pwned"
        assert "sst2:1" in browser.find_element(By.ID, "commands").text
        _follow(browser, (By.ID, "mlflow-link"))
        assert browser.current_url == f"{runs_url}/#/runs/run123"
        assert browser.find_element(By.ID, "path").text == "/"
        _back(browser)
        _follow(browser, (By.ID, "prefect-link"))
        assert browser.find_element(By.ID, "path").text == "/runs/flow-run/flow456"

        browser.get(base + "/ui")
        browser.find_element(By.NAME, "metric").send_keys("dev_accuracy>=0.9")
        _follow(browser, (By.ID, "search-button"))
        assert "tag=" not in browser.current_url  # empty fields are left out
        found = browser.find_elements(By.CSS_SELECTOR, "#results a.version-link")
        assert [a.get_attribute("href") for a in found] == [base + "/ui/tasks/sst2/versions/1"]

        browser.get(base + "/ui/search?tag=team%3Dnlp&method=lora")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results a.version-link")) == 2

        browser.get(base + "/ui/search?metric=accuracy%3E%3D0.9")
        error = browser.find_element(By.ID, "search-error").text
        assert "unknown metric 'accuracy'" in error and "dev_accuracy" in error
    finally:
        server.stop()
        runs.shutdown()
        runs.server_close()
        assert json.dumps(reg.verify(check_bytes=False))  # the registry is still readable


def test_redoc_renders_offline_in_a_browser(reg, tmp_path, browser):
    """ReDoc loads the schema itself, without an Authorization header (the login cookie is
    for /ui only), so this app has no read token; the hostile tests cover the token."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _fill(reg, tmp_path)
    app = create_app(reg, "w")
    summaries = {op.get("summary") for ops in app.openapi()["paths"].values()
                 for op in ops.values()} - {None}
    server = _Server(app)
    base = f"http://127.0.0.1:{server.port}"
    try:
        browser.get(base + "/redoc")
        WebDriverWait(browser, 30).until(
            lambda b: "peftops adapter registry" in b.find_element(By.TAG_NAME, "body").text)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Versioned PEFT adapters for pinned base models." in body
        assert any(s in body for s in summaries)  # the operations were rendered
        # everything that loaded came from this server; the bundle's footer logo
        # (cdn.redoc.ly) was refused by the page's Content-Security-Policy, not fetched
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.responseStatus > 0).map(e => e.name)")
        assert base + "/redoc-assets/redoc.standalone.js" in loaded
        assert base + "/openapi.json" in loaded and all(u.startswith(base) for u in loaded)
        blocked = browser.execute_async_script(
            "const done = arguments[0];"
            "document.addEventListener('securitypolicyviolation', e => done(e.blockedURI));"
            "const img = new Image(); img.src = 'https://cdn.redoc.ly/redoc/logo-mini.svg';"
            "document.body.appendChild(img);")
        assert blocked.startswith("https://cdn.redoc.ly")
    finally:
        server.stop()
