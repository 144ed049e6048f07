"""The Celery app: ``celery -A workers worker`` or ``distinct-forwarder worker``.

Celery runs the worker: its process, its pool of delivery threads, signals,
remote control, Flower. It does not carry the events: each worker process
holds the events it takes in Redis (workers/holding.py) and sends itself one
task per batch through a Celery queue of its own (workers/dispatcher.py), so
no setting of kombu's Redis transport stands between an event and its loss.
Every setting below says which trap it avoids. Only public Celery and kombu
API is used: no transport subclass, no private attribute.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, bootsteps, signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.exceptions import ImproperlyConfigured

from forwarder.config import Settings
from forwarder.logs import install as install_logging
from forwarder.redis_server import version_problem
from workers import tasks
from workers.holding import new_worker_id
from workers.runtime import WorkerRuntime, dispatch_queue


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


def celery_config(settings: Settings, worker: str) -> dict[str, Any]:
    """The Celery settings of worker process ``worker``; each one is a deliberate choice."""
    broker_url, broker_extra, broker_use_ssl = broker_connection(settings.redis_url)
    queue = dispatch_queue(worker)
    return {
        "broker_url": broker_url,
        # rediss://: the TLS options from the URL's query (None: plain TCP).
        "broker_use_ssl": broker_use_ssl,
        "broker_transport_options": {
            # sentinel://: the master's name, the sentinels being in the URL.
            **broker_extra,
            # Every kombu key (this worker's dispatch queue, bindings) under
            # the namespace, next to the forwarder's own keys.
            "global_keyprefix": f"{settings.namespace}:",
            # A Celery message only points at a batch this worker holds in
            # Redis; kombu's unacked hash and visibility timeout would be a
            # second, slower way of holding it. Off.
            "ack_emulation": False,
            # One list per queue, whatever a message's priority.
            "priority_steps": [0],
            # Notice a dead Redis connection instead of waiting forever.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        # JSON only: no pickle from a broker shared with other programs.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Nobody reads results; storing them would only fill Redis.
        "task_ignore_result": True,
        "result_backend": None,
        # What matters is held in Redis until each event's outcome is stored;
        # the message is acknowledged when its task starts.
        "task_acks_late": False,
        # One message per pool slot: the dispatcher decides how much is taken.
        "worker_prefetch_multiplier": 1,
        # Threads: delivery waits on the network, not the CPU.
        "worker_pool": "threads",
        "worker_concurrency": settings.concurrency,
        # This process consumes only its own dispatch queue, bound to the
        # default exchange: a message is routed by the queue's name alone.
        "task_default_queue": queue.name,
        "task_default_exchange": "",
        "task_queues": [queue],
        "task_create_missing_queues": False,
        # Keep reconnecting to Redis for as long as it takes.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # SIGTERM is a warm shutdown: each running task finishes its current
        # POST and hands the rest of its batch back (see _on_shutdown); the
        # worker then requeues what it still holds. SIGQUIT (cold): running
        # tasks get this long.
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
        "shutdown took longer than FORWARDER_SHUTDOWN_TIMEOUT (%.0f s): exiting now; what "
        "this worker held is requeued by the other workers once its heartbeat is silent",
        settings.shutdown_timeout)
    os._exit(1)


class ForwarderCelery(Celery):
    """The Celery app of one worker process, with the forwarder's runtime beside it."""

    def __init__(self, settings: Settings, worker: str):
        super().__init__("distinct-forwarder", set_as_current=False)
        self.forwarder_settings = settings
        #: This process's id in the worker registry (host:pid:random).
        self.worker_id = worker
        self._runtime_lock = threading.Lock()
        self._runtime_instance: WorkerRuntime | None = None

    def runtime(self) -> WorkerRuntime:
        """This process's WorkerRuntime, built on first use (after any fork)."""
        with self._runtime_lock:
            if self._runtime_instance is None:
                install_logging(self.forwarder_settings.log_format,
                                secrets=self.forwarder_settings.secrets())
                # Our own line per delivery outcome says more; Celery's two
                # lines per task ("received", "succeeded") would triple the log.
                for name in ("celery.app.trace", "celery.worker.strategy"):
                    logging.getLogger(name).setLevel(logging.WARNING)
                self._runtime_instance = WorkerRuntime(self, self.forwarder_settings,
                                                       self.worker_id)
            return self._runtime_instance

    def runtime_if_started(self) -> WorkerRuntime | None:
        return self._runtime_instance


class ForwarderStep(bootsteps.StartStopStep):
    """Starts the forwarder's runtime once the pool exists, before consuming."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        pool = worker.pool_cls
        if not (isinstance(pool, type) and issubclass(pool, (ThreadPool, SoloPool))):
            raise ImproperlyConfigured(
                "distinct-forwarder workers run with the threads pool (the default; or "
                "--pool=solo): their tasks share the process that holds their events")
        runtime = worker.app.runtime()
        problem = version_problem(runtime.store.client)
        if problem:
            raise ImproperlyConfigured(problem)
        runtime.start(int(worker.concurrency or 1))

    def stop(self, worker: Any) -> None:
        runtime = worker.app.runtime_if_started()
        if runtime is not None:
            runtime.stop_taking()


def create_app(settings: Settings | None = None) -> ForwarderCelery:
    """A Celery app delivering the events of ``settings.namespace``."""
    settings = settings or Settings.from_env()
    worker = new_worker_id()
    app = ForwarderCelery(settings, worker)
    app.config_from_object(celery_config(settings, worker))
    tasks.register(app)
    app.steps["worker"].add(ForwarderStep)

    def _on_shutting_down(**_: Any) -> None:
        # Only the app that started a runtime in this process reacts.
        runtime = app.runtime_if_started()
        if runtime is None:
            return
        runtime.stop_taking()
        # Backstop: a POST slower than the timeout must not hold the exit.
        # What it held is requeued by a live worker once this one is silent.
        timer = threading.Timer(settings.shutdown_timeout, _force_exit, [settings])
        timer.daemon = True
        timer.start()

    def _on_shutdown(**_: Any) -> None:
        runtime = app.runtime_if_started()
        if runtime is not None:
            runtime.close()

    signals.worker_shutting_down.connect(_on_shutting_down, weak=False)
    signals.worker_shutdown.connect(_on_shutdown, weak=False)
    return app


app = create_app()
