"""Dead letters: the filtered table, one entry, replay, purge, export, replay jobs.

Selections come from a filter (the CLI's selectors) or from ticked entries;
``forwarder/dlq.py`` resolves, replays, purges and exports them, as it does
for ``distinct-forwarder dlq``. Every replay and purge, and every reveal and
export, is written to the audit log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from forwarder import dlq
from forwarder.console.access import changer, operator
from forwarder.console.filters import Filter, describe_ids, parse_filter, parse_ids
from forwarder.console.pages import console
from forwarder.masking import mask_personal
from forwarder.messages import is_event_id

bp = Blueprint("letters", __name__)
PAGE_SIZES = (25, 50, 100, 200)
#: A dry run checks this many ids against the dedupe window at most.
DRY_RUN_CHECKS = 10_000


def _selection() -> tuple[dlq.Selector, str, Filter, list[str]]:
    """The selection a confirmation or action form carries: ticked ids, or a filter."""
    flt = parse_filter(request.form if request.method == "POST" else request.args)
    source = request.form if request.method == "POST" else request.args
    if source.getlist("ids"):
        ids, problem = parse_ids(source.getlist("ids"))
        if problem:
            abort(400, description=f"ids: {problem}")
        return dlq.Selector(ids=ids), describe_ids(ids), flt, ids
    if flt.errors:
        abort(400, description="; ".join(f"{k}: {v}" for k, v in flt.errors.items()))
    return flt.selector, flt.describe(), flt, []


@bp.get("/dead-letters")
def table() -> Any:
    flt = parse_filter(request.args)
    size = _int(request.args.get("size"), 50)
    size = size if size in PAGE_SIZES else 50
    start = max(0, min(_int(request.args.get("start"), 0), 10**9))
    page = None if flt.errors else flt.selector.page(console().store, start, size)
    return render_template("dead_letters.html", nav="letters", flt=flt, page=page,
                           size=size, sizes=PAGE_SIZES, by_reason=console().store
                           .dlq_depth_by_reason(), total=console().store.dlq_depth(),
                           ), 400 if flt.errors else 200


@bp.get("/dead-letters/<entry_id>")
def entry(entry_id: str) -> Any:
    return _entry_page(entry_id, reveal=False)


@bp.post("/dead-letters/<entry_id>/reveal")
def reveal(entry_id: str) -> Any:
    return _entry_page(entry_id, reveal=True)


def _entry_page(entry_id: str, reveal: bool) -> Any:
    if not is_event_id(entry_id):
        abort(404, description="Not an entry id (a lower-case UUID).")
    found = console().store.dlq_get([entry_id])[0]
    if found is None:
        abort(404, description=f"No dead-letter entry {entry_id}: replayed, purged or "
                               "expired. Find the event to see where it is now.")
    if reveal:
        console().audit.record(operator(), "reveal", f"entry {entry_id}", 1)
    shown = json.dumps(found, indent=2, sort_keys=True, ensure_ascii=False)
    body = json.dumps(found.get("body"), indent=2, sort_keys=True, ensure_ascii=False)
    detail = str(found.get("last_error") or "")
    if not reveal:
        shown, body, detail = mask_personal(shown), mask_personal(body), mask_personal(detail)
    return render_template("entry.html", nav="letters", entry=found, body=body,
                           whole=shown, detail=detail, revealed=reveal)


@bp.post("/dead-letters/<entry_id>/replay")
def replay_one(entry_id: str) -> Response:
    who = changer()
    if not is_event_id(entry_id):
        abort(404)
    report = dlq.replay(console().store, [entry_id])
    outcome = ("replayed" if report.replayed else
               "skipped: its event was already delivered" if report.skipped else
               "not found: replayed, purged or expired meanwhile")
    console().audit.record(who, "replay", f"entry {entry_id}", len(report.replayed), outcome)
    flash(f"Entry {entry_id}: {outcome}.", "info")
    return redirect(url_for("pages.find", q=entry_id))


@bp.route("/dead-letters/replay", methods=["GET", "POST"])
def replay() -> Any:
    """GET: the dry run (what a replay would do). POST with ``confirm``: start it."""
    selector, selection, flt, ids = _selection()
    if request.method == "POST" and request.form.get("confirm") == "replay":
        job_id = console().jobs.start(changer(), selector, selection)
        return redirect(url_for("letters.job", job_id=job_id))
    store = console().store
    targets = selector.resolve(store)
    checked = targets[:DRY_RUN_CHECKS]
    delivered = sum(1 for i in checked if store.is_delivered(i))
    return render_template("confirm_replay.html", nav="letters", flt=flt, ids=ids,
                           selection=selection, count=len(targets), delivered=delivered,
                           checked=len(checked), can_change=operator().can_change)


@bp.route("/dead-letters/purge", methods=["GET", "POST"])
def purge() -> Any:
    """GET: what a purge would delete. POST: delete, once the count is typed back."""
    selector, selection, flt, ids = _selection()
    store = console().store
    targets = selector.resolve(store)
    error = None
    if request.method == "POST" and "typed" in request.form:
        who = changer()
        expected = _int(request.form.get("expected"), -1)
        typed = (request.form.get("typed") or "").strip().lower()
        if expected != len(targets):
            error = (f"The selection now matches {len(targets):,} entries, not "
                     f"{expected:,}: check it again.")
        elif len(targets) > 1 and typed != f"purge {len(targets)}":
            error = f"Type “purge {len(targets)}” to confirm."
        else:
            removed = dlq.purge(store, targets) if targets else 0
            console().audit.record(who, "purge", selection, removed,
                                   f"{len(targets) - removed} were already gone")
            flash(f"Purged {removed:,} entries ({selection}).", "info")
            return redirect(url_for("letters.table") + "?" + flt.query())
    return render_template("confirm_purge.html", nav="letters", flt=flt, ids=ids,
                           selection=selection, count=len(targets), error=error,
                           can_change=operator().can_change), 400 if error else 200


@bp.get("/dead-letters/export.jsonl")
def export() -> Response:
    selector, selection, _, _ = _selection()
    store = console().store
    targets = selector.resolve(store)
    console().audit.record(operator(), "export", selection, len(targets))

    def lines() -> Iterator[str]:
        for line in dlq.export_lines(store, targets):
            yield line + "\n"

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(g.now))
    return Response(lines(), mimetype="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="dead-letters-{stamp}.jsonl"'})


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> Any:
    found = console().jobs.get(job_id, g.now)
    if found is None:
        abort(404, description="No such replay: job records are kept for 7 days.")
    data = {"job": found, "delivered": console().jobs.delivered(found),
            "queue": console().store.queue_depth(), "retry": console().store.retry_depth()}
    if request.args.get("part") == "live":
        return render_template("_job.html", **data)
    return render_template("job.html", nav="letters", **data)


@bp.post("/jobs/<job_id>/again")
def job_again(job_id: str) -> Response:
    who = changer()
    found = console().jobs.get(job_id, g.now)
    if found is None:
        abort(404)
    if not found["final"]:
        abort(409, description="That replay is still running.")
    jobs = console().jobs
    new_id = jobs.start(who, jobs.selector(found), found.get("selection", ""), resumes=job_id)
    return redirect(url_for("letters.job", job_id=new_id))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
