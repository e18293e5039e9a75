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
# The suite in three runs. Most tests first, on three workers (pytest-xdist; a file's tests on
# one, as they share module fixtures): their browser, camera and server waits left a third of
# two cores idle with two workers (1.48 cores busy, 316 s; with three, 1.82 and 275 s).
# Then those marked `live`, two at a time: they time live cameras, rates and freshness but
# leave the cores mostly idle (each under half a core, measured), so two side by side still
# find a core free. Then those marked `alone`, with nothing beside them: they time such things
# while loading the cores themselves, and a test of another worker busy on both cores made an
# RTSP read look backlogged. Arguments go to all three (not -m, which would replace the
# split); a run they leave no test in (exit 5) is no failure while another ran some.
set +e
.venv/bin/python -m pytest -n 3 --dist loadfile -m "not alone and not live" "$@"
shared=$?
.venv/bin/python -m pytest -n 2 --dist load -m live "$@"
live=$?
.venv/bin/python -m pytest -m alone "$@"
alone=$?
set -e
ran=0
for rc in "$shared" "$live" "$alone"; do
    if [ "$rc" -ne 5 ]; then ran=1; fi
done
for rc in "$shared" "$live" "$alone"; do
    if [ "$rc" -ne 0 ] && { [ "$rc" -ne 5 ] || [ "$ran" -eq 0 ]; }; then exit "$rc"; fi
done
exit 0
