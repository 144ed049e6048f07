"""The Celery app: ``celery -A workers worker`` or ``distinct-forwarder worker``.

Every setting below is chosen so that an accepted event is never lost; the
comment on each says which trap it avoids.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from forwarder.config import Settings
from forwarder.constants import QUEUE, VISIBILITY_TIMEOUT_SECONDS
from forwarder.logs import install as install_logging
from workers import tasks
from workers.promoter import RetryPromoterStep


def broker_connection(redis_url: str) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """kombu's broker URL, extra transport options and ``broker_use_ssl`` for a REDIS_URL.

    Producers, workers and tools share one REDIS_URL; kombu spells Sentinel
    (``sentinel://h1;sentinel://h2`` plus ``master_name``) and TLS options
    (``broker_use_ssl``, with ``ssl`` constants) its own way.
    """
    import ssl
    from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

    from forwarder.config import parse_sentinel_url

    if redis_url.startswith("sentinel://"):
        target = parse_sentinel_url(redis_url)
        auth = ""
        if target.username or target.password is not None:
            user, password = (quote(v or "", safe="") for v in (target.username, target.password))
            auth = f"{user}:{password}@"
        url = ";".join(
            f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{target.db}"
            for host, port in target.hosts
        )
        return url, {"master_name": target.master}, None
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return redis_url, {}, None
    query = parse_qsl(parts.query)
    use_ssl: dict[str, Any] = {k: v for k, v in query if k.startswith("ssl_")}
    levels = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}
    # Verify the server unless the URL says otherwise, as redis-py does.
    use_ssl["ssl_cert_reqs"] = levels.get(
        str(use_ssl.get("ssl_cert_reqs", "required")).lower(), ssl.CERT_REQUIRED
    )
    rest = urlencode([(k, v) for k, v in query if not k.startswith("ssl_")])
    return urlunsplit(parts._replace(query=rest)), {}, use_ssl


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``; each one is a deliberate choice."""
    broker_url, broker_extra, broker_use_ssl = broker_connection(settings.redis_url)
    return {
        "broker_url": broker_url,
        # kombu's Redis transport with a reconnect bug closed (workers/transport.py).
        "broker_transport": "workers.transport:SentinelTransport"
        if broker_url.startswith("sentinel://") else "workers.transport:Transport",
        # rediss://: the TLS options from the URL's query (None: plain TCP).
        "broker_use_ssl": broker_use_ssl,
        "broker_transport_options": {
            # sentinel://: the master's name, the sentinels being in the URL.
            **broker_extra,
            # Every kombu key (queue list, unacked hash, bindings) under the
            # namespace, next to the forwarder's own keys.
            "global_keyprefix": f"{settings.namespace}:",
            # One list per queue, whatever a message's priority: the channel
            # fetches it with BLMOVE into a fetch list (workers/transport.py),
            # so a kill -9 between fetch and kombu's unacked record loses nothing.
            "priority_steps": [0],
            # A taken message whose worker died comes back after this long.
            # It exceeds the longest task (TASK_BUDGET_SECONDS plus one
            # request's timeouts), so a running task is never handed to a
            # second worker, and stays short so a kill -9 costs minutes.
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            # Sweep for such messages every 10 s rather than kombu's
            # default 10 s x 10, so they come back soon after the timeout.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # Notice a dead Redis connection instead of waiting forever.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        # JSON only: no pickle from a queue that producers write directly.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Nobody reads results; storing them would only fill Redis.
        "task_ignore_result": True,
        "result_backend": None,
        # Acknowledge after the task has stored every outcome: a crash means
        # the message runs again (at-least-once), never that it is lost.
        "task_acks_late": True,
        # A prefork child killed mid-task: reject (requeue) rather than ack.
        "task_reject_on_worker_lost": True,
        # One message per pool slot: little sits in worker memory, and none of
        # it waits long enough to meet the visibility timeout.
        "worker_prefetch_multiplier": 1,
        # Threads: delivery waits on the network, not the CPU.
        "worker_pool": "threads",
        "worker_concurrency": settings.concurrency,
        "task_default_queue": QUEUE,
        # The default exchange: producers LPUSH messages routed by queue name.
        "task_queues": [Queue(QUEUE, Exchange(""), routing_key=QUEUE)],
        "task_create_missing_queues": False,
        # Keep reconnecting to Redis for as long as it takes.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # SIGTERM is a warm shutdown: each running task finishes its current
        # POST and hands its unsent events back (see _on_shutdown), kombu
        # returns unstarted messages at once. SIGQUIT (cold): running tasks
        # get this long, then anything unacknowledged goes back at once.
        "worker_soft_shutdown_timeout": settings.shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        # Backoff is the retry set's job and rate limits are global (Redis).
        "worker_disable_rate_limits": True,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }


def _force_exit(settings: Settings) -> None:
    logging.getLogger("distinct_forwarder.worker").error(
        "shutdown took longer than FORWARDER_SHUTDOWN_TIMEOUT (%.0f s): exiting now; "
        "unfinished messages return after the visibility timeout", settings.shutdown_timeout)
    os._exit(1)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app delivering the events of ``settings.namespace``."""
    settings = settings or Settings.from_env()
    app = Celery("distinct-forwarder", set_as_current=False)
    app.config_from_object(celery_config(settings))
    tasks.register(app)
    app.steps["worker"].add(RetryPromoterStep)

    lock = threading.Lock()
    holder: dict[str, tasks.Deliverer] = {}

    def deliverer() -> tasks.Deliverer:
        # Built on first use in each process, after any fork.
        with lock:
            if "d" not in holder:
                install_logging(settings.log_format)
                # Our own line per delivery outcome says more; Celery's two
                # lines per task ("received", "succeeded") would triple the log.
                for name in ("celery.app.trace", "celery.worker.strategy"):
                    logging.getLogger(name).setLevel(logging.WARNING)
                holder["d"] = tasks.Deliverer(settings)
            return holder["d"]

    def _on_shutdown(**_: Any) -> None:
        # Only the app that delivered something in this process reacts.
        running = holder.get("d")
        if running is None:
            return
        running.stopping.set()
        # Backstop: a POST slower than the timeout must not hold the exit.
        # What it held is in kombu's unacked hash: back after the visibility
        # timeout, and the dedupe claim keeps it from being POSTed twice.
        timer = threading.Timer(settings.shutdown_timeout, _force_exit, [settings])
        timer.daemon = True
        timer.start()

    signals.worker_shutting_down.connect(_on_shutdown, weak=False)
    app.forwarder_settings = settings  # type: ignore[attr-defined]
    app.forwarder_deliverer = deliverer  # type: ignore[attr-defined]
    return app


app = create_app()
