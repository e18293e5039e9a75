#!/usr/bin/env bash
# Install convstream into .venv and run the server on its defaults (127.0.0.1:50051,
# metrics on :9464, the shipped model, the demo conveyor camera) with the monitoring
# dashboard on http://127.0.0.1:8080/ (CONVSTREAM_DASHBOARD_PORT=N for another port). Extra
# arguments go to `convstream serve`; the dashboard follows the port serve will use.
set -euo pipefail
# The server runs in the folder this script is started from, as `convstream serve` would:
# a relative --config path, or a camera's relative video file, means the same to both.
root="$(cd "$(dirname "$0")/.." && pwd)"
convstream="$root/.venv/bin/convstream"
# Install only when something the install is made of changed since the last one: a restart
# then takes seconds, and needs no network.
(
  cd "$root"
  stamp=.venv/.convstream-installed
  if [[ ! -x .venv/bin/convstream || ! -e "$stamp" ]] ||
    [[ -n "$(find pyproject.toml service clients models protos -newer "$stamp" -print -quit)" ]]; then
    echo "run.sh: installing convstream into $root/.venv (the first time: a few minutes," \
      "about 470 MB with onnxruntime and OpenCV)" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check .
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
      --force-reinstall .
    touch "$stamp"
  fi
)
# The dashboard is a separate client of the server's API; it follows the server's lifetime.
# Both run in the background so that this script can pass on a SIGTERM (a supervisor's, a
# plain `kill`) or Ctrl-C to the server, which then drains and frees its ports; a foreground
# child would be left running, and bash starts background jobs with SIGINT ignored.
# The dashboard dials the server where `convstream serve` itself says it will listen, with
# these arguments, CONVSTREAM_* and any --config file merged as serve merges them: reading
# only --port here pointed the dashboard at 50051 while a config's `port` put the server
# elsewhere.
for arg in "$@"; do
  case "$arg" in
    -h | --help | --check-config | --print-settings) exec "$convstream" serve "$@" ;;
  esac
done
settings="$("$convstream" serve "$@" --print-settings)" || exit $?
# one field a line: the address to dial, its host and port, the camera ids, whether the
# server wants TLS or tokens, the metrics ports to check
mapfile -t fields < <("$root/.venv/bin/python" -c '
import json, sys
s = json.load(sys.stdin)
print(s["dial_address"] or "")
print(s["dial_host"])
print(s["port"])
print(" ".join(c["id"] for c in s["cameras"]))
print("yes" if s["tls"] or s["tokens"] else "")
# the metrics ports (one per process) as host/port, none when metrics are off or port 0
first, where = s["metrics_port"], s["metrics_dial_host"]
ports = range(first, first + s["processes"]) if first > 0 else ()
print(" ".join(f"{where}/{p}" for p in ports))
' <<<"$settings")
if [[ ${#fields[@]} -ne 6 ]]; then
  echo "run.sh: could not read convstream serve --print-settings: $settings" >&2
  exit 1
fi
address="${fields[0]}" host="${fields[1]}" port="${fields[2]}"
cameras="${fields[3]}" secured="${fields[4]}" metrics="${fields[5]}"
if [[ -z "$address" ]]; then
  echo "run.sh: port 0 (a free port, picked by the server) leaves the dashboard nothing to" \
    "dial; pass --port N" >&2
  exit 2
fi
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "run.sh: port $port is taken (another convstream serve?), so the server cannot" \
    "listen there; stop what holds it, or pass --port N" >&2
  exit 1
fi
for where in $metrics; do
  if (exec 3<>"/dev/tcp/$where") 2>/dev/null; then
    echo "run.sh: metrics port ${where##*/} is taken, so the server cannot serve its metrics" \
      "there; pass --metrics-port N (-1: no metrics)" >&2
    exit 1
  fi
done
dash_port="${CONVSTREAM_DASHBOARD_PORT:-8080}"
if (exec 3<>"/dev/tcp/127.0.0.1/$dash_port") 2>/dev/null; then
  echo "run.sh: port $dash_port is taken, so the dashboard cannot listen there; set" \
    "CONVSTREAM_DASHBOARD_PORT to a free port" >&2
  exit 1
fi
# Its own "convstream dashboard on URL" line is left out: this script says the URL below,
# with the cameras the page will show (both said it, one after the other). Its alerts are
# kept in the checkout (ignored by git), at most 200 MB of them: each restart of this script
# restarts the dashboard, and an operator's 110 unhandled alerts were gone without a word.
"$convstream" dashboard --address "$address" --port "$dash_port" \
  --alerts-dir "$root/.convstream/alerts-$dash_port" --alerts-max-mb 200 > /dev/null &
dashboard=$!
"$convstream" serve "$@" &
server=$!
stop() { kill -TERM "$server" "$dashboard" 2>/dev/null || true; }
trap stop TERM INT
# SIGHUP reloads the server's config (cameras, tokens), as it does sent to the server itself.
trap 'kill -HUP "$server" 2>/dev/null || true' HUP
trap 'kill "$dashboard" 2>/dev/null || true' EXIT
# The dashboard's URL is printed once it answers there; a dashboard that could not start
# (its port taken) stops the whole thing, rather than leave a URL that shows something else.
for _ in $(seq 100); do
  if ! kill -0 "$dashboard" 2>/dev/null; then
    echo "run.sh: the dashboard did not start (its error is above); stopping the server" >&2
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" || true
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$dash_port") 2>/dev/null; then
    shows="the server pulls no cameras; streams sent with \`convstream stream --publish\` show"
    if [[ -n "$cameras" ]]; then
      shows="cameras: ${cameras// /, }, once the server is up"
    fi
    echo "dashboard: http://127.0.0.1:$dash_port/ ($shows)"
    break
  fi
  sleep 0.1
done
if [[ -n "$secured" ]]; then
  echo "note: this server wants TLS or a token, and this dashboard connects in plaintext" \
    "without one; start \`convstream dashboard\` yourself (docs/production.md)"
fi
# wait returns early (128 + the signal) when a trapped signal arrives: wait again until the
# server has drained and exited, and exit with its status.
status=""
while [[ -z "$status" ]]; do
  if wait "$server"; then
    status=0
  else
    code=$?
    kill -0 "$server" 2>/dev/null || status=$code
  fi
done
exit "$status"
