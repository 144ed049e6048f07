"""distinct-forwarder: capture analytics events into Redis; workers deliver them to Distinct.

``import forwarder`` loads neither Celery's worker side nor ``requests``, and
starts no thread.
"""

from forwarder.async_producer import AsyncForwarder
from forwarder.config import Settings
from forwarder.errors import (
    ConfigError,
    EnqueueError,
    EntryNotFound,
    ForwarderError,
    InvalidEvent,
)
from forwarder.producer import (
    Forwarder,
    capture,
    capture_many,
    default_forwarder,
    user_analytics,
)
from forwarder.schemas import CaptureEvent, UserAnalyticsEvent

__version__ = "0.2.0"

__all__ = [
    "AsyncForwarder",
    "CaptureEvent",
    "ConfigError",
    "EnqueueError",
    "EntryNotFound",
    "Forwarder",
    "ForwarderError",
    "InvalidEvent",
    "Settings",
    "UserAnalyticsEvent",
    "__version__",
    "capture",
    "capture_many",
    "default_forwarder",
    "user_analytics",
]
