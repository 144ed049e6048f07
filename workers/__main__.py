"""``python -m workers`` (what ``distinct-forwarder worker`` runs): a supervisor and its worker.

The parent validates the configuration, then runs the Celery worker as a
child (workers/supervise.py) and requeues whatever a child that died still
held. The child (``FORWARDER_WORKER_CHILD=1``) is the Celery worker itself.
"""

from __future__ import annotations

import os
import socket
import sys

from forwarder.config import Settings
from forwarder.errors import ConfigError
from workers.supervise import CHILD_ENV, supervise


def requeue_dead_child(settings: Settings) -> object:
    """What the supervisor runs once a child has ended: requeue what it held."""

    def after_child(pid: int, code: int) -> None:
        from forwarder.store import Store, connect
        from workers.holding import Holding

        client = connect(settings.redis_url, timeout=5.0)
        prefix = f"{socket.gethostname().replace('|', '_') or 'localhost'}:{pid}:"
        holding = Holding(client, settings.namespace, f"supervisor-of-{pid}")
        for worker in Store(client, settings.namespace).workers():
            if worker.id.startswith(prefix):
                n = holding.requeue_worker(worker.id, None)
                if n > 0:
                    print(f"distinct-forwarder: the worker (pid {pid}) ended with code {code} "
                          f"holding {n} events; requeued them", file=sys.stderr, flush=True)

    return after_child


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
        settings.require_delivery()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(CHILD_ENV) != "1":
        from forwarder.redis_server import version_problem
        from forwarder.store import connect

        problem = version_problem(connect(settings.redis_url, timeout=5.0))
        if problem:
            print(f"Error: {problem}", file=sys.stderr)
            return 2
        return supervise([sys.executable, "-m", "workers", *args],
                         after_child=requeue_dead_child(settings))  # type: ignore[arg-type]
    from workers.app import app

    app.worker_main(["worker", "--without-gossip", "--without-mingle", "--loglevel=INFO",
                     f"--hostname=forwarder-{os.getpid()}@%h", *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
