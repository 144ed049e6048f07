"""Configuration: one frozen dataclass, read from the environment.

``Settings.from_env()`` checks every variable and raises a single
:class:`~forwarder.errors.ConfigError` listing every problem, so an operator
fixes a deployment in one pass instead of one crash per typo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from forwarder import constants as C
from forwarder.errors import ConfigError
from forwarder.masking import QUERY_PASSWORD_RE, fingerprint, mask_secret, mask_url

#: An experience slug: one URL path segment, never "." or "..".
SLUG_CHARS = "A-Za-z0-9._-"
SLUG_MAX = 128
SLUG_RE = re.compile(rf"^[{SLUG_CHARS}]{{1,{SLUG_MAX}}}\Z")
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def is_valid_slug(value: str) -> bool:
    """True for an experience slug that is safe as one URL path segment."""
    return bool(SLUG_RE.match(value)) and value not in {".", ".."}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5s"``, ``"250ms"``, ``"10m"``, ``"72h"`` or ``"30d"``."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30, 250ms, 10m, 72h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_SECRET_CHARS = re.compile(r"^[\x21-\x7e]+\Z")


def _secret(var: str) -> Callable[[str], str]:
    """A key from the environment: surrounding whitespace dropped (a file-mounted
    secret ends with a newline), then printable ASCII only, as an HTTP header needs."""

    def convert(raw: str) -> str:
        value = raw.strip()
        if not value:
            raise ValueError("is blank")
        if not _SECRET_CHARS.match(value):
            # Never the value itself: this message is printed and logged.
            raise ValueError("must be printable ASCII without spaces or control characters "
                             "(what a header can carry)")
        return value

    return convert


@dataclass(frozen=True)
class SentinelURL:
    """``sentinel://[[user]:password@]host:26379[,host:26379...]/master[/db]``, parsed."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    #: The master's password; the sentinels themselves are asked without one.
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """One REDIS_URL naming a Sentinel-monitored master, read by redis-py and kombu alike."""
    shown = mask_url(url)
    parts = urlsplit(url)
    if parts.scheme != "sentinel":
        raise ValueError(f"{shown!r} is not a sentinel:// URL")
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:  # no port given
            host, port = port, ""
        if not host or (port and not port.isdigit()) or not 0 < int(port or 26379) < 65536:
            raise ValueError(f"{shown!r}: sentinel {item!r} must be host or host:port")
        hosts.append((host.strip("[]"), int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            f"{shown!r}: the path must be /MASTER_NAME or /MASTER_NAME/DB "
            "(sentinel://host1:26379,host2:26379/mymaster/0)"
        )
    return SentinelURL(
        hosts=tuple(hosts), master=path[0], db=int(path[1]) if len(path) == 2 else 0,
        username=parts.username or None, password=parts.password,
    )


@dataclass(frozen=True)
class Settings:
    """Everything a producer, a worker or an operator tool needs to know."""

    api_key: str | None = None
    api_url: str = C.DEFAULT_API_URL
    experience: str | None = None
    redis_url: str = C.DEFAULT_REDIS_URL
    namespace: str = C.DEFAULT_NAMESPACE
    connect_timeout: float = C.DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = C.DEFAULT_READ_TIMEOUT
    backoff_base: float = C.DEFAULT_BACKOFF_BASE
    backoff_cap: float = C.DEFAULT_BACKOFF_CAP
    retry_after_cap: float = C.DEFAULT_RETRY_AFTER_CAP
    max_attempts: int = C.DEFAULT_MAX_ATTEMPTS
    max_age: float = C.DEFAULT_MAX_AGE
    dedupe_ttl: float = C.DEFAULT_DEDUPE_TTL
    enqueue_timeout: float = C.DEFAULT_ENQUEUE_TIMEOUT
    #: None: the per-user default (see forwarder.spool); "off": no spool.
    spool_path: str | None = None
    spool_max_mb: float = C.DEFAULT_SPOOL_MAX_MB
    shutdown_timeout: float = C.DEFAULT_SHUTDOWN_TIMEOUT
    concurrency: int = C.DEFAULT_CONCURRENCY
    log_format: str = "text"
    # --- operating at scale: breaker, rate limit, DLQ retention, metrics ---
    breaker_consecutive: int = C.DEFAULT_BREAKER_CONSECUTIVE
    breaker_ratio: float = C.DEFAULT_BREAKER_RATIO
    breaker_min_requests: int = C.DEFAULT_BREAKER_MIN_REQUESTS
    breaker_window: float = C.DEFAULT_BREAKER_WINDOW
    breaker_cooldown_min: float = C.DEFAULT_BREAKER_COOLDOWN_MIN
    breaker_cooldown_max: float = C.DEFAULT_BREAKER_COOLDOWN_MAX
    rate_limit: float | None = None
    dlq_ttl: float = C.DEFAULT_DLQ_TTL
    metrics_port: int | None = None
    #: Where worker metrics listen: loopback unless an operator opens it up.
    metrics_bind: str = "127.0.0.1"
    #: A worker silent this long is declared dead and what it held is requeued.
    worker_timeout: float = C.WORKER_DEAD_AFTER_SECONDS
    #: HTTP relay: the x-distinct-api-key values it accepts (several, for rotation).
    relay_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and validate the environment; keyword overrides win over it."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, Any] = {}

        def take(var: str, name: str, convert: Callable[[str], Any]) -> None:
            raw = env.get(var)
            if raw is None or raw == "":
                return
            try:
                values[name] = convert(raw)
            except ValueError as exc:
                problems.append(f"{var}: {exc}")

        take("DISTINCT_API_KEY", "api_key", _secret("DISTINCT_API_KEY"))
        take("DISTINCT_API_URL", "api_url", str)
        take("DISTINCT_EXPERIENCE", "experience", str)
        take("REDIS_URL", "redis_url", str)
        take("FORWARDER_NAMESPACE", "namespace", str)
        take("FORWARDER_CONNECT_TIMEOUT", "connect_timeout", parse_duration)
        take("FORWARDER_READ_TIMEOUT", "read_timeout", parse_duration)
        take("FORWARDER_BACKOFF_BASE", "backoff_base", parse_duration)
        take("FORWARDER_BACKOFF_CAP", "backoff_cap", parse_duration)
        take("FORWARDER_RETRY_AFTER_CAP", "retry_after_cap", parse_duration)
        take("FORWARDER_MAX_ATTEMPTS", "max_attempts", _parse_int)
        take("FORWARDER_MAX_AGE", "max_age", parse_duration)
        take("FORWARDER_DEDUPE_TTL", "dedupe_ttl", parse_duration)
        take("FORWARDER_ENQUEUE_TIMEOUT", "enqueue_timeout", parse_duration)
        take("FORWARDER_SPOOL_PATH", "spool_path", str)
        take("FORWARDER_SPOOL_MAX_MB", "spool_max_mb", _parse_float)
        take("FORWARDER_SHUTDOWN_TIMEOUT", "shutdown_timeout", parse_duration)
        take("FORWARDER_CONCURRENCY", "concurrency", _parse_int)
        take("FORWARDER_LOG_FORMAT", "log_format", str)
        take("FORWARDER_BREAKER_CONSECUTIVE", "breaker_consecutive", _parse_int)
        take("FORWARDER_BREAKER_RATIO", "breaker_ratio", _parse_float)
        take("FORWARDER_BREAKER_MIN_REQUESTS", "breaker_min_requests", _parse_int)
        take("FORWARDER_BREAKER_WINDOW", "breaker_window", parse_duration)
        take("FORWARDER_BREAKER_COOLDOWN_MIN", "breaker_cooldown_min", parse_duration)
        take("FORWARDER_BREAKER_COOLDOWN_MAX", "breaker_cooldown_max", parse_duration)
        take("FORWARDER_RATE_LIMIT", "rate_limit", _parse_float)
        take("FORWARDER_DLQ_TTL", "dlq_ttl", parse_duration)
        take("FORWARDER_METRICS_PORT", "metrics_port", _parse_int)
        take("FORWARDER_METRICS_BIND", "metrics_bind", str)
        take("FORWARDER_WORKER_TIMEOUT", "worker_timeout", parse_duration)
        take("FORWARDER_RELAY_KEYS", "relay_keys", parse_keys)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if problems:
            # Report conversion problems together with rule problems below.
            try:
                cls(**values).validate()
            except ConfigError as exc:
                problems.extend(exc.problems)
            raise ConfigError(problems)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError listing every rule this configuration breaks."""
        problems: list[str] = []
        try:
            url = urlsplit(self.api_url)
            url_problem = url.scheme not in {"http", "https"} or not url.hostname
            url.port  # noqa: B018  (a port that is not a number raises here)
        except ValueError:
            url, url_problem = None, True
        if url_problem:
            problems.append(f"DISTINCT_API_URL: {mask_url(self.api_url)!r} must be an "
                            "http(s) URL with a host")
        elif url is not None and (url.username is not None or url.password is not None):
            problems.append(f"DISTINCT_API_URL: {mask_url(self.api_url)!r} must not carry "
                            "user:password@; the key goes in DISTINCT_API_KEY")
        if self.api_key is not None and not _SECRET_CHARS.match(self.api_key):
            problems.append("DISTINCT_API_KEY: must be printable ASCII without spaces or "
                            "control characters (what a header can carry)")
        if urlsplit(self.redis_url).scheme not in {"redis", "rediss", "unix", "sentinel"}:
            problems.append(
                f"REDIS_URL: {mask_url(self.redis_url)!r} must start with redis://, "
                "rediss://, unix:// or sentinel://"
            )
        elif self.redis_url.startswith("sentinel://"):
            try:
                parse_sentinel_url(self.redis_url)
            except ValueError as exc:
                problems.append(f"REDIS_URL: {exc}")
        elif re.search(r"[?&]ssl_cert_reqs=(?!(none|optional|required)(&|$))", self.redis_url):
            problems.append("REDIS_URL: ssl_cert_reqs must be none, optional or required")
        if self.experience is not None and not is_valid_slug(self.experience):
            problems.append(
                f"DISTINCT_EXPERIENCE: {self.experience!r} must match [A-Za-z0-9._-]{{1,128}}"
            )
        if not NAMESPACE_RE.match(self.namespace):
            problems.append(
                f"FORWARDER_NAMESPACE: {self.namespace!r} must match [A-Za-z0-9._-]{{1,64}}"
            )
        positive = {
            "FORWARDER_CONNECT_TIMEOUT": self.connect_timeout,
            "FORWARDER_READ_TIMEOUT": self.read_timeout,
            "FORWARDER_BACKOFF_BASE": self.backoff_base,
            "FORWARDER_BACKOFF_CAP": self.backoff_cap,
            "FORWARDER_MAX_AGE": self.max_age,
            "FORWARDER_DEDUPE_TTL": self.dedupe_ttl,
            "FORWARDER_ENQUEUE_TIMEOUT": self.enqueue_timeout,
            "FORWARDER_SPOOL_MAX_MB": self.spool_max_mb,
            "FORWARDER_SHUTDOWN_TIMEOUT": self.shutdown_timeout,
        }
        problems += [f"{var}: must be greater than 0" for var, v in positive.items() if v <= 0]
        if self.retry_after_cap < 0:
            problems.append("FORWARDER_RETRY_AFTER_CAP: must be 0 or more")
        if self.backoff_cap < self.backoff_base:
            problems.append("FORWARDER_BACKOFF_CAP: must be at least FORWARDER_BACKOFF_BASE")
        if self.max_attempts < 1:
            problems.append("FORWARDER_MAX_ATTEMPTS: must be at least 1")
        if not 1 <= self.concurrency <= 512:
            problems.append("FORWARDER_CONCURRENCY: must be between 1 and 512")
        if self.connect_timeout + self.read_timeout >= C.MAX_REQUEST_SECONDS:
            problems.append(
                "FORWARDER_CONNECT_TIMEOUT + FORWARDER_READ_TIMEOUT: must stay under "
                f"{C.MAX_REQUEST_SECONDS:.0f} s (longer is a stuck connection, and the "
                "event's claim would block it as long)"
            )
        problems += self._scale_problems()
        problems += key_problems("FORWARDER_RELAY_KEYS", self.relay_keys)
        if self.log_format not in {"text", "json"}:
            problems.append(f"FORWARDER_LOG_FORMAT: {self.log_format!r} must be text or json")
        if problems:
            raise ConfigError(problems)

    def _scale_problems(self) -> list[str]:
        problems = []
        if self.breaker_consecutive < 1:
            problems.append("FORWARDER_BREAKER_CONSECUTIVE: must be at least 1")
        if not 0 < self.breaker_ratio <= 1:
            problems.append("FORWARDER_BREAKER_RATIO: must be above 0 and at most 1")
        if self.breaker_min_requests < 1:
            problems.append("FORWARDER_BREAKER_MIN_REQUESTS: must be at least 1")
        if self.breaker_window < 1:
            problems.append("FORWARDER_BREAKER_WINDOW: must be at least 1 s")
        if self.breaker_cooldown_min <= 0:
            problems.append("FORWARDER_BREAKER_COOLDOWN_MIN: must be greater than 0")
        if self.breaker_cooldown_max < self.breaker_cooldown_min:
            problems.append(
                "FORWARDER_BREAKER_COOLDOWN_MAX: must be at least FORWARDER_BREAKER_COOLDOWN_MIN"
            )
        if self.rate_limit is not None and self.rate_limit <= 0:
            problems.append("FORWARDER_RATE_LIMIT: must be greater than 0 (unset for no limit)")
        if self.dlq_ttl <= 0:
            problems.append("FORWARDER_DLQ_TTL: must be greater than 0")
        if not 1 <= self.worker_timeout <= 3600:
            problems.append("FORWARDER_WORKER_TIMEOUT: must be between 1 s and 1 h")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            problems.append("FORWARDER_METRICS_PORT: must be a TCP port (1-65535)")
        if not re.fullmatch(r"[0-9A-Za-z.:-]{1,255}", self.metrics_bind):
            problems.append("FORWARDER_METRICS_BIND: must be an IP address or host name")
        return problems

    def require_delivery(self) -> None:
        """Raise ConfigError unless this configuration can POST to Distinct."""
        if not self.api_key:
            raise ConfigError(["DISTINCT_API_KEY: required to deliver events (workers)"])

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with some fields replaced."""
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        settings.validate()
        return settings

    def masked(self) -> dict[str, Any]:
        """The effective configuration, safe to print or log."""
        shown = asdict(self)
        shown["api_key"] = mask_secret(self.api_key)
        shown["api_url"] = mask_url(self.api_url)
        shown["redis_url"] = mask_url(self.redis_url)
        shown["relay_keys"] = [f"{name}={fingerprint(key)}" for name, key in
                               relay_key_names(self.relay_keys)]
        return shown

    def secrets(self) -> list[str]:
        """Every secret of this configuration, for the logs' last line of defence."""
        found = [s for s in (self.api_key, *self.relay_keys) if s]
        for url in (self.redis_url, self.api_url):
            try:
                parts = urlsplit(url)
                found += [p for p in (parts.password,) if p]
            except ValueError:
                continue
            found += [m.group(2) for m in QUERY_PASSWORD_RE.finditer(url) if m.group(2)]
        return sorted(set(found), key=len, reverse=True)

    def __repr__(self) -> str:
        # Never let a traceback or a debug log print the key or the password.
        inner = ", ".join(f"{f.name}={self.masked()[f.name]!r}" for f in fields(self))
        return f"Settings({inner})"


def parse_keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys (``name:key`` or ``key``); blanks around commas are dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def relay_key_names(keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """(client name, key) for each relay key: ``name:key``, or the key's fingerprint
    as its name when none is given. The name scopes a client's idempotency keys."""
    named = []
    for entry in keys:
        name, colon, key = entry.partition(":")
        if colon and _CLIENT_NAME.match(name):
            named.append((name, key))
        else:
            named.append((fingerprint(entry), entry))
    return named


def key_problems(var: str, keys: tuple[str, ...]) -> list[str]:
    """What is wrong with the ``name:key`` list in ``var`` (relay or console keys)."""
    # Never name the key itself: the problem list is printed and logged. Two
    # keys may share a client name: that is how a key is rotated.
    problems = []
    for i, (_, key) in enumerate(relay_key_names(keys), 1):
        if len(key) < C.RELAY_KEY_MIN_LENGTH:
            problems.append(f"{var}: key #{i} is shorter than "
                            f"{C.RELAY_KEY_MIN_LENGTH} characters")
        if not _SECRET_CHARS.match(key):
            problems.append(f"{var}: key #{i} must be printable ASCII without "
                            "spaces or control characters")
    return problems


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
