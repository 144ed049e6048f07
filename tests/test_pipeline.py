"""End to end with real parts: producer -> Redis -> worker process -> sandbox Distinct."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from click.testing import CliRunner

from forwarder import Forwarder
from forwarder.cli import cli
from tests.conftest import API_KEY, capture_event, user_event, wait_until
from tests.helpers import item


def test_capture_is_delivered_with_exact_body_path_and_headers(settings, sandbox, start_worker):
    fwd = Forwarder(settings=settings)
    event = capture_event(1, "REGISTRATION_PAGE_VISIT")
    event["recordCapturedAt"] = "2026-11-28T12:15:00.5+02:00"
    event_id = fwd.capture(event)
    user_id = fwd.user_analytics(user_event(2))
    start_worker()
    wait_until(lambda: len(sandbox.events) == 2, message="two deliveries")
    by_kind = {e["kind"]: e for e in sandbox.events}
    capture = by_kind["capture"]
    assert capture["path"] == "/api/v1/analytics/capture/fifa-cwc-2025"
    assert capture["body"] == {
        "type": "REGISTRATION_PAGE_VISIT", "eventValue": "evt-1",
        "recordCapturedAt": "2026-11-28T10:15:00.500Z", "sessionId": "s-1",
        "registrationPageValue": "reg-7",
    }
    assert capture["headers"]["content-type"] == "application/json"
    assert capture["headers"]["x-distinct-api-key"] == "<matched>"
    user = by_kind["user_analytics"]
    assert user["path"] == "/api/v1/user/analytics"
    assert user["body"] == {**user_event(2), "capturedAt": "2026-04-27T13:35:00.000Z"}
    # Delivered ids are remembered for the dedupe window.
    assert fwd.store.is_delivered(event_id) and fwd.store.is_delivered(user_id)
    assert fwd.store.queue_depth() == 0 and fwd.store.retry_depth() == 0


def test_rejected_event_lands_in_dlq_with_reason_and_status(settings, sandbox, start_worker, store):
    sandbox.faults.reject_values = ["evt-7"]
    fwd = Forwarder(settings=settings)
    before = time.time()
    event_id = fwd.capture(capture_event(7))
    fwd.capture(capture_event(8))
    start_worker()
    wait_until(lambda: store.dlq_depth() == 1 and len(sandbox.events) == 1, message="DLQ entry")
    entry = store.dlq_get([event_id])[0]
    assert entry["reason"] == "rejected"
    assert entry["last_status"] == 400
    assert entry["attempts"] == 1
    assert entry["kind"] == "capture" and entry["experience"] == "fifa-cwc-2025"
    assert entry["body"]["eventValue"] == "evt-7"
    assert "Rejected by sandbox rule" in entry["last_error"]
    assert before <= entry["first_seen"] <= entry["last_attempt"] <= time.time()
    assert API_KEY not in json.dumps(entry)
    assert sandbox.events[0]["body"]["eventValue"] == "evt-8"


def test_503_then_200_is_delivered_exactly_once(settings, sandbox, start_worker, store):
    sandbox.faults.fail_next = 2
    fwd = Forwarder(settings=settings)
    event_id = fwd.capture(capture_event(3))
    start_worker()
    wait_until(lambda: len(sandbox.events) == 1, message="delivery")
    time.sleep(1.0)  # room for a duplicate to show up, if there were one
    assert len(sandbox.events) == 1
    assert sandbox.stats.get("503") == 2
    assert store.is_delivered(event_id)
    assert store.dlq_depth() == 0 and store.retry_depth() == 0
    assert store.outcome_counts(time.time(), 5)["retried"] == 2


def test_retry_after_is_honoured(settings, sandbox, start_worker, store):
    sandbox.faults.fail_next = 1
    sandbox.faults.fail_status = 429
    sandbox.faults.retry_after = "2"
    start_worker()
    fwd = Forwarder(settings=settings)
    sent = time.time()
    fwd.capture(capture_event(4))
    wait_until(lambda: store.retry_depth() == 1, message="retry scheduled")
    due = store.next_retry_due()
    assert due is not None and due - sent >= 2.0  # backoff alone would be <= 0.5 s here
    wait_until(lambda: len(sandbox.events) == 1, message="delivery")
    assert sandbox.events[0]["received_at"] - sent >= 2.0


def test_exhausted_after_max_attempts(settings, sandbox, start_worker, store):
    sandbox.faults.fail_rate = 1.0
    start_worker(env={"FORWARDER_MAX_ATTEMPTS": "3"})
    event_id = Forwarder(settings=settings).capture(capture_event(5))
    wait_until(lambda: store.dlq_depth() == 1, message="dead letter")
    entry = store.dlq_get([event_id])[0]
    assert entry["reason"] == "exhausted"
    assert entry["attempts"] == 3 and entry["last_status"] == 503
    assert sandbox.stats.get("503") == 3


def test_bad_api_key_opens_the_breaker_and_is_never_dead_lettered(
    settings, sandbox, start_worker, store
):
    sandbox.faults.api_key = "a-different-key"
    worker = start_worker(env={"FORWARDER_MAX_ATTEMPTS": "1",
                               "FORWARDER_BREAKER_COOLDOWN_MIN": "1",
                               "FORWARDER_BREAKER_COOLDOWN_MAX": "2"})
    fwd = Forwarder(settings=settings)
    for i in range(5):
        fwd.capture(capture_event(i))
    wait_until(lambda: store.breaker().state == "open", message="breaker open")
    assert store.breaker().reason == "auth"
    assert "DISTINCT_API_KEY" in store.breaker().hint
    wait_until(lambda: sandbox.stats.get("401", 0) >= 3, message="probes")
    assert store.dlq_depth() == 0  # past max attempts, still waiting for the key
    assert "circuit breaker OPEN (reason auth)" in worker.log()
    assert API_KEY not in worker.log()
    # Once the key is right again, a probe closes the breaker and all go through.
    sandbox.faults.api_key = API_KEY
    wait_until(lambda: len(sandbox.events) == 5, message="delivery after key fix")
    assert store.breaker().state == "closed"
    assert store.dlq_depth() == 0


def test_dlq_replay_delivers_once_the_sandbox_accepts(
    settings, sandbox, start_worker, store, redis_url, namespace
):
    sandbox.faults.reject_values = ["evt-10", "evt-11"]
    fwd = Forwarder(settings=settings)
    ids = {fwd.capture(capture_event(10)), fwd.capture(capture_event(11))}
    start_worker()
    wait_until(lambda: store.dlq_depth() == 2, message="two dead letters")
    sandbox.faults.reject_values = []
    runner = CliRunner()
    args = ["--redis-url", redis_url, "--namespace", namespace, "dlq"]
    listed = runner.invoke(cli, [*args, "list", "--json"])
    assert listed.exit_code == 0
    assert {json.loads(line)["id"] for line in listed.output.splitlines()} == ids
    result = runner.invoke(cli, [*args, "replay", "--all"])
    assert result.exit_code == 0, result.output
    assert "Replayed 2, skipped 0" in result.output
    wait_until(lambda: len(sandbox.events) == 2, message="replayed deliveries")
    assert store.dlq_depth() == 0
    again = runner.invoke(cli, [*args, "replay", "--all"])
    assert "Nothing to do." in again.output
    time.sleep(0.5)
    assert len(sandbox.events) == 2


def test_two_workers_never_deliver_a_due_retry_twice(settings, sandbox, start_worker, store):
    now = time.time()
    with store.client.pipeline() as pipe:
        for i in range(300):
            pipe.zadd(store.retry_key, {item(i, attempts=1): now - 1})
        pipe.execute()
    start_worker(ready=False)
    start_worker(ready=False)
    start_worker(ready=False)
    wait_until(lambda: len(sandbox.events) >= 300, timeout=60, message="300 deliveries")
    time.sleep(1.5)
    values = [e["body"]["eventValue"] for e in sandbox.events]
    assert sorted(values) == sorted(f"evt-{i}" for i in range(300))
    assert store.retry_depth() == 0 and store.queue_depth() == 0


def test_api_key_never_stored_in_redis(settings, sandbox, start_worker, store, redis_url):
    sandbox.faults.reject_values = ["evt-21"]
    sandbox.faults.fail_next = 3
    fwd = Forwarder(settings=settings)
    for i in range(20, 26):
        fwd.capture(capture_event(i))
    start_worker()
    wait_until(lambda: len(sandbox.events) == 5 and store.dlq_depth() == 1, message="settled")
    found = []
    for key in store.client.scan_iter(match=f"{store.namespace}:*"):
        kind = store.client.type(key).decode()
        dump = store.client.dump(key) or b""
        if API_KEY.encode() in dump:
            found.append((key, kind))
    assert found == []


def test_what_a_silent_worker_held_comes_back_and_is_delivered(settings, sandbox,
                                                               start_worker, store):
    from workers.holding import Holding

    fwd = Forwarder(settings=settings)
    for i in range(4):
        fwd.capture(capture_event(i))
    # A worker took three events and died (kill -9): only Redis remembers them.
    dead = Holding(store.client, store.namespace, "deadhost:1:000000")
    dead.beat(first=True, info={"host": "deadhost", "pid": 1})
    assert len(dead.take("b", limit=3, free=1).items) == 3
    store.client.zadd(dead.workers_key, {dead.worker: time.time() - 60})
    worker = start_worker(env={"FORWARDER_WORKER_TIMEOUT": "2"})
    wait_until(lambda: len(sandbox.events) == 4, timeout=30, message="all four delivered")
    assert sorted(e["body"]["eventValue"] for e in sandbox.events) == [
        "evt-0", "evt-1", "evt-2", "evt-3"]
    assert "worker deadhost:1:000000 was silent" in worker.log()
    assert [w.id for w in store.workers()] != [dead.worker]
    assert sum(w.held for w in store.workers()) == 0 and store.queue_depth() == 0
    time.sleep(1)
    assert len(sandbox.events) == 4


def test_a_worker_declared_dead_stops_and_is_replaced(settings, sandbox, start_worker,
                                                      store):
    worker = start_worker(env={"FORWARDER_WORKER_TIMEOUT": "2"})
    (registered,) = store.workers()
    # As if it had been frozen past the timeout: a sweeper requeued its events
    # and forgot it. It must stop rather than send them a second time.
    store.client.zrem(f"{store.namespace}:workers", registered.id)
    wait_until(lambda: "was declared dead" in worker.log(), message="stops")
    wait_until(lambda: worker.log().count(" ready.") == 2, timeout=60, message="a new child")
    Forwarder(settings=settings).capture(capture_event(1))
    wait_until(lambda: len(sandbox.events) == 1, message="delivery by the new child")


def test_the_worker_process_comes_back_when_celery_dies(settings, sandbox, start_worker,
                                                        store):
    sandbox.faults.latency_ms = 300
    worker = start_worker()
    fwd = Forwarder(settings=settings)
    fwd.capture_many([capture_event(i) for i in range(40)])
    wait_until(lambda: sum(w.held for w in store.workers()) > 0 and sandbox.events,
               message="events held")
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGKILL)  # e.g. an OOM kill, an unrecoverable error
    # The supervisor knows its child is dead: it requeues what the child held
    # at once, without waiting for the heartbeat to fall silent.
    wait_until(lambda: "events; requeued them" in worker.log(), message="requeued at once")
    wait_until(lambda: "starting a new one" in worker.log(), message="restart notice")
    wait_until(lambda: worker.log().count(" ready.") == 2, timeout=60, message="new child")
    sandbox.faults.latency_ms = 0
    wait_until(lambda: {e["body"]["eventValue"] for e in sandbox.events} >= {
        f"evt-{i}" for i in range(40)}, timeout=30, message="all delivered")
    assert worker.stop() == 0  # SIGTERM is passed on and ends the supervision
