"""Upgrading from 0.1: its workers' structures drained into the one queue.

0.1 producers wrote Celery messages to kombu's queue list, and 0.1 workers
held messages in kombu's ``unacked`` hash, in fetch lists and in taken
batches. A 0.2 worker moves all of these, as they become free, onto the
queue (``upgrade.lua``), where the dispatcher turns each Celery message into
its events (:func:`expand`). Retry-set members and spool rows written by 0.1
take the same path when they come due. During a rolling upgrade old and new
workers run side by side: nothing a live 0.1 worker may still be working on
is touched. Remove this module (and the LEGACY_* keys) in 0.3.
"""

from __future__ import annotations

import logging

import redis

from forwarder import constants as C
from forwarder.messages import is_legacy_message, upgrade_item
from forwarder.scripts import script

log = logging.getLogger("distinct_forwarder.upgrade")

_UPGRADE = script("upgrade", "workers")
#: 0.1's visibility timeout: an unacked message younger than this may still
#: be in a live 0.1 worker's hands.
LEGACY_VISIBILITY_SECONDS = 180
#: 0.1 workers refreshed their fetch-list registration every 60 s.
LEGACY_FETCHER_SILENT_SECONDS = 150
#: Messages moved per kind and call.
LIMIT = 500


def legacy_keys(namespace: str) -> list[str]:
    return [C.key(namespace, name) for name in (
        C.LEGACY_QUEUE, C.LEGACY_UNACKED, C.LEGACY_UNACKED_INDEX, C.LEGACY_FETCHERS,
        C.LEGACY_TAKEN)]


def drain_legacy(client: redis.Redis, namespace: str) -> int:
    """Move what 0.1 left (and may still leave) onto the queue; returns how many moved."""
    if not client.exists(*legacy_keys(namespace)):
        return 0
    k = lambda name: C.key(namespace, name)  # noqa: E731
    total = 0
    while True:
        n = int(_UPGRADE(client, legacy_queue=k(C.LEGACY_QUEUE), unacked=k(C.LEGACY_UNACKED),
                         unacked_index=k(C.LEGACY_UNACKED_INDEX),
                         fetchers=k(C.LEGACY_FETCHERS), taken=k(C.LEGACY_TAKEN),
                         queue=k(C.QUEUE), taken_prefix=k(C.LEGACY_TAKEN_PREFIX),
                         unacked_after=LEGACY_VISIBILITY_SECONDS,
                         fetch_after=LEGACY_FETCHER_SILENT_SECONDS, limit=LIMIT))
        total += n
        if n < LIMIT:
            break
    if total:
        log.warning("upgrade from 0.1: moved %d of its messages onto the queue", total)
    return total


def expand(client: redis.Redis, held_key: str, batch: str,
           items: list[bytes]) -> list[bytes]:
    """A held batch with each 0.1 Celery message replaced by the events it carried.

    One transaction: the batch's fields are renumbered in place, so the batch
    stays held whole, before or after, whatever happens in between.
    """
    if not any(is_legacy_message(i) for i in items):
        return items
    expanded = [e if isinstance(e, bytes) else e.encode()
                for item in items for e in upgrade_item(item)]
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(held_key, *[f"{batch}:{n}" for n in range(1, len(items) + 1)])
        if expanded:
            pipe.hset(held_key, mapping={f"{batch}:{n}": e
                                         for n, e in enumerate(expanded, start=1)})
        pipe.execute()
    return expanded
