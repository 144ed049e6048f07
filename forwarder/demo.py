"""``distinct-forwarder demo``: the whole pipeline on this machine in under a minute."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from forwarder import dlq as dlq_tools
from forwarder.config import Settings
from forwarder.errors import InvalidEvent
from forwarder.processes import stop_process
from forwarder.producer import Forwarder
from forwarder.redis_server import (
    INSTALL_HINT,
    RedisServer,
    answers,
    describe_binary,
    version_problem,
)
from forwarder.sandbox import Faults, Sandbox
from forwarder.schemas import PHOTO_TYPES, format_timestamp
from forwarder.store import Store, connect

NAMESPACE = "distinct-forwarder-demo"
EXPERIENCE = "fifa-cwc-2025"
API_KEY = "demo-key"
DEADLINE_SECONDS = 45.0


def sample_events(count: int, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """A mix of every type: ~5% invalid, ~4% that the sandbox will reject."""
    base = datetime.now(timezone.utc) - timedelta(minutes=5)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        at = format_timestamp(base + timedelta(milliseconds=i * 37))
        roll = rng.random()
        value = f"demo-reject-{i}" if roll < 0.04 else f"demo-{i}"
        shape = i % 5
        if shape == 0:
            event: dict[str, Any] = {"type": "REGISTRATION_PAGE_VISIT", "eventValue": value,
                                     "recordCapturedAt": at, "sessionId": f"s-{i:04x}",
                                     "registrationPageValue": "reg-7"}
            kind = "capture"
        elif shape < 4:
            event = {"type": PHOTO_TYPES[shape - 1], "eventValue": value,
                     "recordCapturedAt": at, "email": f"fan{i}@example.com"}
            kind = "capture"
        else:
            event = {"userId": f"u-{i}", "email": f"fan{i}@example.com",
                     "feature": "user_collectible", "action": value,
                     "experienceId": "47Gop5", "capturedAt": at, "metadata": {"seq": i}}
            kind = "user_analytics"
        if 0.04 <= roll < 0.09:  # invalid on purpose, one rule each
            broken = i % 3
            if broken == 0:
                event.pop("recordCapturedAt", event.pop("capturedAt", None))
            elif broken == 1:
                event["email"] = "not-an-email"
            else:
                event["unexpected"] = True
        out.append((kind, event))
    return out


def marker(kind: str, body: dict[str, Any]) -> str:
    return body["eventValue"] if kind == "capture" else body["action"]


def run_demo(redis_url: str | None, events: int = 300, clean: bool = False) -> int:
    echo = click.echo
    url = redis_url or os.environ.get("REDIS_URL") or "redis://localhost:6379/0"
    private: RedisServer | None = None
    if answers(url):
        echo(f"Using Redis at {Settings(redis_url=url).masked()['redis_url']}.")
    else:
        try:
            private = RedisServer().start()
        except RuntimeError as exc:
            echo(f"No Redis answered at {url}.\n{exc}", err=True)
            return 1
        url = private.url
        echo(f"No Redis answered; started a private one on port {private.port}: "
             f"{describe_binary(private.binary)}. It stops when the demo ends.")
    problem = version_problem(connect(url, timeout=5.0))
    if problem:
        echo(problem, err=True)
        if private is not None:
            private.stop()
        return 1
    sandbox = Sandbox(faults=Faults(api_key=API_KEY, fail_rate=0.1, fail_status=503,
                                    reject_values=[f"demo-reject-{i}" for i in range(events)]),
                      seed=7).start()
    echo(f"Sandbox Distinct on {sandbox.url}: 10% of POSTs answer 503, "
         f"events named demo-reject-* answer 400.")
    store = Store(connect(url, timeout=5.0), NAMESPACE)
    store.wipe()
    env = dict(os.environ, REDIS_URL=url, FORWARDER_NAMESPACE=NAMESPACE,
               DISTINCT_API_URL=sandbox.url, DISTINCT_API_KEY=API_KEY,
               # Short waits so retries show within the demo; defaults are 1 s / 10 min.
               FORWARDER_BACKOFF_BASE="0.2", FORWARDER_BACKOFF_CAP="2")
    # A file, not a pipe nobody reads: a chatty worker must never block on it.
    worker_log = tempfile.NamedTemporaryFile(prefix="fwd-demo-worker-", suffix=".log",  # noqa: SIM115
                                             delete=False)
    worker = subprocess.Popen([sys.executable, "-m", "forwarder", "worker",
                               "--loglevel=WARNING", "--concurrency=8"],
                              env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    echo(f"Started a worker (pid {worker.pid}).")
    code = 1
    try:
        code = _drive(store, sandbox, url, events, echo, kept=private is None and not clean)
        if code != 0:
            echo(f"The worker's log: {worker_log.name}")
        return code
    finally:
        stop_process(worker, 20)
        worker_log.close()
        if code == 0:
            os.unlink(worker_log.name)
        sandbox.stop()
        if clean or private is not None:
            store.wipe()
        if private is not None:
            private.stop()


def _drive(store: Store, sandbox: Sandbox, url: str, count: int, echo: Any,
           kept: bool = True) -> int:
    fwd = Forwarder(settings=Settings(redis_url=url, namespace=NAMESPACE,
                                      experience=EXPERIENCE))
    accepted: dict[str, tuple[str, str]] = {}
    invalid: list[str] = []
    for kind, event in sample_events(count, random.Random(42)):
        try:
            send = fwd.capture if kind == "capture" else fwd.user_analytics
            event_id = send(event)
            accepted[event_id] = (kind, marker(kind, event))
        except InvalidEvent as exc:
            field, messages = sorted(exc.errors.items())[0]
            invalid.append(f"{field}: {messages[0]}")
    echo(f"Captured {count} events: {len(accepted)} accepted, {len(invalid)} rejected "
         f"by validation (e.g. {invalid[0] if invalid else '-'}).")
    started = time.monotonic()
    settled = False
    tty = sys.stdout.isatty()
    next_line = time.monotonic()
    while time.monotonic() - started < DEADLINE_SECONDS:
        delivered = len(sandbox.events)
        dead = store.dlq_depth()
        waiting = store.queue_depth() + store.retry_depth()
        line = (f"  delivered {delivered:4}  dead-lettered {dead:3}  waiting {waiting:4}  "
                f"[{time.monotonic() - started:4.1f}s]")
        if tty:
            echo("\r" + line, nl=False)
        elif time.monotonic() >= next_line:
            echo(line)
            next_line += 1.0
        if delivered + dead >= len(accepted) and waiting == 0:
            settled = True
            break
        time.sleep(0.3)
    if tty:
        echo("")
    received = Counter((e["kind"], marker(e["kind"], e["body"])) for e in sandbox.events)
    wanted = Counter(accepted.values())
    entries = dlq_tools.entries(store)
    dead_markers = Counter((e["kind"], marker(e["kind"], e["body"])) for e in entries)
    twice = sum(n - 1 for n in received.values() if n > 1)
    missing = wanted - received - dead_markers
    stats = sandbox.stats
    reasons = Counter(f"{e['reason']} (HTTP {e['last_status']})" for e in entries)
    matches = settled and not missing and twice == 0 and sum(received.values()) + len(
        entries) == len(accepted)
    echo("\nSummary")
    rows = [
        ("accepted by capture()", len(accepted), ""),
        ("rejected by validation", len(invalid), ""),
        ("delivered (sandbox record)", sum(received.values()), ""),
        ("retried after 503", stats.get("503", 0), ""),
        ("dead-lettered", len(entries), str(dict(reasons))),
        ("delivered twice", twice, ""),
        ("lost", sum(missing.values()), ""),
    ]
    for label, value, note in rows:
        echo(f"  {label:28}{value:>5}  {note}".rstrip())
    echo(f"  {'matches the sandbox record':28}{'yes' if matches else 'NO':>5}")
    if entries:
        echo("\nDead-letter queue (first 3):")
        for e in entries[:3]:
            echo(f"  {e['id']}  {e['reason']}  HTTP {e['last_status']}  "
                 f"{e['body'].get('type', e['kind'])}")
    if kept:
        echo("\nThe demo's keys stay in Redis (namespace distinct-forwarder-demo) until the "
             "next\ndemo or `demo --clean`; look at them yourself:")
        echo(f"  FORWARDER_NAMESPACE={NAMESPACE} distinct-forwarder dlq list")
        echo(f"  FORWARDER_NAMESPACE={NAMESPACE} distinct-forwarder dlq show ID")
        echo(f"  FORWARDER_NAMESPACE={NAMESPACE} distinct-forwarder dlq replay --all")
    else:
        echo("\nThe private Redis stops with the demo, and its keys with it. Point REDIS_URL "
             "at a Redis\nto keep them and look at them with `distinct-forwarder dlq list`.")
    return 0 if matches else 1


__all__ = ["INSTALL_HINT", "run_demo", "sample_events"]
