"""What 0.1 wrote to Redis, for the upgrade tests: Celery messages carrying events.

A copy of 0.1's ``forwarder.messages.build_message``, kept here (not in the
package) because only the tests still produce this format.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any


def legacy_message(events: list[dict[str, Any]]) -> str:
    """The Celery message a 0.1 producer LPUSHed for ``distinct.deliver(events)``."""
    task_id = os.urandom(16).hex()
    body = json.dumps([[events], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                      "chord": None}], separators=(",", ":"))
    return json.dumps({
        "headers": {"lang": "py", "task": "distinct.deliver", "id": task_id,
                    "x_forwarder_events": len(events), "retries": 0, "root_id": task_id,
                    "argsrepr": "[...]", "kwargsrepr": "{}", "ignore_result": True,
                    "redelivered": False},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "deliver"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": os.urandom(16).hex()},
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8", "content-type": "application/json",
    }, separators=(",", ":"))
