"""``python -m benchmarks.redis_cost``: what one delivered event costs Redis.

Every worker, producer and relay shares one Redis, so Redis's work per delivered
event sets the ceiling of the whole system. This drains a backlog of mixed events
(both endpoints, every capture type) through one worker process into an nginx
sink, on a private redis-server, and reads Redis's own ``INFO cpu`` and ``INFO
commandstats`` around the drain, with the idle polling of the worker (heartbeats,
promotions, blocking waits) measured beforehand and subtracted. The backlog is
enqueued while the workers are stopped (SIGSTOP), so the window holds the drain
alone, as when workers catch up after an outage or a burst: the load at which
Redis's ceiling matters. ``--live`` enqueues while they run instead (a lighter
load: smaller batches, more calls per event), with the producer's LPUSHes in the
CPU figure. Redis runs alone on the first CPU, everything else on the others:
sharing a core with the workers made its CPU time per command vary by 15 % and
more between runs (``--no-pin`` to share). The same run measures a plain Celery
forwarder (``benchmarks/plain_celery.py``: one ``send_task`` per event,
``acks_late``) the same way, as the baseline.

    python -m benchmarks.redis_cost [--events 6000] [--workers 1] [--skip-plain]
                                    [--live] [--no-pin]

With ``--workers 4``: the total throughput of four worker processes against one
Redis, and the share of one Redis core it used (the ceiling is where that nears 100 %).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.sink import NginxSink
from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.processes import stop_process
from forwarder.redis_server import RedisServer
from forwarder.store import Store, connect

IDLE_SECONDS = 5.0
#: What Redis did over a window: CPU seconds, calls and microseconds by
#: command, wall seconds.
Window = tuple[float, dict[str, int], dict[str, int], float]
API_KEY = "bench-key"


def mixed_event(i: int) -> tuple[str, dict[str, Any]]:
    """Every shape Distinct takes, in turn."""
    at = "2026-11-28T10:15:00.000Z"
    shape = i % 5
    if shape == 0:
        return "capture", {"type": "REGISTRATION_PAGE_VISIT", "eventValue": f"evt-{i}",
                           "recordCapturedAt": at, "sessionId": f"s-{i}",
                           "registrationPageValue": "reg-7"}
    if shape < 4:
        kind = ("PHOTO_ASSIGNED_TO_USER", "PHOTO_DOWNLOADED_BY_USER", "PHOTO_VIEWED_BY_USER")
        return "capture", {"type": kind[shape - 1], "eventValue": f"evt-{i}",
                           "recordCapturedAt": at, "email": f"fan{i}@example.com"}
    return "user_analytics", {"userId": f"u-{i}", "feature": "user_collectible",
                              "action": "opened", "experienceId": "47Gop5",
                              "capturedAt": at, "metadata": {"seq": i}}


class Meter:
    """Redis's CPU seconds and command counts, read from INFO."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def commands(self) -> tuple[dict[str, int], dict[str, int]]:
        """Calls and microseconds spent, by command name."""
        stats = self.client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(value["calls"])
                 for name, value in stats.items()}
        usec = {name.removeprefix("cmdstat_"): int(value["usec"])
                for name, value in stats.items()}
        return calls, usec

    def window(self, run: Callable[[], None]) -> Window:
        """CPU seconds, commands and their microseconds by name, and wall seconds
        spent while ``run`` runs."""
        self.client.config_resetstat()
        cpu0, t0 = self.cpu(), time.perf_counter()
        run()
        wall = time.perf_counter() - t0
        cpu1 = self.cpu()
        counts, usec = self.commands()
        return cpu1 - cpu0, counts, usec, wall


def _minus(a: dict[str, int], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) - b.get(k, 0.0) for k in set(a) | set(b)}


def idle_window(meter: Meter) -> Window:
    """What the workers cost Redis while there is nothing to do (polling)."""
    return meter.window(lambda: time.sleep(IDLE_SECONDS))


