"""Schemas of the two Distinct endpoints (marshmallow 4).

``load`` returns exactly the JSON body that will be POSTed: timestamps in UTC
as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, optional fields that were ``None`` left out.
Every error names the field it is about.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

MAX_TEXT = 512
MAX_EMAIL = 254
MAX_METADATA_BYTES = 8 * 1024
#: The deepest nesting an event may have (metadata objects and lists included).
MAX_DEPTH = 32
#: The largest integer every JSON parser (JavaScript's included) keeps exactly.
MAX_SAFE_INTEGER = 2**53 - 1
PHONE_RE = re.compile(r"^\+[1-9][0-9]{1,14}\Z")

REGISTRATION_PAGE_VISIT = "REGISTRATION_PAGE_VISIT"
PHOTO_TYPES = ("PHOTO_ASSIGNED_TO_USER", "PHOTO_DOWNLOADED_BY_USER", "PHOTO_VIEWED_BY_USER")
EVENT_TYPES = (REGISTRATION_PAGE_VISIT, *PHOTO_TYPES)

#: For each capture type, the identity fields it requires; the identity
#: fields of the other shape are forbidden.
IDENTITY_FIELDS = {
    REGISTRATION_PAGE_VISIT: ("sessionId", "registrationPageValue"),
    **{t: ("email",) for t in PHOTO_TYPES},
}
ALL_IDENTITY_FIELDS = ("email", "sessionId", "registrationPageValue")


def format_timestamp(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix: the form Distinct expects."""
    u = moment.astimezone(timezone.utc)
    # Not strftime: its %Y drops leading zeros of years before 1000 on glibc.
    return (f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:"
            f"{u.second:02d}.{u.microsecond // 1000:03d}Z")


#: Control characters (C0, DEL, C1): never allowed in a text field.
#: (as regex escapes, so the same text serves Python and the OpenAPI document).
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
_BAD_CHARS = re.compile(f"[{CONTROL_CHARS}\ud800-\udfff]")
_CANONICAL_TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")
_EMAIL = validate.Email(error="Not a valid email address.")
_NOT_ISO = "Not an ISO-8601 date and time (example: 2026-11-28T10:15:00.000Z)."

# The field rules are plain functions, shared by the marshmallow fields below
# and by the fast path in forwarder/fastpath.py, so both apply the same rules.


def text_value(value: Any, max_length: int = MAX_TEXT) -> str:
    """A non-blank string of at most ``max_length`` characters, no control characters."""
    if not isinstance(value, str):
        raise ValidationError("Not a valid string.")
    if not value.strip():
        raise ValidationError("Must not be empty or blank.")
    if len(value) > max_length:
        raise ValidationError(f"Longer than {max_length} characters ({len(value)}).")
    bad = _BAD_CHARS.search(value)
    if bad:
        if 0xD800 <= ord(bad.group()) <= 0xDFFF:
            raise ValidationError("Must be valid Unicode (lone surrogate found).")
        raise ValidationError("Must not contain control characters.")
    return value


def email_value(value: Any) -> str:
    """An email address of at most 254 characters."""
    return _EMAIL(text_value(value, MAX_EMAIL))


def timestamp_value(value: Any) -> str:
    """ISO-8601 with a timezone, or an aware datetime, as UTC ``...HH:MM:SS.mmmZ``."""
    if isinstance(value, str) and _CANONICAL_TS.match(value):
        try:  # already Distinct's form: only the ranges are left to check
            datetime.fromisoformat(value[:-1])
        except ValueError:
            raise ValidationError(_NOT_ISO) from None
        return value
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) < 16 or "T" not in text.upper():
            raise ValidationError(_NOT_ISO)
        if text[-1] in "zZ":
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(_NOT_ISO) from None
    else:
        raise ValidationError("Must be an ISO-8601 string or a datetime.")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError("Has no timezone; send UTC with a Z suffix or an explicit offset.")
    try:
        return format_timestamp(moment)
    except (OverflowError, ValueError):
        raise ValidationError("Out of range once converted to UTC.") from None


