"""Bad input: property tests over the schemas, and hostile raw JSON.

The oracle below restates ../shared/distinct-api.md independently of
forwarder/schemas.py, so an accepted event is checked against the reference,
not against the code under test.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forwarder import Forwarder, InvalidEvent
from forwarder.producer import validate_event
from forwarder.rawjson import MAX_DEPTH, MAX_EVENT_BYTES, loads_event
from tests.conftest import capture_event, user_event

CAPTURE_FIELDS = {"type", "eventValue", "recordCapturedAt", "email", "sessionId",
                  "registrationPageValue"}
USER_FIELDS = {"userId", "email", "phone", "feature", "action", "experienceId", "capturedAt",
               "metadata"}
TYPES = {"REGISTRATION_PAGE_VISIT", "PHOTO_ASSIGNED_TO_USER", "PHOTO_DOWNLOADED_BY_USER",
         "PHOTO_VIEWED_BY_USER"}
CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _text_ok(value: Any, limit: int = 512) -> bool:
    return (isinstance(value, str) and bool(value.strip()) and len(value) <= limit
            and not CONTROL.search(value))


def reference_accepts_capture(data: dict[str, Any], body: dict[str, Any]) -> None:
    """Fails if the accepted capture breaks a rule of the reference."""
    assert set(data) <= CAPTURE_FIELDS and set(body) <= CAPTURE_FIELDS
    assert body["type"] in TYPES
    assert _text_ok(body["eventValue"])
    assert CANONICAL.match(body["recordCapturedAt"])
    if body["type"] == "REGISTRATION_PAGE_VISIT":
        assert _text_ok(body["sessionId"]) and _text_ok(body["registrationPageValue"])
        assert "email" not in body
    else:
        assert _text_ok(body["email"], 254) and "@" in body["email"]
        assert "sessionId" not in body and "registrationPageValue" not in body


def reference_accepts_user(data: dict[str, Any], body: dict[str, Any]) -> None:
    assert set(data) <= USER_FIELDS and set(body) <= USER_FIELDS
    assert any(body.get(k) is not None for k in ("userId", "email", "phone"))
    for name in ("feature", "action", "experienceId"):
        assert _text_ok(body[name])
    assert CANONICAL.match(body["capturedAt"])
    if "phone" in body:
        assert re.fullmatch(r"\+[1-9]\d{1,14}", body["phone"])
    if "metadata" in body:
        assert isinstance(body["metadata"], dict)
        encoded = json.dumps(body["metadata"], allow_nan=False, separators=(",", ":"),
                             ensure_ascii=False).encode()
        assert len(encoded) <= 8 * 1024


scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=20) | st.sampled_from(sorted(TYPES))
           | st.sampled_from(["2026-11-28T10:15:00Z", "2026-11-28T10:15:00", "a@b.co",
                              "+14155552671", " ", "x" * 600]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
field_names = st.sampled_from(sorted(CAPTURE_FIELDS | USER_FIELDS)) | st.text(max_size=10)
event_like = st.dictionaries(field_names, json_values, max_size=9)


@FAST
@given(data=event_like | json_values, kind=st.sampled_from(["capture", "user_analytics"]))
def test_schemas_never_crash_never_accept_the_forbidden_and_name_fields(data, kind):
    body, errors = validate_event(kind, data, "fifa-cwc-2025")
    allowed = (CAPTURE_FIELDS if kind == "capture" else USER_FIELDS) | {"_event"}
    if errors:
        for field, messages in errors.items():
            assert field in allowed or (isinstance(data, dict) and field in data), field
            assert messages and all(isinstance(m, str) and m for m in messages)
        return
    assert isinstance(data, dict)
    (reference_accepts_capture if kind == "capture" else reference_accepts_user)(data, body)


BAD_VALUES: dict[str, list[Any]] = {
    "type": [None, "", "photo_viewed_by_user", 3, ["PHOTO_VIEWED_BY_USER"]],
    "eventValue": [None, "", "   ", "x" * 513, "a\x00b", "a\r\nX-Evil: 1", 42, {"a": 1}],
    "recordCapturedAt": [None, "", "2026-11-28T10:15:00", "2026-13-28T10:15:00Z", "yesterday",
                         1764324900, "2026-11-28T10:15:00+25:00"],
    "email": [None, "", "nope", "a@b@c", "x" * 250 + "@example.com", "a\n@example.com", 5],
    "capturedAt": [None, "2026-04-27 13:35", "2026-04-27T13:35:00", float("nan")],
    "phone": ["4155552671", "+0123", "+1 415 555 2671", 14155552671],
    "feature": [None, "", "f\x07", "f" * 513],
    "metadata": [[], "x", {"n": float("nan")}, {"n": float("inf")}, {"big": "x" * 9000}],
}


@st.composite
def near_valid(draw: Any) -> tuple[str, dict[str, Any], str]:
    """A valid event with one thing wrong, and the field the error must name."""
    kind = draw(st.sampled_from(["capture", "user_analytics"]))
    i = draw(st.integers(0, 1000))
    if kind == "capture":
        base = capture_event(i, draw(st.sampled_from(sorted(TYPES))))
    else:
        base = user_event(i)
    fields = [f for f in BAD_VALUES if f in base or (kind == "user_analytics" and f == "phone")]
    how = draw(st.sampled_from(["bad", "drop", "unknown", "swap"]))
    if how == "bad":
        field = draw(st.sampled_from(fields))
        base[field] = draw(st.sampled_from(BAD_VALUES[field]))
        if base[field] is None and field in {"email", "phone"} and kind == "user_analytics":
            base["userId"] = None  # None is "absent" here: make identity missing instead
            base["email"] = base["phone"] = None
            field = "userId"
    elif how == "drop":
        required = ([f for f in ("type", "eventValue", "recordCapturedAt") if f in base]
                    if kind == "capture" else ["feature", "action", "experienceId",
                                               "capturedAt"])
        field = draw(st.sampled_from(required))
        del base[field]
    elif how == "unknown":
        field = draw(st.sampled_from(["Email", "extra", "eventvalue", "__proto__"]))
        base[field] = "x"
    else:
        if kind != "capture":
            return kind, {**base, "type": "X"}, "type"
        if base["type"] == "REGISTRATION_PAGE_VISIT":
            base["email"], field = "a@b.co", "email"
        else:
            base["sessionId"], field = "s-1", "sessionId"
    return kind, base, field


@FAST
@given(case=near_valid())
def test_near_valid_events_are_rejected_naming_the_field(case):
    kind, data, field = case
    _, errors = validate_event(kind, data, "fifa-cwc-2025")
    assert field in errors, (data, errors)


@FAST
@given(slug=st.text(max_size=40) | st.sampled_from(["..", ".", "a/b", "%2e%2e", "a?b", "a#b",
                                                      "a\nb", "x" * 129, "ok-slug_1.2"]))
def test_experience_slug_cannot_change_the_url_path(slug):
    from workers.delivery import event_url

    body, errors = validate_event("capture", capture_event(1), slug)
    if "experience" in errors:
        return
    url = event_url("https://api.distinct.so", {"kind": "capture", "experience": slug,
                                                "id": "x", "body": body, "attempts": 0,
                                                "first_seen": 0.0})
    parts = urlsplit(url)
    assert parts.netloc == "api.distinct.so" and not parts.query and not parts.fragment
    assert parts.path == "/api/v1/analytics/capture/" + slug
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", slug) and slug not in {".", ".."}


@FAST
@given(raw=st.binary(max_size=200))
@example(raw=b'{"a": 1, "a": 2}')
@example(raw=b"\xff\xfe{}")
def test_raw_bytes_give_a_value_or_invalid_event_never_another_error(raw):
    try:
        loads_event(raw)
    except InvalidEvent as exc:
        assert exc.errors and all(exc.errors.values())


finite_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=10)


@FAST
@given(value=finite_json)
def test_valid_json_round_trips_through_the_strict_parser(value):
    assert loads_event(json.dumps(value).encode()) == value


HOSTILE: list[tuple[str, bytes, str]] = [
    ("oversized", b'{"type": "' + b"x" * MAX_EVENT_BYTES + b'"}', "_event"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "_event"),
    ("nesting past the limit", b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "_event"),
    ("NaN", b'{"type": NaN}', "_event"),
    ("Infinity", b'{"metadata": {"x": -Infinity}}', "_event"),
    ("overflowing float", b'{"metadata": {"x": 1e400}}', "_event"),
    ("huge integer", b'{"metadata": {"x": 9007199254740993}}', "_event"),
    ("5000-digit integer", b'{"x": ' + b"9" * 5000 + b"}", "_event"),
    ("duplicate key", b'{"email": "a@b.co", "email": "c@d.co"}', "email"),
    ("raw control character", b'{"eventValue": "a\x01b"}', "_event"),
    ("non-UTF-8", b'{"eventValue": "caf\xe9"}', "_event"),
    ("lone surrogate escape", None, "eventValue"),  # parsed fine, refused by the schema
]


@pytest.mark.parametrize("name,raw,field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_raw_json_is_refused_with_the_field_and_nothing_enqueued(settings, name, raw,
                                                                         field):
    fwd = Forwarder(settings=settings)
    if raw is None:
        data = loads_event(b'{"type": "PHOTO_VIEWED_BY_USER", "eventValue": "\\ud800x", '
                           b'"recordCapturedAt": "2026-11-28T10:15:00Z", "email": "a@b.co"}')
        with pytest.raises(InvalidEvent) as info:
            fwd.capture(data)
    else:
        with pytest.raises(InvalidEvent) as info:
            fwd.capture(loads_event(raw))
    assert field in info.value.errors, info.value.errors
    assert str(info.value).startswith("invalid event: ")
    assert fwd.store.queue_depth() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400, "x" * 100_000,
                                   "a\x00", b"caf\xe9", "\ud800"])
def test_hostile_python_values_are_refused_in_every_text_field(settings, value):
    fwd = Forwarder(settings=settings)
    for field in ("eventValue", "email", "recordCapturedAt"):
        event = capture_event(1)
        event[field] = value
        with pytest.raises(InvalidEvent) as info:
            fwd.capture(event)
        assert field in info.value.errors
    event = user_event(1)
    event["metadata"] = {"v": value} if isinstance(value, float) else event["metadata"]
    if isinstance(value, float):
        assert not math.isfinite(value)
        with pytest.raises(InvalidEvent) as info:
            fwd.user_analytics(event)
        assert "metadata" in info.value.errors
    assert fwd.store.queue_depth() == 0
