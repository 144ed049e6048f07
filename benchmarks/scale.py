"""Operating at scale, measured: a Distinct outage under steady traffic, and the
global rate limit across several worker processes.

    python -m benchmarks.scale outage [--outage 600] [--rate 20] [--workers 2]
    python -m benchmarks.scale rate-limit [--limit 50] [--workers 4] [--seconds 60]

Both print their figures; tests/test_scale.py runs short versions and checks them.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import threading
import time
from collections import Counter
from typing import Any

from benchmarks.harness import Bench, photo_event, rss_mb, wait_until
from forwarder import Forwarder


def run_outage(outage_s: float, rate: float = 20.0, workers: int = 2, pre_s: float = 5.0,
               drain_timeout: float = 180.0, redis_url: str | None = None,
               **worker_env: str) -> dict[str, Any]:
    """Steady captures while the sandbox answers 503 for ``outage_s`` seconds."""
    with Bench(redis_url) as bench:
        procs = [bench.start_worker(**worker_env) for _ in range(workers)]
        fwd = Forwarder(settings=bench.settings)
        captured = 0
        stop = threading.Event()
        produce_until = time.time() + pre_s + outage_s + 5.0

        def produce() -> None:
            nonlocal captured
            start = time.monotonic()
            while time.time() < produce_until and not stop.is_set():
                fwd.capture(photo_event(captured))
                captured += 1
                ahead = captured / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(pre_s)
        outage_start = time.time()
        bench.sandbox.faults.update({"outage_seconds": outage_s})
        outage_end = bench.sandbox.faults.outage_until
        rss_start = max(rss_mb(p.pid) for p in procs)
        rss_peak = rss_start
        opened_at = None
        states: list[tuple[float, str]] = []
        while time.time() < outage_end:
            state = bench.store.breaker()
            if state.state == "open" and opened_at is None:
                opened_at = time.time()
            states.append((time.time(), state.state))
            rss_peak = max(rss_peak, *(rss_mb(p.pid) for p in procs))
            time.sleep(0.2)
        producer.join()
        total = captured
        delivered_all = wait_until(
            lambda: len({e["body"]["eventValue"] for e in bench.sandbox.events}) >= total,
            drain_timeout, 0.2)
        time.sleep(1.0)
        events = list(bench.sandbox.events)
        answers = list(bench.sandbox.answers)
        values = Counter(e["body"]["eventValue"] for e in events)
        last = max((e["received_at"] for e in events), default=outage_end)
        during = [t for t, status in answers if outage_start <= t < outage_end]
        while_open = [t for t in during if opened_at is not None and t >= opened_at]
        cooldowns = _cooldown_periods(opened_at, outage_end, worker_env)
        return {
            "outage_s": outage_s, "capture_rate": rate, "workers": workers,
            "captured": total, "delivered": len(values),
            "lost": total - len(values), "posted_twice": sum(n - 1 for n in values.values()),
            "requests_during_outage": len(during),
            "breaker_opened_after_s": None if opened_at is None
            else round(opened_at - outage_start, 1),
            "requests_while_open": len(while_open),
            "cooldown_periods_while_open": cooldowns,
            "dead_lettered": bench.store.dlq_depth(),
            "all_delivered": delivered_all,
            "last_delivery_after_recovery_s": round(last - outage_end, 1),
            "worker_rss_start_mb": round(rss_start, 1),
            "worker_rss_peak_mb": round(rss_peak, 1),
            "worker_rss_growth_mb": round(rss_peak - rss_start, 1),
        }


def _cooldown_periods(opened_at: float | None, end: float, env: dict[str, str]) -> int:
    """How many cooldowns start between opening and ``end`` with the policy in ``env``."""
    if opened_at is None:
        return 0
    from forwarder.config import Settings

    settings = Settings.from_env({k: v for k, v in env.items()})
    cooldown, t, periods = settings.breaker_cooldown_min, opened_at, 0
    while t < end:
        periods += 1
        t += cooldown
        cooldown = min(cooldown * 2, settings.breaker_cooldown_max)
    return periods


def run_rate_limit(limit: float = 50.0, workers: int = 4, seconds: float = 60.0,
                   redis_url: str | None = None) -> dict[str, Any]:
    """A backlog larger than ``limit * seconds``, drained by ``workers`` processes.

    The sandbox that timestamps each POST runs in this process: under pytest, a
    full garbage collection of a large test process would stall it for a few
    hundred ms and bunch the recorded arrivals, so the objects already there are
    frozen out of collection for the run.
    """
    gc.collect()
    gc.freeze()
    try:
        return _rate_limit(limit, workers, seconds, redis_url)
    finally:
        gc.unfreeze()


def _rate_limit(limit: float, workers: int, seconds: float,
                redis_url: str | None) -> dict[str, Any]:
    with Bench(redis_url) as bench:
        fwd = Forwarder(settings=bench.settings)
        backlog = int(limit * (seconds + 30))
        for start in range(0, backlog, 500):
            fwd.capture_many([photo_event(i) for i in range(start, min(backlog, start + 500))])
        for _ in range(workers):
            bench.start_worker(FORWARDER_RATE_LIMIT=str(limit))
        wait_until(lambda: len(bench.sandbox.events) > limit * 2, 60, 0.05)
        begin = time.time()
        time.sleep(seconds)
        times = sorted(e["received_at"] for e in list(bench.sandbox.events)
                       if begin <= e["received_at"] < begin + seconds)
        per_second = Counter(int(t - begin) for t in times)
        # The busiest one-second window anywhere, not only on second boundaries.
        busiest, j = 0, 0
        for i in range(len(times)):
            while times[i] - times[j] >= 1.0:
                j += 1
            busiest = max(busiest, i - j + 1)
        return {
            "limit": limit, "workers": workers, "seconds": seconds,
            "delivered": len(times), "rate": round(len(times) / seconds, 2),
            "deviation_pct": round((len(times) / seconds - limit) / limit * 100, 1),
            "min_per_second": min(per_second.values()) if per_second else 0,
            "max_per_second": max(per_second.values()) if per_second else 0,
            "max_in_any_1s_window": busiest,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    outage = sub.add_parser("outage")
    outage.add_argument("--outage", type=float, default=600.0)
    outage.add_argument("--rate", type=float, default=20.0)
    outage.add_argument("--workers", type=int, default=2)
    rate = sub.add_parser("rate-limit")
    rate.add_argument("--limit", type=float, default=50.0)
    rate.add_argument("--workers", type=int, default=4)
    rate.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.what == "outage":
        result = run_outage(args.outage, args.rate, args.workers)
    else:
        result = run_rate_limit(args.limit, args.workers, args.seconds)
    for name, value in result.items():
        print(f"  {name:34} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
