"""How the console shows times and numbers: UTC with a relative time beside it."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from markupsafe import Markup, escape


def utc(ts: float | None) -> str:
    """``2026-12-02 14:03:11 UTC``; ``-`` for no time."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``: two units at most."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def ago(ts: float | None, now: float | None = None) -> str:
    """``3 min ago`` or ``in 12 s``, from ``now``."""
    if ts is None:
        return ""
    delta = (time.time() if now is None else now) - float(ts)
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(delta)}"


def when(ts: float | None, now: float | None = None) -> Markup:
    """A ``<time>`` element: the UTC time, then the relative time in brackets."""
    if ts is None:
        return Markup("-")
    return Markup('<time datetime="{}">{}</time> <span class="ago">({})</span>').format(
        iso(ts), utc(ts), ago(ts, now))


def number(value: int | float | None) -> str:
    """``12,345``; ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def seconds(value: float | None) -> Markup:
    """An age in seconds as words, ``-`` for none."""
    return Markup("-") if value is None else escape(duration(value))
