"""Black-box runs of the whole product, the sandbox standing in for Distinct.

These are the issue's acceptance runs: 1,000 mixed captures each delivered
once with the exact body and headers; rejected events dead-lettered, then
delivered by ``dlq replay --all``; a 20 s outage that loses nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from forwarder import Forwarder
from forwarder.producer import validate_event
from tests.conftest import capture_event, user_event, wait_until

pytestmark = pytest.mark.slow

TYPES = ("REGISTRATION_PAGE_VISIT", "PHOTO_ASSIGNED_TO_USER", "PHOTO_DOWNLOADED_BY_USER",
         "PHOTO_VIEWED_BY_USER")


def _marker(record: dict) -> str:
    body = record["body"]
    return body["eventValue"] if record["kind"] == "capture" else body["action"]


def test_thousand_mixed_captures_then_dlq_replay(
    settings, sandbox, start_worker, store, redis_url, namespace
):
    rejected = {f"evt-{i}" for i in range(0, 800, 40)}  # 20 capture events
    sandbox.faults.reject_values = sorted(rejected)
    fwd = Forwarder(settings=settings)
    expected: dict[str, dict] = {}
    singles = [capture_event(i, TYPES[i % 4]) for i in range(400)]
    batch = [capture_event(i, TYPES[i % 4]) for i in range(400, 800)]
    users = [user_event(i) for i in range(200)]
    for event in singles:
        fwd.capture(event)
    fwd.capture_many(batch)
    for event in users:
        fwd.user_analytics(event)
    for event in singles + batch:
        body, errors = validate_event("capture", event, "fifa-cwc-2025")
        assert not errors
        expected[event["eventValue"]] = body
    for event in users:
        body, errors = validate_event("user_analytics", event)
        assert not errors
        expected[event["action"]] = body
    assert len(expected) == 1000

    start_worker()
    start_worker()
    wait_until(lambda: len(sandbox.events) >= 980 and store.dlq_depth() == 20,
               timeout=120, message="980 delivered and 20 dead-lettered")
    time.sleep(1.0)
    assert len(sandbox.events) == 980
    entries = {e["body"]["eventValue"]: e for e in
               store.dlq_get(store.dlq_ids())}
    assert set(entries) == rejected
    assert all(e["reason"] == "rejected" and e["last_status"] == 400 for e in entries.values())

    sandbox.faults.reject_values = []
    env = dict(os.environ, REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace)
    replay = subprocess.run([sys.executable, "-m", "forwarder", "dlq", "replay", "--all"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "Replayed 20, skipped 0" in replay.stdout
    wait_until(lambda: len(sandbox.events) >= 1000, timeout=60, message="1000 delivered")
    time.sleep(1.0)

    counts = Counter(_marker(r) for r in sandbox.events)
    assert len(counts) == 1000 and max(counts.values()) == 1
    for record in sandbox.events:
        assert record["body"] == expected[_marker(record)]
        assert record["headers"]["content-type"] == "application/json"
        assert record["headers"]["x-distinct-api-key"] == "<matched>"
        if record["kind"] == "capture":
            assert record["path"] == "/api/v1/analytics/capture/fifa-cwc-2025"
        else:
            assert record["path"] == "/api/v1/user/analytics"
    assert store.dlq_depth() == 0 and store.queue_depth() == 0 and store.retry_depth() == 0


def test_twenty_second_outage_loses_nothing(settings, sandbox, start_worker, store):
    # Backoff nearer the defaults than the other tests use: a 20 s outage must
    # not burn through FORWARDER_MAX_ATTEMPTS (25).
    start_worker(env={"FORWARDER_BACKOFF_BASE": "0.5", "FORWARDER_BACKOFF_CAP": "4"})
    start_worker(env={"FORWARDER_BACKOFF_BASE": "0.5", "FORWARDER_BACKOFF_CAP": "4"})
    sandbox.faults.update({"outage_seconds": 20})
    outage_end = sandbox.faults.outage_until
    fwd = Forwarder(settings=settings)
    for i in range(300):
        if i % 2:
            fwd.capture(capture_event(i, TYPES[i % 4]))
        else:
            fwd.user_analytics(user_event(i))
        time.sleep(0.02)
    wait_until(lambda: store.breaker().state == "open", timeout=30, message="breaker open")
    assert len(sandbox.events) == 0
    wait_until(lambda: len(sandbox.events) >= 300, timeout=90, message="300 delivered")
    time.sleep(1.0)
    counts = Counter(_marker(r) for r in sandbox.events)
    assert len(counts) == 300 and max(counts.values()) == 1
    assert store.dlq_depth() == 0 and store.retry_depth() == 0
    last = max(r["received_at"] for r in sandbox.events)
    # The breaker kept the outage's requests few: the ones before it opened,
    # then one probe per cooldown (5 s, 10 s, 20 s).
    assert sandbox.stats.get("503", 0) < 100
    print(f"\noutage: {sandbox.stats.get('503')} answers of 503; every event delivered "
          f"{last - outage_end:.1f} s after the outage ended")
