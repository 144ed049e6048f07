"""What ``distinct-forwarder status`` reports, read from Redis alone.

Workers publish what there is to know about them (heartbeat, host, pid,
threads, what they hold) in Redis; nothing here talks to Celery.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from forwarder.config import Settings
from forwarder.constants import WORKER_DEAD_AFTER_SECONDS
from forwarder.messages import MalformedEvent, parse_event
from forwarder.store import Store

DAY = 86400.0


def _first_seen(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return parse_event(raw)["first_seen"]
    except MalformedEvent:
        return None


def live_workers(store: Store, now: float, timeout: float = WORKER_DEAD_AFTER_SECONDS
                 ) -> list[dict[str, Any]]:
    """Workers whose heartbeat is recent, with what they publish."""
    shown = []
    for worker in store.workers():
        age = max(0.0, now - worker.last_beat)
        shown.append({
            "id": worker.id, "host": worker.info.get("host"),
            "pid": int(worker.info["pid"]) if worker.info.get("pid", "").isdigit() else None,
            "threads": int(worker.info["threads"])
            if worker.info.get("threads", "").isdigit() else None,
            "held": worker.held, "last_beat_age": round(age, 1),
            "silent": age > timeout,
        })
    return shown


def redis_health(client: redis.Redis) -> dict[str, Any]:
    try:
        info = client.info("memory")
    except redis.RedisError:
        return {"used_memory": None, "maxmemory": None, "eviction_policy": None,
                "warning": "could not read INFO memory"}
    policy = info.get("maxmemory_policy")
    warning = None
    if policy != "noeviction":
        warning = (f"maxmemory-policy is {policy!r}: Redis may evict queue keys under "
                   "memory pressure; set it to noeviction")
    return {"used_memory": info.get("used_memory_human"),
            "maxmemory": info.get("maxmemory_human"), "eviction_policy": policy,
            "warning": warning}


def collect(settings: Settings, store: Store) -> dict[str, Any]:
    now = time.time()
    due = store.next_retry_due()
    breaker = store.breaker()
    oldest_queued = _first_seen(store.oldest_queued())
    oldest = [t for t in (oldest_queued, _first_seen(store.first_retry())) if t is not None]
    workers = live_workers(store, now, settings.worker_timeout)
    return {
        "namespace": store.namespace,
        "queue": store.queue_depth(),
        # Taken off the queue by a worker, outcome not yet stored.
        "held": sum(w["held"] for w in workers),
        "retry": store.retry_depth(),
        "retry_due_now": store.retry_due(now),
        "retry_next_due_in": None if due is None else round(max(0.0, due - now), 1),
        "oldest_waiting_age": round(now - min(oldest), 1) if oldest else None,
        "oldest_queued_age": None if oldest_queued is None else round(now - oldest_queued, 1),
        "dlq": store.dlq_depth(),
        "dlq_by_reason": store.dlq_depth_by_reason(),
        "dlq_expiring_24h": store.dlq_expiring(now, settings.dlq_ttl, DAY),
        "breaker": {
            "state": breaker.state,
            "reason": breaker.reason or None,
            "open_for": None if breaker.open_until is None
            else round(max(0.0, breaker.open_until - now), 1),
            "hint": breaker.hint or None,
            "times_opened": breaker.opened_count,
        },
        "last_minute": store.outcome_counts(now, 1),
        "last_hour": store.outcome_counts(now, 60),
        "workers": workers,
        "rate_limit": settings.rate_limit,
        "redis": redis_health(store.client),
    }


def render(report: dict[str, Any], color: bool = False) -> str:
    """The report as aligned text lines for a person."""
    def warn(text: str) -> str:
        return f"\x1b[33m{text}\x1b[0m" if color else text

    b = report["breaker"]
    breaker = b["state"] if b["state"] == "closed" else warn(
        f"OPEN ({b['reason']}) for {b['open_for']} s more: {b['hint']}")
    oldest = report["oldest_waiting_age"]
    due = report["retry_next_due_in"]
    workers = report["workers"]
    redis_info = report["redis"]
    lines = [
        ("namespace", report["namespace"]),
        ("queue", f"{report['queue']}" + (f" (+{report['held']} held by workers)"
                                          if report["held"] else "")),
        ("retry set", f"{report['retry']}" + (f" ({report['retry_due_now']} due now)"
                                                if report["retry_due_now"] else
                                                f" (next due in {due} s)" if due is not None
                                                else "")),
        ("oldest waiting", "-" if oldest is None else f"{oldest} s"),
        ("dead letters", f"{report['dlq']} {report['dlq_by_reason'] or ''}".rstrip()
         + (f", {report['dlq_expiring_24h']} expire within 24 h"
            if report["dlq_expiring_24h"] else "")),
        ("breaker", breaker),
        ("last minute", _outcomes(report["last_minute"])),
        ("last hour", _outcomes(report["last_hour"])),
        ("workers", _workers(workers, warn)),
        ("rate limit", f"{report['rate_limit']:g}/s" if report["rate_limit"] else "none"),
        ("redis memory", f"{redis_info['used_memory']} used, max "
         f"{redis_info['maxmemory'] or 'unset'}, policy {redis_info['eviction_policy']}"),
    ]
    text = [f"{name:15} {value}" for name, value in lines]
    if redis_info["warning"]:
        text.append(warn(f"WARNING: {redis_info['warning']}"))
    return "\n".join(text)


def _workers(workers: list[dict[str, Any]], warn: Any) -> str:
    if not workers:
        return warn("none registered")
    live = [w for w in workers if not w["silent"]]
    lines = [f"{len(live)} live" + (warn(f", {len(workers) - len(live)} silent (being "
                                         "recovered)") if len(live) < len(workers) else "")]
    for w in workers:
        line = (f"{w['host']} pid {w['pid']}, {w['threads']} threads, {w['held']} held, "
                f"beat {w['last_beat_age']} s ago")
        lines.append("  " + (warn(line) if w["silent"] else line))
    return ("\n" + " " * 16).join(lines)


def _outcomes(counts: dict[str, int]) -> str:
    return (f"{counts.get('delivered', 0)} delivered, {counts.get('retried', 0)} retried, "
            f"{counts.get('dead_lettered', 0)} dead-lettered")
