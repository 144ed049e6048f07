"""The shared circuit breaker and rate limit, driven directly against a real Redis."""

from __future__ import annotations

import time

from forwarder.gate import BreakerPolicy, Gate
from forwarder.messages import Event, build_message
from forwarder.store import Store


def _record(store: Store, gate: Gate, signal: str, token: str | None = None,
            reason: str = "transient") -> str:
    with store.client.pipeline(transaction=True) as pipe:
        gate.record(signal, token, reason, pipe)  # type: ignore[arg-type]
        (change,) = pipe.execute()
    return change.decode() if isinstance(change, bytes) else change


def _gate(store: Store, **policy) -> Gate:
    defaults = {"cooldown_min": 0.3, "cooldown_max": 1.0}
    return Gate(store.client, store.namespace, BreakerPolicy(**{**defaults, **policy}))


def test_consecutive_failures_open_it_and_nothing_is_admitted(store):
    gate = _gate(store, consecutive=3, min_requests=1000)
    assert [_record(store, gate, "fail") for _ in range(3)] == ["", "", "opened"]
    state = gate.state()
    assert state.state == "open" and state.reason == "transient"
    admission = gate.admit("e1", "t1", 5)
    assert admission.state == "open" and admission.until > time.time()
    # Nothing was claimed: the event can be parked with its attempts intact.
    assert not store.client.exists(store.inflight_prefix + "e1")


def test_a_success_resets_the_consecutive_count(store):
    gate = _gate(store, consecutive=3, min_requests=1000)
    for signal in ("fail", "fail", "ok", "fail", "fail"):
        assert _record(store, gate, signal) == ""
    assert gate.state().state == "closed"


def test_failure_ratio_over_the_window_opens_it(store):
    gate = _gate(store, consecutive=1000, min_requests=20, ratio=0.5)
    changes = []
    for i in range(20):
        changes.append(_record(store, gate, "fail" if i % 2 else "ok"))
    assert changes[-1] == "opened"
    assert changes[:-1] == [""] * 19


def test_one_probe_at_a_time_then_close_on_success(store):
    gate = _gate(store, consecutive=1)
    assert _record(store, gate, "fail") == "opened"
    time.sleep(0.35)
    probe = gate.admit("p1", "tok-1", 5)
    assert probe.state == "claimed" and probe.probe
    assert gate.admit("p2", "tok-2", 5).state == "open"  # only one probe
    assert _record(store, gate, "ok", "tok-1") == "closed"
    assert gate.state().state == "closed"
    assert gate.admit("p3", "tok-3", 5).state == "claimed"


def test_failed_probe_doubles_the_cooldown_up_to_the_maximum(store):
    gate = _gate(store, consecutive=1, cooldown_min=0.2, cooldown_max=0.5)
    _record(store, gate, "fail")
    cooldowns = []
    for n in range(3):
        wait = max(0.0, gate.state().open_until - time.time()) + 0.05
        time.sleep(wait)
        probe = gate.admit(f"p{n}", f"tok{n}", 5)
        assert probe.probe
        assert _record(store, gate, "fail", f"tok{n}") == "reopened"
        cooldowns.append(gate.state().cooldown)
    assert cooldowns == [0.4, 0.5, 0.5]
    # A failure from a request sent before the breaker opened changes nothing.
    assert _record(store, gate, "fail", "not-the-probe") == ""


def test_auth_failure_opens_at_once_with_its_own_reason(store):
    gate = _gate(store)
    assert _record(store, gate, "auth", reason="auth") == "opened"
    state = gate.state()
    assert state.reason == "auth" and "DISTINCT_API_KEY" in state.hint


def _due_now(store: Store, count: int) -> None:
    now = time.time()
    with store.client.pipeline() as pipe:
        for i in range(count):
            event = Event(id=f"e{i}", kind="user_analytics", experience=None, body={},
                          attempts=1, first_seen=now)
            pipe.zadd(store.retry_key, {build_message([event]): now - 1})
        pipe.execute()


def test_promotion_holds_back_while_open_and_ramps_after_closing(store):
    gate = _gate(store, consecutive=1)
    _due_now(store, 1000)
    _record(store, gate, "fail")
    assert store.promote_due(time.time()) == 0  # open: nothing released
    time.sleep(0.35)
    assert store.promote_due(time.time()) == 1  # one probe candidate
    assert store.promote_due(time.time()) == 0  # and only one
    probe = gate.admit("probe", "tok", 5)
    assert probe.probe
    assert _record(store, gate, "ok", "tok") == "closed"
    first = store.promote_due(time.time())
    assert first == 20  # RAMP_START right after closing
    assert store.retry_depth() == 1000 - 1 - 20


def test_rate_limit_reserves_evenly_spaced_slots(store):
    gate = Gate(store.client, store.namespace, rate_limit=20)
    waits = []
    for i in range(30):
        admission = gate.admit(f"r{i}", "t", 5)
        if admission.state == "claimed":
            waits.append(admission.wait)
        else:
            assert admission.state == "wait" and admission.wait > 0.9
    # 20/s: slot n is reserved n/20 s ahead, up to the 1 s horizon.
    assert len(waits) == 21
    for n, wait in enumerate(waits):
        assert abs(wait - n / 20) < 0.05
