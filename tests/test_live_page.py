"""The example's live pages in a real browser: headless Chromium driven by Selenium.

* the report page (``example/main.py``) against the real RabbitMQ and a real worker on a queue
  of this run's own: the bar moves step by step, then the result shows;
* the same page behind a :class:`~tests.faults.proxy.TcpProxy` cut mid-stream, briefly or until
  the task is over: ``follow.js`` resumes and the end still arrives;
* the group page (``example/grouptasks.py --embedded``): the summary counts up, every member
  ends SUCCESS with its sum.

Screenshots of the finished pages go to ``docs/live-page.png`` and ``docs/group-page.png``
with ``UPDATE_SCREENSHOTS=1`` (the README shows them), else to a temporary directory.
The browser is Debian's ``chromium`` with its ``chromedriver`` (``scripts/install-browser``
installs them); a browser that cannot start fails these tests, it never skips them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.proxy import TcpProxy
from tests.workers import ROOT, CeleryWorker

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as exc:  # pragma: no cover - the message is the point
    pytest.fail(f"selenium is not installed ({exc}): pip install -e '.[test]' "
                "(it is in the test extra), then scripts/install-browser", pytrace=False)

# Installing the browser (first run on a bare machine) takes a while: more than the default.
pytestmark = pytest.mark.timeout(300)

EXAMPLE = ROOT / "example"
#: The README's screenshots are rewritten only when asked (``UPDATE_SCREENSHOTS=1``), so a
#: test run leaves the checkout clean; otherwise they go to a temporary directory.
DOCS = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else Path(
    tempfile.mkdtemp(prefix="tcelery-screens-"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ROOT / "scripts" / "install-browser"
PREFIX = os.environ["TCELERY_TEST_PREFIX"]
QUEUE = f"{PREFIX}.live-page"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1000,700")

#: What the tests read of the report page at each poll.
REPORT_DOM = """
const $ = (id) => document.getElementById(id);
return {value: $("bar").value, max: $("bar").max, state: $("state").textContent,
        result: $("result").textContent, disabled: $("start").disabled};
"""

#: What the tests read of the group page at each poll.
GROUP_DOM = """
const $ = (id) => document.getElementById(id);
const cells = (p) => Array.from({length: 8}, (_, i) => $(p + i) ? $(p + i).textContent : null);
return {value: $("bar").value, max: $("bar").max, summary: $("summary").textContent,
        states: cells("m"), results: cells("r")};
