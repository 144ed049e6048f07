"""The operator console over real HTTP: access, CSRF, dead letters, replays, purges,
exports, finding an event, the audit log; and the pure parts it is built from.

The console runs in a thread of the test process (werkzeug's server: real
sockets, real Redis); `distinct-forwarder console` itself (gunicorn) is run
as a subprocess here and in tests/test_console_browser.py.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from forwarder import dlq
from forwarder.config import Settings
from forwarder.console.access import ConsoleKeys, safe_next
from forwarder.console.app import create_app
from forwarder.console.audit import AuditLog
from forwarder.console.chart import build
from forwarder.console.display import ago, duration
from forwarder.console.filters import parse_filter, parse_ids
from forwarder.console.locate import event_id_of
from forwarder.masking import mask_personal
from forwarder.messages import encode_event, event_id_for
from forwarder.redis_server import free_port
from forwarder.store import Store, dedupe_member
from tests.conftest import wait_until
from tests.helpers import dead_letter_entry, event, held_key, store_outcomes
from workers.gate import Gate
from workers.outcomes import Finish

ADMIN_KEY = "console-admin-key-7c1e5a9b3d4f"
READONLY_KEY = "console-viewer-key-2f8d4b6a1e0c"
KEYS_ENV = {"FORWARDER_CONSOLE_KEYS": f"alice:{ADMIN_KEY}",
            "FORWARDER_CONSOLE_READONLY_KEYS": f"bob:{READONLY_KEY}"}
COOKIE = "__Host-console"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browserless:
    """An HTTP client that keeps the console's cookie by hand.

    The cookie is Secure, and Python's cookie jar (like a browser on any host
    but loopback) sends a Secure cookie over HTTPS only; Chromium sends it to
    127.0.0.1, which tests/test_console_browser.py checks.
    """

    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()
        self.cookie: str | None = None
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookie:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        response = self.http.request(method, self.base + path, headers=headers,
                                     allow_redirects=False, timeout=30, **kwargs)
        for header in response.raw.headers.getlist("Set-Cookie"):
            self.set_cookies.append(header)
            name, _, rest = header.partition("=")
            if name == COOKIE:
                self.cookie = rest.partition(";")[0] or None
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: Any = None, token: bool = True) -> requests.Response:
        form = list(data.items()) if isinstance(data, dict) else list(data or [])
        if token:
            form.append(("csrf_token", self.token()))
        return self.request("POST", path, data=form)

    def token(self) -> str:
        match = _TOKEN.search(self.get("/find").text)
        assert match, "no CSRF token on the page"
        return match.group(1)

    def login(self, key: str) -> requests.Response:
        page = self.get("/login")
        token = _TOKEN.search(page.text)
        assert token
        return self.request("POST", "/login", data={"key": key, "csrf_token": token.group(1)})


@pytest.fixture
def console_keys() -> ConsoleKeys:
    return ConsoleKeys.from_env(KEYS_ENV)


@pytest.fixture
def console_url(settings: Settings, store: Store, console_keys: ConsoleKeys) -> Iterator[str]:
    app = create_app(settings, console_keys, store)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def admin(console_url: str) -> Browserless:
    client = Browserless(console_url)
    assert client.login(ADMIN_KEY).status_code == 302
    return client


@pytest.fixture
def viewer(console_url: str) -> Browserless:
    client = Browserless(console_url)
    assert client.login(READONLY_KEY).status_code == 302
    return client


def put_entries(store: Store, entries: list[dict[str, Any]]) -> list[str]:
    store.dlq_put(entries)
    return [e["id"] for e in entries]


def mixed_entries(count: int, start: float) -> list[dict[str, Any]]:
    """Entries of every reason, status, type and experience, one second apart."""
    entries = []
    for i in range(count):
        reason = ("rejected", "exhausted", "expired")[i % 3]
        changes: dict[str, Any] = {"dead_at": start + i, "first_seen": start + i,
                                   "last_attempt": start + i}
        if i % 5 == 0:
            changes["experience"] = "other-show"
        entry = dead_letter_entry(i, reason=reason, status=400 if reason == "rejected" else 503,
                                  **changes)
        if i % 4 == 0:
            entry["body"]["type"] = "PHOTO_DOWNLOADED_BY_USER"
        entries.append(entry)
    return entries


# --- access ------------------------------------------------------------------------
def test_healthz_needs_no_login_and_every_page_does(console_url: str) -> None:
    client = Browserless(console_url)
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    for path in ("/", "/dead-letters", "/find?q=x", "/audit", "/jobs/abc"):
        page = client.get(path)
        assert page.status_code == 302, path
        assert page.headers["Location"].startswith("/login?next=")
    # A POST without a session is refused before it reaches anything.
    refused = client.request("POST", "/dead-letters/purge", data={"reason": "rejected"})
    assert refused.status_code in (400, 401)


def test_login_cookie_is_hardened_and_unknown_keys_are_refused(console_url: str,
                                                               store: Store) -> None:
    client = Browserless(console_url)
    wrong = client.login("not-a-console-key-at-all-123")
    assert wrong.status_code == 401 and "not one the console accepts" in wrong.text
    assert client.get("/").status_code == 302
    assert client.login(ADMIN_KEY).status_code == 302
    cookie = next(c for c in reversed(client.set_cookies) if c.startswith(COOKIE + "="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "domain" not in attributes
    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text
    headers = page.headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    # No page shows a key, whoever is logged in.
    put_entries(store, [dead_letter_entry(1)])
    for path in ("/", "/dead-letters", "/audit", "/find?q=k", "/login"):
        body = client.get(path).text
        assert ADMIN_KEY not in body and READONLY_KEY not in body, path
    assert client.post("/logout").status_code == 302
    assert client.get("/").status_code == 302


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
        admin: Browserless, store: Store) -> None:
    [entry_id] = put_entries(store, [dead_letter_entry(1)])
    refused = admin.post(f"/dead-letters/{entry_id}/replay", token=False)
    assert refused.status_code == 400 and "security token" in refused.text
    forged = admin.post(f"/dead-letters/{entry_id}/replay",
                        [("csrf_token", "forged-token")], token=False)
    assert forged.status_code == 400
    assert store.dlq_get([entry_id])[0] is not None and store.queue_depth() == 0
    accepted = admin.post(f"/dead-letters/{entry_id}/replay")
    assert accepted.status_code == 302
    assert store.dlq_get([entry_id])[0] is None and store.queue_depth() == 1


def test_a_read_only_key_looks_but_cannot_replay_or_purge(viewer: Browserless,
                                                          store: Store) -> None:
    ids = put_entries(store, [dead_letter_entry(i) for i in range(3)])
    table = viewer.get("/dead-letters")
    assert table.status_code == 200 and ids[0] in table.text
    assert "Replay selected" not in table.text and "read-only" in table.text
    assert viewer.post(f"/dead-letters/{ids[0]}/reveal").status_code == 200
    assert viewer.get("/dead-letters/replay?reason=rejected").status_code == 200  # the dry run
    refusals = [
        viewer.post(f"/dead-letters/{ids[0]}/replay"),
        viewer.post("/dead-letters/replay", {"reason": "rejected", "confirm": "replay"}),
        viewer.post("/dead-letters/purge", [("ids", ids[1]), ("expected", "1"), ("typed", "")]),
    ]
    assert [r.status_code for r in refusals] == [403, 403, 403]
    assert "read-only" in refusals[0].text
    assert store.dlq_depth() == 3 and store.queue_depth() == 0


# --- dead letters ---------------------------------------------------------------------
def _table_ids(html: str) -> list[str]:
    return re.findall(r'name="ids" value="([0-9a-f-]{36})"', html)


def _all_pages(client: Browserless, query: str) -> list[str]:
    seen: list[str] = []
    path: str | None = f"/dead-letters?{query}"
    for _ in range(100):
        assert path is not None
        page = client.get(path)
        assert page.status_code == 200, page.text[:500]
        seen += _table_ids(page.text)
        more = re.search(r'href="([^"]+)" rel="next"', page.text)
        path = more.group(1).replace("&amp;", "&") if more else None
        if path is None:
            return seen
    raise AssertionError("more than 100 pages")


@pytest.mark.parametrize("query, selector", [
    ("reason=rejected", dlq.Selector(reason="rejected")),
    ("status=503&type=PHOTO_DOWNLOADED_BY_USER",
     dlq.Selector(status=503, event_type="PHOTO_DOWNLOADED_BY_USER")),
    ("experience=other-show&reason=expired",
     dlq.Selector(experience="other-show", reason="expired")),
    ("search=EVT-1", dlq.Selector(search="evt-1")),
    ("", dlq.Selector()),
])
def test_the_table_filters_like_the_cli_and_pages_through_everything(
        admin: Browserless, store: Store, query: str, selector: dlq.Selector) -> None:
    put_entries(store, mixed_entries(130, time.time() - 1000))
    shown = _all_pages(admin, query + "&size=25")
    expected = selector.resolve(store)
    assert expected and shown == list(reversed(expected))  # newest first, none twice


def test_a_time_range_and_a_bad_filter(admin: Browserless, store: Store) -> None:
    start = time.time() - 3600
    ids = put_entries(store, mixed_entries(60, start))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 30))
    assert set(_all_pages(admin, f"since={since}")) == set(ids[30:])
    assert set(_all_pages(admin, "until=3590s")) == set(ids[:11])
    bad = admin.get("/dead-letters?status=abc&reason=lost&since=yesterday")
    assert bad.status_code == 400
    assert "must be an HTTP status" in bad.text and "must be one of rejected" in bad.text
    assert "neither a duration" in bad.text and 'aria-invalid="true"' in bad.text


def test_one_entry_is_masked_until_revealed_and_the_reveal_is_audited(
        admin: Browserless, store: Store) -> None:
    entry = dead_letter_entry(7, last_error='{"message": "bad email john.doe@example.com"}')
    entry["kind"], entry["experience"] = "user_analytics", None
    entry["body"] = {"userId": "u-7", "email": "john.doe@example.com", "phone": "+14155552671",
                     "feature": "f", "action": "a", "experienceId": "47Gop5",
                     "capturedAt": "2026-04-27T13:35:00.000Z"}
    [entry_id] = put_entries(store, [entry])
    masked = admin.get(f"/dead-letters/{entry_id}").text
    assert "john.doe@example.com" not in masked and "+14155552671" not in masked
    assert "j***@example.com" in masked and "+14*******71" in masked
    assert AuditLog(store).recent() == []
    revealed = admin.post(f"/dead-letters/{entry_id}/reveal").text
    assert "john.doe@example.com" in revealed and "+14155552671" in revealed
    [record] = AuditLog(store).recent()
    assert (record["who"], record["action"], record["count"]) == ("alice", "reveal", 1)
    assert entry_id in record["selection"]
    assert admin.get(f"/dead-letters/{uuid.uuid4()}").status_code == 404
    assert admin.get("/dead-letters/not-an-id").status_code == 404


def test_replaying_a_filter_shows_a_dry_run_then_runs_as_a_job(admin: Browserless,
                                                                store: Store) -> None:
    ids = put_entries(store, mixed_entries(30, time.time() - 100))
    rejected = dlq.Selector(reason="rejected").resolve(store)
    # One was delivered meanwhile: the dry run says it will be skipped.
    store_outcomes(store, [Finish("f:1", rejected[0], "delivered", dedupe_member(rejected[0]))])
    dry = admin.get("/dead-letters/replay?reason=rejected")
    assert re.search(r'data-figure="would-replay">9<', dry.text)
    assert re.search(r'data-figure="would-skip">1<', dry.text)
    assert store.dlq_depth() == 30
    started = admin.post("/dead-letters/replay", {"reason": "rejected", "confirm": "replay"})
    assert started.status_code == 302
    job_path = started.headers["Location"]

    def finished() -> str | None:
        page = admin.get(job_path).text
        return page if "DONE" in page else None

    page = wait_until(finished, 30, 0.1, "the replay job")
    assert re.search(r'data-figure="job-replayed">9<', page)
    assert store.queue_depth() == 9 and store.dlq_depth() == 20
    assert not set(rejected) & set(dlq.Selector().resolve(store))
    actions = [(r["action"], r["count"]) for r in AuditLog(store).recent()]
    assert actions == [("replay", 9), ("replay started", 10)]
    assert set(ids) - set(rejected) == set(dlq.Selector().resolve(store))


def test_replaying_ticked_entries_and_starting_a_job_again(admin: Browserless,
                                                           store: Store) -> None:
    ids = put_entries(store, [dead_letter_entry(i) for i in range(5)])
    confirm = admin.post("/dead-letters/replay", [("ids", i) for i in ids[:2]])
    assert confirm.status_code == 200 and "2 selected" in confirm.text
    started = admin.post("/dead-letters/replay", [("ids", i) for i in ids[:2]]
                         + [("confirm", "replay")])
    job_path = started.headers["Location"]
    wait_until(lambda: "DONE" in admin.get(job_path).text, 30, 0.1, "the job")
    assert store.queue_depth() == 2
    # Starting a job again resolves its selection again: here, nothing is left.
    again = admin.post(job_path + "/again")
    assert again.status_code == 302 and again.headers["Location"] != job_path
    page = wait_until(lambda: (p := admin.get(again.headers["Location"]).text) and "DONE" in p
                      and p, 30, 0.1, "the second job")
    assert re.search(r'data-figure="job-replayed">0<', page) and "an earlier replay" in page
    assert store.queue_depth() == 2
    bad = admin.post("/dead-letters/replay", [("ids", "x' or 1=1")])
    assert bad.status_code == 400 and "not an entry id" in bad.text


def test_purge_needs_the_count_typed_back(admin: Browserless, store: Store) -> None:
    ids = put_entries(store, mixed_entries(12, time.time() - 100))
    page = admin.get("/dead-letters/purge?reason=exhausted")
    assert 'data-figure="would-purge">4<' in page.text and "purge 4" in page.text
    form = {"reason": "exhausted", "expected": "4"}
    wrong = admin.post("/dead-letters/purge", {**form, "typed": "yes"})
    assert wrong.status_code == 400 and store.dlq_depth() == 12
    stale = admin.post("/dead-letters/purge", {**form, "expected": "3", "typed": "purge 3"})
    assert stale.status_code == 400 and "now matches 4" in stale.text
    done = admin.post("/dead-letters/purge", {**form, "typed": "Purge 4"})
    assert done.status_code == 302 and store.dlq_depth() == 8
    single = admin.post("/dead-letters/purge", [("ids", ids[0]), ("expected", "1"),
                                                ("typed", "")])
    assert single.status_code == 302 and store.dlq_depth() == 7
    assert [(r["action"], r["count"]) for r in AuditLog(store).recent()] == [
        ("purge", 1), ("purge", 4)]


def test_export_streams_the_filter_as_jsonl_and_is_audited(admin: Browserless,
                                                           store: Store) -> None:
    put_entries(store, mixed_entries(9, time.time() - 100))
    response = admin.get("/dead-letters/export.jsonl?reason=expired")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["Content-Disposition"]
    lines = response.text.splitlines()
    assert [json.loads(line)["id"] for line in lines] == \
        dlq.Selector(reason="expired").resolve(store)
    entries, errors = dlq.parse_import(lines)  # what `dlq import` takes back
    assert errors == [] and len(entries) == 3
    assert AuditLog(store).recent()[0]["action"] == "export"


# --- find an event --------------------------------------------------------------------
def test_find_an_event_wherever_it_is(admin: Browserless, store: Store) -> None:
    queued = event(1)
    store.enqueue([encode_event(event(2)), encode_event(queued), encode_event(event(3))])  # type: ignore[arg-type]
    retrying = event(4, attempts=3)
    store_outcomes(store, [Finish("f:r", retrying["id"], "retried",
                                  encode_event(retrying), 120.0)])  # type: ignore[arg-type]
    delivered = event(5)
    store_outcomes(store, [Finish("f:d", delivered["id"], "delivered",
                                  dedupe_member(delivered["id"]))])
    held = event(6)
    store.client.zadd(store.workers_key, {"test-worker": time.time()})
    store.client.hset(store.worker_info_prefix + "test-worker",
                      mapping={"host": "web-1", "pid": "4242"})
    store.client.hset(held_key(store), "b1:0", encode_event(held))  # type: ignore[arg-type]
    [dead] = put_entries(store, [dead_letter_entry(8)])

    def states(query: str, client: str = "") -> str:
        page = admin.get(f"/find?q={query}&client={client}")
        assert page.status_code == 200
        return " ".join(re.findall(r'<strong class="state">([A-Z -]+)</strong>', page.text))

    assert states(queued["id"]) == "QUEUED"
    assert "1 events ahead" in admin.get(f"/find?q={queued['id']}").text
    assert states(retrying["id"]) == "WAITING TO RETRY"
    assert "attempt 3" in admin.get(f"/find?q={retrying['id']}").text
    assert states(delivered["id"]) == "DELIVERED"
    span = re.search(r"between (\S+ \S+) UTC and (\S+ \S+) UTC",
                     admin.get(f"/find?q={delivered['id']}").text)
    assert span, "the delivery is dated by its dedupe set"
    began, ended = (calendar.timegm(time.strptime(t, "%Y-%m-%d %H:%M:%S"))
                    for t in span.groups())
    assert began <= time.time() < ended
    assert states(held["id"]) == "HELD BY A WORKER"
    assert "web-1, pid 4242" in admin.get(f"/find?q={held['id']}").text
    assert Gate(store.client, store.namespace).admit_many(
        [held["id"]], "test-worker|tok", 30)[0].state == "claimed"
    assert states(held["id"]) == "HELD BY A WORKER BEING SENT"
    assert states(dead) == "DEAD-LETTERED"
    assert states(str(uuid.uuid4())) == "UNKNOWN"
    # An idempotency key, given to capture() or sent to the relay by a client.
    keyed = event(9, id=event_id_for("order-77"))
    relayed = event(10, id=event_id_for("relay:shop:order-77"))
    store.enqueue([encode_event(keyed), encode_event(relayed)])  # type: ignore[arg-type]
    assert states("order-77") == "QUEUED"
    assert states("order-77", "shop") == "QUEUED"
    assert relayed["id"] in admin.get("/find?q=order-77&client=shop").text
    assert admin.get("/find?q=x&client=../etc").status_code == 400


# --- limits on what the console keeps in Redis ------------------------------------------
def test_the_audit_log_is_capped_and_jobs_expire(admin: Browserless, store: Store) -> None:
    from forwarder import constants as C
    from forwarder.console.access import Operator

    audit = AuditLog(store)
    who = Operator("alice", "admin")
    with store.client.pipeline() as pipe:
        for i in range(C.CONSOLE_AUDIT_MAX + 5):
            pipe.lpush(audit.key, json.dumps({"at": time.time(), "who": "x", "role": "admin",
                                              "action": "purge", "selection": str(i),
                                              "count": 1, "outcome": ""}))
        pipe.execute()
    audit.record(who, "purge", "last", 1)
    assert audit.size() == C.CONSOLE_AUDIT_MAX and audit.recent()[0]["selection"] == "last"
    store.client.lpush(audit.key, "not json")
    assert audit.recent()[0]["action"] == "unreadable"
    [entry_id] = put_entries(store, [dead_letter_entry(1)])
    started = admin.post("/dead-letters/replay", [("ids", entry_id), ("confirm", "replay")])
    job_id = started.headers["Location"].rsplit("/", 1)[1]
    ttl = store.client.ttl(C.key(store.namespace, C.CONSOLE_JOB_PREFIX) + job_id)
    assert 0 < ttl <= C.CONSOLE_JOB_TTL_SECONDS
    assert store.client.ttl(C.key(store.namespace, C.CONSOLE_JOBS)) > 0


# --- the command --------------------------------------------------------------------------
def _console_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace, **extra)
    return env


def test_the_command_refuses_to_start_without_keys_or_on_the_relays_address(
        redis_url: str, namespace: str) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forwarder", "console", *args],
                              env=_console_env(redis_url, namespace, **env),
                              capture_output=True, text=True, timeout=60)

    no_keys = run()
    assert no_keys.returncode == 2 and "FORWARDER_CONSOLE_KEYS" in no_keys.stderr
    short = run(FORWARDER_CONSOLE_KEYS="alice:short")
    assert short.returncode == 2 and "key #1 is shorter than 16" in short.stderr
    assert "short" not in short.stderr.replace("shorter", "")
    relay = run("--bind", "127.0.0.1:8080", **KEYS_ENV)
    assert relay.returncode == 2 and "relay's address" in relay.stderr
    bad = run("--bind", "nowhere", **KEYS_ENV)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_the_command_serves_the_console_and_stops_on_sigterm(redis_url: str,
                                                             namespace: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "forwarder", "console", "--bind", f"127.0.0.1:{port}"],
        env=_console_env(redis_url, namespace, **KEYS_ENV), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_until(healthy, 30, 0.1, "the console to answer")
        client = Browserless(f"http://127.0.0.1:{port}")
        assert client.login(ADMIN_KEY).status_code == 302
        assert "Overview" in client.get("/").text
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert ADMIN_KEY not in output and READONLY_KEY not in output


def test_the_cli_takes_the_consoles_search_and_reads_only_its_limit(
        redis_url: str, namespace: str, store: Store) -> None:
    from click.testing import CliRunner

    from forwarder.cli import cli

    ids = put_entries(store, mixed_entries(30, time.time() - 100))

    def listed(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, ["dlq", "list", "--json", *args], env={
            "REDIS_URL": redis_url, "FORWARDER_NAMESPACE": namespace})
        assert result.exit_code == 0, result.output
        return [json.loads(line)["id"] for line in result.output.splitlines()]

    assert listed("--limit", "4") == ids[:4]  # oldest first, as before
    assert listed("--search", "EVT-2") == [ids[2], *ids[20:30]]
    assert listed("--reason", "expired", "--limit", "2") == [ids[2], ids[5]]


# --- the parts, unit by unit ---------------------------------------------------------------
def test_keys_are_parsed_like_the_relays_and_roles_told_apart() -> None:
    keys = ConsoleKeys.from_env(KEYS_ENV)
    assert keys.operator(ADMIN_KEY) == keys.operator(f" {ADMIN_KEY}\n")
    alice, bob = keys.operator(ADMIN_KEY), keys.operator(READONLY_KEY)
    assert alice is not None and (alice.name, alice.can_change) == ("alice", True)
    assert bob is not None and (bob.name, bob.can_change) == ("bob", False)
    assert keys.operator("") is None and keys.operator(ADMIN_KEY[:-1]) is None
    with pytest.raises(ValueError, match="FORWARDER_CONSOLE_READONLY_KEYS: key #1"):
        ConsoleKeys.from_env({**KEYS_ENV, "FORWARDER_CONSOLE_READONLY_KEYS": "x:tiny"})


def test_only_local_paths_are_followed_after_login() -> None:
    assert safe_next("/dead-letters?reason=rejected") == "/dead-letters?reason=rejected"
    for hostile in (None, "", "https://evil.example", "//evil.example", "/\\evil", "/a\nb"):
        assert safe_next(hostile) == "/"


def test_filters_name_the_field_and_the_rule() -> None:
    flt = parse_filter({"reason": "rejected", "status": " 400 ", "type": "PHOTO_VIEWED_BY_USER",
                        "experience": "fifa-cwc-2025", "since": "2h", "search": "evt-4"})
    assert flt.errors == {} and flt.selector.status == 400 and flt.selector.search == "evt-4"
    assert flt.selector.since is not None and time.time() - flt.selector.since == \
        pytest.approx(7200, abs=5)
    assert flt.describe().startswith("reason=rejected, status=400")
    bad = parse_filter({"status": "600", "type": "a b", "experience": "..", "until": "then",
                        "search": "x" * 200, "reason": "\x00"})
    assert set(bad.errors) == {"status", "type", "experience", "until", "search", "reason"}
    assert parse_filter({}).describe() == "every entry"
    assert parse_ids(["not-an-id"])[1] is not None
    assert parse_ids([str(uuid.uuid4())] * 3)[0] != [] and len(parse_ids([""] * 2)[0]) == 0


def test_selector_pages_cover_every_match_once_within_their_scan_limit(store: Store) -> None:
    entries = mixed_entries(450, time.time() - 1000)
    put_entries(store, entries)
    selector = dlq.Selector(status=503, experience="other-show")
    seen: list[str] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        page = selector.page(store, start, size=7, scan_limit=50)
        assert page.scanned <= 50 + dlq.PAGE_CHUNK
        seen += [e["id"] for e in page.entries]
        start = page.next_start
        pages += 1
    assert seen == list(reversed(selector.resolve(store))) and pages > 5
    plain = dlq.Selector(reason="expired").page(store, 10, size=20)
    assert plain.exact and plain.candidates == 150 and len(plain.entries) == 20
    assert [e["id"] for e in plain.entries] == \
        list(reversed(dlq.Selector(reason="expired").resolve(store)))[10:30]


def test_phones_and_emails_are_masked_for_display() -> None:
    shown = mask_personal('{"phone": "+14155552671", "email": "ann@example.com", '
                          '"eventValue": "order+1234567890"}')
    assert '"+14*******71"' in shown and "a***@example.com" in shown
    assert "order+1234567890" in shown


def test_times_and_the_chart_read_without_colour() -> None:
    assert duration(42) == "42 s" and duration(3 * 3600 + 300) == "3 h 5 min"
    assert ago(1000.0, 1090.0) == "1 min ago" and ago(1100.0, 1090.0) == "in 10 s"
    minute = int(time.time() // 60)
    chart = build([(minute - 2 + i, {"delivered": 10 * i, "retried": 3, "dead_lettered": 0})
                   for i in range(3)])
    assert chart.peak == 20 and [line.total for line in chart.lines] == [30, 9, 0]
    assert {line.dash for line in chart.lines} == {"", "8 4", "2 3"}
    assert len({line.marker for line in chart.lines}) == 3
    assert event_id_of(" 0B8E7A52-0C1E-4D4F-9A57-1F7A3C2B9D10 ")[0] == \
        "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10"
