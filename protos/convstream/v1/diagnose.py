"""Why a network camera did not open, in words an integrator can act on.

OpenCV only says that an open failed. ``why_closed`` looks again, the cheapest way that tells
the usual causes apart:

- one TCP connection: refused (nothing listens: camera down, wrong port), silence (host
  down, a firewall), or it connects;
- then, for ``rtsp://`` and ``http://``, one request as FFmpeg would make it (DESCRIBE, GET)
  and the status of the answer: 404 (a wrong path or stream name), 401 (no credentials, or
  wrong ones: the URL's are tried once, Basic or Digest as the camera asks), 403, or 200 (the
  camera is fine with the request: the stream itself did not open, say its codec);
- then, for an RTSP stream described, a SETUP of its video track over TCP, as the server's
  FFmpeg asks (torn down at once): 461 (the camera streams over UDP only), 453 (it has no
  room for another client), or another refusal.

All of it within one timeout. The words never name the address or the credentials: camera
errors reach clients, which know cameras by id only. The server says so of its cameras, and
the client of a URL it streams from (``convstream stream rtsp://...``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

Address = tuple[Any, ...]  # one of socket.getaddrinfo's answers

# query parameters that carry secrets, as many IP cameras take them: ?user=admin&pwd=...
# (or &p=, beside u=, or login= and hash=), session ids, one-time codes and signed URLs' st=
# and t=, which let anyone in as well; and
# the same in a path, as XMEye DVRs take them (/user=admin_password=..._channel=1), where the
# value runs to the URL's end (a password may hold '_')
SECRET_PARAMETERS = re.compile(
    r"([?&;_/](?:[^=&;\s]*(?:pas|pw|psw|token|key|auth|secret|sig|cred|session|sid|code|otp|pin"
    r"|hash|login)[^=&;\s]*|p|st|t)=)"
    r"[^&;#?\s'\"]*?([):,.]*)(?=[&;#?\s'\"]|$)",
    re.IGNORECASE,
)

_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_STATUS = re.compile(rb"^(RTSP|HTTP)/\d\.\d (\d{3}) ?([^\r\n]*)")
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
UNKNOWN = "OpenCV could not open it (no host and port to check)"
NO_STREAM = (
    "it accepts connections, but no video stream opened there (wrong path or stream name, "
    "credentials refused, or no answer to the request)"
)


def why_closed(url: str, timeout_s: float, waited_s: float = 0.0) -> str:
    """Why a network source did not open, as far as a connection and one request can tell.

    Args:
        url: the source's URL (rtsp, http, tcp or udp).
        timeout_s: the most it may take, all of it.
        waited_s: how long the caller already waited for the source (OpenCV's open), which
            the words "within N s" count with this probe's own time.
    """
    waited = waited_s + timeout_s
    try:
        parts = urlsplit(url)
    except ValueError:  # "rtsp://[::1/x": no URL urllib reads
        return UNKNOWN
    scheme = parts.scheme.lower()
    if scheme == "udp":
        return f"nothing arrived within {waited:.1f} s (is the source sending to this host?)"
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return UNKNOWN
    if not parts.hostname or not port:
        return UNKNOWN
    deadline = time.monotonic() + timeout_s
    try:
        address = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0]
        with _connect(address, deadline):
            pass
    except ConnectionRefusedError:
        return "connection refused: nothing listens at that address and port (camera down?)"
    except TimeoutError:
        return f"no answer within {waited:.1f} s (host down, or a firewall in the way?)"
    except OSError as exc:
        return f"cannot reach it: {exc.strerror or type(exc).__name__}"
    except ValueError:  # UnicodeError: an empty or over-long label in the host name
        return "its host name is not a valid name"
    if scheme in ("rtsps", "https"):
        return _handshake(parts, address, deadline, waited) or NO_STREAM
    if scheme == "tcp":  # no request to make: what it sends unasked says
        return _listen(address, deadline, waited)
    if scheme not in ("rtsp", "http"):
        return NO_STREAM
    try:
        return _ask(parts, scheme, address, deadline)
    except TimeoutError:
        return (
            f"it accepts connections, but did not answer an {scheme.upper()} request within "
            f"{waited:.1f} s (the camera or its server hung, or overloaded?)"
        )
    except (OSError, ValueError):  # it closed, or answered something else
        return NO_STREAM


# OpenSSL's reasons for a handshake answered by something that does not speak TLS
_PLAIN_ANSWERS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "UNEXPECTED_RECORD",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


def _handshake(parts: SplitResult, address: Address, deadline: float, waited: float) -> str:
    """Why an rtsps:// or https:// source's TLS handshake failed ("" if it did not): a plain
    RTSP or HTTP port named as TLS was said as a wrong path or stream name, and a camera's
    self-signed certificate, which FFmpeg refuses, as "no video stream opened"."""
    plain = parts.scheme.lower().removesuffix("s")
    try:
        # unchecked first, to tell a TLS port from a plain one whatever its certificate
        with (
            _connect(address, deadline) as sock,
            _unchecked().wrap_socket(sock, server_hostname=parts.hostname),
        ):
            pass
    except TimeoutError:
        return (
            f"it accepts connections, but did not answer a TLS handshake within {waited:.1f} s "
            f"(a plain {plain}:// port, which waits for a request, or a camera that hung?)"
        )
    except ssl.SSLError as exc:
        reason = exc.reason or type(exc).__name__
        if isinstance(exc, ssl.SSLEOFError) or reason in _PLAIN_ANSWERS:
            return (
                f"it accepts connections, but the TLS handshake failed ({reason}): is it a "
                f"plain {plain}:// source rather than {parts.scheme.lower()}://?"
            )
        return (
            f"it accepts connections, but the TLS handshake failed ({reason}): check the "
            "camera's TLS settings (a TLS version or cipher too old, a client certificate "
            "asked for?)"
        )
    except OSError:  # it closed the connection at the handshake
        return (
            "it accepts connections, but closed them at the TLS handshake: is it a plain "
            f"{plain}:// source rather than {parts.scheme.lower()}://?"
        )
    # then as FFmpeg checks it: its chain against this host's CAs (or SSL_CERT_FILE's), and
    # the name in the URL
    try:
        with (
            _connect(address, deadline) as sock,
            ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname),
        ):
            return ""
    except ssl.SSLCertVerificationError as exc:
        return (
            f"its TLS certificate is not trusted here ({exc.verify_message}), and FFmpeg "
            "refuses it (a camera's self-signed certificate, one from a private CA, or one for "
            "another name): trust it for the server's process (its CA in this host's store, "
            "or SSL_CERT_FILE naming a file that holds it), or use the camera's "
            f"{plain}:// URL on a network you trust"
        )
    except OSError:  # the unchecked handshake passed: not the certificate
        return ""


def _unchecked() -> ssl.SSLContext:
    """A TLS context that takes any certificate: to read what a camera answers, not to trust
    it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TS_PACKET = 188  # bytes of an MPEG-TS packet, which starts with the sync byte 0x47
_SENDS = (
    "it sends a stream, but OpenCV could not open it (a codec it cannot read, or no key "
    "frame within the open timeout?)"
)


def _listen(address: Address, deadline: float, waited: float) -> str:
    """What a tcp:// source sends unasked: MPEG-TS has its sync byte, 0x47, every 188 bytes."""
    first = b""
    try:
        with _connect(address, deadline) as sock:
            while len(first) < 2 * _TS_PACKET:  # two packets: a relay may start mid-packet
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(2 * _TS_PACKET - len(first))
                if not chunk:
                    break
                first += chunk
    except TimeoutError:
        if first:  # it sends, too little or too slowly to tell
            return _SENDS
        return (
            f"it accepts connections, but sent nothing within {waited:.1f} s (no stream "
            "there, or a server that waits to be asked, such as HTTP or RTSP?)"
        )
    except OSError:
        return NO_STREAM
    if not first:
        return "it accepts connections, but closes them without sending anything"
    if len(first) == 2 * _TS_PACKET and not any(
        first[k] == first[k + _TS_PACKET] == 0x47 for k in range(_TS_PACKET)
    ):
        return (
            "it accepts connections, but what it sends is not MPEG-TS (another protocol on "
            "that port?)"
        )
    return _SENDS


def _connect(address: Address, deadline: float) -> socket.socket:
    family, kind, proto, _, target = address
    sock = socket.socket(family, kind, proto)
    try:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def media_type(url: str, timeout_s: float) -> str:
    """The media type an http:// or https:// URL answers with: "image/jpeg" for one picture
    (a camera's snapshot URL rather than its stream), "multipart/x-mixed-replace" for an
    MJPEG stream; "" for an answer that is no success, or one that cannot be told."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return ""
    deadline = time.monotonic() + timeout_s
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
        address = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0]
        status, _, kind, _ = _answer(parts, scheme, address, deadline)
    except (OSError, ValueError):
        return ""
    return kind if 200 <= status < 300 else ""


def _answer(
    parts: SplitResult, scheme: str, address: Address, deadline: float
) -> tuple[int, str, str, bool]:
    """The request FFmpeg makes, with the URL's credentials if the camera asks for them:
    (status, reason, media type, whether the credentials were sent)."""
    status, reason, kind, sent, _ = _described(parts, scheme, address, deadline)
    return status, reason, kind, sent


def _described(
    parts: SplitResult, scheme: str, address: Address, deadline: float
) -> tuple[int, str, str, bool, _Setup | None]:
    """As _answer, and for an RTSP stream described (2xx), what a SETUP of its first video
    track needs; None otherwise."""
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password or "")
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    bare = urlunsplit((parts.scheme, host, parts.path or "/", parts.query, ""))
    target = bare if scheme == "rtsp" else urlunsplit(("", "", parts.path or "/", parts.query, ""))
    method = "DESCRIBE" if scheme == "rtsp" else "GET"
    tls_name = parts.hostname if scheme == "https" else None
    status, reason, challenge, kind, extra = _request(
        scheme, method, target, host, None, address, deadline, tls_name
    )
    sent = False
    if status == 401 and user is not None and challenge:
        authorization = _authorization(challenge, user, password, method, target)
        if authorization:
            status, reason, _, kind, extra = _request(
                scheme, method, target, host, authorization, address, deadline, tls_name
            )
            sent = True
    setup = None
    if scheme == "rtsp" and 200 <= status < 300 and kind == "application/sdp":
        base = extra.get("content-base", "") or target
        track = _video_track(extra.get("body", ""), base)
        if track:
            setup = _Setup(track, challenge if sent else "", user or "", password)
    return status, reason, kind, sent, setup


@dataclass(frozen=True)
class _Setup:
    """A described RTSP stream's first video track, and the credentials its DESCRIBE took."""

    url: str
    challenge: str
    user: str
    password: str


def _over_tcp() -> bool:
    """Whether this process's FFmpeg asks for RTSP over TCP alone, as the server's default
    has it (sources.py sets OPENCV_FFMPEG_CAPTURE_OPTIONS before it opens a camera). An
    operator's value may ask for UDP, and FFmpeg's own default (a client's, with none set)
    tries UDP first: a SETUP over TCP would then test what FFmpeg does not do."""
    options = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "").split("|")
    transport = next((o.split(";", 1)[1] for o in options if o.startswith("rtsp_transport;")), "")
    return transport.strip().lower() == "tcp"


