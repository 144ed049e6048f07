"""``python -m benchmarks``: every figure of the performance issue, each as a ratio
against a limit measured in the same run on the same machine.

    python -m benchmarks [--quick] [--only enqueue,drain,slow,backlog,latency]

Figures: capture() and capture_many(100) against raw LPUSH; a 20,000-event drain by
one worker against a raw requests loop (nginx sink); one worker against a 50 ms sink;
a 100,000-event outage backlog; end-to-end latency at 200 events/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import requests

from benchmarks.harness import Bench, photo_event, print_table, rss_mb, wait_until
from benchmarks.sink import AsyncSink, NginxSink, async_rate
from forwarder import Forwarder
from forwarder.messages import encode_event, random_uuid

Row = tuple[str, str, str, str, str]


def _median(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def bench_enqueue(bench: Bench, runs: int, n: int) -> list[Row]:
    fwd = Forwarder(settings=bench.settings)
    client = bench.store.client
    raw_key = bench.store.queue_key + ":raw"
    event = photo_event(1)
    # The same bytes capture() writes for this event: the baseline is the LPUSH alone.
    message = encode_event({"id": random_uuid(), "kind": "capture", "experience": "bench-exp",
                            "body": {**event, "recordCapturedAt": "2026-11-28T10:15:00.000Z"},
                            "attempts": 0, "first_seen": time.time()})

    def raw_single() -> float:
        start = time.perf_counter()
        for _ in range(n):
            client.lpush(raw_key, message)
        return n / (time.perf_counter() - start)

    def capture_single() -> float:
        start = time.perf_counter()
        for _ in range(n):
            fwd.capture(event)
        return n / (time.perf_counter() - start)

    batch = [photo_event(i) for i in range(100)]

    def raw_batch() -> float:
        start = time.perf_counter()
        for _ in range(n // 100):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(100):
                    pipe.lpush(raw_key, message)
                pipe.execute()
        return (n // 100) * 100 / (time.perf_counter() - start)

    def capture_batch() -> float:
        start = time.perf_counter()
        for _ in range(n // 100):
            fwd.capture_many(batch)
        return (n // 100) * 100 / (time.perf_counter() - start)

    rows = []
    for label, mine, base, target in (
        ("capture() / raw LPUSH (events/s)", capture_single, raw_single, 0.5),
        ("capture_many(100) / pipelined LPUSH x100 (events/s)", capture_batch, raw_batch, 0.5),
    ):
        a = _median(runs, mine)
        b = _median(runs, base)
        bench.store.wipe()
        rows.append(_row(label, a, b, target))
    return rows


def _row(label: str, value: float, baseline: float, target: float) -> Row:
    ratio = value / baseline
    return (label, f"{value:,.0f}", f"{baseline:,.0f}", f"{ratio:.2f}",
            f">= {target} {'ok' if ratio >= target else 'MISSED'}")


def _drain(bench: Bench, total: int, sample: Callable[[], None] | None = None) -> float:
    """Events/s of the workers from first to last delivery of ``total`` events."""
    def delivered() -> int:
        return bench.store.outcome_counts(time.time(), 30)["delivered"]

    wait_until(lambda: delivered() > 0, 120, 0.01)
    start, first = time.perf_counter(), delivered()
    while delivered() < total:
        if sample:
            sample()
        time.sleep(0.05)
    return (total - first) / (time.perf_counter() - start)


def _fill(bench: Bench, total: int) -> None:
    fwd = Forwarder(settings=bench.settings)
    for i in range(total):
        fwd.capture(photo_event(i))


def _worker_drain(sink_url: str, total: int) -> float:
    """A backlog of ``total`` single captures drained by one default worker."""
    with Bench() as bench:
        _fill(bench, total)
        proc = bench.start_worker(DISTINCT_API_URL=sink_url)
        peak = [0.0]
        rate = _drain(bench, total, lambda: peak.__setitem__(0, max(peak[0], rss_mb(proc.pid))))
        _PEAKS.append(peak[0])
        return rate


def bench_drain_fast(runs: int, total: int) -> list[Row]:
    sink = NginxSink()
    try:
        sink_rate = async_rate(sink.url, 40000, 32)
        body = photo_event(1)

        def raw_loop() -> float:
            session = requests.Session()
            headers = {"Content-Type": "application/json", "x-distinct-api-key": "k"}
            url = sink.url + "/api/v1/analytics/capture/bench-exp"
            start = time.perf_counter()
            for i in range(total):
                session.post(url, json=dict(body, eventValue=f"e{i}"), headers=headers,
                             timeout=10)
            return total / (time.perf_counter() - start)

        mine = _median(runs, lambda: _worker_drain(sink.url, total))
        base = _median(runs, raw_loop)
    finally:
        sink.stop()
    return [_row(f"drain {total:,} events, 1 worker / raw requests loop (events/s)",
                 mine, base, 0.8),
            (f"  sink: nginx, {sink_rate:,.0f} req/s = {sink_rate / mine:.1f}x the worker",
             "", "", "", f">= 3x {'ok' if sink_rate >= 3 * mine else 'MISSED'}")]


_PEAKS: list[float] = []


def bench_drain_slow(runs: int, total: int) -> list[Row]:
    sink = AsyncSink(latency=0.05)
    try:
        capacity = async_rate(sink.url, 20000, 512)

        mine = _median(runs, lambda: _worker_drain(sink.url, total))
    finally:
        sink.stop()
    return [("drain, 50 ms sink, 1 worker process (events/s)", f"{mine:,.0f}", "", "",
             f">= 1,000 {'ok' if mine >= 1000 else 'MISSED'}"),
            (f"  sink: asyncio, 50 ms, {capacity:,.0f} req/s = {capacity / mine:.1f}x the worker",
             "", "", "", f">= 3x {'ok' if capacity >= 3 * mine else 'MISSED'}")]


def bench_backlog(total: int) -> list[Row]:
    sink = NginxSink()
    try:
        with Bench() as bench:
            _fill(bench, total)
            started = time.perf_counter()
            proc = bench.start_worker(**{"DISTINCT_API_URL": sink.url})
            peak = [0.0]
            _drain(bench, total, lambda: peak.__setitem__(0, max(peak[0], rss_mb(proc.pid))))
            elapsed = time.perf_counter() - started
            _PEAKS.append(peak[0])
    finally:
        sink.stop()
    return [(f"outage backlog of {total:,}: time to drain, 1 worker", f"{elapsed:,.0f} s",
             "", "", ""),
            ("  peak worker RSS during it", f"{peak[0]:.0f} MB", "", "",
             f"<= 150 {'ok' if peak[0] <= 150 else 'MISSED'}")]


def bench_latency(rate: float, seconds: float) -> list[Row]:
    sink = AsyncSink(latency=0.0)
    try:
        with Bench() as bench:
            bench.start_worker(**{"DISTINCT_API_URL": sink.url})
            fwd = Forwarder(settings=bench.settings)
            returned: dict[str, float] = {}
            total = int(rate * seconds)
            start = time.monotonic()
            for i in range(total):
                fwd.capture(photo_event(i))
                returned[f"evt-{i}"] = time.time()
                ahead = (i + 1) / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            wait_until(lambda: sink.count() >= total, 60, 0.1)
            received = {value: t for t, value in sink.records()}
    finally:
        sink.stop()
    lat = sorted((received[v] - t) * 1000 for v, t in returned.items() if v in received)
    p50 = lat[len(lat) // 2]
    p99 = lat[int(len(lat) * 0.99) - 1]
    return [(f"end-to-end latency at {rate:.0f} events/s: p50", f"{p50:.1f} ms", "", "", ""),
            (f"end-to-end latency at {rate:.0f} events/s: p99", f"{p99:.1f} ms", "", "",
             f"<= 100 {'ok' if p99 <= 100 else 'MISSED'}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller runs, one each.")
    parser.add_argument("--only", default="enqueue,drain,slow,backlog,latency")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    only = set(args.only.split(","))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {commit}; "
          f"median of {runs} run(s)")
    rows: list[Row] = []
    if "enqueue" in only:
        with Bench() as bench:
            rows += bench_enqueue(bench, runs, 2000 if args.quick else 5000)
    if "drain" in only:
        rows += bench_drain_fast(runs, 5000 if args.quick else 20000)
    if "slow" in only:
        rows += bench_drain_slow(runs, 5000 if args.quick else 20000)
    if "backlog" in only:
        rows += bench_backlog(20000 if args.quick else 100000)
    if "latency" in only:
        rows += bench_latency(200, 10 if args.quick else 30)
    if _PEAKS:
        peak = max(_PEAKS)
        rows.append(("worker peak RSS, any run above", f"{peak:.0f} MB", "", "",
                     f"<= 150 {'ok' if peak <= 150 else 'MISSED'}"))
    print_table(("figure", "value", "baseline", "ratio", "target"), rows)


if __name__ == "__main__":
    main()
