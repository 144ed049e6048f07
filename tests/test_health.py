"""`distinct-forwarder health`: what probes run, run as probes run it (a subprocess)."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder import constants as C
from forwarder.cli.health import STUCK_AFTER_SECONDS, local_url, role_of
from forwarder.store import Store
from tests.conftest import wait_until


def _health(redis_url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}
    return subprocess.run(
        [sys.executable, "-m", "forwarder", "--redis-url", redis_url, "--namespace", namespace,
         "health", *args], capture_output=True, text=True, timeout=60, env=env)


# --- which role a container runs ------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    (["/opt/venv/bin/python", "-m", "workers", "--concurrency=4"], ("worker", None)),
    (["/opt/venv/bin/python", "/opt/venv/bin/distinct-forwarder", "worker"], ("worker", None)),
    (["/opt/venv/bin/python", "/opt/venv/bin/distinct-forwarder", "relay", "--bind",
      "0.0.0.0:9000"], ("relay", "0.0.0.0:9000")),
    (["python", "-m", "forwarder", "--namespace", "x", "relay", "--bind=127.0.0.1:81"],
     ("relay", "127.0.0.1:81")),
    (["/sbin/docker-init", "--", "distinct-forwarder", "--redis-url=redis://r", "relay"],
     ("relay", None)),
    (["/opt/venv/bin/python", "/opt/venv/bin/distinct-forwarder", "status", "--watch"],
     ("status", None)),
    (["/opt/venv/bin/python", "/opt/venv/bin/celery", "-A", "workers", "flower"],
     ("unknown", None)),
    ([], ("unknown", None)),
])
def test_role_of_a_command_line(argv: list[str], expected: tuple[str, str | None]) -> None:
    assert role_of(argv) == expected


def test_local_url_of_a_bind_address() -> None:
    assert local_url("0.0.0.0:8080", "/healthz") == "http://127.0.0.1:8080/healthz"
    assert local_url("[::]:8080", "/readyz") == "http://[::1]:8080/readyz"
    assert local_url("10.1.2.3:81", "/healthz") == "http://10.1.2.3:81/healthz"


def test_stuck_limit_is_above_what_a_working_worker_ever_holds() -> None:
    # A task hands back what it has not sent after the task budget; a batch not
    # started gets a new message after the resend delay; one request is bounded.
    assert STUCK_AFTER_SECONDS > (C.TASK_BUDGET_SECONDS * 2 + C.DISPATCH_RESEND_SECONDS
                                  + C.DEFAULT_CONNECT_TIMEOUT + C.DEFAULT_READ_TIMEOUT)


# --- the worker check against real workers ------------------------------------------------
def _child_pid(supervisor: int) -> int:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert children, "the supervisor has no child"
    return int(children[0])


def test_worker_check_passes_for_a_beating_worker_and_fails_for_a_frozen_one(
    redis_url: str, namespace: str, start_worker, tmp_path: Path,
) -> None:
    state = str(tmp_path / "health-state.json")
    assert _health(redis_url, namespace, "worker", "--state-file", state).returncode == 1
    worker = start_worker()
    ok = _health(redis_url, namespace, "worker", "--state-file", state)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"on {socket.gethostname()} beating" in ok.stdout
    other_host = _health(redis_url, namespace, "worker", "--host", "elsewhere")
    assert other_host.returncode == 1 and "no worker registered on elsewhere" in other_host.stderr
    # Frozen (alive, no heartbeat): the Celery child stops beating.
    child = _child_pid(worker.pid)
    os.kill(child, signal.SIGSTOP)
    try:
        time.sleep(3.5)
        frozen = _health(redis_url, namespace, "worker", "--max-silence", "2",
                         "--state-file", state)
    finally:
        os.kill(child, signal.SIGCONT)
    assert frozen.returncode == 1, frozen.stdout + frozen.stderr
    assert "has beaten in the last 2 s" in frozen.stderr
    wait_until(lambda: _health(redis_url, namespace, "worker", "--max-silence", "2",
                               "--state-file", state).returncode == 0, 20, 0.5,
               "the worker beating again")


def test_worker_check_fails_when_a_beating_worker_holds_a_batch_too_long(
    redis_url: str, namespace: str, store: Store, tmp_path: Path,
) -> None:
    """Heartbeat but no progress: the same batch held across runs past --stuck-after."""
    host = "wedged-host"
    worker = f"{host}:4242:abcdef"

    def beat() -> None:
        seconds, micros = store.client.time()
        store.client.zadd(store.workers_key, {worker: seconds + micros / 1e6})
        store.client.hset(store.worker_info_prefix + worker,
                          mapping={"host": host, "pid": "4242", "threads": "4"})

    beat()
    store.client.hset(store.held_prefix + worker, mapping={"b1:0": "{}", "b1:1": "{}"})
    state = str(tmp_path / "state.json")
    args = ("worker", "--host", host, "--stuck-after", "2", "--state-file", state)
    first = _health(redis_url, namespace, *args)
    assert first.returncode == 0, first.stderr
    assert "2 events held" in first.stdout
    time.sleep(2.5)
    beat()
    wedged = _health(redis_url, namespace, *args)
    assert wedged.returncode == 1
    assert f"{worker} has held a batch for" in wedged.stderr
    # Progress: that batch finished, another one is held. Healthy again.
    store.client.delete(store.held_prefix + worker)
    store.client.hset(store.held_prefix + worker, "b2:0", "{}")
    beat()
    assert _health(redis_url, namespace, *args).returncode == 0


def test_worker_check_passes_when_redis_does_not_answer(namespace: str) -> None:
    result = _health("redis://127.0.0.1:1/0", namespace, "worker")
    assert result.returncode == 0
    assert result.stdout.startswith("healthy: cannot tell, Redis at")


# --- the relay check -------------------------------------------------------------------------
class _Relay(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/healthz": 200, "/readyz": 503}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_relay() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_relay_check_follows_the_answer(redis_url: str, namespace: str,
                                        fake_relay: str) -> None:
    env_bind = {**os.environ, "FORWARDER_RELAY_BIND": fake_relay}
    live = subprocess.run([sys.executable, "-m", "forwarder", "health", "relay"],
                          capture_output=True, text=True, timeout=30, env=env_bind)
    assert live.returncode == 0, live.stderr
    ready = subprocess.run([sys.executable, "-m", "forwarder", "health", "relay", "--ready"],
                           capture_output=True, text=True, timeout=30, env=env_bind)
    assert ready.returncode == 1 and "answered 503" in ready.stderr
    gone = _health(redis_url, namespace, "relay", "--url", "http://127.0.0.1:1/healthz")
    assert gone.returncode == 1


def test_health_without_a_role_passes() -> None:
    # PID 1 here is not a distinct-forwarder worker or relay.
    result = subprocess.run([sys.executable, "-m", "forwarder", "health"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    assert "nothing long-running to check" in result.stdout