def _video_track(sdp: str, base: str) -> str:
    """The control URL of an SDP's first video track ("" when it has none): as RFC 2326
    says, relative to the Content-Base, or the stream's own URL for "*" or none."""
    video, control = False, ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            if video:
                break
            video = line.startswith("m=video")
        elif video and line.startswith("a=control:"):
            control = line.removeprefix("a=control:").strip()
    if not video:
        return ""
    if control.lower().startswith(("rtsp://", "rtsps://")):
        return control
    if control in ("", "*"):
        return base
    return base.rstrip("/") + "/" + control


def _set_up(setup: _Setup, address: Address, deadline: float) -> tuple[int, str]:
    """SETUP of the track over TCP, as this server's FFmpeg asks for it (rtsp_transport tcp),
    and a TEARDOWN of the session it made, on the same connection: a camera serves a few
    sessions at once, and one left open would hold a place until it timed out. (status,
    reason)."""
    lines = ["SETUP " + setup.url + " RTSP/1.0", "CSeq: 2"]
    lines += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", "User-Agent: convstream"]
    if setup.challenge:
        authorization = _authorization(
            setup.challenge, setup.user, setup.password, "SETUP", setup.url
        )
        if authorization:
            lines.append(f"Authorization: {authorization}")
    with _connect(address, deadline) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = _head(sock, deadline)
        match = _STATUS.match(head)
        if match is None:
            raise ValueError("not an RTSP answer")
        status = int(match.group(2))
        session = _header(head, b"session").split(";", 1)[0]
        if 200 <= status < 300 and session:
            with contextlib.suppress(OSError):
                teardown = [f"TEARDOWN {setup.url} RTSP/1.0", "CSeq: 3", f"Session: {session}"]
                sock.sendall(("\r\n".join(teardown) + "\r\n\r\n").encode("latin-1"))
                _head(sock, deadline)
    return status, _quoted(match.group(3).decode("latin-1"))


