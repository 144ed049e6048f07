"""`sandbox` and `demo`: a local Distinct and the whole pipeline on one machine."""

from __future__ import annotations

import sys
import time

import click

from forwarder.cli.base import Ctx, cli, pass_ctx


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
