"""Every Redis key name and every default, in one place.

All keys live under the namespace (``FORWARDER_NAMESPACE``); kombu's own keys
(queue list, ``unacked`` hash, bindings) get the same prefix through its
``global_keyprefix`` transport option, so two deployments can share a Redis
database without seeing each other's events.
"""

from __future__ import annotations

# --- Redis keys, relative to the namespace -------------------------------
#: The Celery queue name; kombu stores it as a list at ``{ns}:{QUEUE}``.
QUEUE = "deliver"
#: Sorted set of messages waiting for a retry, scored by due time (epoch s).
RETRY_SET = "retry"
#: Hash: event id -> dead-letter entry (JSON).
DLQ_ENTRIES = "dlq"
#: Sorted set: event id scored by the time it was dead-lettered.
DLQ_INDEX = "dlq:index"
#: String per delivered event id, kept for the dedupe window.
DELIVERED_PREFIX = "delivered:"
#: String per event id while one worker holds the right to POST it.
INFLIGHT_PREFIX = "inflight:"
#: Hash of per-minute outcome counters: ``stats:{minute}`` -> {outcome: n}.
STATS_PREFIX = "stats:"


def key(namespace: str, name: str) -> str:
    """The full Redis key for ``name`` inside ``namespace``."""
    return f"{namespace}:{name}"


# --- Celery task ----------------------------------------------------------
TASK_NAME = "distinct.deliver"

# --- Distinct paths -------------------------------------------------------
CAPTURE_PATH = "/api/v1/analytics/capture/{experience}"
USER_ANALYTICS_PATH = "/api/v1/user/analytics"
API_KEY_HEADER = "x-distinct-api-key"

# --- Defaults (each overridable by the FORWARDER_* variable named) ---------
DEFAULT_API_URL = "https://api.distinct.so"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_NAMESPACE = "distinct-forwarder"
#: Connect timeout slightly above a multiple of 3 s, the TCP SYN retransmit step.
DEFAULT_CONNECT_TIMEOUT = 3.05
#: Distinct answers in well under a second; 10 s rides out a slow moment.
DEFAULT_READ_TIMEOUT = 10.0
#: First retry waits up to 1 s (full jitter), doubling per attempt.
DEFAULT_BACKOFF_BASE = 1.0
#: No single wait longer than 10 minutes, so recovery is noticed soon.
DEFAULT_BACKOFF_CAP = 600.0
#: A server's Retry-After is honoured, but never for more than an hour.
DEFAULT_RETRY_AFTER_CAP = 3600.0
#: 25 attempts of capped full-jitter backoff span roughly two days.
DEFAULT_MAX_ATTEMPTS = 25
#: After three days an event is dead-lettered whatever its attempt count.
DEFAULT_MAX_AGE = 72 * 3600.0
#: A delivered id is remembered for a day; a redelivery inside it is skipped.
DEFAULT_DEDUPE_TTL = 24 * 3600.0
#: Producers give up on Redis after this long (seconds) and raise.
DEFAULT_ENQUEUE_TIMEOUT = 0.25
#: Threads per worker process: delivery is network-bound, not CPU-bound.
DEFAULT_CONCURRENCY = 16
#: A task hands back what it has not sent after this long, so that no task
#: comes near the broker's visibility timeout.
TASK_BUDGET_SECONDS = 60.0
#: kombu re-queues a taken, unacknowledged message after this long. Must
#: exceed TASK_BUDGET_SECONDS plus one request's worst case (connect + read
#: timeouts), and stays under 5 minutes so a killed worker's messages come
#: back soon (kombu sweeps every 10 s, see workers/app.py).
VISIBILITY_TIMEOUT_SECONDS = 180
#: How often each worker moves due retries back to the queue.
PROMOTE_INTERVAL_SECONDS = 0.5
#: How many due retries one promotion moves at most (one Lua call).
PROMOTE_BATCH = 500
#: When another worker holds an event's in-flight claim, look again after this.
BUSY_RETRY_DELAY = 5.0
#: The most response body or error text kept in a dead-letter entry.
DLQ_DETAIL_BYTES = 2048
#: Events per Celery message from capture_many().
MESSAGE_BATCH = 100
