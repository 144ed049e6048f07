"""Retry or give up: one small module, pure, with seams for time and chance.

``decide`` takes an event that has just been tried and the outcome of that
try, and returns what happens next. It never sleeps and never touches
Redis, so every rule here is tested instantly with a fixed clock and RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from forwarder.config import Settings
from forwarder.messages import Event
from workers.delivery import Outcome

#: rejected: Distinct refused the event. exhausted: out of attempts.
#: expired: older than the maximum age. malformed: not a valid event message.
DeadReason = Literal["rejected", "exhausted", "expired", "malformed"]


@dataclass(frozen=True)
class BackoffPolicy:
    base: float
    cap: float
    retry_after_cap: float
    max_attempts: int
    max_age: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BackoffPolicy:
        return cls(
            base=settings.backoff_base,
            cap=settings.backoff_cap,
            retry_after_cap=settings.retry_after_cap,
            max_attempts=settings.max_attempts,
            max_age=settings.max_age,
        )


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    delay: float
    due: float


@dataclass(frozen=True)
class DeadLetter:
    reason: DeadReason


Decision = Delivered | Retry | DeadLetter


def backoff_delay(attempts: int, policy: BackoffPolicy, rng: random.Random) -> float:
    """Full jitter: ``uniform(0, min(cap, base * 2**attempt))``.

    ``attempt`` counts from 0 for the first retry, so the first wait is at most
    ``base``, the second at most ``2 * base``, and so on up to ``cap``.
    """
    exponent = min(max(attempts - 1, 0), 62)  # 2**62 * base is past any cap
    ceiling = min(policy.cap, policy.base * (2**exponent))
    return rng.uniform(0.0, ceiling)


def decide(
    event: Event, outcome: Outcome, now: float, policy: BackoffPolicy, rng: random.Random
) -> Decision:
    """What happens to ``event`` after a try that came to ``outcome``.

    ``event["attempts"]`` already counts the try just made.
    """
    if outcome.verdict == "delivered":
        return Delivered()
    if outcome.verdict == "rejected":
        return DeadLetter("rejected")
    if now - event["first_seen"] >= policy.max_age:
        return DeadLetter("expired")
    # A deployment problem (bad key, wrong URL) is not the event's fault:
    # it waits for an operator until the maximum age, whatever the count.
    if outcome.verdict == "transient" and event["attempts"] >= policy.max_attempts:
        return DeadLetter("exhausted")
    delay = backoff_delay(event["attempts"], policy, rng)
    if outcome.retry_after is not None:
        delay = max(delay, min(outcome.retry_after, policy.retry_after_cap))
    return Retry(delay=delay, due=now + delay)
