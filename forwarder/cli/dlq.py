"""`dlq`: list, show, replay and purge dead-lettered events."""

from __future__ import annotations

import json
import sys
import time

import click

from forwarder import dlq as dlq_tools
from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.errors import EntryNotFound
from forwarder.logs import mask_email


# --- dlq ------------------------------------------------------------------------
@cli.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered events."""


def _ts(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _ids_or_all(ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if ids and all_:
        raise click.UsageError("give entry ids or --all, not both")
    if not ids and not all_:
        raise click.UsageError("give entry ids or --all")
    return None if all_ else list(ids)


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def dlq_list(obj: Ctx, as_json: bool) -> None:
    """List dead-lettered events, oldest first.

    \b
    Example:
      distinct-forwarder dlq list --json | jq .reason
    """
    rows = dlq_tools.entries(obj.store())
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("The dead-letter queue is empty.")
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
@click.option("--reveal", is_flag=True, help="Show emails unmasked.")
@pass_ctx
def dlq_show(obj: Ctx, entry_id: str, reveal: bool) -> None:
    """Print one entry in full (emails masked unless --reveal).

    \b
    Example:
      distinct-forwarder dlq show 0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10
    """
    try:
        entry = dlq_tools.get(obj.store(), entry_id)
    except EntryNotFound as exc:
        raise click.BadParameter(str(exc), param_hint="ENTRY_ID") from None
    text = json.dumps(entry, indent=2, sort_keys=True)
    click.echo(text if reveal else mask_email(text))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every entry.")
@pass_ctx
def dlq_replay(obj: Ctx, ids: tuple[str, ...], all_: bool) -> None:
    """Put entries' events back in the queue, with fresh attempts.

    \b
    Examples:
      distinct-forwarder dlq replay --all
      distinct-forwarder dlq replay 0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10
    """
    targets = _ids_or_all(ids, all_)
    store = obj.store()
    total = len(targets) if targets is not None else store.dlq_depth()
    if total == 0:
        click.echo("Nothing to do.")
        return
    show_bar = sys.stderr.isatty()
    with click.progressbar(length=total, label="Replaying", file=sys.stderr,
                           hidden=not show_bar) as bar:
        report = dlq_tools.replay(store, targets, on_progress=bar.update)
    click.echo(f"Replayed {len(report.replayed)}, skipped {len(report.skipped)} "
               f"(already delivered), {len(report.missing)} not found.")
    if report.missing:
        sys.exit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every entry (needs --yes).")
@click.option("--yes", is_flag=True, help="Confirm a bulk purge.")
@pass_ctx
def dlq_purge(obj: Ctx, ids: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Delete entries for good.

    \b
    Examples:
      distinct-forwarder dlq purge 0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10
      distinct-forwarder dlq purge --all --yes
    """
    targets = _ids_or_all(ids, all_)
    if all_ and not yes:
        raise click.UsageError("--all deletes every entry; add --yes to confirm")
    removed = dlq_tools.purge(obj.store(), targets)
    click.echo(f"Purged {removed} entries." if removed else "Nothing to do.")
    if targets is not None and removed < len(targets):
        click.echo(f"{len(targets) - removed} ids were not in the dead-letter queue.", err=True)
        sys.exit(1)
