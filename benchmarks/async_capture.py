"""``await capture()`` per second on one event loop, against raw ``redis.asyncio`` LPUSH.

The baseline is measured in the same run, on the same loop and the same Redis
(REDIS_URL when it answers, else a private redis-server): a plain
``redis.asyncio.Redis`` pushing the very bytes ``capture()`` writes for the
event. Three figures, each the median of ``--runs`` alternating runs:

1. one request at a time: ``await fwd.capture(event)`` in a loop, against
   ``await client.lpush(key, item)`` in a loop;
2. ``--tasks`` concurrent tasks on the loop (requests in flight at once),
   each doing its share of the same count;
3. ``await capture_many(100)`` against one pipelined LPUSH x100.

Target (issue 15): ratio >= 0.5. The bench namespace is wiped at the end.

    python -m benchmarks.async_capture
    python -m benchmarks.async_capture --count 20000 --runs 5 --tasks 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio

from benchmarks.harness import photo_event, print_table
from forwarder import AsyncForwarder
from forwarder.config import Settings
from forwarder.messages import encode_event, random_uuid
from forwarder.redis_server import RedisServer, answers
from forwarder.store import Store, connect

TARGET = 0.5
Row = tuple[str, str, str, str, str]


async def _rate(count: int, tasks: int, one: Callable[[], Awaitable[object]]) -> float:
    """Calls of ``one`` per second, ``count`` in all, by ``tasks`` concurrent tasks."""
    async def worker(share: int) -> None:
        for _ in range(share):
            await one()

    shares = [count // tasks + (1 if i < count % tasks else 0) for i in range(tasks)]
    start = time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    return count / (time.perf_counter() - start)


async def bench(redis_url: str, namespace: str, count: int, runs: int, tasks: int
                ) -> list[Row]:
    settings = Settings(redis_url=redis_url, namespace=namespace, experience="bench-exp")
    event = photo_event(1)
    # The same bytes capture() writes for this event: the baseline is the LPUSH alone.
    item = encode_event({"id": random_uuid(), "kind": "capture", "experience": "bench-exp",
                         "body": {**event, "recordCapturedAt": "2026-11-28T10:15:00.000Z"},
                         "attempts": 0, "first_seen": time.time()})
    batch = [photo_event(i) for i in range(100)]
    raw = redis.asyncio.Redis.from_url(redis_url)
    raw_key = Store(connect(redis_url), namespace).queue_key + ":raw"

    async def raw_lpush() -> None:
        await raw.lpush(raw_key, item)

    async def raw_batch() -> None:
        async with raw.pipeline(transaction=False) as pipe:
            for _ in range(100):
                pipe.lpush(raw_key, item)
            await pipe.execute()

    async with AsyncForwarder(settings=settings) as fwd:
        # (figure, ours, baseline, events per call, concurrent tasks)
        figures: list[tuple[str, Callable[[], Awaitable[object]],
                            Callable[[], Awaitable[object]], int, int]] = [
            ("await capture() / raw LPUSH, 1 at a time (events/s)",
             lambda: fwd.capture(event), raw_lpush, 1, 1),
            (f"await capture() / raw LPUSH, {tasks} tasks (events/s)",
             lambda: fwd.capture(event), raw_lpush, 1, tasks),
            ("await capture_many(100) / pipelined LPUSH x100 (events/s)",
             lambda: fwd.capture_many(batch), raw_batch, 100, 1),
        ]
        rows = []
        for label, mine, base, per_call, concurrency in figures:
            calls = max(1, count // per_call)
            await _rate(min(calls, 200), concurrency, mine)  # connections opened, code warm
            await _rate(min(calls, 200), concurrency, base)
            ours, theirs = [], []
            for _ in range(runs):  # alternating, so a drift of the machine hits both
                ours.append(await _rate(calls, concurrency, mine))
                theirs.append(await _rate(calls, concurrency, base))
            a = statistics.median(ours) * per_call
            b = statistics.median(theirs) * per_call
            rows.append((label, f"{a:,.0f}", f"{b:,.0f}", f"{a / b:.2f}",
                         f">= {TARGET} {'ok' if a / b >= TARGET else 'MISSED'}"))
            await raw.delete(fwd.store.queue_key, raw_key)
    await raw.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000, help="Events per run.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=32, help="Concurrent tasks, figure 2.")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    private = None if answers(url) else RedisServer().start()
    if private is not None:
        url = private.url
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {commit}; "
          f"median of {args.runs} run(s); {'private redis-server' if private else url}")
    try:
        rows = asyncio.run(bench(url, namespace, args.count, args.runs, args.tasks))
    finally:
        Store(connect(url), namespace).wipe()
        if private is not None:
            private.stop()
    print_table(("figure", "value", "baseline", "ratio", "target"), rows)


if __name__ == "__main__":
    main()
