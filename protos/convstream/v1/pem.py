"""TLS files: the PEM certificates and keys checked before gRPC (or the dashboard's HTTPS)
sees them, their dates and names read for the warnings that come before clients refuse them.

gRPC reports a bad certificate or key only as "Invalid private key" in its log and then fails
to bind, which reads as a port in use; the stdlib ``ssl`` module loads the same files and says
which one is wrong, so every file is checked here first, with the setting that names it.
Shared by the server and the dashboard (which must not import the server, nor onnxruntime
with it); the credentials that a reload rotates are the server's (convstream.server.tls).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from convstream.v1 import is_loopback


class TLSFileError(ValueError):
    """A TLS file is missing or unusable; the message names the setting and the path."""


# A certificate that expires sooner than this is warned of at start, on reload and by
# --check-config: time to renew it before every client refuses the server.
EXPIRY_WARNING = timedelta(days=14)


@dataclass(frozen=True)
class PemFiles:
    """The PEM contents gRPC is given: certificate chain, private key, client CA (or None);
    warnings: certificates that expire within EXPIRY_WARNING, one line each."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    warnings: tuple[str, ...] = field(default=(), compare=False)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path that reads ``data`` from memory (Linux's memfd): never a copy of the private key
    on disk, and no temporary folder needed (a container's read-only root, /tmp among it,
    failed every TLS start with a traceback). Elsewhere, a private temporary folder."""
    fd = -1
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or a seccomp profile's no
        fd = os.memfd_create("convstream-tls", os.MFD_CLOEXEC)
    if fd >= 0 and not os.path.exists(f"/proc/self/fd/{fd}"):  # no /proc to open it by
        os.close(fd)
        fd = -1
    if fd < 0:
        with tempfile.TemporaryDirectory(prefix="convstream-tls-") as folder:
            path = Path(folder) / "file.pem"
            path.write_bytes(data)
            yield str(path)
        return
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            out.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def readable_by_all(path: Path) -> str | None:
    """``"mode 0644"`` when every user of this machine may read the file (a secret in it is
    everyone's), else None (or when it cannot be looked at)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return f"mode {mode:04o}" if mode & stat.S_IROTH else None


def secret_file_warning(path: Path, what: str, advice: str = "") -> str | None:
    """The warning for a file of secrets (a private key, a token) that every user of this
    machine may read, ``what`` naming it ("--token-file /etc/x.token"); None otherwise.
    Readable by a group (mode 0640, for a group the program runs in) is how the docs set
    them up, so it is no warning."""
    mode = readable_by_all(path)
    if mode is None:
        return None
    return (
        f"{what} can be read by every user of this machine ({mode}): chmod 600 {path} (or "
        f"640, for a group the program runs in){advice}"
    )


def missing_files(files: dict[str, Path | None]) -> list[str]:
    """One line per setting whose file is missing, e.g. "tls_cert /etc/x.crt does not exist"."""
    problems = []
    for setting, path in files.items():
        if path is None:
            continue
        if not path.exists():
            problems.append(f"{setting} {path} does not exist")
        elif not path.is_file():
            problems.append(f"{setting} {path} is not a file")
    return problems


def read_pem(cert: Path, key: Path, client_ca: Path | None, host: str = "") -> PemFiles:
    """Read the files once and check them with ``ssl``, the way the server will use them.

    Raises:
        TLSFileError: a file cannot be read, is not the PEM it should be, or the key is not
            tls_cert's (or is encrypted, which gRPC cannot use).
    """
    problems = missing_files({"tls_cert": cert, "tls_key": key, "tls_client_ca": client_ca})
    if problems:
        raise TLSFileError("; ".join(problems))
    pem = PemFiles(_read("tls_cert", cert), _read("tls_key", key), None)
    if client_ca is not None:
        pem = PemFiles(pem.cert, pem.key, _read("tls_client_ca", client_ca))
    warnings = check_pem(pem, cert, key, client_ca, host=host)
    if said := secret_file_warning(key, f"tls_key {key}", ": anyone may pose as this server"):
        warnings.append(said)
    return PemFiles(pem.cert, pem.key, pem.client_ca, tuple(warnings))


def _pem_text(data: bytes) -> str:
    """PEM bytes as the str ssl takes: text around the blocks that is not ASCII (a comment
    in UTF-8, which OpenSSL itself skips) is dropped, where ssl refused the whole file with a
    TypeError (a traceback, and a reload that stopped half-way)."""
    return data.decode("ascii", "ignore")


def check_pem(
    pem: PemFiles,
    cert: Path,
    key: Path,
    client_ca: Path | None,
    now: datetime | None = None,
    host: str = "",
) -> list[str]:
    """TLSFileError naming the setting when ``pem`` (read from those paths) is unusable,
    expired or not yet valid; returns a line for each certificate that expires soon, and
    for one that names none of the names clients of a server on ``host`` dial."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if not pem.cert.strip():
        raise TLSFileError(f"tls_cert {cert} is empty (a certificate being copied in?)")
    try:
        context.load_verify_locations(cadata=_pem_text(pem.cert))
    except (ssl.SSLError, ValueError):  # ValueError: no certificate in it at all (DER)
        swapped = b"PRIVATE KEY-----" in pem.cert
        raise TLSFileError(
            f"tls_cert {cert} is not a PEM certificate"
            + (" (it holds a private key: are tls_cert and tls_key swapped?)" if swapped else "")
        ) from None
    if pem.client_ca is not None:
        if not pem.client_ca.strip():
            raise TLSFileError(f"tls_client_ca {client_ca} is empty (a CA being copied in?)")
        try:
            context.load_verify_locations(cadata=_pem_text(pem.client_ca))
        except (ssl.SSLError, ValueError):
            raise TLSFileError(
                f"tls_client_ca {client_ca} is not a PEM certificate (the CA that signs the "
                "clients' certificates)"
            ) from None
    encrypted = False

    def password() -> bytes:
        nonlocal encrypted
        encrypted = True
        return b""  # never prompt on a terminal: the server runs unattended

    # load_cert_chain reads only files: the bytes just read go to files in memory, so what is
    # checked is exactly what gRPC gets, even while the files are being replaced.
    with _memory_file(pem.cert) as cert_file, _memory_file(pem.key) as key_file:
        try:
            context.load_cert_chain(cert_file, key_file, password)
        except ssl.SSLError as exc:
            if encrypted:
                message = f"tls_key {key} is encrypted; gRPC needs it unencrypted"
            elif exc.reason == "KEY_VALUES_MISMATCH":
                message = f"tls_key {key} does not match tls_cert {cert}"
            elif b"CERTIFICATE-----" in pem.key and b"PRIVATE KEY-----" not in pem.key:
                message = (
                    f"tls_key {key} is not a PEM private key (it holds a certificate: are "
                    "tls_cert and tls_key swapped?)"
                )
            else:
                message = f"tls_key {key} is not a PEM private key"
            raise TLSFileError(message) from None
    now = datetime.now(UTC) if now is None else now
    # Clients refuse the server's own certificate (the chain's first) out of its dates, and
    # a client certificate none of the client CAs in date vouches for: those are refused.
    # An expired intermediate beside a valid path (an old cross-sign), or one old CA in a
    # bundle of several, is only warned of.
    warnings = _dates("tls_cert", cert, pem.cert, now, refuse="first")
    warnings += _names("tls_cert", cert, pem.cert, host=host)
    if pem.client_ca is not None:
        warnings += _dates("tls_client_ca", client_ca, pem.client_ca, now, refuse="all")
    return warnings


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL
)


def certificate_dates(setting: str, path: Path, data: bytes, *, renew: str) -> list[str]:
    """For a certificate served by other means (the dashboard's page over HTTPS): warning
    lines for the certificates in ``data`` (the file at ``path``, given as ``setting``) that
    expire within EXPIRY_WARNING, ending with how to ``renew``; TLSFileError when the first,
    the page's own, is out of its dates."""
    dates = _dates(setting, path, data, datetime.now(UTC), refuse="first", renew=renew)
    return dates + _names(setting, path, data, browsers=True)


def served_names(data: bytes) -> list[str] | None:
    """The subjectAltName entries of the served certificate (the first in ``data``); None
    without the extension, or for a form this reader does not know."""
    first = _PEM_CERTIFICATE.findall(data)[:1]
    try:
        return subject_alt_names(base64.b64decode(first[0])) if first else None
    except (ValueError, binascii.Error, IndexError, StopIteration):
        return None


def _names(
    setting: str, path: Path, data: bytes, *, browsers: bool = False, host: str = ""
) -> list[str]:
    """A warning when the served certificate (the first in ``data``) has no subjectAltName:
    clients and browsers check the host they dial against those names and no longer read
    the CN, so every connection by its address fails ("call host does not match SSL server
    name") though the files load. Also when the server listens on loopback alone (``host``)
    and the certificate names no loopback address nor localhost, which is what a client on
    this machine dials: a certificate of another host, copied in by mistake, passed the
    check and failed every new connection."""
    first = _PEM_CERTIFICATE.findall(data)[:1]
    if not first:
        return []
    try:
        names = subject_alt_names(base64.b64decode(first[0]))
    except (ValueError, binascii.Error, IndexError, StopIteration):
        return []  # a form this reader does not know: not warned of
    refusal = (
        "browsers: NET::ERR_CERT_COMMON_NAME_INVALID"
        if browsers
        else "gRPC: 'call host does not match SSL server name'"
    )
    if names is None:
        return [
            f"{setting} {path} has no subjectAltName: clients check the name or address they "
            f"connect to against those names, not the CN, and refuse this certificate "
            f"({refusal}); make it with the names clients use, e.g. openssl's -addext "
            "'subjectAltName=DNS:convstream.example,IP:10.0.0.5'"
        ]
    if host and is_loopback(host) and not any(_dialled(name, host) for name in names):
        return [
            f"{setting} {path} names {listed(names)}, and the server listens "
            f"on {host}, which only this machine reaches, where clients dial {host} or "
            "localhost: they refuse this certificate ('Hostname Verification Check failed') "
            "unless each sets the server name it checks (--server-name); is it another "
            "host's? Make it with -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost'"
        ]
    return []


def _dates(
    setting: str,
    path: Path | None,
    data: bytes,
    now: datetime,
    *,
    refuse: str,
    renew: str = "a reload, SIGHUP, serves the new files",
) -> list[str]:
    """Warning lines for the certificates in ``data`` that are out of their dates or expire
    within EXPIRY_WARNING; TLSFileError instead when the first one (refuse="first") or every
    one (refuse="all") is out of its dates: gRPC would serve it, and clients would refuse the
    handshake with nothing in the server's log."""
    warnings, out = [], []
    dated = 0
    for number, block in enumerate(_PEM_CERTIFICATE.findall(data), 1):
        try:
            not_before, not_after = certificate_validity(base64.b64decode(block))
        except (ValueError, binascii.Error):
            continue  # ssl loaded it; a form this reader does not know is not refused here
        dated += 1
        which = f"{setting} {path}" + (f" (certificate {number} in it)" if number > 1 else "")
        problem = None
        if now >= not_after:
            problem = (
                f"{which} expired on {not_after:%Y-%m-%d %H:%M} UTC; clients refuse an "
                "expired certificate: renew it"
            )
        elif now < not_before:
            problem = (
                f"{which} is not valid until {not_before:%Y-%m-%d %H:%M} UTC (it is now "
                f"{now:%Y-%m-%d %H:%M} UTC here: is this machine's clock right?)"
            )
        if problem is not None:
            if refuse == "first" and number == 1:
                raise TLSFileError(problem)
            out.append(problem)
            continue
        if not_after - now < EXPIRY_WARNING:
            days = (not_after - now) / timedelta(days=1)
            warnings.append(
                f"{which} expires on {not_after:%Y-%m-%d %H:%M} UTC, in {days:.1f} days: "
                f"renew it ({renew})"
            )
    if refuse == "all" and dated and len(out) == dated:
        raise TLSFileError("; ".join(out))
    return out + warnings


def describe(pem: PemFiles) -> str:
    """What the served certificate says of itself, for the log of a start or a rotation
    ("for DNS:convstream.example, IP:10.0.0.5, until 2027-03-01 12:00 UTC"): the paths alone
    did not tell which certificate a reload put in service."""
    names = served_names(pem.cert)
    until = expiry_times(pem).get("tls_cert")
    parts = ["for " + listed(names) if names is not None else "no SAN"]
    if until is not None:
        parts.append(f"until {datetime.fromtimestamp(until, UTC):%Y-%m-%d %H:%M} UTC")
    return ", ".join(parts)


def expiry_times(pem: PemFiles) -> dict[str, float]:
    """When the served files stop working, as Unix times: ``tls_cert``, when its first
    certificate (the server's own, which clients check) expires; ``tls_client_ca``, when the
    last of its CAs does (then every client certificate is refused). A setting whose
    certificates cannot be dated is left out."""
    times = {}
    first = _PEM_CERTIFICATE.findall(pem.cert)[:1]  # the server's own: what clients check
    for setting, blocks in (
        ("tls_cert", first),
        ("tls_client_ca", _PEM_CERTIFICATE.findall(pem.client_ca or b"")),
    ):
        ends = []
        for block in blocks:
            try:
                ends.append(certificate_validity(base64.b64decode(block))[1].timestamp())
            except (ValueError, binascii.Error):
                continue  # not dated here: left out, never another certificate's date
        if ends:
            times[setting] = max(ends)
    return times


def certificate_validity(der: bytes) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of a DER X.509 certificate; ValueError if it is not one.

    The stdlib's ssl module reads these only from a peer's certificate, so the certificate's
    DER is walked here (_tbs_fields).
    """
    fields = _tbs_fields(der)
    if len(fields) < 4 or fields[3][0] != 0x30:
        raise ValueError("no validity in the certificate")
    (first_tag, first), (second_tag, second) = list(_elements(fields[3][1]))[:2]
    return _time(first_tag, first), _time(second_tag, second)


SUBJECT_ALT_NAME = b"\x55\x1d\x11"  # the extension's OID, 2.5.29.17, as DER holds it


def subject_alt_names(der: bytes) -> list[str] | None:
    """The names a DER X.509 certificate's subjectAltName gives, as OpenSSL writes them
    ("DNS:convstream.example", "IP:10.0.0.5"; other kinds left out), or None without the
    extension; ValueError if it is not a certificate. Extensions ::= SEQUENCE OF Extension
    ::= SEQUENCE { extnID OID, critical BOOLEAN OPTIONAL, extnValue OCTET STRING }, in the
    tbsCertificate's [3] field; the value holds SEQUENCE OF GeneralName, a dNSName [2] or an
    iPAddress [7] among them."""
    for tag, value in _tbs_fields(der)[6:]:  # after the public key: [1], [2] ids, [3]
        if tag == 0xA3:  # [3] EXPLICIT extensions
            for _, extension in _elements(next(_elements(value))[1]):
                parts = list(_elements(extension))
                if parts[0] != (0x06, SUBJECT_ALT_NAME):
                    continue
                names = []
                for kind, name in _elements(next(_elements(parts[-1][1]))[1]):
                    if kind == 0x82:
                        names.append("DNS:" + name.decode("ascii", "replace"))
                    elif kind == 0x87 and len(name) in (4, 16):
                        names.append(f"IP:{ipaddress.ip_address(name)}")
                return names
    return None


def _dialled(name: str, host: str) -> bool:
    """Whether a subjectAltName entry covers what a client on this machine dials to reach a
    server on loopback ``host``: localhost, or the address itself (any loopback address when
    the host is named localhost, which may resolve to either)."""
    kind, _, value = name.partition(":")
    bare = host.strip().lower().strip("[]")
    if kind == "DNS":  # localhost reaches 127.0.0.1 or ::1, not 127.0.0.2
        return value.lower() == "localhost" and bare in ("localhost", "127.0.0.1", "::1")
    if bare == "localhost":
        return is_loopback(value)
    try:
        return ipaddress.ip_address(value) == ipaddress.ip_address(bare)
    except ValueError:
        return False


def listed(names: list[str], most: int = 8) -> str:
    """Names for a log line: the first ``most``, and how many more."""
    if not names:
        return "nothing"
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more" if more > 0 else "")


def _tbs_fields(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of a DER certificate's tbsCertificate fields after its version:
    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    signature, issuer, validity, subject, subjectPublicKeyInfo, [1] issuerUniqueID OPTIONAL,
    [2] subjectUniqueID OPTIONAL, [3] extensions OPTIONAL } ... }. ValueError if it is not
    one."""
    tag, body = next(_elements(der), (0, b""))
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, tbs = next(_elements(body), (0, b""))
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    fields = list(_elements(tbs))
    return fields[1:] if fields and fields[0][0] == 0xA0 else fields


def _elements(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, contents) of each DER element in ``data``, one after the other."""
    at = 0
    while at < len(data):
        tag, value, at = _element(data, at)
        yield tag, value


def _element(data: bytes, at: int) -> tuple[int, bytes, int]:
    """(tag, contents, offset after it) of the DER element at ``at``."""
    if at + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or at + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[at : at + length], at + length


def _time(tag: int, value: bytes) -> datetime:
    """UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as X.509 writes them."""
    text = value.decode("ascii")
    if tag == 0x17:  # two-digit years: 50-99 are 19xx, 00-49 20xx (RFC 5280, not strptime's 69)
        century = "19" if int(text[:2]) >= 50 else "20"
        parsed = datetime.strptime(century + text, "%Y%m%d%H%M%SZ")
    elif tag == 0x18:
        parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"not an X.509 time (tag {tag:#x})")
    return parsed.replace(tzinfo=UTC)


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"{setting} {path} cannot be read: {exc.strerror or exc}") from None
