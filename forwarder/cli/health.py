"""`health`: is the worker or the relay of this container, pod or host doing its job?

What the image's HEALTHCHECK, Kubernetes' probes and a monitoring script run.
Exit 0 healthy, 1 not. The worker check reads Redis only (what the workers
publish there: docs/lifecycle.md), so it never imports the worker.

A worker is unhealthy when no worker registered on this host has beaten
within ``--max-silence`` (the process is gone, frozen, or its heartbeat
thread is), or when a live one has held the same batch for longer than a
working worker ever does (``--stuck-after``): its delivery threads are
wedged although it still beats. The second check compares what successive
runs saw, kept in a small state file (``--state-file``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import redis

from forwarder import constants as C
from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.store import Store, redis_error_text, text

#: A batch held this long was neither finished nor handed back: a working
#: worker starts a waiting batch within TASK_BUDGET_SECONDS plus one request,
#: resends a lost message after DISPATCH_RESEND_SECONDS, and a task hands back
#: what it has not sent after TASK_BUDGET_SECONDS.
STUCK_AFTER_SECONDS = (2 * C.TASK_BUDGET_SECONDS + C.DISPATCH_RESEND_SECONDS
                       + C.MAX_REQUEST_SECONDS)
#: The options the top-level command takes before a sub-command, with a value.
_GLOBAL_OPTIONS = ("--redis-url", "--namespace")


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    message: str


# --- which role this container runs -----------------------------------------------
def role_of(argv: Sequence[str]) -> tuple[str, str | None]:
    """The role a ``distinct-forwarder`` command line runs, and the relay's ``--bind``.

    ``distinct-forwarder worker`` execs ``python -m workers``, so both spellings
    mean a worker; a PID 1 that is an init (``docker run --init``) still shows
    the command it started.
    """
    args = list(argv)
    for i, arg in enumerate(args[:-1]):
        if arg == "-m" and args[i + 1] == "workers":
            return "worker", None
    start = None
    for i, arg in enumerate(args):
        if Path(arg).name == "distinct-forwarder":
            start = i + 1
        elif arg == "-m" and i + 1 < len(args) and args[i + 1] == "forwarder":
            start = i + 2
        if start is not None:
            break
    if start is None:
        return "unknown", None
    rest = args[start:]
    while rest and (rest[0] in _GLOBAL_OPTIONS or rest[0].startswith(
            tuple(f"{o}=" for o in _GLOBAL_OPTIONS))):
        rest = rest[1:] if "=" in rest[0] else rest[2:]
    if not rest:
        return "unknown", None
    role = rest[0]
    bind = None
    for i, arg in enumerate(rest[1:], 1):
        if arg in ("--bind", "-b") and i + 1 < len(rest):
            bind = rest[i + 1]
            break
        if arg.startswith("--bind="):
            bind = arg.split("=", 1)[1]
            break
    return role, bind


def process_argv(pid: int) -> list[str]:
    """A process's command line (Linux ``/proc``); empty when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def local_url(bind: str, path: str) -> str:
    """The URL on this host of a relay bound to ``bind`` (``HOST:PORT``)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise click.UsageError(f"--bind {bind!r}: expected HOST:PORT")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}{path}"


# --- the worker check --------------------------------------------------------------
def _held_batches(store: Store, worker: str) -> set[str]:
    fields = store.client.hkeys(store.held_prefix + worker)
    return {text(f).rsplit(":", 1)[0] for f in fields}


def _load_state(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(w): {str(b): float(t) for b, t in batches.items()
                     if isinstance(t, (int, float))}
            for w, batches in data.items() if isinstance(batches, dict)}


def _save_state(path: Path, state: dict[str, dict[str, float]]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def check_workers(store: Store, host: str, max_silence: float, stuck_after: float,
                  state_path: Path | None) -> Verdict:
    """Whether the workers registered on ``host`` beat and make progress."""
    seconds, micros = store.client.time()  # the heartbeats are on Redis's clock
    now = seconds + micros / 1e6
    mine = [w for w in store.workers() if w.info.get("host") == host]
    live = [w for w in mine if now - w.last_beat <= max_silence]
    if not live:
        if not mine:
            return Verdict(False, f"no worker registered on {host}")
        freshest = min(now - w.last_beat for w in mine)
        return Verdict(False, f"no worker on {host} has beaten in the last "
                              f"{max_silence:.0f} s (last beat {freshest:.0f} s ago)")
    previous = _load_state(state_path) if state_path else {}
    state: dict[str, dict[str, float]] = {}
    stuck = []
    for worker in live:
        seen = previous.get(worker.id, {})
        batches = _held_batches(store, worker.id)
        state[worker.id] = {b: seen.get(b, now) for b in batches}
        oldest = min(state[worker.id].values(), default=now)
        if now - oldest > stuck_after:
            stuck.append(f"{worker.id} has held a batch for {now - oldest:.0f} s "
                         f"without finishing it")
    saved = state_path is not None and _save_state(state_path, state)
    if stuck:
        return Verdict(False, "; ".join(stuck))
    held = sum(w.held for w in live)
    note = "" if saved or state_path is None else " (progress not tracked: state file " \
                                                  "not writable)"
    return Verdict(True, f"{len(live)} worker(s) on {host} beating, {held} events held{note}")


def _default_state_file(namespace: str, host: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{namespace}-{host}")
    return Path(tempfile.gettempdir()) / f"distinct-forwarder-health-{safe}.json"


def _finish(verdict: Verdict, quiet: bool) -> None:
    if not quiet or not verdict.healthy:
        click.echo(("healthy: " if verdict.healthy else "unhealthy: ") + verdict.message,
                   err=not verdict.healthy)
    sys.exit(0 if verdict.healthy else 1)


# --- the commands --------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.pass_context
def health(ctx: click.Context) -> None:
    """Exit 0 if this host's worker or relay works, 1 if not (for probes).

    Without a sub-command, checks whatever this container runs (read from
    PID 1's command line): a worker, a relay, or nothing long-running.

    \b
    Examples:
      distinct-forwarder health worker
      distinct-forwarder health relay --ready
      distinct-forwarder health            # in the image's HEALTHCHECK
    """
    if ctx.invoked_subcommand is not None:
        return
    role, bind = role_of(process_argv(1))
    if role == "worker":
        ctx.invoke(worker_health)
    elif role == "relay":
        bind = bind or os.environ.get("FORWARDER_RELAY_BIND") or C.DEFAULT_RELAY_BIND
        ctx.invoke(relay_health, url=local_url(bind, "/healthz"))
    else:
        _finish(Verdict(True, f"nothing long-running to check (PID 1 runs {role!r})"),
                quiet=False)


@health.command("worker")
@click.option("--host", default=None, help="The workers' host name [default: this host's].")
@click.option("--max-silence", type=click.FloatRange(min=1), default=None,
              help="Seconds without a heartbeat that make a worker unhealthy "
                   "[default: FORWARDER_WORKER_TIMEOUT].")
@click.option("--stuck-after", type=click.FloatRange(min=1), default=STUCK_AFTER_SECONDS,
              show_default=True, help="Seconds a batch may stay held before the worker "
                                      "counts as wedged.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where successive runs remember what was held [default: in the "
                   "temporary directory].")
@click.option("--quiet", "-q", is_flag=True, help="Print only when unhealthy.")
@pass_ctx
def worker_health(obj: Ctx, host: str | None = None, max_silence: float | None = None,
                  stuck_after: float = STUCK_AFTER_SECONDS, state_file: Path | None = None,
                  quiet: bool = False) -> None:
    """A worker on this host beats, and finishes or hands back what it holds.

    Reads Redis only. If Redis does not answer, the worker cannot be judged
    and the check passes (with a message): restarting workers does not bring
    Redis back, and they reconnect on their own.

    \b
    Examples:
      distinct-forwarder health worker
      distinct-forwarder health worker --host worker-7 --max-silence 30
    """
    settings = obj.settings()
    host = host or socket.gethostname()
    try:
        store = obj.store()
        verdict = check_workers(
            store, host, max_silence or settings.worker_timeout, stuck_after,
            state_file or _default_state_file(settings.namespace, host))
    except redis.RedisError as exc:
        verdict = Verdict(True, "cannot tell, " + redis_error_text(exc, settings.redis_url))
    _finish(verdict, quiet)


@health.command("relay")
@click.option("--url", default=None,
              help="The URL to GET [default: /healthz on FORWARDER_RELAY_BIND].")
@click.option("--ready", is_flag=True, help="GET /readyz instead: Redis or the spool takes "
                                            "events.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only when unhealthy.")
def relay_health(url: str | None = None, ready: bool = False, timeout: float = 3.0,
                 quiet: bool = False) -> None:
    """The relay on this host answers /healthz (or /readyz) with 200.

    \b
    Examples:
      distinct-forwarder health relay
      distinct-forwarder health relay --ready --url http://127.0.0.1:8080/readyz
    """
    if url is None:
        bind = os.environ.get("FORWARDER_RELAY_BIND") or C.DEFAULT_RELAY_BIND
        url = local_url(bind, "/readyz" if ready else "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            verdict = Verdict(answer.status == 200, f"{url} answered {answer.status}")
    except urllib.error.HTTPError as exc:
        verdict = Verdict(False, f"{url} answered {exc.code}")
    except (OSError, ValueError) as exc:
        verdict = Verdict(False, f"{url}: {type(exc).__name__}: {exc}")
    _finish(verdict, quiet)
