"""Events as they travel through Redis, and the Celery message that carries them.

Producers build the Celery (protocol 2) message themselves and LPUSH it onto
the queue list that kombu's Redis transport consumes: one round trip and no
Celery import on the web request's path. The worker sees an ordinary
``distinct.deliver`` task whose single argument is a list of events.

An event never carries the API key: only what Distinct will receive (the
body), where it goes (kind, experience) and its delivery history.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any, Literal, TypedDict

from forwarder.constants import QUEUE, TASK_NAME

Kind = Literal["capture", "user_analytics"]
KINDS: tuple[Kind, ...] = ("capture", "user_analytics")

#: Fixed namespace for ids derived from an idempotency key, so the same key
#: gives the same event id on every host and in every release.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c7e0e-2f55-4d8e-9a43-3f3a4f8f5d21")


class Event(TypedDict):
    """One event on its way to Distinct."""

    id: str
    kind: Kind
    experience: str | None
    body: dict[str, Any]
    attempts: int
    first_seen: float


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


def describe(events: list[Event]) -> str:
    """What Flower and logs show for a message: ids and types, never an email."""
    labels = [f"{e['id']}:{e['body'].get('type') or e['kind']}" for e in events[:3]]
    more = f" +{len(events) - 3} more" if len(events) > 3 else ""
    return f"[{', '.join(labels)}{more}]"


_ORIGIN_JSON = json.dumps(f"{os.getpid()}@{socket.gethostname()}")
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def build_message(events: list[Event], *, redelivered: bool = False) -> str:
    """The JSON kombu stores in the queue list for one ``distinct.deliver`` task.

    Written as a template rather than one json.dumps of a nested dict: this
    runs inside every capture(), and only the ids, the body and argsrepr vary.
    tests/test_producer.py checks the result against kombu's own format.
    """
    task_id = random_uuid()
    body = _dumps([[events], {}, _EMBED])
    return "".join((
        '{"headers":{"lang":"py","task":"', TASK_NAME, '","id":"', task_id,
        # How many events it carries, for a worker taking a batch in Lua
        # (forwarder/fetching.py); Celery ignores a header it does not know.
        '","x_forwarder_events":', str(len(events)),
        ',"shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,'
        '"retries":0,"timelimit":[null,null],"root_id":"', task_id,
        '","parent_id":null,"argsrepr":', _dumps(describe(events)),
        ',"kwargsrepr":"{}","origin":', _ORIGIN_JSON,
        ',"ignore_result":true,"redelivered":', "true" if redelivered else "false",
        '},"properties":{"correlation_id":"', task_id,
        # The default exchange routes by queue name; kombu's restore of an
        # unacknowledged message relies on this pair.
        '","reply_to":"","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":"',
        QUEUE, '"},"priority":0,"body_encoding":"base64","delivery_tag":"',
        os.urandom(16).hex(), '"},"body":"', base64.b64encode(body.encode("utf-8")).decode("ascii"),
        '","content-encoding":"utf-8","content-type":"application/json"}',
    ))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def events_in_message(raw: str | bytes) -> list[Event]:
    """The events carried by a message built by :func:`build_message`."""
    message = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    return list(args[0])
