"""The console's audit log: who replayed, purged, revealed or exported what.

One Redis list under the namespace (``CONSOLE_AUDIT``), newest first, trimmed
to ``CONSOLE_AUDIT_MAX`` records in the same step that adds one; each record
also goes to the log. A record names the operator (the name their key
carries, never the key), the selection and how many entries it touched.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from forwarder import constants as C
from forwarder.console.access import Operator
from forwarder.store import Store, text

log = logging.getLogger("distinct_forwarder.console")
#: The longest selection text kept in a record.
SELECTION_MAX = 500


class AuditLog:
    def __init__(self, store: Store):
        self.client = store.client
        self.key = C.key(store.namespace, C.CONSOLE_AUDIT)

    def record(self, who: Operator, action: str, selection: str, count: int,
               outcome: str = "") -> dict[str, Any]:
        entry = {"at": time.time(), "who": who.name, "role": who.role, "action": action,
                 "selection": selection[:SELECTION_MAX], "count": int(count),
                 "outcome": outcome[:SELECTION_MAX]}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, json.dumps(entry, separators=(",", ":")))
            pipe.ltrim(self.key, 0, C.CONSOLE_AUDIT_MAX - 1)
            pipe.execute()
        log.info("console audit: %s %s by %s (%s): %s entries%s", action, entry["selection"],
                 who.name, who.role, count, f", {outcome}" if outcome else "")
        return entry

    def recent(self, start: int = 0, count: int = 10) -> list[dict[str, Any]]:
        """Records from position ``start`` (0 is the newest)."""
        return [_record(raw) for raw in self.client.lrange(self.key, start, start + count - 1)]

    def size(self) -> int:
        return int(self.client.llen(self.key))


def _record(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("at"), (int, float)):
        # Not what the console writes (edited by hand?): shown as unreadable.
        return {"at": None, "who": "?", "role": "?", "action": "unreadable",
                "selection": text(raw)[:80], "count": 0, "outcome": ""}
    return value
