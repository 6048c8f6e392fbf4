"""The canonical request (sidecar.pipeline.canonical), the key scrubber, and the account settings, unit by
unit; the end-to-end tests (a live sidecar and the dev upstream) are in test_e2e_request_line.py and
test_e2e_headers.py."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from sidecar import config
from sidecar.documents import Decision, MalformedDecision
from sidecar.errors import SidecarError
from sidecar.pipeline.canonical import (
    PCHAR_SAFE,
    canonical_target,
    check_headers,
    shown_path,
    target,
)
from sidecar.pipeline.scrub import MIN_FRAGMENT, REDACTED, KeyScrubber

# --- the request target ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/v1/models", "/v1/models", ""),
        ("/v1/models?", "/v1/models", ""),
        ("/v1/files?limit=10&after=file-1", "/v1/files", "limit=10&after=file-1"),
        # Escapes of unreserved and pchar characters are decoded: one spelling per segment.
        ("/v1/%66iles/file-%41bc", "/v1/files/file-Abc", ""),
        ("/v%31/models/ft%3agpt-4o%3Aacme", "/v1/models/ft:gpt-4o:acme", ""),
        # Other bytes stay encoded, with upper-case hex.
        ("/v1/files/a%c3%a9%20b", "/v1/files/a%C3%A9%20b", ""),
        ("/v1/files/...", "/v1/files/...", ""),  # three dots are a name, not a dot segment
        # Query: unreserved escapes decoded, others upper-cased, `+` and `%2B` kept apart.
        ("/v1/files?after=%66ile%2b1+2&x=%2f", "/v1/files", "after=file%2B1+2&x=%2F"),
        ("/v1/files?include[]=a&order=desc", "/v1/files", "include[]=a&order=desc"),
    ],
)
def test_accepted_targets_are_canonicalised(raw: str, path: str, query: str) -> None:
    assert canonical_target(raw) == (path, query)
    assert canonical_target(target(path, query)) == (path, query)  # canonical is a fixed point


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/files/file-abc%252Fcontent",  # encoded percent: one decode away from an encoded slash
        "/v1/files/file-abc%2Fcontent",  # encoded slash
        "/v1/files/file-abc%2fcontent",
        "/v1/files/a%5Cb",  # encoded backslash
        "/v1/files/a%3F/content",  # encoded ? and #: a decoding upstream would split there
        "/v1/files/a%23b",
        "/v1/vector_stores/../files/file-123",  # dot segments, plain and encoded
        "/v1/files/./file-1",
        "/v1/files/%2e%2e/x",
        "/v1/files/%2E",
        "/v1/files/.%2e",
        "/v1//files",  # empty segments, and the trailing slash
        "/v1/files/",
        "/v1/files\\file-1",  # backslash
        "/v1/files/a%zz",  # malformed escapes
        "/v1/files/a%4",
        "/v1/files/a%00b",  # encoded control characters
        "/v1/files?x=%0a",
        "/v1/files/a\x85",  # not ASCII
        "/v1/files/a\udc85",
        '/v1/files/a"b',  # not a pchar
        "/v1/files/a{b}",
        "/v1/files#frag",  # fragments
        "/v1/files?x=1#frag",
        "http://evil.example/v1/files",  # not origin-form
        "*",
        "/v1/files?x=a b",
        "/v1/files?x=<script>",
    ],
)
def test_ambiguous_targets_are_refused(raw: str) -> None:
    with pytest.raises(SidecarError) as caught:
        canonical_target(raw)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"
    error = caught.value.body()["error"]
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"


def test_shown_path_is_printable_and_bounded() -> None:
    assert shown_path("/v1/files/a%2Fb?x=1#y") == "/v1/files/a%2Fb"
    assert shown_path("/v1/a\x85\udc85b") == "/v1/a%C2%85%85b"
    assert len(shown_path("/v1/" + "a" * 10_000)) <= 120


# Bytes that matter to a path: pchar, delimiters, %, dots, control characters and non-ASCII.
_BYTES = st.sampled_from(list(b"aZ09-._~!$&'()*+,;=:@/?#%\\\x00\x1f\x7f\x80\xc3\xa9 \"<>[]{}|^`"))
_STYLES = st.sampled_from(["raw", "lower", "upper"])


@st.composite
def spelled_segment(draw: st.DrawFn) -> tuple[bytes, str]:
    """A decoded segment and one of its many spellings (each byte raw when it may be, or escaped)."""
    decoded = bytes(draw(st.lists(_BYTES, min_size=0, max_size=8)))
    out = []
    for byte in decoded:
        char, style = chr(byte), draw(_STYLES)
        raw_ok = byte < 0x80 and (char.isalnum() or char in "-._~" + PCHAR_SAFE)
        if style == "raw" and raw_ok:
            out.append(char)
        else:
            out.append(f"%{byte:02x}" if style == "lower" else f"%{byte:02X}")
    return decoded, "".join(out)


def _acceptable(decoded: bytes) -> bool:
    bad = set(b"/\\%?#") | set(range(0x20)) | {0x7F}
    return decoded not in (b"", b".", b"..") and not bad.intersection(decoded)


@settings(max_examples=400, deadline=None)
@given(st.lists(spelled_segment(), min_size=1, max_size=5))
def test_any_spelling_of_a_path_has_one_canonical_form(segments: list[tuple[bytes, str]]) -> None:
    raw = "/" + "/".join(spelled for _, spelled in segments)
    decoded = [d for d, _ in segments]
    if not all(_acceptable(d) for d in decoded):
        with pytest.raises(SidecarError):
            canonical_target(raw)
        return
    path, query = canonical_target(raw)
    # The same segments, spelled as the openai SDK spells them, and nothing the upstream could split.
    assert query == "" and path == "/" + "/".join(quote(d, safe=PCHAR_SAFE) for d in decoded)
    assert [unquote_to_bytes(s) for s in path[1:].split("/")] == decoded
    assert canonical_target(path) == (path, "")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="/.%2fFeE5cC3aA?#\\v1xz&=+;:", max_size=30))
def test_whatever_is_accepted_is_unambiguous(raw: str) -> None:
    try:
        path, query = canonical_target("/" + raw)
    except SidecarError as err:
        assert err.status == 400 and err.code == "invalid_request"
        return
    assert path.startswith("/") and not path.endswith("/") and "//" not in path
    assert not re.search(r"%(2f|25|5c|3f|23)", path, re.IGNORECASE) and "\\" not in path
    assert all(unquote_to_bytes(s) not in (b".", b"..") for s in path.split("/")[1:])
    assert "#" not in query and canonical_target(target(path, query)) == (path, query)


# --- header values -------------------------------------------------------------------------------------


def test_headers_must_be_utf8() -> None:
    check_headers(CIMultiDict({"User-Agent": "agent", "X-Agent-Name": "café ☕"}))
    for bad in ["agent\udc85", "\udcc3\udca9"]:  # aiohttp's surrogate escapes of bytes that are not UTF-8
        with pytest.raises(SidecarError) as caught:
            check_headers(CIMultiDict({"User-Agent": bad}))
        assert caught.value.status == 400 and "User-Agent" in caught.value.message


@given(st.binary(max_size=30))
def test_any_header_bytes_are_accepted_exactly_when_utf8(data: bytes) -> None:
    value = data.decode("utf-8", "surrogateescape")  # what aiohttp hands the handler
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(SidecarError):
            check_headers({"x-agent-name": value})
    else:
        check_headers({"x-agent-name": value})


# --- the provider key in what goes back ----------------------------------------------------------------

KEY = "sk-provider-SECRET-9f8e7d6c5b4a"


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {KEY[:8]}{'*' * 19}{KEY[-4:]}. You can find your API key at ...",
        f"Incorrect API key provided: {KEY[:8]}****{KEY[-2:]}",
        f"key={KEY}",
        f"truncated {KEY[:20]}...",
        f"middle {KEY[9:21]} part",
        f"ends ••••{KEY[-4:]}",
    ],
)
def test_key_and_its_fragments_are_scrubbed(text: str) -> None:
    out = KeyScrubber(KEY).text(text)
    assert REDACTED in out and KEY[:8] not in out and KEY[-4:] not in out and KEY[9:17] not in out


def test_text_without_the_key_is_untouched() -> None:
    scrubber = KeyScrubber(KEY)
    for text in ["req_0123456789abcdef", "a * b ** c", "wait...", "Rate limit reached for gpt-4o"]:
        assert scrubber.text(text) is text
    headers = CIMultiDict({"x-request-id": "req_1", "access-control-allow-origin": "*"})
    assert scrubber.headers(headers) is headers


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=20, max_size=60
    ),
    st.integers(0, 40),
    st.integers(MIN_FRAGMENT, 60),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_no_run_of_the_key_survives(key: str, start: int, length: int, before: str, after: str) -> None:
    key = "sk-" + key
    fragment = key[start : start + length]
    if len(fragment) < MIN_FRAGMENT:
        return
    out = KeyScrubber(key).text(before + fragment + after)
    assert not any(key[i : i + MIN_FRAGMENT] in out for i in range(len(key) - MIN_FRAGMENT + 1))


def test_response_headers_are_scrubbed() -> None:
    headers = CIMultiDict(
        {"www-authenticate": f'Bearer error_description="{KEY[:8]}****{KEY[-4:]}"', "a": "b"}
    )
    out = KeyScrubber(KEY).headers(headers)
    assert out["a"] == "b" and KEY[:8] not in out["www-authenticate"] and REDACTED in out["www-authenticate"]


# --- organization and project ----------------------------------------------------------------------------


def test_decision_upstream_is_parsed_and_validated() -> None:
    decision = Decision.parse({"allow": True, "upstream": {"organization": "org-acme", "project": "proj_1"}})
    assert (decision.upstream_organization, decision.upstream_project) == ("org-acme", "proj_1")
    assert decision.as_dict()["upstream"] == {"organization": "org-acme", "project": "proj_1"}
    assert Decision.parse({"allow": True, "upstream": None}).upstream_project is None
    for bad in [
        {"organisation": "org-acme"},  # misspelt: would silently bill the default account
        {"organization": "org acme"},
        {"project": "proj\r\nX-Api-Key: k"},
        {"project": 7},
        {"organization": ""},
    ]:
        with pytest.raises(MalformedDecision):
            Decision.parse({"allow": True, "upstream": bad})
    with pytest.raises(MalformedDecision):
        Decision.parse({"allow": True, "upstream": "org-acme"})


def test_account_and_forward_settings_are_validated() -> None:
    env = {"SIDECAR_AUTH_MODE": "pod", "SIDECAR_POD_SUB": "x"}
    loaded = config.load(
        environ={
            **env,
            "SIDECAR_UPSTREAM_ORGANIZATION": "org-acme",
            "SIDECAR_UPSTREAM_PROJECT": "proj_acme",
            "SIDECAR_FORWARD_HEADERS": "X-Custom-Trace, openai-version",
        }
    )
    assert loaded.upstream_organization == "org-acme" and loaded.forward_headers == (
        "x-custom-trace",
        "openai-version",
    )
    for bad in [
        {"SIDECAR_UPSTREAM_PROJECT": "proj 1"},
        {"SIDECAR_FORWARD_HEADERS": "authorization"},
        {"SIDECAR_FORWARD_HEADERS": "x-api-key"},
        {"SIDECAR_FORWARD_HEADERS": "x-forwarded-for"},
        {"SIDECAR_FORWARD_HEADERS": "X-HTTP-Method-Override"},
        {"SIDECAR_FORWARD_HEADERS": "openai-organization"},
        {"SIDECAR_FORWARD_HEADERS": "content-encoding"},
        {"SIDECAR_FORWARD_HEADERS": "bad header"},
    ]:
        with pytest.raises(config.ConfigError):
            config.load(environ={**env, **bad})
