"""docs/lifecycle.md matches the code: every function and script it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "lifecycle.md").read_text()
#: `package/module.py: Name.attr` references anywhere in the document.
CODE_REF = re.compile(r"`((?:forwarder|workers)/[\w/]+\.py): ([\w.]+)`")
SCRIPT_REF = re.compile(r"`((?:forwarder|workers)/lua/(?:lib/)?\w+\.lua)`")
SCRIPT_NAME = re.compile(r"\b(\w+)\.lua\b")


def _transition_rows() -> list[list[str]]:
    section = DOC.split("## Transitions", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_every_function_named_exists():
    refs = CODE_REF.findall(DOC)
    assert len(refs) >= 15
    for path, name in refs:
        module = importlib.import_module(path[:-3].replace("/", "."))
        target = module
        for part in name.split("."):
            assert hasattr(target, part), f"{path}: {name} does not exist"
            target = getattr(target, part)
        assert callable(target), f"{path}: {name} is not callable"


def test_every_script_named_exists_and_every_script_is_named():
    named = set(SCRIPT_REF.findall(DOC))
    for path in named:
        assert (ROOT / path).is_file(), path
    on_disk = {str(p.relative_to(ROOT)) for pkg in ("forwarder", "workers")
               for p in (ROOT / pkg / "lua").glob("*.lua")}
    mentioned = set(SCRIPT_NAME.findall(DOC))
    for path in on_disk:
        assert Path(path).stem in mentioned, f"{path} is not in docs/lifecycle.md"


def test_each_transition_row_names_code_and_a_script_or_says_none():
    rows = _transition_rows()
    assert len(rows) >= 12
    for start, end, code, lua in rows:
        assert start and end, (start, end)
        assert CODE_REF.fullmatch(code), code
        assert SCRIPT_REF.fullmatch(lua) or lua.startswith("none"), lua


def test_every_script_that_requeues_uses_the_one_requeue_function():
    """'Requeue' is the one verb: no script pushes onto the queue any other way."""
    for pkg in ("forwarder", "workers"):
        for path in (ROOT / pkg / "lua").glob("*.lua"):
            text = path.read_text()
            if "requeue(" in text:
                assert "--! include lib/requeue.lua" in text, path
            pushes = re.findall(r"redis\.call\('(LPUSH|RPUSH)', (\w+)", text)
            assert not [p for p in pushes if p[1] == "queue"], (path, pushes)
