"""Every Lua script, run directly against a real Redis, plus the loader that runs them.

Each script is called here the way production calls it (the same LuaScript
objects, the same named KEYS and ARGV); test_every_script_has_a_direct_test
fails when a new .lua file lands without one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

from forwarder import dlq
from forwarder.scripts import LuaScript, parse_layout, read_library, script
from forwarder.store import Store, connect, dedupe_member
from tests.helpers import (
    HELD_WORKER,
    add_dead_letter,
    claimed,
    dead_letter_entry,
    held_key,
    item,
    queued,
    store_outcomes,
)
from workers.gate import BreakerPolicy, Gate
from workers.holding import Holding
from workers.outcomes import Finish, dead_letter
from workers.promoter import RetryPromoter

ROOT = Path(__file__).resolve().parent.parent


#: (package, name) of every script run by the tests of this module.
RAN: set[tuple[str, str]] = set()


@pytest.fixture(autouse=True)
def _record_scripts_run(monkeypatch):
    original = LuaScript.__call__

    def recording(self, client, *, rest=(), **named):
        RAN.add((self.package, self.name))
        return original(self, client, rest=rest, **named)

    monkeypatch.setattr(LuaScript, "__call__", recording)


def _run_parallel(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the loader ------------------------------------------------------------------------
def test_layout_is_read_from_the_header_and_bound_by_name():
    layout = parse_layout("-- what it does\n--! KEYS a b\n--! ARGV x\n--! ARGV* rest\n"
                          "--! include lib/now.lua\nreturn 1\n--! KEYS late\n")
    assert (layout.keys, layout.args, layout.rest) == (("a", "b"), ("x",), "rest")
    assert layout.includes == ("lib/now.lua",)
    with pytest.raises(ValueError):
        parse_layout("--! KEYS a a\n")
    with pytest.raises(ValueError):
        parse_layout("--! KEYS Bad-Name\n")


def test_a_call_with_a_missing_or_unknown_name_never_reaches_redis(store):
    take = script("take", "workers")
    with pytest.raises(TypeError, match="missing"):
        take(store.client, queue="q", landing="l", held="h", batch="b", limit=1)
    with pytest.raises(TypeError, match="unknown"):
        take(store.client, queue="q", landing="l", held="h", batch="b", limit=1, free=1,
             least=1, extra=2)
    with pytest.raises(TypeError, match="variadic"):
        take(store.client, queue="q", landing="l", held="h", batch="b", limit=1, free=1,
             least=1, rest=[1])


def _all_scripts() -> list[tuple[str, str]]:
    found = []
    for package in ("forwarder", "workers"):
        for entry in resources.files(package).joinpath("lua").iterdir():
            if entry.name.endswith(".lua"):
                found.append((package, entry.name[:-4]))
    return sorted(found)


@pytest.mark.parametrize("package,name", _all_scripts())
def test_every_script_loads_with_its_libraries_and_compiles(store, package, name):
    lua = LuaScript(name, package)
    # SCRIPT LOAD compiles it: a syntax error or a missing include fails here.
    sha = store.client.script_load(lua.source)
    assert re.fullmatch(r"[0-9a-f]{40}", _text(sha))
    # The libraries define constants and functions only: nothing runs at
    # include time.
    for include in lua.layout.includes:
        text = read_library(package, include)
        code = [line for line in text.splitlines() if line and not line.startswith("--")]
        while code and re.fullmatch(r"local [A-Z_]+ = \d+", code[0]):
            code.pop(0)
        assert code and code[0].startswith("local function "), include


# --- take, requeue_held, requeue_worker, beat (workers/holding.py) -------------------------
def test_take_holds_events_in_fields_and_spreads_a_short_backlog(store):
    holding = Holding(store.client, store.namespace, HELD_WORKER)
    store.enqueue([item(i) for i in range(10)])
    taken = holding.take("b1", limit=32, free=5)  # 10 queued over 5 free slots: 2
    assert len(taken.items) == 2
    assert json.loads(taken.items[0])["body"]["eventValue"] == "evt-0"  # oldest first
    assert holding.load("b1", 2) == [("b1:1", taken.items[0]), ("b1:2", taken.items[1])]
    big = holding.take("b2", limit=32, free=1)
    assert len(big.items) == 8 and store.queue_depth() == 0
    assert holding.client.hlen(holding.held_key) == 10
    assert holding.take("b3", limit=32, free=1).items == []


def test_take_cuts_a_short_backlog_no_finer_than_least(store):
    holding = Holding(store.client, store.namespace, HELD_WORKER)
    store.enqueue([item(i) for i in range(10)])
    assert len(holding.take("b1", limit=32, free=10, least=4).items) == 4  # not 1
    assert len(holding.take("b2", limit=32, free=2, least=1).items) == 3  # its share
    assert len(holding.take("b3", limit=32, free=10, least=8).items) == 3  # all there is


def test_take_includes_what_landed_while_waiting(store):
    holding = Holding(store.client, store.namespace, HELD_WORKER)
    store.enqueue([item(1)])
    assert holding.wait_for_work(0.1)
    assert store.queue_depth() == 0  # it is in the landing list, held by this worker
    assert not holding.wait_for_work(0.1)  # an empty queue: the wait times out
    taken = holding.take("b", limit=32, free=1)
    assert [json.loads(i)["body"]["eventValue"] for i in taken.items] == ["evt-1"]
    assert not store.client.exists(holding.landing_key)


def test_requeue_held_hands_back_only_what_is_still_held(store):
    holding = Holding(store.client, store.namespace, HELD_WORKER)
    store.enqueue([item(i) for i in range(3)])
    holding.take("b", limit=32, free=1)
    store.client.hdel(holding.held_key, "b:2")  # its outcome was stored meanwhile
    assert holding.requeue_held(["b:1", "b:2", "b:3"]) == 2
    assert [e["body"]["eventValue"] for e in queued(store)] == ["evt-0", "evt-2"]
    assert holding.client.hlen(holding.held_key) == 0


def test_beat_registers_and_says_when_declared_dead(store):
    holding = Holding(store.client, store.namespace, "w-1")
    assert holding.beat(first=True, info={"host": "h", "pid": 7})
    (worker,) = store.workers()
    assert worker.id == "w-1" and worker.info["host"] == "h" and worker.info["pid"] == "7"
    assert 0 <= time.time() - worker.last_beat < 5
    assert holding.beat()
    store.client.zrem(holding.workers_key, "w-1")  # a sweeper declared it dead
    assert holding.beat() is False


def test_requeue_worker_brings_back_a_silent_workers_events_and_claims(store):
    dead = Holding(store.client, store.namespace, "dead-1")
    live = Holding(store.client, store.namespace, "live-1")
    dead.beat(first=True)
    live.beat(first=True)
    store.enqueue([item(i) for i in range(5)])
    taken = dead.take("b", limit=3, free=1)
    store.client.lpush(dead.landing_key, item(9))
    token = dead.claim_token()
    gate = Gate(store.client, store.namespace)
    first_id = json.loads(taken.items[0])["id"]
    assert gate.admit_many([first_id], token, 60)[0].state == "claimed"
    other = Gate(store.client, store.namespace).admit_many(["0b8e7a52-0c1e-4d4f-9a57-"
                                                           "1f7a3c2b9d10"], "someone|x", 60)
    assert other[0].state == "claimed"
    # Alive (beat just now): nothing happens.
    assert live.requeue_worker("dead-1", silent_for=20) == -1
    assert live.silent_workers(20) == []
    # Silent for longer than the bound: everything comes back, once.
    store.client.zadd(live.workers_key, {"dead-1": time.time() - 60})
    assert live.silent_workers(20) == ["dead-1"]
    assert live.requeue_worker("dead-1", silent_for=20) == 4
    assert live.requeue_worker("dead-1", silent_for=20) == 0
    assert store.queue_depth() == 2 + 4
    assert [w.id for w in store.workers()] == ["live-1"]
    assert not store.client.exists(dead.held_key, dead.landing_key, dead.info_key)
    # Its claim is gone, so the event is sent again now; another worker's stays.
    assert claimed(store) == {"0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10": "someone|x"}
    assert store.client.zcard(f"{store.namespace}:claim_tokens") == 1  # someone's


# --- finish (workers/outcomes.py) ------------------------------------------------------------
def test_finish_stores_each_outcome_and_takes_it_out_of_held(store):
    dead_entry = dead_letter_entry(1)
    retried = item(2, attempts=1)
    changes = store_outcomes(store, [
        Finish("b:1", "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10", "delivered",
               dedupe_member("0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10")),
        Finish("b:2", "id-2", "retried", retried, 30.0),
        dead_letter("b:3", dead_entry),
        Finish("b:4", "id-4", "skipped"),
    ])
    assert changes == []
    assert store.is_delivered("0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10")
    assert _text(store.first_retry()) == retried
    due = store.next_retry_due()
    assert due is not None and 28 < due - time.time() <= 30.5  # Redis clock + delay
    assert store.dlq_get([dead_entry["id"]])[0]["reason"] == "rejected"
    assert store.dlq_depth_by_reason() == {"rejected": 1}
    assert store.client.hlen(held_key(store)) == 0
    counts = store.outcome_counts(time.time(), 1)
    assert (counts["delivered"], counts["retried"], counts["dead_lettered"]) == (1, 1, 1)


def test_finish_of_an_event_no_longer_held_keeps_only_delivered(store):
    outcomes_ = [Finish("gone:1", "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d11", "delivered",
                        dedupe_member("0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d11")),
                 Finish("gone:2", "id-2", "retried", item(2), 1.0),
                 dead_letter("gone:3", dead_letter_entry(3))]
    from tests.helpers import outcomes
    outcomes(store).store("", outcomes_)  # nothing held: a sweeper requeued them
    assert store.is_delivered("0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d11")  # a fact about Distinct
    assert store.retry_depth() == 0 and store.dlq_depth() == 0


def test_finish_releases_only_its_own_claim(store):
    gate = Gate(store.client, store.namespace)
    event_id = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d12"
    assert gate.admit_many([event_id], "mine", 0.05)[0].state == "claimed"
    time.sleep(0.1)  # expired, and another worker claimed it since
    assert gate.admit_many([event_id], "theirs", 5)[0].state == "claimed"
    store_outcomes(store, [Finish("b:1", event_id, "retried", item(1), 10.0)], token="mine")
    assert claimed(store) == {event_id: "theirs"}
    store_outcomes(store, [Finish("b:2", event_id, "released")], token="theirs")
    assert claimed(store) == {}
    assert store.client.hexists(held_key(store), "b:2")  # released: still held


def test_a_chunks_claims_go_with_its_last_outcome_and_no_others(store):
    gate = Gate(store.client, store.namespace)
    first, second, other = (f"0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d2{i}" for i in range(3))
    assert [a.state for a in gate.admit_many([first, second], "w|chunk", 30)] == ["claimed"] * 2
    assert gate.admit_many([other], "w|other", 30)[0].state == "claimed"
    tokens = store.client.zrange(f"{store.namespace}:claim_tokens", 0, -1, withscores=True)
    assert len({score for _, score in tokens}) == 2  # a score of its own per chunk
    store_outcomes(store, [Finish("b:1", first, "delivered", dedupe_member(first), signal="ok")],
                   token="w|chunk", last=False)
    assert claimed(store) == {first: "w|chunk", second: "w|chunk",  # the chunk goes on
                              other: "w|other"}
    assert gate.admit_many([first], "w|again", 30)[0].state == "delivered"
    store_outcomes(store, [Finish("b:2", second, "retried", item(2), 10.0, signal="fail")],
                   token="w|chunk", last=True)
    assert claimed(store) == {other: "w|other"}
    assert store.client.zrange(f"{store.namespace}:claim_tokens", 0, -1) == [b"w|other"]


# The breaker, through finish.lua as production runs it.
def _signal(store, signal: str, token: str = "", policy: BreakerPolicy | None = None,
            reason: str = "transient") -> str:
    changes = store_outcomes(store, [Finish(f"b:{time.monotonic_ns()}", "id", "retried",
                                            item(0), 60.0, "", signal, reason)],
                             token=token, policy=policy)
    return changes[0] if changes else ""


def _policy(**overrides) -> BreakerPolicy:
    return BreakerPolicy(**{"cooldown_min": 0.3, "cooldown_max": 1.0, **overrides})


def test_breaker_consecutive_failures_open_it_and_nothing_is_admitted(store):
    policy = _policy(consecutive=3, min_requests=1000)
    assert [_signal(store, "fail", policy=policy) for _ in range(3)] == ["", "", "opened"]
    state = store.breaker()
    assert state.state == "open" and state.reason == "transient"
    admission = Gate(store.client, store.namespace).admit_many(["e1"], "t1", 5)[0]
    assert admission.state == "open" and 0 < admission.wait <= 0.3
    assert claimed(store) == {}


def test_breaker_a_success_resets_the_consecutive_count(store):
    policy = _policy(consecutive=3, min_requests=1000)
    for signal in ("fail", "fail", "ok", "fail", "fail"):
        assert _signal(store, signal, policy=policy) == ""
    assert store.breaker().state == "closed"


def test_breaker_one_group_counts_its_answers_in_order(store):
    # One finish call carrying several threads' outcomes: the successes before
    # a failure end the run of failures first, as they came; those after it
    # end the run again.
    policy = _policy(consecutive=2, min_requests=1000)
    def finish(i: int, signal: str) -> Finish:
        return Finish(f"g:{i}", f"id-{i}", "retried", item(i), 60.0, "", signal, "transient")
    group = [finish(0, "fail"), finish(1, "ok"), finish(2, "ok"), finish(3, "fail"),
             finish(4, "ok")]
    assert store_outcomes(store, group, policy=policy) == []
    assert store.breaker().state == "closed"
    assert store.client.hget(f"{store.namespace}:breaker", "consecutive") == b"0"
    from tests.helpers import outcomes
    group = [finish(5, "ok"), finish(6, "fail"), finish(7, "fail")]
    assert outcomes(store, policy).store_groups([("", group[:1], False),
                                                 ("", group[1:], False)]) == [
        [""], ["", "opened"]]


def test_breaker_failure_ratio_over_the_window_opens_it(store):
    policy = _policy(consecutive=1000, min_requests=20, ratio=0.5)
    changes = [_signal(store, "fail" if i % 2 else "ok", policy=policy) for i in range(20)]
    assert changes[-1] == "opened" and changes[:-1] == [""] * 19


def test_breaker_one_probe_at_a_time_then_close_on_success(store):
    policy = _policy(consecutive=1)
    assert _signal(store, "fail", policy=policy) == "opened"
    time.sleep(0.35)
    gate = Gate(store.client, store.namespace)
    probe = gate.admit_many(["p1"], "tok-1", 5)[0]
    assert probe.state == "claimed" and probe.probe
    assert gate.admit_many(["p2"], "tok-2", 5)[0].state == "open"  # only one probe
    assert _signal(store, "ok", "tok-1", policy) == "closed"
    assert store.breaker().state == "closed"


def test_breaker_failed_probe_doubles_the_cooldown_up_to_the_maximum(store):
    policy = _policy(consecutive=1, cooldown_min=0.2, cooldown_max=0.5)
    assert _signal(store, "fail", policy=policy) == "opened"
    gate = Gate(store.client, store.namespace)
    cooldowns = []
    for n in range(3):
        time.sleep(store.breaker().cooldown + 0.05)
        assert gate.admit_many([f"p{n}"], f"tok{n}", 5)[0].probe
        assert _signal(store, "fail", f"tok{n}", policy) == "reopened"
        cooldowns.append(store.breaker().cooldown)
    assert cooldowns == [0.4, 0.5, 0.5]
    # A failure that was not the probe (sent before it opened) changes nothing.
    assert _signal(store, "fail", "someone-else", policy) == ""


def test_breaker_auth_failure_opens_at_once_with_its_own_reason(store):
    assert _signal(store, "auth", policy=_policy(), reason="auth") == "opened"
    state = store.breaker()
    assert state.reason == "auth" and "DISTINCT_API_KEY" in state.hint


# --- admit (workers/gate.py) -------------------------------------------------------------------
def test_admit_claim_states(store):
    gate = Gate(store.client, store.namespace)
    event_id = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d13"
    assert gate.admit_many([event_id], "t1", 5)[0].state == "claimed"
    assert gate.admit_many([event_id], "t2", 5)[0].state == "busy"
    store_outcomes(store, [Finish("b:1", event_id, "delivered", dedupe_member(event_id))],
                   token="t1")
    assert gate.admit_many([event_id], "t3", 5)[0].state == "delivered"
    assert claimed(store) == {}


def test_admit_the_same_id_twice_in_one_chunk_claims_it_once(store):
    gate = Gate(store.client, store.namespace)
    states = [a.state for a in gate.admit_many(["dup", "other", "dup"], "t1", 5)]
    assert states == ["claimed", "claimed", "busy"]


def test_admit_rate_limit_reserves_evenly_spaced_slots(store):
    gate = Gate(store.client, store.namespace, rate_limit=20)
    # When each claimed event may be sent, on this process's clock: Redis read
    # its own clock somewhere inside the call, so a slot is known to within the
    # call's duration.
    slots: list[tuple[float, float]] = []  # (slot, uncertainty)
    start = time.monotonic()
    for i in range(30):
        asked = time.monotonic()
        admission = gate.admit_many([f"r{i}"], "t", 5)[0]
        answered = time.monotonic()
        if admission.state == "claimed":
            assert admission.wait <= 1.0
            slots.append((asked + admission.wait, answered - asked))
        else:
            assert admission.state == "wait" and admission.wait > 0.9
    elapsed = time.monotonic() - start
    # 20/s: slot n is n/20 s after the first, reserved up to 1 s ahead, so 21
    # slots at once (more on a machine slow enough that time moved meanwhile).
    assert 21 <= len(slots) <= 21 + elapsed * 20 + 1
    first, first_doubt = slots[0]
    for n, (slot, doubt) in enumerate(slots):
        assert abs(slot - (first + n / 20)) <= first_doubt + doubt + 0.002


def test_claims_past_their_time_are_free_and_gone(store):
    gate = Gate(store.client, store.namespace)
    assert [a.state for a in gate.admit_many(["a", "b"], "w|t1", 0.05)] == ["claimed"] * 2
    assert gate.admit_many(["c"], "w|t2", 60)[0].state == "claimed"
    assert gate.admit_many(["a", "c"], "w|t3", 60)[0].state == "busy"
    time.sleep(0.1)
    assert gate.admit_many(["a"], "w|t3", 60)[0].state == "claimed"  # free again
    # "b" was never released: it is free, and the heartbeat's sweep forgets it.
    assert claimed(store) == {"a": "w|t3", "c": "w|t2"}
    assert Holding(store.client, store.namespace, "w").expire_claims() == 1
    claims = store.client.zrange(f"{store.namespace}:claims", 0, -1)
    assert sorted(claims) == [b"a", b"c"] and set(claimed(store)) == {"a", "c"}
    assert sorted(store.client.zrange(f"{store.namespace}:claim_tokens", 0, -1)) == [
        b"w|t2", b"w|t3"]


def test_a_group_of_outcomes_from_several_chunks_is_one_call(store):
    from tests.helpers import outcomes
    from workers.outcomes import GroupCommit

    group = GroupCommit(outcomes(store))
    ids = [f"0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b{i:04d}" for i in range(40)]
    for i in range(len(ids)):
        store.client.hset(held_key(store), f"b:{i}", "held")
    gate = Gate(store.client, store.namespace)
    tokens = [f"w|chunk{i % 4}" for i in range(40)]
    for event_id, token in zip(ids, tokens, strict=True):
        gate.admit_many([event_id], token, 60)
    threads = [threading.Thread(target=group.store, args=(
        tokens[i], [Finish(f"b:{i}", ids[i], "delivered", dedupe_member(ids[i]), signal="ok")],
        i >= 36)) for i in range(40)]  # the last outcome of each chunk releases its claims
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(store.is_delivered(i) for i in ids)
    assert store.client.hlen(held_key(store)) == 0
    assert not store.client.exists(f"{store.namespace}:claims", f"{store.namespace}:claim_tokens")
    assert 1 <= group.calls < 40  # threads waiting together shared calls


def test_the_outcome_writer_waits_for_posts_in_flight_and_only_for_them(store):
    from tests.helpers import outcomes
    from workers.outcomes import GroupCommit

    ids = [f"0b8e7a52-0c1e-4d4f-9a57-1f7a3c2c{i:04d}" for i in range(4)]
    for i in range(4):
        store.client.hset(held_key(store), f"b:{i}", "held")

    def delivered(i: int) -> list[Finish]:
        return [Finish(f"b:{i}", ids[i], "delivered", dedupe_member(ids[i]), signal="ok")]

    in_post = [1]  # another thread is in a POST
    group = GroupCommit(outcomes(store), in_post=lambda: in_post[0])
    group.LINGER_SECONDS = 2.0  # bounded: the group is stored at the latest then
    first = threading.Thread(target=group.store, args=("", delivered(0)))
    first.start()
    time.sleep(0.3)
    assert not store.is_delivered(ids[0])  # waiting for the POST in flight
    started = time.monotonic()
    group.store("", delivered(1))  # the other thread's outcome: one call for both
    first.join(5)
    assert group.calls == 1 and store.is_delivered(ids[0]) and store.is_delivered(ids[1])
    assert time.monotonic() - started < 2.5
    in_post[0] = 0  # nobody else is sending: no wait at all
    started = time.monotonic()
    group.store("", delivered(2))
    group.store("", delivered(3))
    assert group.calls == 3 and time.monotonic() - started < 1.0


# --- promote (workers/promoter.py) -------------------------------------------------------------
def _due(store: Store, n: int, delay: float = -1.0, start: int = 0) -> None:
    now = time.time()
    with store.client.pipeline() as pipe:
        for i in range(start, start + n):
            pipe.zadd(store.retry_key, {item(i, attempts=1): now + delay})
        pipe.execute()


def test_promote_moves_each_due_retry_exactly_once_under_concurrency(store, redis_url):
    _due(store, 2000)
    _due(store, 50, delay=3600, start=2000)  # not due yet

    def promoter() -> None:
        own = RetryPromoter(Store(connect(redis_url), store.namespace))
        while own.promote_due(37):
            pass

    _run_parallel(promoter, 8)
    ids = [e["id"] for e in queued(store)]
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert store.retry_depth() == 50
    assert store.next_retry_due() > time.time() + 3000


def test_promote_holds_back_while_open_and_ramps_after_closing(store):
    promoter = RetryPromoter(store)
    _due(store, 1000)
    policy = _policy(consecutive=1)
    _signal(store, "fail", policy=policy)  # opens; that outcome parked one more retry
    assert promoter.promote_due() == 0  # open: nothing released
    time.sleep(0.35)
    assert promoter.promote_due() == 1  # one probe candidate
    assert promoter.promote_due() == 0  # and only one
    assert Gate(store.client, store.namespace).admit_many(["probe"], "tok", 5)[0].probe
    assert _signal(store, "ok", "tok", policy) == "closed"
    assert promoter.promote_due() == 20  # RAMP_START right after closing
    assert store.retry_depth() == 1000 + 2 - 1 - 20


# --- the dead-letter queue (forwarder/store.py, forwarder/dlq.py) -------------------------------
def test_replay_from_two_terminals_at_once_queues_each_entry_once(store, redis_url):
    entries = [add_dead_letter(store, dead_letter_entry(i)) for i in range(300)]
    reports = []
    _run_parallel(lambda: reports.append(dlq.replay(Store(connect(redis_url),
                                                          store.namespace))), 4)
    ids = [e["id"] for e in queued(store)]
    assert sorted(ids) == sorted(entries)
    assert sum(len(r.replayed) for r in reports) == 300
    assert store.dlq_depth() == 0 and store.dlq_depth_by_reason() == {}
    # A replayed event starts afresh, so its max age counts from the replay.
    first = queued(store)[0]
    assert first["attempts"] == 0 and first["first_seen"] >= time.time() - 60


def test_replay_skips_entries_whose_event_was_delivered(store):
    one, two = (add_dead_letter(store, dead_letter_entry(i)) for i in (1, 2))
    store_outcomes(store, [Finish("x:1", one, "delivered", dedupe_member(one))])
    missing = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10"
    report = dlq.replay(store, [one, two, missing])
    assert (report.skipped, report.replayed, report.missing) == ([one], [two], [missing])
    assert store.queue_depth() == 1 and store.dlq_depth() == 0


def test_dlq_delete_and_expire_keep_the_indexes_in_step(store):
    ids = [add_dead_letter(store, dead_letter_entry(i, reason=r))
           for i, r in enumerate(["rejected", "expired", "rejected"])]
    assert dlq.purge(store, [ids[0]]) == 1
    assert store.dlq_ids() == ids[1:]
    assert store.dlq_depth_by_reason() == {"expired": 1, "rejected": 1}
    old = dead_letter_entry(9, dead_at=time.time() - 10 * 86400)
    store.dlq_put([old])
    assert store.dlq_expire(time.time(), ttl=86400) == 1  # via "dlq_expire"
    assert store.dlq_get([old["id"]]) == [None]
    assert dlq.purge(store) == 2  # via "dlq_delete"
    assert store.dlq_depth() == 0 and store.client.zcard(store.dlq_index_key) == 0
    assert store.dlq_depth_by_reason() == {}


def test_dlq_import_replaces_an_entry_and_its_reason_atomically(store):
    entry = dead_letter_entry(1, reason="exhausted")
    add_dead_letter(store, entry)
    store.dlq_put([{**entry, "reason": "rejected", "attempts": 7}])  # via "dlq_import"
    assert store.dlq_get([entry["id"]])[0]["attempts"] == 7
    assert store.dlq_depth_by_reason() == {"rejected": 1}


def test_is_delivered_looks_through_the_whole_window(store):
    event_id = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d14"
    assert not store.is_delivered(event_id)  # via "is_delivered"
    # Delivered 24 hours ago: still in the window (its 6-hour set is kept 24 h
    # past its end).
    span = int((time.time() - 86400) // 21600)
    store.client.sadd(f"{store.namespace}:dedupe:{span}", dedupe_member(event_id))
    assert store.is_delivered(event_id)
    # One more set back has expired by now in Redis, so it is not looked at.
    other = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d15"
    store.client.sadd(f"{store.namespace}:dedupe:{span - 1}", dedupe_member(other))
    assert not store.is_delivered(other)


def test_delivered_sets_expire_a_window_after_their_six_hours(store):
    event_id = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d16"
    store_outcomes(store, [Finish("d:1", event_id, "delivered", dedupe_member(event_id))])
    keys = store.client.keys(f"{store.namespace}:dedupe:*")
    assert len(keys) == 1
    span = int(keys[0].rsplit(b":", 1)[1])
    assert store.client.ttl(keys[0]) == pytest.approx((span + 1) * 21600 + 86400 - time.time(),
                                                       abs=3)


def test_ids_in_0_1_hourly_sets_are_still_found(store):
    # 0.1 workers remembered ids in one set per hour of delivery; until those
    # expire, a rolling upgrade must not POST their ids again.
    event_id = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d17"
    hour = int(time.time() // 3600) - 20
    store.client.sadd(f"{store.namespace}:delivered:{hour}", dedupe_member(event_id))
    assert store.is_delivered(event_id)
    admission = Gate(store.client, store.namespace).admit_many([event_id], "t", 5)[0]
    assert admission.state == "delivered"


def test_the_gates_of_a_worker_ask_what_0_1_left_once_a_minute(store):
    from workers.gate import Legacy, LegacyState

    clock = [1000.0]
    shared = Legacy(clock=lambda: clock[0])
    gates = [Gate(store.client, store.namespace, legacy=shared) for _ in range(2)]
    assert gates[0].legacy_state() == LegacyState(dedupe=False, claims=False)
    hour = int(time.time() // 3600) - 3
    store.client.sadd(f"{store.namespace}:delivered:{hour}", "x")
    store.client.zadd(f"{store.namespace}:fetchers", {"fetch-list-of-a-0.1-worker": 1.0})
    clock[0] += 59
    assert gates[1].legacy_state() == LegacyState(False, False)  # the answer of a minute ago
    clock[0] += 1
    assert gates[1].legacy_state() == LegacyState(dedupe=True, claims=True)


def test_while_a_0_1_worker_is_registered_claims_are_taken_as_it_takes_them(store):
    # A rolling upgrade: 0.1 workers claim an id with a string of their own,
    # ``inflight:{id}`` -> token, and see only those.
    store.client.zadd(f"{store.namespace}:fetchers", {"fetch-list-of-a-0.1-worker": 1.0})
    gate = Gate(store.client, store.namespace)
    ours, theirs = "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d18", "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d19"
    store.client.set(f"{store.namespace}:inflight:{theirs}", "a-0.1-token", px=30_000)
    states = [a.state for a in gate.admit_many([ours, theirs], "w|t1", 30)]
    assert states == ["claimed", "busy"]  # a 0.1 worker is sending `theirs`
    assert store.client.get(f"{store.namespace}:inflight:{ours}") == b"w|t1"  # 0.1 sees ours
    assert claimed(store) == {ours: "w|t1"}
    store_outcomes(store, [Finish("b:1", ours, "delivered", dedupe_member(ours), signal="ok"),
                           Finish("b:2", theirs, "released")], token="w|t1")
    assert claimed(store) == {}
    assert not store.client.exists(f"{store.namespace}:inflight:{ours}")
    assert store.client.get(f"{store.namespace}:inflight:{theirs}") == b"a-0.1-token"


def test_spool_push_pushes_a_batch_once(store):
    push = script("spool_push")
    marker = f"{store.namespace}:spooled:tok"
    assert push(store.client, queue=store.queue_key, marker=marker, marker_ttl=60,
                rest=[item(1), item(2)]) == 2
    assert push(store.client, queue=store.queue_key, marker=marker, marker_ttl=60,
                rest=[item(1), item(2)]) == -1
    assert store.queue_depth() == 2


# --- upgrade (workers/upgrade.py) ---------------------------------------------------------
def test_upgrade_moves_what_0_1_held_once_it_is_free(store):
    from tests.legacy_format import legacy_message
    from workers.upgrade import drain_legacy

    ns, client = store.namespace, store.client
    client.lpush(f"{ns}:deliver", legacy_message([json.loads(item(1))]))
    now = time.time()
    for tag, age in (("old", 600), ("young", 10)):
        record = json.dumps([json.loads(legacy_message([json.loads(item(2))])), "", "deliver"])
        client.hset(f"{ns}:unacked", tag, record)
        client.zadd(f"{ns}:unacked_index", {tag: now - age})
    client.lpush(f"{ns}:fetching:h:1:a", legacy_message([json.loads(item(3))]))
    client.zadd(f"{ns}:fetchers", {f"{ns}:fetching:h:1:a": now - 600})
    client.hset(f"{ns}:taken:b1", "1", legacy_message([json.loads(item(4))]))
    client.zadd(f"{ns}:taken", {"b1": now - 1})
    assert drain_legacy(client, ns) == 4  # via "upgrade"
    assert store.queue_depth() == 4
    # A young unacked message may still be in a live 0.1 worker's hands: left alone.
    assert client.hkeys(f"{ns}:unacked") == [b"young"]
    assert drain_legacy(client, ns) == 0


def test_every_script_has_a_direct_test():
    """Runs last in this module: every .lua file was run by one of the tests above."""
    assert set(_all_scripts()) - RAN == set()
