"""`worker`, `status` and `config`: running and watching a deployment."""

from __future__ import annotations

import json
import os
import sys
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
    The Celery worker runs in a child process that is started again if it
    exits on its own with a failure; SIGTERM stops both.
    Example:
      DISTINCT_API_KEY=... distinct-forwarder worker --loglevel=INFO
    """
    if obj.redis_url:
        os.environ["REDIS_URL"] = obj.redis_url
    if obj.namespace:
        os.environ["FORWARDER_NAMESPACE"] = obj.namespace
    try:
        obj.settings().require_delivery()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    # The worker is its own program (`python -m workers`): a producer or an
    # operator tool never imports it.
    argv = [sys.executable, "-m", "workers", *celery_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# --- status, config -------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (per refresh).")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2))
@click.option("--no-ping", is_flag=True, hidden=True,
              help="Accepted for 0.1 scripts; workers are read from their heartbeats.")
@pass_ctx
def status(obj: Ctx, as_json: bool, watch: bool, interval: float, no_ping: bool) -> None:
    """Queue, retry set, DLQ, breaker, recent outcomes, workers and Redis health.

    \b
    Examples:
      distinct-forwarder status
      distinct-forwarder status --json | jq .breaker
      distinct-forwarder status --watch
    """
    from forwarder.status import collect, render

    settings = obj.settings()
    store = obj.store()
    color = sys.stdout.isatty()
    while True:
        report = collect(settings, store)
        if as_json:
            click.echo(json.dumps(report))
        else:
            if watch and color:
                click.clear()
            click.echo(render(report, color=color))
        if not watch:
            return
        time.sleep(interval)


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
