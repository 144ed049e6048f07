"""``distinct-forwarder demo`` runs as the README's first command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from forwarder.redis_server import find_redis_server, free_port

pytestmark = pytest.mark.slow


def _demo(redis_url: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, REDIS_URL=redis_url)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "forwarder", "demo"], env=env,
                            capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def _check_summary(output: str) -> None:
    numbers = {k.strip(): int(v) for k, v in
               re.findall(r"^  ([a-z0-9() -]+?)\s{2,}(\d+)", output, re.MULTILINE)}
    assert numbers["accepted by capture()"] + numbers["rejected by validation"] == 300
    assert numbers["rejected by validation"] > 0
    assert numbers["dead-lettered"] > 0 and numbers["retried after 503"] > 0
    assert numbers["delivered (sandbox record)"] + numbers["dead-lettered"] == numbers[
        "accepted by capture()"]
    assert numbers["delivered twice"] == 0 and numbers["lost"] == 0
    assert re.search(r"matches the sandbox record\s+yes", output)
    assert "distinct-forwarder dlq list" in output


def test_demo_against_the_running_redis(redis_url):
    result, elapsed = _demo(redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_summary(result.stdout)
    assert elapsed < 60


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_demo_starts_a_private_redis_when_none_answers():
    result, elapsed = _demo(f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No Redis answered; started a private one on port" in result.stdout
    _check_summary(result.stdout)
    assert elapsed < 60
