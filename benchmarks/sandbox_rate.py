"""How fast the sandbox answers, against how fast one worker delivers to it.

The sandbox must not be the bottleneck of any benchmark: this prints its
request rate under a parallel client, and the drain rate of one
``distinct-forwarder worker`` (default settings) against it, in the same run.

    python -m benchmarks.sandbox_rate [--requests 6000] [--backlog 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import requests

from benchmarks.sink import _wait_http
from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.redis_server import free_port
from forwarder.store import Store, connect

KEY = "bench-key"
BODY = json.dumps({"type": "PHOTO_VIEWED_BY_USER", "eventValue": "evt-1",
                   "recordCapturedAt": "2026-11-28T10:15:00.000Z",
                   "email": "fan@example.com"}).encode()


def _client(url: str, count: int) -> int:
    """One process, one keep-alive session, ``count`` POSTs; returns 200s."""
    session = requests.Session()
    headers = {"Content-Type": "application/json", "x-distinct-api-key": KEY}
    ok = 0
    for _ in range(count):
        ok += session.post(url, data=BODY, headers=headers, timeout=10).status_code == 200
    return ok


def sandbox_rate(base: str, total: int, clients: int) -> float:
    url = base + "/api/v1/analytics/capture/bench"
    started = time.perf_counter()
    with ProcessPoolExecutor(clients) as pool:
        ok = sum(pool.map(_client, [url] * clients, [total // clients] * clients))
    elapsed = time.perf_counter() - started
    assert ok == (total // clients) * clients, "sandbox refused requests"
    return ok / elapsed


def worker_rate(base: str, backlog: int) -> float:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, namespace=namespace, experience="bench")
    fwd = Forwarder(settings=settings)
    store = Store(connect(redis_url), namespace)
    event = json.loads(BODY)
    for start in range(0, backlog, 1000):
        fwd.capture_many([dict(event, eventValue=f"e{i}")
                          for i in range(start, min(backlog, start + 1000))])
    env = dict(os.environ, REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace,
               DISTINCT_API_URL=base, DISTINCT_API_KEY=KEY)
    worker = subprocess.Popen([sys.executable, "-m", "forwarder", "worker",
                               "--loglevel=WARNING"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = None
        while True:
            counts = store.outcome_counts(time.time(), 5)
            if first is None and counts["delivered"] > 0:
                first = (time.perf_counter(), counts["delivered"])
            if counts["delivered"] >= backlog:
                break
            time.sleep(0.05)
        assert first is not None
        return (backlog - first[1]) / (time.perf_counter() - first[0])
    finally:
        worker.terminate()
        worker.wait(30)
        store.wipe()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=5000)
    args = parser.parse_args()
    port = free_port()
    sandbox = subprocess.Popen([sys.executable, "-m", "forwarder", "sandbox", "--port",
                                str(port), "--api-key", KEY], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/healthz")
        sb = sandbox_rate(base, args.requests, args.clients)
        single = sandbox_rate(base, args.requests // 4, 1)
        wk = worker_rate(base, args.backlog)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'figure':52} {'value':>10}")
    print(f"{'sandbox, ' + str(args.clients) + ' client processes (req/s)':52} {sb:10.0f}")
    print(f"{'sandbox, 1 client (raw requests loop, req/s)':52} {single:10.0f}")
    print(f"{'one worker draining ' + str(args.backlog) + ' events (events/s)':52} {wk:10.0f}")
    print(f"{'sandbox rate / worker rate':52} {sb / wk:10.1f}x")


if __name__ == "__main__":
    main()
