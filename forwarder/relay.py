"""The HTTP relay: Distinct's two capture endpoints, answered from Redis.

A backend in any language switches to the forwarder by changing its Distinct
base URL. The relay checks the ``x-distinct-api-key`` header against
``FORWARDER_RELAY_KEYS``, applies the same body rules as ``capture()`` and
answers with Distinct's envelope once the event is in Redis.

A plain WSGI callable (no web framework): the request surface is six routes,
and keeping it dependency-free keeps ``import forwarder.relay`` cheap and
usable under any WSGI server. ``distinct-forwarder relay`` runs it in gunicorn.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from forwarder import constants as C
from forwarder.config import Settings, relay_key_names
from forwarder.errors import ConfigError, ForwarderError, InvalidEvent
from forwarder.producer import Forwarder
from forwarder.rawjson import StrictJSONError, loads_strict

log = logging.getLogger("distinct_forwarder.relay")

CAPTURE_PREFIX = "/api/v1/analytics/capture/"
USER_PATH = C.USER_ANALYTICS_PATH
#: Distinct's success messages, word for word.
MESSAGES = {
    "capture": "Analytics captured successfully.",
    "user_analytics": "User analytics added successfully.",
}
IDEMPOTENCY_HEADER = "HTTP_IDEMPOTENCY_KEY"
MAX_IDEMPOTENCY_KEY = 256

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]


class Reply(Exception):
    """A finished answer, raised from deep inside a request's checks."""

    def __init__(self, status: int, message: str, data: Any = None,
                 headers: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.status, self.message, self.data, self.headers = status, message, data, list(headers)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 503: "Service Unavailable"}


# --- authentication ------------------------------------------------------------
class KeyRing:
    """The accepted API keys, compared in constant time, each with its client's name.

    Both sides are hashed first so that ``compare_digest`` always sees equal
    lengths, and every key is compared (no early exit), so neither the time
    taken nor anything else tells which key matched or how long keys are.
    """

    def __init__(self, keys: Iterable[str]):
        self._clients = [(hashlib.sha256(key.encode("utf-8")).digest(), name)
                         for name, key in relay_key_names(tuple(keys))]
        if not self._clients:
            raise ConfigError(["FORWARDER_RELAY_KEYS: set at least one key for the relay"])

    def client(self, presented: bytes | None) -> str | None:
        """The name of the client whose key was presented, or None."""
        given = hashlib.sha256(presented or b"").digest()
        found = None
        for digest, name in self._clients:
            if hmac.compare_digest(given, digest):
                found = name
        return found if presented is not None else None

    def accepts(self, presented: bytes | None) -> bool:
        return self.client(presented) is not None


def scoped_idempotency_key(client: str, key: str) -> str:
    """The idempotency key the relay captures with: the client's name scopes it."""
    return f"relay:{client}:{key}"


# --- body parsing ----------------------------------------------------------------
def parse_body(raw: bytes) -> Any:
    """Strict JSON (forwarder/rawjson.py); any problem is a 400 naming ``_body``."""
    if not raw.strip():
        raise Reply(400, "Body is empty; send one JSON object.", {"_body": ["Required."]})
    try:
        return loads_strict(raw)
    except StrictJSONError as exc:
        raise Reply(400, "Body is not strict JSON.", {"_body": [str(exc)]}) from None


def read_body(environ: dict[str, Any], limit: int = C.RELAY_MAX_BODY) -> bytes:
    """The request body, refused before reading when its declared size is too big."""
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        if not declared.isdigit():
            raise Reply(400, "Content-Length is not a number.", {"_body": ["Bad length."]})
        if int(declared) > limit:
            raise Reply(413, f"Body larger than {limit} bytes.", {"_body": [
                f"At most {limit} bytes (Content-Length {declared})."]})
    # Read one byte past the limit, whatever was declared: a chunked body has
    # no Content-Length, and the cap must hold for it as well.
    try:
        raw = environ["wsgi.input"].read(limit + 1)
    except Exception as exc:  # the server's own error for a broken chunked body or hang-up
        raise Reply(400, "Body could not be read.", {"_body": [
            f"Incomplete or malformed body ({type(exc).__name__})."]}) from None
    if len(raw) > limit:
        raise Reply(413, f"Body larger than {limit} bytes.", {"_body": [
            f"At most {limit} bytes."]})
    return bytes(raw)


