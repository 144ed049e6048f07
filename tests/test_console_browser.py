"""The console in a real browser: Debian's chromium driven by selenium, against
`distinct-forwarder console` (gunicorn), a real worker and the sandbox Distinct.

Each page visited is also checked by axe-core (no serious or critical
violation). With FORWARDER_CONSOLE_SCREENSHOTS=DIR, each page is saved there as
a PNG (``python docs/console/screenshots.py`` writes docs/console/ that way).
Skipped, saying why, where chromium or chromedriver is not installed
(``apt-get install chromium chromium-driver``; .ci/run installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.processes import stop_process
from forwarder.redis_server import free_port
from forwarder.sandbox import Sandbox
from forwarder.store import Store
from tests.conftest import WorkerProcess, capture_event, wait_until
from tests.helpers import add_dead_letter, dead_letter_entry
from tests.test_console import ADMIN_KEY, KEYS_ENV, READONLY_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need Debian's chromium and chromedriver: "
           "apt-get install chromium chromium-driver")
SHOTS = os.environ.get("FORWARDER_CONSOLE_SCREENSHOTS")
#: Flags that keep a headless chromium from reaching for the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--window-size=1280,900")

webdriver = pytest.importorskip("selenium.webdriver")
By = pytest.importorskip("selenium.webdriver.common.by").By
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys
Axe = pytest.importorskip("selenium_axe_python").Axe


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """`distinct-forwarder console` as a subprocess; stopped by PID."""

    def __init__(self, redis_url: str, namespace: str, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FORWARDER_", "DISTINCT_"))}
        env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace, **KEYS_ENV)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "console", "--bind", f"127.0.0.1:{self.port}"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"console exited:\n{log_path.read_text()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_until(answers, 30, 0.1, "the console to answer")

    def stop(self) -> None:
        stop_process(self.process, 30)
        self._log.close()


@pytest.fixture
def console(redis_url: str, namespace: str, tmp_path: Path, browser: Any) -> Iterator[Console]:
    server = Console(redis_url, namespace, tmp_path / "console.log")
    try:
        yield server
    finally:
        browser.delete_all_cookies()
        server.stop()
    log = server.log_path.read_text()
    assert ADMIN_KEY not in log and READONLY_KEY not in log


def follow(browser: Any, action: Callable[[], Any]) -> None:
    """Do what loads another page (a click, Enter in a form, back), and wait for it.

    The current document is marked with a window property holding a fresh token;
    the next page is there once a complete document answers without that token
    (a page restored by Back carries an older one). Asking an element of the old
    page whether it went stale races with chromedriver, which may answer with a
    plain WebDriverException while the page is being replaced.
    """
    from selenium.common.exceptions import WebDriverException

    token = uuid.uuid4().hex
    browser.execute_script("window.__forwarderPage = arguments[0]", token)
    action()

    def replaced() -> bool:
        try:
            return bool(browser.execute_script(
                "return window.__forwarderPage !== arguments[0]"
                " && document.readyState === 'complete'", token))
        except WebDriverException:  # between documents: ask again
            return False

    wait_until(replaced, 15, 0.05, "the next page")


def press(browser: Any, label: str) -> None:
    """Click the button whose text contains ``label``, and wait for the next page."""
    button = browser.find_element(By.XPATH, f"//button[contains(., '{label}')]")
    follow(browser, button.click)


def log_in(browser: Any, console: Console, key: str) -> None:
    browser.get(console.url + "/")
    assert "/login" in browser.current_url  # sent to the login form first
    field = browser.find_element(By.ID, "key")
    field.send_keys(key)
    follow(browser, lambda: field.send_keys(Keys.ENTER))
    assert "/login" not in browser.current_url


def accessible(browser: Any, page: str) -> None:
    """axe-core finds no serious or critical violation on the current page."""
    axe = Axe(browser)
    axe.inject()
    results = axe.run()
    bad = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, f"{page}: " + axe.report(bad)
    assert results["passes"], "axe ran no check"
    shoot(browser, page)


def shoot(browser: Any, name: str) -> None:
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(700, min(int(height) + 40, 2400)))
    browser.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
    browser.set_window_size(1280, 900)


def text(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def figure(browser: Any, name: str) -> int:
    return int(re.sub(r"\D", "", text(browser, f'[data-figure="{name}"]')) or 0)


def eventually(check: Callable[[], Any], message: str, timeout: float = 30) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def attempt() -> Any:
        try:
            return check()
        except (StaleElementReferenceException, WebDriverException):
            return None  # the live region was being replaced

    return wait_until(attempt, timeout, 0.1, message)


def test_overview_during_a_real_outage_breaker_open_retry_set_growing(
        browser: Any, console: Console, sandbox: Sandbox,
        start_worker: Callable[..., WorkerProcess], settings: Settings, store: Store) -> None:
    sandbox.faults.update({"outage_seconds": 120})
    start_worker()
    fwd = Forwarder(settings=settings)
    for i in range(30):
        fwd.capture(capture_event(i))
    browser.get(console.url + "/login")
    accessible(browser, "login")
    log_in(browser, console, ADMIN_KEY)
    assert browser.find_element(By.CSS_SELECTOR, 'a[aria-current="page"]').text == "Overview"
    # The page updates itself: no reload from here on.
    browser.execute_script("document.body.dataset.loadedOnce = 'yes'")
    eventually(lambda: "OPEN" in text(browser, '[data-figure="breaker"]'),
               "the breaker shown open")
    before = eventually(lambda: figure(browser, "retry") or None, "retries shown")
    for i in range(30, 70):
        fwd.capture(capture_event(i))
    eventually(lambda: figure(browser, "retry") > before, "the retry set shown growing")
    assert browser.execute_script("return document.body.dataset.loadedOnce") == "yes"
    page = text(browser, "#live")
    assert "transient" in page or "keeps failing" in page  # the breaker's reason and hint
    assert "LIVE" in page and "Next probe" in page
    assert store.breaker().state == "open" and store.retry_depth() > 0
    # The pause button stops the refresh (and says so to assistive technology).
    toggle = browser.find_element(By.CSS_SELECTOR, "[data-live-toggle]")
    toggle.click()
    assert toggle.get_attribute("aria-pressed") == "true"
    toggle.click()
    accessible(browser, "overview")


def test_filter_open_reveal_replay_and_watch_it_delivered(
        browser: Any, console: Console, sandbox: Sandbox,
        start_worker: Callable[..., WorkerProcess], settings: Settings, store: Store) -> None:
    sandbox.faults.reject_values = [f"bad-{i}" for i in range(6)]
    start_worker()
    fwd = Forwarder(settings=settings)
    for i in range(6):
        fwd.capture({**capture_event(i), "eventValue": f"bad-{i}"})
    for i in range(6, 10):
        fwd.capture(capture_event(i))
    for i in range(3):
        add_dead_letter(store, dead_letter_entry(100 + i, reason="exhausted", status=503))
    wait_until(lambda: store.dlq_depth() == 9 and len(sandbox.events) == 4, 60, 0.1,
               "6 rejected by the sandbox and 4 delivered")
    log_in(browser, console, ADMIN_KEY)
    # To the dead letters by keyboard alone: Tab to the link, Enter.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(10):
        active = browser.switch_to.active_element
        if active.text == "Dead letters":
            break
        active.send_keys(Keys.TAB)
    follow(browser, lambda: browser.switch_to.active_element.send_keys(Keys.ENTER))
    assert "/dead-letters" in browser.current_url
    assert len(browser.find_elements(By.CSS_SELECTOR, 'input[name="ids"]')) == 9
    # Filter as the CLI would: --reason rejected --search bad-
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "f-reason")).select_by_value("rejected")
    browser.find_element(By.ID, "f-search").send_keys("bad-")
    press(browser, "Apply filter")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.letters tbody tr")
    assert len(rows) == 6 and all("rejected" in r.text and "400" in r.text for r in rows)
    accessible(browser, "dead-letters")
    # One entry: its email masked until revealed, and the reveal audited.
    follow(browser, lambda: rows[0].find_element(By.CSS_SELECTOR, "a").click())
    shown = text(browser, "#body")
    assert "f***@example.com" in shown and "@example.com" in shown
    assert not re.search(r"fan\d@example\.com", shown)
    accessible(browser, "entry")
    press(browser, "Reveal")
    assert re.search(r"fan\d@example\.com", text(browser, "#body"))
    assert "audit log" in text(browser, "h2 .tag")
    # Replay everything the filter matches: dry run first, then the job's progress.
    sandbox.faults.reject_values = []
    follow(browser, browser.back)
    follow(browser, browser.back)
    follow(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Replay all matching").click)
    assert figure(browser, "would-replay") == 6 and figure(browser, "would-skip") == 0
    assert store.dlq_depth() == 9  # a dry run changes nothing
    accessible(browser, "replay-dry-run")
    press(browser, "Replay 6 entries")
    eventually(lambda: "DONE" in text(browser, "#job-live"), "the replay done")
    eventually(lambda: figure(browser, "job-delivered") == 6,
               "the 6 replayed events shown delivered by the worker", timeout=60)
    assert figure(browser, "job-replayed") == 6
    delivered = {e["body"]["eventValue"] for e in sandbox.events}
    assert {f"bad-{i}" for i in range(6)} <= delivered
    assert store.dlq_depth() == 3
    accessible(browser, "replay-job")
    # Where is one of them now? Delivered.
    def open_one() -> bool:
        details = browser.find_element(By.CSS_SELECTOR, "#job-live details")
        if not details.get_attribute("open"):
            details.find_element(By.TAG_NAME, "summary").click()
        follow(browser, details.find_element(By.TAG_NAME, "a").click)
        return True

    eventually(open_one, "one of the replayed events opened")
    assert "DELIVERED" in text(browser, "main")
    accessible(browser, "find")
    browser.get(console.url + "/")
    audit = text(browser, ".audit")
    assert "alice (admin) reveal" in audit and "alice (admin) replay" in audit


def test_purge_with_typed_confirmation_csrf_and_a_read_only_login(
        browser: Any, console: Console, store: Store) -> None:
    ids = [add_dead_letter(store, dead_letter_entry(i)) for i in range(5)]
    log_in(browser, console, ADMIN_KEY)
    browser.get(console.url + "/dead-letters")
    ticked = []
    for box in browser.find_elements(By.CSS_SELECTOR, 'input[name="ids"]')[:2]:
        box.click()
        ticked.append(box.get_attribute("value"))
    press(browser, "Purge selected")
    assert figure(browser, "would-purge") == 2
    accessible(browser, "purge-confirm")
    typed = browser.find_element(By.ID, "typed")
    typed.send_keys("purge 3")
    follow(browser, lambda: typed.send_keys(Keys.ENTER))
    assert "Type “purge 2” to confirm" in text(browser, "#typed-error")
    assert browser.find_element(By.ID, "typed").get_attribute("aria-invalid") == "true"
    assert store.dlq_depth() == 5
    browser.find_element(By.ID, "typed").send_keys("purge 2")
    press(browser, "Purge 2 entries")
    assert "Purged 2 entries" in text(browser, ".flashes")
    assert store.dlq_depth() == 3
    # A form whose CSRF token is gone is refused, and nothing happens.
    left = store.dlq_ids()
    browser.get(f"{console.url}/dead-letters/{left[0]}")
    browser.execute_script("""
        const form = document.querySelector('form[action$="/replay"]');
        form.querySelector('input[name=csrf_token]').remove();
        form.submit();""")
    wait_until(lambda: "Bad request" in browser.title, 10, 0.05, "the refusal")
    assert "security token" in text(browser, "main")
    assert store.dlq_depth() == 3 and store.queue_depth() == 0
    browser.get(console.url + "/audit")
    assert "purge" in text(browser, "table")
    accessible(browser, "audit")
    press(browser, "Log out")
    # Read-only: no replay button, and a replay posted anyway (with a valid token) is refused.
    log_in(browser, console, READONLY_KEY)
    browser.get(f"{console.url}/dead-letters/{left[0]}")
    assert "read-only" in text(browser, ".role")
    assert not browser.find_elements(By.XPATH, "//button[contains(., 'Replay this entry')]")
    browser.execute_script("""
        const token = document.querySelector('input[name=csrf_token]').value;
        const form = document.createElement('form');
        form.method = 'post';
        form.action = location.pathname + '/replay';
        const field = document.createElement('input');
        field.name = 'csrf_token'; field.value = token;
        form.appendChild(field); document.body.appendChild(form); form.submit();""")
    wait_until(lambda: "Not allowed" in browser.title, 10, 0.05, "the refusal")
    assert "read-only" in text(browser, "main")
    assert store.dlq_depth() == 3 and store.queue_depth() == 0
    assert set(store.dlq_ids()) == set(ids) - set(ticked)
    accessible(browser, "refused-read-only")
