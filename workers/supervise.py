"""``distinct-forwarder worker`` runs Celery in a child process and restarts it.

A worker is a daemon that must outlive Redis restarts and its own crashes
(kombu has been seen giving up on a broker connection lost at an unlucky
moment; an OOM kill takes the biggest process, the Celery child), so this
small parent restarts the Celery worker whenever it exits on its own with a
failure, with a growing pause. Each time a child ends, the parent requeues
at once whatever it still held (``after_child``): the child is known dead,
so there is no need to wait for its heartbeat to fall silent. SIGTERM,
SIGINT and SIGQUIT are passed to the child and end the supervision; the
child is killed with the parent (PR_SET_PDEATHSIG), so a ``kill -9`` of the
parent still stops every process of the worker (and then the other workers'
heartbeat sweep recovers its events).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

CHILD_ENV = "FORWARDER_WORKER_CHILD"
#: Pause before the first restart, doubling up to MAX_PAUSE.
FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0
#: A child that ran this long resets the pause: it was not crash-looping.
STABLE_AFTER = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the child outlives a killed parent, as with plain Celery
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def supervise(argv: Sequence[str], env: dict[str, str] | None = None,
              after_child: Callable[[int, int], None] | None = None) -> int:
    """Run ``argv`` until it exits by request; returns its exit code.

    ``after_child(pid, code)`` runs after every child has ended.
    """
    parent = os.getpid()
    child_env = dict(os.environ if env is None else env, **{CHILD_ENV: "1"})
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    pause = FIRST_PAUSE
    while True:
        started = time.monotonic()
        child = subprocess.Popen(list(argv), env=child_env,
                                 preexec_fn=lambda: _die_with_parent(parent))
        code = child.wait()
        while code is None:  # pragma: no cover - wait() returns the code
            code = child.wait()
        if after_child is not None:
            try:
                after_child(child.pid, code)
            except Exception as exc:  # the heartbeat sweep is the fallback
                print(f"distinct-forwarder: could not requeue what the worker held "
                      f"({type(exc).__name__}); the other workers will", file=sys.stderr,
                      flush=True)
        if stopping or code == 0:
            return code if code >= 0 else 128 - code
        if time.monotonic() - started > STABLE_AFTER:
            pause = FIRST_PAUSE
        print(f"distinct-forwarder: the worker exited with code {code}; "
              f"starting a new one in {pause:.0f} s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        if stopping:
            return 0
        pause = min(pause * 2, MAX_PAUSE)
