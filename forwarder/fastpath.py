"""The fast path of validation: plain Python for the events that are valid.

marshmallow's machinery costs more per event than the LPUSH that follows it.
Most events are valid, so ``fast_body`` applies the schema-level rules itself,
with the very field functions the marshmallow schemas use. It returns the
body only when every rule passes, and None otherwise: then the marshmallow
schema runs and produces the field errors. A property test
(tests/test_fastpath.py) checks that whenever the fast path accepts, the
schema accepts the same event and loads the same body.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from forwarder.schemas import (
    ALL_IDENTITY_FIELDS,
    EVENT_TYPES,
    IDENTITY_FIELDS,
    email_value,
    metadata_value,
    phone_value,
    text_value,
    timestamp_value,
)

CAPTURE_FIELDS = frozenset(("type", "eventValue", "recordCapturedAt", *ALL_IDENTITY_FIELDS))
USER_FIELDS = frozenset(("userId", "email", "phone", "feature", "action", "experienceId",
                         "capturedAt", "metadata"))
_USER_CHECKS = (("userId", text_value), ("email", email_value), ("phone", phone_value))


def fast_body(kind: str, data: Any) -> dict[str, Any] | None:
    """The body Distinct will receive if ``data`` is valid, else None (ask marshmallow)."""
    if type(data) is not dict:
        return None
    try:
        if kind == "capture":
            return _capture(data)
        return _user_analytics(data)
    except (ValidationError, KeyError):
        return None


def _capture(data: dict[str, Any]) -> dict[str, Any] | None:
    event_type = data.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return None
    if not CAPTURE_FIELDS.issuperset(data):
        return None
    body: dict[str, Any] = {
        "type": event_type,
        "eventValue": text_value(data["eventValue"]),
        "recordCapturedAt": timestamp_value(data["recordCapturedAt"]),
    }
    needed = IDENTITY_FIELDS[event_type]
    for name in ALL_IDENTITY_FIELDS:
        value = data.get(name)
        if name in needed:
            if value is None:
                return None
            body[name] = email_value(value) if name == "email" else text_value(value)
        elif value is not None:
            return None
    return body


def _user_analytics(data: dict[str, Any]) -> dict[str, Any] | None:
    if not USER_FIELDS.issuperset(data):
        return None
    body: dict[str, Any] = {}
    for name, check in _USER_CHECKS:
        value = data.get(name)
        if value is not None:
            body[name] = check(value)
    if not body:
        return None
    body["feature"] = text_value(data["feature"])
    body["action"] = text_value(data["action"])
    body["experienceId"] = text_value(data["experienceId"])
    body["capturedAt"] = timestamp_value(data["capturedAt"])
    metadata = data.get("metadata")
    if metadata is not None:
        body["metadata"] = metadata_value(metadata)
    return body
