"""The code's shape, checked: the producer/worker split, module sizes, public APIs only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_in_forwarder_imports_workers_celery_or_requests():
    for path in _modules("forwarder"):
        bad = {name for name in _imported(path)
               if name.split(".")[0] in ("workers", "celery", "kombu", "requests")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_module_is_over_400_lines():
    for path in [*_modules("forwarder"), *_modules("workers")]:
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


#: Public API that has a leading underscore by design: namedtuple's methods
#: (urlsplit's result) and os._exit (documented for exiting a forked child).
DOCUMENTED = {"_replace", "_asdict", "_fields", "_make", "_exit"}
#: An attribute with a leading underscore read off anything but our own objects.
_PRIVATE = re.compile(r"(?<![\w])(?!self\b|cls\b)(\w+(?:\.\w+)*)\.(_[a-z]\w*)")


def test_no_private_attribute_of_a_dependency_is_used():
    """kombu, Celery, redis-py...: public behaviour only (the guide's rule)."""
    own = {"self", "cls"}
    found = []
    for path in [*_modules("forwarder"), *_modules("workers")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for owner, name in _PRIVATE.findall(code):
                if owner in own or name.startswith("__") or name in DOCUMENTED:
                    continue
                found.append(f"{path.relative_to(ROOT)}:{number}: {owner}.{name}")
    assert found == []
