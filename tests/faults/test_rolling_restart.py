"""A rolling restart, as systemd, compose or Kubernetes does one, under load.

Two workers deliver while a producer captures steadily; one is stopped with
SIGTERM and started again while events flow, then the other. SIGTERM goes to
the supervisor (PID 1 of a container, the main process of a systemd unit with
KillMode=mixed), which passes it to the Celery worker once: the POSTs in
flight finish, the rest of what the worker holds goes back to the queue, and
the other worker (then the restarted one) delivers it. Nothing may be lost and
nothing POSTed twice. Prints its figures (``pytest tests/faults -s``) and adds
a row to the fault table.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from typing import Any

import pytest

from forwarder.constants import DEFAULT_SHUTDOWN_TIMEOUT
from forwarder.sandbox import Faults
from tests.conftest import API_KEY, WorkerProcess, wait_until
from tests.faults.conftest import Rig, event

pytestmark = pytest.mark.timeout(300)

RATE = 200  # captures per second, steadily, for the whole run
EVENTS = 8000  # 40 s of captures
#: Distinct's answer time: at each SIGTERM a worker has POSTs in flight...
LATENCY_MS = 200
#: ...and, after a burst captured just before, batches it holds but has not started.
BURST = 2000


def _restart(r: Rig, worker: WorkerProcess) -> dict[str, Any]:
    """A burst, then SIGTERM ``worker``, wait for it to exit, start its replacement."""
    tag = f"burst{worker.pid}"
    for first in range(0, BURST, 100):  # the producer thread captures meanwhile
        items = [event(tag, i) for i in range(first, first + 100)]
        r.producer.capture_many(items)
        r.captured += [e["eventValue"] for e in items]
    wait_until(lambda: sum(w.held for w in r.store.workers()) >= BURST // 4, 30, 0.01,
               "the burst held by the workers")
    # The registered worker is the supervisor's Celery child.
    (me,) = [w for w in r.store.workers()
             if w.info.get("pid", "").isdigit() and _is_child_of(int(w.info["pid"]), worker.pid)]
    held = me.held
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(DEFAULT_SHUTDOWN_TIMEOUT + 10)
    exit_seconds = time.monotonic() - stopped_at
    registered = {w.id for w in r.store.workers()}
    replacement = r.start_worker()
    back_seconds = time.monotonic() - stopped_at
    return {"code": code, "exit_seconds": exit_seconds, "held_at_sigterm": held,
            "unregistered": me.id not in registered, "back_seconds": back_seconds,
            "replacement": replacement}


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) == parent
    except OSError:
        return False


def test_rolling_restart_of_two_workers_under_load(rig) -> None:
    r: Rig = rig("rolling restart: 2 workers, each SIGTERM + restart under load",
                 Faults(api_key=API_KEY, latency_ms=LATENCY_MS))
    first, second = r.start_worker(), r.start_worker()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            r.capture(EVENTS, rate=RATE)
        except BaseException as exc:  # surfaced below, never swallowed
            errors.append(exc)

    producer = threading.Thread(target=produce)
    started = time.monotonic()
    producer.start()
    wait_until(lambda: r.delivered_count() >= 500, 60, 0.05, "500 delivered")
    r.sample_rss()
    restarts = [_restart(r, first)]
    wait_until(lambda: r.delivered_count() >= len(r.captured) - 2 * RATE, 90, 0.1,
               "delivery caught up after the first restart")
    time.sleep(3)
    r.sample_rss()
    restarts.append(_restart(r, second))
    producer.join(EVENTS / RATE + 60)
    assert not producer.is_alive() and not errors, errors
    captured_for = time.monotonic() - started
    r.wait_delivered(120)
    # Deliveries per second through the run: the restarts must not stop the flow.
    times = sorted(t for ts in r.accepted_times().values() for t in ts)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    note = ("held " + " and ".join(str(x["held_at_sigterm"]) for x in restarts)
            + " at SIGTERM, exited " + " and ".join(f"{x['exit_seconds']:.1f}"
                                                   for x in restarts)
            + f" s later; longest pause between deliveries {max(gaps):.2f} s")
    row = r.row(note)
    print(f"\nrolling restart: {EVENTS} events captured at {RATE}/s over "
          f"{captured_for:.0f} s, plus a burst of {BURST} before each SIGTERM; "
          f"Distinct answers in {LATENCY_MS} ms")
    for i, x in enumerate(restarts, 1):
        print(f"  worker {i}: exit code {x['code']}, exited {x['exit_seconds']:.2f} s after "
              f"SIGTERM, held {x['held_at_sigterm']} events then, unregistered "
              f"{x['unregistered']}, replacement ready {x['back_seconds']:.2f} s after SIGTERM")
    print(f"  delivered {row['delivered']} of {row['captured']}, lost {row['lost']}, "
          f"POSTed twice {row['POSTed twice']}, DLQ {r.store.dlq_depth()}, "
          f"longest pause between deliveries {max(gaps):.2f} s")
    for x in restarts:
        assert x["code"] == 0, x
        assert x["unregistered"], "a stopped worker hands back what it held and unregisters"
        assert x["exit_seconds"] <= DEFAULT_SHUTDOWN_TIMEOUT + 3
    assert row["lost"] == 0 and row["delivered"] == row["captured"], row
    assert row["POSTed twice"] == 0, row
    assert r.store.dlq_depth() == 0
    # The other worker kept delivering while each one restarted.
    assert max(gaps) < 5.0
