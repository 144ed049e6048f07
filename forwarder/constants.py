"""Every Redis key name, every timer and every default, in one place.

All keys live under the namespace (``FORWARDER_NAMESPACE``); kombu's own keys
(each worker's dispatch queue, bindings) get the same prefix through its
``global_keyprefix`` transport option, so two deployments can share a Redis
database without seeing each other's events.
"""

from __future__ import annotations

# --- Redis keys, relative to the namespace -------------------------------
# docs/lifecycle.md draws how an event moves between these.
#: List of events waiting for a worker (JSON, one event per item): producers,
#: the spool, promotions and replays LPUSH; workers take from the right end.
QUEUE = "queue"
#: Sorted set of events waiting for a retry, scored by due time (Redis clock).
RETRY_SET = "retry"
#: Hash: event id -> dead-letter entry (JSON).
DLQ_ENTRIES = "dlq"
#: Sorted set: event id scored by the time it was dead-lettered.
DLQ_INDEX = "dlq:index"
#: Sorted sets of DLQ ids by reason, scored like DLQ_INDEX.
DLQ_REASON_PREFIX = "dlq:reason:"
#: Delivered event ids (16-byte UUIDs), one set per 6 hours of delivery,
#: ``dedupe:{n}`` (forwarder/lua/lib/dedupe.lua).
DEDUPE_PREFIX = "dedupe:"
#: Sorted set: each claimed event id (a worker holds the right to POST it),
#: scored by when the claim expires, in microseconds (workers/lua/lib/claims.lua).
CLAIMS = "claims"
#: Sorted set: each admitted chunk's token, ``{worker}|{random}``, scored like
#: the claims it took: a claim belongs to the token with its score.
CLAIM_TOKENS = "claim_tokens"
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
#: Hash of per-minute outcome counters: ``stats:{minute}`` -> {outcome: n}.
STATS_PREFIX = "stats:"
#: String per spool claim batch pushed to the queue, so that a batch retaken
#: after a producer crashed between push and delete is not queued twice.
SPOOLED_PREFIX = "spooled:"
#: Sorted set: every live worker process, scored by its last heartbeat.
WORKERS = "workers"
#: Hash per worker, ``worker:{id}``: host, pid, threads, started, beat.
WORKER_INFO_PREFIX = "worker:"
#: Hash per worker, ``held:{id}``: ``{batch}:{n}`` -> event, every event the
#: worker took off the queue and has not yet finished or handed back.
HELD_PREFIX = "held:"
#: List per worker, ``landing:{id}``: the event BLMOVE brought to a worker
#: waiting on an empty queue, until its next take moves it into ``held:{id}``.
LANDING_PREFIX = "landing:"
#: Celery queue of one worker process, ``dispatch.{id}``: its messages only
#: point at batches it holds (kombu stores it as a list under the namespace).
DISPATCH_QUEUE_PREFIX = "dispatch."

