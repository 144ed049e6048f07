"""Strict parsing of raw JSON bytes into an event, before any schema sees it.

Python's ``json.loads`` is lenient where an analytics pipeline must not be:
it accepts ``NaN`` and ``Infinity`` (not JSON; Distinct's parser rejects
them), keeps the last of duplicate keys silently (which of two emails was
meant?), parses integers of any size (JavaScript rounds past 2**53), and
meets deep nesting with a RecursionError. :func:`loads_strict` turns each of
these into an error naming the rule and the key, so the relay, ``send
--json/--file`` and ``dlq import`` (every entry point that reads raw JSON)
reject the input instead of enqueueing a guess; :func:`loads_event` gives
the same as an :class:`~forwarder.errors.InvalidEvent`.
"""

from __future__ import annotations

import json
from typing import Any

from forwarder.errors import InvalidEvent
from forwarder.schemas import MAX_DEPTH, MAX_SAFE_INTEGER

#: Distinct bodies are well under 10 KiB; metadata alone is capped at 8 KiB.
MAX_EVENT_BYTES = 64 * 1024

_WHOLE = "_event"


class StrictJSONError(ValueError):
    """Raw JSON that breaks a rule; ``field`` names the key concerned, or ``_event``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


_Problem = StrictJSONError


def _constant(name: str) -> Any:
    raise _Problem(_WHOLE, f"{name} is not JSON; send a number or null.")


def _integer(text: str) -> int:
    # Checked on the digits first: int() of 5,000 digits is itself refused.
    digits = text.lstrip("-")
    if len(digits) > 16 or abs(int(text)) > MAX_SAFE_INTEGER:
        raise _Problem(_WHOLE, f"Integer {text[:20]}{'...' if len(text) > 20 else ''} is "
                               "outside +-(2**53-1); send it as a string.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Problem(_WHOLE, f"Number {text[:20]} overflows a double; send it as a string.")
    return value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Problem(key, f"Duplicate key {key[:40]!r} in a JSON object; send each "
                                "field once.")
        seen[key] = value
    return seen


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def loads_strict(raw: bytes | bytearray | str, *, max_bytes: int = MAX_EVENT_BYTES,
                 max_depth: int = MAX_DEPTH) -> Any:
    """One JSON value from ``raw``, or StrictJSONError naming the rule (and the key)."""
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise _Problem(_WHOLE, f"Larger than {max_bytes} bytes ({size}).")
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Problem(_WHOLE, f"Not valid UTF-8 (byte 0x{bytes(raw)[exc.start]:02x} at "
                                   f"offset {exc.start}).") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant,
                           parse_int=_integer, parse_float=_float,
                           strict=True)
    except RecursionError:
        raise _Problem(_WHOLE, f"Nested deeper than {max_depth} levels.") from None
    except _Problem:
        raise
    except ValueError as exc:
        # JSONDecodeError: its message names line and column, and says
        # "Invalid control character" for a raw control character in a string.
        raise _Problem(_WHOLE, f"Not valid JSON: {exc}.") from None
    if _too_deep(value, max_depth):
        raise _Problem(_WHOLE, f"Nested deeper than {max_depth} levels.")
    return value


def loads_event(raw: bytes | bytearray | str, *, max_bytes: int = MAX_EVENT_BYTES,
                max_depth: int = MAX_DEPTH) -> Any:
    """One JSON value from ``raw``, or InvalidEvent naming the field and the rule."""
    try:
        return loads_strict(raw, max_bytes=max_bytes, max_depth=max_depth)
    except StrictJSONError as exc:
        raise InvalidEvent({exc.field: [str(exc)]}) from None
