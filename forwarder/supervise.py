"""``distinct-forwarder worker`` runs Celery in a child process and restarts it.

kombu can give up on a broker connection lost at an unlucky moment (seen here
when Redis is killed and restarted under load: an AttributeError inside its
reconnect path ends the worker with "Unrecoverable error"). A worker is a
daemon that must outlive Redis restarts, so this small parent restarts the
Celery worker whenever it exits on its own with a failure, with a growing
pause. SIGTERM, SIGINT and SIGQUIT are passed to the child and end the
supervision; the child is killed with the parent (PR_SET_PDEATHSIG), so a
``kill -9`` of the parent still stops every process of the worker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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


def supervise(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``argv`` until it exits by request; returns its exit code."""
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


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM a child, wait ``timeout`` seconds, then SIGKILL it; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def tree_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory (or ``VmHWM``, its peak) of a process and its descendants, in KiB."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total
