"""Overview, find an event, the audit log, log in and out, and the health probe."""

from __future__ import annotations

import logging
import re
from typing import Any, cast

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from forwarder.console import chart, locate
from forwarder.console.access import log_in, log_out, operator, safe_next
from forwarder.console.app import Console
from forwarder.status import collect

log = logging.getLogger("distinct_forwarder.console")
bp = Blueprint("pages", __name__)
#: The overview refreshes itself this often (seconds) when scripts run.
REFRESH_SECONDS = 3
AUDIT_PAGE = 100
QUERY_MAX = 256
#: A relay client's name: as given in FORWARDER_RELAY_KEYS, or a bare key's
#: fingerprint (``sha256:...``).
CLIENT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,80}\Z")


def console() -> Console:
    return cast(Console, current_app.extensions["console"])


@bp.get("/healthz")
def healthz() -> Response:
    """For probes: the process answers. No login, nothing about Redis or events."""
    return jsonify(status="ok")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = safe_next(request.args.get("next"))
    if request.method == "GET":
        if g.operator is not None:
            return redirect(target)
        return render_template("login.html", error=None)
    found = console().keys.operator(request.form.get("key", "")[:1024])
    if found is None:
        log.warning("console: refused a login with an unknown key from %s", request.remote_addr)
        return render_template("login.html", error="That key is not one the console "
                               "accepts. Keys come from FORWARDER_CONSOLE_KEYS (or "
                               "FORWARDER_CONSOLE_READONLY_KEYS)."), 401
    log_in(found)
    log.info("console: %s logged in (%s) from %s", found.name, found.role, request.remote_addr)
    return redirect(target)


@bp.post("/logout")
def logout() -> Response:
    log_out()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.login"))


def _overview_data() -> dict[str, Any]:
    c = console()
    report = collect(c.settings, c.store)
    return {"report": report, "chart": chart.build(c.store.outcome_series(g.now, 60)),
            "audit": c.audit.recent(0, 10), "jobs": c.jobs.recent(5),
            "retry_later": report["retry"] - report["retry_due_now"],
            "refresh": REFRESH_SECONDS}


@bp.get("/")
def overview() -> Any:
    data = _overview_data()
    if request.args.get("part") == "live":
        return render_template("_live.html", **data)
    return render_template("overview.html", nav="overview", **data)


@bp.get("/find")
def find() -> Any:
    query = (request.args.get("q") or "").strip()
    client = (request.args.get("client") or "").strip() or None
    error = None
    result = how = None
    if len(query) > QUERY_MAX:
        error = f"q: at most {QUERY_MAX} characters"
    elif client is not None and not CLIENT_RE.match(client):
        error = "client: a relay client's name, [A-Za-z0-9._:-], 1 to 80 characters"
    elif any(ord(ch) < 32 for ch in query):
        error = "q: must not contain control characters"
    elif query:
        event_id, how = locate.event_id_of(query, client)
        result = locate.locate(console().store, event_id)
    status = 400 if error else 200
    return render_template("find.html", nav="find", query=query, client=client or "",
                           error=error, result=result, how=how,
                           dedupe_ttl=console().settings.dedupe_ttl), status


@bp.get("/audit")
def audit() -> Any:
    try:
        start = max(0, min(int(request.args.get("start", "0")), 10**6))
    except ValueError:
        start = 0
    log_ = console().audit
    size = log_.size()
    return render_template("audit.html", nav="audit", records=log_.recent(start, AUDIT_PAGE),
                           start=start, size=size, page=AUDIT_PAGE, who=operator())
