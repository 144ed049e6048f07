"""Lua scripts: one ``.lua`` file each, loaded by name, called with named KEYS and ARGV.

A script file declares its layout in its first lines, and only there::

    --! KEYS queue held
    --! ARGV batch limit
    --! ARGV* items            (optional: the rest of ARGV, as a table)
    --! include lib/requeue.lua

The loader turns the declarations into ``local`` bindings at the top of the
script (``local queue, held = KEYS[1], KEYS[2]``...), inlines each included
library (files under ``lua/lib/`` of the script's own package, else of
``forwarder``, that define ``local function``s only, every input a
parameter: no shared globals), and the caller passes the same
names: ``TAKE(client, queue=..., held=..., batch=..., limit=...)``. A name
missing or unknown is a TypeError before anything reaches Redis, so the order
of KEYS and ARGV lives in one place: the script's own header.

Scripts are registered per Redis client on first use (redis-py's
``register_script``: EVALSHA, and SCRIPT LOAD once on NOSCRIPT), so a process
registers only the scripts it runs.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

_DIRECTIVE = re.compile(r"^--!\s*(KEYS|ARGV\*|ARGV|include)(?:\s+(.*?))?\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Layout:
    """What a script takes, in order: its KEYS, its ARGV, and a variadic tail."""

    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None
    includes: tuple[str, ...]


def parse_layout(source: str, name: str = "script") -> Layout:
    """The ``--!`` declarations at the head of a script (comments before them allowed)."""
    keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    rest: str | None = None
    includes: list[str] = []
    for line in source.splitlines():
        if not line.startswith("--"):
            if line.strip():
                break  # the header ends at the first line of code
            continue
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        kind, value = match.group(1), match.group(2) or ""
        if kind == "include":
            includes.append(value)
            continue
        names = tuple(value.split())
        for item in names:
            if not _NAME.match(item):
                raise ValueError(f"{name}: {item!r} is not a Lua-friendly name")
        if kind == "KEYS":
            keys = names
        elif kind == "ARGV":
            args = names
        else:
            if len(names) != 1:
                raise ValueError(f"{name}: ARGV* names one table")
            rest = names[0]
    duplicated = {n for n in (*keys, *args, rest) if n and (*keys, *args, rest).count(n) > 1}
    if duplicated:
        raise ValueError(f"{name}: names used twice: {sorted(duplicated)}")
    return Layout(keys, args, rest, tuple(includes))


def _read(package: str, relative: str) -> str:
    return resources.files(package).joinpath(f"lua/{relative}").read_text(encoding="utf-8")


def read_library(package: str, relative: str) -> str:
    """An included file: the script's own package first, then forwarder's shared ones."""
    own = resources.files(package).joinpath(f"lua/{relative}")
    if own.is_file():
        return own.read_text(encoding="utf-8")
    return _read("forwarder", relative)


def _bindings(layout: Layout) -> str:
    lines = []
    if layout.keys:
        lines.append(f"local {', '.join(layout.keys)} = "
                     + ", ".join(f"KEYS[{i}]" for i in range(1, len(layout.keys) + 1)))
    if layout.args:
        lines.append(f"local {', '.join(layout.args)} = "
                     + ", ".join(f"ARGV[{i}]" for i in range(1, len(layout.args) + 1)))
    if layout.rest:
        lines.append(f"local {layout.rest} = {{}}")
        first = len(layout.args) + 1
        lines.append(f"for i = {first}, #ARGV do {layout.rest}[i - {first - 1}] = ARGV[i] end")
    return "\n".join(lines)


class LuaScript:
    """One script file, read on first use, ready to run on any client."""

    def __init__(self, name: str, package: str = "forwarder"):
        self.name = name
        self.package = package
        self._loaded: tuple[Layout, str] | None = None
        self._registered: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _load(self) -> tuple[Layout, str]:
        if self._loaded is None:
            raw = _read(self.package, f"{self.name}.lua")
            layout = parse_layout(raw, self.name)
            libraries = [read_library(self.package, lib) for lib in layout.includes]
            # What Redis runs: bindings, then the libraries, then the file itself.
            self._loaded = (layout, "\n".join([_bindings(layout), *libraries, raw]))
        return self._loaded

    @property
    def layout(self) -> Layout:
        return self._load()[0]

    @property
    def source(self) -> str:
        return self._load()[1]

    def _script(self, client: Any) -> Any:
        script = self._registered.get(client)
        if script is None:
            with self._lock:
                script = self._registered.get(client)
                if script is None:
                    script = client.register_script(self.source)
                    self._registered[client] = script
        return script

    def __call__(self, client: redis.Redis | Any, *, rest: Sequence[Any] = (),
                 **named: Any) -> Any:
        """Run the script; ``named`` gives every KEY and ARGV by name, ``rest`` the tail."""
        layout = self.layout
        unknown = set(named) - set(layout.keys) - set(layout.args)
        missing = [n for n in (*layout.keys, *layout.args) if n not in named]
        if unknown or missing:
            raise TypeError(f"{self.name}.lua: missing {missing}, unknown {sorted(unknown)}")
        if rest and layout.rest is None:
            raise TypeError(f"{self.name}.lua takes no variadic ARGV")
        keys = [named[n] for n in layout.keys]
        args = [named[n] for n in layout.args]
        args.extend(rest)
        return self._script(client)(keys=keys, args=args)


def script(name: str, package: str = "forwarder") -> LuaScript:
    """The script ``<package>/lua/<name>.lua``."""
    return LuaScript(name, package)
