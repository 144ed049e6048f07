"""Event-loop lag of an asyncio app capturing while Redis does not answer.

An async app takes ``--rate`` captures per second (each one a task, as a
request would be) for ``--seconds`` while Redis is down, and a ticker task
on the same loop sleeps 1 ms at a time and measures how late it wakes up:
that is how long every other request of the worker would wait. Two apps on
the same loop, the same events, the same private Redis:

- ``await capture()``: :class:`forwarder.AsyncForwarder`;
- ``capture() in async def``: the blocking :class:`forwarder.Forwarder`
  called from the coroutine, as an app that never heard of this would.

Two ways for Redis to be down, each on a private redis-server (never the
shared one): ``stopped`` (the process is gone: connections are refused at
once) and ``frozen`` (SIGSTOP: connections are accepted and nothing answers,
so every LPUSH waits out FORWARDER_ENQUEUE_TIMEOUT, like a dead host).
Each run starts with Redis answering and a pooled connection, and its own spool.
The ``up`` runs (Redis answering throughout) are the baseline: the lag this
machine shows right now with nothing down.

Columns: the ticker's lag (p50, p99, max); ``stalls >= 5 ms``, the time the
loop spent in stalls of 5 ms or more (a stall is one late tick however long
it lasts, so a tick percentile understates a loop that blocks rarely but
long: read it with this column and the max); each request's latency from
its arrival, so a request that waited behind a blocked loop counts that wait.

    python -m benchmarks.async_loop_lag                 # 10 s each, 200 captures/s
    python -m benchmarks.async_loop_lag --seconds 3 --modes frozen

Target (issue 15): p99 loop lag under 5 ms with ``await capture()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import photo_event, print_table
from forwarder import AsyncForwarder, Forwarder
from forwarder.config import Settings
from forwarder.redis_server import RedisServer

#: How long the ticker sleeps each time; its lag is how much later it wakes.
TICK = 0.001
TARGET_P99_MS = 5.0
#: A tick this late counts as a stall.
STALL = 0.005


@dataclass
class LoopRun:
    """What one app run measured: the ticker's lags and each capture's latency."""

    lags: list[float]
    latencies: list[float]
    errors: list[BaseException]

    def lag_ms(self, q: float) -> float:
        return _quantile(self.lags, q) * 1000

    def latency_ms(self, q: float) -> float:
        return _quantile(self.latencies, q) * 1000

    def stalled_ms(self) -> float:
        """Time the loop spent in stalls of STALL or more (one stall is one tick)."""
        return sum(lag for lag in self.lags if lag >= STALL) * 1000


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q + 0.5) - 1))]


async def ticking_app(capture: Callable[[int], Awaitable[Any]], seconds: float,
                      rate: float) -> LoopRun:
    """Start ``capture(i)`` as a task ``rate`` times per second for ``seconds``
    while a ticker measures its own delay; returns when every capture has."""
    run = LoopRun([], [], [])
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            run.lags.append(max(0.0, time.perf_counter() - start - TICK))

    async def request(i: int, arrived: float) -> None:
        try:
            await capture(i)
        except Exception as exc:  # counted and shown, never hidden
            run.errors.append(exc)
        # From the request's arrival, not from when the loop got to it: a
        # request that waited behind a blocked loop waited all the same.
        run.latencies.append(time.perf_counter() - arrived)

    tick = asyncio.create_task(ticker())
    requests = []
    began = time.perf_counter()
    for i in range(int(seconds * rate)):
        # Arrivals on a fixed schedule: a blocked loop sees them pile up, as it would.
        arrives = began + i / rate
        await asyncio.sleep(max(0.0, arrives - time.perf_counter()))
        requests.append(asyncio.create_task(request(i, arrives)))
    await asyncio.gather(*requests)
    stop.set()
    await tick
    return run


@contextlib.contextmanager
def redis_down(server: RedisServer, mode: str) -> Iterator[None]:
    """Redis ``stopped`` (then started again on its port), ``frozen`` (SIGSTOP), or
    ``up`` (no outage: the baseline)."""
    assert server.process is not None
    if mode == "up":
        yield
        return
    if mode == "frozen":
        server.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            server.process.send_signal(signal.SIGCONT)
        return
    server.stop()
    try:
        yield
    finally:
        server.start()


async def _with_async(settings: Settings, server: RedisServer, mode: str, seconds: float,
                      rate: float) -> LoopRun:
    async with AsyncForwarder(settings=settings) as fwd:
        await fwd.capture(photo_event(-1))  # a pooled connection, as in a running app
        with redis_down(server, mode):
            return await ticking_app(lambda i: fwd.capture(photo_event(i)), seconds, rate)


async def _with_sync(settings: Settings, server: RedisServer, mode: str, seconds: float,
                     rate: float) -> LoopRun:
    fwd = Forwarder(settings=settings)
    fwd.capture(photo_event(-1))

    async def capture(i: int) -> str:
        return fwd.capture(photo_event(i))  # blocks the loop: what the issue is about

    with redis_down(server, mode):
        return await ticking_app(capture, seconds, rate)


APPS: dict[str, Callable[..., Awaitable[LoopRun]]] = {
    "await capture()": _with_async,
    "capture() in async def": _with_sync,
}


def measure(mode: str, app: str, seconds: float, rate: float,
            enqueue_timeout: float | None = None, spool_dir: str | None = None) -> LoopRun:
    """One app, one outage, on a private redis-server of its own."""
    with tempfile.TemporaryDirectory(prefix="fwd-lag-") as tmp:
        server = RedisServer(workdir=tmp).start()
        try:
            spool = os.path.join(spool_dir or tmp, f"spool-{uuid.uuid4().hex[:8]}.db")
            settings = Settings(redis_url=server.url, namespace=f"lag-{uuid.uuid4().hex[:8]}",
                                experience="bench-exp", spool_path=spool)
            if enqueue_timeout is not None:
                settings = settings.with_overrides(enqueue_timeout=enqueue_timeout)
            return asyncio.run(APPS[app](settings, server, mode, seconds, rate))
        finally:
            server.stop()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(spool + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Outage per run.")
    parser.add_argument("--rate", type=float, default=200.0, help="Captures per second.")
    parser.add_argument("--modes", default="up,stopped,frozen",
                        help="up: Redis answers (the baseline on this machine, now)")
    parser.add_argument("--spool-dir", help="Where the spool files go (default: a temporary "
                        "directory); the blocking app's cost while Redis is stopped is "
                        "this disk's fsync.")
    args = parser.parse_args()
    # One warning per run that Redis is down is expected, and not a figure.
    logging.getLogger("distinct_forwarder").setLevel(logging.ERROR)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    timeout = Settings().enqueue_timeout
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {commit}")
    print(f"{args.seconds:g} s per run, {args.rate:g} captures/s, ticker every "
          f"{TICK * 1000:g} ms, FORWARDER_ENQUEUE_TIMEOUT {timeout * 1000:g} ms")
    header = ("redis", "app", "ticks", "lag p50", "lag p99", "lag max", "stalls >= 5 ms",
              "request p50", "request p99", "request max", "errors", "target")
    rows = [header]
    for mode in args.modes.split(","):
        for app in APPS:
            run = measure(mode, app, args.seconds, args.rate, spool_dir=args.spool_dir)
            target = ""
            if app == "await capture()" and mode != "up":
                ok = run.lag_ms(0.99) < TARGET_P99_MS
                target = f"p99 < {TARGET_P99_MS:g} ms {'ok' if ok else 'MISSED'}"
            rows.append((mode, app, f"{len(run.lags):,}", f"{run.lag_ms(0.5):.2f} ms",
                         f"{run.lag_ms(0.99):.2f} ms", f"{max(run.lags) * 1000:.1f} ms",
                         f"{run.stalled_ms():,.0f} ms", f"{run.latency_ms(0.5):.1f} ms",
                         f"{run.latency_ms(0.99):.1f} ms", f"{max(run.latencies) * 1000:.1f} ms",
                         str(len(run.errors)), target))
            if run.errors:
                print(f"  {mode}/{app}: first error: {run.errors[0]!r}")
    print_table(header, rows[1:])


if __name__ == "__main__":
    main()
