"""Hostile input at every boundary: each finding of the security review as a test.

The rows of the review (the relay under slow clients is tests/test_hostile_relay.py):
2-3 `dlq import`; 4 what a worker takes from Redis; 5-6 secrets and masking;
7 the spool file; 8 deployment defaults; 9 dependency bounds; 10 idempotency
keys per relay client. Then hypothesis feeds arbitrary bytes and JSON into the
relay, `dlq import`, queue items and the spool file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder import Forwarder
from forwarder import dlq as dlq_tools
from forwarder.cli import cli
from forwarder.config import Settings
from forwarder.errors import ConfigError
from forwarder.logs import JsonFormatter, MaskingFormatter
from forwarder.masking import fingerprint, mask_email
from forwarder.messages import MalformedEvent, parse_event
from forwarder.redis_server import free_port
from forwarder.relay import Relay
from forwarder.spool import Spool
from forwarder.store import Store
from forwarder.validation import validate_event
from tests.conftest import API_KEY, capture_event
from tests.helpers import add_dead_letter, dead_letter_entry, item

ROOT = Path(__file__).resolve().parent.parent


def _import(redis_url: str, namespace: str, text: str, tmp_path: Path):
    path = tmp_path / "import.jsonl"
    path.write_text(text)
    return CliRunner().invoke(cli, ["--redis-url", redis_url, "--namespace", namespace,
                                    "dlq", "import", str(path)])


# --- rows 2 and 3: dlq import ---------------------------------------------------------------
def test_an_invalid_line_changes_nothing_not_even_the_entry_it_would_replace(
        store, redis_url, namespace, tmp_path):
    victim = dead_letter_entry(1)
    add_dead_letter(store, victim)
    before = store.dlq_get([victim["id"]])
    line = json.dumps({**victim, "dead_at": "yesterday", "attempts": 9})
    result = _import(redis_url, namespace, line + "\n", tmp_path)
    assert result.exit_code == 2
    assert "line 1: dead_at: must be a time in epoch seconds" in result.output
    assert store.dlq_get([victim["id"]]) == before  # victim-1 is still there, untouched


@pytest.mark.parametrize(("change", "problem"), [
    ({"body": {"type": "PHOTO_VIEWED_BY_USER", "anything": 1}}, "body.anything"),
    ({"body": {**capture_event(1), "recordCapturedAt": "2026-11-28T10:15:00Z",
               "eventValue": 10**30}}, "not strict JSON: Integer 1000"),
    ({"reason": "pwned"}, "reason: must be one of"),
    ({"id": "../../etc"}, "id: must be an event id"),
    ({"dead_at": time.time() + 10 * 86400}, "dead_at: must be a time"),
    ({"kind": "other"}, "kind: must be capture or user_analytics"),
    ({"experience": "a/b"}, "experience: Must match"),
    ({"attempts": -1}, "attempts: must be a whole number"),
    ({"last_status": 999}, "last_status: must be an HTTP status"),
    ({"injected": True}, "injected: not a field"),
])
def test_import_validates_every_field_like_capture(store, redis_url, namespace, tmp_path,
                                                   change, problem):
    good = json.dumps(dead_letter_entry(1))
    bad = json.dumps({**dead_letter_entry(2), **change})
    result = _import(redis_url, namespace, f"{good}\n{bad}\n", tmp_path)
    assert result.exit_code == 2, result.output
    assert f"line 2: {problem}" in result.output, result.output
    assert "line 1:" not in result.output  # the good line is fine
    assert store.dlq_depth() == 0  # all or nothing
    assert not list(store.client.scan_iter(match=f"{namespace}:dlq:reason:pwned"))


def test_a_valid_file_replaces_existing_entries_in_one_step(store, redis_url, namespace,
                                                            tmp_path):
    entry = dead_letter_entry(1, reason="exhausted")
    add_dead_letter(store, entry)
    result = _import(redis_url, namespace,
                     json.dumps({**entry, "reason": "rejected"}) + "\n", tmp_path)
    assert result.exit_code == 0, result.output
    assert store.dlq_depth_by_reason() == {"rejected": 1}


# --- row 4: what a worker takes from Redis (a real worker process) -----------------------------
def test_a_worker_dead_letters_garbage_once_and_posts_only_valid_events(
        settings, sandbox, start_worker, store):
    garbage = [b"\xff\xfe", b"[]", json.dumps({"type": "X", "anything": 1}).encode(),
               item(1, attempts="abc").encode(), b'{"id": ' + b"[" * 3000 + b"]" * 3000 + b"}",
               item(2, body={"type": "X", "anything": "..."}).encode()]
    store.enqueue([*garbage, item(3)])
    start_worker()
    from tests.conftest import wait_until
    wait_until(lambda: store.dlq_depth() == len(garbage) and len(sandbox.events) == 1,
               message="settled")
    time.sleep(2)  # nothing comes back to be tried again
    assert [e["body"]["eventValue"] for e in sandbox.events] == ["evt-3"]
    assert store.dlq_depth_by_reason() == {"malformed": len(garbage)}
    assert store.retry_depth() == 0 and store.queue_depth() == 0


# --- rows 5 and 6: secrets ---------------------------------------------------------------------
def test_a_file_mounted_key_with_a_newline_is_stripped_and_control_characters_refused():
    assert Settings.from_env({"DISTINCT_API_KEY": "dk_live_abc123\n"}).api_key == "dk_live_abc123"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DISTINCT_API_KEY": "dk_live_a\nInjected: header"})
    assert "DISTINCT_API_KEY: must be printable ASCII" in str(info.value)
    assert "dk_live" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FORWARDER_RELAY_KEYS": "good-key-0123456789,bad\x01key-0123456789"})
    assert "key #2 must be printable ASCII" in str(info.value) and "bad" not in str(info.value)


def test_an_answer_echoing_the_key_never_reaches_the_dlq_or_logs(settings, start_worker, store,
                                                                 tmp_path):
    import http.server
    import threading

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = f"bad request; you sent {dict(self.headers)}".encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = start_worker(env={"DISTINCT_API_URL": f"http://127.0.0.1:{server.server_port}"})
        Forwarder(settings=settings).capture(capture_event(1))
        from tests.conftest import wait_until
        wait_until(lambda: store.dlq_depth() == 1, message="dead letter")
        (entry,) = [e for e in store.dlq_get(store.dlq_ids()) if e]
        assert "bad request; you sent" in entry["last_error"]
        assert API_KEY not in json.dumps(entry) and fingerprint(API_KEY) in entry["last_error"]
        assert API_KEY not in worker.log()
    finally:
        server.shutdown()


def test_config_shows_urls_masked_and_keys_by_fingerprint():
    env = {"DISTINCT_API_KEY": "dk_live_0123456789", "FORWARDER_RELAY_KEYS":
           "shop:relay-key-aaaaaaaaaaaa,relay-key-bbbbbbbbbbbb",
           "DISTINCT_API_URL": "https://user:hunter2@api.distinct.so",
           "REDIS_URL": "redis://:pw123456@h:6379/0"}
    result = CliRunner().invoke(cli, ["config", "--json"], env=env)
    assert result.exit_code == 2  # a URL with a password is refused, and said so masked
    assert "hunter2" not in result.output and "https://user:***@api.distinct.so" in result.output
    env["DISTINCT_API_URL"] = "https://api.distinct.so"
    shown = json.loads(CliRunner().invoke(cli, ["config", "--json"], env=env).output)
    text = json.dumps(shown)
    for secret in ("dk_live_0123456789", "aaaaaaaaaaaa", "bbbbbbbbbbbb", "pw123456"):
        assert secret not in text, secret
    assert shown["api_key"] == fingerprint("dk_live_0123456789")
    assert shown["relay_keys"][0].startswith("shop=sha256:")


ADDRESSES = ["john.doe@example.com", "jöhn.doe@example.com", "a!b#c@example.com",
             "jd@exämple.com", '"john doe"@example.com', "x+tag@sub.example.co.uk"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_email_masking_by_parsing_in_text_json_and_tracebacks(address):
    local = address.rpartition("@")[0].strip('"')
    assert local not in mask_email(f"to {address}, then")
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "sent to %s", (address,), None)
    try:
        raise ValueError(f"refused {address}")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    record.fields = {"who": [address]}
    for formatter in (MaskingFormatter(None), JsonFormatter()):
        out = formatter.format(record)
        assert local not in out and local.encode("unicode_escape").decode() not in out, out
        assert "***@" in out


def test_logs_never_carry_a_known_secret():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter(None, ["dk_live_0123456789"]))
    logger = logging.getLogger("hostile-secret-test")
    logger.addHandler(handler)
    try:
        logger.error("header value b'dk_live_0123456789\\n' refused")
    finally:
        logger.removeHandler(handler)
    assert "dk_live_0123456789" not in stream.getvalue()


# --- row 7: the spool file ---------------------------------------------------------------------
def _down(namespace: str, path: Path) -> Forwarder:
    return Forwarder(settings=Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                       namespace=namespace, experience="fifa-cwc-2025",
                                       spool_path=str(path)))


def test_spool_files_are_private_from_the_first_byte(namespace, tmp_path):
    path = tmp_path / "a" / "b" / "spool.db"
    fwd = _down(namespace, path)
    fwd.capture(capture_event(1))
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / "a" / "b" / f"spool.db{suffix}").exists():
            mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
            assert mode == 0o600, (suffix, oct(mode))
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_corrupted_spool_is_moved_aside_and_a_fresh_one_takes_events(namespace, tmp_path,
                                                                       caplog):
    path = tmp_path / "spool.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    fwd = _down(namespace, path)
    with caplog.at_level(logging.ERROR):
        event_id = fwd.capture(capture_event(1))  # Redis down: into the spool
        fwd.capture(capture_event(2))
    assert event_id
    assert [r for r in caplog.records if "is corrupted" in r.getMessage()] != []
    assert len([r for r in caplog.records if "is corrupted" in r.getMessage()]) == 1
    status = Spool(str(path), 1 << 20).status(namespace)
    assert status.messages == 2 and len(status.quarantined) == 1
    assert ".corrupt-" in status.quarantined[0]
    out = CliRunner().invoke(cli, ["--namespace", namespace, "spool", "status", "--path",
                                   str(path)])
    assert out.exit_code == 0 and "corrupted, moved aside" in out.output
    assert "Traceback" not in out.output


# --- rows 8, 9, 10 -----------------------------------------------------------------------------
def test_deployment_defaults_keep_dashboards_and_the_sandbox_local():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    flower = compose["flower"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "DISTINCT_API_KEY" not in json.dumps(flower)
    assert all(str(p).startswith("127.0.0.1:") for p in compose["sandbox"]["ports"])
    assert Settings().metrics_bind == "127.0.0.1"


def test_worker_metrics_listen_on_loopback_only(settings, start_worker):
    port = free_port()
    start_worker(env={"FORWARDER_METRICS_PORT": str(port)})
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"]  # LISTEN
    mine = [local for _, local, *_ in listening if local.endswith(f":{port:04X}")]
    assert mine == [f"0100007F:{port:04X}"]


def test_dependency_bounds_exclude_known_bad_releases():
    import tomllib
    from packaging.requirements import Requirement
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert not reqs["redis"].specifier.contains("5.2.1")  # no TLS hostname check by default
    assert not reqs["requests"].specifier.contains("2.32.3")  # CVE-2024-47081
    for name in ("redis", "requests", "celery", "marshmallow"):
        assert reqs[name].specifier.contains(metadata.version(name)), name


def test_idempotency_keys_are_scoped_per_relay_client(redis_url, namespace):
    keys = ["shop:shop-key-000000000001", "shop:shop-key-000000000002",
            "crm:crm-key-0000000000001"]
    relay = Relay(Settings(redis_url=redis_url, namespace=namespace, spool_path="off",
                           experience="fifa-cwc-2025", relay_keys=tuple(keys)))

    def send(key: str) -> str:
        body = json.dumps({**capture_event(1), "recordCapturedAt": "2026-11-28T10:15:00Z"})
        return _wsgi(relay, "/api/v1/analytics/capture/fifa-cwc-2025", body.encode(),
                     {"HTTP_X_DISTINCT_API_KEY": key, "HTTP_IDEMPOTENCY_KEY": "order-1"})[1]

    shop, rotated, crm = (send(key.partition(":")[2]) for key in keys)
    assert shop == rotated  # the same client across a key rotation
    assert shop != crm  # another client's "order-1" is another event


# --- hypothesis: arbitrary input at each boundary -------------------------------------------------
def _wsgi(relay: Relay, path: str, body: bytes, extra: dict[str, str]) -> tuple[int, str]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), **extra}
    payload = b"".join(relay(environ, start_response))
    json.loads(payload)  # always Distinct's envelope, never a traceback
    return seen["status"], seen["headers"].get("X-Forwarder-Event-Id", "")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["PHOTO_VIEWED_BY_USER", "REGISTRATION_PAGE_VISIT", "X"]) | JSON,
    "eventValue": st.text(max_size=20) | JSON, "email": st.emails() | JSON,
    "recordCapturedAt": st.sampled_from(["2026-11-28T10:15:00Z", "2026-11-28"]) | JSON,
    "sessionId": st.text(max_size=5), "registrationPageValue": st.text(max_size=5)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300) | FIELDS.map(lambda d: json.dumps(d).encode())
       | JSON.map(lambda v: json.dumps(v).encode()))
def test_relay_answers_anything_and_queues_only_valid_events(hostile_relay, body):
    relay, store = hostile_relay
    before = store.queue_depth()
    status, event_id = _wsgi(relay, "/api/v1/analytics/capture/fifa-cwc-2025", body,
                             {"HTTP_X_DISTINCT_API_KEY": "hostile-relay-key-0001"})
    assert status in (200, 400, 413), status
    if status == 200:
        assert store.queue_depth() == before + 1  # accepted: in Redis, never lost
        queued = parse_event(store.client.lindex(store.queue_key, 0))
        assert queued["id"] == event_id
    else:
        assert store.queue_depth() == before


@pytest.fixture(scope="module")
def hostile_relay(redis_url):
    import uuid

    from forwarder.store import connect

    namespace = f"hostile-{uuid.uuid4().hex[:8]}"
    relay = Relay(Settings(redis_url=redis_url, namespace=namespace,
                           experience="fifa-cwc-2025", spool_path="off",
                           relay_keys=("hostile-relay-key-0001",)))
    store = Store(connect(redis_url), namespace)
    yield relay, store
    store.wipe()


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=200) | JSON.map(json.dumps)
                      | st.builds(lambda c: json.dumps({**dead_letter_entry(1), **c}),
                                  st.dictionaries(st.sampled_from(
                                      ["id", "kind", "body", "reason", "dead_at", "attempts",
                                       "experience", "last_status", "x"]), JSON, max_size=3)),
                      max_size=4))
def test_dlq_import_parses_anything_and_accepts_only_valid_entries(lines):
    entries, _errors = dlq_tools.parse_import(
        [line.decode("utf-8", "replace") if isinstance(line, bytes) else line
         for line in lines])
    for entry in entries:
        _, problems = validate_event(entry["kind"], entry["body"], entry["experience"])
        assert problems == {} and entry["reason"] in ("rejected", "exhausted", "expired",
                                                      "malformed")


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400) | JSON.map(lambda v: json.dumps(v).encode())
       | st.builds(lambda c: json.dumps({**json.loads(item(1)), **c}).encode(),
                   st.dictionaries(st.sampled_from(["id", "kind", "experience", "body",
                                                    "attempts", "first_seen"]), JSON,
                                   max_size=3)))
def test_a_queue_item_is_either_a_valid_event_or_malformed_never_an_error(raw):
    try:
        event = parse_event(raw)
    except MalformedEvent:
        return
    _, problems = validate_event(event["kind"], event["body"], event["experience"])
    assert problems == {}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=5000), head=st.booleans())
def test_any_spool_file_is_read_or_moved_aside_never_a_crash(tmp_path_factory, content, head):
    path = tmp_path_factory.mktemp("spool") / "spool.db"
    path.write_bytes((b"SQLite format 3\x00" if head else b"") + content)
    spool = Spool(str(path), 1 << 20)
    spool.put([item(1)], "ns")  # accepted, whatever the file held
    status = spool.status("ns")
    assert status.messages >= 1
    _, rows = spool.claim("ns", 10)
    assert any(json.loads(m)["body"]["eventValue"] == "evt-1" for _, m in rows
               if m.startswith("{"))
    spool.close()
