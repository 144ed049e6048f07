"""The gate every POST to Distinct passes, shared by all workers through Redis.

One Lua call (``admit.lua``) answers, for each event of a chunk about to be sent:

- ``delivered``: the id is in the dedupe window; do not send it again.
- ``busy``: another worker holds the event's claim.
- ``open``: the circuit breaker is open; park the event for ``wait`` seconds
  without burning an attempt.
- ``wait``: the global rate limit has no slot within the next second.
- ``claimed``: send it, after sleeping ``wait`` seconds (a reserved rate
  slot); ``probe`` says this request is the half-open breaker's probe.

The breaker is fed by each outcome (finish.lua, workers/outcomes.py) in the
same atomic step that stores it. Every time comparison inside the scripts
uses Redis's own clock, so workers on hosts with skewed clocks agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from forwarder import constants as C
from forwarder.scripts import script
from forwarder.store import dedupe_member, text

AdmitState = Literal["delivered", "busy", "open", "wait", "claimed"]

_ADMIT = script("admit", "workers")
_LEGACY_LEFT = script("legacy_left", "workers")


@dataclass(frozen=True)
class BreakerPolicy:
    """When the shared circuit breaker opens and how long it stays open."""

    consecutive: int = C.DEFAULT_BREAKER_CONSECUTIVE
    min_requests: int = C.DEFAULT_BREAKER_MIN_REQUESTS
    ratio: float = C.DEFAULT_BREAKER_RATIO
    window: float = C.DEFAULT_BREAKER_WINDOW
    cooldown_min: float = C.DEFAULT_BREAKER_COOLDOWN_MIN
    cooldown_max: float = C.DEFAULT_BREAKER_COOLDOWN_MAX

    def as_args(self) -> dict[str, Any]:
        """The policy as finish.lua's ARGV names it."""
        return {"consecutive": self.consecutive, "min_requests": self.min_requests,
                "ratio": self.ratio, "window": self.window,
                "cooldown_min": self.cooldown_min, "cooldown_max": self.cooldown_max}


@dataclass(frozen=True)
class Admission:
    state: AdmitState
    #: claimed: seconds until its rate slot; open/wait: seconds to park it.
    wait: float = 0.0
    probe: bool = False


@dataclass(frozen=True)
class LegacyState:
    """What 0.1 left that admit.lua and finish.lua must still respect."""

    #: Any of 0.1's hourly dedupe sets that may hold ids of the window.
    dedupe: bool = True
    #: A 0.1 worker is registered: claims are also taken as 0.1 took them.
    claims: bool = True


class Legacy:
    """What 0.1 left (LegacyState), asked of Redis once per LEGACY_CHECK_SECONDS
    for all the Gates (threads) and the outcome writer of a worker: the
    question reads 26 keys, and each chunk would otherwise pay it.
    Remove in 0.3."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._state = LegacyState()
        self._asked_at: float | None = None
        self._lock = threading.Lock()

    def state(self, client: redis.Redis, namespace: str, dedupe_ttl: float) -> LegacyState:
        with self._lock:
            now = self.clock()
            if self._asked_at is None or now - self._asked_at >= C.LEGACY_CHECK_SECONDS:
                dedupe, claims = _LEGACY_LEFT(
                    client, legacy_dedupe_prefix=C.key(namespace, C.LEGACY_DEDUPE_PREFIX),
                    fetchers=C.key(namespace, C.LEGACY_FETCHERS), dedupe_ttl=dedupe_ttl)
                self._state = LegacyState(bool(dedupe), bool(claims))
                self._asked_at = now
            return self._state


class Gate:
    """Dedupe, claims, circuit breaker and rate limit for one namespace."""

    def __init__(self, client: redis.Redis, namespace: str, rate_limit: float | None = None,
                 dedupe_ttl: float = C.DEFAULT_DEDUPE_TTL, legacy: Legacy | None = None):
        self.client = client
        self.namespace = namespace
        self.dedupe_ttl = dedupe_ttl
        self.rate_limit = rate_limit or 0.0
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.keys = {"dedupe_prefix": k(C.DEDUPE_PREFIX),
                     "legacy_dedupe_prefix": k(C.LEGACY_DEDUPE_PREFIX),
                     "claims": k(C.CLAIMS), "claim_tokens": k(C.CLAIM_TOKENS),
                     "legacy_claim_prefix": k(C.LEGACY_CLAIM_PREFIX), "breaker": k(C.BREAKER),
                     "probe": k(C.BREAKER_PROBE), "rate": k(C.RATE)}
        self.legacy = legacy or Legacy()

    def legacy_state(self) -> LegacyState:
        """What 0.1 left to respect (asked once a minute). Remove in 0.3."""
        return self.legacy.state(self.client, self.namespace, self.dedupe_ttl)

    def admit_many(self, event_ids: list[str], token: str,
                   claim_ttl: float) -> list[Admission]:
        """One Lua call deciding, in order, what may be sent of ``event_ids``;
        ``token`` (``{worker}|{random}``, new per chunk) owns the claims it takes."""
        pairs: list[Any] = []
        for event_id in event_ids:
            pairs += [event_id, dedupe_member(event_id)]
        legacy = self.legacy_state()
        replies = _ADMIT(self.client, **self.keys, token=token,
                         claim_ms=max(1, int(claim_ttl * 1000)), rate_per_s=self.rate_limit,
                         max_wait=C.RATE_MAX_WAIT, dedupe_ttl=self.dedupe_ttl,
                         legacy_dedupe=int(legacy.dedupe), legacy_claims=int(legacy.claims),
                         rest=pairs)
        return [_admission(line) for line in text(replies).split("\n")] if event_ids else []


def _admission(line: str) -> Admission:
    state, _, wait = line.partition(" ")
    if state == "probe":
        return Admission("claimed", wait=float(wait), probe=True)
    if state in ("open", "wait", "claimed"):
        return Admission(state, wait=float(wait))  # type: ignore[arg-type]
    return Admission(state)  # type: ignore[arg-type]
