"""The HTTP side: POST one event to Distinct and say what the answer means.

``classify_response`` and ``classify_exception`` are the one place that
decides which failures are transient, which are the event's fault and which
are the deployment's. Everything else follows from their verdict.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

import requests
from requests.adapters import HTTPAdapter

from forwarder import __version__
from forwarder.config import Settings
from forwarder.constants import (
    API_KEY_HEADER,
    CAPTURE_PATH,
    DLQ_DETAIL_BYTES,
    USER_ANALYTICS_PATH,
)
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


def classify_exception(exc: BaseException) -> Outcome:
    """The verdict on a request that got no HTTP answer."""
    text = f"{type(exc).__name__}: {exc}"[:DLQ_DETAIL_BYTES]
    if isinstance(exc, requests.exceptions.SSLError):
        # A certificate problem does not fix itself between two retries, but
        # it is the deployment's, not the event's.
        return Outcome("deployment", None, text)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)):
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


class DistinctClient:
    """POSTs events over one keep-alive, TLS-verified Session per thread."""

    def __init__(self, settings: Settings, pool_size: int = 4):
        settings.require_delivery()
        self._url = settings.api_url
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._pool_size = pool_size
        # The key is read from this process's settings at send time; it is
        # never part of a queue message.
        self._headers = {
            "Content-Type": "application/json",
            API_KEY_HEADER: settings.api_key or "",
            "User-Agent": f"distinct-forwarder/{__version__}",
        }
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.verify = True
            # Never send the key to whatever a proxy-variable or .netrc names.
            session.trust_env = False
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self._pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._local.session = session
        return session

    def send(self, event: Event) -> Outcome:
        data = json.dumps(event["body"], separators=(",", ":"), ensure_ascii=False).encode()
        started = time.monotonic()
        try:
            response = self._session().post(
                event_url(self._url, event),
                data=data,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
            body = response.content[: DLQ_DETAIL_BYTES * 2].decode("utf-8", "replace")
        except requests.RequestException as exc:
            outcome = classify_exception(exc)
            return Outcome(outcome.verdict, None, outcome.detail, None,
                           time.monotonic() - started)
        outcome = classify_response(
            response.status_code, body, response.headers.get("Retry-After")
        )
        return Outcome(outcome.verdict, outcome.status, outcome.detail, outcome.retry_after,
                       time.monotonic() - started)

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
