"""The console's dead-letter page with 100,000 entries, next to 10 entries and
next to ``distinct-forwarder dlq list --limit 50`` on the same data.

    python -m benchmarks.console_render [--entries 100000] [--requests 100]

Three real consoles (``distinct-forwarder console``, gunicorn) serve three
namespaces of the Redis at REDIS_URL, holding ``--entries``, 50 and 10 dead
letters. Each page is fetched ``--requests`` times, round-robin with the
others, over one keep-alive connection per console, logged in; p50 and p99
are of the whole request (render included), as a browser waits for it. The CLI runs as a subprocess
(Python's start-up included, measured on its own as well), and its work is
also timed in-process. Prints figures only: no target is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import requests

from forwarder import dlq
from forwarder.processes import stop_process
from forwarder.redis_server import free_port
from forwarder.store import Store, connect

KEY = "bench-console-key-3b8f1d2e6a"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def fill(store: Store, count: int) -> None:
    """``count`` entries, a third of each reason, one second apart, newest now."""
    now = time.time()
    chunk: list[dict[str, Any]] = []
    for i in range(count):
        reason = ("rejected", "exhausted", "expired")[i % 3]
        dead_at = now - (count - i)
        chunk.append({
            "id": str(uuid.uuid4()), "kind": "capture", "experience": "fifa-cwc-2025",
            "body": {"type": "PHOTO_VIEWED_BY_USER", "eventValue": f"evt-{i}",
                     "recordCapturedAt": "2026-11-28T10:15:00.000Z",
                     "email": f"fan{i}@example.com"},
            "attempts": 1 if reason == "rejected" else 25, "first_seen": dead_at - 60,
            "last_attempt": dead_at, "last_status": 400 if reason == "rejected" else 503,
            "last_error": "Validation failed." if reason == "rejected" else "503",
            "reason": reason, "dead_at": dead_at})
        if len(chunk) == 1000:
            store.dlq_put(chunk)
            chunk = []
    store.dlq_put(chunk)


def _env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace,
               FORWARDER_CONSOLE_KEYS=f"bench:{KEY}")
    return env


@contextmanager
def console(redis_url: str, namespace: str) -> Iterator[Callable[[str], float]]:
    """A running console, and a function timing one logged-in GET of a path."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "forwarder", "console", "--bind",
                                f"127.0.0.1:{port}"], env=_env(redis_url, namespace),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if requests.get(base + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        http = requests.Session()
        # The cookie is Secure: Python's cookie jar keeps it for HTTPS only, so by hand.
        login = http.get(base + "/login")
        cookie = login.cookies.get("__Host-console") or ""
        token = _TOKEN.search(login.text)
        assert token, "no login form"
        answer = http.post(base + "/login", data={"key": KEY, "csrf_token": token.group(1)},
                           headers={"Cookie": f"__Host-console={cookie}"},
                           allow_redirects=False)
        cookie = answer.cookies.get("__Host-console") or ""
        assert answer.status_code == 302, answer.status_code

        def get(path: str) -> float:
            started = time.perf_counter()
            page = http.get(base + path, headers={"Cookie": f"__Host-console={cookie}"},
                            allow_redirects=False)
            elapsed = time.perf_counter() - started
            assert page.status_code == 200 and "<table" in page.text, (path, page.status_code)
            return elapsed

        yield get
    finally:
        stop_process(process, 30)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def timed_runs(func: Callable[[], Any], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--cli-runs", type=int, default=10)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    big, fifty, small = (Store(connect(url), f"bench-console-{uuid.uuid4().hex[:8]}")
                         for _ in range(3))
    rows: list[tuple[str, float, float]] = []
    try:
        started = time.perf_counter()
        fill(big, args.entries)
        print(f"filled {args.entries:,} dead letters in {time.perf_counter() - started:.1f} s")
        fill(fifty, 50)
        fill(small, 10)
        pages = [
            ("10 entries: page 1, no filter", small, "/dead-letters"),
            # The same 50 rows as a page of a big DLQ: the baseline.
            ("50 entries: page 1, no filter", fifty, "/dead-letters"),
            (f"{args.entries:,} entries: page 1, no filter", big, "/dead-letters"),
            (f"{args.entries:,} entries: page 1, --reason rejected --status 400", big,
             "/dead-letters?reason=rejected&status=400"),
            (f"{args.entries:,} entries: page 1, --search evt-1234 (few matches)", big,
             "/dead-letters?search=evt-1234"),
            (f"{args.entries:,} entries: last page, no filter", big,
             f"/dead-letters?start={max(0, args.entries - 50)}"),
        ]
        with ExitStack() as running:
            getters = {store.namespace: running.enter_context(console(url, store.namespace))
                       for store in (small, fifty, big)}
            samples: dict[str, list[float]] = {label: [] for label, _, _ in pages}
            for round_ in range(args.requests + 3):
                # Round-robin over the pages, so that a busy moment of this shared
                # machine weighs on every figure alike; 3 warm-up rounds.
                for label, store, path in pages:
                    elapsed = getters[store.namespace](path)
                    if round_ >= 3:
                        samples[label].append(elapsed)
            for label, _, _ in pages:
                p50, p99 = percentiles(samples[label])
                rows.append((f"console, {label}", p50, p99))
        env = _env(url, big.namespace)

        def cli(*extra: str) -> Callable[[], None]:
            def run() -> None:
                subprocess.run([sys.executable, "-m", "forwarder", *extra], env=env,
                               check=True, stdout=subprocess.DEVNULL)
            return run

        for label, command in [
            ("python start-up alone: distinct-forwarder --version", cli("--version")),
            ("CLI: dlq list --limit 50", cli("dlq", "list", "--limit", "50")),
            ("CLI: dlq list --reason rejected --status 400 --limit 50",
             cli("dlq", "list", "--reason", "rejected", "--status", "400", "--limit", "50")),
        ]:
            p50, p99 = percentiles(timed_runs(command, args.cli_runs))
            rows.append((label, p50, p99))
        in_process = timed_runs(lambda: dlq.entries(big, dlq.Selector(limit=50).resolve(big)),
                                args.cli_runs)
        p50, p99 = percentiles(in_process)
        rows.append(("dlq list --limit 50's work in-process (resolve + read)", p50, p99))
        # What it did before Store.dlq_ids took a limit: every id, then a slice.
        p50, p99 = percentiles(timed_runs(lambda: dlq.entries(big, big.dlq_ids()[:50]),
                                          args.cli_runs))
        rows.append(("  the same reading every id, then the first 50 (0.1's way)", p50, p99))
    finally:
        for store in (big, fifty, small):
            store.wipe()
    # The page of a 50-entry DLQ shows the same 50 rows as a page of a big one.
    baseline = rows[1][1]
    print(f"\n{'what':72} {'p50 ms':>8} {'p99 ms':>8} {'p50 / 50-entry page':>20}")
    for label, p50, p99 in rows:
        print(f"{label:72} {p50:8.1f} {p99:8.1f} {p50 / baseline:19.2f}x")
    print(f"\n{args.requests} requests per page over one keep-alive connection; "
          f"{args.cli_runs} runs per CLI line.")


if __name__ == "__main__":
    main()
