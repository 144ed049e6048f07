"""Distinct (or whatever answers at its URL) misbehaving, over real loopback HTTP.

Each answer goes through the real DistinctClient and the one classifier in
workers/delivery.py; the README's failure table lists the same rows.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from forwarder.config import Settings
from forwarder.redis_server import free_port
from workers.delivery import DistinctClient

ENVELOPE = {"statusCode": 200, "message": "User analytics added successfully.", "data": None}


class _Misbehaving(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json",
                headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        case = self.path.split("/")[1]
        env = lambda code: json.dumps({**ENVELOPE, "statusCode": code}).encode()  # noqa: E731
        if case == "ok":
            self._answer(200, env(200))
        elif case == "empty200":
            self._answer(200, b"")
        elif case == "html200":
            self._answer(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        elif case.startswith("envelope"):
            self._answer(200, env(int(case[len("envelope"):])))
        elif case == "html502":
            self._answer(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")
        elif case == "redirect":
            self._answer(307, b"", headers={"Location": "https://elsewhere.example/"})
        elif case == "http400":
            self._answer(400, env(400))
        elif case == "http401":
            self._answer(401, env(401))
        elif case == "http429":
            self._answer(429, env(429), headers={"Retry-After": "7"})
        elif case == "slow":
            time.sleep(1.5)
            self._answer(200, env(200))
        elif case == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _send(api_url: str) -> Any:
    settings = Settings(api_key="k-123456789", api_url=api_url, connect_timeout=0.5,
                        read_timeout=0.5)
    client = DistinctClient(settings)
    event = {"id": "e1", "kind": "user_analytics", "experience": None, "attempts": 0,
             "first_seen": 0.0, "body": {"userId": "u", "feature": "f", "action": "a",
                                         "experienceId": "x",
                                         "capturedAt": "2026-04-27T13:35:00.000Z"}}
    try:
        return client.send(event)  # type: ignore[arg-type]
    finally:
        client.close()


CASES = [
    ("ok", "delivered", 200),
    ("empty200", "deployment", 200),       # empty 200: not proof of delivery
    ("html200", "deployment", 200),        # non-JSON 200: a proxy or a wrong URL
    ("envelope400", "rejected", 200),      # 200 wrapping a 400: the event is refused
    ("envelope503", "transient", 200),     # 200 wrapping a 503: try again
    ("envelope401", "deployment", 200),    # 200 wrapping a 401: the key
    ("html502", "transient", 502),         # a proxy's HTML 502
    ("redirect", "deployment", 307),       # Distinct never redirects a POST
    ("http400", "rejected", 400),
    ("http401", "deployment", 401),
    ("http429", "transient", 429),
    ("slow", "transient", None),           # past the read timeout
    ("reset", "transient", None),          # connection reset
]


@pytest.mark.parametrize("case,verdict,status", CASES, ids=[c[0] for c in CASES])
def test_each_misbehaviour_gets_its_deliberate_verdict(server, case, verdict, status):
    outcome = _send(f"http://{server}/{case}")
    assert (outcome.verdict, outcome.status) == (verdict, status), outcome.detail
    assert "k-123456789" not in outcome.detail
    if case == "http429":
        assert outcome.retry_after == 7.0
    if case in {"empty200", "html200"}:
        assert "JSON envelope" in outcome.detail


def test_refused_connection_is_transient():
    outcome = _send(f"http://127.0.0.1:{free_port()}")
    assert (outcome.verdict, outcome.status) == ("transient", None)


def test_tls_failure_is_a_deployment_problem(server):
    # TLS spoken to a plain-HTTP port: the handshake fails.
    outcome = _send(f"https://{server}/ok")
    assert outcome.verdict == "deployment" and "SSL" in outcome.detail
