"""Delivering a held batch: chunked admission, per-POST recording, what is handed back.

A Deliverer in this process, real Redis, the sandbox over real HTTP; the
Celery task around it is run through Celery's own ``apply``. Worker
processes, the dispatcher and recovery are in test_pipeline.py and the
fault suite.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from forwarder.config import Settings
from forwarder.constants import CHUNK_EVENTS, TASK_NAME
from forwarder.messages import Event, encode_event
from forwarder.sandbox import Sandbox
from forwarder.store import Store
from tests.conftest import API_KEY
from tests.helpers import event
from workers.deliverer import Deliverer
from workers.delivery import DistinctClient, Outcome, PostTime

WORKER = "test-host:1:abcdef"


@pytest.fixture
def live(settings: Settings, sandbox: Sandbox) -> Settings:
    return replace(settings, api_url=sandbox.url, api_key=API_KEY)


@pytest.fixture
def deliverer(live: Settings) -> Deliverer:
    return Deliverer(live, WORKER)


def hold(deliverer: Deliverer, items: list[str | bytes], batch: str = "b1") -> tuple[str, int]:
    """Put items in the deliverer's held hash as one batch, as the dispatcher would."""
    deliverer.client.hset(deliverer.holding.held_key,
                          mapping={f"{batch}:{n}": i for n, i in enumerate(items, start=1)})
    return batch, len(items)


def events(n: int) -> list[dict[str, Any]]:
    return [event(i) for i in range(n)]


def items(evs: list[dict[str, Any]]) -> list[str]:
    return [encode_event(e) for e in evs]  # type: ignore[arg-type]


def _held(owner: Any) -> int:
    """How many events a Deliverer (or a worker runtime) still holds."""
    return int(owner.holding.client.hlen(owner.holding.held_key))


def _inflight_keys(store: Store) -> list[Any]:
    """Claims still held (past their time or not)."""
    return list(store.client.zrange(f"{store.namespace}:claims", 0, -1))