def check_content_type(environ: dict[str, Any]) -> None:
    value = environ.get("CONTENT_TYPE") or ""
    media, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, arg = param.strip().partition("=")
        if name.lower() == "charset":
            charset = arg.strip().strip('"').lower()
    if media.strip().lower() != "application/json" or charset not in {"", "utf-8", "utf8"}:
        shown = value[:80] or "none"
        raise Reply(415, "Content-Type must be application/json.", {"_headers": [
            f"Content-Type must be application/json (UTF-8), not {shown}."]})


# --- metrics -----------------------------------------------------------------------
class RelayMetrics:
    """Prometheus counters of this relay, summed over gunicorn's workers.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``distinct-forwarder relay`` sets
    it) each worker writes its values to files there and ``/metrics`` adds
    them up, so any worker answers for all; without it, for its own process.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # A registry per Relay, so building two apps in one process (tests)
        # does not collide in prometheus-client's global registry.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distinct_forwarder_relay_requests_total", "HTTP requests by route and status.",
            ("path", "status"), registry=self.registry)
        self.events = Counter(
            "distinct_forwarder_relay_events_total", "Events the relay put in the queue.",
            ("kind",), registry=self.registry)
        self.latency = Histogram(
            "distinct_forwarder_relay_request_seconds", "Time to answer one request.",
            ("path",), registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

    def observe(self, route: str, status: int, seconds: float) -> None:
        path = ROUTE_LABELS.get(route, "other")
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def accepted(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def render(self) -> tuple[str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return CONTENT_TYPE_LATEST, generate_latest(registry)


#: Route -> the ``path`` label: the template, so label values stay bounded.
ROUTE_LABELS = {
    "capture": "/api/v1/analytics/capture/{experienceValue}",
    "user_analytics": USER_PATH, "healthz": "/healthz", "readyz": "/readyz",
    "metrics": "/metrics", "openapi": "/openapi.json",
}


# --- the application -------------------------------------------------------------
class Relay:
    """The WSGI application; one per process, shared by its threads."""

    def __init__(self, settings: Settings, forwarder: Forwarder | None = None,
                 keys: Iterable[str] | None = None):
        self.settings = settings
        self.keys = KeyRing(settings.relay_keys if keys is None else keys)
        self.forwarder = forwarder or Forwarder(settings=settings)
        self.metrics = RelayMetrics()
        from forwarder.relay_openapi import openapi_document

        self._openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()

    # WSGI entry point
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = _path(environ)
        route = route_of(path)
        try:
            status, headers, body = self._dispatch(route, method, path, environ)
        except Reply as reply:
            status, headers, body = reply.status, reply.headers, _envelope(
                reply.status, reply.message, reply.data)
            if reply.status >= 500:
                log.warning("%s %s -> %d: %s", method, route, reply.status, reply.message)
        except Exception as exc:  # the last line of defence: never a traceback to the client
            log.error("%s %s -> 500: %s", method, route, type(exc).__name__)
            status, headers = 500, []
            body = _envelope(500, "Internal error; the event was not accepted.", None)
        self.metrics.observe(route, status, time.perf_counter() - started)
        headers = [("Content-Length", str(len(body))), *headers]
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json"))
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        return [b""] if method == "HEAD" else [body]

    def _dispatch(self, route: str, method: str, path: str,
                  environ: dict[str, Any]) -> tuple[int, Headers, bytes]:
        if route in MESSAGES:
            _allow(method, "POST")
            experience = _segment(path[len(CAPTURE_PREFIX):]) if route == "capture" else None
            return self._accept(route, environ, experience)
        if route == "other":
            raise Reply(404, "No such path. The relay serves POST /api/v1/analytics/capture/"
                        "{experienceValue} and POST /api/v1/user/analytics.")
        _allow(method, "GET", "HEAD")
        if route == "readyz":
            status, report = self.readiness()
            return status, [], _json(report)
        if route == "metrics":
            content_type, text = self.metrics.render()
            return 200, [("Content-Type", content_type)], text
        if route == "openapi":
            return 200, [], self._openapi
        return 200, [], _json({"status": "ok"})  # healthz: answering is the whole check

    def _accept(self, kind: str, environ: dict[str, Any],
                experience: str | None) -> tuple[int, Headers, bytes]:
        presented = environ.get("HTTP_X_DISTINCT_API_KEY")
        client = self.keys.client(presented.encode("latin-1") if presented else None)
        if client is None:
            raise Reply(401, "Missing or unknown x-distinct-api-key.")
        check_content_type(environ)
        event = parse_body(read_body(environ))
        # Scoped by client: two clients that pick the same key value do not
        # dedupe each other's events; a client keeps its scope across a key
        # rotation when both keys carry its name (FORWARDER_RELAY_KEYS=name:key).
        given = _idempotency_key(environ)
        key = None if given is None else scoped_idempotency_key(client, given)
        try:
            if kind == "capture":
                event_id = self.forwarder.capture(event, experience, key)
            else:
                event_id = self.forwarder.user_analytics(event, key)
        except InvalidEvent as exc:
            raise Reply(400, "Invalid event: " + "; ".join(sorted(exc.errors)) + ".",
                        exc.errors) from None
        except (ForwarderError, redis.RedisError) as exc:
            # EnqueueError today; a spool's own errors (SpoolFull...) are
            # ForwarderErrors too. Either way the event was not kept.
            log.warning("event not accepted: %s: %s", type(exc).__name__, exc)
            raise Reply(503, "Event not accepted: the queue is unavailable; retry later.",
                        headers=[("Retry-After", "1")]) from None
        self.metrics.accepted(kind)
        return 200, [("X-Forwarder-Event-Id", event_id)], _envelope(200, MESSAGES[kind], None)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 when an event sent now would be kept: Redis answers, or a spool takes it."""
        report: dict[str, Any] = {"redis": "ok"}
        limit = self.settings.enqueue_timeout
        started = time.monotonic()
        try:
            self.forwarder.store.client.ping()
        except redis.RedisError as exc:
            report["redis"] = f"unavailable ({type(exc).__name__})"
        else:
            # The client retries once, so a PING can answer after the timeout;
            # then a capture would not have waited for it, so not ready.
            if time.monotonic() - started > limit:
                report["redis"] = f"slow (PING over {limit:g} s)"
        spool = _spool_state(self.forwarder)
        if spool is not None:
            report["spool"] = "writable" if spool else "not writable"
        ready = report["redis"] == "ok" or bool(spool)
        report["status"] = "ready" if ready else "unavailable"
        return (200 if ready else 503), report


