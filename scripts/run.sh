#!/usr/bin/env bash
# Install convstream into .venv and run the server on its defaults (127.0.0.1:50051,
# metrics on :9464, the shipped model). Extra arguments go to `convstream serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
exec .venv/bin/convstream serve "$@"
