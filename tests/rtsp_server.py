"""Serve a live H.264 test pattern over RTSP on 127.0.0.1 with GStreamer's RTSP server.

Run by the system Python (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0), not the
project's virtualenv: ``/usr/bin/python3 tests/rtsp_server.py --port 8554``. Prints "ready"
once it listens; stops on SIGTERM, SIGINT or SIGKILL.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def _quit(loop: GLib.MainLoop) -> bool:
    loop.quit()
    return GLib.SOURCE_REMOVE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/camera")
    parser.add_argument("--size", default="320x240", help="WxH")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--user", help="ask for this user (Basic authentication)")
    parser.add_argument("--password", default="")
    parser.add_argument("--udp-only", action="store_true", help="refuse RTP over TCP (461)")
    args = parser.parse_args()
    Gst.init(None)
    width, height = args.size.split("x")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
        "key-int-max=15 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    if args.udp_only:  # as cameras whose "RTP over RTSP" setting is off
        factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        for permission in ("media.factory.access", "media.factory.construct"):
            permissions.add_permission_for_role("viewer", permission, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    # GLib's main loop does not return to Python, so a Python signal handler would never run
    for number in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, number, _quit, loop)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
