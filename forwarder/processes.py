"""Child processes the demo, the tests and the benchmarks start: stopped by PID, measured."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


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