def measure(idle: Window, run_drain: Callable[[], None], meter: Meter,
            events: int, producer_commands: set[str]) -> dict[str, Any]:
    idle_cpu, idle_counts, _, idle_wall = idle
    cpu, counts, usec, wall = meter.window(run_drain)
    idle_rate = idle_cpu / idle_wall
    idle_per_s = {k: v / idle_wall for k, v in idle_counts.items()}
    work = _minus(counts, {k: v * wall for k, v in idle_per_s.items()})
    for name in producer_commands | POLL_COMMANDS | {"info", "config|resetstat", "config"}:
        work.pop(name, None)
    delivery_cpu = max(0.0, cpu - idle_rate * wall)
    per_event = {k: v / events for k, v in work.items() if v / events >= 0.005}
    return {
        "events": events, "seconds": wall, "events_per_s": events / wall,
        "redis_cpu_us_per_event": 1e6 * delivery_cpu / events,
        "redis_cpu_share": cpu / wall,
        "commands_per_event": sum(max(0.0, v) for v in work.values()) / events,
        "by_command": dict(sorted(per_event.items(), key=lambda kv: -kv[1])[:12]),
        # Time inside commands (a script's includes the commands it runs);
        # the rest of Redis's CPU is reading requests and writing replies.
        "in_commands_us_per_event": {k: v / events for k, v in sorted(
            usec.items(), key=lambda kv: -kv[1])[:6] if k not in POLL_COMMANDS},
        "idle_cpu_share": idle_rate,
    }


#: How often the benchmark looks whether the drain is over; the commands it
#: uses to look (POLL_COMMANDS) are left out of the counts.
POLL_SECONDS = 0.1
POLL_COMMANDS = {"hgetall", "hlen"}


def _drained(check: Callable[[], bool], timeout: float = 600) -> Callable[[], None]:
    def run() -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit("the drain did not finish in time")
            time.sleep(POLL_SECONDS)
    return run


def forwarder_cost(url: str, sink: str, events: int, workers: int,
                   live: bool = False) -> dict[str, Any]:
    namespace = f"bench-cost-{uuid.uuid4().hex[:6]}"
    store = Store(connect(url), namespace)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=url, FORWARDER_NAMESPACE=namespace, DISTINCT_API_URL=sink,
               DISTINCT_API_KEY=API_KEY, FORWARDER_LOG_FORMAT="text")
    logs = os.environ.get("COST_LOGS") or tempfile.mkdtemp(prefix="fwd-cost-")
    procs = []
    paths = [Path(logs) / f"worker-{n}.log" for n in range(workers)]
    for log in paths:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "forwarder", "worker", "--loglevel=INFO"],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    try:
        _drained(lambda: all(" ready." in p.read_text(errors="replace") for p in paths), 60)()
        time.sleep(2.0)  # past start-up: registrations, bindings, first sweeps
        fwd = Forwarder(settings=Settings(redis_url=url, namespace=namespace,
                                          experience="bench-exp", spool_path="off"))
        start = store.outcome_counts(time.time(), 3)["delivered"]

        def enqueue() -> None:
            by_kind: dict[str, list[dict[str, Any]]] = {"capture": [], "user_analytics": []}
            for i in range(events):
                kind, body = mixed_event(i)
                by_kind[kind].append(body)
            for i in range(0, len(by_kind["capture"]), 100):
                fwd.capture_many(by_kind["capture"][i:i + 100])
            for i in range(0, len(by_kind["user_analytics"]), 100):
                fwd.user_analytics_many(by_kind["user_analytics"][i:i + 100])

        def drain() -> None:
            if live:
                enqueue()
            else:
                _signal_all(procs, signal.SIGCONT)
            _drained(lambda: store.outcome_counts(time.time(), 3)["delivered"] - start
                     >= events)()

        meter = Meter(store.client)
        idle = idle_window(meter)
        if not live:  # the backlog builds up while the workers are stopped
            _signal_all(procs, signal.SIGSTOP)
            enqueue()
        return measure(idle, drain, meter, events, {"lpush"})
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop_process(proc, 30)
        store.wipe()


def _signal_all(procs: list[subprocess.Popen[bytes]], signum: int) -> None:
    """Send ``signum`` to each process and every process it started (Linux /proc)."""
    for proc in procs:
        for pid in _tree(proc.pid):
            os.kill(pid, signum)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += _tree(int(child))
    return pids


