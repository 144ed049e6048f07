"""schemathesis against the relay's own /openapi.json, on a real gunicorn relay.

Every operation is fuzzed with valid and invalid data (body, path, headers,
methods) and every schemathesis check runs: no 5xx, statuses, headers and
bodies as documented, invalid data refused, valid data accepted, missing
auth refused.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from forwarder.relay_openapi import openapi_document
from tests.test_relay import KEY, RelayProcess, relay_env

pytestmark = pytest.mark.timeout(240)
#: Per operation and mode; the 200-odd requests in all take seconds on loopback.
EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzzed_relay(redis_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RelayProcess]:
    from forwarder.store import Store, connect

    namespace = "test-relay-fuzz"
    log: Path = tmp_path_factory.mktemp("fuzz") / "relay.log"
    proc = RelayProcess(relay_env(redis_url, namespace), log).wait_ready()
    yield proc
    code = proc.stop()
    Store(connect(redis_url), namespace).wipe()  # drop the fuzzed events it queued
    assert code == 0, proc.log()
    assert KEY not in proc.log()


@pytest.fixture(scope="module")
def relay_schema(fuzzed_relay: RelayProcess) -> schemathesis.BaseSchema:
    # Loaded from the running relay, so what is tested is what it serves.
    return schemathesis.openapi.from_url(fuzzed_relay.url + "/openapi.json")


def _cases() -> list[tuple[str, str, schemathesis.GenerationMode]]:
    # Negative data needs something to break: only the POSTs take parameters or a body.
    cases = []
    for path, item in openapi_document()["paths"].items():
        for method in item:
            modes = list(schemathesis.GenerationMode) if method == "post" else [
                schemathesis.GenerationMode.POSITIVE]
            cases += [(method.upper(), path, mode) for mode in modes]
    return cases


CASES = _cases()


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_fuzzed_requests_conform_to_the_document(relay_schema, method, path, mode):
    operation = relay_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        # Every built-in check: no 5xx; statuses, headers, content types and
        # bodies as documented; invalid data refused; valid data accepted.
        case.call_and_validate(headers={"x-distinct-api-key": KEY}, timeout=10)

    check()


def test_schemathesis_run_finds_no_failures(fuzzed_relay):
    """The CLI's coverage phase adds boundary values and missing/extra parts."""
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", fuzzed_relay.url + "/openapi.json",
         "--checks", "all", "--max-examples", str(EXAMPLES), "--phases", "coverage,fuzzing",
         "-H", f"x-distinct-api-key: {KEY}", "--no-color"],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout
