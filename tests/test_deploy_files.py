"""docker-compose.yml, Procfile and deploy/redis.conf: valid, complete, and working.

``docker compose config`` needs only the docker client (no engine); it runs
when either ``docker compose`` or ``docker-compose`` is installed, and the
test says it skipped otherwise. ``honcho start`` runs the real Procfile
against the shared Redis and the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from forwarder import Forwarder
from forwarder.config import Settings
from forwarder.constants import DEFAULT_SHUTDOWN_TIMEOUT
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


APP_SERVICES = ("worker", "relay", "sandbox", "flower")


def _duration(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60}[unit]


def test_compose_has_every_service_and_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *APP_SERVICES}
    profiles = {name: s.get("profiles", []) for name, s in services.items()}
    assert profiles == {"redis": [], "worker": [], "relay": [], "sandbox": ["dev"],
                        "flower": ["monitoring"]}
    assert services["worker"]["command"] == ["worker"]
    assert services["relay"]["command"] == ["relay", "--bind", "0.0.0.0:8080"]
    assert services["sandbox"]["command"][0] == "sandbox"
    assert "exec celery -A workers flower" in " ".join(services["flower"]["entrypoint"])
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_runs_the_image_it_builds(compose: dict[str, Any]) -> None:
    """No pip install at start, no source tree mounted: the Dockerfile's image."""
    services = compose["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] in (".", {"context": ".", "target": "flower"}), name
        assert service["image"].startswith("distinct-forwarder"), name
        assert not [v for v in service.get("volumes", []) if v.split(":")[0] in (".", "./")]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert services["flower"]["build"]["target"] == "flower"
    assert "pip install" not in COMPOSE.read_text()
    # The relay's spool outlives its container; nothing else writes.
    assert services["relay"]["volumes"] == ["relay-spool:/var/lib/distinct-forwarder"]
    assert "relay-spool" in compose["volumes"]


def test_compose_stops_and_checks_each_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "relay"):
        # SIGTERM: the worker exits within FORWARDER_SHUTDOWN_TIMEOUT, the relay's
        # gunicorn within its graceful timeout (20 s): the grace period is longer.
        grace = _duration(services[name]["stop_grace_period"])
        assert grace > max(DEFAULT_SHUTDOWN_TIMEOUT, 20), name
    assert services["worker"]["healthcheck"]["test"][:4] == [
        "CMD", "distinct-forwarder", "health", "worker"]
    relay_check = services["relay"]["healthcheck"]["test"]
    assert relay_check[:4] == ["CMD", "distinct-forwarder", "health", "relay"]
    assert "http://127.0.0.1:8080/readyz" in relay_check


def test_compose_redis_is_durable_checked_and_has_a_password(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    volumes = redis_service["volumes"]
    assert "redis-data:/data" in volumes
    assert any(v.startswith("./deploy/redis.conf:") for v in volumes)
    command = redis_service["command"]
    assert command[1] == volumes[0].split(":")[1]  # the conf file it mounts
    assert command[2:] == ["--requirepass", "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"]
    # The healthcheck authenticates through the environment, not its command line.
    assert redis_service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli ping" in redis_service["healthcheck"]["test"][1]
    assert "redis-data" in compose["volumes"]
    for name in APP_SERVICES:
        url = compose["services"][name]["environment"]["REDIS_URL"]
        assert url == "${REDIS_URL:-redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}" \
                      "@redis:6379/0}", name


def test_compose_holds_no_secret(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    # Secrets come from the environment or .env, each as an empty default or required.
    assert "${DISTINCT_API_KEY:-}" in text
    assert "${FORWARDER_RELAY_KEYS:-}" in text
    assert API_KEY not in text and "sandbox-key" not in text.split("services:")[1]
    flower = compose["services"]["flower"]
    assert "DISTINCT_API_KEY" not in flower["environment"]  # it only watches
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert compose["services"]["sandbox"]["ports"] == ["127.0.0.1:8765:8765"]
    assert compose["services"]["relay"]["ports"][0].startswith(
        "${FORWARDER_RELAY_PUBLISH:-127.0.0.1}:")


def test_compose_requires_only_what_the_default_services_need(compose: dict[str, Any]) -> None:
    """Compose checks ${VAR:?} in every service before it looks at profiles: a
    required variable of the monitoring profile would stop `docker compose up`."""
    def required(service: dict[str, Any]) -> set[str]:
        return set(re.findall(r"\$\{(\w+):\?", json.dumps(service)))

    services = compose["services"]
    default = set().union(*(required(s) for s in services.values() if not s.get("profiles")))
    for name, service in services.items():
        assert required(service) <= default, (name, required(service) - default)
    assert default == {"REDIS_PASSWORD"}


def test_flower_refuses_to_start_without_basic_auth(compose: dict[str, Any]) -> None:
    entrypoint = compose["services"]["flower"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    script = entrypoint[2].replace("$$", "$").replace("exec celery", "exec echo celery")
    for auth, code in ((":", 2), ("admin:", 2), (":secret", 2), ("admin:secret", 0)):
        result = subprocess.run(["sh", "-c", script, "flower", "--port=5555"],
                                env={"FLOWER_BASIC_AUTH": auth, "PATH": os.defpath},
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == code, (auth, result.stderr)
    assert "celery -A workers flower --port=5555" in result.stdout


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
    env.setdefault("REDIS_PASSWORD", "compose-config-test-password")
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


@pytest.mark.skipif(find_redis_server() is None, reason="needs redis-server")
def test_compose_redis_password_as_compose_passes_it(compose: dict[str, Any]) -> None:
    """redis-server with --requirepass, the URL the app services get, the healthcheck."""
    password = "compose-test-password-7f3a"
    server = RedisServer(password=password).start()
    try:
        with pytest.raises(redis.AuthenticationError):
            connect(f"redis://127.0.0.1:{server.port}/0", timeout=5).ping()
        url = compose["services"]["worker"]["environment"]["REDIS_URL"]
        default = re.fullmatch(r"\$\{REDIS_URL:-(.*)\}", url).group(1)  # type: ignore[union-attr]
        resolved = default.replace("${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}", password)
        resolved = resolved.replace("@redis:6379/", f"@127.0.0.1:{server.port}/")
        assert connect(resolved, timeout=5).ping()
        cli = shutil.which("redis-cli")
        if cli:
            check = compose["services"]["redis"]["healthcheck"]["test"][1]
            result = subprocess.run(["sh", "-c", check.replace("redis-cli", f"{cli} -p "
                                                                f"{server.port}")],
                                    env={"REDISCLI_AUTH": password, "PATH": os.defpath},
                                    capture_output=True, timeout=10)
            assert result.returncode == 0
            wrong = subprocess.run(["sh", "-c", check.replace("redis-cli", f"{cli} -p "
                                                               f"{server.port}")],
                                   env={"REDISCLI_AUTH": "wrong", "PATH": os.defpath},
                                   capture_output=True, timeout=10)
            assert wrong.returncode != 0
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
