"""The producer's local spool, against real Redis and real SQLite files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from forwarder import EnqueueError, Forwarder
from forwarder.cli import cli
from forwarder.config import Settings
from forwarder.errors import SpoolFull
from forwarder.messages import encode_event, random_uuid
from forwarder.redis_server import RedisServer, free_port
from forwarder.spool import _SPOOL_PUSH, CLAIM_STALE_SECONDS, Spool, default_spool_path, drain
from forwarder.store import Store, connect
from tests.conftest import capture_event
from tests.legacy_format import legacy_message

ROOT = Path(__file__).resolve().parent.parent


IDS = [random_uuid() for _ in range(3000)]


def _event(i: int) -> dict:
    return {"id": IDS[i], "kind": "capture", "experience": "x", "body": capture_event(i),
            "attempts": 0, "first_seen": time.time()}


def _item(i: int) -> str:
    return encode_event(_event(i))  # type: ignore[arg-type]


def _queued_ids(store: Store) -> list[str]:
    raw = store.client.lrange(store.queue_key, 0, -1)
    return [json.loads(item)["id"] for item in reversed(raw)]


def _down_forwarder(namespace: str, spool: Path, **kw) -> Forwarder:
    port = free_port()  # nothing listens there
    return Forwarder(settings=Settings(
        redis_url=f"redis://:s3cr3t-pw@127.0.0.1:{port}/0", namespace=namespace,
        experience="fifa-cwc-2025", spool_path=str(spool), **kw))


def test_default_path_is_per_user_and_per_namespace():
    path = default_spool_path("ns-a", {"XDG_CACHE_HOME": "/home/u/.cache-x"})
    assert path == "/home/u/.cache-x/distinct-forwarder/spool-ns-a.db"
    assert default_spool_path("ns-b", {}).endswith("/.cache/distinct-forwarder/spool-ns-b.db")
    assert Spool.for_settings(Settings(spool_path="off")) is None


def test_capture_spools_when_redis_is_down_and_never_raises(namespace, tmp_path):
    fwd = _down_forwarder(namespace, tmp_path / "s.db")
    ids = [fwd.capture(capture_event(i)) for i in range(20)]
    ids += fwd.capture_many([capture_event(i) for i in range(20, 25)])
    assert len(set(ids)) == 25
    assert fwd.spool is not None
    status = fwd.spool.status(namespace)
    assert (status.messages, status.events) == (25, 25)
    assert status.oldest is not None and status.oldest <= time.time()
    # WAL mode, fsync on every commit, and only the user can read it (emails).
    db = fwd.spool._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert os.stat(tmp_path / "s.db").st_mode & 0o077 == 0
    # Nothing in the spool file gives the Redis password away.
    assert b"s3cr3t-pw" not in (tmp_path / "s.db").read_bytes()


def test_spool_off_keeps_the_old_enqueue_error_without_password(namespace):
    fwd = _down_forwarder(namespace, Path("off"))
    with pytest.raises(EnqueueError) as info:
        fwd.capture(capture_event(1))
    assert "s3cr3t-pw" not in str(info.value) and "***" in str(info.value)


def test_drain_pushes_oldest_first_and_empties_the_spool(store, tmp_path):
    spool = Spool(str(tmp_path / "s.db"), 64 * 1024 * 1024)
    spool.put([_item(i) for i in range(250)], store.namespace)
    result = drain(spool, store, batch=40)
    assert result.messages == 250
    assert _queued_ids(store) == IDS[:250]
    assert spool.status(store.namespace).messages == 0


def test_a_spool_written_by_0_1_drains_as_events(store, tmp_path):
    """0.1 spooled whole Celery messages; each comes out as the events it carried."""
    spool = Spool(str(tmp_path / "s.db"), 64 * 1024 * 1024)
    spool.put([legacy_message([_event(0), _event(1)]), _item(2),
               legacy_message([_event(3)])], store.namespace)
    result = drain(spool, store)
    assert result.messages == 4
    assert _queued_ids(store) == IDS[:4]
    raw = store.client.lrange(store.queue_key, 0, -1)
    assert all(json.loads(item)["body"]["eventValue"].startswith("evt-") for item in raw)


def test_a_batch_pushed_before_a_crash_is_not_queued_twice(store, tmp_path):
    spool = Spool(str(tmp_path / "s.db"), 64 * 1024 * 1024)
    spool.put([_item(i) for i in range(10)], store.namespace)
    # A producer claims a batch, pushes it through the script, and dies before deleting.
    token, rows = spool.claim(store.namespace, 100)
    marker = f"{store.namespace}:spooled:{token}"
    assert _SPOOL_PUSH(store.client, queue=store.queue_key, marker=marker, marker_ttl=60,
                       rest=[m for _, m in rows]) == 10
    # Its claim is not retaken while fresh...
    assert spool.claim(store.namespace, 100)[1] == []
    # ...and once stale, the retaker finds the marker and pushes nothing.
    later = time.time() + CLAIM_STALE_SECONDS + 1
    token2, rows2 = spool.claim(store.namespace, 100, now=later)
    assert token2 == token and len(rows2) == 10
    spool.expire_claim(token2)
    result = drain(spool, store)
    assert (result.messages, result.already_queued) == (0, 1)
    assert _queued_ids(store) == IDS[:10]
    assert spool.status(store.namespace).messages == 0


def test_parallel_drains_from_several_processes_queue_each_message_once(store, tmp_path,
                                                                         redis_url):
    path = tmp_path / "s.db"
    spool = Spool(str(path), 64 * 1024 * 1024)
    spool.put([_item(i) for i in range(3000)], store.namespace)
    code = (
        "import sys\n"
        "from forwarder.spool import Spool, drain\n"
        "from forwarder.store import Store, connect\n"
        "s = Spool(sys.argv[1], 64 << 20)\n"
        "st = Store(connect(sys.argv[2], timeout=5), sys.argv[3])\n"
        "print(drain(s, st, batch=25).messages)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), redis_url,
                               store.namespace], stdout=subprocess.PIPE, cwd=ROOT, text=True)
             for _ in range(4)]
    counts = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        counts.append(int(out.strip()))
    ids = _queued_ids(store)
    assert sum(counts) == 3000 and len(ids) == 3000 and len(set(ids)) == 3000
    assert sorted(ids) == sorted(IDS)
    assert sum(1 for c in counts if c) >= 2, f"drains did not overlap: {counts}"


def test_full_spool_raises_spool_full_and_counts_it(namespace, tmp_path):
    fwd = _down_forwarder(namespace, tmp_path / "s.db", spool_max_mb=0.25)
    accepted = []
    with pytest.raises(SpoolFull) as info:
        for i in range(2000):
            accepted.append(fwd.capture(capture_event(i)))
    assert isinstance(info.value, EnqueueError)
    assert "FORWARDER_SPOOL_MAX_MB" in str(info.value) and "s3cr3t-pw" not in str(info.value)
    assert fwd._enqueuer.stats["spool_full"] == 1
    assert fwd.spool is not None
    status = fwd.spool.status(namespace)
    # Nothing dropped silently: every capture that returned is in the spool.
    assert status.events == len(accepted) > 50
    assert status.full_rejections == 1


def test_capture_drains_the_spool_once_redis_is_back(tmp_path):
    server = RedisServer(workdir=str(tmp_path)).start()
    try:
        port = server.port
        settings = Settings(redis_url=server.url, namespace="spool-back",
                            experience="fifa-cwc-2025", spool_path=str(tmp_path / "s.db"))
        fwd = Forwarder(settings=settings)
        before = fwd.capture(capture_event(0))
        server.stop()
        during = [fwd.capture(capture_event(i)) for i in range(1, 501)]
        assert fwd.spool is not None and fwd.spool.status("spool-back").events == 500
        server = RedisServer(workdir=str(tmp_path), port=port).start()
        store = Store(connect(server.url), "spool-back")
        # The back-off after the failure is short; then each capture drains a bounded batch.
        after: list[str] = []
        deadline = time.monotonic() + 30
        while fwd.spool.status("spool-back").messages and time.monotonic() < deadline:
            after.append(fwd.capture(capture_event(1000 + len(after))))
            time.sleep(0.05)
        assert fwd.spool.status("spool-back").messages == 0
        ids = _queued_ids(store)
        assert before not in ids  # Redis ran without persistence: the test shows only drains
        assert set(during) | set(after) == set(ids) and len(ids) == len(set(ids))
        # Oldest first: the spooled events keep their capture order in the queue.
        spooled = [i for i in ids if i in set(during)]
        assert spooled == during
    finally:
        server.stop()


def test_spool_cli_status_and_flush(store, tmp_path, redis_url):
    path = tmp_path / "s.db"
    spool = Spool(str(path), 64 * 1024 * 1024)
    spool.put([_item(i) for i in range(7)], store.namespace)
    runner = CliRunner()
    env = {"REDIS_URL": redis_url, "FORWARDER_NAMESPACE": store.namespace,
           "FORWARDER_SPOOL_PATH": str(path)}
    out = runner.invoke(cli, ["spool", "status", "--json"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["messages"] == 7 and data["events"] == 7 and data["oldest"] is not None
    text = runner.invoke(cli, ["spool", "status"], env=env)
    assert "oldest entry" in text.output and "7" in text.output
    out = runner.invoke(cli, ["spool", "flush"], env=env)
    assert out.exit_code == 0, out.output
    assert "queued 7 events" in out.output
    assert _queued_ids(store) == IDS[:7]
    data = json.loads(runner.invoke(cli, ["spool", "status", "--json"], env=env).output)
    assert data["messages"] == 0 and data["oldest"] is None
