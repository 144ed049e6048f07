"""Shared fixtures: a real Redis, a real sandbox Distinct, real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.config import Settings
from forwarder.processes import stop_process
from forwarder.redis_server import RedisServer, answers
from forwarder.sandbox import Faults, Sandbox
from forwarder.store import Store, connect

API_KEY = "test-key-5f1c9a7e"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when it answers, else a private redis-server on a free port."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if answers(url):
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of its own for each test, wiped afterwards."""
    ns = f"test-{uuid.uuid4().hex[:10]}"
    yield ns
    Store(connect(redis_url), ns).wipe()


@pytest.fixture
def store(redis_url: str, namespace: str) -> Store:
    return Store(connect(redis_url), namespace)


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, experience="fifa-cwc-2025")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    server = Sandbox(faults=Faults(api_key=API_KEY), seed=1).start()
    yield server
    server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


class WorkerProcess:
    """``distinct-forwarder worker`` as a subprocess; stopped by PID."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str]):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "worker", "--loglevel=INFO", *args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            return " ready." in self.log()

        wait_until(ready, timeout, 0.1, "worker ready")
        return self

    def stop(self, timeout: float = 30.0) -> int:
        code = stop_process(self.process, timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._log.close()


@pytest.fixture
def worker_env(redis_url: str, namespace: str, sandbox: Sandbox) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(
        REDIS_URL=redis_url,
        FORWARDER_NAMESPACE=namespace,
        DISTINCT_API_URL=sandbox.url,
        DISTINCT_API_KEY=API_KEY,
        DISTINCT_EXPERIENCE="fifa-cwc-2025",
        # Short waits so retry tests finish in seconds; the formula itself is
        # tested with a clock seam in test_retry.py.
        FORWARDER_BACKOFF_BASE="0.05",
        FORWARDER_BACKOFF_CAP="0.5",
    )
    return env


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> WorkerProcess:
        merged = dict(worker_env, **(env or {}))
        proc = WorkerProcess(merged, tmp_path / f"worker-{len(started)}.log",
                             ["--concurrency=4", *args])
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.stop()


def capture_event(i: int, kind: str = "PHOTO_VIEWED_BY_USER") -> dict[str, Any]:
    """A valid Capture Analytics event whose eventValue is unique to ``i``."""
    if kind == "REGISTRATION_PAGE_VISIT":
        return {"type": kind, "eventValue": f"evt-{i}", "recordCapturedAt":
                "2026-11-28T10:15:00.000Z", "sessionId": f"s-{i}",
                "registrationPageValue": "reg-7"}
    return {"type": kind, "eventValue": f"evt-{i}",
            "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": f"fan{i}@example.com"}


def user_event(i: int) -> dict[str, Any]:
    return {"userId": f"u-{i}", "email": f"fan{i}@example.com", "phone": "+14155552671",
            "feature": "user_collectible", "action": f"opened-{i}", "experienceId": "47Gop5",
            "capturedAt": "2026-04-27T13:35:00Z", "metadata": {"seq": i}}
