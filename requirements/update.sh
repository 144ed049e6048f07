#!/usr/bin/env bash
# Rewrite the locks from pyproject.toml's ranges (needs the dev extra's uv).
#
#   requirements/update.sh            # newest versions the ranges allow
#   requirements/update.sh --upgrade-package celery   # one package only
#
# One universal resolution (every Python >= 3.10, every platform, markers
# where they differ) with the hash of every file: the image, .ci/run and
# systemd installs use them with `pip install --require-hashes -r ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
compile() {
  uv pip compile --universal --python-version 3.10 --generate-hashes \
    --index-url https://pypi.org/simple --no-emit-index-url --quiet "$@"
}
compile pyproject.toml --extra relay -o requirements/runtime.lock "$@"
compile pyproject.toml --extra relay --extra monitoring -o requirements/monitoring.lock "$@"
compile requirements/build.in -o requirements/build.lock "$@"