"""

#: Remember every EventSource the page opens (the test needs the task id from its URL).
RECORD_STREAMS = """
if (!window.__streams) {
  window.__streams = [];
  const Original = window.EventSource;
  window.EventSource = class extends Original {
    constructor(url, init) { super(url, init); window.__streams.push(String(url)); }
  };
}
"""


# ------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class App:
    """One of the example's Tornado apps, run as ``python <script> --port <port>``."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def run_app(script: str, log_path: Path, env: dict[str, str], *args: str) -> Iterator[App]:
    """Start ``example/<script>``, wait until it says it serves, always stop it at the end."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, script, "--port", str(port), *args],
                                cwd=EXAMPLE, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    app = App(port, proc, log_path)
    try:
        deadline = time.monotonic() + 30
        while f"serving http://127.0.0.1:{port}/" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"{script} exited with {proc.returncode}:\n{app.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{script} not serving within 30 s:\n{app.log()}")
            time.sleep(0.05)
        yield app
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def watch(driver: WebDriver, script: str, done: Callable[[dict[str, Any]], bool],
          timeout: float, what: str) -> list[dict[str, Any]]:
    """Poll the page with ``script`` every 50 ms until ``done(snapshot)``; every snapshot."""
    seen: list[dict[str, Any]] = []

    def condition(d: WebDriver) -> bool:
        seen.append(d.execute_script(script))
        return done(seen[-1])

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail(f"{what} within {timeout} s; last snapshots: {seen[-3:]}")
    return seen


def report_finished(dom: dict[str, Any]) -> bool:
    return dom["state"] in ("SUCCESS", "FAILURE", "REVOKED") and dom["result"] != ""


def moved(dom: dict[str, Any]) -> bool:
    return bool(0 < dom["value"] < dom["max"])


def check_report_success(dom: dict[str, Any], steps: int) -> dict[str, Any]:
    assert dom["state"] == "SUCCESS", dom
    result: dict[str, Any] = json.loads(dom["result"])
    assert result["steps"] == steps, result
    assert isinstance(result["users"], int) and result["seconds"] > 0, result
    assert dom["value"] == dom["max"] == steps, dom
    assert not dom["disabled"], dom  # the page is ready for another run
    return result


def status_of(app: App, task_id: str) -> dict[str, Any]:
    """The task's status straight from the app, bypassing the proxy."""
    with urllib.request.urlopen(app.url(f"/tasks/{task_id}"), timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


# ------------------------------------------------------------------------------ fixtures
def _chrome(user_data_dir: str) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs (it would try to download one).
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium; installed first (``scripts/install-browser``) when missing."""
    how = (f"install it with `{INSTALL.relative_to(ROOT)}` (apt-get install chromium "
           "chromium-driver) and `pip install -e '.[test]'` (selenium)")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        done = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=600,
                              check=False)
        if done.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing, still after "
                        f"{INSTALL.name} (exit {done.returncode}):\n{done.stdout}"
                        f"{done.stderr}\n{how}", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="tcelery-chromium-") as profile:
        try:
            driver = _chrome(profile)
        except WebDriverException as exc:
            pytest.fail(f"cannot start headless Chromium ({CHROMIUM}, {CHROMEDRIVER}): "
                        f"{exc.msg or exc}\n{how}", pytrace=False)
        try:
            # a 1000x700 viewport (the window's own frame takes some of its height)
            driver.set_window_size(1000, 700)
            inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
            driver.set_window_size(2000 - inner[0], 1400 - inner[1])
            driver.set_page_load_timeout(20)
            driver.set_script_timeout(10)
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def report_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """``main.py`` and its real worker on this run's own queue (deleted at the end)."""
    from tests.group_app import delete_queues

    tmp = tmp_path_factory.mktemp("live-page")
    env = {"EXAMPLE_QUEUE": QUEUE, "EXAMPLE_DB": str(tmp / "users.db"),
           "BROKER_URL": os.environ["TCELERY_TEST_BROKER"]}
    worker = CeleryWorker("backend.v1", [QUEUE], f"live-page-{PREFIX}", cwd=EXAMPLE, env=env,
                          concurrency=2)
    try:
        worker.start()
        with run_app("main.py", tmp / "main.log", env) as app:
            yield app
    finally:
        worker.stop()
        delete_queues(QUEUE)


@pytest.fixture
def report_page(browser: WebDriver, report_app: App) -> Iterator[WebDriver]:
    """The browser, with a blank page again afterwards (no stream left open)."""
    try:
        yield browser
    finally:
        with contextlib.suppress(WebDriverException):
            browser.get("about:blank")


@pytest.fixture
def proxy(report_app: App) -> Iterator[TcpProxy]:
    """A proxy between the browser and ``main.py``."""
    with TcpProxy("127.0.0.1", report_app.port) as p:
        yield p


# ------------------------------------------------------------------------------ report page
def start_report(driver: WebDriver, base: str, steps: int, delay: float) -> None:
    driver.get(f"{base}/?steps={steps}&delay={delay}")
    driver.execute_script(RECORD_STREAMS)
    assert driver.find_element(By.ID, "state").text == "idle"
    driver.find_element(By.ID, "start").click()


def test_report_bar_follows_the_real_worker(report_page: WebDriver, report_app: App) -> None:
    start_report(report_page, report_app.url("").rstrip("/"), 8, 0.3)
    seen = watch(report_page, REPORT_DOM, report_finished, 30, "the report did not finish")
    final = seen[-1]
    check_report_success(final, 8)
    steps = [dom["value"] for dom in seen if dom["max"] == 8 and moved(dom)]
    assert len(set(steps)) >= 2, f"the bar did not move step by step: {seen}"
    assert steps == sorted(steps), f"the bar went backwards: {steps}"
    assert "PROGRESS" in {dom["state"] for dom in seen}, seen
    DOCS.mkdir(exist_ok=True)
    assert report_page.save_screenshot(str(DOCS / "live-page.png"))


@pytest.mark.parametrize("outage", ["brief", "until-done"])
def test_report_survives_a_lost_connection(report_page: WebDriver, report_app: App,
                                           proxy: TcpProxy, outage: str) -> None:
    """A cut of 1.5 s: EventSource reconnects and the stream resumes from the current state.
    A cut until the task is over: the reconnect gets 204, and one GET of the status ends it."""
    steps, delay = 12, 0.4
    start_report(report_page, f"http://127.0.0.1:{proxy.port}", steps, delay)
    before = watch(report_page, REPORT_DOM, lambda dom: dom["max"] == steps and moved(dom), 15,
                   "the bar did not move")
    streams = report_page.execute_script("return window.__streams")
    assert len(streams) == 1 and streams[0].endswith("/events"), streams
    task_id = streams[0].rsplit("/", 2)[-2]
    accepted = proxy.accepted
    with proxy.down("refuse"):
        cut_at = before[-1]["value"]
        if outage == "brief":
            time.sleep(1.5)
        else:
            deadline = time.monotonic() + 20
            while status_of(report_app, task_id)["state"] != "SUCCESS":
                assert time.monotonic() < deadline, status_of(report_app, task_id)
                time.sleep(0.1)
        during = report_page.execute_script(REPORT_DOM)
        assert during["state"] != "SUCCESS", during  # nothing reached the page meanwhile
    after = watch(report_page, REPORT_DOM, report_finished, 20,
                  f"the page did not recover after the {outage} outage")
    check_report_success(after[-1], steps)
    assert proxy.accepted > accepted, "the page never reconnected"
    fetched = report_page.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)")
    status_gets = [url for url in fetched if url.endswith(f"/tasks/{task_id}")]
    if outage == "brief":
        # the stream resumed mid-task: steps after the cut came through as they happened
        resumed = [dom["value"] for dom in after if moved(dom) and dom["value"] > cut_at]
        assert resumed, f"no progress after the reconnect: {after}"
        assert status_gets == [], "the stream itself should have brought the end"
    else:
        assert all(dom["value"] <= during["value"] for dom in after[:-1] if moved(dom)), after
        # the reconnect got 204 (the task was over), so follow.js asked for the status once
        assert len(status_gets) == 1, fetched


