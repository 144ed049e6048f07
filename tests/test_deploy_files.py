"""docker-compose.yml, Procfile and deploy/redis.conf: valid, complete, and working.

``docker compose config`` needs only the docker client (no engine); it runs
when either ``docker compose`` or ``docker-compose`` is installed, and the
test says it skipped otherwise. ``honcho start`` runs the real Procfile
against the shared Redis and the sandbox.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.redis_server import RedisServer, find_redis_server, free_port
from forwarder.sandbox import Sandbox
from forwarder.store import connect
from tests.conftest import API_KEY, capture_event, wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
RELAY_KEY = "relay-key-for-honcho-test-7c1d"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_every_service_and_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "relay", "sandbox", "flower"}
    profiles = {name: s.get("profiles", []) for name, s in services.items()}
    assert profiles == {"redis": [], "worker": [], "relay": [], "sandbox": ["dev"],
                        "flower": ["monitoring"]}
    assert "distinct-forwarder worker" in services["worker"]["command"]
    assert "distinct-forwarder relay --bind 0.0.0.0:8080" in services["relay"]["command"]
    assert "celery -A workers flower" in services["flower"]["command"]
    for name in ("worker", "relay", "sandbox", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_redis_is_durable_and_checked(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    volumes = redis_service["volumes"]
    assert "redis-data:/data" in volumes
    assert any(v.startswith("./deploy/redis.conf:") for v in volumes)
    assert redis_service["command"][-1] == volumes[0].split(":")[1]
    assert "redis-data" in compose["volumes"]
    assert "healthcheck" in compose["services"]["relay"]


def test_compose_holds_no_secret() -> None:
    text = COMPOSE.read_text()
    # Secrets come from the environment or .env, each as an empty default.
    assert "${DISTINCT_API_KEY:-}" in text
    assert "${FORWARDER_RELAY_KEYS:-}" in text
    assert API_KEY not in text and "sandbox-key" not in text.split("services:")[1]


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profiles", [[], ["dev"], ["monitoring"]])
def test_docker_compose_config_passes(profiles: list[str]) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [a for p in profiles for a in ("--profile", p)]
    env = {k: v for k, v in os.environ.items() if k not in {"COMPOSE_FILE", "COMPOSE_PROFILES"}}
    result = subprocess.run([*command, "-f", str(COMPOSE), *args, "config", "--services"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    expected = {"redis", "worker", "relay"} | {"dev": {"sandbox"}, "monitoring": {"flower"}}.get(
        profiles[0] if profiles else "", set())
    # docker-compose v1 lists every service whatever the profiles; v2 only the active ones.
    assert expected <= set(result.stdout.split())


@pytest.mark.skipif(find_redis_server() is None, reason="needs redis-server")
def test_deploy_redis_conf_turns_on_aof_and_noeviction() -> None:
    conf = ROOT / "deploy" / "redis.conf"
    server = RedisServer(extra_args=["--include", str(conf)]).start()
    try:
        client = connect(server.url, timeout=5)
        config = {**client.config_get("append*"), **client.config_get("maxmemory-policy")}
        shown = {str(k, "utf-8") if isinstance(k, bytes) else k:
                 str(v, "utf-8") if isinstance(v, bytes) else v for k, v in config.items()}
        assert shown["appendonly"] == "yes"
        assert shown["appendfsync"] == "always"
        assert shown["maxmemory-policy"] == "noeviction"
    finally:
        server.stop()


# --- Procfile ------------------------------------------------------------------------
def _honcho() -> str:
    found = shutil.which("honcho", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("honcho is not installed (pip install -e '.[dev]')")
    return found


def test_honcho_check_passes() -> None:
    result = subprocess.run([_honcho(), "-f", str(ROOT / "Procfile"), "check"],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Valid procfile detected (worker, relay)" in result.stderr + result.stdout


@pytest.fixture
def honcho_env(redis_url: str, namespace: str, sandbox: Sandbox,
               tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace, DISTINCT_API_URL=sandbox.url,
        DISTINCT_API_KEY=API_KEY, FORWARDER_RELAY_KEYS=RELAY_KEY,
        FORWARDER_RELAY_BIND=f"127.0.0.1:{free_port()}", FORWARDER_RELAY_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    yield env


def test_honcho_start_runs_worker_and_relay(
    honcho_env: dict[str, str], sandbox: Sandbox, tmp_path: Path,
) -> None:
    """The Procfile as a person runs it: an event through the relay and one from
    capture() both reach the sandbox; SIGTERM stops everything."""
    empty_env_file = tmp_path / "empty.env"  # not the developer's own .env
    empty_env_file.write_text("")
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [_honcho(), "-f", str(ROOT / "Procfile"), "-e", str(empty_env_file), "start"],
            cwd=ROOT, env=honcho_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to clean up by its id
        )
    try:
        relay = f"http://{honcho_env['FORWARDER_RELAY_BIND']}"

        def up() -> bool:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{relay}/readyz", timeout=2) as answer:
                    relay_ready = answer.status == 200
            except OSError:
                relay_ready = False
            return relay_ready and " ready." in log_path.read_text(errors="replace")

        wait_until(up, 60, 0.2, "honcho's worker and relay")
        request = urllib.request.Request(
            f"{relay}/api/v1/analytics/capture/fifa-cwc-2025",
            data=json.dumps(capture_event(1)).encode(),
            headers={"Content-Type": "application/json", "x-distinct-api-key": RELAY_KEY},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        Forwarder(settings=Settings(redis_url=honcho_env["REDIS_URL"],
                                    namespace=honcho_env["FORWARDER_NAMESPACE"],
                                    experience="fifa-cwc-2025")).capture(capture_event(2))
        wait_until(lambda: {e["body"]["eventValue"] for e in sandbox.events}
                   >= {"evt-1", "evt-2"}, 30, 0.1, "both events delivered")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert process.returncode is not None
    # Nothing of it is left running: honcho's group (its own session) is empty.
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