def metadata_value(value: Any) -> dict:
    """A JSON object whose compact UTF-8 encoding is at most 8 KiB, nested at most
    MAX_DEPTH deep, with no integer JavaScript would round (send those as strings)."""
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object.")
    _check_json_values(value)
    try:
        # ensure_ascii=False: measure what is sent, UTF-8, not \u escapes.
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"Must hold only JSON values (no NaN, Infinity or {type(exc).__name__})."
        ) from None
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise ValidationError(f"Larger than 8 KiB once encoded ({size} bytes).")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid Unicode (lone surrogate found).") from None
    return value


def _check_json_values(value: Any) -> None:
    """Depth and integer range of a JSON value, without recursion (so without limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH - 1:  # the body is the first level, metadata the second
                raise ValidationError(f"Nested deeper than {MAX_DEPTH} levels.")
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, int) and not isinstance(item, bool) and \
                abs(item) > MAX_SAFE_INTEGER:
            raise ValidationError("Holds an integer beyond +-(2**53-1), which JavaScript "
                                  "rounds; send it as a string.")


def phone_value(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("Not a valid string.")
    if not PHONE_RE.match(value):
        raise ValidationError("Must be E.164, e.g. +14155552671.")
    return value


class Text(fields.String):
    """A non-blank string of at most ``max_length`` characters, no control characters."""

    def __init__(self, max_length: int = MAX_TEXT, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return text_value(super()._deserialize(value, attr, data, **kwargs), self.max_length)


class EmailText(Text):
    """An email address of at most 254 characters."""

    def __init__(self, **kwargs: Any):
        super().__init__(max_length=MAX_EMAIL, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return _EMAIL(super()._deserialize(value, attr, data, **kwargs))


class Timestamp(fields.Field):
    """ISO-8601 string with a timezone, or an aware datetime; loads to Distinct's form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return timestamp_value(value)


class JsonObject(fields.Field):
    """A JSON object (dict) whose compact encoding is at most 8 KiB."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        return metadata_value(value)


class _BodySchema(Schema):
    class Meta:
        unknown = RAISE

    @post_load
    def _drop_nones(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if v is not None}


class CaptureEvent(_BodySchema):
    """Body of ``POST /api/v1/analytics/capture/{experienceValue}``."""

    type = fields.String(
        required=True,
        validate=validate.OneOf(EVENT_TYPES, error="Must be one of: {choices}."),
    )
    eventValue = Text(required=True)
    recordCapturedAt = Timestamp(required=True)
    email = EmailText(allow_none=True)
    sessionId = Text(allow_none=True)
    registrationPageValue = Text(allow_none=True)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _identity_by_type(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        event_type = data.get("type")
        if event_type not in IDENTITY_FIELDS or not isinstance(original, Mapping):
            return
        needed = IDENTITY_FIELDS[event_type]
        errors: dict[str, list[str]] = {}
        for name in ALL_IDENTITY_FIELDS:
            present = original.get(name) is not None
            if name in needed and not present:
                errors[name] = [f"Missing data for required field (type {event_type})."]
            elif name not in needed and present:
                errors[name] = [
                    f"Not allowed for type {event_type}; it takes {' and '.join(needed)}."
                ]
        if errors:
            raise ValidationError(errors)


class UserAnalyticsEvent(_BodySchema):
    """Body of ``POST /api/v1/user/analytics``."""

    userId = Text(allow_none=True)
    email = EmailText(allow_none=True)
    phone = fields.String(
        allow_none=True,
        validate=validate.Regexp(PHONE_RE, error="Must be E.164, e.g. +14155552671."),
    )
    feature = Text(required=True)
    action = Text(required=True)
    experienceId = Text(required=True)
    capturedAt = Timestamp(required=True)
    metadata = JsonObject(allow_none=True)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _some_identity(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if not isinstance(original, Mapping):
            return
        if all(original.get(name) is None for name in ("userId", "email", "phone")):
            raise ValidationError(
                {"userId": ["At least one of userId, email or phone is required."]}
            )


#: Shared instances: a Schema is stateless once built, and building one per
#: call would cost more than validating.
CAPTURE_SCHEMA = CaptureEvent()
USER_ANALYTICS_SCHEMA = UserAnalyticsEvent()