# ------------------------------------------------------------------------------ group page
@pytest.fixture(scope="module")
def group_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """``grouptasks.py --embedded``: its tasks run in its own process, 0.3 to 1.2 s each."""
    log_path = tmp_path_factory.mktemp("group-page") / "grouptasks.log"
    with run_app("grouptasks.py", log_path, {"GROUPTASKS_DELAY": "0.3,1.2"},
                 "--embedded") as app:
        yield app


def test_group_page_counts_up_to_eight(browser: WebDriver, group_app: App) -> None:
    try:
        browser.get(group_app.url("/"))
        assert browser.find_element(By.ID, "summary").text == "idle"
        browser.find_element(By.ID, "start").click()
        seen = watch(browser, GROUP_DOM, lambda dom: "(processed)" in dom["summary"], 30,
                     "the group was not processed")
        final = seen[-1]
        assert final["summary"] == "8 of 8 done (processed)", final
        assert final["value"] == final["max"] == 8, final
        assert final["states"] == ["SUCCESS"] * 8, final
        assert final["results"] == [str(i + 10 * i) for i in range(8)], final
        counts = [int(dom["summary"].split(" of ")[0]) for dom in seen
                  if dom["summary"].endswith(" of 8 done")]
        assert counts == sorted(counts), f"the count went backwards: {counts}"
        assert any(0 < k < 8 for k in counts), f"no intermediate count seen: {counts}"
        DOCS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(DOCS / "group-page.png"))
    finally:
        with contextlib.suppress(WebDriverException):
            browser.get("about:blank")
