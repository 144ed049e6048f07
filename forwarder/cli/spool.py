"""`spool status` and `spool flush`: the producer's local spool on this host."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

import click
import redis

from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.spool import Spool, drain
from forwarder.store import redis_error_text


def _spool(obj: Ctx, path: str | None) -> tuple[Spool, str]:
    settings = obj.settings()
    if path:
        return Spool(path, int(settings.spool_max_mb * 1024 * 1024)), settings.namespace
    spool = Spool.for_settings(settings)
    if spool is None:
        raise click.UsageError("the spool is turned off (FORWARDER_SPOOL_PATH=off)")
    return spool, settings.namespace


_path_option = click.option(
    "--path", default=None, metavar="FILE",
    help="Spool file [env FORWARDER_SPOOL_PATH; default "
         "$XDG_CACHE_HOME/distinct-forwarder/spool-NAMESPACE.db].")


@cli.group()
def spool() -> None:
    """The local spool where captures wait while Redis does not answer.

    \b
    Examples:
      distinct-forwarder spool status
      distinct-forwarder spool flush
    """


@spool.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_path_option
@pass_ctx
def status_cmd(obj: Ctx, as_json: bool, path: str | None) -> None:
    """Depth, oldest entry, size and full rejections of this host's spool.

    \b
    Examples:
      distinct-forwarder spool status
      distinct-forwarder spool status --json | jq .events
    """
    sp, namespace = _spool(obj, path)
    st = sp.status(namespace)
    if as_json:
        out = st.as_dict()
        out["oldest_age_seconds"] = None if st.oldest is None else round(
            time.time() - st.oldest, 3)
        click.echo(json.dumps(out, sort_keys=True))
        return
    oldest = "-" if st.oldest is None else (
        datetime.fromtimestamp(st.oldest, timezone.utc).isoformat(timespec="seconds")
        + f" ({time.time() - st.oldest:.0f} s ago)")
    rows = [
        ("path", st.path),
        ("messages", str(st.messages)),
        ("events", str(st.events)),
        ("claimed by a drain", str(st.claimed)),
        ("oldest entry", oldest),
        ("size", f"{st.size_bytes / 1048576:.1f} MiB of {st.max_bytes / 1048576:.0f} MiB"),
        ("refused (spool full)", str(st.full_rejections)),
        ("corrupted, moved aside", ", ".join(st.quarantined) or "-"),
    ]
    for name, value in rows:
        click.echo(f"  {name:<22}{value}")
    if st.quarantined:
        click.echo("  A corrupted spool's events could not be read; keep the file for "
                   "recovery (sqlite3 .recover) or remove it.", err=True)


@spool.command("flush")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@_path_option
@pass_ctx
def flush_cmd(obj: Ctx, path: str | None, as_json: bool) -> None:
    """Push every spooled event into the Redis queue now, oldest first.

    Safe while producers run: each batch is claimed, pushed once, then deleted.
    Exits 1 if Redis fails or rows remain (claimed by a live producer).

    \b
    Examples:
      distinct-forwarder spool flush
      distinct-forwarder spool flush --json | jq .left
    """
    sp, namespace = _spool(obj, path)
    store = obj.store()
    total = sp.status(namespace).messages
    try:
        with click.progressbar(length=total, label="Flushing", file=sys.stderr,
                               hidden=not sys.stderr.isatty()) as bar:
            result = drain(sp, store, on_progress=bar.update)
    except redis.RedisError as exc:
        raise click.ClickException(redis_error_text(exc, obj.settings().redis_url)) from None
    left = sp.status(namespace)
    if as_json:
        click.echo(json.dumps({"queued": result.messages, "already_queued":
                               result.already_queued, "left": left.messages}))
    else:
        click.echo(f"queued {result.messages} events"
                   + (f" ({result.already_queued} batches were already queued)"
                      if result.already_queued else "")
                   + f"; {left.messages} left in {sp.path}")
    if left.messages:
        raise click.ClickException(
            f"{left.messages} events are claimed by a running producer; "
            "run flush again in a minute")
