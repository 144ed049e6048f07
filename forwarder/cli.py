"""The ``distinct-forwarder`` command.

Exit codes: 0 ok, 1 failure, 2 bad input (click's usage errors included).
``--redis-url`` and ``--namespace`` are shared by every command and default
to ``REDIS_URL`` and ``FORWARDER_NAMESPACE``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import redis

from forwarder import dlq as dlq_tools
from forwarder.config import Settings
from forwarder.errors import ConfigError, EntryNotFound, ForwarderError, InvalidEvent
from forwarder.logs import mask_email
from forwarder.store import Store, connect, redis_error_text


@dataclass
class Ctx:
    redis_url: str | None
    namespace: str | None

    def settings(self) -> Settings:
        try:
            return Settings.from_env(redis_url=self.redis_url, namespace=self.namespace)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None

    def store(self) -> Store:
        s = self.settings()
        return Store(connect(s.redis_url, timeout=5.0), s.namespace)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="REDIS_URL", default=None,
              help="Redis URL [env REDIS_URL; default redis://localhost:6379/0].")
@click.option("--namespace", envvar="FORWARDER_NAMESPACE", default=None,
              help="Prefix of every Redis key [env FORWARDER_NAMESPACE].")
@click.version_option(package_name="distinct-forwarder")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, namespace: str | None) -> None:
    """Capture analytics events into Redis; workers deliver them to Distinct.

    \b
    Example:
      distinct-forwarder demo
    """
    ctx.obj = Ctx(redis_url, namespace)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (redis.RedisError, ForwarderError) as exc:
        url = Settings.from_env().redis_url if not isinstance(exc, ForwarderError) else ""
        text = redis_error_text(exc, url) if isinstance(exc, redis.RedisError) else str(exc)
        click.echo(f"Error: {text}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


# --- worker ---------------------------------------------------------------------
@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def worker(obj: Ctx, celery_args: tuple[str, ...]) -> None:
    """Run a delivery worker (Celery options pass through).

    \b
    Defaults: threads pool, FORWARDER_CONCURRENCY threads, no gossip/mingle.
    Example:
      DISTINCT_API_KEY=... distinct-forwarder worker --loglevel=INFO
    """
    import os

    if obj.redis_url:
        os.environ["REDIS_URL"] = obj.redis_url
    if obj.namespace:
        os.environ["FORWARDER_NAMESPACE"] = obj.namespace
    settings = obj.settings()
    try:
        settings.require_delivery()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from workers.app import create_app

    app = create_app(settings)
    args = ["worker", "--without-gossip", "--without-mingle", "--loglevel=INFO",
            f"--hostname=forwarder-{os.getpid()}@%h", *celery_args]
    app.worker_main(args)


# --- send -----------------------------------------------------------------------
def _read_events(json_text: str | None, file: Any) -> Iterator[tuple[str, Any]]:
    if json_text is not None:
        yield "--json", _loads(json_text, "--json")
    if file is not None:
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield f"line {number}", _loads(line, f"line {number}")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{where}: not JSON ({exc})") from None


@cli.command()
@click.option("--user", "kind", flag_value="user_analytics",
              help="User Analytics events (default: Capture Analytics).")
@click.option("--capture", "kind", flag_value="capture", default=True, hidden=True)
@click.option("--experience", help="Experience slug for Capture Analytics.")
@click.option("--type", "event_type", help="Capture type, e.g. PHOTO_VIEWED_BY_USER.")
@click.option("--event-value")
@click.option("--email")
@click.option("--session-id")
@click.option("--registration-page-value")
@click.option("--captured-at", help="ISO-8601 with timezone; default now.")
@click.option("--json", "json_text", help="One event as a JSON object.")
@click.option("--file", type=click.File("r"), help="JSONL file of events, '-' for stdin.")
@click.option("--idempotency-key")
@pass_ctx
def send(obj: Ctx, kind: str, experience: str | None, event_type: str | None,
         event_value: str | None, email: str | None, session_id: str | None,
         registration_page_value: str | None, captured_at: str | None,
         json_text: str | None, file: Any, idempotency_key: str | None) -> None:
    """Validate and enqueue events; prints one id per event.

    \b
    Examples:
      distinct-forwarder send --experience fifa-cwc-2025 --type PHOTO_VIEWED_BY_USER \\
          --event-value evt-42 --email john.doe@example.com
      distinct-forwarder send --experience fifa-cwc-2025 --file events.jsonl
    """
    from forwarder.producer import Forwarder
    from forwarder.schemas import format_timestamp

    settings = obj.settings()
    fwd = Forwarder(settings=settings)
    items = list(_read_events(json_text, file))
    if event_type:
        now = format_timestamp(__import__("datetime").datetime.now(
            __import__("datetime").timezone.utc))
        flags = {"type": event_type, "eventValue": event_value, "email": email,
                 "sessionId": session_id, "registrationPageValue": registration_page_value,
                 "recordCapturedAt": captured_at or now}
        items.append(("flags", {k: v for k, v in flags.items() if v is not None}))
    if not items:
        raise click.UsageError("nothing to send: give --type ..., --json or --file")
    failed = False
    for where, event in items:
        try:
            if kind == "user_analytics":
                event_id = fwd.user_analytics(event, idempotency_key=idempotency_key)
            else:
                event_id = fwd.capture(event, experience=experience,
                                       idempotency_key=idempotency_key)
            click.echo(event_id)
        except InvalidEvent as exc:
            failed = True
            for field, messages in sorted(exc.errors.items()):
                click.echo(f"{where}: {field}: {'; '.join(messages)}", err=True)
    if failed:
        sys.exit(2)


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


# --- status, config -------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(obj: Ctx, as_json: bool) -> None:
    """Queue, retry-set and DLQ depths, and recent outcomes.

    \b
    Example:
      distinct-forwarder status --json
    """
    store = obj.store()
    now = time.time()
    due = store.next_retry_due()
    report = {
        "namespace": store.namespace,
        "queue": store.queue_depth(),
        "retry": store.retry_depth(),
        "retry_next_due_in": None if due is None else round(max(0.0, due - now), 1),
        "dlq": store.dlq_depth(),
        "last_minute": store.outcome_counts(now, 1),
        "last_hour": store.outcome_counts(now, 60),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    for name, value in report.items():
        click.echo(f"{name:18} {value}")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def config_cmd(obj: Ctx, as_json: bool) -> None:
    """Print the effective configuration, secrets masked.

    \b
    Example:
      DISTINCT_API_KEY=... distinct-forwarder config
    """
    shown = obj.settings().masked()
    if as_json:
        click.echo(json.dumps(shown))
        return
    for name, value in shown.items():
        click.echo(f"{name:18} {value}")


# --- sandbox, demo --------------------------------------------------------------
@cli.command()
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key", default="sandbox-key", show_default=True,
              help="The key the sandbox accepts.")
@click.option("--latency-ms", default=0.0)
@click.option("--fail-rate", default=0.0, help="Share of POSTs answered with --fail-status.")
@click.option("--fail-status", default=503, show_default=True)
@click.option("--retry-after", default=None, help="Retry-After value sent with failures.")
@click.option("--outage-seconds", default=0.0, help="Fail every POST for this long after start.")
@click.option("--reject", "reject_values", multiple=True,
              help="Answer 400 to events carrying this value (repeatable).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False),
              help="Also append accepted events to this JSONL file.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def sandbox(port: int, host: str, api_key: str, latency_ms: float, fail_rate: float,
            fail_status: int, retry_after: str | None, outage_seconds: float,
            reject_values: tuple[str, ...], record_path: str | None, verbose: bool) -> None:
    """Serve a local Distinct with fault injection.

    \b
    Example:
      distinct-forwarder sandbox --port 8765 --fail-rate 0.1 --fail-status 503
      DISTINCT_API_URL=http://127.0.0.1:8765 DISTINCT_API_KEY=sandbox-key \\
          distinct-forwarder worker
    """
    from forwarder.sandbox import Faults, Sandbox

    faults = Faults(api_key=api_key, latency_ms=latency_ms, fail_rate=fail_rate,
                    fail_status=fail_status, retry_after=retry_after,
                    outage_until=time.time() + outage_seconds if outage_seconds else 0.0,
                    reject_values=list(reject_values))
    server = Sandbox(port=port, host=host, faults=faults, record_path=record_path,
                     quiet=not verbose)
    click.echo(f"Sandbox Distinct on {server.url} (key {api_key!r}); Ctrl-C stops it.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


@cli.command()
@click.option("--events", default=300, show_default=True, help="How many captures.")
@click.option("--clean", is_flag=True, help="Delete the demo's Redis keys when done.")
@pass_ctx
def demo(obj: Ctx, events: int, clean: bool) -> None:
    """Run the whole pipeline locally: sandbox, worker, captures, DLQ.

    \b
    Example:
      distinct-forwarder demo
    """
    from forwarder.demo import run_demo

    sys.exit(run_demo(obj.redis_url, events=events, clean=clean))


if __name__ == "__main__":
    main()
