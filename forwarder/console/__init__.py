"""The operator console: ``distinct-forwarder console``, a web page for incidents.

It shows what workers publish in Redis (queue, retry set, breaker, live
workers, per-minute outcome counters), browses and filters the dead-letter
queue, and replays, purges and exports entries through ``forwarder/dlq.py``,
the same code as ``distinct-forwarder dlq``. It never imports ``workers/``.

Modules: ``app`` (the Flask application: configuration, security headers,
the login gate, errors), ``access`` (keys, roles, sessions), ``pages``
(overview, find, audit, login), ``letters`` (dead letters, replays, purges,
exports), ``filters`` (query strings to dlq selectors), ``jobs`` (replays
running beside the requests), ``audit``, ``locate`` (where an event is),
``chart`` and ``display`` (what the templates show). docs/console.md is the
operator's guide.
"""
