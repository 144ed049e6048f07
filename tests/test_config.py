"""Settings.from_env: defaults, durations, one ConfigError for every problem, masking."""

from __future__ import annotations

import dataclasses

import pytest

from forwarder.config import Settings, is_valid_slug, mask_url, parse_duration
from forwarder.errors import ConfigError, ForwarderError

API_KEY = "sk_live_7Hq2ZpX9mW4rT1vB"
REDIS_PASSWORD = "hunter2-Zq8vPw3"
REDIS_URL = f"redis://default:{REDIS_PASSWORD}@redis.internal:6380/1"


def problems_of(environ: dict[str, str], **overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ, **overrides)
    return info.value.problems


def validate_problems(**fields) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings(**fields).validate()
    return info.value.problems


def mentions(problems: list[str], var: str) -> bool:
    return any(p.startswith(var + ":") or p.startswith(var + " ") for p in problems)


# --- defaults -----------------------------------------------------------------------


def test_defaults_from_empty_environment():
    s = Settings.from_env({})
    assert s.api_key is None
    assert s.api_url == "https://api.distinct.so"
    assert s.experience is None
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.namespace == "distinct-forwarder"
    assert s.connect_timeout == pytest.approx(3.05)
    assert s.read_timeout == 10.0
    assert s.backoff_base == 1.0
    assert s.backoff_cap == 600.0
    assert s.retry_after_cap == 3600.0  # one hour
    assert s.max_attempts == 25
    assert s.max_age == 72 * 3600.0
    assert s.dedupe_ttl == 24 * 3600.0
    assert s.enqueue_timeout == 0.25
    assert s.concurrency == 96
    assert s.log_format == "text"
    assert s == Settings()


def test_empty_strings_count_as_unset():
    env = {
        "DISTINCT_API_KEY": "", "DISTINCT_EXPERIENCE": "", "REDIS_URL": "",
        "FORWARDER_MAX_ATTEMPTS": "", "FORWARDER_READ_TIMEOUT": "", "FORWARDER_LOG_FORMAT": "",
    }
    assert Settings.from_env(env) == Settings()


def test_unrelated_variables_ignored():
    assert Settings.from_env({"PATH": "/bin", "FORWARDER_UNKNOWN": "x"}) == Settings()


def test_every_variable_read():
    env = {
        "DISTINCT_API_KEY": API_KEY,
        "DISTINCT_API_URL": "http://localhost:8080",
        "DISTINCT_EXPERIENCE": "fifa-cwc-2025",
        "REDIS_URL": "rediss://cache:6380/2",
        "FORWARDER_NAMESPACE": "ns-1",
        "FORWARDER_CONNECT_TIMEOUT": "2s",
        "FORWARDER_READ_TIMEOUT": "30",
        "FORWARDER_BACKOFF_BASE": "500ms",
        "FORWARDER_BACKOFF_CAP": "5m",
        "FORWARDER_RETRY_AFTER_CAP": "0",
        "FORWARDER_MAX_ATTEMPTS": "7",
        "FORWARDER_MAX_AGE": "2d",
        "FORWARDER_DEDUPE_TTL": "12h",
        "FORWARDER_ENQUEUE_TIMEOUT": "1.5s",
        "FORWARDER_CONCURRENCY": "512",
        "FORWARDER_LOG_FORMAT": "json",
    }
    s = Settings.from_env(env)
    assert s.api_key == API_KEY
    assert s.api_url == "http://localhost:8080"
    assert s.experience == "fifa-cwc-2025"
    assert s.redis_url == "rediss://cache:6380/2"
    assert s.namespace == "ns-1"
    assert s.connect_timeout == 2.0
    assert s.read_timeout == 30.0
    assert s.backoff_base == 0.5
    assert s.backoff_cap == 300.0
    assert s.retry_after_cap == 0.0
    assert s.max_attempts == 7
    assert s.max_age == 2 * 86400.0
    assert s.dedupe_ttl == 12 * 3600.0
    assert s.enqueue_timeout == 1.5
    assert s.concurrency == 512
    assert s.log_format == "json"


def test_keyword_overrides_win_and_none_is_ignored():
    env = {"FORWARDER_NAMESPACE": "from-env", "DISTINCT_EXPERIENCE": "env-exp"}
    s = Settings.from_env(env, namespace="override", experience=None)
    assert s.namespace == "override"
    assert s.experience == "env-exp"


