"""Shared parts of the CLI: the top-level group, its options, and main()."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import click
import redis

from forwarder.config import Settings
from forwarder.constants import DEFAULT_REDIS_URL
from forwarder.errors import ConfigError, ForwarderError
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
        return Store(connect(s.redis_url, timeout=5.0), s.namespace, dedupe_ttl=s.dedupe_ttl)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="REDIS_URL", default=None,
              help="Redis URL: redis://, rediss:// (TLS) or sentinel://H1,H2/MASTER/DB "
                   "[env REDIS_URL; default redis://localhost:6379/0].")
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
    except redis.RedisError as exc:
        url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        click.echo(f"Error: {redis_error_text(exc, url)}", err=True)
        sys.exit(1)
    except ForwarderError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
