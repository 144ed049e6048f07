"""`relay`: Distinct's capture API on a local port, in gunicorn."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import click

from forwarder import constants as C
from forwarder.cli.base import Ctx, cli, pass_ctx

#: gunicorn's app factory; each worker builds its Relay after the fork, so no
#: Redis connection or metrics file is shared between processes.
APP = "forwarder.relay:create_app()"


def gunicorn_argv(bind: str, workers: int, connections: int,
                  extra: tuple[str, ...]) -> list[str]:
    """gunicorn's command line: the relay's defaults first, so ``extra`` wins."""
    return [
        "--bind", bind, "--workers", str(workers),
        # gevent: each connection is a greenlet, so a thousand idle or
        # trickling clients cost memory, not the threads others need; a
        # worker takes at most `connections` at once, the rest wait in the
        # listen backlog.
        "--worker-class", "gevent", "--worker-connections", str(connections),
        # With gevent, keep-alive is also the time a client has to send each
        # request's line and headers: a half-sent header is cut off after it.
        "--keep-alive", str(C.RELAY_HEADER_TIMEOUT), "--timeout", "30",
        "--graceful-timeout", "20",
        # Bounded request line and headers (gunicorn's defaults, stated).
        "--limit-request-line", "8190", "--limit-request-fields", "100",
        "--limit-request-field_size", "8190",
        "--name", "distinct-forwarder-relay",
        *_no_control_socket(),
        *extra,
        APP,
    ]


def _no_control_socket() -> list[str]:
    # gunicorn 24+ opens a control socket at one fixed path per user, so two
    # relays on one host would fight over it; the relay needs none.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--bind", "-b", envvar="FORWARDER_RELAY_BIND", default=C.DEFAULT_RELAY_BIND,
              show_default=True, help="HOST:PORT to listen on [env FORWARDER_RELAY_BIND].")
@click.option("--workers", "-w", envvar="FORWARDER_RELAY_WORKERS",
              default=C.DEFAULT_RELAY_WORKERS, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes [env FORWARDER_RELAY_WORKERS].")
@click.option("--connections", envvar="FORWARDER_RELAY_CONNECTIONS",
              default=C.DEFAULT_RELAY_CONNECTIONS, show_default=True,
              type=click.IntRange(10, 100_000),
              help="Open connections per worker at most [env FORWARDER_RELAY_CONNECTIONS].")
@click.option("--threads", hidden=True, type=int,
              help="Ignored since 0.2: connections are greenlets (see --connections).")
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def relay(obj: Ctx, bind: str, workers: int, connections: int, threads: int | None,
          gunicorn_args: tuple[str, ...]) -> None:
    """Serve Distinct's two capture endpoints over HTTP (gunicorn options pass through).

    Any backend sends its Distinct requests here instead: same paths, headers
    and bodies; the answer comes once the event is in Redis. Requests must
    carry one of FORWARDER_RELAY_KEYS (comma-separated) in x-distinct-api-key.

    \b
    Also: GET /healthz, /readyz, /metrics (Prometheus), /openapi.json.
    Needs the relay extra: pip install 'distinct-forwarder[relay]'.
    Examples:
      FORWARDER_RELAY_KEYS=$(openssl rand -hex 24) distinct-forwarder relay
      distinct-forwarder relay --bind 0.0.0.0:8080 --workers 4 --access-logfile -
    """
    try:
        import gevent  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "the relay needs gunicorn and gevent: pip install 'distinct-forwarder[relay]'"
        ) from None
    # Workers read their settings from the environment after the fork.
    if obj.redis_url:
        os.environ["REDIS_URL"] = obj.redis_url
    if obj.namespace:
        os.environ["FORWARDER_NAMESPACE"] = obj.namespace
    settings = obj.settings()
    if not settings.relay_keys:
        raise click.UsageError(
            "FORWARDER_RELAY_KEYS: set at least one key (comma-separated, "
            f"{C.RELAY_KEY_MIN_LENGTH}+ characters each) for clients to send in "
            f"{C.API_KEY_HEADER}"
        )
    # Counters summed over workers need a directory of per-process files,
    # and it must be set before any worker imports prometheus_client.
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="distinct-relay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    from gunicorn.app.wsgiapp import WSGIApplication

    if threads is not None:
        click.echo("--threads is ignored since 0.2 (the relay serves connections as "
                   "greenlets); see --connections", err=True)
    sys.argv = ["distinct-forwarder relay", *gunicorn_argv(bind, workers, connections,
                                                            gunicorn_args)]
    try:
        WSGIApplication("%(prog)s [OPTIONS]").run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
