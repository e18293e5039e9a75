#!/usr/bin/env bash
# Install convstream into .venv and run the server on its defaults (127.0.0.1:50051,
# metrics on :9464, the shipped model, the demo conveyor camera) with the monitoring
# dashboard on http://127.0.0.1:8080/. Extra arguments go to `convstream serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
# The dashboard is a separate client of the server's API; it follows the server's lifetime.
# Both run in the background so that this script can pass on a SIGTERM (a supervisor's, a
# plain `kill`) or Ctrl-C to the server, which then drains and frees its ports; a foreground
# child would be left running, and bash starts background jobs with SIGINT ignored.
# It follows the server's --port too, when one is given here.
port=50051
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --port) port="${args[$((i + 1))]:-$port}" ;;
    --port=*) port="${args[$i]#--port=}" ;;
  esac
done
.venv/bin/convstream dashboard --address "127.0.0.1:$port" --port 8080 &
dashboard=$!
.venv/bin/convstream serve "$@" &
server=$!
stop() { kill -TERM "$server" "$dashboard" 2>/dev/null || true; }
trap stop TERM INT HUP
trap 'kill "$dashboard" 2>/dev/null || true' EXIT
echo "dashboard: http://127.0.0.1:8080/ (the demo camera shows once the server is up)"
# wait returns early when a trapped signal arrives; wait again for the server's drain.
status=0
wait "$server" || status=$?
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
exit "$status"
