"""`console`: the operator console, a web page served by gunicorn on its own port."""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

import click

from forwarder import constants as C
from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.errors import ConfigError


def _check_bind(bind: str) -> str:
    """HOST:PORT, refused when it is the relay's address (the relay is public, the
    console is not); returns the host."""
    host, colon, port = bind.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{bind!r} must be HOST:PORT, e.g. 127.0.0.1:8090",
                                 param_hint="--bind")
    relay = os.environ.get("FORWARDER_RELAY_BIND", C.DEFAULT_RELAY_BIND)
    if bind == relay or (port == relay.rpartition(":")[2] and host in ("0.0.0.0", "::")):
        raise click.BadParameter(f"{bind!r} is the relay's address ({relay}); the console "
                                 "needs a port of its own", param_hint="--bind")
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gunicorn_options(bind: str) -> dict[str, Any]:
    """One process (replays run in its threads, its sessions are signed with a key
    of its own) serving CONSOLE_THREADS requests at once."""
    return {
        "bind": bind, "workers": 1, "worker_class": "gthread", "threads": C.CONSOLE_THREADS,
        # A slow page (a filter over 100,000 entries, an export) must not get the
        # worker killed; gthread workers notify the arbiter between requests.
        "timeout": 120, "graceful_timeout": 10, "keepalive": 5,
        "limit_request_line": 8190, "limit_request_fields": 100,
        "limit_request_field_size": 8190, "proc_name": "distinct-forwarder-console",
        "errorlog": "-", "loglevel": "info",
    }


@cli.command()
@click.option("--bind", "-b", envvar="FORWARDER_CONSOLE_BIND", default=C.DEFAULT_CONSOLE_BIND,
              show_default=True, help="HOST:PORT to listen on [env FORWARDER_CONSOLE_BIND].")
@pass_ctx
def console(obj: Ctx, bind: str) -> None:
    """Serve the operator console: overview, dead letters, replays, find an event.

    Log in with a key from FORWARDER_CONSOLE_KEYS (name:key pairs, comma-separated:
    may replay and purge) or FORWARDER_CONSOLE_READONLY_KEYS (may look only). It
    does not start without FORWARDER_CONSOLE_KEYS. GET /healthz answers without a
    login. Its cookie is Secure: from another host, serve it over HTTPS (a TLS proxy).

    \b
    Needs the console extra: pip install 'distinct-forwarder[console]'.
    docs/console.md is the guide.
    Example:
      FORWARDER_CONSOLE_KEYS=alice:$(openssl rand -hex 24) distinct-forwarder console
    """
    try:
        import flask  # noqa: F401
        import flask_wtf  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "the console needs Flask, Flask-WTF and gunicorn: "
            "pip install 'distinct-forwarder[console]'") from None
    from forwarder.console.access import ConsoleKeys

    host = _check_bind(bind)
    settings = obj.settings()
    try:
        keys = ConsoleKeys.from_env(os.environ)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not _is_loopback(host):
        click.echo(f"console: listening on {bind}: browsers send its Secure cookie over HTTPS "
                   "only, so put a TLS proxy in front (docs/console.md)", err=True)
    from gunicorn.app.base import BaseApplication

    class ConsoleServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in gunicorn_options(bind).items():
                self.cfg.set(name, value)
            # gunicorn 24+ opens a control socket at a fixed path per user: two
            # consoles (or a console and a relay) on one host would fight over it.
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            # In the worker, after the fork: its own Redis connections.
            from forwarder.console.app import create_app
            from forwarder.logs import install

            install(settings.log_format, level=logging.INFO,
                    secrets=[*settings.secrets(), *keys.secrets])
            return create_app(settings, keys)

    ConsoleServer().run()
