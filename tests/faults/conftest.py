"""The fault suite's rig: its own redis-server, the sandbox, worker subprocesses.

Every scenario gets a fresh ``Rig`` (a private redis-server on a free port
with AOF ``appendfsync always`` and ``noeviction``, as ``deploy/redis.conf``
asks, a sandbox Distinct, a producer with its own spool file) and ends with
one row of the fault table, printed at the end of the session and written to
``<pytest basetemp>/fault-table.txt``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.processes import tree_rss_kib
from forwarder.redis_server import RedisServer
from forwarder.sandbox import Faults, Sandbox
from forwarder.store import Store, connect
from tests.conftest import API_KEY, WorkerProcess

ROWS: list[dict[str, Any]] = []
COLUMNS = ("scenario", "captured", "delivered", "lost", "POSTed twice", "worker peak RSS",
           "seconds")


def event(tag: str, i: int) -> dict[str, Any]:
    return {"type": "PHOTO_VIEWED_BY_USER", "eventValue": f"{tag}-{i}",
            "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": f"fan{i}@example.com"}


def peak_rss_kib(pid: int) -> int:
    """High-water RSS (VmHWM) of a worker: its supervisor plus the Celery child."""
    return tree_rss_kib(pid, "VmHWM")


class ResetProxy:
    """TCP proxy in front of the sandbox that resets some connections (RST).

    A reset is sent when a request arrives and before any of it reaches the
    sandbox, like a load balancer dropping a stale keep-alive connection: the
    event was not accepted, so a retry is not a duplicate.
    """

    def __init__(self, target_port: int, rate: float, seed: int = 7):
        self.target_port = target_port
        self.rate = rate
        self.rng = random.Random(seed)
        self.resets = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _reset(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pump_back() -> None:
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_back, daemon=True).start()
        try:
            while data := client.recv(65536):
                with self._lock:
                    reset = self.rng.random() < self.rate
                    self.resets += reset
                if reset:
                    self._reset(client)
                    upstream.close()
                    return
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class Rig:
    """One scenario's processes; everything started here is stopped by PID."""

    def __init__(self, name: str, tmp: Path, faults: Faults | None = None):
        self.name = name
        self.tmp = tmp
        (tmp / "redis").mkdir(parents=True)
        self.redis = RedisServer(workdir=str(tmp / "redis"), extra_args=[
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--maxmemory-policy", "noeviction"]).start()
        self.namespace = "faults"
        self.sandbox = Sandbox(faults=faults or Faults(api_key=API_KEY), seed=3).start()
        self.distinct_url = self.sandbox.url
        self.settings = Settings(redis_url=self.redis.url, namespace=self.namespace,
                                 experience="fifa-cwc-2025",
                                 spool_path=str(tmp / "spool.db"))
        self.producer = Forwarder(settings=self.settings)
        self.store = Store(connect(self.redis.url, timeout=5.0), self.namespace)
        self.workers: list[WorkerProcess] = []
        self.captured: list[str] = []  # eventValues whose capture() returned
        self.rss_kib = 0
        self.started = time.monotonic()

    # --- processes ---------------------------------------------------------------
    def start_worker(self, ready: bool = True, **env: str) -> WorkerProcess:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("FORWARDER_", "DISTINCT_", "REMAP_"))}
        base.update(REDIS_URL=self.redis.url, FORWARDER_NAMESPACE=self.namespace,
                    DISTINCT_API_URL=self.distinct_url, DISTINCT_API_KEY=API_KEY,
                    DISTINCT_EXPERIENCE="fifa-cwc-2025", **env)
        proc = WorkerProcess(base, self.tmp / f"worker-{len(self.workers)}.log", [])
        self.workers.append(proc)
        return proc.wait_ready(60) if ready else proc

    def sample_rss(self) -> None:
        for w in self.workers:
            if w.process.poll() is None:
                self.rss_kib = max(self.rss_kib, peak_rss_kib(w.pid))

    def restart_redis(self, down_for: float = 0.0, kill: bool = False) -> None:
        proc = self.redis.process
        assert proc is not None
        if kill:
            proc.kill()
            proc.wait(10)
        else:
            self.redis.stop()
        time.sleep(down_for)
        self.redis.start()

    # --- events ----------------------------------------------------------------
    def capture(self, n: int, batch: int = 1, rate: float | None = None) -> list[float]:
        """Capture ``n`` events (in ``capture_many`` chunks of ``batch``); latencies."""
        latencies = []
        start = len(self.captured)
        for first in range(start, start + n, batch):
            items = [event("ev", i) for i in range(first, min(first + batch, start + n))]
            t0 = time.perf_counter()
            if batch == 1:
                self.producer.capture(items[0])
            else:
                self.producer.capture_many(items)
            latencies.append(time.perf_counter() - t0)
            self.captured += [e["eventValue"] for e in items]
            if rate:
                time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - t0)))
        return latencies

    def accepted(self) -> Counter[str]:
        with self.sandbox.lock:
            return Counter(e["body"]["eventValue"] for e in self.sandbox.events)

    def accepted_times(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        with self.sandbox.lock:
            for e in self.sandbox.events:
                times.setdefault(e["body"]["eventValue"], []).append(e["received_at"])
        return times

    def delivered_count(self) -> int:
        return len(set(self.captured) & set(self.accepted()))

    def wait_delivered(self, timeout: float) -> float:
        """Wait until every captured event was accepted; returns when (time.time())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample_rss()
            if self.delivered_count() >= len(self.captured):
                return time.time()
            time.sleep(0.25)
        missing = len(self.captured) - self.delivered_count()
        raise AssertionError(f"{self.name}: {missing} of {len(self.captured)} events not "
                             f"delivered after {timeout:.0f} s (queue "
                             f"{self.store.queue_depth()}, retry {self.store.retry_depth()}, "
                             f"held {sum(w.held for w in self.store.workers())})")

    def row(self, note: str = "") -> dict[str, Any]:
        self.sample_rss()
        accepted = self.accepted()
        delivered = len(set(self.captured) & set(accepted))
        row = {
            "scenario": self.name + (f" ({note})" if note else ""),
            "captured": len(self.captured),
            "delivered": delivered,
            "lost": len(self.captured) - delivered - self.store.dlq_depth(),
            "POSTed twice": sum(1 for v in self.captured if accepted[v] > 1),
            "worker peak RSS": f"{self.rss_kib / 1024:.0f} MiB",
            "seconds": f"{time.monotonic() - self.started:.0f}",
        }
        ROWS.append(row)
        print("\n" + format_table([row]))
        return row

    def close(self) -> None:
        for w in self.workers:
            if w.process.poll() is None:
                w.stop(40)
        self.sandbox.stop()
        self.redis.stop()
        self.producer.spool and self.producer.spool.close()


def format_table(rows: list[dict[str, Any]]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = [" | ".join(c.ljust(widths[c]) for c in COLUMNS),
             "-|-".join("-" * widths[c] for c in COLUMNS)]
    lines += [" | ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def fault_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    yield ROWS
    if ROWS:
        path = tmp_path_factory.getbasetemp() / "fault-table.txt"
        path.write_text(format_table(ROWS) + "\n")
        ROWS_FILE.append(str(path))


ROWS_FILE: list[str] = []


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path, fault_table: list[Any]
        ) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(name: str, faults: Faults | None = None) -> Rig:
        r = Rig(name, tmp_path / f"rig{len(rigs)}", faults)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("fault table")
    terminalreporter.write_line(format_table(ROWS))
    if ROWS_FILE:
        terminalreporter.write_line(f"(written to {ROWS_FILE[0]})")
