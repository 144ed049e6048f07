"""Backoff, the retry/dead-letter decision and the verdict on each HTTP answer.

Pure functions with seams for the clock (``now``) and chance (``rng``): no
sleeping, no network.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
import requests

from forwarder.config import Settings
from forwarder.messages import Event
from workers.delivery import (
    Outcome,
    classify_exception,
    classify_response,
    event_url,
    parse_retry_after,
)
from workers.retry import (
    BackoffPolicy,
    DeadLetter,
    Delivered,
    Retry,
    backoff_delay,
    decide,
)

NOW = 1_800_000_000.0  # a fixed clock: 2027-01-15T08:00:00Z
HOUR = 3600.0


class UpperRng(random.Random):
    """uniform() returns its upper bound: the ceiling of the jitter window."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b


class LowerRng(UpperRng):
    """uniform() returns its lower bound."""

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a


def policy(**changes) -> BackoffPolicy:
    values = {"base": 1.0, "cap": 600.0, "retry_after_cap": HOUR, "max_attempts": 25,
              "max_age": 72 * HOUR}
    values.update(changes)
    return BackoffPolicy(**values)


def event(attempts: int = 1, age: float = 10.0, kind: str = "capture") -> Event:
    return Event(
        id="0b7e4b8e-1b55-4d07-8f7f-2b1f3a0e9c11", kind=kind,  # type: ignore[typeddict-item]
        experience="fifa-cwc-2025" if kind == "capture" else None,
        body={"type": "PHOTO_VIEWED_BY_USER"}, attempts=attempts, first_seen=NOW - age,
    )


def outcome(verdict: str, status: int | None = None, retry_after: float | None = None) -> Outcome:
    return Outcome(verdict, status, "", retry_after)  # type: ignore[arg-type]


# --- backoff_delay: full jitter -----------------------------------------------------


def expected_ceiling(attempts: int, base: float = 1.0, cap: float = 600.0) -> float:
    # 2**100 is past any cap; stopping there keeps the float arithmetic finite.
    return min(cap, base * 2.0 ** min(attempts - 1, 100))


@pytest.mark.parametrize("attempts", range(1, 31))
def test_backoff_upper_bound_is_full_jitter_ceiling(attempts):
    rng = UpperRng()
    delay = backoff_delay(attempts, policy(), rng)
    assert delay == expected_ceiling(attempts)
    assert rng.calls == [(0.0, expected_ceiling(attempts))]


@pytest.mark.parametrize("attempts", range(1, 31))
def test_backoff_lower_bound_is_zero(attempts):
    rng = LowerRng()
    assert backoff_delay(attempts, policy(), rng) == 0.0
    assert rng.calls == [(0.0, expected_ceiling(attempts))]


