"""The ``distinct-forwarder`` command.

Exit codes: 0 ok, 1 failure, 2 bad input (click's usage errors included).
``--redis-url`` and ``--namespace`` are shared by every command and default
to ``REDIS_URL`` and ``FORWARDER_NAMESPACE``. Each command group lives in a
module of its own and registers itself on ``cli`` when imported here.
"""

from forwarder.cli import (  # noqa: F401  (registers commands)
    console,
    dev,
    dlq,
    events,
    health,
    ops,
    relay,
    spool,
)
from forwarder.cli.base import cli, main

__all__ = ["cli", "main"]
