"""Prometheus metrics of a worker process, served on FORWARDER_METRICS_PORT."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("distinct_forwarder.metrics")

_OUTCOME_LABELS = ("kind", "type", "status")
DELIVERED = Counter("distinct_forwarder_delivered_total",
                    "Events Distinct accepted.", _OUTCOME_LABELS)
RETRIED = Counter("distinct_forwarder_retried_total",
                  "Failed attempts scheduled for a retry.", _OUTCOME_LABELS)
DEAD_LETTERED = Counter("distinct_forwarder_dead_lettered_total",
                        "Events moved to the dead-letter queue.", _OUTCOME_LABELS)
DEFERRED = Counter("distinct_forwarder_deferred_total",
                   "Events parked without a request (breaker open, rate limit, busy).")
HTTP_LATENCY = Histogram("distinct_forwarder_http_seconds", "Duration of one POST to Distinct.",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15))
CAPTURE_TO_DELIVERY = Histogram(
    "distinct_forwarder_capture_to_delivery_seconds",
    "From capture() (or replay) to Distinct's acceptance.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400),
)
QUEUE_DEPTH = Gauge("distinct_forwarder_queue_depth", "Messages waiting in the queue.")
RETRY_DEPTH = Gauge("distinct_forwarder_retry_depth", "Events waiting in the retry set.")
#: What autoscaling adds to the queue length (deploy/kubernetes: KEDA): retries
#: whose time has come wait only for the breaker to let them back in the queue.
RETRY_DUE = Gauge("distinct_forwarder_retry_due", "Retries due now (Redis clock).")
#: For the queue-age alert (deploy/prometheus/alerts.yml).
QUEUE_OLDEST_AGE = Gauge("distinct_forwarder_queue_oldest_age_seconds",
                         "Seconds since the next event out of the queue was captured; "
                         "0 when the queue is empty.")
DLQ_DEPTH = Gauge("distinct_forwarder_dlq_depth", "Entries in the dead-letter queue.")
BREAKER_OPEN = Gauge("distinct_forwarder_breaker_open", "1 while the circuit breaker is open.")


def serve(port: int | None, bind: str = "127.0.0.1") -> bool:
    """Start the metrics endpoint (loopback by default); a taken port is logged, not fatal."""
    if not port:
        return False
    try:
        start_http_server(port, addr=bind)
    except OSError as exc:
        log.warning("metrics: cannot listen on %s:%d (%s); metrics disabled", bind, port, exc)
        return False
    log.info("metrics on http://%s:%d/metrics", bind, port)
    return True
