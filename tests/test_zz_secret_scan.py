"""After the whole suite (this module runs last): no secret was written anywhere.

The API key, the relay keys and the Redis passwords the tests use must appear
in no log file, no exported file, no spool file (everything under pytest's
base temporary directory: worker and relay logs, DLQ exports, spools) and no
Redis key or value. Then the same check for one deployment run end to end
with every secret set and a password-protected Redis: a worker, the relay,
failures into the DLQ, an export, status and config.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests
from click.testing import CliRunner

from forwarder.cli import cli
from forwarder.masking import fingerprint
from forwarder.redis_server import RedisServer, free_port
from forwarder.sandbox import Faults, Sandbox
from tests.conftest import API_KEY, WorkerProcess, wait_until
from tests.test_relay import KEY, OLD_KEY, RelayProcess

REDIS_PASSWORD = "scan-redis-pw-7f2a9c41"
SCAN_API_KEY = "dk_live_scan_5e8d0b3a9c"
SCAN_RELAY_KEY = "shop:scan-relay-key-4b1e9d7c"


def _known_secrets() -> list[str]:
    found = [API_KEY, KEY, OLD_KEY, REDIS_PASSWORD, SCAN_API_KEY,
             SCAN_RELAY_KEY.partition(":")[2]]
    for module, names in (("tests.test_redis_ha", ("PASSWORD",)),
                          ("tests.test_deploy_files", ("RELAY_KEY",)),
                          ("tests.test_console", ("ADMIN_KEY", "READONLY_KEY"))):
        loaded = sys.modules.get(module)
        found += [getattr(loaded, name) for name in names if loaded and hasattr(loaded, name)]
    return sorted(set(found))


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        # Configuration files the tests wrote to hand a secret to a process (a
        # .env for honcho, a sentinel's auth-pass): where an operator puts them.
        if (not path.is_file() or path.is_symlink() or path.name == ".env"
                or path.suffix == ".conf"):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits += [f"{path}: {fingerprint(s)}" for s in secrets if s.encode() in data]
    return hits


def _redis_holding(client: redis.Redis, secrets: list[str]) -> list[str]:
    hits = []
    for key in client.scan_iter(count=1000):
        dump = client.dump(key) or b""
        hits += [f"{key!r}: {fingerprint(s)}" for s in secrets
                 if s.encode() in key or s.encode() in dump]
    return hits


def test_the_whole_suite_wrote_no_secret_to_a_file_or_to_redis(tmp_path_factory, redis_url):
    secrets = _known_secrets()
    base = tmp_path_factory.getbasetemp()
    files = [p for p in base.rglob("*") if p.is_file()]
    hits = _files_holding(base, secrets) + _redis_holding(redis.Redis.from_url(redis_url),
                                                          secrets)
    print(f"\nsecret scan: {len(secrets)} secrets, {len(files)} files under {base}, "
          f"the Redis at {redis_url}: {len(hits)} found")
    assert hits == []


@pytest.mark.slow
def test_one_deployment_with_every_secret_set_writes_none_of_them(tmp_path):
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(workdir=str(redis_dir), password=REDIS_PASSWORD,
                         extra_args=["--save", "", "--appendonly", "yes"]).start()
    url = server.url
    sandbox = Sandbox(faults=Faults(api_key=SCAN_API_KEY, reject_values=["reject-me"]),
                      seed=5).start()
    namespace = f"scan-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=url, FORWARDER_NAMESPACE=namespace, DISTINCT_API_KEY=SCAN_API_KEY,
               DISTINCT_API_URL=sandbox.url, DISTINCT_EXPERIENCE="fifa-cwc-2025",
               FORWARDER_RELAY_KEYS=SCAN_RELAY_KEY, FORWARDER_LOG_FORMAT="json",
               FORWARDER_SPOOL_PATH=str(tmp_path / "spool.db"))
    worker = WorkerProcess(env, tmp_path / "worker.log", ["--concurrency=4"]).wait_ready()
    relay = RelayProcess(env, tmp_path / "relay.log").wait_ready()
    try:
        for value in ("evt-1", "reject-me", "evt-2"):
            answer = requests.post(
                relay.url + "/api/v1/analytics/capture/fifa-cwc-2025", timeout=10,
                headers={"Content-Type": "application/json",
                         "x-distinct-api-key": SCAN_RELAY_KEY.partition(":")[2]},
                data=json.dumps({"type": "PHOTO_VIEWED_BY_USER", "eventValue": value,
                                 "recordCapturedAt": "2026-11-28T10:15:00Z",
                                 "email": "john.doe@example.com"}))
            assert answer.status_code == 200
        client = redis.Redis.from_url(url)
        wait_until(lambda: len(sandbox.events) == 2 and client.hlen(f"{namespace}:dlq") == 1,
                   message="two delivered, one dead-lettered")
        runner = CliRunner()
        outputs = [runner.invoke(cli, args, env=env).output for args in (
            ["status"], ["status", "--json"], ["config"], ["dlq", "list"],
            ["dlq", "export", "--all", "--out", str(tmp_path / "export.jsonl")],
            ["--redis-url", f"redis://:wrong-{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
             "status"])]
        (tmp_path / "outputs.txt").write_text("\n".join(outputs))
        assert "Replayed" not in outputs[0] and "dead letters" in outputs[0]
    finally:
        assert worker.stop() == 0
        relay.stop()
        sandbox.stop()
    secrets = [REDIS_PASSWORD, SCAN_API_KEY, SCAN_RELAY_KEY.partition(":")[2]]
    hits = _files_holding(tmp_path, secrets) + _redis_holding(redis.Redis.from_url(url),
                                                              secrets)
    server.stop()
    assert hits == [], hits
