"""`dlq`: list, show, replay, purge, export and import dead-lettered events.

Every bulk command takes the same selectors: entry ids, ``--all``,
``--reason``, ``--status``, ``--type``, ``--experience``, ``--since``,
``--until`` and ``--limit``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from forwarder import dlq as dlq_tools
from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.errors import EntryNotFound
from forwarder.masking import mask_personal
from forwarder.store import DLQ_REASONS

IMPORT_CHUNK = 500


@cli.group()
def dlq() -> None:
    """Inspect, replay, purge, export and import dead-lettered events.

    \b
    Example:
      distinct-forwarder dlq list --reason rejected --since 2h
    """


def _ts(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _moment(value: str | None, param: str) -> float | None:
    """``2h`` (that long ago) or an ISO-8601 time (UTC when it has no zone)."""
    if value is None:
        return None
    try:
        return dlq_tools.parse_moment(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def selector_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The selectors shared by list, replay, purge and export."""
    options = [
        click.argument("ids", nargs=-1),
        click.option("--all", "all_", is_flag=True, help="Every entry."),
        click.option("--reason", type=click.Choice(DLQ_REASONS), help="Only this reason."),
        click.option("--status", type=int, help="Only this last HTTP status, e.g. 400."),
        click.option("--type", "event_type",
                     help="Only this event type (e.g. PHOTO_VIEWED_BY_USER, user_analytics)."),
        click.option("--experience", help="Only this experience slug."),
        click.option("--since", help="Dead-lettered at or after: 2h (ago) or ISO-8601."),
        click.option("--until", help="Dead-lettered at or before: 30m (ago) or ISO-8601."),
        click.option("--limit", type=click.IntRange(min=1),
                     help="At most this many, oldest first."),
        click.option("--search", metavar="TEXT",
                     help="Only entries whose id or eventValue contains TEXT (any case)."),
    ]
    for option in reversed(options):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ids, all_ = kwargs.pop("ids"), kwargs.pop("all_")
        if ids and all_:
            raise click.UsageError("give entry ids or --all, not both")
        selector = dlq_tools.Selector(
            ids=list(ids) if ids else None, reason=kwargs.pop("reason"),
            status=kwargs.pop("status"), event_type=kwargs.pop("event_type"),
            experience=kwargs.pop("experience"), since=_moment(kwargs.pop("since"), "--since"),
            until=_moment(kwargs.pop("until"), "--until"), limit=kwargs.pop("limit"),
            search=kwargs.pop("search") or None,
        )
        bulk = not ids
        filtered = any(v is not None for v in (
            selector.reason, selector.status, selector.event_type, selector.experience,
            selector.since, selector.until, selector.limit, selector.search))
        return func(*args, selector=selector, bulk=bulk, chosen=bool(ids) or all_ or filtered,
                    **kwargs)

    return wrapper


def _require_choice(chosen: bool) -> None:
    if not chosen:
        raise click.UsageError("give entry ids, --all, or a selector such as --reason")


@dlq.command("list")
@selector_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def dlq_list(obj: Ctx, selector: dlq_tools.Selector, bulk: bool, chosen: bool,
             as_json: bool) -> None:
    """List dead-lettered events, oldest first (all of them unless selected).

    \b
    Examples:
      distinct-forwarder dlq list
      distinct-forwarder dlq list --status 400 --since 24h --json | jq .id
    """
    store = obj.store()
    try:
        rows = dlq_tools.entries(store, selector.resolve(store))
    except EntryNotFound as exc:
        raise click.BadParameter(str(exc), param_hint="IDS") from None
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("No dead-lettered events match." if chosen else
                   "The dead-letter queue is empty.")
        return
    click.echo(f"{'ID':36}  {'DEAD AT (UTC)':19}  {'REASON':9}  {'STATUS':6}  {'TRIES':5}  TYPE")
    for r in rows:
        kind = r.get("body", {}).get("type") if isinstance(r.get("body"), dict) else None
        click.echo(f"{r['id']:36}  {_ts(r.get('dead_at')):19}  {r.get('reason', '-'):9}  "
                   f"{r.get('last_status') or '-'!s:6}  {r.get('attempts', 0)!s:5}  "
                   f"{kind or r.get('kind')}")
    click.echo(f"{len(rows)} entries.")


@dlq.command("show")
@click.argument("entry_id")
@click.option("--reveal", is_flag=True, help="Show emails and phone numbers unmasked.")
@pass_ctx
def dlq_show(obj: Ctx, entry_id: str, reveal: bool) -> None:
    """Print one entry in full (emails and phone numbers masked unless --reveal).

    \b
    Example:
      distinct-forwarder dlq show 0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10
    """
    try:
        entry = dlq_tools.get(obj.store(), entry_id)
    except EntryNotFound as exc:
        raise click.BadParameter(str(exc), param_hint="ENTRY_ID") from None
    text = json.dumps(entry, indent=2, sort_keys=True)
    click.echo(text if reveal else mask_personal(text))


