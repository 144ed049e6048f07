"""The CLI as a person meets it: docs/cli.md current, an example in every --help,
documented exit codes, colour only on a terminal."""

from __future__ import annotations

import importlib.util
import os
import pty
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from forwarder.cli import cli
from forwarder.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen_cli", ROOT / "docs" / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = load_generator()
COMMANDS = [path[1:] for path, _ in GEN.commands(cli, ["distinct-forwarder"])]


def test_docs_cli_md_is_up_to_date() -> None:
    expected = GEN.render()
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == expected, "docs/cli.md is out of date: run `python docs/gen_cli.py`"


def test_docs_cli_md_covers_every_command_and_exit_code() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for path in COMMANDS:
        assert f"## distinct-forwarder {' '.join(path)}\n" in text
    for code in ("**0**", "**1**", "**2**"):
        assert code in text
    assert "`REDIS_URL`" in text and "`DISTINCT_API_KEY`" in text


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_with_an_example(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="distinct-forwarder")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`{' '.join(path)} --help` shows no example"
    assert f"distinct-forwarder {path[0]}" in result.output.split("Example", 1)[1]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    merged.update(env or {})
    return subprocess.run([sys.executable, "-m", "forwarder", *args], capture_output=True,
                          text=True, timeout=60, env=merged)


def test_exit_codes_0_ok_1_failure_2_bad_input(redis_url: str, namespace: str) -> None:
    env = {"REDIS_URL": redis_url, "FORWARDER_NAMESPACE": namespace}
    assert _run("dlq", "list", env=env).returncode == 0
    assert _run("status", "--bogus-option", env=env).returncode == 2
    invalid = _run("send", "--experience", "fifa-cwc-2025", "--json",
                   '{"type": "PHOTO_VIEWED_BY_USER", "eventValue": "e1"}', env=env)
    assert invalid.returncode == 2 and "email" in invalid.stderr + invalid.stdout
    bad_config = _run("dlq", "list", env={**env, "REDIS_URL": "sentinel://h1/"})
    assert bad_config.returncode == 2 and "REDIS_URL" in bad_config.stderr
    # Nothing listens on this port: a failure, told in one line, not a traceback.
    down = _run("dlq", "list", env={**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1
    assert "Traceback" not in down.stderr and "Redis at" in down.stderr


def _status_output(redis_url: str, namespace: str, terminal: bool) -> str:
    """``status`` (its Celery ping finds no worker: a warning) on a pipe or a pty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "DISTINCT_"))}
    env.update(REDIS_URL=redis_url, FORWARDER_NAMESPACE=namespace, TERM="xterm")
    if not terminal:
        return subprocess.run([sys.executable, "-m", "forwarder", "status"], env=env,
                              capture_output=True, text=True, timeout=60).stdout
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "forwarder", "status"], env=env,
                               stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the pty closes when the child exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_colour_only_on_a_terminal(redis_url: str, namespace: str) -> None:
    piped = _status_output(redis_url, namespace, terminal=False)
    assert "none registered" in piped
    assert "\x1b[" not in piped
    on_terminal = _status_output(redis_url, namespace, terminal=True)
    assert "none registered" in on_terminal
    assert "\x1b[" in on_terminal


def test_generator_check_mode_reports_drift(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("old\n")
    monkeypatch.setattr(GEN, "TARGET", stale)
    assert GEN.main(["--check"]) == 1
    assert GEN.main([]) == 0
    assert GEN.main(["--check"]) == 0
    assert stale.read_text() == GEN.render()


def test_help_is_the_same_whatever_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md must not depend on the COLUMNS of whoever generated it."""
    monkeypatch.setenv("COLUMNS", "200")
    wide = GEN.render()
    monkeypatch.setenv("COLUMNS", "40")
    assert GEN.render() == wide