def test_a_chunk_stops_at_its_first_failure_and_sends_the_rest_afterwards(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    sandbox.faults.fail_next = 1
    evs = events(10)
    counts = deliverer.deliver_batch(*hold(deliverer, items(evs)))
    assert counts == {"retried": 1, "delivered": 9}
    # The first POST failed; the other nine were released unsent, admitted
    # again and delivered: ten requests in all, none twice.
    assert sorted(e["body"]["eventValue"] for e in sandbox.events) == [
        f"evt-{i}" for i in range(1, 10)]
    assert store.retry_depth() == 1 and not _inflight_keys(store)
    assert json.loads(store.first_retry() or "")["attempts"] == 1
    assert all(store.is_delivered(e["id"]) for e in evs[1:])
    assert not store.is_delivered(evs[0]["id"])
    assert _held(deliverer) == 0  # every outcome took its event out


class _Witness(DistinctClient):
    """Checks, before each POST, that the previous event's success is already stored."""

    def __init__(self, settings: Settings, store: Store):
        super().__init__(settings)
        self.store = store
        self.previous: str | None = None
        self.unrecorded: list[str] = []

    def send(self, event: Event) -> Outcome:
        if self.previous is not None and not self.store.is_delivered(self.previous):
            self.unrecorded.append(self.previous)
        outcome = super().send(event)
        self.previous = event["id"]
        return outcome


def test_each_success_is_stored_before_the_next_post(live: Settings, store: Store) -> None:
    # What bounds the kill -9 window to one POST per thread: a chunk is
    # admitted at once, but no POST goes out before the last one's outcome
    # is in Redis.
    witness = _Witness(live, store)
    deliverer = Deliverer(live, WORKER, distinct=witness)
    n = CHUNK_EVENTS + 3
    assert deliverer.deliver_batch(*hold(deliverer, items(events(n)))) == {"delivered": n}
    assert witness.unrecorded == []


def test_events_already_delivered_are_skipped_without_a_post(
    deliverer: Deliverer, sandbox: Sandbox
) -> None:
    evs = events(5)
    assert deliverer.deliver_batch(*hold(deliverer, items(evs[:2]), "b1")) == {"delivered": 2}
    assert deliverer.deliver_batch(*hold(deliverer, items(evs), "b2")) == {
        "skipped": 2, "delivered": 3}
    assert len(sandbox.events) == 5 and _held(deliverer) == 0


def test_once_the_breaker_opens_the_rest_is_parked_without_a_post(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    sandbox.faults.fail_next = 1000
    counts = deliverer.deliver_batch(*hold(deliverer, items(events(30))))
    # Failures one at a time until the breaker opens (10 in a row), then
    # every event left is parked in the retry set without a POST.
    assert counts == {"retried": 10, "deferred": 20}
    assert store.retry_depth() == 30 and not _inflight_keys(store)
    assert store.breaker().state == "open"
    assert sandbox.stats.get("503", 0) == 10
    parked = [json.loads(m) for m in store.client.zrange(store.retry_key, 0, -1)]
    assert sorted(p["attempts"] for p in parked) == [0] * 20 + [1] * 10


def test_more_threads_than_redis_pys_default_pool(live: Settings, sandbox: Sandbox) -> None:
    deliverer = Deliverer(replace(live, concurrency=150), WORKER)
    batches = [hold(deliverer, items(events(2)), f"b{i}") for i in range(150)]
    results: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda b=b: results.append(deliverer.deliver_batch(*b)))
               for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Each thread holds a connection of its own: more than redis-py's default 100.
    assert sum(r.get("delivered", 0) for r in results) == 300
    assert len(sandbox.events) == 300


def test_a_chunk_cut_short_by_shutdown_releases_its_claims_and_hands_back(
    live: Settings, store: Store
) -> None:
    class StopAfterFirst(DistinctClient):
        def send(self, event: Event) -> Outcome:
            outcome = super().send(event)
            deliverer.stopping.set()  # SIGTERM arrives during the first POST
            return outcome

    deliverer = Deliverer(live, WORKER, distinct=StopAfterFirst(live))
    counts = deliverer.deliver_batch(*hold(deliverer, items(events(5))))
    assert counts == {"delivered": 1, "handed_back": 4}
    # The four unsent events are back in the queue, no longer held, and none
    # keeps a claim that would make it wait as "busy".
    assert store.queue_depth() == 4 and not _inflight_keys(store)
    assert _held(deliverer) == 0


HOSTILE = [
    b"not json",
    b'"a string"',
    b'{"id": "x"}',
    json.dumps({**event(1), "body": {"type": "X", "anything": 1}}).encode(),
    json.dumps({**event(1), "attempts": "abc"}).encode(),
    json.dumps({**event(1), "attempts": True}).encode(),
    json.dumps({**event(1), "kind": "other"}).encode(),
    json.dumps({**event(1), "experience": "../admin"}).encode(),
    json.dumps({**event(1), "first_seen": 1e30}).encode(),
    json.dumps({**event(1), "body": {**event(1)["body"], "eventValue": 10**30}}).encode(),
    b'{"id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"id": "a", "id": "b"}',
    json.dumps(event(1)).encode().replace(b'"attempts": 0', b'"attempts": NaN'),
]


def test_hostile_items_are_dead_lettered_once_and_never_posted(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    good = event(7)
    counts = deliverer.deliver_batch(*hold(deliverer, [*HOSTILE, encode_event(good)]))
    assert counts == {"dead_lettered": len(HOSTILE), "delivered": 1}
    assert [e["body"]["eventValue"] for e in sandbox.events] == ["evt-7"]
    entries = [e for e in store.dlq_get(store.dlq_ids()) if e]
    assert len(entries) == len(HOSTILE)
    assert all(e["reason"] == "malformed" for e in entries)
    problems = " | ".join(e["last_error"] for e in entries)
    for expected in ("not JSON", "attempts:", "kind:", "experience:", "first_seen:",
                     "body.anything: Unknown field", "body.eventValue", "nested too deeply",
                     "NaN is not JSON", "id: must be an event id"):
        assert expected in problems, expected
    assert _held(deliverer) == 0 and store.retry_depth() == 0


def test_the_task_ignores_messages_that_name_no_held_batch(live: Settings, store: Store):
    from workers.app import create_app

    app = create_app(live)
    task = app.tasks[TASK_NAME]
    # 0.1's argument shape, a hand-written string, nonsense counts: no DLQ
    # entry, no retry, nothing sent (nothing is held for them).
    for args in ([[event(1)]], ["x" * 50], ["b", "many"], ["b", 10**9], ["unknown", 3]):
        result = task.apply(args=args).get()
        assert result in ({"ignored": 1}, {"duplicate": 1}), (args, result)
    assert store.dlq_depth() == 0 and store.retry_depth() == 0 and store.queue_depth() == 0


def test_an_unexpected_error_counts_as_a_failed_attempt_not_a_loop(
    live: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.app import create_app

    app = create_app(replace(live, max_attempts=2))
    runtime = app.runtime()

    def bug(*_: Any) -> dict[str, int]:
        raise RuntimeError("a bug in delivery")

    monkeypatch.setattr(runtime.deliverer, "deliver", bug)
    evs = events(2)
    batch, count = hold(runtime.deliverer, items(evs))
    runtime.dispatcher.dispatched(batch, count)
    result = app.tasks[TASK_NAME].apply(args=[batch, count]).get()
    # Celery would acknowledge a failed task; the events took a failed attempt
    # each and wait in the retry set, with backoff.
    assert result == {"after_error": 2}
    retries = [json.loads(m) for m in store.client.zrange(store.retry_key, 0, -1)]
    assert sorted(r["id"] for r in retries) == sorted(e["id"] for e in evs)
    assert all(r["attempts"] == 1 for r in retries)
    # The second failure exhausts them (max_attempts=2): dead-lettered, no loop.
    store.client.delete(store.retry_key)
    batch, count = hold(runtime.deliverer, [encode_event({**e, "attempts": 1}) for e in evs],
                        "b2")
    runtime.dispatcher.dispatched(batch, count)
    assert app.tasks[TASK_NAME].apply(args=[batch, count]).get() == {"after_error": 2}
    assert store.dlq_depth_by_reason() == {"exhausted": 2} and store.retry_depth() == 0
    assert "internal error: RuntimeError" in store.dlq_get(store.dlq_ids())[0]["last_error"]
    assert _held(runtime) == 0
    time.sleep(0)  # nothing left running: the runtime was never started


def test_a_short_backlog_is_cut_no_finer_than_a_thread_sends_in_spread_seconds(store):
    from forwarder.constants import SPREAD_SECONDS
    from workers.dispatcher import Dispatcher
    from workers.holding import Holding

    post = PostTime()
    sent: list[tuple[str, int, str]] = []
    dispatcher = Dispatcher(Holding(store.client, store.namespace, "w"),
                            lambda *message: sent.append(message), capacity=100,
                            post_seconds=lambda: post.seconds)
    assert dispatcher.least_batch() == 1  # nothing timed yet: spread over every thread
    store.enqueue([encode_event(event(i)) for i in range(50)])  # type: ignore[arg-type]
    assert dispatcher.run_once() == 1
    post.observe(0.001)  # a fast Distinct: a thread sends 20 in SPREAD_SECONDS
    assert dispatcher.least_batch() == round(SPREAD_SECONDS / 0.001)
    assert dispatcher.run_once() == dispatcher.least_batch()
    for _ in range(200):
        post.observe(0.5)  # a slow one: every event to a thread of its own again
    assert dispatcher.least_batch() == 1
    assert dispatcher.run_once() == 1

