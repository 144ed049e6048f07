"""The HTTP relay, run for real: `distinct-forwarder relay` (gunicorn) on a free port.

Requests go over loopback HTTP; events go through the shared Redis to a real
worker and on to the sandbox Distinct.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.processes import stop_process
from forwarder.relay import KeyRing, parse_body, route_of
from forwarder.store import Store, connect
from tests.conftest import wait_until

KEY = "relay-key-0f3c9b1e7a2d4c58"
OLD_KEY = "relay-key-rotating-out-99aa77"
CAPTURE = "/api/v1/analytics/capture/fifa-cwc-2025"
USER = "/api/v1/user/analytics"
# The seed's own examples, from shared/distinct-api.md, byte for byte.
SEED_VISIT = (b'{"type": "REGISTRATION_PAGE_VISIT", "eventValue": "evt-42",\n'
              b' "recordCapturedAt": "2026-11-28T10:15:00.000Z",\n'
              b' "sessionId": "s-9f2c", "registrationPageValue": "reg-7"}')
SEED_VIEW = (b'{"type": "PHOTO_VIEWED_BY_USER", "eventValue": "evt-42",\n'
             b' "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": "john.doe@example.com"}')
SEED_USER = (b'{"userId": "u-1", "feature": "registration_email", "action": "opened",'
             b' "experienceId": "47Gop5", "capturedAt": "2026-04-27T13:35:00Z"}')
OK_CAPTURE = b'{"statusCode":200,"message":"Analytics captured successfully.","data":null}'
OK_USER = b'{"statusCode":200,"message":"User analytics added successfully.","data":null}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayProcess:
    """`distinct-forwarder relay` as a subprocess on a free port; stopped by PID."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "relay", "--bind", f"127.0.0.1:{self.port}",
             *args], env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> RelayProcess:
        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"relay exited early:\n{self.log()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, timeout, 0.1, "relay /healthz")
        return self

    def stop(self) -> int:
        code = stop_process(self.process, 30)
        self._log.close()
        return code


def relay_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FORWARDER_", "DISTINCT_", "PROMETHEUS_"))}
    env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace,
               FORWARDER_RELAY_KEYS=f"{KEY}, {OLD_KEY}", **extra)
    # Keep any spool out of the user's cache directory.
    env.setdefault("FORWARDER_SPOOL_PATH", "off")
    return env


@pytest.fixture(scope="module")
def relay_ns(redis_url: str) -> Iterator[str]:
    ns = f"test-relay-{uuid.uuid4().hex[:8]}"
    yield ns
    Store(connect(redis_url), ns).wipe()