def test_invalid_override_is_reported():
    assert mentions(problems_of({}, concurrency=0), "FORWARDER_CONCURRENCY")


# --- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("10m", 600.0),
        ("72h", 259200.0),
        ("30d", 2592000.0),
        ("90", 90.0),
        ("0.5", 0.5),
        ("1.5s", 1.5),
        ("45s", 45.0),
        (" 10m ", 600.0),
        ("10 m", 600.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "abc", "10x", "-5", "-5s", "1e3", "10mm", "s", "1,5", "10 minutes", ".5", "5."]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("250ms", 0.25), ("10m", 600.0), ("72h", 259200.0), ("7", 7.0), ("2.5", 2.5)],
)
def test_duration_variables_accept_units(value, expected):
    s = Settings.from_env({"FORWARDER_ENQUEUE_TIMEOUT": value})
    assert s.enqueue_timeout == pytest.approx(expected)


def test_max_age_72h_from_env():
    assert Settings.from_env({"FORWARDER_MAX_AGE": "72h"}).max_age == 72 * 3600


def test_bad_duration_names_variable_and_value():
    problems = problems_of({"FORWARDER_READ_TIMEOUT": "soon"})
    assert len(problems) == 1
    assert problems[0].startswith("FORWARDER_READ_TIMEOUT:")
    assert "soon" in problems[0]


@pytest.mark.parametrize("value", ["12.5", "many", "1e2", "ten"])
def test_integer_variables_reject_non_integers(value):
    problems = problems_of({"FORWARDER_MAX_ATTEMPTS": value})
    assert mentions(problems, "FORWARDER_MAX_ATTEMPTS")


# --- one ConfigError listing every problem ------------------------------------------


def test_every_problem_listed_in_one_error():
    env = {
        "DISTINCT_API_URL": "ftp://api.distinct.so",
        "DISTINCT_EXPERIENCE": "a/b",
        "REDIS_URL": "http://localhost:6379",
        "FORWARDER_NAMESPACE": "bad namespace",
        "FORWARDER_CONNECT_TIMEOUT": "0",
        "FORWARDER_READ_TIMEOUT": "soon",
        "FORWARDER_BACKOFF_BASE": "-1",
        "FORWARDER_RETRY_AFTER_CAP": "forever",
        "FORWARDER_MAX_ATTEMPTS": "many",
        "FORWARDER_MAX_AGE": "0s",
        "FORWARDER_DEDUPE_TTL": "0",
        "FORWARDER_ENQUEUE_TIMEOUT": "0ms",
        "FORWARDER_CONCURRENCY": "0",
        "FORWARDER_LOG_FORMAT": "xml",
    }
    problems = problems_of(env)
    for var in env:
        assert mentions(problems, var), (var, problems)
    assert len(problems) >= len(env)


def test_rule_problems_alone_also_all_listed():
    env = {
        "FORWARDER_CONCURRENCY": "1000",
        "FORWARDER_MAX_ATTEMPTS": "0",
        "FORWARDER_LOG_FORMAT": "yaml",
        "FORWARDER_BACKOFF_BASE": "10m",
        "FORWARDER_BACKOFF_CAP": "1m",
    }
    problems = problems_of(env)
    for var in ("FORWARDER_CONCURRENCY", "FORWARDER_MAX_ATTEMPTS", "FORWARDER_LOG_FORMAT",
                "FORWARDER_BACKOFF_CAP"):
        assert mentions(problems, var), (var, problems)
    assert len(problems) == 4


def test_conversion_and_rule_problems_reported_together():
    problems = problems_of({"FORWARDER_MAX_ATTEMPTS": "x", "FORWARDER_CONCURRENCY": "0"})
    assert mentions(problems, "FORWARDER_MAX_ATTEMPTS")
    assert mentions(problems, "FORWARDER_CONCURRENCY")
    assert len(problems) == 2


def test_config_error_message_lists_each_problem():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FORWARDER_CONCURRENCY": "0", "FORWARDER_LOG_FORMAT": "xml"})
    exc = info.value
    assert isinstance(exc, ForwarderError) and isinstance(exc, ValueError)
    for problem in exc.problems:
        assert problem in str(exc)


