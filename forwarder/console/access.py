"""Who may use the console and what they may do: keys, roles, sessions.

``FORWARDER_CONSOLE_KEYS`` lists the keys that may change things (replay,
purge) and ``FORWARDER_CONSOLE_READONLY_KEYS`` those that may only look, both
as comma-separated ``name:key`` pairs like ``FORWARDER_RELAY_KEYS`` (and
checked by the same rules: 16+ printable ASCII characters). The name is who
the audit log says did what. Keys are compared in constant time by the
relay's ``KeyRing``; a login lasts ``CONSOLE_SESSION_SECONDS`` at most, in a
signed cookie whose signing key is new each time the console starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from flask import abort, g, session

from forwarder import constants as C
from forwarder.config import key_problems, parse_keys, relay_key_names
from forwarder.errors import ConfigError
from forwarder.relay import KeyRing

ADMIN = "admin"
READ_ONLY = "read-only"
KEYS_VAR = "FORWARDER_CONSOLE_KEYS"
READ_ONLY_KEYS_VAR = "FORWARDER_CONSOLE_READONLY_KEYS"


@dataclass(frozen=True)
class Operator:
    """A logged-in person: the name their key carries, and its role."""

    name: str
    role: str

    @property
    def can_change(self) -> bool:
        return self.role == ADMIN


class ConsoleKeys:
    """The keys that open the console, each with its name and role."""

    def __init__(self, admin: tuple[str, ...], read_only: tuple[str, ...] = ()):
        problems = [] if admin else [
            f"{KEYS_VAR}: set at least one key (comma-separated name:key, "
            f"{C.RELAY_KEY_MIN_LENGTH}+ characters each) to log in to the console with"]
        problems += key_problems(KEYS_VAR, admin) + key_problems(READ_ONLY_KEYS_VAR, read_only)
        if problems:
            raise ConfigError(problems)
        self._rings = [(ADMIN, KeyRing(admin))]
        if read_only:
            self._rings.append((READ_ONLY, KeyRing(read_only)))
        #: Every key, for the logs' last line of defence (never shown).
        self.secrets = tuple(key for _, key in relay_key_names(admin + read_only))
        self.names = {role: sorted({name for name, _ in relay_key_names(keys)})
                      for role, keys in ((ADMIN, admin), (READ_ONLY, read_only))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ConsoleKeys:
        return cls(parse_keys(environ.get(KEYS_VAR, "")),
                   parse_keys(environ.get(READ_ONLY_KEYS_VAR, "")))

    def operator(self, presented: str) -> Operator | None:
        """Whose key this is, or None. Every ring is asked, so the time taken
        does not tell a read-only key from an unknown one."""
        raw = presented.strip().encode("utf-8", "surrogatepass") if presented else None
        found = None
        for role, ring in self._rings:
            name = ring.client(raw)
            if name is not None and found is None:
                found = Operator(name, role)
        return found


def log_in(operator: Operator, now: float | None = None) -> None:
    """A fresh session for ``operator`` (nothing of an earlier one is kept)."""
    session.clear()
    session["who"] = operator.name
    session["role"] = operator.role
    session["since"] = time.time() if now is None else now


def log_out() -> None:
    session.clear()


def current_operator(now: float | None = None) -> Operator | None:
    """The session's operator while the login is valid, else None."""
    who, role, since = session.get("who"), session.get("role"), session.get("since")
    if not isinstance(who, str) or role not in (ADMIN, READ_ONLY):
        return None
    if not isinstance(since, (int, float)):
        return None
    if (time.time() if now is None else now) - since > C.CONSOLE_SESSION_SECONDS:
        return None
    return Operator(who, role)


def operator() -> Operator:
    """The operator of this request (the gate in app.py has checked there is one)."""
    found: Operator = g.operator
    return found


def changer() -> Operator:
    """The operator of this request, who must be allowed to change things (403 if not)."""
    found = operator()
    if not found.can_change:
        abort(403, description="Your key is read-only: it can look at dead letters, not "
                               "replay or purge them.")
    return found


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after the login: a path on this site only (no open redirect)."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return default
    return target
