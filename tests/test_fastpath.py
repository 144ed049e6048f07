"""The fast path never disagrees with the marshmallow schemas."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from forwarder.fastpath import fast_body
from forwarder.schemas import CAPTURE_SCHEMA, EVENT_TYPES, USER_ANALYTICS_SCHEMA
from tests.conftest import capture_event, user_event

SCHEMAS = {"capture": CAPTURE_SCHEMA, "user_analytics": USER_ANALYTICS_SCHEMA}

values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20), st.text(min_size=500, max_size=600),
    st.sampled_from(["", " ", "a\x00b", "\ud800", "john@example.com", "not-an-email",
                     "+14155552671", "+0123", "2026-11-28T10:15:00.000Z",
                     "2026-13-28T10:15:00.000Z", "2026-11-28T10:15:00+02:00",
                     "2026-11-28T10:15:00", "x" * 513, "é" * 512, *EVENT_TYPES]),
    st.datetimes(timezones=st.just(timezone.utc)), st.datetimes(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
field_names = st.sampled_from(["type", "eventValue", "recordCapturedAt", "email", "sessionId",
                               "registrationPageValue", "userId", "phone", "feature", "action",
                               "experienceId", "capturedAt", "metadata", "extra", ""])


def base(kind: str, i: int) -> dict:
    if kind == "capture":
        return capture_event(i, EVENT_TYPES[i % 4])
    return user_event(i)


@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(["capture", "user_analytics"]), i=st.integers(0, 7),
       changes=st.dictionaries(field_names, values, max_size=3),
       drops=st.lists(field_names, max_size=2))
def test_fast_path_accepts_only_what_the_schema_accepts_and_loads_the_same(
    kind, i, changes, drops
):
    data = base(kind, i)
    data.update(changes)
    for name in drops:
        data.pop(name, None)
    fast = fast_body(kind, data)
    try:
        loaded = SCHEMAS[kind].load(data)
    except ValidationError:
        assert fast is None, (data, fast)
        return
    if fast is not None:
        assert fast == loaded


def test_fast_path_takes_the_common_valid_events():
    moment = datetime(2026, 11, 28, 10, 15, tzinfo=timezone(timedelta(hours=2)))
    for i in range(8):
        assert fast_body("capture", base("capture", i)) == CAPTURE_SCHEMA.load(base("capture", i))
        event = base("user_analytics", i)
        event["capturedAt"] = moment
        assert fast_body("user_analytics", event) == USER_ANALYTICS_SCHEMA.load(event)
