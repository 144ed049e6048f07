"""The producer API against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

import forwarder
from forwarder import EnqueueError, Forwarder, InvalidEvent
from forwarder.config import Settings
from forwarder.messages import (
    IDEMPOTENCY_NAMESPACE,
    encode_event,
    encode_new_events,
    parse_event,
    random_uuid,
)
from forwarder.redis_server import free_port
from tests.conftest import capture_event, user_event


def _queued(fwd: Forwarder) -> list[dict]:
    raw = fwd.store.client.lrange(fwd.store.queue_key, 0, -1)
    return [parse_event(item) for item in reversed(raw)]


def test_capture_enqueues_the_event_as_one_json_item(settings):
    fwd = Forwarder(settings=settings)
    before = time.time()
    event_id = fwd.capture(capture_event(1))
    uuid.UUID(event_id)
    raw = fwd.store.client.lrange(fwd.store.queue_key, 0, -1)
    assert len(raw) == 1
    item = json.loads(raw[0])
    assert set(item) == {"id", "kind", "experience", "body", "attempts", "first_seen"}
    assert item["id"] == event_id
    assert item["kind"] == "capture" and item["experience"] == "fifa-cwc-2025"
    assert item["body"] == {**capture_event(1), "recordCapturedAt": "2026-11-28T10:15:00.000Z"}
    assert item["attempts"] == 0 and before <= item["first_seen"] <= time.time()
    # What the worker reads back is exactly what was captured.
    assert parse_event(raw[0])["body"] == item["body"]


@examples(max_examples=200, deadline=None)
@given(bodies=st.lists(st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False,
    allow_infinity=False), st.text(max_size=12)), max_size=4), min_size=1, max_size=3),
    experience=st.none() | st.text(max_size=10), first_seen=st.floats(0, 4e9))
def test_the_template_writes_what_encode_event_writes(bodies, experience, first_seen):
    ids = [random_uuid() for _ in bodies]
    for kind in ("capture", "user_analytics"):
        fast = encode_new_events(kind, experience, ids, bodies, first_seen)
        plain = [encode_event({"id": i, "kind": kind, "experience": experience, "body": b,
                               "attempts": 0, "first_seen": first_seen})
                 for i, b in zip(ids, bodies, strict=True)]
        assert fast == plain


def test_idempotency_key_gives_a_stable_uuid(settings):
    fwd = Forwarder(settings=settings)
    first = fwd.capture(capture_event(1), idempotency_key="order-77")
    second = fwd.user_analytics(user_event(1), idempotency_key="order-77")
    assert first == second == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "order-77"))
    assert fwd.capture(capture_event(1)) != first


def test_invalid_event_raises_with_field_errors_and_enqueues_nothing(settings):
    fwd = Forwarder(settings=settings)
    bad = capture_event(1)
    bad["email"] = "nope"
    with pytest.raises(InvalidEvent) as info:
        fwd.capture(bad)
    assert isinstance(info.value, ValueError)
    assert list(info.value.errors) == ["email"]
    assert "email" in str(info.value)
    assert fwd.store.queue_depth() == 0


def test_capture_requires_an_experience(redis_url, namespace):
    fwd = Forwarder(settings=Settings(redis_url=redis_url, namespace=namespace))
    with pytest.raises(InvalidEvent) as info:
        fwd.capture(capture_event(1))
    assert "experience" in info.value.errors
    with pytest.raises(InvalidEvent) as info:
        fwd.capture(capture_event(1), experience="../admin")
    assert "experience" in info.value.errors
    assert fwd.capture(capture_event(1), experience="other-exp")
    assert _queued(fwd)[0]["experience"] == "other-exp"


def test_capture_many_validates_all_before_enqueueing_any(settings):
    fwd = Forwarder(settings=settings)
    events = [capture_event(i) for i in range(5)]
    events[1]["email"] = None
    events[3]["type"] = "NOPE"
    with pytest.raises(InvalidEvent) as info:
        fwd.capture_many(events)
    assert set(info.value.errors) == {"1.email", "3.type"}
    assert fwd.store.queue_depth() == 0


def test_capture_many_enqueues_all_in_one_round_trip_in_order(settings):
    fwd = Forwarder(settings=settings)
    ids = fwd.capture_many([capture_event(i) for i in range(250)])
    assert len(set(ids)) == 250
    assert fwd.store.queue_depth() == 250
    assert [e["id"] for e in _queued(fwd)] == ids


def test_a_producer_runs_no_lua_script(redis_url):
    """capture() and capture_many() are plain LPUSHes: nothing to register or load."""
    code = (
        "import redis, sys\n"
        "calls = []\n"
        "orig = redis.Redis.register_script\n"
        "redis.Redis.register_script = lambda self, s: calls.append(s) or orig(self, s)\n"
        "from forwarder import Forwarder\n"
        "from forwarder.config import Settings\n"
        "fwd = Forwarder(settings=Settings(redis_url=sys.argv[1], namespace=sys.argv[2], "
        "experience='x', spool_path='off'))\n"
        "event = {'type': 'PHOTO_VIEWED_BY_USER', 'eventValue': 'e', "
        "'recordCapturedAt': '2026-11-28T10:15:00Z', 'email': 'a@example.com'}\n"
        "fwd.capture(event); fwd.capture_many([event] * 3)\n"
        "fwd.store.client.delete(fwd.store.queue_key)\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, redis_url, f"t-{uuid.uuid4().hex[:8]}"],
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "0"


def test_module_level_functions_use_the_environment(redis_url, namespace, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FORWARDER_NAMESPACE", namespace)
    monkeypatch.setenv("DISTINCT_EXPERIENCE", "env-exp")
    monkeypatch.setattr(forwarder.producer, "_default", None)
    event_id = forwarder.capture(capture_event(1))
    forwarder.user_analytics(user_event(2))
    fwd = forwarder.default_forwarder()
    assert fwd.settings.namespace == namespace
    queued = _queued(fwd)
    assert queued[0]["id"] == event_id
    assert queued[0]["experience"] == "env-exp"
    assert queued[1]["kind"] == "user_analytics"
    monkeypatch.setattr(forwarder.producer, "_default", None)


def test_unreachable_redis_raises_enqueue_error_without_password(namespace):
    port = free_port()  # nothing listens there
    fwd = Forwarder(settings=Settings(redis_url=f"redis://:s3cr3t-pw@127.0.0.1:{port}/0",
                                      namespace=namespace, experience="x", spool_path="off"))
    with pytest.raises(EnqueueError) as info:
        fwd.capture(capture_event(1))
    assert "s3cr3t-pw" not in str(info.value)
    assert "***" in str(info.value)


def test_import_forwarder_loads_no_worker_code_and_starts_no_thread():
    code = (
        "import sys, threading, forwarder\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('requests', 'workers', 'celery')]\n"
        "print(bad, threading.active_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[] 1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_instance_built_before_fork_works_in_the_child(settings):
    fwd = Forwarder(settings=settings)
    fwd.capture(capture_event(0))  # the parent's pool now holds a connection
    pid = os.fork()
    if pid == 0:  # child: like a gunicorn worker after --preload
        try:
            fwd.capture(capture_event(1))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    fwd.capture(capture_event(2))
    assert [e["body"]["eventValue"] for e in _queued(fwd)] == ["evt-0", "evt-1", "evt-2"]