# --- validate rules -----------------------------------------------------------------


def test_default_settings_validate():
    Settings().validate()


@pytest.mark.parametrize(
    ("fields", "var"),
    [
        ({"api_url": "ftp://api.distinct.so"}, "DISTINCT_API_URL"),
        ({"api_url": "https://"}, "DISTINCT_API_URL"),
        ({"api_url": "api.distinct.so"}, "DISTINCT_API_URL"),
        ({"redis_url": "http://localhost:6379"}, "REDIS_URL"),
        ({"redis_url": "localhost:6379"}, "REDIS_URL"),
        ({"experience": ""}, "DISTINCT_EXPERIENCE"),
        ({"experience": "."}, "DISTINCT_EXPERIENCE"),
        ({"experience": ".."}, "DISTINCT_EXPERIENCE"),
        ({"experience": "a/b"}, "DISTINCT_EXPERIENCE"),
        ({"experience": "x" * 129}, "DISTINCT_EXPERIENCE"),
        ({"namespace": ""}, "FORWARDER_NAMESPACE"),
        ({"namespace": "a b"}, "FORWARDER_NAMESPACE"),
        ({"namespace": "a:b"}, "FORWARDER_NAMESPACE"),
        ({"namespace": "n" * 65}, "FORWARDER_NAMESPACE"),
        ({"connect_timeout": 0}, "FORWARDER_CONNECT_TIMEOUT"),
        ({"read_timeout": -1}, "FORWARDER_READ_TIMEOUT"),
        ({"backoff_base": 0, "backoff_cap": 600}, "FORWARDER_BACKOFF_BASE"),
        ({"backoff_cap": 0}, "FORWARDER_BACKOFF_CAP"),
        ({"backoff_base": 10, "backoff_cap": 5}, "FORWARDER_BACKOFF_CAP"),
        ({"retry_after_cap": -1}, "FORWARDER_RETRY_AFTER_CAP"),
        ({"max_attempts": 0}, "FORWARDER_MAX_ATTEMPTS"),
        ({"max_attempts": -3}, "FORWARDER_MAX_ATTEMPTS"),
        ({"max_age": 0}, "FORWARDER_MAX_AGE"),
        ({"dedupe_ttl": 0}, "FORWARDER_DEDUPE_TTL"),
        ({"enqueue_timeout": 0}, "FORWARDER_ENQUEUE_TIMEOUT"),
        ({"concurrency": 0}, "FORWARDER_CONCURRENCY"),
        ({"concurrency": 513}, "FORWARDER_CONCURRENCY"),
        ({"connect_timeout": 10, "read_timeout": 110}, "FORWARDER_CONNECT_TIMEOUT"),
        ({"connect_timeout": 60, "read_timeout": 100}, "FORWARDER_CONNECT_TIMEOUT"),
        ({"log_format": "xml"}, "FORWARDER_LOG_FORMAT"),
        ({"log_format": "JSON"}, "FORWARDER_LOG_FORMAT"),
    ],
)
def test_validate_rejects(fields, var):
    problems = validate_problems(**fields)
    assert mentions(problems, var), problems


@pytest.mark.parametrize(
    "fields",
    [
        {"api_url": "http://localhost:8080"},
        {"api_url": "https://api.distinct.so/"},
        {"redis_url": "rediss://cache:6380/0"},
        {"redis_url": "unix:///var/run/redis.sock"},
        {"experience": "fifa-cwc-2025"},
        {"experience": "x" * 128},
        {"experience": "..."},
        {"namespace": "n" * 64},
        {"namespace": "A.b_c-1"},
        {"retry_after_cap": 0},
        {"backoff_base": 5, "backoff_cap": 5},
        {"max_attempts": 1},
        {"concurrency": 1},
        {"concurrency": 512},
        {"connect_timeout": 10, "read_timeout": 109.5},
        {"log_format": "json"},
    ],
)
def test_validate_accepts(fields):
    Settings(**fields).validate()


def test_with_overrides_validates():
    s = Settings().with_overrides(namespace="other", experience=None)
    assert s.namespace == "other"
    with pytest.raises(ConfigError):
        Settings().with_overrides(concurrency=0)