# --- helpers ---------------------------------------------------------------------
def route_of(path: str) -> str:
    """The route a path belongs to; ``other`` for any unknown path."""
    if path.startswith(CAPTURE_PREFIX):
        rest = path[len(CAPTURE_PREFIX):]
        return "capture" if rest and "/" not in rest else "other"
    return {USER_PATH: "user_analytics", "/healthz": "healthz", "/readyz": "readyz",
            "/metrics": "metrics", "/openapi.json": "openapi"}.get(path, "other")


def _path(environ: dict[str, Any]) -> str:
    # PATH_INFO is the URL-decoded path as latin-1 code points (PEP 3333).
    return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", "") or "/")


def _segment(raw: str) -> str:
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return "\ufffd"  # fails the slug check, which names the rule


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise Reply(405, f"Method {method[:16]} not allowed; use {' or '.join(allowed)}.",
                    headers=[("Allow", ", ".join(allowed))])


def _idempotency_key(environ: dict[str, Any]) -> str | None:
    raw = environ.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY or not raw.isprintable() or not raw.isascii():
        raise Reply(400, "Invalid Idempotency-Key header.", {"Idempotency-Key": [
            f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters."]})
    return str(raw)


def _spool_state(fwd: Forwarder) -> bool | None:
    """None without a spool; else whether it would take an event now.

    Looked up by attribute so the relay works with or without a spool, and
    whatever the spool's internals: writable means its directory accepts
    files and it has room for one more body of the largest size.
    """
    spool = getattr(fwd, "spool", None)
    if spool is None:
        return None
    try:
        directory = os.path.dirname(os.path.abspath(str(spool.path)))
        while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)  # the spool makes missing parents
        if not os.access(directory, os.W_OK | os.X_OK):
            return False
        status = spool.status(fwd.settings.namespace)
        # Room left for one more request of the largest size the relay reads.
        return bool(status.size_bytes + C.RELAY_MAX_BODY <= status.max_bytes)
    except Exception:  # a spool that cannot even report is not one to rely on
        return False


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _envelope(status: int, message: str, data: Any) -> bytes:
    return _json({"statusCode": status, "message": message, "data": data})


def create_app(settings: Settings | None = None) -> Relay:
    """The relay configured from the environment (gunicorn's app factory)."""
    from forwarder import logs

    settings = settings or Settings.from_env()
    logs.install(settings.log_format, secrets=settings.secrets())
    return Relay(settings)
