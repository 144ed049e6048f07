"""The ``distinct.deliver`` task: Celery's handle on one batch a worker holds.

The task never raises for a delivery problem (workers/deliverer.py stores an
outcome for every event, or hands it back), and never loses an event to an
error of its own: the batch stays held in Redis by this worker until each
event is done, so nothing depends on the Celery message, which only names
the batch.
"""

from __future__ import annotations

import logging
from typing import Any

from forwarder.constants import TASK_NAME
from workers.deliverer import RedisUnavailable

log = logging.getLogger("distinct_forwarder.delivery")
#: The most events one batch can name (the dispatcher takes BATCH_EVENTS;
#: a 0.1 message expanded on upgrade may carry up to 100 per message).
MAX_BATCH_EVENTS = 4096


def register(app: Any) -> Any:
    """Register ``distinct.deliver`` on ``app`` (a workers.app.ForwarderCelery)."""

    @app.task(name=TASK_NAME, bind=True, ignore_result=True, typing=False, shared=False)
    def deliver(self: Any, batch: Any = None, count: Any = 0) -> dict[str, int]:
        runtime = self.app.runtime()
        if (not isinstance(batch, str) or type(count) is not int
                or not 0 < count <= MAX_BATCH_EVENTS):
            # Not a message this worker's dispatcher sent (a 0.1 producer's, a
            # hand-written one): nothing is held for it, so nothing to do.
            log.error("ignored a %s message that names no held batch", self.name)
            return {"ignored": 1}
        if not runtime.dispatcher.begin(batch):
            return {"duplicate": 1}
        finished = False
        try:
            counts = runtime.deliverer.deliver_batch(batch, count)
            finished = True
            return counts
        except RedisUnavailable as exc:
            log.error("%s; batch %s stays held and is dispatched again later", exc, batch)
            return {"redis_unavailable": 1}
        except Exception as exc:
            log.exception("unexpected error delivering batch %s", batch)
            try:
                counts = runtime.deliverer.after_error(batch, count, exc)
                finished = True
                return counts
            except RedisUnavailable:
                return {"redis_unavailable": 1}
        finally:
            runtime.dispatcher.end(batch, finished)

    return deliver