@pytest.fixture(scope="module")
def relay(redis_url: str, relay_ns: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    proc = RelayProcess(relay_env(redis_url, relay_ns), log).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def post(relay: RelayProcess, path: str, body: bytes, key: str | None = KEY,
         content_type: str | None = "application/json", **headers: str) -> requests.Response:
    sent = dict(headers)
    if key is not None:
        sent["x-distinct-api-key"] = key
    if content_type is not None:
        sent["Content-Type"] = content_type
    return requests.post(relay.url + path, data=body, headers=sent, timeout=10)


def envelope(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert payload["statusCode"] == status and isinstance(payload["message"], str)
    return payload


# --- the main promise: a backend switches by changing its base URL -----------------
def test_seed_examples_get_distincts_envelope_and_are_delivered(
        relay, relay_ns, redis_url, sandbox, start_worker):
    store = Store(connect(redis_url), relay_ns)
    before = store.queue_depth()
    answers = [post(relay, CAPTURE, SEED_VISIT), post(relay, CAPTURE, SEED_VIEW),
               post(relay, USER, SEED_USER, key=OLD_KEY)]
    assert [r.content for r in answers] == [OK_CAPTURE, OK_CAPTURE, OK_USER]
    ids = [r.headers["X-Forwarder-Event-Id"] for r in answers]
    assert len({str(uuid.UUID(i)) for i in ids}) == 3
    assert store.queue_depth() == before + 3  # in Redis when the 200 came back
    start_worker(env={"FORWARDER_NAMESPACE": relay_ns})
    wait_until(lambda: len(sandbox.events) == 3, message="three deliveries")
    got = sorted((e["path"], json.dumps(e["body"], sort_keys=True)) for e in sandbox.events)
    want = sorted([(CAPTURE, json.dumps(json.loads(SEED_VISIT), sort_keys=True)),
                   (CAPTURE, json.dumps(json.loads(SEED_VIEW), sort_keys=True)),
                   (USER, json.dumps({**json.loads(SEED_USER),
                                      "capturedAt": "2026-04-27T13:35:00.000Z"},
                                     sort_keys=True))])
    assert got == want


def test_idempotency_key_gives_the_same_event_id(relay):
    first = post(relay, CAPTURE, SEED_VIEW, **{"Idempotency-Key": "order-17"})
    again = post(relay, CAPTURE, SEED_VIEW, **{"Idempotency-Key": "order-17"})
    other = post(relay, CAPTURE, SEED_VIEW, **{"Idempotency-Key": "order-18"})
    assert first.headers["X-Forwarder-Event-Id"] == again.headers["X-Forwarder-Event-Id"]
    assert other.headers["X-Forwarder-Event-Id"] != first.headers["X-Forwarder-Event-Id"]
    bad = post(relay, CAPTURE, SEED_VIEW, **{"Idempotency-Key": "x" * 300})
    assert "Idempotency-Key" in envelope(bad, 400)["data"]


# --- every error status ------------------------------------------------------------
@pytest.mark.parametrize("key", [None, "", "relay-key-0f3c9b1e7a2d4c5", KEY + "x", "nope"])
def test_missing_or_unknown_key_is_401(relay, key):
    payload = envelope(post(relay, CAPTURE, SEED_VIEW, key=key), 401)
    assert "x-distinct-api-key" in payload["message"]


@pytest.mark.parametrize(("body", "field", "words"), [
    (b'{"type": "PHOTO_VIEWED_BY_USER", "eventValue": "e", "recordCapturedAt": '
     b'"2026-11-28T10:15:00Z", "email": "not-an-email"}', "email", "email"),
    (b'{"type": "PHOTO_VIEWED_BY_USER", "eventValue": "e", "recordCapturedAt": '
     b'"2026-11-28T10:15:00"}', "recordCapturedAt", "timezone"),
    (b"[1, 2]", "_event", "JSON object"),
    (b"", "_body", "Required"),
    (b"{not json", "_body", "Not valid JSON"),
    (b'{"type": "caf\xe9"}', "_body", "UTF-8"),
    (b'{"type": "A", "type": "B"}', "_body", "Duplicate key 'type'"),
    (b'{"eventValue": NaN}', "_body", "NaN"),
    (b'{"eventValue": -Infinity}', "_body", "Infinity"),
    (b'{"eventValue": 1e400}', "_body", "overflows a double"),
    (b'{"eventValue": 123456789012345678901234567890}', "_body", "outside +-(2**53-1)"),
    (b"[" * 10_000 + b"]" * 10_000, "_body", "Nested deeper than 32"),  # under 64 KiB
])
def test_bad_bodies_are_400_naming_the_field(relay, body, field, words):
    payload = envelope(post(relay, CAPTURE, body), 400)
    assert field in payload["data"], payload
    assert words in " ".join(payload["data"][field]), payload


@pytest.mark.parametrize("experience", ["bad%20slug", "%2E%2E", "x" * 129, "caf%C3%A9"])
def test_experience_from_the_path_must_be_a_slug(relay, experience):
    payload = envelope(post(relay, f"/api/v1/analytics/capture/{experience}", SEED_VIEW), 400)
    assert payload["data"] == {"experience": [
        "Must match [A-Za-z0-9._-]{1,128} and not be '.' or '..'."]}


def _read_response(sock: socket.socket) -> str:
    """One whole HTTP response from a raw socket: headers, then Content-Length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_body_over_64_kib_is_413_before_and_while_reading(relay):
    # Declared too big: answered from the header alone, nothing of the body sent.
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(f"POST {CAPTURE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     f"\r\nx-distinct-api-key: {KEY}\r\nContent-Length: 104857600\r\n\r\n"
                     .encode())
        head = _read_response(sock)
    assert head.startswith("HTTP/1.1 413"), head
    # Chunked, so no Content-Length: the read itself stops at the cap.
    chunks = (b"x" * 8192 for _ in range(10))
    big = requests.post(relay.url + CAPTURE, data=chunks, timeout=10, headers={
        "Content-Type": "application/json", "x-distinct-api-key": KEY})
    envelope(big, 413)
    exactly = b'{"eventValue": "' + b"x" * (64 * 1024 - 18) + b'"}'
    assert len(exactly) == 64 * 1024
    assert "eventValue" in envelope(post(relay, CAPTURE, exactly), 400)["data"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1"])
def test_wrong_content_type_is_415(relay, content_type):
    envelope(post(relay, USER, SEED_USER, content_type=content_type), 415)


def test_charset_utf8_is_accepted(relay):
    ok = post(relay, USER, SEED_USER, content_type="application/json; charset=UTF-8")
    assert ok.content == OK_USER


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", CAPTURE, "POST"), ("PUT", USER, "POST"), ("DELETE", CAPTURE, "POST"),
    ("POST", "/healthz", "GET, HEAD"), ("POST", "/metrics", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(relay, method, path, allow):
    response = requests.request(method, relay.url + path, timeout=10,
                                headers={"x-distinct-api-key": KEY})
    envelope(response, 405)
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize("path", ["/", "/api/v1/analytics/capture/", "/api/v1/user/analytics/",
                                  "/api/v1/analytics/capture/a/b", "/api/v2/user/analytics"])
def test_unknown_path_is_404(relay, path):
    envelope(post(relay, path, SEED_VIEW), 404)


# --- operations endpoints ----------------------------------------------------------
def test_health_ready_openapi_and_metrics(relay):
    assert requests.get(relay.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(relay.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"
    doc = requests.get(relay.url + "/openapi.json", timeout=5).json()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) >= {"/api/v1/analytics/capture/{experienceValue}", USER}
    post(relay, "/nowhere", b"{}")
    post(relay, CAPTURE, SEED_VIEW, key="wrong-key-abcdef0123456789")
    assert post(relay, CAPTURE, SEED_VIEW).status_code == 200
    # Two workers answer on separate connections; either one reports the sum of both
    # (prometheus-client's multiprocess files), so one scrape sees every count.
    text = requests.get(relay.url + "/metrics", timeout=5).text
    assert ('distinct_forwarder_relay_requests_total{path="/api/v1/analytics/capture/'
            '{experienceValue}",status="401"}') in text
    assert 'distinct_forwarder_relay_requests_total{path="other",status="404"}' in text
    assert 'distinct_forwarder_relay_events_total{kind="capture"}' in text


def test_logs_never_show_keys_or_emails(relay):
    post(relay, CAPTURE, SEED_VIEW, key="wrong-key-abcdef0123456789")
    log = relay.log()
    assert "Listening at" in log
    for secret in (KEY, OLD_KEY, "wrong-key-abcdef0123456789", "john.doe@example.com"):
        assert secret not in log


def test_unreachable_redis_and_no_spool_is_503_and_not_ready(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = relay_env(dead, "test-relay-dead", FORWARDER_SPOOL_PATH="off")
    proc = RelayProcess(env, tmp_path / "dead.log").wait_ready()
    try:
        answer = post(proc, CAPTURE, SEED_VIEW)
        payload = envelope(answer, 503)
        assert payload["data"] is None and answer.headers["Retry-After"] == "1"
        assert "X-Forwarder-Event-Id" not in answer.headers
        ready = requests.get(proc.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        # Validation still comes first: a bad event is a 400, whatever Redis does.
        envelope(post(proc, CAPTURE, b'{"type": "X"}'), 400)
    finally:
        assert proc.stop() == 0
    assert "event not accepted: EnqueueError" in proc.log()


def test_unreachable_redis_with_a_spool_is_200_and_ready(tmp_path):
    pytest.importorskip("forwarder.spool", reason="the producer has no local spool")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    spool = tmp_path / "spool" / "relay.db"
    env = relay_env(dead, "test-relay-spool", FORWARDER_SPOOL_PATH=str(spool))
    proc = RelayProcess(env, tmp_path / "spool.log").wait_ready()
    try:
        ready = requests.get(proc.url + "/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["spool"] == "writable" and ready.json()["redis"] != "ok"
        assert post(proc, CAPTURE, SEED_VIEW).content == OK_CAPTURE
        assert spool.exists()
    finally:
        assert proc.stop() == 0


def test_full_spool_is_503_and_not_ready(tmp_path):
    pytest.importorskip("forwarder.spool", reason="the producer has no local spool")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = relay_env(dead, "test-relay-full", FORWARDER_SPOOL_PATH=str(tmp_path / "s.db"),
                    FORWARDER_SPOOL_MAX_MB="0.25")
    proc = RelayProcess(env, tmp_path / "full.log").wait_ready()
    try:
        with requests.Session() as session:
            statuses = []
            for _ in range(2000):  # 256 KiB of spool fills in a few hundred events
                answer = session.post(proc.url + CAPTURE, data=SEED_VIEW, timeout=10, headers={
                    "Content-Type": "application/json", "x-distinct-api-key": KEY})
                statuses.append(answer.status_code)
                if answer.status_code != 200:
                    break
        assert statuses[0] == 200 and set(statuses[:-1]) == {200}, statuses[-3:]
        assert envelope(answer, 503)["data"] is None
        ready = requests.get(proc.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["spool"] == "not writable"
    finally:
        assert proc.stop() == 0
    assert "SpoolFull" in proc.log()


def test_malformed_chunked_body_is_400(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(f"POST {CAPTURE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     f"\r\nx-distinct-api-key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "zz\r\n{}\r\n0\r\n\r\n".encode())
        head = _read_response(sock)
    assert head.startswith("HTTP/1.1 400"), head
    assert '"statusCode":400' in head and "Incomplete or malformed body" in head, head


@pytest.mark.parametrize(("keys", "words"), [
    (None, "FORWARDER_RELAY_KEYS: set at least one key"),
    ("short", "key #2 is shorter than 16"),
])
def test_relay_refuses_to_start_without_good_keys(tmp_path, redis_url, keys, words):
    env = relay_env(redis_url, "test-relay-nokeys")
    env.pop("FORWARDER_RELAY_KEYS")
    if keys:
        env["FORWARDER_RELAY_KEYS"] = f"{KEY},{keys}"
    done = subprocess.run([sys.executable, "-m", "forwarder", "relay", "--bind",
                           f"127.0.0.1:{free_port()}"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert words in done.stderr
    assert KEY not in done.stderr + done.stdout


# --- pure logic --------------------------------------------------------------------
def test_keyring_accepts_each_key_and_nothing_else():
    ring = KeyRing(["a" * 16, "b" * 20])
    assert ring.accepts(b"a" * 16) and ring.accepts(b"b" * 20)
    assert not ring.accepts(None) and not ring.accepts(b"") and not ring.accepts(b"a" * 17)


def test_parse_body_and_routes():
    assert parse_body(b' {"a": [1, 2.5, null]} ') == {"a": [1, 2.5, None]}
    assert route_of(CAPTURE) == "capture" and route_of(USER) == "user_analytics"
    assert route_of("/api/v1/analytics/capture/") == "other"
