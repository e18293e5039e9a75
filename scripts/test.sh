#!/usr/bin/env bash
# Install convstream, its test tools and the system packages the camera tests need, then
# run every check CI runs:
# lint, format, types, and the whole pytest suite against the installed (non-editable) package.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/system-deps.sh  # GStreamer's RTSP server for the live-camera tests
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check '.[test]'
# pip keeps an installed copy of the same version; the tests must see this checkout.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy service clients models benchmarks  # the tests' own types are not checked
exec .venv/bin/python -m pytest "$@"
