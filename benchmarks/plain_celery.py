"""The baseline of ``benchmarks/redis_cost.py``: a forwarder written the obvious way.

A plain Celery app (kombu's Redis transport, ``acks_late``, one ``send_task`` per
event) whose task POSTs the event with ``requests``: what a Celery user writes
first. It exists only to be measured next to the forwarder in the same run.

    celery -A benchmarks.plain_celery worker -P threads -c 16
"""

from __future__ import annotations

import os
import threading
from typing import Any

import requests
from celery import Celery

BROKER = os.environ.get("PLAIN_BROKER_URL", "redis://127.0.0.1:6379/0")
SINK = os.environ.get("PLAIN_SINK_URL", "http://127.0.0.1:9")

app = Celery("plain-forwarder", broker=BROKER, set_as_current=False)
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                worker_prefetch_multiplier=1, task_ignore_result=True,
                task_serializer="json", accept_content=["json"],
                broker_transport_options={"visibility_timeout": 3600},
                worker_hijack_root_logger=False)
_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session  # type: ignore[no-any-return]


@app.task(name="plain.deliver", bind=True, acks_late=True, max_retries=5)
def deliver(self: Any, event: dict[str, Any]) -> int:
    answer = _session().post(f"{SINK}/api/v1/analytics/capture/bench-exp", json=event,
                             timeout=10)
    if answer.status_code >= 500:
        raise self.retry(countdown=1)
    return answer.status_code
