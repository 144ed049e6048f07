"""Redis-side atomicity: promotion, replay and claims under concurrency (real Redis)."""

from __future__ import annotations

import threading
import time

from forwarder import dlq
from forwarder.gate import Gate
from forwarder.ledger import task_id_of
from forwarder.messages import Event, build_message, events_in_message
from forwarder.store import Store, connect


def _event(i: int, now: float) -> Event:
    return Event(id=f"e-{i}", kind="capture", experience="x",
                 body={"type": "PHOTO_VIEWED_BY_USER", "eventValue": f"v{i}"},
                 attempts=1, first_seen=now)


def _run_parallel(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_promote_moves_each_due_retry_exactly_once_under_concurrency(store, redis_url):
    now = time.time()
    with store.client.pipeline() as pipe:
        for i in range(2000):
            pipe.zadd(store.retry_key, {build_message([_event(i, now)]): now - 1})
        for i in range(2000, 2050):  # not due yet
            pipe.zadd(store.retry_key, {build_message([_event(i, now)]): now + 3600})
        pipe.execute()

    def promoter() -> None:
        own = Store(connect(redis_url), store.namespace)
        while own.promote_due(time.time(), 37):
            pass

    _run_parallel(promoter, 8)
    moved = store.client.lrange(store.queue_key, 0, -1)
    ids = [events_in_message(m)[0]["id"] for m in moved]
    assert len(ids) == 2000
    assert len(set(ids)) == 2000
    assert store.retry_depth() == 50
    assert store.next_retry_due() > now + 3000


def test_claim_states(store):
    gate = Gate(store.client, store.namespace)
    assert gate.admit("a", "t1", 5).state == "claimed"
    assert gate.admit("a", "t2", 5).state == "busy"
    store.mark_delivered("a", "t1", 60, time.time())
    assert gate.admit("a", "t3", 5).state == "delivered"
    # The claim was released by its owner.
    assert not store.client.exists(store.inflight_prefix + "a")


def test_release_never_drops_someone_elses_claim(store):
    gate = Gate(store.client, store.namespace)
    assert gate.admit("b", "mine", 0.05).state == "claimed"
    time.sleep(0.1)
    assert gate.admit("b", "theirs", 5).state == "claimed"
    store.schedule_retry("b", "mine", "msg", time.time() + 10, time.time())
    assert store.client.get(store.inflight_prefix + "b") == b"theirs"


def _dead(store: Store, i: int, now: float) -> None:
    entry = {"id": f"d-{i}", "kind": "capture", "experience": "x",
             "body": {"type": "PHOTO_VIEWED_BY_USER", "eventValue": f"v{i}"},
             "attempts": 3, "first_seen": now, "last_attempt": now, "last_status": 400,
             "last_error": "no", "reason": "rejected", "dead_at": now}
    store.dead_letter(entry, None, now)


def test_replay_from_two_terminals_at_once_pushes_each_entry_once(store, redis_url):
    now = time.time()
    for i in range(500):
        _dead(store, i, now)
    reports = []

    def replayer() -> None:
        reports.append(dlq.replay(Store(connect(redis_url), store.namespace)))

    _run_parallel(replayer, 4)
    pushed = store.client.lrange(store.queue_key, 0, -1)
    ids = [events_in_message(m)[0]["id"] for m in pushed]
    assert sorted(ids) == sorted(f"d-{i}" for i in range(500))
    assert sum(len(r.replayed) for r in reports) == 500
    assert store.dlq_depth() == 0
    # A replayed event starts afresh, so its max age counts from the replay.
    first = events_in_message(pushed[0])[0]
    assert first["attempts"] == 0 and first["first_seen"] >= now


def test_replay_skips_entries_whose_event_was_delivered(store):
    now = time.time()
    _dead(store, 1, now)
    _dead(store, 2, now)
    store.mark_delivered("d-1", None, 60, now)
    report = dlq.replay(store, ["d-1", "d-2", "d-404"])
    assert report.skipped == ["d-1"]
    assert report.replayed == ["d-2"]
    assert report.missing == ["d-404"]
    assert store.queue_depth() == 1 and store.dlq_depth() == 0


def test_purge_removes_entry_and_index(store):
    now = time.time()
    for i in range(3):
        _dead(store, i, now)
    assert dlq.purge(store, ["d-0"]) == 1
    assert store.dlq_ids() == ["d-1", "d-2"]
    assert dlq.purge(store) == 2
    assert store.dlq_depth() == 0 and store.client.zcard(store.dlq_index_key) == 0


def test_ledger_follows_each_queued_message_until_its_task_starts(store):
    now = time.time()
    messages = [build_message([_event(i, now)]) for i in range(5)]
    store.enqueue(messages[:3])
    store.enqueue(messages[3:])
    assert store.ledger_depth() == 5
    ids = [task_id_of(m) for m in messages]
    # The queue is FIFO: BRPOP takes the first one queued.
    taken = store.client.rpop(store.queue_key).decode()
    assert task_id_of(taken) == ids[0]
    assert store.task_started(ids[1]) and not store.task_started("unknown")
    assert store.queue_front() == 2 and store.ledger_depth() == 4
    # ids[0] was taken but never started: below the front, it is queued again.
    assert store.sweep_ledger(store.queue_front()) == 1
    queued = [task_id_of(m.decode()) for m in store.client.lrange(store.queue_key, 0, -1)]
    assert queued.count(ids[0]) == 1 and queued[0] == ids[0]  # at the back
    # Its new sequence number is above the front: not swept again meanwhile.
    assert store.sweep_ledger(store.queue_front()) == 0


def test_promotion_and_replay_write_the_ledger_too(store):
    now = time.time()
    store.client.zadd(store.retry_key, {build_message([_event(1, now)]): now - 1})
    _dead(store, 9, now)
    assert store.promote_due(time.time()) == 1
    dlq.replay(store)
    assert store.ledger_depth() == 2 and store.queue_depth() == 2
