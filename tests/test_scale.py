"""Operating at scale with real workers: breaker under an outage, global rate limit,
dedupe, DLQ tooling, status, metrics and logs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from benchmarks.scale import run_outage, run_rate_limit
from forwarder import Forwarder, dlq
from forwarder.cli import cli
from forwarder.redis_server import free_port
from forwarder.store import Store, connect, dedupe_member
from tests.conftest import capture_event, wait_until
from tests.helpers import store_outcomes
from workers.outcomes import Finish


def did(i: int) -> str:
    """The id of the i-th test dead letter (an event id is a UUID)."""
    return f"00000000-0000-4000-8000-{i:012d}"


@pytest.mark.slow
def test_outage_opens_the_breaker_and_loses_nothing(redis_url):
    result = run_outage(25, rate=20, workers=2, pre_s=3, redis_url=redis_url,
                        FORWARDER_BREAKER_COOLDOWN_MIN="1", FORWARDER_BREAKER_COOLDOWN_MAX="4")
    assert result["all_delivered"], result
    assert result["lost"] == 0 and result["posted_twice"] == 0, result
    assert result["dead_lettered"] == 0, result
    assert result["breaker_opened_after_s"] is not None, result
    # While open, at most one probe per cooldown period reaches Distinct.
    assert result["requests_while_open"] <= result["cooldown_periods_while_open"] + 1, result
    assert result["worker_rss_growth_mb"] < 20, result
    assert result["last_delivery_after_recovery_s"] < 60, result


@pytest.mark.slow
def test_global_rate_limit_across_workers(redis_url):
    result = run_rate_limit(limit=20, workers=2, seconds=10, redis_url=redis_url)
    shown = json.dumps(result)  # the whole result when an assert fails, not pytest's cut
    assert abs(result["deviation_pct"]) <= 10, shown
    assert result["max_in_any_1s_window"] <= 24, shown


def test_same_idempotency_key_is_delivered_once(settings, sandbox, start_worker):
    fwd = Forwarder(settings=settings)
    first = fwd.capture(capture_event(1), idempotency_key="order-1")
    start_worker()
    wait_until(lambda: len(sandbox.events) == 1, message="first delivery")
    assert fwd.capture(capture_event(1), idempotency_key="order-1") == first
    time.sleep(1.5)
    assert len(sandbox.events) == 1
    assert fwd.store.queue_depth() == 0


def _entries(store: Store, count: int, **overrides) -> list[str]:
    now = time.time()
    entries = []
    for i in range(count):
        entry = {"id": did(i), "kind": "capture", "experience": "fifa-cwc-2025",
                 "body": capture_event(i), "attempts": 1, "first_seen": now,
                 "last_attempt": now, "last_status": 400, "last_error": "no",
                 "reason": "rejected", "dead_at": now}
        entry["body"]["recordCapturedAt"] = "2026-11-28T10:15:00.000Z"
        entry.update({k: (v(i) if callable(v) else v) for k, v in overrides.items()})
        entries.append(entry)
    for start in range(0, count, 1000):
        store.dlq_put(entries[start:start + 1000])
    return [e["id"] for e in entries]


@pytest.mark.slow
def test_replay_of_ten_thousand_entries(store, sandbox, start_worker, redis_url, namespace):
    _entries(store, 10_000)
    env = dict(os.environ, REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace)
    replay = subprocess.run([sys.executable, "-m", "forwarder", "dlq", "replay", "--all"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert "Replayed 10000, skipped 0 (already delivered), failed 0" in replay.stdout
    assert store.dlq_depth() == 0
    start_worker()
    start_worker()
    wait_until(lambda: len(sandbox.events) >= 10_000, timeout=180, message="10,000 delivered")
    time.sleep(1.0)
    values = [e["body"]["eventValue"] for e in sandbox.events]
    assert len(values) == 10_000 and len(set(values)) == 10_000
    again = subprocess.run([sys.executable, "-m", "forwarder", "dlq", "replay", "--all"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "Nothing to do."


def test_replay_shows_a_progress_bar_on_a_terminal(store, redis_url, namespace):
    _entries(store, 300)
    env = dict(os.environ, REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "forwarder", "dlq", "replay", "--all"],
                            env=env, stdout=subprocess.PIPE, stderr=terminal)
    out, _ = proc.communicate(timeout=60)
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.returncode == 0
    assert b"Replaying" in screen and b"100%" in screen
    assert b"Replayed 300" in out


def test_replay_skips_an_entry_whose_event_was_delivered(store, redis_url, namespace):
    ids = _entries(store, 3)
    store_outcomes(store, [Finish("f:1", ids[0], "delivered", dedupe_member(ids[0]))])
    runner = CliRunner()
    base = ["--redis-url", redis_url, "--namespace", namespace, "dlq", "replay"]
    dry = runner.invoke(cli, [*base, "--all", "--dry-run"])
    assert "Would replay 2 entries and skip 1" in dry.output
    assert store.dlq_depth() == 3 and store.queue_depth() == 0
    done = runner.invoke(cli, [*base, "--all", "--json"])
    assert json.loads(done.output) == {"replayed": 2, "skipped": 1, "failed": 0}
    assert store.queue_depth() == 2


def test_replay_rate_paces_through_the_sleep_seam(store):
    _entries(store, 250)
    slept: list[float] = []
    report = dlq.replay(store, rate=50, sleep=slept.append)
    assert len(report.replayed) == 250
    # 250 entries at 50/s: chunks of 50, chunk k due k seconds after the start
    # (the fake sleep does not advance the clock, so each wait is the offset).
    assert [round(s, 1) for s in slept] == [1.0, 2.0, 3.0, 4.0]


def test_selectors_shared_by_list_purge_and_export(store, redis_url, namespace):
    day = 86400
    now = time.time()
    _entries(store, 12,
             reason=lambda i: ("rejected", "exhausted", "expired")[i % 3],
             last_status=lambda i: (400, 503, 401)[i % 3],
             experience=lambda i: "exp-a" if i < 6 else "exp-b",
             dead_at=lambda i: now - i * day)
    runner = CliRunner()

    def ids(*args: str) -> list[str]:
        result = runner.invoke(cli, ["--redis-url", redis_url, "--namespace", namespace,
                                     "dlq", "list", "--json", *args])
        assert result.exit_code == 0, result.output
        return sorted(json.loads(line)["id"] for line in result.output.splitlines())

    assert ids("--reason", "exhausted") == sorted(did(i) for i in (1, 4, 7, 10))
    assert ids("--status", "401") == sorted(did(i) for i in (2, 5, 8, 11))
    assert ids("--experience", "exp-b", "--reason", "rejected") == [did(6), did(9)]
    assert ids("--since", "2.5d") == [did(0), did(1), did(2)]
    assert ids("--until", "9.5d") == [did(10), did(11)]
    assert ids("--type", "PHOTO_VIEWED_BY_USER", "--limit", "2") == [did(10), did(11)]
    assert ids(did(3), did(4), "--reason", "expired") == []

    base = ["--redis-url", redis_url, "--namespace", namespace, "dlq"]
    refused = runner.invoke(cli, [*base, "purge", "--reason", "expired"])
    assert refused.exit_code == 2 and "--yes" in refused.output
    purged = runner.invoke(cli, [*base, "purge", "--reason", "expired", "--yes"])
    assert "Purged 4 entries." in purged.output
    assert store.dlq_depth() == 8
    assert store.dlq_depth_by_reason() == {"rejected": 4, "exhausted": 4}


def test_export_then_import_moves_entries_between_namespaces(
    store, redis_url, namespace, tmp_path
):
    _entries(store, 5)
    out = tmp_path / "dlq.jsonl"
    runner = CliRunner()
    exported = runner.invoke(cli, ["--redis-url", redis_url, "--namespace", namespace,
                                   "dlq", "export", "--reason", "rejected", "--out", str(out)])
    assert exported.exit_code == 0
    assert len(out.read_text().splitlines()) == 5
    other = f"{namespace}-copy"
    try:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(out.read_text() + '{"id": "x", "kind": "capture"}\n')
        refused = runner.invoke(cli, ["--redis-url", redis_url, "--namespace", other,
                                      "dlq", "import", str(bad)])
        assert refused.exit_code == 2 and "line 6: body: missing" in refused.output
        target = Store(connect(redis_url), other)
        assert target.dlq_depth() == 0  # nothing imported when one line is bad
        imported = runner.invoke(cli, ["--redis-url", redis_url, "--namespace", other,
                                       "dlq", "import", str(out)])
        assert imported.exit_code == 0 and "Imported 5 entries." in imported.output
        assert target.dlq_get([did(3)]) == store.dlq_get([did(3)])
        assert target.dlq_depth_by_reason() == {"rejected": 5}
    finally:
        Store(connect(redis_url), other).wipe()


def test_retention_removes_old_entries_and_status_warns_ahead(store, settings):
    now = time.time()
    day = 86400
    _entries(store, 4, dead_at=lambda i: now - (31, 29.5, 10, 0)[i] * day)
    assert store.dlq_expiring(now, settings.dlq_ttl, day) == 2
    assert store.dlq_expire(now, settings.dlq_ttl) == 1
    assert store.dlq_ids() == [did(1), did(2), did(3)]
    assert store.dlq_expiring(now, settings.dlq_ttl, day) == 1


def test_status_shows_breaker_reason_and_live_workers(store, start_worker, redis_url,
                                                      namespace):
    start_worker()
    store_outcomes(store, [Finish("f:1", did(1), "retried", "{}", 60.0, "", "auth", "auth")])
    result = CliRunner().invoke(cli, ["--redis-url", redis_url, "--namespace", namespace,
                                      "status", "--json"])
    report = json.loads(result.output)
    assert report["breaker"]["state"] == "open" and report["breaker"]["reason"] == "auth"
    assert "DISTINCT_API_KEY" in report["breaker"]["hint"]
    (worker,) = report["workers"]
    assert worker["pid"] and worker["threads"] == 4 and worker["last_beat_age"] < 10
    assert report["redis"]["eviction_policy"] is not None
    text = CliRunner().invoke(cli, ["--redis-url", redis_url, "--namespace", namespace,
                                    "status"]).output
    assert "OPEN (auth)" in text and "workers         1 live" in text


def test_worker_metrics_and_json_logs(settings, sandbox, start_worker):
    port = free_port()
    sandbox.faults.reject_values = ["evt-2"]
    worker = start_worker(env={"FORWARDER_METRICS_PORT": str(port),
                               "FORWARDER_LOG_FORMAT": "json"})
    fwd = Forwarder(settings=settings)
    for i in range(3):
        fwd.capture(capture_event(i))
    wait_until(lambda: len(sandbox.events) == 2 and fwd.store.dlq_depth() == 1,
               message="settled")

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    text = wait_until(lambda: "distinct_forwarder_dlq_depth 1.0" in scrape() and scrape(),
                      message="gauges")
    assert ('distinct_forwarder_delivered_total{kind="capture",status="200",'
            'type="PHOTO_VIEWED_BY_USER"} 2.0') in text
    assert ('distinct_forwarder_dead_lettered_total{kind="capture",status="400",'
            'type="PHOTO_VIEWED_BY_USER"} 1.0') in text
    assert "distinct_forwarder_http_seconds_count 3.0" in text
    assert "distinct_forwarder_capture_to_delivery_seconds_count 2.0" in text
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    # Each event is named once: a line per dead letter, a line per chunk of
    # deliveries (with the ids as a list in JSON logs).
    dead = [line for line in lines if line["msg"].startswith("dead-lettered id=")]
    delivered: list[str] = []
    for line in lines:
        if line["msg"].startswith("delivered id="):
            delivered.append(line["msg"].split()[1].removeprefix("id="))
        elif line["msg"].startswith("delivered ") and "ids" in line:
            delivered += line["ids"]
    assert len(dead) == 1 and len(delivered) == 2 and len(set(delivered)) == 2
    assert "fan1@example.com" not in worker.log()
