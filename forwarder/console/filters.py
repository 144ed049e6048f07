"""The dead-letter filter as the console takes it: query strings to a dlq Selector.

The fields are the CLI's selectors (``--reason``, ``--status``, ``--type``,
``--experience``, ``--since``, ``--until``, ``--search``) under the same
names, checked here because they come from a browser: a bad value is an
error naming the field and the rule, shown beside that field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from forwarder.config import is_valid_slug
from forwarder.dlq import Selector, parse_moment
from forwarder.messages import is_event_id
from forwarder.store import DLQ_REASONS

FIELDS = ("reason", "status", "type", "experience", "since", "until", "search")
#: The most entries one form selects by id (a page shows at most 200).
MAX_SELECTED = 500
SEARCH_MAX = 128
TYPE_RE = re.compile(r"^[A-Za-z_]{1,64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Filter:
    """A filter as given (for the form and the links) and as a Selector."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    selector: Selector = field(default_factory=Selector)

    @property
    def empty(self) -> bool:
        return not self.values

    def query(self, **extra: object) -> str:
        """The filter as a query string (``extra`` added), for links."""
        pairs = [(k, v) for k, v in self.values.items()]
        pairs += [(k, str(v)) for k, v in extra.items() if v is not None]
        return urlencode(pairs)

    def describe(self) -> str:
        """What the filter selects, in words, for confirmations and the audit log."""
        if not self.values:
            return "every entry"
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


def parse_filter(args: Mapping[str, str]) -> Filter:
    """The filter in ``args`` (a query string or a form); unknown names are ignored."""
    result = Filter()
    selector = result.selector
    for name in FIELDS:
        raw = args.get(name)
        value = raw.strip() if isinstance(raw, str) else ""
        if not value:
            continue
        problem = _check(name, value, selector)
        if problem:
            result.errors[name] = problem
        result.values[name] = value[:SEARCH_MAX * 2]
    return result


def _check(name: str, value: str, selector: Selector) -> str | None:
    """Put ``value`` in ``selector``; the rule it breaks, if it does."""
    if _CONTROL.search(value):
        return "must not contain control characters"
    if name == "reason":
        if value not in DLQ_REASONS:
            return f"must be one of {', '.join(DLQ_REASONS)}"
        selector.reason = value
    elif name == "status":
        if not value.isdigit() or not 100 <= int(value) <= 599:
            return "must be an HTTP status, 100 to 599"
        selector.status = int(value)
    elif name == "type":
        if not TYPE_RE.match(value):
            return "must be an event type such as PHOTO_VIEWED_BY_USER or user_analytics"
        selector.event_type = value
    elif name == "experience":
        if not is_valid_slug(value):
            return "must be an experience slug: [A-Za-z0-9._-], 1 to 128 characters"
        selector.experience = value
    elif name in ("since", "until"):
        try:
            moment = parse_moment(value[:64])
        except ValueError as exc:
            return str(exc)
        setattr(selector, name, moment)
    elif name == "search":
        if len(value) > SEARCH_MAX:
            return f"must be at most {SEARCH_MAX} characters"
        selector.search = value
    return None


def parse_ids(values: Iterable[str]) -> tuple[list[str], str | None]:
    """Entry ids from a form's checkboxes, and the problem with them if any."""
    ids = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not ids:
        return [], "select at least one entry"
    if len(ids) > MAX_SELECTED:
        return [], f"select at most {MAX_SELECTED} entries at once (or use the filter)"
    bad = next((i for i in ids if not is_event_id(i)), None)
    if bad is not None:
        return [], f"{bad[:40]!r} is not an entry id (a lower-case UUID)"
    return ids, None


def describe_ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:3])
    return f"{len(ids)} selected: {shown}" + (f" +{len(ids) - 3} more" if len(ids) > 3 else "")
