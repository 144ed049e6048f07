"""The exceptions distinct-forwarder raises to its callers.

The hierarchy is shallow on purpose: catch :class:`ForwarderError` for
everything, or one of its direct subclasses for a specific remedy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ForwarderError(Exception):
    """Base class of every error raised by distinct-forwarder."""


class InvalidEvent(ForwarderError, ValueError):
    """An event broke a schema rule; nothing was enqueued.

    ``errors`` maps each offending field (prefixed with the item index for
    ``capture_many``, e.g. ``"3.email"``) to a list of messages.
    """

    def __init__(self, errors: Mapping[str, Sequence[str]]):
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in errors.items()}
        parts = [f"{field}: {'; '.join(msgs)}" for field, msgs in sorted(self.errors.items())]
        super().__init__("invalid event: " + " | ".join(parts))


class ConfigError(ForwarderError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class EnqueueError(ForwarderError):
    """Redis did not take the event in time; the event was not accepted.

    The message never contains the Redis URL's password.
    """


class SpoolFull(EnqueueError):
    """Redis did not take the event and the local spool is at its size limit.

    The event was not accepted. Raise ``FORWARDER_SPOOL_MAX_MB``, bring Redis
    back, or run ``distinct-forwarder spool flush`` once it answers.
    """


class EntryNotFound(ForwarderError, KeyError):
    """No dead-letter entry has the given id."""

    def __str__(self) -> str:
        return f"no dead-letter entry with id {self.args[0]!r}"
