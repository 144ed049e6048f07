"""Logging: emails masked, secrets never printed, optional JSON lines.

Masking happens on the way out of every handler, on the whole formatted
record: the message, a logged exception's traceback and, in JSON logs, every
string of the ``fields``. Secrets the process knows (the API key, the relay
keys, passwords in URLs) are replaced by their fingerprints as a last line of
defence; nothing should carry them to a log line in the first place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from forwarder.masking import mask_email, scrub

__all__ = ["JsonFormatter", "MaskingFormatter", "install", "mask_email"]


def _mask(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return scrub(mask_email(value), secrets)
    if isinstance(value, list):
        return [_mask(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v, secrets) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; every string masked."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(_mask(line, self.secrets), default=str)


class MaskingFormatter(logging.Formatter):
    """Wraps a handler's formatter: its whole output (traceback included) masked."""

    def __init__(self, inner: logging.Formatter | None, secrets: Iterable[str] = ()):
        super().__init__()
        self.inner = inner or logging.Formatter(logging.BASIC_FORMAT)
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return str(_mask(self.inner.format(record), self.secrets))


def install(log_format: str = "text", level: int = logging.INFO,
            secrets: Iterable[str] = ()) -> None:
    """Mask every handler of the root logger; JSON lines if asked."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level)
    known = tuple(secrets)
    for handler in root.handlers:
        current = handler.formatter
        if log_format == "json":
            handler.setFormatter(JsonFormatter(known))
        elif isinstance(current, MaskingFormatter):
            current.secrets = tuple(sorted({*current.secrets, *known}, key=len, reverse=True))
        else:
            handler.setFormatter(MaskingFormatter(current, known))
