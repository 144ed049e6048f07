"""Worker side of distinct-forwarder: the Celery app and delivery to Distinct.

``celery -A workers worker`` finds ``app`` here. ``app`` is built on first
access (it reads the configuration from the environment), so the supervisor
of ``python -m workers`` never builds one.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module("workers.app"), name)
    # Importing the submodule bound `workers.app` to it; the package's `app`
    # is the Celery app, as Celery's `-A workers` expects.
    globals()[name] = value
    return value
