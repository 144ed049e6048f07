"""Write the console's screenshots (docs/console/*.png) from its browser tests.

    python docs/console/screenshots.py

Runs tests/test_console_browser.py (a real worker, the sandbox Distinct, the
console and Debian's chromium) with FORWARDER_CONSOLE_SCREENSHOTS set to this
folder: each page the tests check with axe-core is saved as it was then.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> int:
    env = dict(os.environ, FORWARDER_CONSOLE_SCREENSHOTS=str(HERE))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_console_browser.py"], cwd=ROOT, env=env)
    if done.returncode == 0:
        print("\n".join(sorted(str(p.relative_to(ROOT)) for p in HERE.glob("*.png"))))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