def plain_cost(url: str, sink: str, events: int, live: bool = False) -> dict[str, Any]:
    env = dict(os.environ, PLAIN_BROKER_URL=url, PLAIN_SINK_URL=sink)
    client = redis.Redis.from_url(url)
    client.flushdb()
    log = tempfile.NamedTemporaryFile(prefix="plain-celery-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchmarks.plain_celery", "worker", "-P",
         "threads", "-c", "16", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel=WARNING"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from benchmarks import plain_celery

        app = plain_celery.app
        app.conf.broker_url = url
        time.sleep(4.0)

        def enqueue() -> None:
            with app.producer_or_acquire() as producer:
                for i in range(events):
                    app.send_task("plain.deliver", args=[mixed_event(i)[1]], producer=producer)

        def drain() -> None:
            if live:
                enqueue()
            else:
                _signal_all([worker], signal.SIGCONT)
            _drained(lambda: client.hlen("unacked") == 0 and client.llen("celery") == 0)()
            time.sleep(0.5)

        meter = Meter(client)
        idle = idle_window(meter)
        if not live:
            _signal_all([worker], signal.SIGSTOP)
            enqueue()
        return measure(idle, drain, meter, events, {"lpush", "publish"})
    finally:
        stop_process(worker, 30)
        client.flushdb()
        os.unlink(log.name)


def _print(label: str, r: dict[str, Any]) -> None:
    print(f"{label}:")
    print(f"  drained {r['events']:,} events in {r['seconds']:.1f} s = {r['events_per_s']:,.0f}/s")
    print(f"  Redis CPU per delivered event     {r['redis_cpu_us_per_event']:7.1f} us  "
          f"(one Redis core carries ~{1e6 / max(1e-9, r['redis_cpu_us_per_event']):,.0f} "
          f"events/s)")
    print(f"  Redis commands per event          {r['commands_per_event']:7.1f}  "
          "(commands run by scripts included)")
    print(f"  Redis CPU share during the drain  {100 * r['redis_cpu_share']:6.0f} % of one core "
          f"(idle polling: {100 * r['idle_cpu_share']:.1f} %)")
    print("  per event: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_command"].items()))
    print("  us per event inside commands: " + ", ".join(
        f"{k} {v:.1f}" for k, v in r["in_commands_us_per_event"].items()))


def _keep_first_cpu_for_redis() -> int | None:
    """Keep this process and all it starts off the first CPU, and return it;
    None where that can't be done (one CPU, no affinity calls)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, set(cpus[1:]))
    return cpus[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--live", action="store_true",
                        help="enqueue while the workers run (a light load) instead of "
                             "draining a backlog enqueued while they were stopped")
    parser.add_argument("--no-pin", action="store_true",
                        help="leave Redis sharing the CPUs with the workers")
    args = parser.parse_args()
    redis_cpu = None if args.no_pin else _keep_first_cpu_for_redis()
    sink = NginxSink()
    server = RedisServer(extra_args=["--save", "", "--appendonly", "no"]).start()
    if redis_cpu is not None and server.process is not None:
        # Redis alone on the first CPU, as on a host of its own: its CPU time
        # per command is then not inflated by the workers' contention for the
        # same core, which made repeated runs differ by 15 % or more.
        os.sched_setaffinity(server.process.pid, {redis_cpu})
    try:
        import platform

        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, Redis {version} (private), nginx sink; "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
        print("drain: " + ("events enqueued while the workers run" if args.live else
                           "a backlog enqueued while the workers were stopped (SIGSTOP)")
              + (f"; Redis alone on CPU {redis_cpu}" if redis_cpu is not None else ""))
        ours = forwarder_cost(server.url, sink.url, args.events, args.workers, args.live)
        _print(f"distinct-forwarder, {args.workers} worker process(es), default settings", ours)
        if not args.skip_plain:
            plain = plain_cost(server.url, sink.url, args.events, args.live)
            _print("plain Celery (send_task, acks_late, requests), 16 threads", plain)
            ratio = plain["redis_cpu_us_per_event"] / max(1e-9, ours["redis_cpu_us_per_event"])
            print(f"ratio: plain Celery costs Redis {ratio:.1f}x what the forwarder does "
                  "per delivered event")
    finally:
        server.stop()
        sink.stop()


if __name__ == "__main__":
    main()
