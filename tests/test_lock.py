"""requirements/*.lock: what the image, .ci/run and the systemd install put in a venv.

The locks are one universal resolution of pyproject.toml's ranges (uv, every
Python >= 3.10), each file hashed. These tests fail when a lock no longer
satisfies pyproject.toml (a range changed and nobody ran requirements/update.sh),
when a lock misses a dependency of something it pins, or when the locks
disagree with each other.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Which extras of the project each lock covers.
LOCK_EXTRAS = {"runtime.lock": ["relay"], "monitoring.lock": ["relay", "monitoring"]}
#: The interpreters the locks must serve: pyproject's floor, the image's 3.11 (and the
#: 3.11.0-3.11.2 releases that still need async-timeout), and newer ones.
ENVIRONMENTS = [(v, "linux") for v in ("3.10.14", "3.11.2", "3.11.9", "3.12.7", "3.13.1")]


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, env: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(env)


def parse_lock(path: Path) -> list[Pin]:
    """The pins of a hashed requirements file (``name==version ; marker`` + hashes)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        requirement = Requirement(re.sub(r"--hash=\S+", "", line).strip())
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not pinned"
        pins.append(Pin(canonicalize_name(requirement.name), Version(spec.version),
                        requirement.marker, hashes))
    return pins


def environment(python: str, platform: str, extra: str = "") -> dict[str, str]:
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
            "sys_platform": platform, "platform_system": platform.capitalize(),
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "implementation_version": python, "os_name": "posix",
            "platform_machine": "x86_64", "platform_release": "", "platform_version": "",
            "extra": extra}


def project_requirements(extras: list[str]) -> list[Requirement]:
    optional = PYPROJECT["project"]["optional-dependencies"]
    return [Requirement(r) for r in
            [*PYPROJECT["project"]["dependencies"], *(r for e in extras for r in optional[e])]]


def pinned(pins: list[Pin], name: str, env: dict[str, str]) -> list[Pin]:
    return [p for p in pins if p.name == canonicalize_name(name) and p.applies(env)]


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_lock_satisfies_pyproject_on_every_supported_python(lock: str) -> None:
    pins = parse_lock(LOCKS / lock)
    problems = []
    for python, platform in ENVIRONMENTS:
        env = environment(python, platform)
        for requirement in project_requirements(LOCK_EXTRAS[lock]):
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            found = pinned(pins, requirement.name, env)
            if len(found) != 1:
                problems.append(f"Python {python}: {requirement.name} pinned {len(found)} "
                                f"times in {lock}")
            elif not requirement.specifier.contains(found[0].version, prereleases=True):
                problems.append(f"Python {python}: {lock} pins {requirement.name}=="
                                f"{found[0].version}, pyproject.toml asks {requirement}")
    assert problems == [], "run requirements/update.sh:\n" + "\n".join(problems)


@pytest.mark.parametrize("lock", [*sorted(LOCK_EXTRAS), "build.lock"])
def test_every_pin_is_hashed_and_the_header_says_how_it_was_made(lock: str) -> None:
    pins = parse_lock(LOCKS / lock)
    assert pins
    assert [p.name for p in pins if not p.hashes] == []
    header = (LOCKS / lock).read_text().splitlines()[1]
    for flag in ("uv pip compile", "--universal", "--generate-hashes", f"-o requirements/{lock}"):
        assert flag in header, header
    update = (LOCKS / "update.sh").read_text()
    assert f"-o requirements/{lock}" in update


def test_the_locks_agree_with_each_other() -> None:
    """The image's flower stage installs monitoring.lock over runtime.lock's venv."""
    runtime = {(p.name, str(p.marker)): p.version for p in parse_lock(LOCKS / "runtime.lock")}
    monitoring = {(p.name, str(p.marker)): p.version
                  for p in parse_lock(LOCKS / "monitoring.lock")}
    assert {k: v for k, v in monitoring.items() if k in runtime} == runtime


def test_build_lock_follows_the_build_system() -> None:
    requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    listed = [Requirement(line) for line in (LOCKS / "build.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert [str(r) for r in listed] == [str(r) for r in requires]
    pins = parse_lock(LOCKS / "build.lock")
    for requirement in requires:
        (pin,) = pinned(pins, requirement.name, environment("3.11.9", "linux"))
        assert requirement.specifier.contains(pin.version)


def test_lock_holds_every_dependency_of_what_it_pins_here() -> None:
    """The closure for this interpreter, from the installed packages' own metadata.

    Where the venv has another version than the lock, that package's own
    requirements cannot be read offline and are not followed (``.ci/run``
    installs the lock first, so there every version matches).
    """
    pins = parse_lock(LOCKS / "runtime.lock")
    python = ".".join(str(n) for n in sys.version_info[:3])
    here = environment(python, sys.platform)
    todo = [(r, frozenset(r.extras)) for r in project_requirements(LOCK_EXTRAS["runtime.lock"])
            if r.marker is None or r.marker.evaluate(here)]
    seen: set[tuple[str, frozenset[str]]] = set()
    problems, followed = [], 0
    while todo:
        requirement, extras = todo.pop()
        key = (canonicalize_name(requirement.name), extras)
        if key in seen:
            continue
        seen.add(key)
        found = pinned(pins, requirement.name, environment(python, sys.platform))
        if len(found) != 1:
            problems.append(f"{requirement} is pinned {len(found)} times for Python {python}")
            continue
        if not requirement.specifier.contains(found[0].version, prereleases=True):
            problems.append(f"{requirement} is not satisfied by =={found[0].version}")
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != found[0].version:
            continue
        followed += 1
        for raw in dist.requires or []:
            sub = Requirement(raw)
            if sub.marker is None or any(
                    sub.marker.evaluate(environment(python, sys.platform, extra))
                    for extra in ("", *extras)):
                todo.append((sub, frozenset(sub.extras)))
    assert problems == [], "run requirements/update.sh:\n" + "\n".join(problems)
    assert followed >= 5, "too few installed packages match the lock to check anything"
