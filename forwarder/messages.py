"""Events as they wait in Redis: one compact JSON object per queue item.

Producers, the spool, promotions and replays put events on the queue in this
form; a worker reads each one back with :func:`parse_event`, which trusts
nothing: strict JSON, the right structure, and the body checked again by the
same validator as ``capture()``. An event never carries the API key: only
what Distinct will receive (the body), where it goes (kind, experience) and
its delivery history (attempts, first_seen).

0.1 producers wrapped events in Celery messages; :func:`legacy_events` reads
those for the upgrade path (workers/upgrade.py, the spool's drain).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
import uuid
from typing import Any, Literal, TypedDict

from forwarder.config import is_valid_slug
from forwarder.rawjson import MAX_EVENT_BYTES

Kind = Literal["capture", "user_analytics"]
KINDS: tuple[Kind, ...] = ("capture", "user_analytics")

#: Fixed namespace for ids derived from an idempotency key, so the same key
#: gives the same event id on every host and in every release.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c7e0e-2f55-4d8e-9a43-3f3a4f8f5d21")
#: The most attempts an event can carry (25 is the default maximum).
MAX_ATTEMPTS_FIELD = 10_000
#: A first_seen this far in the future is not a clock skew but a wrong value.
MAX_CLOCK_AHEAD_SECONDS = 86400.0
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class Event(TypedDict):
    """One event on its way to Distinct."""

    id: str
    kind: Kind
    experience: str | None
    body: dict[str, Any]
    attempts: int
    first_seen: float


class MalformedEvent(ValueError):
    """A queue item that is not a deliverable event; ``str()`` names the problem."""


_VARIANT = "89ab"


def random_uuid() -> str:
    """``str(uuid.uuid4())``, in a third of the time (it runs for every event)."""
    h = os.urandom(16).hex()
    # Version 4 in the 13th digit; the RFC 4122 variant (8, 9, a or b) in the 17th.
    return (f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-"
            f"{h[20:]}")


def event_id_for(idempotency_key: str | None) -> str:
    """A new random id, or the id derived from ``idempotency_key``."""
    if idempotency_key is None:
        return random_uuid()
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key))


def is_event_id(value: Any) -> bool:
    """Whether ``value`` is an event id: a canonical lower-case UUID string."""
    return isinstance(value, str) and bool(_UUID.match(value))


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_event(event: Event) -> str:
    """The queue item for ``event``: compact JSON, integers and floats exact."""
    return _ENCODE(event)


def encode_new_events(kind: Kind, experience: str | None, ids: list[str],
                      bodies: list[dict[str, Any]], first_seen: float) -> list[str]:
    """Queue items for new events (attempts 0), byte for byte what :func:`encode_event`
    writes, in a template: this runs inside every ``capture()``, and only the id
    and the body differ from one event to the next (tests/test_producer.py
    checks the two agree)."""
    head = '{"id":"'
    tail = (f'","kind":"{kind}","experience":{_ENCODE(experience)},"body":')
    end = f',"attempts":0,"first_seen":{_ENCODE(float(first_seen))}}}'
    return [f"{head}{event_id}{tail}{_ENCODE(body)}{end}"
            for event_id, body in zip(ids, bodies, strict=True)]


def describe(labels: list[str], count: int) -> str:
    """What Flower shows for a batch of ``count`` events: a few ``id:TYPE`` labels."""
    shown = ", ".join(labels[:3])
    more = f" +{count - 3} more" if count > 3 else ""
    return f"[{shown}{more}]"


def parse_event(raw: str | bytes) -> Event:
    """The event in a queue item, checked like a new capture, or MalformedEvent.

    The body is validated by the same rules as ``capture()`` (which bound its
    nesting and its integers) and comes back in the form Distinct receives;
    unknown top-level fields are ignored (they are never sent), anything else
    out of shape is refused with the reason. Items come from this package's
    own producers, so the parse is json's C one, not rawjson's strict one:
    it runs for every event a worker delivers.
    """
    from forwarder.validation import validate_event

    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"larger than {MAX_EVENT_BYTES} bytes ({len(raw)})")
    try:
        item = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedEvent("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise MalformedEvent(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(item, dict):
        raise MalformedEvent(f"a {type(item).__name__}, not an event object")
    if not is_event_id(item.get("id")):
        raise MalformedEvent("id: must be an event id (a UUID)")
    kind = item.get("kind")
    if kind not in KINDS:
        raise MalformedEvent(f"kind: must be capture or user_analytics, not {kind!r:.40}")
    experience = item.get("experience")
    if kind == "capture":
        if not isinstance(experience, str) or not is_valid_slug(experience):
            raise MalformedEvent("experience: must match [A-Za-z0-9._-]{1,128}")
    elif experience is not None:
        raise MalformedEvent("experience: must be null for user_analytics")
    attempts = item.get("attempts")
    if type(attempts) is not int or not 0 <= attempts <= MAX_ATTEMPTS_FIELD:
        raise MalformedEvent(f"attempts: must be a whole number from 0 to "
                             f"{MAX_ATTEMPTS_FIELD}")
    first_seen = item.get("first_seen")
    if (not isinstance(first_seen, (int, float)) or isinstance(first_seen, bool)
            or not math.isfinite(first_seen)
            or not 0 <= first_seen <= time.time() + MAX_CLOCK_AHEAD_SECONDS):
        raise MalformedEvent("first_seen: must be a time (epoch seconds), not in the future")
    body, errors = validate_event(kind, item.get("body"), experience)
    if errors:
        field, messages = sorted(errors.items())[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MalformedEvent(f"body.{field}: {messages[0]}{more}")
    return {"id": item["id"], "kind": kind, "experience": experience, "body": body,
            "attempts": attempts, "first_seen": float(first_seen)}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- 0.1's Celery messages (the upgrade path) -----------------------------------
def is_legacy_message(raw: str | bytes) -> bool:
    """Whether a queue item is a 0.1 Celery message rather than an event."""
    head = raw[:16] if isinstance(raw, bytes) else raw[:16].encode()
    return head.startswith(b'{"headers"') or head.startswith(b'{"body"')


def legacy_events(raw: str | bytes) -> list[Any]:
    """The events a 0.1 Celery message carried (``distinct.deliver(events)``).

    Raises ValueError (or KeyError, TypeError) for anything else; each event
    is checked later, like any other, by :func:`parse_event`.
    """
    message = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    events = args[0]
    return list(events) if isinstance(events, list) else [events]


def upgrade_item(raw: str | bytes) -> list[str | bytes]:
    """Queue items for what a 0.1 queue item carried (the item itself if it is an event).

    Whatever cannot be read stays as it was: the worker dead-letters it as
    malformed, naming the problem, rather than losing it here.
    """
    if not is_legacy_message(raw):
        return [raw]
    try:
        events = legacy_events(raw)
    except (ValueError, KeyError, TypeError, IndexError):
        return [raw]
    return [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
