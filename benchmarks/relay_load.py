"""Requests per second through the HTTP relay, on loopback, bounded.

Starts ``distinct-forwarder relay`` (gunicorn, two workers by default) on a
free loopback port against REDIS_URL (default: the local Redis, else a
private redis-server), then:

1. baseline: ``Forwarder.capture()`` called directly in one process, to show
   what one Redis round trip costs without HTTP;
2. load: ``--clients`` processes, each with one keep-alive connection,
   sending ``--requests`` captures each (a fixed count, no time loop);
3. with ``--wrk`` and ``wrk`` installed (``apt-get install wrk``): the same
   POST from wrk for ``--wrk-seconds``, a client that costs far less CPU.

Prints req/s, latency percentiles, status counts, machine and date. The
bench namespace is wiped at the end. Nothing leaves 127.0.0.1.

    python benchmarks/relay_load.py
    python benchmarks/relay_load.py --clients 8 --requests 2000 --wrk
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from forwarder.config import Settings
from forwarder.processes import stop_process
from forwarder.producer import Forwarder
from forwarder.redis_server import RedisServer, answers
from forwarder.store import Store, connect

KEY = "bench-relay-key-7d1f0c2b9e"
PATH = "/api/v1/analytics/capture/fifa-cwc-2025"
EVENT = {"type": "PHOTO_VIEWED_BY_USER", "eventValue": "evt-42",
         "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": "john.doe@example.com"}
BODY = json.dumps(EVENT).encode()
HEADERS = {"Content-Type": "application/json", "x-distinct-api-key": KEY}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def baseline(settings: Settings, count: int) -> float:
    """capture() calls per second in this one process (validation + one LPUSH)."""
    fwd = Forwarder(settings=settings)
    for _ in range(50):  # connect and warm up first
        fwd.capture(EVENT)
    started = time.perf_counter()
    for _ in range(count):
        fwd.capture(EVENT)
    return count / (time.perf_counter() - started)


def client(port: int, count: int, results: Any) -> None:
    """One keep-alive connection, ``count`` POSTs; reports statuses and latencies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", PATH, BODY, HEADERS)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        statuses[response.status] += 1
    conn.close()
    results.put((dict(statuses), latencies))


def load(port: int, clients: int, per_client: int) -> dict[str, Any]:
    results: Any = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, per_client, results))
             for _ in range(clients)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    gathered = [results.get(timeout=300) for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join(30)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for got, lat in gathered:
        statuses.update(got)
        latencies.extend(lat)
    latencies.sort()
    total = clients * per_client
    return {"requests": total, "seconds": elapsed, "rps": total / elapsed,
            "statuses": dict(statuses),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1]}


def run_wrk(port: int, seconds: int, connections: int) -> str:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY.decode())}\n{headers}')
    done = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, timeout=seconds + 60)
    shutil.rmtree(script.parent, ignore_errors=True)
    return done.stdout + done.stderr


def start_relay(redis_url: str, namespace: str, port: int, workers: int, log: Path
                ) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}
    env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace,
               FORWARDER_RELAY_KEYS=KEY, FORWARDER_SPOOL_PATH="off")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "relay", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"relay exited:\n{log.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("relay did not become ready in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--requests", type=int, default=2500, help="POSTs per client")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--baseline", type=int, default=5000, help="direct capture() calls")
    parser.add_argument("--wrk", action="store_true", help="also measure with wrk")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--wrk-connections", type=int, default=16)
    args = parser.parse_args()

    server = None
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not answers(redis_url):
        server = RedisServer().start()
        redis_url = server.url
    namespace = f"bench-relay-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, namespace=namespace, experience="fifa-cwc-2025")
    log = Path(tempfile.mkdtemp()) / "relay.log"
    port = free_port()
    relay = start_relay(redis_url, namespace, port, args.workers, log)
    try:
        print(f"machine: {machine()}")
        print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
        print(f"relay:   gunicorn, {args.workers} gevent workers, "
              f"Redis {redis_url.split('@')[-1]}")
        rate = baseline(settings, args.baseline)
        print(f"baseline: capture() in one process: {rate:,.0f} events/s "
              f"({args.baseline} calls)")
        result = load(port, args.clients, args.requests)
        print(f"relay:    {result['rps']:,.0f} req/s  ({result['requests']} POSTs from "
              f"{args.clients} keep-alive clients in {result['seconds']:.1f} s; "
              f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
              f"statuses {result['statuses']})")
        if args.wrk:
            if shutil.which("wrk"):
                print(run_wrk(port, args.wrk_seconds, args.wrk_connections))
            else:
                print("wrk: not installed (apt-get install wrk)")
        queued = Store(connect(redis_url), namespace).queue_depth()
        print(f"queued in Redis: {queued} events")
        if result["statuses"] != {200: result["requests"]}:
            raise SystemExit("some requests were not answered 200")
    finally:
        stop_process(relay, 30)
        Store(connect(redis_url), namespace).wipe()
        shutil.rmtree(log.parent, ignore_errors=True)
        if server:
            server.stop()


if __name__ == "__main__":
    main()
