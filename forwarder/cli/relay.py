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


def gunicorn_argv(bind: str, workers: int, threads: int, extra: tuple[str, ...]) -> list[str]:
    """gunicorn's command line: the relay's defaults first, so ``extra`` wins."""
    return [
        "--bind", bind, "--workers", str(workers),
        # gthread keeps client connections alive between requests; sync
        # workers close each one, which costs a TCP handshake per event.
        "--worker-class", "gthread", "--threads", str(threads),
        "--keep-alive", "5", "--timeout", "30", "--graceful-timeout", "20",
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
@click.option("--threads", envvar="FORWARDER_RELAY_THREADS", default=C.DEFAULT_RELAY_THREADS,
              show_default=True, type=click.IntRange(1, 256),
              help="Threads per worker [env FORWARDER_RELAY_THREADS].")
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def relay(obj: Ctx, bind: str, workers: int, threads: int,
          gunicorn_args: tuple[str, ...]) -> None:
    """Serve Distinct's two capture endpoints over HTTP (gunicorn options pass through).

    Any backend sends its Distinct requests here instead: same paths, headers
    and bodies; the answer comes once the event is in Redis. Requests must
    carry one of FORWARDER_RELAY_KEYS (comma-separated) in x-distinct-api-key.

    \b
    Also: GET /healthz, /readyz, /metrics (Prometheus), /openapi.json.
    Examples:
      FORWARDER_RELAY_KEYS=$(openssl rand -hex 24) distinct-forwarder relay
      distinct-forwarder relay --bind 0.0.0.0:8080 --workers 4 --access-logfile -
    """
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

    sys.argv = ["distinct-forwarder relay", *gunicorn_argv(bind, workers, threads,
                                                            gunicorn_args)]
    try:
        WSGIApplication("%(prog)s [OPTIONS]").run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
