#!/usr/bin/env bash
# System packages the tests need beyond pip: GStreamer's RTSP server (for real RTSP cameras
# on 127.0.0.1), PyGObject for the system Python that runs it, and Chromium (the dashboard's
# browser tests drive /usr/bin/chromium headless). Installs only what is
# missing, with apt-get (Debian/Ubuntu), as root or through sudo.
set -euo pipefail
check='import gi; gi.require_version("GstRtspServer", "1.0"); gi.require_version("Gst", "1.0")
from gi.repository import Gst; Gst.init(None)
missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay") if Gst.ElementFactory.find(e) is None]
raise SystemExit(1 if missing else 0)'
if /usr/bin/python3 -c "$check" 2>/dev/null && [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: install GStreamer's RTSP server, x264enc, PyGObject for /usr/bin/python3" \
    "and chromium" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends \
  python3-gi gir1.2-gst-rtsp-server-1.0 \
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
  chromium >/dev/null
/usr/bin/python3 -c "$check"
test -x /usr/bin/chromium