def _head(sock: socket.socket, deadline: float) -> bytes:
    """An answer's status line and headers (up to 16 KiB)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def _header(head: bytes, name: bytes) -> str:
    """A header's value in an answer's head ("" without it)."""
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip().decode("latin-1")
    return ""


def _ask(parts: SplitResult, scheme: str, address: Address, deadline: float) -> str:
    """What the answer to the request FFmpeg makes says of why no stream opened."""
    status, reason, kind, with_credentials, setup = _described(parts, scheme, address, deadline)
    if setup is not None and _over_tcp():
        try:
            set_up, why = _set_up(setup, address, deadline)
        except (OSError, ValueError):  # closed, silent or garbled: some cameras drop a SETUP
            set_up, why = 0, ""  # over TCP they will not serve; said as the DESCRIBE's answer
        if set_up == 461:
            return (
                f"it does not stream over TCP (RTSP {set_up} {why} to a SETUP over TCP, which "
                "this server asks for): turn on RTP over RTSP (TCP) in the camera's settings, "
                'or start the server with OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;udp" '
                "for every camera (docs/server.md, Cameras)"
            )
        if set_up == 453:
            return (
                f"it has no room for another stream (RTSP {set_up} {why} to a SETUP): a "
                "camera serves a few clients at once; close another viewer of it (an NVR, a "
                "browser), or use the camera's second stream"
            )
        if set_up and not 200 <= set_up < 300:
            return (
                f"it describes the stream (RTSP {status} {reason}) but refused to set it "
                f"up (RTSP {set_up} {why} to a SETUP over TCP)"
            )
    if status == 401 and with_credentials:
        return (
            f"it refused the user name or password in the URL ({status} {reason}); a "
            "password's '@', ':' or '/' must be written %40, %3A, %2F"
        )
    said = f"{scheme.upper()} {status} {reason}".strip()
    if status == 401 and SECRET_PARAMETERS.search("?" + parts.query):
        # credentials in the query (?user=admin&pwd=...), as many cameras take them
        return (
            f"it refused the credentials in the URL's query ({said}); check them, or put the "
            f"user name and password after {scheme}:// instead, if the camera takes them there"
        )
    if status == 401:
        return (
            # not written as a URL with a password: redact() would hide the example's
            f"it asks for a user name and password ({said}): put them in the URL, after "
            f"{scheme}:// and before the host: the user name, ':', the password, then '@'"
        )
    if status == 404:
        return f"no stream at that path ({said}): check the stream's path or name"
    if status == 403:
        return f"it refused access to that stream ({said})"
    if 200 <= status < 300 and kind.startswith(("text/", "application/json", "application/xml")):
        # a camera's web page or API at the path, not its stream: said as a codec problem
        # before, which sent integrators looking in the wrong place
        return (
            f"it answers with {kind} ({said}), not a video stream: a web page or an API "
            "there, not the camera's stream; check the stream's path"
        )
    if 200 <= status < 300:
        return (
            f"it answers the request ({said}{', ' + kind if kind else ''}), but OpenCV could "
            "not open the stream there (a codec or format it cannot read, or no frames sent?)"
        )
    return f"it answered {said}"


def _request(
    scheme: str,
    method: str,
    target: str,
    host: str,
    authorization: str | None,
    address: Address,
    deadline: float,
    tls_name: str | None = None,
) -> tuple[int, str, str, str, dict[str, str]]:
    """One request on a new connection (over TLS to ``tls_name``, when given): (status,
    reason, WWW-Authenticate challenge, the Content-Type's media type, lower case, "" without
    one; and for an RTSP stream described, its "content-base" and SDP "body")."""
    protocol = "RTSP/1.0" if scheme == "rtsp" else "HTTP/1.1"  # https: HTTP over TLS
    lines = [f"{method} {target} {protocol}"]
    lines += ["CSeq: 1", "Accept: application/sdp"] if scheme == "rtsp" else [f"Host: {host}"]
    lines += ["User-Agent: convstream", "Connection: close"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    extra: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(_connect(address, deadline))
        if tls_name is not None:
            # checked as FFmpeg checks it: a request may carry the URL's credentials, and an
            # unchecked connection gave them to whoever answered it (an attacker who cut the
            # camera's checked one); an untrusted certificate is said by _handshake
            context = ssl.create_default_context()
            sock = stack.enter_context(context.wrap_socket(sock, server_hostname=tls_name))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = _head(sock, deadline)
        if method == "DESCRIBE" and head.startswith(b"RTSP/1.0 2"):
            # the session description: its video track is what a SETUP names
            head, _, body = head.partition(b"\r\n\r\n")
            length = _header(head, b"content-length")
            size = min(int(length), 65536) if length.isdigit() else 0
            while len(body) < size:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            extra = {"content-base": _header(head, b"content-base"), "body": body.decode("latin-1")}
    match = _STATUS.match(head)
    if match is None:
        raise ValueError("not an RTSP or HTTP answer")
    challenges = [
        line.split(b":", 1)[1].strip().decode("latin-1")
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"www-authenticate:")
    ]
    kind = _header(head, b"content-type").split(";", 1)[0].strip().lower()
    # Digest when offered: the stronger one, and the one cameras that offer both expect
    challenge = next((c for c in challenges if c.lower().startswith("digest")), "")
    challenge = challenge or (challenges[0] if challenges else "")
    reason = match.group(3).decode("latin-1")
    return int(match.group(2)), _quoted(reason), challenge, _quoted(kind), extra


def _quoted(text: str, limit: int = 80) -> str:
    """A camera's own words (a reason phrase, a content type) as they may be shown: printable
    characters only, at most `limit`. Verbatim, a device's escape sequences reached operators'
    terminals through `convstream cameras` (a title set, the screen cleared), and 3 KB of its
    text every log line."""
    shown = "".join(c if c.isprintable() else " " for c in text).strip()
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _authorization(
    challenge: str, user: str, password: str, method: str, uri: str, cnonce: str = ""
) -> str:
    """The Authorization header answering a Basic or Digest (MD5) challenge; "" for others.

    ``cnonce``: the client nonce of a Digest answer with qop (random when empty).
    """
    scheme, _, rest = challenge.partition(" ")
    if scheme.lower() == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if scheme.lower() != "digest":
        return ""
    params = {m.group(1).lower(): m.group(2) or m.group(3) for m in _PARAM.finditer(rest)}
    if params.get("algorithm", "MD5").upper() != "MD5":
        return ""
    realm, nonce = params.get("realm", ""), params.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    fields = {"username": user, "realm": realm, "nonce": nonce, "uri": uri}
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce = cnonce or os.urandom(8).hex()
        fields |= {"qop": "auth", "nc": "00000001", "cnonce": cnonce}
        fields["response"] = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
    else:
        fields["response"] = md5(f"{ha1}:{nonce}:{ha2}")
    if "opaque" in params:
        fields["opaque"] = params["opaque"]
    quoted = {"username", "realm", "nonce", "uri", "response", "opaque", "cnonce"}
    return "Digest " + ", ".join(
        f'{key}="{value}"' if key in quoted else f"{key}={value}" for key, value in fields.items()
    )
