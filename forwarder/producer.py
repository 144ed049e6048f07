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

from forwarder.config import Settings, is_valid_slug
from forwarder.enqueue import SpoolingEnqueuer
from forwarder.errors import ConfigError, InvalidEvent
from forwarder.fastpath import fast_body
from forwarder.messages import Kind, encode_new_events, event_id_for
from forwarder.spool import Spool
from forwarder.store import Store, connect
from forwarder.validation import validate_event

# --- what both producers (this one and forwarder.async_producer) do before the LPUSH ---
#: Retry a broken pooled connection once (fast), never a timeout: a second
#: timeout would double capture()'s worst case.
RETRY_ON: tuple[type[redis.RedisError], ...] = (redis.ConnectionError,)


def _experience_for(settings: Settings, kind: Kind, experience: str | None) -> str | None:
    if kind != "capture":
        return None
    return experience if experience is not None else settings.experience


def encode_one(settings: Settings, kind: Kind, data: Any, experience: str | None,
               idempotency_key: str | None) -> tuple[str, list[str]]:
    """Validate one event: its id and its queue item, or InvalidEvent."""
    experience = _experience_for(settings, kind, experience)
    body, errors = validate_event(kind, data, experience)
    if errors:
        raise InvalidEvent(errors)
    event_id = event_id_for(idempotency_key)
    return event_id, encode_new_events(kind, experience, [event_id], [body], time.time())


def encode_many(settings: Settings, kind: Kind, events: Iterable[Any], experience: str | None,
                idempotency_keys: Iterable[str | None] | None) -> tuple[list[str], list[str]]:
    """Validate every event: their ids and queue items, or InvalidEvent naming each
    bad field with its item's index (``"3.email"``); ValueError if the keys do not
    pair up with the events."""
    items = list(events)
    keys: list[str | None] = (
        list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
    )
    if len(keys) != len(items):
        raise ValueError("idempotency_keys must have one entry per event")
    experience = _experience_for(settings, kind, experience)
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
    ids = [event_id_for(key) for key in keys]
    return ids, encode_new_events(kind, experience, ids, bodies, time.time())


def open_enqueuer(settings: Settings, client: redis.Redis | None = None
                  ) -> tuple[Store, Spool | None, SpoolingEnqueuer]:
    """What a producer (sync or async) enqueues through: a Store on a client with
    the enqueue timeout, the local spool, and the enqueuer that falls back to the
    spool when Redis is down or slow."""
    store = Store(client or connect(settings.redis_url, timeout=settings.enqueue_timeout,
                                    retry_on=RETRY_ON), settings.namespace)
    spool = Spool.for_settings(settings)
    return store, spool, SpoolingEnqueuer(store, spool, settings.redis_url)


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
        self.store, self.spool, self._enqueuer = open_enqueuer(self.settings, client)

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
        event_id, items = encode_one(self.settings, "capture", event, experience,
                                     idempotency_key)
        self._enqueuer.push(items)
        return event_id

    def user_analytics(
        self, event: Mapping[str, Any], idempotency_key: str | None = None
    ) -> str:
        """Validate a User Analytics event and enqueue it; returns its id."""
        event_id, items = encode_one(self.settings, "user_analytics", event, None,
                                     idempotency_key)
        self._enqueuer.push(items)
        return event_id

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
        ids, items = encode_many(self.settings, "capture", events, experience,
                                 idempotency_keys)
        self._enqueuer.push(items)
        return ids

    def user_analytics_many(
        self,
        events: Iterable[Mapping[str, Any]],
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Like :meth:`capture_many`, for User Analytics events."""
        ids, items = encode_many(self.settings, "user_analytics", events, None,
                                 idempotency_keys)
        self._enqueuer.push(items)
        return ids


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