def test_require_delivery():
    with pytest.raises(ConfigError) as info:
        Settings().require_delivery()
    assert mentions(info.value.problems, "DISTINCT_API_KEY")
    with pytest.raises(ConfigError):
        Settings(api_key="").require_delivery()
    Settings(api_key=API_KEY).require_delivery()


@pytest.mark.parametrize(
    ("slug", "ok"),
    [("fifa-cwc-2025", True), ("a", True), ("x" * 128, True), ("...", True),
     (".", False), ("..", False), ("", False), ("x" * 129, False), ("a/b", False),
     ("a b", False), ("é", False)],
)
def test_is_valid_slug(slug, ok):
    assert is_valid_slug(slug) is ok


@pytest.mark.parametrize(
    ("fields", "var"),
    [({"experience": "fifa\n"}, "DISTINCT_EXPERIENCE"), ({"namespace": "ns\n"},
                                                         "FORWARDER_NAMESPACE")],
)
def test_validate_rejects_trailing_newline(fields, var):
    assert mentions(validate_problems(**fields), var)


# --- masking: the key and the Redis password never show -----------------------------

SECRET_URLS = [
    REDIS_URL,
    f"redis://:{REDIS_PASSWORD}@localhost:6379/0",
    f"rediss://user:{REDIS_PASSWORD}@cache.example.com/0",
    f"redis://:{REDIS_PASSWORD}@10.0.0.5",
]


@pytest.mark.parametrize("redis_url", SECRET_URLS)
def test_masked_and_repr_hide_key_and_password(redis_url):
    s = Settings(api_key=API_KEY, redis_url=redis_url)
    shown = s.masked()
    text = " ".join([repr(s), str(s), str(shown), repr(shown)])
    assert API_KEY not in text
    assert REDIS_PASSWORD not in text
    assert shown["api_key"] != API_KEY
    assert "***" in shown["redis_url"]
    # Everything else is shown as is.
    assert shown["namespace"] == s.namespace
    assert shown["max_attempts"] == s.max_attempts
    assert set(shown) == {f.name for f in dataclasses.fields(Settings)}


def test_masked_url_keeps_host_and_db():
    shown = Settings(redis_url=REDIS_URL).masked()["redis_url"]
    assert "redis.internal" in shown
    assert "6380" in shown
    assert shown.endswith("/1")


@pytest.mark.parametrize("key", ["k", "short", "12345678", "123456789", API_KEY, "x" * 200])
def test_api_key_of_any_length_is_masked(key):
    s = Settings(api_key=key)
    assert s.masked()["api_key"] != key
    assert repr(key) not in repr(s)


def test_unset_key_shown_as_unset():
    assert Settings().masked()["api_key"] == "(unset)"


def test_url_without_password_shown_unchanged():
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_from_env_settings_repr_hides_secrets():
    s = Settings.from_env({"DISTINCT_API_KEY": API_KEY, "REDIS_URL": REDIS_URL})
    assert s.api_key == API_KEY and s.redis_url == REDIS_URL
    assert API_KEY not in repr(s)
    assert REDIS_PASSWORD not in repr(s)


def test_config_error_never_shows_redis_password():
    url = f"http://user:{REDIS_PASSWORD}@localhost:6379/0"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": url, "DISTINCT_API_KEY": API_KEY,
                           "FORWARDER_CONCURRENCY": "0"})
    assert mentions(info.value.problems, "REDIS_URL")
    assert REDIS_PASSWORD not in str(info.value)
    assert API_KEY not in str(info.value)


def test_repr_with_unparseable_port_does_not_raise():
    s = Settings(api_key=API_KEY, redis_url=f"redis://:{REDIS_PASSWORD}@host:99999/0")
    text = repr(s)
    assert REDIS_PASSWORD not in text


def test_bad_port_in_bad_redis_url_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": f"http://:{REDIS_PASSWORD}@host:abc/0",
                           "FORWARDER_CONCURRENCY": "0"})
    assert mentions(info.value.problems, "REDIS_URL")
    assert mentions(info.value.problems, "FORWARDER_CONCURRENCY")


def test_password_in_query_is_masked():
    s = Settings(redis_url=f"unix:///tmp/redis.sock?db=0&password={REDIS_PASSWORD}")
    assert REDIS_PASSWORD not in repr(s)
    assert REDIS_PASSWORD not in str(s.masked())