@dlq.command("replay")
@selector_options
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--rate", type=click.FloatRange(min=0.1), help="At most this many entries/s.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def dlq_replay(obj: Ctx, selector: dlq_tools.Selector, bulk: bool, chosen: bool,
               dry_run: bool, rate: float | None, as_json: bool) -> None:
    """Put entries' events back in the queue, with fresh attempts.

    An entry leaves the DLQ only once its event is queued; one whose event
    was delivered meanwhile is skipped. Interrupt it at any time and run it
    again to resume: replayed entries are no longer there to replay twice.

    \b
    Examples:
      distinct-forwarder dlq replay --all
      distinct-forwarder dlq replay --reason exhausted --rate 50 --dry-run
    """
    _require_choice(chosen)
    store = obj.store()
    targets = selector.resolve(store)
    if not targets:
        click.echo("Nothing to do.")
        return
    if dry_run:
        delivered = sum(store.is_delivered(i) for i in targets)
        click.echo(f"Would replay {len(targets) - delivered} entries and skip {delivered} "
                   f"whose events were already delivered. Nothing was changed.")
        return
    with click.progressbar(length=len(targets), label="Replaying", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        report = dlq_tools.replay(store, targets, on_progress=bar.update, rate=rate)
    counts = {"replayed": len(report.replayed), "skipped": len(report.skipped),
              "failed": len(report.missing)}
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"Replayed {counts['replayed']}, skipped {counts['skipped']} "
                   f"(already delivered), failed {counts['failed']} (not found).")
    if report.missing:
        sys.exit(1)


@dlq.command("purge")
@selector_options
@click.option("--yes", is_flag=True, help="Confirm a bulk purge.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
def dlq_purge(obj: Ctx, selector: dlq_tools.Selector, bulk: bool, chosen: bool,
              yes: bool, as_json: bool) -> None:
    """Delete entries for good (a bulk selector needs --yes).

    \b
    Examples:
      distinct-forwarder dlq purge 0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10
      distinct-forwarder dlq purge --reason rejected --until 7d --yes
    """
    _require_choice(chosen)
    if bulk and not yes:
        raise click.UsageError("a bulk purge deletes entries for good; add --yes to confirm")
    store = obj.store()
    targets = selector.resolve(store)
    removed = dlq_tools.purge(store, targets) if targets else 0
    if as_json:
        click.echo(json.dumps({"purged": removed, "not_found": len(targets) - removed}))
    else:
        click.echo(f"Purged {removed} entries." if removed else "Nothing to do.")
    if not bulk and removed < len(targets):
        click.echo(f"{len(targets) - removed} ids were not in the dead-letter queue.", err=True)
        sys.exit(1)


@dlq.command("export")
@selector_options
@click.option("--out", type=click.File("w"), default="-", help="JSONL file (default stdout).")
@pass_ctx
def dlq_export(obj: Ctx, selector: dlq_tools.Selector, bulk: bool, chosen: bool,
               out: Any) -> None:
    """Write entries as JSON lines (all of them unless selected); nothing is removed.

    \b
    Example:
      distinct-forwarder dlq export --reason rejected --out rejected.jsonl
    """
    store = obj.store()
    count = 0
    for line in dlq_tools.export_lines(store, selector.resolve(store)):
        out.write(line + "\n")
        count += 1
    click.echo(f"Exported {count} entries.", err=True)


@dlq.command("import")
@click.argument("file", type=click.File("r"))
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
def dlq_import(obj: Ctx, file: Any, as_json: bool) -> None:
    """Add entries from a JSONL file (from `dlq export`, maybe edited).

    Every line is checked first; nothing is imported if one is invalid.

    \b
    Example:
      distinct-forwarder dlq import rejected.jsonl && distinct-forwarder dlq replay --all
    """
    entries, errors = dlq_tools.parse_import(file)
    if errors:
        for error in errors:
            click.echo(error, err=True)
        sys.exit(2)
    store = obj.store()
    with click.progressbar(length=len(entries), label="Importing", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        for start in range(0, len(entries), IMPORT_CHUNK):
            chunk = entries[start:start + IMPORT_CHUNK]
            store.dlq_put(chunk)
            bar.update(len(chunk))
    if as_json:
        click.echo(json.dumps({"imported": len(entries)}))
    else:
        click.echo(f"Imported {len(entries)} entries.")
