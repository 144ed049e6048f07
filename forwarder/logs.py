"""Logging helpers: emails masked, secrets never printed, optional JSON lines."""

from __future__ import annotations

import json
import logging
import re
import time

_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_email(text: str) -> str:
    """``john.doe@example.com`` -> ``j***@example.com``, anywhere in ``text``."""
    return _EMAIL_RE.sub(r"\1***@\2", text)


class MaskingFilter(logging.Filter):
    """Masks emails in every record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logged as it is
            return True
        masked = mask_email(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def install(log_format: str = "text", level: int = logging.INFO) -> None:
    """Mask emails on every handler of the root logger; JSON lines if asked."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level)
    for handler in root.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
