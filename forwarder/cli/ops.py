"""`worker`, `status` and `config`: running and watching a deployment."""

from __future__ import annotations

import json
import time

import click

from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.errors import ConfigError


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
