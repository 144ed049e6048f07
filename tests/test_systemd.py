"""deploy/systemd: the units verify, and say what the worker's supervisor needs.

``systemd-analyze verify`` runs where it exists (it needs no running systemd);
the units' ExecStart points at /opt/distinct-forwarder, so the copies verified
here point at this venv's ``distinct-forwarder`` instead (verify checks that
the program exists). Its warnings (an unknown directive, a bad value) fail the
test, not only its exit code.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forwarder.constants import DEFAULT_SHUTDOWN_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
WORKER = SYSTEMD / "distinct-forwarder-worker@.service"
RELAY = SYSTEMD / "distinct-forwarder-relay.service"
TARGET = SYSTEMD / "distinct-forwarder.target"
INSTALLED = "/opt/distinct-forwarder/bin/distinct-forwarder"
SANDBOXING = {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
              "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": ""}


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it is given (in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line} outside a section"
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    number, unit_name = re.fullmatch(r"(\d+)(s|min)?", value).groups()  # type: ignore[union-attr]
    return int(number) * (60 if unit_name == "min" else 1)


@pytest.mark.parametrize("path", [WORKER, RELAY])
def test_stop_semantics_fit_the_process_tree(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["Type"] == ["exec"]
    # SIGTERM to the main process only: the worker's supervisor (or gunicorn's
    # master) passes it on once; SIGKILL for what is left after the timeout.
    assert service["KillMode"] == ["mixed"]
    assert service["KillSignal"] == ["SIGTERM"]
    # Longer than the worker's own deadline, and the relay's 20 s graceful timeout.
    assert seconds(service["TimeoutStopSec"][0]) > max(DEFAULT_SHUTDOWN_TIMEOUT, 20)
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"][0] == "/etc/distinct-forwarder/env"
    for key, value in SANDBOXING.items():
        assert service.get(key) == [value], (path.name, key)


def test_worker_template_runs_one_worker_per_instance() -> None:
    sections = unit(WORKER)
    service = sections["Service"]
    assert service["ExecStart"] == [f"{INSTALLED} worker"]
    assert service["EnvironmentFile"][1] == "-/etc/distinct-forwarder/worker-%i.env"
    assert "%i" in sections["Unit"]["Description"][0]
    assert sections["Install"]["WantedBy"] == ["distinct-forwarder.target"]
    assert sections["Unit"]["PartOf"] == ["distinct-forwarder.target"]


def test_relay_spool_is_writable_and_outlives_restarts() -> None:
    service = unit(RELAY)["Service"]
    assert service["ExecStart"] == [f"{INSTALLED} relay"]
    (state,) = service["StateDirectory"]
    (spool,) = [v for v in service["Environment"] if v.startswith("FORWARDER_SPOOL_PATH=")]
    # StateDirectory= is writable under ProtectSystem=strict and kept across restarts.
    assert spool.split("=", 1)[1].startswith(f"/var/lib/{state}/")


def test_env_example_names_what_the_units_need() -> None:
    parser = configparser.ConfigParser()
    lines = [line for line in (SYSTEMD / "distinct-forwarder.env.example").read_text()
             .splitlines() if line and not line.startswith("#")]
    parser.read_string("[env]\n" + "\n".join(lines))
    names = set(parser["env"].keys())
    assert {"redis_url", "distinct_api_key", "forwarder_relay_keys"} <= names
    assert all("replace-with" in parser["env"][k] for k in
               ("redis_url", "distinct_api_key", "forwarder_relay_keys"))
    assert parser["env"]["forwarder_relay_bind"].startswith("127.0.0.1:")


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return found


@pytest.fixture
def local_units(tmp_path: Path) -> Path:
    program = Path(sys.executable).parent / "distinct-forwarder"
    if not program.exists():
        pytest.skip("distinct-forwarder is not installed in this venv")
    for path in (WORKER, RELAY, TARGET):
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALLED, str(program)))
    # An instance of the template, as systemctl enable distinct-forwarder-worker@1 makes.
    shutil.copy(tmp_path / WORKER.name, tmp_path / "distinct-forwarder-worker@1.service")
    return tmp_path


def test_systemd_analyze_verify_passes(local_units: Path) -> None:
    names = [WORKER.name, "distinct-forwarder-worker@1.service", RELAY.name, TARGET.name]
    result = subprocess.run([_systemd_analyze(), "verify", "--man=no",
                             *(str(local_units / n) for n in names)],
                            capture_output=True, text=True, timeout=120, cwd=local_units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings too: unknown keys, bad values
    # And it does complain about a unit it cannot run.
    broken = local_units / "broken.service"
    broken.write_text((local_units / RELAY.name).read_text().replace("KillMode=mixed",
                                                                      "KillMode=mixd"))
    bad = subprocess.run([_systemd_analyze(), "verify", "--man=no", str(broken)],
                         capture_output=True, text=True, timeout=120, cwd=local_units)
    assert "kill mode" in bad.stderr


def test_sandboxing_exposure_is_low(local_units: Path) -> None:
    """systemd's own score of the sandboxing (0 best, 10 worst; 'OK' is below 4)."""
    analyze = _systemd_analyze()
    for name in ("distinct-forwarder-worker@1.service", RELAY.name):
        result = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                                 str(local_units / name)],
                                capture_output=True, text=True, timeout=120, cwd=local_units)
        if "--offline" in result.stderr and result.returncode != 0:
            pytest.skip("this systemd-analyze has no --offline security analysis (< 252)")
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert found, result.stdout[-500:] + result.stderr
        print(f"\n{name}: exposure {found.group(1)}")
        assert float(found.group(1)) <= 2.0, result.stdout
