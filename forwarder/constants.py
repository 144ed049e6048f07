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
#: One set per hour of delivered event ids (16-byte UUIDs), ``delivered:{hour}``,
#: kept for the dedupe window plus the rest of its hour.
DELIVERED_PREFIX = "delivered:"
#: String per event id while one worker holds the right to POST it.
INFLIGHT_PREFIX = "inflight:"
#: Hash: the shared circuit breaker (state, reason, open_until, cooldown...).
BREAKER = "breaker"
#: String held by the one worker sending the half-open breaker's probe.
BREAKER_PROBE = "breaker:probe"
#: Short-lived marker: a probe candidate was just released from the retry set.
BREAKER_RELEASED = "breaker:released"
#: Hashes of ok/fail counts per tenth of the breaker's window.
BREAKER_WINDOW_PREFIX = "breaker:w:"
#: The global rate limit's theoretical arrival time (GCRA), Redis clock.
RATE = "rate"
#: Sorted sets of DLQ ids by reason, scored like DLQ_INDEX.
DLQ_REASON_PREFIX = "dlq:reason:"
#: List per worker channel, ``fetching:{id}``: the message it is taking off
#: the queue, until kombu has recorded it as unacknowledged (fetching.py).
FETCH_PREFIX = "fetching:"
#: Sorted set: every fetch list, scored by its worker's last sign of life.
FETCHERS = "fetchers"
#: Sorted set: id of each batch of messages a running task took off the
#: queue, scored by the (Redis) time it is due back if never finished.
TAKEN = "taken"
#: Hash per taken batch, ``taken:{batch}``: position -> message.
TAKEN_PREFIX = "taken:"
#: Hash of per-minute outcome counters: ``stats:{minute}`` -> {outcome: n}.
STATS_PREFIX = "stats:"
#: String per spool claim batch pushed to the queue, so that a batch retaken
#: after a producer crashed between push and delete is not queued twice.
SPOOLED_PREFIX = "spooled:"


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
#: The local spool's size limit (MiB); past it capture() raises SpoolFull.
DEFAULT_SPOOL_MAX_MB = 512.0
#: SIGTERM: running deliveries get this long to finish before the worker
#: hands back what it holds and exits.
DEFAULT_SHUTDOWN_TIMEOUT = 15.0
#: Threads per worker process: delivery waits on the network, so one process
#: keeps this many POSTs in flight (96 x 20/s = 1,920 events/s at 50 ms per
#: POST, past the ~1,400/s one process's CPU allows).
DEFAULT_CONCURRENCY = 96
#: Messages a running task takes off the queue along with its own, so a
#: backlog of single events costs one Celery task per batch (fetching.py).
TAKE_MESSAGES = 31
#: A task takes no new round this close to its budget's end (seconds).
TAKE_STOP_BEFORE_DEADLINE = 10.0
#: Events admitted (one Lua call) and recorded (another) together; the breaker
#: still sees every failure at once, as a chunk stops at its first failure.
CHUNK_EVENTS = 32
#: A task hands back what it has not sent after this long, so that no task
#: comes near the broker's visibility timeout.
TASK_BUDGET_SECONDS = 60.0
#: kombu re-queues a taken, unacknowledged message after this long. Must
#: exceed TASK_BUDGET_SECONDS plus one request's worst case (connect + read
#: timeouts), and stays under 5 minutes so a killed worker's messages come
#: back soon (kombu sweeps every 10 s, see workers/app.py).
VISIBILITY_TIMEOUT_SECONDS = 180
#: A message still in a fetch list after this long was fetched by a worker
#: that died before kombu recorded it: queue it again. A live worker moves it
#: on within milliseconds.
FETCH_GRACE_SECONDS = 60.0
#: How often each worker looks for such messages and for taken batches past
#: their deadline.
FETCH_SWEEP_INTERVAL_SECONDS = 10.0
#: A worker channel refreshes its FETCHERS entry this often; an entry silent
#: for FETCHER_EXPIRY_SECONDS with an empty list is forgotten.
FETCHER_HEARTBEAT_SECONDS = 60.0
FETCHER_EXPIRY_SECONDS = 600.0
#: How often each worker moves due retries back to the queue.
PROMOTE_INTERVAL_SECONDS = 0.5
#: How many due retries one promotion moves at most (one Lua call).
PROMOTE_BATCH = 500
#: When another worker holds an event's in-flight claim, look again after this.
BUSY_RETRY_DELAY = 5.0
#: The most response body or error text kept in a dead-letter entry.
DLQ_DETAIL_BYTES = 2048
#: Breaker: this many transient failures in a row open it...
DEFAULT_BREAKER_CONSECUTIVE = 10
#: ...or this share of failures among at least MIN_REQUESTS in the window.
DEFAULT_BREAKER_RATIO = 0.5
DEFAULT_BREAKER_MIN_REQUESTS = 20
DEFAULT_BREAKER_WINDOW = 30.0
#: First cooldown; it doubles with each failed probe up to the maximum.
DEFAULT_BREAKER_COOLDOWN_MIN = 5.0
DEFAULT_BREAKER_COOLDOWN_MAX = 300.0
#: After the breaker closes, due retries are released at this many per
#: promotion at first, doubling every RAMP_STEP seconds up to PROMOTE_BATCH.
RAMP_START = 20
RAMP_STEP_SECONDS = 2.0
#: A worker waits at most this long for a rate-limit slot before it parks
#: the event in the retry set instead.
RATE_MAX_WAIT = 1.0
#: Dead letters older than this are removed (and logged), never before.
DEFAULT_DLQ_TTL = 30 * 86400.0
#: Events per Celery message from capture_many().
MESSAGE_BATCH = 100
#: HTTP relay: the largest request body it reads (Distinct bodies are < 10 KiB).
RELAY_MAX_BODY = 64 * 1024
#: HTTP relay: loopback by default, so exposing it is a deliberate choice.
DEFAULT_RELAY_BIND = "127.0.0.1:8080"
#: HTTP relay: gunicorn processes, and threads in each (requests wait on Redis, not CPU).
DEFAULT_RELAY_WORKERS = 2
DEFAULT_RELAY_THREADS = 4
#: HTTP relay: a key shorter than this is refused, as guessable.
RELAY_KEY_MIN_LENGTH = 16
