"""Shared parts of the benchmarks and the long-running checks: real processes only."""

from __future__ import annotations

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

from forwarder.config import Settings
from forwarder.processes import stop_process, tree_rss_kib
from forwarder.redis_server import RedisServer, answers
from forwarder.sandbox import Faults, Sandbox
from forwarder.store import Store, connect

API_KEY = "bench-key"


def rss_mb(pid: int) -> float:
    """Resident memory of a worker (its supervisor and the Celery child) in MB."""
    return tree_rss_kib(pid) / 1024


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class Bench:
    """A namespace on a Redis, a sandbox, and worker subprocesses; all cleaned up."""

    def __init__(self, redis_url: str | None = None, faults: Faults | None = None):
        url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.private: RedisServer | None = None
        if not answers(url):
            self.private = RedisServer().start()
            url = self.private.url
        self.redis_url = url
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.store = Store(connect(url), self.namespace)
        self.sandbox = Sandbox(faults=faults or Faults(api_key=API_KEY)).start()
        self.settings = Settings(redis_url=url, namespace=self.namespace,
                                 experience="bench-exp")
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs = tempfile.TemporaryDirectory(prefix="fwd-bench-")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FORWARDER_", "DISTINCT_"))}
        env.update(REDIS_URL=self.redis_url, FORWARDER_NAMESPACE=self.namespace,
                   DISTINCT_API_URL=self.sandbox.url, DISTINCT_API_KEY=API_KEY)
        env.update(extra)
        return env

    def start_worker(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = Path(self._logs.name) / f"worker-{len(self.workers)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "forwarder", "worker",
                                 "--loglevel=INFO", *args], env=self.env(**env),
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.workers.append(proc)
        if not wait_until(lambda: " ready." in log.read_text(errors="replace"), 60):
            raise RuntimeError(f"worker did not start:\n{log.read_text()}")
        return proc

    def worker_log(self, index: int) -> str:
        return (Path(self._logs.name) / f"worker-{index}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # all at once, then wait for each
        for proc in self.workers:
            stop_process(proc, 30)
        self.sandbox.stop()
        self.store.wipe()
        if self.private is not None:
            self.private.stop()
        self._logs.cleanup()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def photo_event(i: int) -> dict[str, Any]:
    return {"type": "PHOTO_VIEWED_BY_USER", "eventValue": f"evt-{i}",
            "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": f"fan{i}@example.com"}


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Rows under a header, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
