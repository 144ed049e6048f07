"""Worker side of distinct-forwarder: the Celery app and delivery to Distinct.

``celery -A workers worker`` finds ``app`` here. Importing this package reads
the configuration from the environment.
"""

from workers.app import app, create_app

__all__ = ["app", "create_app"]