# What 0.1 workers kept; workers/upgrade.py moves their events to QUEUE.
LEGACY_QUEUE = "deliver"
LEGACY_UNACKED = "unacked"
LEGACY_UNACKED_INDEX = "unacked_index"
LEGACY_FETCHERS = "fetchers"
LEGACY_TAKEN = "taken"
LEGACY_TAKEN_PREFIX = "taken:"
#: 0.1's claims, a string per id (``inflight:{id}`` -> token), taken and
#: respected too while a 0.1 worker is registered in LEGACY_FETCHERS.
LEGACY_CLAIM_PREFIX = "inflight:"
#: 0.1's dedupe sets, one per hour of delivery: looked through until they expire.
LEGACY_DEDUPE_PREFIX = "delivered:"
#: How often a worker asks whether any of those is left, or any 0.1 worker
#: registered (a 0.1 worker that started or delivered since is seen within
#: this time).
LEGACY_CHECK_SECONDS = 60.0


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
#: Events one worker takes off the queue at once from a deep queue: one
#: batch, one Celery task (a shallow queue is shared out in smaller batches
#: over the idle threads, workers/dispatcher.py).
BATCH_EVENTS = 64
#: A short queue is shared out over idle delivery threads, but no batch is
#: cut below what one thread sends in this long at the POST time seen lately
#: (workers/dispatcher.py): a finer split would gain less time than the Redis
#: round trips of the extra batches cost (about six each: take, task message,
#: load, admission, outcomes).
SPREAD_SECONDS = 0.02
#: Events admitted in one Lua call (a chunk of a batch). The breaker still sees
#: every failure at once, as a chunk stops at its first failure.
CHUNK_EVENTS = 32
#: A task hands back what it has not sent after this long, so a stopping
#: worker or a slow Distinct never keeps one thread busy for minutes.
TASK_BUDGET_SECONDS = 60.0
#: One POST's connect + read timeouts must stay under this: a request that
#: takes longer is a stuck connection, and its claim would block that event
#: for as long.
MAX_REQUEST_SECONDS = 120.0
#: A worker silent this long is dead (FORWARDER_WORKER_TIMEOUT): the first
#: live worker to notice requeues everything it held. Each worker beats, and
#: looks for dead ones, HEARTBEATS_PER_TIMEOUT times per timeout (every 5 s by
#: default), so a busy moment is not mistaken for a death and a kill -9 is
#: noticed within the timeout plus one sweep.
WORKER_DEAD_AFTER_SECONDS = 20.0
HEARTBEATS_PER_TIMEOUT = 4
#: A worker's registration outlives its last beat this long at most, so a
#: registration nobody cleaned up cannot stay forever.
WORKER_INFO_TTL_SECONDS = 86400
#: A held batch whose Celery message has not started after this long gets a
#: second message (the first may have been lost with a broker connection);
#: a second message for a batch already started does nothing.
DISPATCH_RESEND_SECONDS = 60.0
#: An idle worker waits this long on an empty queue per blocking call.
IDLE_WAIT_SECONDS = 1.0
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
#: HTTP relay: the largest request body it reads (Distinct bodies are < 10 KiB).
RELAY_MAX_BODY = 64 * 1024
#: HTTP relay: loopback by default, so exposing it is a deliberate choice.
DEFAULT_RELAY_BIND = "127.0.0.1:8080"
#: HTTP relay: gunicorn processes, and open connections each serves at most
#: (gevent: a connection costs a greenlet, not a thread, so idle and slow
#: clients cannot starve the others).
DEFAULT_RELAY_WORKERS = 2
DEFAULT_RELAY_CONNECTIONS = 1000
#: HTTP relay: a client has this long to send each request's line and headers
#: (and an idle keep-alive connection is closed after it).
RELAY_HEADER_TIMEOUT = 5
#: HTTP relay: a key shorter than this is refused, as guessable.
RELAY_KEY_MIN_LENGTH = 16

# --- Operator console (forwarder/console, `distinct-forwarder console`) -----------
# Its own Redis keys, under the namespace like every other; each one capped or
# expiring, so the console never grows Redis without bound.
#: List of audit records (JSON, newest first): who replayed, purged, revealed or
#: exported what, and how many. LTRIMmed to CONSOLE_AUDIT_MAX records.
CONSOLE_AUDIT = "console:audit"
CONSOLE_AUDIT_MAX = 1000
#: Hash per replay started in the console, ``console:job:{id}``: its selection,
#: progress and counts. Expires CONSOLE_JOB_TTL_SECONDS after its last update.
CONSOLE_JOB_PREFIX = "console:job:"
#: Sorted set of job ids by start time: the CONSOLE_JOBS_MAX most recent only.
CONSOLE_JOBS = "console:jobs"
CONSOLE_JOBS_MAX = 50
CONSOLE_JOB_TTL_SECONDS = 7 * 86400
#: A running job silent this long was cut off (the console stopped): it is shown
#: as interrupted, to be started again (a replay resumes where it stopped).
CONSOLE_JOB_STALE_SECONDS = 60.0
#: Loopback by default, and never the relay's port: exposing it is a choice.
DEFAULT_CONSOLE_BIND = "127.0.0.1:8090"
#: A login lasts this long at most (and ends when the console restarts).
CONSOLE_SESSION_SECONDS = 8 * 3600
#: Requests served at once (one process: replay jobs run beside them).
CONSOLE_THREADS = 8
