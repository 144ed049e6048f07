"""The console's Flask application: configuration, security headers, the login gate.

Flask (with Jinja2, autoescaping every template) renders the pages on the
server, so every action is a plain link or form that works without
JavaScript; ``static/console.js`` only adds live refresh and "select all".
Flask-WTF's CSRFProtect checks a token on every POST. The session cookie is
``__Host-``-prefixed, Secure, HttpOnly and SameSite=Strict, signed with a
key made when the process starts (a restart logs everyone out).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from flask import Flask, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from forwarder import constants as C
from forwarder.config import Settings
from forwarder.console import display
from forwarder.console.access import ConsoleKeys, current_operator
from forwarder.console.audit import AuditLog
from forwarder.console.jobs import Jobs
from forwarder.masking import mask_url
from forwarder.store import Store, connect, redis_error_text

log = logging.getLogger("distinct_forwarder.console")
#: Pages anyone may open: the probe, the login form and the style sheet.
OPEN_ENDPOINTS = {"pages.healthz", "pages.login", "static"}
#: A form posts a few hundred ids at most.
MAX_FORM_BYTES = 256 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class Console:
    """What every request works with: settings, keys, Redis, the audit log, jobs."""

    def __init__(self, settings: Settings, keys: ConsoleKeys, store: Store):
        self.settings = settings
        self.keys = keys
        self.store = store
        self.audit = AuditLog(store)
        self.jobs = Jobs(store, self.audit, settings.redis_url)


def create_app(settings: Settings, keys: ConsoleKeys, store: Store | None = None) -> Flask:
    """The console for one namespace; ``keys`` decide who may log in."""
    from forwarder.console import letters, pages

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.urandom(32),
        SESSION_COOKIE_NAME="__Host-console",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=C.CONSOLE_SESSION_SECONDS,
        WTF_CSRF_TIME_LIMIT=C.CONSOLE_SESSION_SECONDS,
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_FORM_BYTES,
        JSON_SORT_KEYS=False,
    )
    store = store or Store(connect(settings.redis_url, timeout=5.0), settings.namespace,
                           dedupe_ttl=settings.dedupe_ttl)
    app.extensions["console"] = Console(settings, keys, store)
    CSRFProtect(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(letters.bp)
    app.jinja_env.filters.update(utc=display.utc, ago=display.ago, when=display.when,
                                 number=display.number, seconds=display.seconds,
                                 duration=display.duration)
    app.jinja_env.autoescape = True

    @app.before_request
    def gate() -> Response | None:
        g.now = time.time()
        g.operator = current_operator()
        if request.endpoint in OPEN_ENDPOINTS or g.operator is not None:
            return None
        if request.method in ("GET", "HEAD"):
            return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
        return error_page(401, "Log in first: your session has ended.")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def shared() -> dict[str, Any]:
        return {"operator": g.get("operator"), "namespace": settings.namespace,
                "redis_shown": mask_url(settings.redis_url), "now": g.get("now", time.time())}

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Response:
        log.warning("console: refused a POST to %s without a valid CSRF token (%s)",
                    request.path, exc.description)
        return error_page(400, "This form's security token is missing or has expired. "
                               "Nothing was changed: go back, reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error_page(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> Response:
        log.warning("console: %s", redis_error_text(exc, settings.redis_url))
        return error_page(503, redis_error_text(exc, settings.redis_url))

    return app


def error_page(status: int, message: str) -> Response:
    titles = {400: "Bad request", 401: "Not logged in", 403: "Not allowed",
              404: "Not found", 405: "Method not allowed", 413: "Too large",
              503: "Redis is not answering"}
    body = render_template("error.html", status=status, title=titles.get(status, "Error"),
                           message=message)
    return Response(body, status=status, mimetype="text/html")
