"""The producer API a web backend calls: validate, then one LPUSH.

No thread, no buffer, no Lua: when ``capture()`` returns, the event is in
Redis (or fsynced in the local spool). The Redis client's connection pool
notices a fork and reconnects in the child, so an instance built before
gunicorn ``--preload`` or uWSGI forks is safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from forwarder.config import Settings, is_valid_slug
from forwarder.enqueue import SpoolingEnqueuer
from forwarder.errors import ConfigError, InvalidEvent
from forwarder.fastpath import fast_body
from forwarder.messages import Kind, encode_new_events, event_id_for, random_uuid
from forwarder.spool import Spool
from forwarder.store import Store, connect
from forwarder.validation import validate_event


class Forwarder:
    """Validates events and enqueues them for delivery to Distinct."""

    def __init__(
        self,
        redis_url: str | None = None,
        experience: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
    ):
        base = settings if settings is not None else Settings.from_env()
        self.settings = base.with_overrides(
            redis_url=redis_url, experience=experience, namespace=namespace
        )
        self._client = client or connect(
            self.settings.redis_url, timeout=self.settings.enqueue_timeout
        )
        if client is None:
            # Retry a broken pooled connection once (fast), never a timeout:
            # a second timeout would double capture()'s worst case.
            self._client.set_retry(Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self.store = Store(self._client, self.settings.namespace)
        # Redis down or slow: the event goes to the local spool instead.
        self.spool = Spool.for_settings(self.settings)
        self._enqueuer = SpoolingEnqueuer(self.store, self.spool, self.settings.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Forwarder:
        """A Forwarder configured by REDIS_URL, DISTINCT_EXPERIENCE, FORWARDER_*."""
        return cls(settings=Settings.from_env(environ))

    # --- public API --------------------------------------------------------
    def capture(
        self,
        event: Mapping[str, Any],
        experience: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Validate a Capture Analytics event and enqueue it; returns its id."""
        return self._send_one("capture", event, experience, idempotency_key)

    def user_analytics(
        self, event: Mapping[str, Any], idempotency_key: str | None = None
    ) -> str:
        """Validate a User Analytics event and enqueue it; returns its id."""
        return self._send_one("user_analytics", event, None, idempotency_key)

    def capture_many(
        self,
        events: Iterable[Mapping[str, Any]],
        experience: str | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Validate every Capture Analytics event, then enqueue all in one round trip.

        Nothing is enqueued if any event is invalid; error keys carry the
        item's index (``"3.email"``).
        """
        items = list(events)
        keys: list[str | None] = (
            list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
        )
        if len(keys) != len(items):
            raise ValueError("idempotency_keys must have one entry per event")
        return self._send_many("capture", items, experience, keys)

    def user_analytics_many(
        self,
        events: Iterable[Mapping[str, Any]],
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Like :meth:`capture_many`, for User Analytics events."""
        items = list(events)
        keys: list[str | None] = (
            list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
        )
        if len(keys) != len(items):
            raise ValueError("idempotency_keys must have one entry per event")
        return self._send_many("user_analytics", items, None, keys)

    # --- internals -----------------------------------------------------------
    def _experience_for(self, kind: Kind, experience: str | None) -> str | None:
        if kind != "capture":
            return None
        return experience if experience is not None else self.settings.experience

    def _send_one(
        self, kind: Kind, data: Any, experience: str | None, key: str | None
    ) -> str:
        experience = self._experience_for(kind, experience)
        body, errors = validate_event(kind, data, experience)
        if errors:
            raise InvalidEvent(errors)
        event_id = random_uuid() if key is None else event_id_for(key)
        self._push(encode_new_events(kind, experience, [event_id], [body], time.time()))
        return event_id

    def _send_many(
        self, kind: Kind, items: list[Any], experience: str | None, keys: list[str | None]
    ) -> list[str]:
        experience = self._experience_for(kind, experience)
        bodies: list[dict[str, Any]] = []
        errors: dict[str, list[str]] = {}
        # The common case (every event valid, a valid slug) in a tight loop;
        # anything else goes through validate_event for its field errors.
        fast = kind != "capture" or (isinstance(experience, str) and is_valid_slug(experience))
        for index, data in enumerate(items):
            body = fast_body(kind, data) if fast and not errors else None
            if body is None:
                body, item_errors = validate_event(kind, data, experience, prefix=str(index))
                errors.update(item_errors)
            bodies.append(body)
        if errors:
            raise InvalidEvent(errors)
        ids = [random_uuid() if key is None else event_id_for(key) for key in keys]
        self._push(encode_new_events(kind, experience, ids, bodies, time.time()))
        return ids

    def _push(self, items: list[str]) -> None:
        # One LPUSH; on failure (and for a short back-off after one) the spool.
        self._enqueuer.push(items)


_default: Forwarder | None = None


def default_forwarder() -> Forwarder:
    """The process-wide Forwarder built from the environment on first use."""
    global _default
    if _default is None:
        _default = Forwarder.from_env()
    return _default


def capture(
    event: Mapping[str, Any], experience: str | None = None, idempotency_key: str | None = None
) -> str:
    """``Forwarder.capture`` on the default instance built from the environment."""
    return default_forwarder().capture(event, experience, idempotency_key)


def user_analytics(event: Mapping[str, Any], idempotency_key: str | None = None) -> str:
    """``Forwarder.user_analytics`` on the default instance built from the environment."""
    return default_forwarder().user_analytics(event, idempotency_key)


def capture_many(
    events: Iterable[Mapping[str, Any]], experience: str | None = None
) -> list[str]:
    """``Forwarder.capture_many`` on the default instance built from the environment."""
    return default_forwarder().capture_many(events, experience)


__all__ = [
    "ConfigError",
    "Forwarder",
    "capture",
    "capture_many",
    "default_forwarder",
    "user_analytics",
    "validate_event",
]
