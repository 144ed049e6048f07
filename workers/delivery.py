"""The HTTP side: POST one event to Distinct and say what the answer means.

``classify_response`` and ``classify_exception`` are the one place that
decides which failures are transient, which are the event's fault and which
are the deployment's. Everything else follows from their verdict.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import certifi
import requests

from forwarder import __version__
from forwarder.config import Settings
from forwarder.constants import (
    API_KEY_HEADER,
    CAPTURE_PATH,
    DLQ_DETAIL_BYTES,
    USER_ANALYTICS_PATH,
)
from forwarder.masking import scrub
from forwarder.messages import Event

#: delivered: Distinct took it. transient: try again later. rejected: the
#: event itself is refused, trying again cannot help. deployment: the key,
#: URL or TLS setup is wrong; retried (the event is fine) until the maximum age.
Verdict = Literal["delivered", "transient", "rejected", "deployment"]

TRANSIENT_4XX = frozenset({408, 425, 429})
DEPLOYMENT_4XX = frozenset({401, 403})


@dataclass(frozen=True)
class Outcome:
    """What one POST came to."""

    verdict: Verdict
    status: int | None
    detail: str
    retry_after: float | None = None
    elapsed: float = 0.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def classify_response(
    status: int, body: str, retry_after_header: str | None = None, now: float | None = None
) -> Outcome:
    """The verdict on an HTTP answer. Only this function decides it."""
    detail = body[:DLQ_DETAIL_BYTES]
    retry_after = parse_retry_after(retry_after_header, time.time() if now is None else now)
    if 200 <= status < 300:
        return _classify_success(status, body, retry_after_header, now)
    if status in DEPLOYMENT_4XX:
        return Outcome("deployment", status, detail, retry_after)
    if 300 <= status < 400:
        # Distinct never redirects a POST; a redirect means DISTINCT_API_URL
        # points at the wrong place. The event is fine: keep it.
        return Outcome("deployment", status, "unexpected redirect: " + detail, retry_after)
    if status in TRANSIENT_4XX or status >= 500 or status < 200:
        return Outcome("transient", status, detail, retry_after)
    return Outcome("rejected", status, detail)


def _classify_success(status: int, body: str, retry_after_header: str | None,
                      now: float | None) -> Outcome:
    """A 2xx is Distinct's only if its body is JSON; the envelope's statusCode wins."""
    detail = body[:DLQ_DETAIL_BYTES]
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if envelope is None:
        # Empty or not JSON (an HTML page, a captive proxy): not Distinct's
        # answer, so not proof of delivery. The URL is the likely culprit;
        # keep the event and retry, loudly, until the maximum age.
        return Outcome("deployment", status,
                       f"HTTP {status} without Distinct's JSON envelope: " + detail)
    code = envelope.get("statusCode") if isinstance(envelope, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and not 200 <= code < 300:
        # An error wrapped in a 200: judge it by the code it carries.
        inner = classify_response(code, body, retry_after_header, now)
        return Outcome(inner.verdict, status, f"HTTP {status} with statusCode {code}: "
                       + detail, inner.retry_after)
    return Outcome("delivered", status, detail)


class ConnectFailed(ConnectionError):
    """No connection to DISTINCT_API_URL (refused, unreachable, DNS)."""


class ConnectTimedOut(ConnectFailed):
    """DISTINCT_API_URL did not accept a connection within the connect timeout."""


#: How an exception is named in logs and dead letters, by the phase it came from.
_EXCEPTION_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (ssl.SSLError, "SSLError"),
    (ConnectTimedOut, "ConnectTimeout"),
    (ConnectFailed, "ConnectionError"),
    (TimeoutError, "ReadTimeout"),
    (ConnectionError, "ConnectionError"),
    (http.client.HTTPException, "ProtocolError"),
)


def classify_exception(exc: BaseException) -> Outcome:
    """The verdict on a request that got no HTTP answer."""
    name = next((label for kind, label in _EXCEPTION_NAMES if isinstance(exc, kind)),
                type(exc).__name__)
    if isinstance(exc, ConnectFailed) and isinstance(exc.__cause__, BaseException):
        exc = exc.__cause__
        name += f" ({type(exc).__name__})"
    text = f"{name}: {exc}"[:DLQ_DETAIL_BYTES]
    if isinstance(exc, (requests.exceptions.SSLError, ssl.SSLError)):
        # A certificate problem does not fix itself between two retries, but
        # it is the deployment's, not the event's.
        return Outcome("deployment", None, text)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader,
                        http.client.InvalidURL)):
        return Outcome("deployment", None, text)
    # Timeouts, refused and reset connections, DNS failures, chunked-encoding
    # errors: the network's or the server's moment, so try again.
    return Outcome("transient", None, text)


def event_url(api_url: str, event: Event) -> str:
    if event["kind"] == "capture":
        # The slug was checked against [A-Za-z0-9._-] when captured, and is
        # checked again by the caller, so it cannot add a path segment.
        return api_url.rstrip("/") + CAPTURE_PATH.format(experience=event["experience"])
    return api_url.rstrip("/") + USER_ANALYTICS_PATH


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection was closed (or spoke) meanwhile.

    The same check urllib3 makes before reusing a pooled connection, so a
    connection the server timed out is replaced instead of failing a POST.
    """
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class PostTime:
    """How long one POST to Distinct takes lately: a running mean, fed by the
    delivery threads (a lost update between two of them is harmless) and read
    by the dispatcher to size its batches; None before the first POST."""

    #: The weight of each new POST in the mean.
    WEIGHT = 0.05

    def __init__(self) -> None:
        self.seconds: float | None = None

    def observe(self, seconds: float) -> None:
        last = self.seconds
        self.seconds = seconds if last is None else last + self.WEIGHT * (seconds - last)


