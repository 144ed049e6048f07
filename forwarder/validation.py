"""The one check of an event body, for every way an event comes in.

``capture()``, the HTTP relay, ``send``, ``dlq import`` and the worker (on
every event it takes from Redis, before it POSTs) all call
:func:`validate_event`. The marshmallow schemas (forwarder/schemas.py) state
the rules; the fast path (forwarder/fastpath.py) applies the same field
functions to the common valid case and is property-tested against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError

from forwarder.config import is_valid_slug
from forwarder.fastpath import fast_body
from forwarder.schemas import CAPTURE_SCHEMA, USER_ANALYTICS_SCHEMA

_SCHEMAS: dict[str, Schema] = {"capture": CAPTURE_SCHEMA, "user_analytics": USER_ANALYTICS_SCHEMA}
#: The rule for an experience slug, as an error message.
SLUG_RULE = "Must match [A-Za-z0-9._-]{1,128} and not be '.' or '..'."


def flatten_errors(messages: Any, prefix: str | None = None) -> dict[str, list[str]]:
    """marshmallow's nested error dict as ``{"field": [messages]}``."""
    if isinstance(messages, list):
        return {"_event" if prefix is None else prefix: [str(m) for m in messages]}
    flat: dict[str, list[str]] = {}
    for name, inner in messages.items():
        field = "_event" if name == "_schema" else str(name)
        flat.update(flatten_errors(inner, field if prefix is None else f"{prefix}.{field}"))
    return flat


def validate_event(
    kind: str, data: Any, experience: str | None = None, *, prefix: str = ""
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The body Distinct will receive, and the errors (empty when valid)."""
    errors: dict[str, list[str]] = {}
    body: dict[str, Any] = {}
    if kind not in _SCHEMAS:
        errors["kind"] = ["Must be capture or user_analytics."]
    elif not isinstance(data, Mapping):
        errors["_event"] = [f"Must be a JSON object, not {type(data).__name__}."]
    else:
        fast = fast_body(kind, data)
        if fast is not None:
            body = fast
        else:
            try:
                body = _SCHEMAS[kind].load(data)
            except ValidationError as exc:
                errors.update(flatten_errors(exc.messages))
            except RecursionError:
                errors["_event"] = ["Nested too deeply."]
    if kind == "capture":
        if experience is None:
            errors["experience"] = [
                "Required for Capture Analytics: pass experience= or set DISTINCT_EXPERIENCE."
            ]
        elif not isinstance(experience, str) or not is_valid_slug(experience):
            errors["experience"] = [SLUG_RULE]
    if prefix:
        errors = {f"{prefix}.{k}": v for k, v in errors.items()}
    return body, errors