def test_backoff_ceilings_spot_values():
    ceilings = [backoff_delay(n, policy(), UpperRng()) for n in range(1, 31)]
    assert ceilings[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    # 2**10 = 1024 > 600: from the 11th attempt on, the cap.
    assert ceilings[10:] == [600.0] * 20


def test_backoff_other_base_and_cap():
    p = policy(base=0.5, cap=10.0)
    assert [backoff_delay(n, p, UpperRng()) for n in range(1, 8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0,
    ]


@pytest.mark.parametrize("attempts", [100, 1000, 10**6])
def test_backoff_huge_attempt_counts_stay_capped(attempts):
    assert backoff_delay(attempts, policy(), UpperRng()) == 600.0


def test_backoff_with_seeded_random_is_within_window_and_reproducible():
    p = policy()
    first = [backoff_delay(n, p, random.Random(1234)) for n in range(1, 31)]
    again = [backoff_delay(n, p, random.Random(1234)) for n in range(1, 31)]
    assert first == again
    rng = random.Random(99)
    for n in range(1, 31):
        for _ in range(50):
            delay = backoff_delay(n, p, rng)
            assert 0.0 <= delay <= expected_ceiling(n)


def test_backoff_is_jittered_not_constant():
    rng = random.Random(7)
    draws = {backoff_delay(12, policy(), rng) for _ in range(20)}
    assert len(draws) > 1


# --- decide -------------------------------------------------------------------------


def test_delivered():
    assert decide(event(), outcome("delivered", 200), NOW, policy(), UpperRng()) == Delivered()


def test_delivered_from_classified_200():
    o = classify_response(200, '{"statusCode":200}', None, NOW)
    assert decide(event(), o, NOW, policy(), UpperRng()) == Delivered()


@pytest.mark.parametrize("status", [400, 402, 404, 405, 409, 410, 413, 415, 422, 451, 499])
def test_rejected_statuses_dead_letter_at_once(status):
    o = classify_response(status, "bad", None, NOW)
    assert decide(event(attempts=1), o, NOW, policy(), UpperRng()) == DeadLetter("rejected")


def test_rejected_ignores_retry_after():
    o = classify_response(422, "bad", "30", NOW)
    assert decide(event(attempts=1), o, NOW, policy(), UpperRng()) == DeadLetter("rejected")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_retry_with_backoff(status):
    o = classify_response(status, "", None, NOW)
    decision = decide(event(attempts=3), o, NOW, policy(), UpperRng())
    assert decision == Retry(delay=4.0, due=NOW + 4.0)


@pytest.mark.parametrize(
    "exc",
    [requests.exceptions.Timeout("t"), requests.exceptions.ConnectTimeout("t"),
     requests.exceptions.ReadTimeout("t"), requests.exceptions.ConnectionError("refused"),
     requests.exceptions.ChunkedEncodingError("cut")],
    ids=lambda e: type(e).__name__,
)
def test_exceptions_retry(exc):
    decision = decide(event(attempts=2), classify_exception(exc), NOW, policy(), UpperRng())
    assert decision == Retry(delay=2.0, due=NOW + 2.0)


@pytest.mark.parametrize("attempts", range(1, 31))
def test_retry_due_is_now_plus_delay(attempts):
    decision = decide(event(attempts=attempts, age=1.0), outcome("transient", 503), NOW,
                      policy(max_attempts=100), UpperRng())
    assert isinstance(decision, Retry)
    assert decision.delay == expected_ceiling(attempts)
    assert decision.due == NOW + decision.delay


# Retry-After -------------------------------------------------------------------------


def test_retry_after_is_a_floor_over_small_backoff():
    o = classify_response(429, "", "120", NOW)
    assert o.retry_after == 120.0
    decision = decide(event(attempts=1), o, NOW, policy(), LowerRng())
    assert decision == Retry(delay=120.0, due=NOW + 120.0)


def test_retry_after_does_not_shorten_larger_backoff():
    o = classify_response(503, "", "120", NOW)
    decision = decide(event(attempts=11), o, NOW, policy(), UpperRng())
    assert decision == Retry(delay=600.0, due=NOW + 600.0)


def test_retry_after_not_added_to_backoff():
    o = outcome("transient", 503, retry_after=5.0)
    decision = decide(event(attempts=4), o, NOW, policy(), UpperRng())  # backoff 8
    assert decision == Retry(delay=8.0, due=NOW + 8.0)


def test_retry_after_capped_at_one_hour_by_default():
    p = BackoffPolicy.from_settings(Settings())
    assert p.retry_after_cap == HOUR
    o = classify_response(429, "", "7200", NOW)
    decision = decide(event(attempts=1), o, NOW, p, LowerRng())
    assert decision == Retry(delay=HOUR, due=NOW + HOUR)


def test_retry_after_cap_configurable():
    o = outcome("transient", 429, retry_after=120.0)
    decision = decide(event(attempts=1), o, NOW, policy(retry_after_cap=30.0), LowerRng())
    assert decision == Retry(delay=30.0, due=NOW + 30.0)


def test_retry_after_cap_zero_leaves_plain_backoff():
    o = outcome("transient", 429, retry_after=120.0)
    decision = decide(event(attempts=2), o, NOW, policy(retry_after_cap=0.0), UpperRng())
    assert decision == Retry(delay=2.0, due=NOW + 2.0)


def test_retry_after_cap_beats_backoff_when_larger():
    o = outcome("transient", 503, retry_after=10 * HOUR)
    decision = decide(event(attempts=20), o, NOW, policy(), UpperRng())
    assert decision == Retry(delay=HOUR, due=NOW + HOUR)


def test_retry_after_http_date():
    header = format_datetime(datetime.fromtimestamp(NOW + 90, timezone.utc), usegmt=True)
    o = classify_response(503, "", header, NOW)
    assert o.retry_after == pytest.approx(90.0)
    decision = decide(event(attempts=1), o, NOW, policy(), LowerRng())
    assert decision.delay == pytest.approx(90.0)
    assert decision.due == pytest.approx(NOW + 90.0)


def test_retry_after_on_deployment_verdict_also_honoured():
    o = classify_response(403, "", "300", NOW)
    decision = decide(event(attempts=1), o, NOW, policy(), LowerRng())
    assert decision == Retry(delay=300.0, due=NOW + 300.0)


# attempts and age --------------------------------------------------------------------


def test_transient_exhausted_at_max_attempts():
    p = policy(max_attempts=25)
    o = outcome("transient", 503)
    assert isinstance(decide(event(attempts=24), o, NOW, p, UpperRng()), Retry)
    assert decide(event(attempts=25), o, NOW, p, UpperRng()) == DeadLetter("exhausted")
    assert decide(event(attempts=26), o, NOW, p, UpperRng()) == DeadLetter("exhausted")


def test_exception_exhausted_at_max_attempts():
    o = classify_exception(requests.exceptions.ConnectionError("refused"))
    p = policy(max_attempts=3)
    assert isinstance(decide(event(attempts=2), o, NOW, p, UpperRng()), Retry)
    assert decide(event(attempts=3), o, NOW, p, UpperRng()) == DeadLetter("exhausted")


def test_single_attempt_policy():
    o = outcome("transient", 500)
    assert decide(event(attempts=1), o, NOW, policy(max_attempts=1), UpperRng()) == DeadLetter(
        "exhausted"
    )


def test_exhausted_even_with_retry_after():
    o = classify_response(429, "", "10", NOW)
    assert decide(event(attempts=25), o, NOW, policy(), UpperRng()) == DeadLetter("exhausted")


@pytest.mark.parametrize("age", [72 * HOUR + 1, 100 * HOUR, 365 * 24 * HOUR])
def test_expired_after_max_age(age):
    o = outcome("transient", 503)
    assert decide(event(attempts=2, age=age), o, NOW, policy(), UpperRng()) == DeadLetter(
        "expired"
    )


def test_not_expired_just_before_max_age():
    o = outcome("transient", 503)
    decision = decide(event(attempts=2, age=72 * HOUR - 1), o, NOW, policy(), UpperRng())
    assert isinstance(decision, Retry)


def test_custom_max_age():
    o = outcome("transient", 503)
    p = policy(max_age=60.0)
    assert isinstance(decide(event(age=59.0), o, NOW, p, UpperRng()), Retry)
    assert decide(event(age=61.0), o, NOW, p, UpperRng()) == DeadLetter("expired")


def test_delivered_wins_even_when_old():
    o = outcome("delivered", 200)
    assert decide(event(attempts=99, age=1000 * HOUR), o, NOW, policy(), UpperRng()) == (
        Delivered()
    )


# deployment problems -----------------------------------------------------------------


DEPLOYMENT_CAUSES = [
    pytest.param(lambda: classify_response(401, "", None, NOW), id="401"),
    pytest.param(lambda: classify_response(403, "", None, NOW), id="403"),
    pytest.param(lambda: classify_response(301, "", None, NOW), id="301"),
    pytest.param(lambda: classify_response(308, "", None, NOW), id="308"),
    pytest.param(lambda: classify_exception(requests.exceptions.SSLError("bad cert")),
                 id="SSLError"),
]


@pytest.mark.parametrize("make", DEPLOYMENT_CAUSES)
@pytest.mark.parametrize("attempts", [1, 24, 25, 26, 100, 10_000])
def test_deployment_retried_past_max_attempts(make, attempts):
    o = make()
    assert o.verdict == "deployment"
    decision = decide(event(attempts=attempts, age=HOUR), o, NOW, policy(), UpperRng())
    assert isinstance(decision, Retry)
    assert decision.delay == expected_ceiling(attempts)
    assert decision.due == NOW + decision.delay


@pytest.mark.parametrize("make", DEPLOYMENT_CAUSES)
def test_deployment_dead_lettered_at_max_age(make):
    o = make()
    decision = decide(event(attempts=500, age=72 * HOUR + 1), o, NOW, policy(), UpperRng())
    assert decision == DeadLetter("expired")


def test_policy_from_settings():
    s = Settings(backoff_base=0.5, backoff_cap=30.0, retry_after_cap=90.0, max_attempts=4,
                 max_age=HOUR)
    assert BackoffPolicy.from_settings(s) == BackoffPolicy(
        base=0.5, cap=30.0, retry_after_cap=90.0, max_attempts=4, max_age=HOUR
    )


def test_policy_defaults():
    p = BackoffPolicy.from_settings(Settings())
    assert p == BackoffPolicy(base=1.0, cap=600.0, retry_after_cap=HOUR, max_attempts=25,
                              max_age=72 * HOUR)


# --- classify_response --------------------------------------------------------------

STATUS_TABLE = [
    (200, "delivered"),
    (300, "deployment"), (301, "deployment"), (302, "deployment"), (303, "deployment"),
    (304, "deployment"), (307, "deployment"), (308, "deployment"),
    (400, "rejected"), (402, "rejected"), (404, "rejected"), (405, "rejected"),
    (406, "rejected"), (409, "rejected"), (410, "rejected"), (411, "rejected"),
    (413, "rejected"), (414, "rejected"), (415, "rejected"), (418, "rejected"),
    (422, "rejected"), (431, "rejected"), (451, "rejected"),
    (401, "deployment"), (403, "deployment"),
    (408, "transient"), (425, "transient"), (429, "transient"),
    (500, "transient"), (501, "transient"), (502, "transient"), (503, "transient"),
    (504, "transient"), (507, "transient"), (520, "transient"), (599, "transient"),
]


@pytest.mark.parametrize(("status", "verdict"), STATUS_TABLE)
def test_classify_response_table(status, verdict):
    # A 2xx counts only with Distinct's JSON envelope (see the envelope tests).
    body = ('{"statusCode": 200, "message": "ok", "data": null}' if 200 <= status < 300
            else "body text")
    o = classify_response(status, body, None, NOW)
    assert o.verdict == verdict
    assert o.status == status


@pytest.mark.parametrize("status", [429, 503])
def test_classify_response_parses_retry_after_seconds(status):
    assert classify_response(status, "", "17", NOW).retry_after == 17.0


def test_classify_response_without_retry_after():
    assert classify_response(503, "", None, NOW).retry_after is None


def test_classify_response_keeps_body_as_detail():
    o = classify_response(422, '{"message":"feature not allowed"}', None, NOW)
    assert "feature not allowed" in o.detail


def test_classify_response_detail_is_bounded():
    o = classify_response(500, "x" * 100_000, None, NOW)
    assert 0 < len(o.detail) <= 4096


# --- classify_exception -------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [requests.exceptions.Timeout("slow"), requests.exceptions.ConnectTimeout("slow"),
     requests.exceptions.ReadTimeout("slow"), requests.exceptions.ConnectionError("reset"),
     requests.exceptions.ChunkedEncodingError("cut")],
    ids=lambda e: type(e).__name__,
)
def test_classify_exception_transient(exc):
    o = classify_exception(exc)
    assert o.verdict == "transient"
    assert o.status is None
    assert type(exc).__name__ in o.detail


