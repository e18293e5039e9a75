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
# The suite in two runs: most tests on two workers (pytest-xdist; a file's tests on one, as
# they share module fixtures), then those marked `alone` with nothing beside them: they time
# live cameras, frame rates and freshness, and a test of the other worker busy on both cores
# made an RTSP read look backlogged. 10 minutes on one worker, about 8 so. Arguments go to
# both (not -m, which would replace the split); a run they leave no test in (exit 5) is no
# failure while the other ran some.
set +e
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not alone" "$@"
shared=$?
.venv/bin/python -m pytest -m alone "$@"
alone=$?
set -e
if [ "$shared" -eq 5 ] && [ "$alone" -ne 5 ]; then shared=0; fi
if [ "$alone" -eq 5 ] && [ "$shared" -ne 5 ]; then alone=0; fi
if [ "$shared" -ne 0 ]; then exit "$shared"; fi
exit "$alone"
