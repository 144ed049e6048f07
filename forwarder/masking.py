"""What is shown of secrets, URLs and emails: one place for every mask.

- A secret (the API key, relay keys) is shown by its fingerprint, never by
  any of its characters.
- A URL's password (in the userinfo or a ``password=`` query) is ``***``.
- An email keeps its first character and its domain: ``j***@example.com``.
  Anything before an ``@`` that an email's local part can hold is masked,
  quoted local parts and non-ASCII included, in text and JSON logs and in
  logged exceptions alike (forwarder/logs.py).
- A phone number (E.164, as the schema takes it) keeps its first three and
  last two characters: ``+14*******71``. Dead letters shown to an operator
  (``dlq show``, the console) mask both until an explicit reveal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

QUERY_PASSWORD_RE = re.compile(r"((?:^|[?&])password=)([^&#]*)")
#: What can stand before an "@" in an address the schema accepts: a quoted
#: local part, or a run of anything but whitespace, separators and quotes.
_EMAIL_RE = re.compile(
    r'(?:"(?:[^"\\\r\n]|\\.)+"|[^\s@<>()\[\],;:"\'`/\\]+)@'
    r"([^\s@<>()\[\],;:\"'`/\\]+\.[^\s@<>()\[\],;:\"'`/\\.]{2,})")


#: A phone number as the schema accepts it (E.164), not inside a longer run of digits.
_PHONE_RE = re.compile(r"(?<![\w+])\+[1-9]\d{6,14}(?!\d)")


def fingerprint(secret: str) -> str:
    """A secret's fingerprint: tells two apart, gives nothing of either away."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def mask_secret(value: str | None) -> str:
    """How a secret is shown (``config``, logs): its fingerprint, never a character of it."""
    return fingerprint(value) if value else "(unset)"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    # redis-py also takes the password as a query parameter.
    url = QUERY_PASSWORD_RE.sub(r"\1***", url)
    parts = parts._replace(query=QUERY_PASSWORD_RE.sub(r"\1***", parts.query))
    if parts.password is None:
        return url
    user = parts.username or ""
    # Everything after the '@' as written: also right for a sentinel:// list
    # of hosts, where ``parts.port`` cannot be parsed.
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def mask_email(text: str) -> str:
    """Every address in ``text`` as ``j***@example.com`` (its first character, its domain)."""
    return _EMAIL_RE.sub(_mask_one, text)


def mask_phone(text: str) -> str:
    """Every E.164 phone number in ``text`` as ``+14*******71``."""
    return _PHONE_RE.sub(lambda m: m.group(0)[:3] + "*" * (len(m.group(0)) - 5)
                         + m.group(0)[-2:], text)


def mask_personal(text: str) -> str:
    """``text`` with its emails and phone numbers masked."""
    return mask_phone(mask_email(text))


def _mask_one(match: re.Match[str]) -> str:
    local = match.group(0)[: match.start(1) - match.start(0) - 1]
    first = local[1] if local.startswith('"') and len(local) > 1 else local[:1]
    return f"{first}***@{match.group(1)}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by its fingerprint."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, fingerprint(secret))
    return text
