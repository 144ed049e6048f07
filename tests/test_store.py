"""Redis-side atomicity: promotion, replay and claims under concurrency (real Redis)."""

from __future__ import annotations

import threading
import time

from forwarder import dlq
from forwarder.gate import Gate
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


def _values(messages: list[str]) -> list[str]:
    return [e["body"]["eventValue"] for m in messages for e in events_in_message(m)]


def test_a_taken_batch_leaves_the_queue_and_comes_back_only_if_never_released(store):
    now = time.time()
    store.enqueue([build_message([_event(i, now)]) for i in range(5)])
    # FIFO: the oldest messages are taken first, in order.
    batch, taken = store.take(3)
    assert _values(taken) == ["v0", "v1", "v2"] and store.queue_depth() == 2
    assert store.taken_depth() == 1
    # Released with one event handed back: that one is queued, the batch is gone.
    store.release(batch, [build_message([_event(7, now)])])
    assert store.taken_depth() == 0 and store.queue_depth() == 3
    # A batch whose worker died comes back whole once its deadline passes.
    _lost, taken = store.take(10, hold=0.2)
    assert len(taken) == 3 and store.queue_depth() == 0
    assert store.restore_taken() == 0
    time.sleep(0.3)
    assert store.restore_taken() == 3
    assert sorted(_values(store.fetching(store.queue_key))) == ["v3", "v4", "v7"]
    assert store.taken_depth() == 0 and store.restore_taken() == 0
    # A take stops once its messages carry the events asked for.
    store.client.delete(store.queue_key)
    store.enqueue([build_message([_event(i, now) for i in range(20)]),
                   build_message([_event(i, now) for i in range(20)]),
                   build_message([_event(99, now)])])
    batch, taken = store.take(10, events=25)
    assert [len(events_in_message(m)) for m in taken] == [20, 20]
    store.release(batch)
    # An empty take leaves nothing behind.
    store.client.delete(store.queue_key)
    batch, taken = store.take(5)
    assert taken == [] and store.taken_depth() == 0


def test_a_message_stranded_in_a_fetch_list_is_rescued_once(store):
    now = time.time()
    store.enqueue([build_message([_event(i, now)]) for i in range(2)])
    fetch_list = f"{store.namespace}:fetching:host:1:dead"
    stranded = store.client.lmove(store.queue_key, fetch_list, "RIGHT", "LEFT").decode()
    store.client.zadd(store.fetchers_key, {fetch_list: now - 3600})
    assert store.fetchers() == [(fetch_list, now - 3600)]
    assert store.fetching(fetch_list) == [stranded] and store.fetching_depth() == 1
    # Two sweepers at once: the message is queued again exactly once.
    assert store.rescue(fetch_list, [stranded]) == 1
    assert store.rescue(fetch_list, [stranded]) == 0
    assert store.queue_depth() == 2 and store.fetching_depth() == 0
    # A silent, empty fetch list is forgotten; a live one is kept.
    assert not store.forget_fetcher(fetch_list, now - 7200)
    assert store.forget_fetcher(fetch_list, now)
    assert store.fetchers() == []


def test_capture_promotion_and_replay_are_plain_pushes(store):
    now = time.time()
    store.client.zadd(store.retry_key, {build_message([_event(1, now)]): now - 1})
    _dead(store, 9, now)
    store.enqueue([build_message([_event(2, now)])])
    assert store.promote_due(time.time()) == 1
    dlq.replay(store)
    assert store.queue_depth() == 3
    # Nothing but the queue holds them: no second copy per queued message.
    names = {k.decode().split(":", 1)[1] for k in store.client.keys(f"{store.namespace}:*")}
    assert {n for n in names if not n.startswith(("dlq", "stats:"))} == {"deliver"}
