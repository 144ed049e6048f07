"""A local Distinct: both endpoints, its envelopes, a record, and fault injection.

Run it with ``distinct-forwarder sandbox``; tests start it in a thread with
``Sandbox(...).start()``. Control endpoints under ``/_sandbox/`` let a test or
an operator read what was accepted and change faults while it runs:

- ``GET /_sandbox/events[?since=N]``: accepted events, in arrival order
- ``DELETE /_sandbox/events``: forget them
- ``GET /_sandbox/stats``: request counters by answer
- ``GET|POST /_sandbox/config``: read or change faults (JSON body)
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from marshmallow import Schema, ValidationError

from forwarder.config import is_valid_slug
from forwarder.constants import API_KEY_HEADER
from forwarder.schemas import CAPTURE_SCHEMA, USER_ANALYTICS_SCHEMA

CAPTURE_PREFIX = "/api/v1/analytics/capture/"
USER_PATH = "/api/v1/user/analytics"
MESSAGES = {
    "capture": "Analytics captured successfully.",
    "user_analytics": "User analytics added successfully.",
}
MAX_BODY = 1024 * 1024


@dataclass
class Faults:
    """What the sandbox does wrong, on purpose."""

    api_key: str = "sandbox-key"
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    retry_after: str | None = None
    #: Answer every POST with ``fail_status`` until this epoch time.
    outage_until: float = 0.0
    #: Answer the next N POSTs with ``fail_status``.
    fail_next: int = 0
    #: Answer 400 to events carrying any of these values in any string field.
    reject_values: list[str] = field(default_factory=list)

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name == "outage_seconds":
                self.outage_until = time.time() + float(value)
            elif name in names:
                setattr(self, name, value)
            else:
                raise ValueError(f"unknown sandbox setting {name!r}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is normal under fault injection.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Sandbox:
    """The server; ``start()`` runs it in a thread, ``serve_forever()`` in this one."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        faults: Faults | None = None,
        record_path: str | None = None,
        seed: int | None = None,
        quiet: bool = True,
    ):
        self.faults = faults or Faults()
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, int] = {}
        #: (time, status) of the latest answers on Distinct's paths.
        self.answers: deque[tuple[float, int]] = deque(maxlen=200_000)
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.record_file = open(record_path, "a", encoding="utf-8") if record_path else None  # noqa: SIM115
        self.quiet = quiet
        handler = type("Handler", (_Handler,), {"sandbox": self})
        self.server = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="sandbox")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.record_file:
            self.record_file.close()

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] = self.stats.get(name, 0) + 1

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["seq"] = len(self.events)
            self.events.append(entry)
            if self.record_file:
                self.record_file.write(json.dumps(entry) + "\n")
                self.record_file.flush()

    def injected_failure(self) -> bool:
        f = self.faults
        with self.lock:
            if f.fail_next > 0:
                f.fail_next -= 1
                return True
            if time.time() < f.outage_until:
                return True
            return f.fail_rate > 0 and self.rng.random() < f.fail_rate


class _Handler(BaseHTTPRequestHandler):
    sandbox: Sandbox
    protocol_version = "HTTP/1.1"
    server_version = "distinct-sandbox/1"

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.sandbox.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # Headers and body in one segment: two small writes would meet the
        # client's delayed ACK and cost ~40 ms per request.
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        self.flush_headers()

    def _envelope(self, status: int, message: str, data: Any = None,
                  headers: dict[str, str] | None = None) -> None:
        self.sandbox.count(str(status))
        self.sandbox.answers.append((time.time(), status))
        self._send(status, {"statusCode": status, "message": message, "data": data}, headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY + 1)) if length else b""

    # --- control endpoints -------------------------------------------------
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        sb = self.sandbox
        if url.path == "/_sandbox/events":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            with sb.lock:
                events = sb.events[since:]
                total = len(sb.events)
            self._send(200, {"count": total, "events": events})
        elif url.path == "/_sandbox/stats":
            with sb.lock:
                self._send(200, dict(sb.stats, accepted=len(sb.events)))
        elif url.path == "/_sandbox/config":
            self._send(200, asdict(sb.faults))
        elif url.path == "/healthz":
            self._send(200, {"ok": True})
        elif url.path.startswith(CAPTURE_PREFIX) or url.path == USER_PATH:
            self._envelope(405, "Method not allowed.", headers={"Allow": "POST"})
        else:
            self._envelope(404, "Not found.")

    def do_DELETE(self) -> None:
        if urlsplit(self.path).path == "/_sandbox/events":
            with self.sandbox.lock:
                self.sandbox.events.clear()
                self.sandbox.stats.clear()
            self._send(200, {"count": 0})
        else:
            self._envelope(404, "Not found.")

    # --- Distinct's endpoints --------------------------------------------------
    def do_POST(self) -> None:
        sb = self.sandbox
        path = urlsplit(self.path).path
        body_bytes = self._read_body()
        if path == "/_sandbox/config":
            try:
                sb.faults.update(json.loads(body_bytes or b"{}"))
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, asdict(sb.faults))
            return
        sb.count("requests")
        if path == USER_PATH:
            kind, experience = "user_analytics", None
            schema: Schema = USER_ANALYTICS_SCHEMA
        elif path.startswith(CAPTURE_PREFIX) and "/" not in path[len(CAPTURE_PREFIX):]:
            kind, experience, schema = "capture", path[len(CAPTURE_PREFIX):], CAPTURE_SCHEMA
            if not is_valid_slug(experience):
                self._envelope(404, f"Unknown experience {experience!r}.")
                return
        else:
            self._envelope(404, "Not found.")
            return
        if sb.faults.latency_ms > 0:
            time.sleep(sb.faults.latency_ms / 1000.0)
        if self.headers.get(API_KEY_HEADER) != sb.faults.api_key:
            self._envelope(401, "Invalid or missing API key.")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._envelope(415, "Content-Type must be application/json.")
            return
        if len(body_bytes) > MAX_BODY:
            self._envelope(413, "Body too large.")
            return
        if sb.injected_failure():
            extra = {"Retry-After": sb.faults.retry_after} if sb.faults.retry_after else None
            self._envelope(sb.faults.fail_status, "Injected failure.", headers=extra)
            return
        try:
            body = json.loads(body_bytes)
            schema.load(body)
        except ValueError:
            self._envelope(400, "Body is not JSON.")
            return
        except ValidationError as exc:
            self._envelope(400, "Validation failed.", exc.messages)
            return
        rejected = set(sb.faults.reject_values)
        if rejected and any(isinstance(v, str) and v in rejected for v in body.values()):
            self._envelope(400, "Rejected by sandbox rule.", {"rejected": True})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        headers[API_KEY_HEADER] = "<matched>"
        sb.record({"kind": kind, "experience": experience, "path": path, "body": body,
                   "headers": headers, "received_at": time.time()})
        self._envelope(200, MESSAGES[kind])
