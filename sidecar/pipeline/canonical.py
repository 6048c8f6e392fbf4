"""Stage 0: one canonical request target, and header values that are text.

The request line is parsed once, here, from the raw target the caller sent (`request.raw_path`). The
result (`call.path`, `call.query`) is what the classifier names, what the policy judges, what approvals
bind, what the audit records, and, byte for byte, the target of the upstream request. Anything an
upstream could read as a different target is refused with 400 `invalid_request` before classification
(docs/security.md):

- a target that is not origin-form (`/...`), a fragment (`#`), a backslash, a character outside
  RFC 3986's path (pchar) or query characters, a malformed percent escape;
- in the path, an encoded `/`, `\\`, `%`, `?` or `#` (`%2F`, `%5C`, `%25`, `%3F`, `%23`, any case), an
  encoded control character, an empty segment (`//`), a dot segment (`.` or `..`, encoded or not);
- a trailing slash: it is an empty last segment, refused like `//`. The canonical path never ends in
  `/`, so `/v1/models/` is not quietly served as `/v1/models` (an upstream may route the two apart).

Canonical form (RFC 3986 §6.2.2 normalisation, taken to one spelling per decoded segment):
- path: each segment is decoded and re-encoded exactly as the openai SDK encodes a path parameter
  (pchar characters as themselves, every other byte as upper-case `%XX`), so `%66ile-%3a1` and
  `file-:1` are the same segment `file-:1`, and a policy matching ids sees one spelling;
- query: escapes of unreserved characters are decoded, other escapes upper-cased, and nothing else
  touched (`+` and `%2B`, `&` and `%26` differ to a form decoder, so they are kept as sent).

Every header value must be valid UTF-8: aiohttp decodes the bytes with `surrogateescape`, and a lone
surrogate crashes or confuses whatever reads it next (the embedded engine, the audit, the logs). Such a
request is refused before any other stage reads a header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web

from sidecar.errors import SidecarError, invalid_request
from sidecar.pipeline.context import Call

UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PCHAR_SAFE: Final = "!$&'()*+,;=:@"  # sub-delims, ":" and "@": RFC 3986 pchar, besides unreserved
_SEGMENT_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@"
# Already canonical (the openai SDK's own requests): no escapes, no empty or dot segments.
_FAST_PATH = re.compile(rf"(?:/(?!\.\.?(?:/|\Z))[{_SEGMENT_CHARS}]+)+\Z")
_SEGMENT = re.compile(rf"(?:[{_SEGMENT_CHARS}]|%[0-9A-Fa-f]{{2}})*\Z")
# `[` and `]` are not query characters in RFC 3986, but clients send `include[]=...` unencoded.
_QUERY = re.compile(rf"(?:[{_SEGMENT_CHARS}/?\[\]]|%[0-9A-Fa-f]{{2}})*\Z")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Bytes that, decoded by an upstream, would change how it splits the path (or that no id holds).
_PATH_FORBIDDEN: Final = {0x2F: "/", 0x5C: "\\", 0x25: "%", 0x3F: "?", 0x23: "#"}
_SHOWN = 120  # characters of a refused target kept for the audit and the error message


def canonical_target(raw: str) -> tuple[str, str]:
    """The canonical (path, query) of a raw origin-form request target; raises 400 when ambiguous."""
    path, _, query = raw.partition("?")
    if _FAST_PATH.match(path) is None:
        path = _canonical_path(path)
    if "#" in query:
        raise _refused("a fragment (#)")
    if _QUERY.match(query) is None:
        raise _refused("a query character that must be percent-encoded, or a malformed % escape")
    if "%" in query:
        query = _ESCAPE.sub(_normal_escape, query)
    return path, query


def target(path: str, query: str) -> str:
    """The request target sent upstream (and bound by approvals): the canonical path and query."""
    return f"{path}?{query}" if query else path


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse a header whose name or value is not valid UTF-8 (aiohttp's surrogate escapes), and any
    header sent twice: the policy would see one value while the upstream joins both (`openai-beta`), or
    the sidecar would read one credential while a peer reads the other."""
    names: set[str] = set()
    for name, value in headers.items():
        if not name.isascii():
            raise invalid_request("A header name is not ASCII.")
        if not value.isascii() and not _is_utf8(value):
            raise invalid_request(f"The value of header {name!r} is not valid UTF-8.")
        names.add(name.lower())
    if len(names) != len(headers):
        seen: set[str] = set()
        for name, _ in headers.items():  # (iterating a multidict itself yields each name once)
            if name.lower() in seen:
                raise invalid_request(f"The header {name!r} is sent more than once; send it once.")
            seen.add(name.lower())


def canonicalize(request: web.Request, call: Call) -> None:
    """Check the headers, then set `call.path` and `call.query` from the raw request target.

    On refusal `call.path` holds a printable, bounded rendering of what was sent, for the audit.
    """
    raw = request.raw_path
    try:
        check_headers(request.headers)
        call.path, call.query = canonical_target(raw)
    except SidecarError:
        call.path = shown_path(raw)
        raise


def shown_path(raw: str) -> str:
    """A refused target's path as printable ASCII (other bytes as %XX), cut to a bounded length."""
    path = re.split(r"[?#]", raw, maxsplit=1)[0][:_SHOWN]
    if path.isascii() and path.isprintable():
        return path
    data = path.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if 0x20 < b < 0x7F else f"%{b:02X}" for b in data)


def _canonical_path(path: str) -> str:
    if not path.startswith("/"):
        raise _refused("not an absolute path (/v1/...)")
    if "#" in path:
        raise _refused("a fragment (#)")
    if "\\" in path:
        raise _refused("a backslash")
    out = []
    for segment in path[1:].split("/"):
        if not segment:
            raise _refused("an empty path segment (// or a trailing /)")
        if _SEGMENT.match(segment) is None:
            raise _refused("a path character that must be percent-encoded, or a malformed % escape")
        decoded = unquote_to_bytes(segment)
        if "%" in segment:
            for byte, shown in _PATH_FORBIDDEN.items():
                if byte in decoded:
                    raise _refused(f"an encoded {shown!r} in a path segment")
            if any(b < 0x20 or b == 0x7F for b in decoded):
                raise _refused("an encoded control character")
        if decoded in (b".", b".."):
            raise _refused("a dot segment (. or ..)")
        out.append(quote(decoded, safe=PCHAR_SAFE))
    return "/" + "/".join(out)


def _normal_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    if char in UNRESERVED:
        return char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        raise _refused("an encoded control character")
    return match.group(0).upper()


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: aiohttp's escape for a byte that is not UTF-8
        return False
    return True


def _refused(what: str) -> SidecarError:
    return invalid_request(
        f"The request target is ambiguous: {what}. Send its canonical form (see docs/security.md)."
    )