class DistinctClient:
    """POSTs events over one keep-alive, TLS-verified connection per thread.

    ``http.client`` directly, one ``send()`` per request: the same connection
    reuse, certificate checks (certifi's bundle, as requests uses) and split
    connect/read timeouts as a ``requests.Session``, for a third of the CPU
    per request, which is most of what a worker spends per event. No proxy
    variables and no .netrc: the key goes only to DISTINCT_API_URL.
    """

    def __init__(self, settings: Settings):
        settings.require_delivery()
        parts = urlsplit(settings.api_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._base_path = parts.path.rstrip("/")
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._tls = ssl.create_default_context(cafile=certifi.where()) if self._https else None
        # The key is read from this process's settings at send time; it is
        # never part of a queue message.
        self._headers = {
            "Content-Type": "application/json",
            API_KEY_HEADER: settings.api_key or "",
            "User-Agent": f"distinct-forwarder/{__version__}",
        }
        self._secrets = [settings.api_key] if settings.api_key else []
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, context=self._tls,
                                                   timeout=self._connect_timeout)
            else:
                conn = http.client.HTTPConnection(self._host, self._port,
                                                  timeout=self._connect_timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        elif conn.sock is not None and _dropped(conn.sock):
            conn.close()
        if conn.sock is None:
            try:
                conn.connect()
            except ssl.SSLError:
                conn.close()
                raise
            except OSError as exc:
                conn.close()
                failed = ConnectTimedOut if isinstance(exc, TimeoutError) else ConnectFailed
                raise failed(f"cannot connect to {self._host}:{self._port}") from exc
            assert conn.sock is not None
            conn.sock.settimeout(self._read_timeout)
        return conn

    def send(self, event: Event) -> Outcome:
        data = json.dumps(event["body"], separators=(",", ":"), ensure_ascii=False).encode()
        started = time.monotonic()
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._connection()
            conn.request("POST", event_url(self._base_path, event), body=data,
                         headers=self._headers)
            response = conn.getresponse()
            raw = response.read(DLQ_DETAIL_BYTES * 2)
            # Read what is left (bounded) so the connection can serve the next POST.
            if not response.isclosed() and len(response.read(MAX_DRAIN_BYTES)) == MAX_DRAIN_BYTES:
                conn.close()
            if response.will_close:
                conn.close()
            body = raw.decode("utf-8", "replace")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if conn is not None:
                conn.close()
            outcome = classify_exception(exc)
            return Outcome(outcome.verdict, None, self._scrub(outcome.detail), None,
                           time.monotonic() - started)
        outcome = classify_response(response.status, body, response.getheader("Retry-After"))
        return Outcome(outcome.verdict, outcome.status, self._scrub(outcome.detail),
                       outcome.retry_after, time.monotonic() - started)

    def _scrub(self, detail: str) -> str:
        # http.client quotes a header value it refuses in its exception, and a
        # proxy may echo request headers in its answer: whatever the source,
        # the key never reaches a log line or a dead letter.
        return scrub(detail, self._secrets)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()


#: The most of an answer's body read past the part kept, to reuse the connection.
MAX_DRAIN_BYTES = 1 << 20
