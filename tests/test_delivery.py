"""DistinctClient against real sockets: timeouts, refusals, the sandbox."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from forwarder.config import Settings
from forwarder.messages import Event
from forwarder.redis_server import free_port
from tests.conftest import API_KEY
from workers.delivery import DistinctClient


def _event() -> Event:
    return Event(id="e1", kind="capture", experience="fifa-cwc-2025",
                 body={"type": "PHOTO_VIEWED_BY_USER", "eventValue": "v",
                       "recordCapturedAt": "2026-11-28T10:15:00.000Z",
                       "email": "a@example.com"}, attempts=0, first_seen=time.time())


def _client(url: str, **kw) -> DistinctClient:
    return DistinctClient(Settings(api_url=url, api_key=API_KEY, **kw))


def test_sandbox_accepts_and_the_outcome_is_delivered(sandbox):
    outcome = _client(sandbox.url).send(_event())
    assert outcome.verdict == "delivered" and outcome.status == 200
    assert "Analytics captured successfully." in outcome.detail


def test_slow_answer_past_the_read_timeout_is_transient(sandbox):
    sandbox.faults.latency_ms = 3000
    started = time.monotonic()
    outcome = _client(sandbox.url, read_timeout=0.2).send(_event())
    assert outcome.verdict == "transient" and outcome.status is None
    assert "Timeout" in outcome.detail
    assert time.monotonic() - started < 2.5  # gave up long before the 3 s answer


def test_refused_connection_is_transient():
    outcome = _client(f"http://127.0.0.1:{free_port()}").send(_event())
    assert outcome.verdict == "transient"
    assert "ConnectionError" in outcome.detail


def test_reset_connection_is_transient():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def reset_once() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    thread = threading.Thread(target=reset_once, daemon=True)
    thread.start()
    outcome = _client(f"http://127.0.0.1:{listener.getsockname()[1]}").send(_event())
    thread.join(5)
    listener.close()
    assert outcome.verdict == "transient"


def test_workers_need_an_api_key():
    from forwarder.errors import ConfigError

    with pytest.raises(ConfigError, match="DISTINCT_API_KEY"):
        DistinctClient(Settings(api_key=None))