def test_classify_exception_ssl_is_deployment():
    exc = requests.exceptions.SSLError("certificate verify failed")
    assert isinstance(exc, requests.exceptions.ConnectionError)  # checked before it
    o = classify_exception(exc)
    assert o.verdict == "deployment"
    assert o.status is None
    assert "certificate verify failed" in o.detail


# --- parse_retry_after --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (" 45 ", 45.0), ("3600", 3600.0), ("86400", 86400.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("offset", [1, 30, 90, 3600, 7 * 86400])
def test_parse_retry_after_http_date_in_future(offset):
    header = format_datetime(datetime.fromtimestamp(NOW + offset, timezone.utc), usegmt=True)
    assert parse_retry_after(header, NOW) == pytest.approx(offset)


def test_parse_retry_after_rfc_example_date():
    moment = datetime(2015, 10, 21, 7, 28, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", moment - 30) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", moment) == 0.0


def test_parse_retry_after_date_in_past_is_zero():
    header = format_datetime(datetime.fromtimestamp(NOW - 600, timezone.utc), usegmt=True)
    assert parse_retry_after(header, NOW) == 0.0


def test_parse_retry_after_depends_on_now_not_wall_clock():
    header = format_datetime(datetime.fromtimestamp(NOW + 100, timezone.utc), usegmt=True)
    assert parse_retry_after(header, NOW + 40) == pytest.approx(60.0)


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "-5", "1.5", "12abc", "Wed, 99 Foo 2015 07:28:00 GMT"]
)
def test_parse_retry_after_unusable_values(value):
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b3"])
def test_parse_retry_after_superscript_digits(value):
    assert parse_retry_after(value, NOW) is None


# --- event_url ----------------------------------------------------------------------


def test_event_url_capture():
    url = event_url("https://api.distinct.so", event(kind="capture"))
    assert url == "https://api.distinct.so/api/v1/analytics/capture/fifa-cwc-2025"


def test_event_url_user_analytics_and_trailing_slash():
    url = event_url("https://api.distinct.so/", event(kind="user_analytics"))
    assert url == "https://api.distinct.so/api/v1/user/analytics"
