"""Worker-side batching: taken messages, chunked admission, per-POST recording.

A Deliverer in this process, real Redis, the sandbox over real HTTP; no Celery
(the worker-level paths are in test_pipeline.py and the fault suite).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.constants import CHUNK_EVENTS, TAKE_MESSAGES
from forwarder.messages import Event, random_uuid
from forwarder.sandbox import Sandbox
from forwarder.store import Store
from tests.conftest import API_KEY, capture_event
from workers.delivery import DistinctClient, Outcome
from workers.tasks import Deliverer


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Deliverer:
    return Deliverer(replace(settings, api_url=sandbox.url, api_key=API_KEY))


def _events(n: int) -> list[Event]:
    return [Event(id=random_uuid(), kind="capture", experience="fifa-cwc-2025",
                  body=capture_event(i), attempts=0, first_seen=time.time())
            for i in range(n)]


def _inflight_keys(store: Store) -> list[Any]:
    return list(store.client.scan_iter(match=store.inflight_prefix + "*"))


def test_a_chunk_stops_at_its_first_failure_and_sends_the_rest_afterwards(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    sandbox.faults.fail_next = 1
    events = _events(10)
    counts = deliverer.deliver_batch(list(events))
    assert counts == {"retried": 1, "delivered": 9}
    # The first POST failed; the other nine were given back unsent, admitted
    # again and delivered: ten requests in all, none twice.
    assert len(sandbox.events) == 9
    assert sorted(e["body"]["eventValue"] for e in sandbox.events) == [
        f"evt-{i}" for i in range(1, 10)]
    assert store.retry_depth() == 1 and not _inflight_keys(store)
    assert all(store.is_delivered(e["id"]) for e in events[1:])
    assert not store.is_delivered(events[0]["id"])


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


def test_each_success_is_stored_before_the_next_post(
    settings: Settings, sandbox: Sandbox, store: Store
) -> None:
    # What bounds the kill -9 window to one POST per thread: a chunk is
    # admitted at once, but no POST goes out before the last one's outcome
    # is in Redis.
    live = replace(settings, api_url=sandbox.url, api_key=API_KEY)
    witness = _Witness(live, store)
    deliverer = Deliverer(live, client=witness)
    counts = deliverer.deliver_batch(_events(CHUNK_EVENTS * 2 + 3))
    assert counts == {"delivered": CHUNK_EVENTS * 2 + 3}
    assert witness.unrecorded == []


def test_a_task_takes_the_backlog_along_in_rounds_and_releases_it(
    deliverer: Deliverer, sandbox: Sandbox, store: Store, settings: Settings
) -> None:
    fwd = Forwarder(settings=settings)
    backlog = TAKE_MESSAGES * 2 + 5
    for i in range(backlog):
        fwd.capture(capture_event(i))
    own = _events(1)
    counts = deliverer.deliver_task(list(own))
    # Its own event, then rounds of taken messages until the queue was empty.
    assert counts == {"delivered": backlog + 1}
    assert len(sandbox.events) == backlog + 1
    assert store.queue_depth() == 0 and store.taken_depth() == 0


def test_events_already_delivered_are_skipped_without_a_post(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    events = _events(5)
    assert deliverer.deliver_batch(events[:2]) == {"delivered": 2}
    assert deliverer.deliver_batch(events) == {"skipped": 2, "delivered": 3}
    assert len(sandbox.events) == 5


def test_once_the_breaker_opens_the_rest_is_parked_without_a_post(
    deliverer: Deliverer, sandbox: Sandbox, store: Store
) -> None:
    sandbox.faults.fail_next = 1000
    counts = deliverer.deliver_batch(_events(40))
    # Failures one at a time until the breaker opens (10 in a row), then
    # every event left is parked in the retry set without a POST.
    assert counts["retried"] == 10
    assert counts["deferred"] == 30
    assert store.retry_depth() == 40 and not _inflight_keys(store)
    assert deliverer.gate.state().state == "open"
    assert sandbox.stats.get("503", 0) == 10


def test_an_unexpected_error_parks_the_message_instead_of_losing_it(
    settings: Settings, sandbox: Sandbox, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder.constants import TASK_NAME
    from forwarder.messages import events_in_message
    from workers.app import create_app

    app = create_app(replace(settings, api_url=sandbox.url, api_key=API_KEY))
    deliverer = app.forwarder_deliverer()  # type: ignore[attr-defined]

    def bug(events: list[Any]) -> dict[str, int]:
        raise RuntimeError("a bug in delivery")

    monkeypatch.setattr(deliverer, "deliver_task", bug)
    events = _events(2)
    # Celery would acknowledge a failed task's message; the task parks it first.
    result = app.tasks[TASK_NAME].apply(args=[events]).get()
    assert result == {"parked_after_error": 2}
    assert store.retry_depth() == 1
    parked = store.first_retry()
    assert parked is not None
    assert [e["id"] for e in events_in_message(parked)] == [e["id"] for e in events]
    due = store.next_retry_due()
    assert due is not None and 50 < due - time.time() <= 60


def test_more_threads_than_redis_pys_default_pool(settings: Settings, sandbox: Sandbox,
                                                  store: Store) -> None:
    import threading

    deliverer = Deliverer(replace(settings, api_url=sandbox.url, api_key=API_KEY,
                                  concurrency=150))
    batches = [_events(2) for _ in range(150)]
    results: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda b=b: results.append(deliverer.deliver_batch(b)))
               for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Each thread holds a connection of its own: more than redis-py's default 100.
    assert sum(r.get("delivered", 0) for r in results) == 300
    assert len(sandbox.events) == 300


def test_a_chunk_cut_short_by_shutdown_releases_its_claims_and_hands_back(
    settings: Settings, sandbox: Sandbox, store: Store
) -> None:
    live = replace(settings, api_url=sandbox.url, api_key=API_KEY)

    class StopAfterFirst(DistinctClient):
        def send(self, event: Event) -> Outcome:
            outcome = super().send(event)
            deliverer.stopping.set()  # SIGTERM arrives during the first POST
            return outcome

    deliverer = Deliverer(live, client=StopAfterFirst(live))
    counts = deliverer.deliver_batch(_events(5))
    assert counts == {"delivered": 1, "handed_back": 4}
    # The four unsent events are queued again, and none keeps an in-flight
    # claim that would make its new copy wait as "busy".
    assert store.queue_depth() == 1 and not _inflight_keys(store)
