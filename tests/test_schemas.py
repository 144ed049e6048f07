"""Schema rules of both Distinct endpoints, and ``validate_event``.

The rules come from the API reference (docs/distinct-api.md in the shared
notes): Capture Analytics identity fields by type, User Analytics identity
"at least one of", timestamps normalised to UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ``,
and the forwarder's own limits (512 characters, 254 for an email, 8 KiB of
metadata, no control characters, unknown fields refused).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone, tzinfo
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from forwarder.errors import InvalidEvent
from forwarder.producer import validate_event
from forwarder.schemas import CaptureEvent, UserAnalyticsEvent

EXPERIENCE = "fifa-cwc-2025"
OUT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

PHOTO_TYPES = ["PHOTO_ASSIGNED_TO_USER", "PHOTO_DOWNLOADED_BY_USER", "PHOTO_VIEWED_BY_USER"]
ALL_TYPES = ["REGISTRATION_PAGE_VISIT", *PHOTO_TYPES]

CAPTURE_FIELDS = {
    "type", "eventValue", "recordCapturedAt", "email", "sessionId", "registrationPageValue",
}
USER_FIELDS = {
    "userId", "email", "phone", "feature", "action", "experienceId", "capturedAt", "metadata",
}
KNOWN_KEYS = CAPTURE_FIELDS | USER_FIELDS | {"_event", "experience"}

# A 254-character address that is otherwise valid: local part 64, labels <= 63.
EMAIL_254 = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
assert len(EMAIL_254) == 254
EMAIL_255 = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"
assert len(EMAIL_255) == 255


def registration(**changes: Any) -> dict[str, Any]:
    event = {
        "type": "REGISTRATION_PAGE_VISIT",
        "eventValue": "evt-42",
        "recordCapturedAt": "2026-11-28T10:15:00.000Z",
        "sessionId": "s-9f2c",
        "registrationPageValue": "reg-7",
    }
    event.update(changes)
    return event


def photo(event_type: str = "PHOTO_VIEWED_BY_USER", **changes: Any) -> dict[str, Any]:
    event = {
        "type": event_type,
        "eventValue": "evt-42",
        "recordCapturedAt": "2026-11-28T10:15:00.000Z",
        "email": "john.doe@example.com",
    }
    event.update(changes)
    return event


def user(**changes: Any) -> dict[str, Any]:
    event = {
        "userId": "u-1",
        "feature": "user_collectible",
        "action": "opened",
        "experienceId": "47Gop5",
        "capturedAt": "2026-04-27T13:35:00Z",
    }
    event.update(changes)
    return event


def without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


def cap(data: Any, experience: Any = EXPERIENCE) -> tuple[dict[str, Any], dict[str, list[str]]]:
    return validate_event("capture", data, experience)


def ua(data: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    return validate_event("user_analytics", data)


def assert_only_error(errors: dict[str, list[str]], field: str) -> None:
    """Exactly one offending field, ``field``, with at least one non-empty message."""
    assert set(errors) == {field}, errors
    assert errors[field], errors
    assert all(isinstance(m, str) and m for m in errors[field]), errors


# --- Capture Analytics: valid shapes ----------------------------------------------


def test_registration_page_visit_valid_body_is_exactly_what_distinct_receives():
    body, errors = cap(registration())
    assert errors == {}
    assert body == registration()


@pytest.mark.parametrize("event_type", PHOTO_TYPES)
def test_photo_types_valid_with_email(event_type):
    body, errors = cap(photo(event_type))
    assert errors == {}
    assert body == photo(event_type)


def test_api_reference_examples_are_valid():
    examples = [
        {"type": "REGISTRATION_PAGE_VISIT", "eventValue": "evt-42",
         "recordCapturedAt": "2026-11-28T10:15:00.000Z",
         "sessionId": "s-9f2c", "registrationPageValue": "reg-7"},
        {"type": "PHOTO_VIEWED_BY_USER", "eventValue": "evt-42",
         "recordCapturedAt": "2026-11-28T10:15:00.000Z", "email": "john.doe@example.com"},
    ]
    for example in examples:
        body, errors = cap(example)
        assert errors == {}
        assert body == example


def test_schema_class_load_directly():
    assert CaptureEvent().load(photo()) == photo()
    with pytest.raises(ValidationError) as info:
        CaptureEvent().load(without(photo(), "email"))
    assert set(info.value.messages) == {"email"}


# --- Capture Analytics: type --------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["PHOTO_SHARED_BY_USER", "photo_viewed_by_user", "", " PHOTO_VIEWED_BY_USER", 1, None]
)
def test_type_must_be_one_of_the_four(bad):
    _, errors = cap(photo(type=bad))
    assert "type" in errors
    assert set(errors) <= {"type"}


def test_type_is_required():
    _, errors = cap(without(photo(), "type"))
    assert_only_error(errors, "type")


# --- Capture Analytics: identity by type --------------------------------------------


@pytest.mark.parametrize("missing", ["sessionId", "registrationPageValue"])
def test_registration_requires_session_and_page(missing):
    _, errors = cap(without(registration(), missing))
    assert_only_error(errors, missing)


def test_registration_missing_both_names_both():
    _, errors = cap(without(registration(), "sessionId", "registrationPageValue"))
    assert set(errors) == {"sessionId", "registrationPageValue"}


def test_registration_forbids_email():
    _, errors = cap(registration(email="john.doe@example.com"))
    assert_only_error(errors, "email")


def test_registration_with_email_none_is_treated_as_absent():
    body, errors = cap(registration(email=None))
    assert errors == {}
    assert "email" not in body
    assert body == registration()


@pytest.mark.parametrize("missing", ["sessionId", "registrationPageValue"])
def test_registration_required_field_given_as_none_is_missing(missing):
    _, errors = cap(registration(**{missing: None}))
    assert_only_error(errors, missing)


@pytest.mark.parametrize("event_type", PHOTO_TYPES)
def test_photo_types_require_email(event_type):
    _, errors = cap(without(photo(event_type), "email"))
    assert_only_error(errors, "email")
    _, errors = cap(photo(event_type, email=None))
    assert_only_error(errors, "email")


@pytest.mark.parametrize("event_type", PHOTO_TYPES)
@pytest.mark.parametrize("forbidden", ["sessionId", "registrationPageValue"])
def test_photo_types_forbid_registration_identity(event_type, forbidden):
    _, errors = cap(photo(event_type, **{forbidden: "x-1"}))
    assert_only_error(errors, forbidden)


@pytest.mark.parametrize("event_type", PHOTO_TYPES)
def test_photo_types_with_registration_fields_none_are_absent(event_type):
    body, errors = cap(photo(event_type, sessionId=None, registrationPageValue=None))
    assert errors == {}
    assert body == photo(event_type)


def test_photo_with_registration_shape_names_every_offender():
    event = without(photo(), "email")
    event.update(sessionId="s-1", registrationPageValue="reg-7")
    _, errors = cap(event)
    assert set(errors) == {"email", "sessionId", "registrationPageValue"}


@pytest.mark.parametrize("required", ["eventValue", "recordCapturedAt"])
@pytest.mark.parametrize("make", [registration, photo])
def test_capture_always_required_fields(make, required):
    _, errors = cap(without(make(), required))
    assert_only_error(errors, required)
    _, errors = cap(make(**{required: None}))
    assert_only_error(errors, required)


# --- unknown fields -----------------------------------------------------------------


@pytest.mark.parametrize("unknown", ["foo", "Email", "event_value", "userId", "_schema2", "a.b"])
def test_capture_unknown_field_is_named(unknown):
    _, errors = cap(photo(**{unknown: "x"}))
    assert_only_error(errors, unknown)


@pytest.mark.parametrize("unknown", ["foo", "Phone", "type", "recordCapturedAt", "eventValue"])
def test_user_analytics_unknown_field_is_named(unknown):
    _, errors = ua(user(**{unknown: "x"}))
    assert_only_error(errors, unknown)


def test_unknown_empty_field_name_is_named():
    _, errors = cap(photo(**{"": "x"}))
    assert_only_error(errors, "")


def test_unknown_field_with_none_value_is_still_an_error():
    _, errors = cap(photo(extra=None))
    assert_only_error(errors, "extra")


# --- text fields --------------------------------------------------------------------

CAPTURE_TEXT = [
    (registration, "eventValue"),
    (registration, "sessionId"),
    (registration, "registrationPageValue"),
    (photo, "eventValue"),
]
USER_TEXT = ["userId", "feature", "action", "experienceId"]

BAD_TEXT = [
    "",
    " ",
    "   \t ",
    "\n",
    "\u3000",  # ideographic space: blank
    "x" * 513,
    "evt\x00",
    "evt\x01x",
    "a\tb",
    "a\nb",
    "a\rb",
    "a\x1bb",
    "a\x7fb",  # DEL
    "a\x85b",  # C1 next line
    "a\x9fb",
    123,
    12.5,
    True,
    ["evt"],
    {"v": "evt"},
]
GOOD_TEXT = ["e", "x" * 512, "café ☕ 日本", "  padded  ", "a-b_c.d/e"]


@pytest.mark.parametrize("bad", BAD_TEXT, ids=repr)
@pytest.mark.parametrize(("make", "field"), CAPTURE_TEXT)
def test_capture_text_fields_reject_bad_strings(make, field, bad):
    _, errors = cap(make(**{field: bad}))
    assert_only_error(errors, field)


@pytest.mark.parametrize("good", GOOD_TEXT, ids=repr)
@pytest.mark.parametrize(("make", "field"), CAPTURE_TEXT)
def test_capture_text_fields_accept_good_strings(make, field, good):
    body, errors = cap(make(**{field: good}))
    assert errors == {}
    assert body[field] == good


@pytest.mark.parametrize("bad", BAD_TEXT, ids=repr)
@pytest.mark.parametrize("field", USER_TEXT)
def test_user_text_fields_reject_bad_strings(field, bad):
    # Give another identity so that a bad userId is the only problem.
    _, errors = ua(user(email="fan@example.com", **{field: bad}))
    assert_only_error(errors, field)


@pytest.mark.parametrize("good", GOOD_TEXT, ids=repr)
@pytest.mark.parametrize("field", USER_TEXT)
def test_user_text_fields_accept_good_strings(field, good):
    body, errors = ua(user(**{field: good}))
    assert errors == {}
    assert body[field] == good


def test_text_length_boundary_is_512_characters_not_bytes():
    body, errors = cap(photo(eventValue="é" * 512))
    assert errors == {}
    assert body["eventValue"] == "é" * 512
    _, errors = cap(photo(eventValue="é" * 513))
    assert_only_error(errors, "eventValue")


# --- email --------------------------------------------------------------------------

GOOD_EMAILS = ["john.doe@example.com", "a+tag@sub.example.co.uk", EMAIL_254]
BAD_EMAILS = [
    "john", "john@", "@example.com", "john doe@example.com", "john@@example.com",
    "", "  ", EMAIL_255, "john.doe@example.com\n", "john\x00@example.com", 42,
]


@pytest.mark.parametrize("good", GOOD_EMAILS)
def test_capture_email_valid(good):
    body, errors = cap(photo(email=good))
    assert errors == {}
    assert body["email"] == good


@pytest.mark.parametrize("bad", BAD_EMAILS, ids=repr)
def test_capture_email_invalid(bad):
    _, errors = cap(photo(email=bad))
    assert_only_error(errors, "email")


@pytest.mark.parametrize("good", GOOD_EMAILS)
def test_user_email_valid(good):
    body, errors = ua(user(email=good))
    assert errors == {}
    assert body["email"] == good


@pytest.mark.parametrize("bad", BAD_EMAILS, ids=repr)
def test_user_email_invalid(bad):
    _, errors = ua(user(email=bad))
    assert_only_error(errors, "email")


# --- timestamps ---------------------------------------------------------------------

GOOD_TIMESTAMPS = [
    ("2026-11-28T10:15:00.000Z", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T10:15:00Z", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T10:15:00z", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T10:15:00+00:00", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T11:15:00+01:00", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T05:15:00-05:00", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T15:45:00+05:30", "2026-11-28T10:15:00.000Z"),
    ("2026-11-28T00:30:00+01:00", "2026-11-27T23:30:00.000Z"),
    ("2026-12-31T23:30:00-01:00", "2027-01-01T00:30:00.000Z"),
    ("2026-11-28T10:15:00.123456+00:00", "2026-11-28T10:15:00.123Z"),
    ("2026-11-28T10:15:00.5Z", "2026-11-28T10:15:00.500Z"),
    ("2026-11-28T10:15:00.999999Z", "2026-11-28T10:15:00.999Z"),
    ("2026-04-27T13:35:00Z", "2026-04-27T13:35:00.000Z"),
    (datetime(2026, 11, 28, 10, 15, tzinfo=timezone.utc), "2026-11-28T10:15:00.000Z"),
    (datetime(2026, 11, 28, 12, 15, 7, 250_000, tzinfo=timezone(timedelta(hours=2))),
     "2026-11-28T10:15:07.250Z"),
    (datetime(2026, 11, 27, 22, 0, tzinfo=timezone(timedelta(hours=-12, minutes=-15))),
     "2026-11-28T10:15:00.000Z"),
]
BAD_TIMESTAMPS = [
    "2026-11-28T10:15:00",  # naive
    "2026-11-28T10:15:00.000",  # naive
    datetime(2026, 11, 28, 10, 15),  # naive datetime
    "2026-11-28",
    "10:15:00Z",
    "yesterday",
    "",
    "   ",
    "2026-13-28T10:15:00Z",
    "2026-11-31T10:15:00Z",
    "2026-11-28T25:15:00Z",
    "2026-11-28T10:15:00+25:00",
    "not-a-dateTnot-a-time",
    1764324900,
    1764324900.0,
    True,
    ["2026-11-28T10:15:00Z"],
    {"at": "2026-11-28T10:15:00Z"},
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:30:00-01:00",  # after year 9999 once in UTC
]


@pytest.mark.parametrize(("given_value", "expected"), GOOD_TIMESTAMPS, ids=repr)
def test_capture_timestamp_normalised_to_utc_millis(given_value, expected):
    body, errors = cap(photo(recordCapturedAt=given_value))
    assert errors == {}
    assert body["recordCapturedAt"] == expected
    assert OUT_RE.match(body["recordCapturedAt"])


@pytest.mark.parametrize(("given_value", "expected"), GOOD_TIMESTAMPS, ids=repr)
def test_user_timestamp_normalised_to_utc_millis(given_value, expected):
    body, errors = ua(user(capturedAt=given_value))
    assert errors == {}
    assert body["capturedAt"] == expected


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS, ids=repr)
def test_capture_bad_timestamp_names_field(bad):
    _, errors = cap(photo(recordCapturedAt=bad))
    assert_only_error(errors, "recordCapturedAt")


@pytest.mark.parametrize("bad", BAD_TIMESTAMPS, ids=repr)
def test_user_bad_timestamp_names_field(bad):
    _, errors = ua(user(capturedAt=bad))
    assert_only_error(errors, "capturedAt")


def test_naive_timestamp_message_mentions_timezone():
    _, errors = cap(photo(recordCapturedAt="2026-11-28T10:15:00"))
    assert any("timezone" in m.lower() for m in errors["recordCapturedAt"])


def test_aware_datetime_without_offset_is_rejected():
    class NoOffset(tzinfo):  # utcoffset() is None
        def utcoffset(self, dt):
            return None

        def tzname(self, dt):
            return None

        def dst(self, dt):
            return None

    moment = datetime(2026, 11, 28, 10, 15, tzinfo=NoOffset())
    _, errors = cap(photo(recordCapturedAt=moment))
    assert_only_error(errors, "recordCapturedAt")


def test_year_before_1000_keeps_four_digit_year():
    body, errors = cap(photo(recordCapturedAt="0999-01-01T00:00:00Z"))
    assert errors == {}
    assert body["recordCapturedAt"] == "0999-01-01T00:00:00.000Z"


# --- User Analytics: identity -------------------------------------------------------

IDENTITIES = {"userId": "u-1", "email": "fan@example.com", "phone": "+14155552671"}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_user_any_single_identity_is_enough(name):
    event = without(user(), "userId")
    event[name] = IDENTITIES[name]
    body, errors = ua(event)
    assert errors == {}
    assert body[name] == IDENTITIES[name]
    assert set(body) & set(IDENTITIES) == {name}


def test_user_all_identities_kept():
    body, errors = ua(user(**IDENTITIES))
    assert errors == {}
    for name, value in IDENTITIES.items():
        assert body[name] == value


def test_user_without_identity_names_an_identity_field():
    _, errors = ua(without(user(), "userId"))
    assert errors
    assert set(errors) <= {"userId", "email", "phone"}


def test_user_identities_all_none_count_as_absent():
    _, errors = ua(user(userId=None, email=None, phone=None))
    assert errors
    assert set(errors) <= {"userId", "email", "phone"}


def test_user_none_optional_fields_dropped_from_body():
    body, errors = ua(user(email=None, phone=None, metadata=None))
    assert errors == {}
    assert body == {
        "userId": "u-1", "feature": "user_collectible", "action": "opened",
        "experienceId": "47Gop5", "capturedAt": "2026-04-27T13:35:00.000Z",
    }


def test_user_api_reference_example_body():
    event = {
        "userId": "u-1", "email": "john.doe@example.com", "phone": "+14155552671",
        "feature": "registration_email", "action": "sent", "experienceId": "47Gop5",
        "capturedAt": "2026-04-27T13:35:00Z", "metadata": {"campaign": "spring", "n": 3},
    }
    body, errors = ua(event)
    assert errors == {}
    assert body == dict(event, capturedAt="2026-04-27T13:35:00.000Z")


def test_user_schema_class_load_directly():
    assert UserAnalyticsEvent().load(user())["capturedAt"] == "2026-04-27T13:35:00.000Z"
    with pytest.raises(ValidationError) as info:
        UserAnalyticsEvent().load(without(user(), "feature"))
    assert set(info.value.messages) == {"feature"}


@pytest.mark.parametrize("required", ["feature", "action", "experienceId", "capturedAt"])
def test_user_required_fields(required):
    _, errors = ua(without(user(), required))
    assert_only_error(errors, required)
    _, errors = ua(user(**{required: None}))
    assert_only_error(errors, required)


# --- phone --------------------------------------------------------------------------


FULLWIDTH_PHONE = "+" + "".join(chr(0xFF10 + int(d)) for d in "14155552671")


@pytest.mark.parametrize("good", ["+14155552671", "+442071838750", "+12", "+123456789012345"])
def test_phone_e164_valid(good):
    body, errors = ua(user(phone=good))
    assert errors == {}
    assert body["phone"] == good


@pytest.mark.parametrize(
    "bad",
    [
        "14155552671", "+04155552671", "+1234567890123456", "+1", "+", "",
        "+1 415 555 2671", "+1-415-555-2671", "(415) 555-2671", "+1415555267a",
        " +14155552671", "+14155552671 ", "+1415\x005552671", FULLWIDTH_PHONE,
        14155552671, ["+14155552671"],
    ],
    ids=repr,
)
def test_phone_e164_invalid(bad):
    _, errors = ua(user(phone=bad))
    assert_only_error(errors, "phone")


def test_phone_with_trailing_newline_rejected():
    _, errors = ua(user(phone="+14155552671\n"))
    assert_only_error(errors, "phone")


# --- metadata -----------------------------------------------------------------------


def test_metadata_object_kept_as_is():
    meta = {"a": [1, 2.5, {"b": None, "c": True}], "s": "x", "nested": {"deep": {"k": []}}}
    body, errors = ua(user(metadata=meta))
    assert errors == {}
    assert body["metadata"] == meta


def test_metadata_empty_object_ok():
    body, errors = ua(user(metadata={}))
    assert errors == {}
    assert body["metadata"] == {}


@pytest.mark.parametrize("bad", [[], [1, 2], "{}", "x", 1, 1.5, True], ids=repr)
def test_metadata_must_be_object(bad):
    _, errors = ua(user(metadata=bad))
    assert_only_error(errors, "metadata")


@pytest.mark.parametrize(
    "bad",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": -math.inf},
        {"x": [1, {"y": math.nan}]},
        {"x": {"y": {"z": math.inf}}},
        {"x": object()},
        {"x": {1, 2}},
        {"x": b"bytes"},
    ],
    ids=repr,
)
def test_metadata_non_json_values_rejected(bad):
    _, errors = ua(user(metadata=bad))
    assert_only_error(errors, "metadata")


def test_metadata_size_limit_is_8_kib_of_compact_json():
    # Compact encoding of {"k":"<n>"} is 8 + n bytes.
    body, errors = ua(user(metadata={"k": "a" * (8192 - 8)}))
    assert errors == {}
    assert len(body["metadata"]["k"]) == 8184
    _, errors = ua(user(metadata={"k": "a" * (8192 - 8 + 1)}))
    assert_only_error(errors, "metadata")


def test_metadata_much_larger_rejected():
    _, errors = ua(user(metadata={f"k{i}": "v" * 100 for i in range(100)}))
    assert_only_error(errors, "metadata")


def test_metadata_deeply_nested_does_not_raise():
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["n"] = {}
        node = node["n"]
    _, errors = ua(user(metadata=deep))
    assert set(errors) <= {"metadata"}


def test_metadata_size_counts_utf8_bytes():
    _, errors = ua(user(metadata={"k": "é" * 3000}))
    assert errors == {}


def test_metadata_lone_surrogate_rejected():
    _, errors = ua(user(metadata={"k": "\ud800"}))
    assert_only_error(errors, "metadata")


def test_text_lone_surrogate_rejected():
    _, errors = cap(photo(eventValue="evt\ud800"))
    assert_only_error(errors, "eventValue")


# --- validate_event: the event itself and the experience ----------------------------


@pytest.mark.parametrize("kind", ["capture", "user_analytics"])
@pytest.mark.parametrize("data", [None, [], "event", 1, 1.5, True, ["type"]], ids=repr)
def test_non_object_event_is_event_error(kind, data):
    body, errors = validate_event(kind, data, EXPERIENCE)
    assert body == {}
    assert set(errors) == {"_event"}


def test_capture_needs_experience():
    _, errors = cap(photo(), experience=None)
    assert_only_error(errors, "experience")


@pytest.mark.parametrize(
    "slug", ["fifa-cwc-2025", "a", "A.b_c-1", "x" * 128, "...", "a..b", "-", "_", "1"]
)
def test_capture_valid_experience_slugs(slug):
    body, errors = cap(photo(), experience=slug)
    assert errors == {}
    assert body == photo()


@pytest.mark.parametrize(
    "slug",
    [".", "..", "", "x" * 129, "a/b", "../x", "a b", "a%2Fb", "é", "a?b", "a#b", "a\\b",
     " fifa", "fifa ", "a\x00b", 5, ["fifa"]],
    ids=repr,
)
def test_capture_invalid_experience_slugs(slug):
    _, errors = cap(photo(), experience=slug)
    assert_only_error(errors, "experience")


def test_capture_experience_with_trailing_newline_rejected():
    _, errors = cap(photo(), experience="fifa-cwc-2025\n")
    assert_only_error(errors, "experience")


def test_experience_error_reported_together_with_body_errors():
    _, errors = cap(without(photo(), "email"), experience="..")
    assert set(errors) == {"email", "experience"}


def test_user_analytics_ignores_experience():
    body, errors = validate_event("user_analytics", user(), None)
    assert errors == {}
    assert body["userId"] == "u-1"


def test_prefix_applies_to_every_key():
    _, errors = validate_event("capture", without(photo(), "email"), None, prefix="3")
    assert set(errors) == {"3.email", "3.experience"}


def test_invalid_event_carries_the_errors():
    _, errors = cap(photo(email="nope", bogus=1), experience="..")
    exc = InvalidEvent(errors)
    assert isinstance(exc, ValueError)
    assert set(exc.errors) == {"email", "bogus", "experience"}
    for name in ("email", "bogus", "experience"):
        assert name in str(exc)


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        ("capture", without(photo(), "email"), "email"),
        ("capture", without(registration(), "sessionId"), "sessionId"),
        ("user_analytics", without(user(), "userId"), "userId"),
    ],
)
def test_identity_rules_hold_for_any_mapping(kind, data, field):
    _, errors = validate_event(kind, MappingProxyType(data), EXPERIENCE)
    assert field in errors


# --- properties ---------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # includes lone surrogates, like json.loads
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(ANY_CHAR, max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(ANY_CHAR, max_size=10), inner, max_size=5),
    max_leaves=20,
)
timestampish = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.text(ANY_CHAR, max_size=40),
)
field_values = st.one_of(json_values, timestampish, st.sampled_from(ALL_TYPES))
keys = st.sampled_from(sorted(CAPTURE_FIELDS | USER_FIELDS)) | st.text(ANY_CHAR, max_size=12)
event_dicts = st.dictionaries(keys, field_values, max_size=10)
experiences = st.none() | st.text(ANY_CHAR, max_size=20) | json_values


def check_result(result: Any) -> dict[str, list[str]]:
    body, errors = result
    assert isinstance(body, dict)
    assert isinstance(errors, dict)
    for key, messages in errors.items():
        assert isinstance(key, str)
        assert isinstance(messages, list) and messages
        assert all(isinstance(m, str) for m in messages)
    if not errors:
        assert body
    return errors


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["capture", "user_analytics"]), data=json_values, exp=experiences)
def test_property_any_json_value_only_returns_errors(kind, data, exp):
    errors = check_result(validate_event(kind, data, exp))
    if not isinstance(data, dict):
        assert "_event" in errors


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["capture", "user_analytics"]), data=event_dicts, exp=experiences)
def test_property_error_keys_are_known_or_from_input(kind, data, exp):
    errors = check_result(validate_event(kind, data, exp))
    for key in errors:
        assert key in KNOWN_KEYS or key in data, (key, errors)
    known = CAPTURE_FIELDS if kind == "capture" else USER_FIELDS
    for key in data:
        if key not in known:
            assert key in errors or (key == "_schema" and "_event" in errors)


safe_text = st.text(
    st.characters(categories=["L", "N"], exclude_characters="\x00"), min_size=1, max_size=40
)
aware = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
    timezones=st.timezones(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_type=st.sampled_from(ALL_TYPES), value=safe_text, ident=safe_text, moment=aware,
    as_text=st.booleans(),
)
def test_property_valid_capture_events_round_trip(event_type, value, ident, moment, as_text):
    if event_type == "REGISTRATION_PAGE_VISIT":
        event = registration(eventValue=value, sessionId=ident, registrationPageValue=ident)
    else:
        event = photo(event_type, eventValue=value, email=f"u{len(ident)}@example.com")
    event["recordCapturedAt"] = moment.isoformat() if as_text else moment
    body, errors = cap(event)
    assert errors == {}
    assert OUT_RE.match(body["recordCapturedAt"])
    parsed = datetime.strptime(body["recordCapturedAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    expected = moment.astimezone(timezone.utc).replace(tzinfo=None)
    assert timedelta(0) <= expected - parsed < timedelta(milliseconds=1)
    assert {k: v for k, v in body.items() if k != "recordCapturedAt"} == {
        k: v for k, v in event.items() if k != "recordCapturedAt"
    }
