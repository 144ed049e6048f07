"""The Celery app: ``celery -A workers worker`` or ``distinct-forwarder worker``.

Every setting below is chosen so that an accepted event is never lost; the
comment on each says which trap it avoids.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from forwarder.config import Settings
from forwarder.constants import QUEUE, VISIBILITY_TIMEOUT_SECONDS
from forwarder.logs import install as install_logging
from workers import tasks
from workers.promoter import RetryPromoterStep


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings``; each one is a deliberate choice."""
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": {
            # Every kombu key (queue list, unacked hash, bindings) under the
            # namespace, next to the forwarder's own keys.
            "global_keyprefix": f"{settings.namespace}:",
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
        # On SIGTERM, give running tasks time to finish, then hand back
        # anything still unacknowledged at once instead of after the timeout.
        "worker_soft_shutdown_timeout": 15.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # Backoff is the retry set's job and rate limits are global (Redis).
        "worker_disable_rate_limits": True,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }


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
                holder["d"] = tasks.Deliverer(settings)
            return holder["d"]

    app.forwarder_settings = settings  # type: ignore[attr-defined]
    app.forwarder_deliverer = deliverer  # type: ignore[attr-defined]
    return app


app = create_app()
