"""Passwords and tokens hidden wherever a camera's URL is shown: the server's log, its
metrics' labels, its errors, and the names clients give their frames' source (which the
server echoes in results and may publish to other clients). One rule for both sides."""

from __future__ import annotations

import re

from convstream.v1.diagnose import SECRET_PARAMETERS

# user:password@ after the scheme. Passwords that were not percent-encoded may hold '@', ':'
# or '/': the password runs to the last '@' that a host name and then a path, a query or the
# end follow, so no part of it is left showing (at worst an odd '@' in a path hides more);
# or, without a '/', it may hold spaces.
_HOST_FOLLOWS = r"(?=[^@/\s]*(?:[/?#\s'\"]|$))"
_CREDENTIALS = re.compile(r"(//[^/:\s]*):(?:\S*|[^/@\n]*)@" + _HOST_FOLLOWS)
# a user name alone, which some cameras take as an access token: rtsp://TOKEN@host
_USER_ONLY = re.compile(r"//[^/:\s@]+@" + _HOST_FOLLOWS)
# user:password@host in a URL mistyped without its '//' (rtsp:/admin:pw@host, rtsp:admin:pw@
# host, admin:pw@host), which a config error quotes back: everything from the word before the
# first ':' to the last '@' a host follows is hidden (a password may hold '@'), the scheme
# or user name with it when it cannot be told apart.
_LOOSE_CREDENTIALS = re.compile(r"(?<![^\s'\"(=])([^\s:/@'\"(]+):(?!//)[^\s'\"]*@" + _HOST_FOLLOWS)
# Query (and XMEye path) parameters whose values are shown: what picks a stream, its format
# and transport. Every other parameter's value is hidden, whatever its name: a list of names
# that carry secrets missed clave=, senha=, mdp=, psd= and user=admin:password.
SHOWN_PARAMETERS = (
    "channel|channels|channelno|chn|ch|subtype|streamtype|sub|main|profile|resolution|res"
    "|fps|framerate|rate|width|height|size|seed|camera|cam|codec|videocodec|compression"
    "|transport|transportmode|rtsp_transport|unicast|multicast|tcp|udp|proto|mode|quality"
    "|audio|video|media|track|type|format|fmt|bitrate|gop|buffer|latency|index"
)
# Within a URL only (a path with '=' in it, or a setting quoted in a message, is no query):
# any name, '%70wd' and 'auth[password]' too.
_URL = re.compile(r"(?:[a-z][a-z0-9+.\-]*://|demo:)[^\s'\"<>]+", re.IGNORECASE)
_PARAMETER_VALUE = re.compile(
    rf"([?&;_/#](?!(?:{SHOWN_PARAMETERS})=)[^=&;#?\s'\"/]+=)([^&;#?\s'\"]*?)([):,.]*)"
    r"(?=[&;#?\s'\"]|$)",
    re.IGNORECASE,
)
# A value of a few digits is shown, where the name is not a secret's (pin=, p=, code=): it
# numbers a stream (?stream=1, ?chan=3), and hidden, two cameras' names read the same
# (a diff review's: the client names a video's results by its URL).
_NUMBER = re.compile(r"\d{1,4}")


def _hidden(match: re.Match[str]) -> str:
    name, value, tail = match.groups()
    if _NUMBER.fullmatch(value) and not SECRET_PARAMETERS.match("?" + name[1:] + value):
        return match.group(0)
    return f"{name}***{tail}"


# redact() reads this much of a text at most: its patterns try a URL at each '//' and ':'
# and run on to the end of the word, so their time grows with the square of a word's length
# (a 64 KiB health service name of '//:' repeated held the server 13 s, every thread waiting
# on it: a security review's). A camera's URL, an error or a name is far shorter.
REDACT_MAX = 2048
# a password with spaces (_CREDENTIALS' second form) that a cut leaves without its '@'
_OPEN_PASSWORD = re.compile(r"//[^/:\s]*:[^/@\n]*\Z")


def redact(text: str, read: int = REDACT_MAX) -> str:
    """Hide passwords in URLs: rtsp://user:secret@host -> rtsp://user:***@host, a user name
    alone (rtsp://***@host: it may be a token), and the values of a URL's query parameters
    but those that pick a stream and its format (SHOWN_PARAMETERS: channel=1&subtype=0
    stay) and numbers of a few digits under names no secret has (stream=2 stays). Of a text
    over ``read`` characters (REDACT_MAX at most), what comes before them, less the word the
    cut goes through (it may be a URL whose '@' is past the cut), and how many characters are
    not shown."""
    read = min(read, REDACT_MAX)
    if len(text) <= read:
        return _redacted(text)
    words = text[:read].rsplit(maxsplit=1)
    kept = words[0] if len(words) == 2 else ""
    if cut := _OPEN_PASSWORD.search(kept):
        kept = kept[: cut.start()]
    return f"{_redacted(kept)} ({len(text) - len(kept):,} characters not shown)".lstrip()


def _redacted(text: str) -> str:
    text = _USER_ONLY.sub("//***@", _CREDENTIALS.sub(r"\1:***@", text))
    text = _LOOSE_CREDENTIALS.sub(r"\1:***@", text)  # no '//': not done by the line above
    return _URL.sub(lambda url: _PARAMETER_VALUE.sub(_hidden, url.group(0)), text)


def names_a_secret(text: str) -> bool:
    """Whether text holds a URL's password, a user name alone (it may be a token), or a
    query parameter named like a secret (pwd=, token=, ...): a config file's line that must
    not be readable by all. Not every value redact hides: channel=1&proto=Onvif is none."""
    return any(
        pattern.search(text)
        for pattern in (_CREDENTIALS, _USER_ONLY, _LOOSE_CREDENTIALS, SECRET_PARAMETERS)
    )


def shown(value: object, limit: int = 60) -> str:
    """repr(value) for a message: passwords hidden (as by redact) before it is cut to limit
    characters, so that a cut never leaves part of one showing. It reads 4 times what it
    shows (256 characters at least): an unauthenticated health Check's 2,048 characters of
    URL-like name took 7 ms of the event loop to redact (a review's)."""
    text = redact(repr(value), read=max(4 * limit, 256))
    return text if len(text) <= limit else text[: limit - 3] + "..."
