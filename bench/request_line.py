"""Per-call CPU of the canonical request and header work (issue 15's 5% budget), with timeit.

    .venv/bin/python bench/request_line.py [--number N]

Times, on a typical openai-SDK request and OpenAI response: the canonical stage (target + header
check), the upstream header allowlist, the account choice, and the provider-key scrub of the response
headers; and, for comparison, what the forward stage did before (`rel_url.path_qs` and the header
denylist). Prints µs per call for each.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from sidecar import config
from sidecar.documents import Decision
from sidecar.pipeline.canonical import canonicalize
from sidecar.pipeline.context import Call
from sidecar.pipeline.forward import _W3C, HOP_BY_HOP, Forwarder

SDK_HEADERS = {
    "Host": "127.0.0.1:8080",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "AsyncOpenAI/Python 1.99.0",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.99.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.9",
    "Authorization": "Bearer ck-acme-agent-key",
    "X-Stainless-Async": "async:asyncio",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "Content-Length": "120",
}
RESPONSE_HEADERS = {
    "date": "Mon, 01 Jan 2026 00:00:00 GMT",
    "content-type": "application/json",
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "1999812",
    "x-request-id": "req_0123456789abcdef0123456789abcdef",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "cf-cache-status": "DYNAMIC",
    "server": "cloudflare",
    "alt-svc": 'h3=":443"; ma=86400',
}
# A project key is the long case for the scrubber (one search block per 4 characters).
PROJECT_KEY = "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5tUv8xYz1BcD4" * 5 + "T3BlbkFJ"
_OLD_DROP = HOP_BY_HOP | {"host", "content-length", "authorization", "cookie", "api-key", "x-end-user-token",
                          "accept-encoding", "x-request-id", "traceparent", "tracestate"}  # fmt: skip


def _old_upstream_headers(request: Any, call: Call, auth: str) -> CIMultiDict[str]:
    """The forward stage's header work before issue 15 (a denylist), for the comparison."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() not in _OLD_DROP:
            headers.add(name, value)
    headers["Authorization"] = auth
    headers["Accept-Encoding"] = "identity"
    headers["X-Client-Request-Id"] = call.id
    headers["traceparent"] = f"00-{call.trace_id}-{call.span_id}-01"
    _W3C.inject(headers)
    return headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5_000)
    n: int = parser.parse_args().number
    settings = config.load(environ={"SIDECAR_AUTH_MODE": "pod", "SIDECAR_UPSTREAM_API_KEY": PROJECT_KEY})
    forwarder = Forwarder(settings)
    decision = Decision(allow=True)
    response = CIMultiDict(RESPONSE_HEADERS)
    cases = {
        "POST /v1/responses": make_mocked_request("POST", "/v1/responses", headers=SDK_HEADERS),
        "GET /v1/files/{id}/content?limit&after": make_mocked_request(
            "GET", "/v1/files/file-abc123/content?limit=10&after=file-xyz", headers=SDK_HEADERS
        ),
        "GET, escaped (slow path)": make_mocked_request(
            "GET", "/v1/files/file-%61bc%3A1?after=%66ile", headers=SDK_HEADERS
        ),
    }

    def per_call(fn: Callable[[], object]) -> float:
        # The best of 15 runs: other processes on the machine only ever add time.
        return min(timeit.repeat(fn, number=n, repeat=15)) / n * 1e6

    for label, request in cases.items():
        call = Call(id="req_1", method=request.method, path="", trace_id="a" * 32, span_id="b" * 16)
        canonicalize(request, call)
        new = {
            "canonical stage (target + headers)": per_call(lambda: canonicalize(request, call)),  # noqa: B023
            "upstream headers (allowlist)": per_call(lambda: forwarder.upstream_headers(request, call, None)),  # noqa: B023
            "account choice": per_call(lambda: forwarder.bind_account(call, request, decision)),  # noqa: B023
            "key scrub of response headers": per_call(lambda: forwarder.scrubber.headers(response)),
        }
        old = {
            "rel_url.path_qs": per_call(lambda: request.rel_url.path_qs),  # noqa: B023
            "upstream headers (denylist)": per_call(
                lambda: _old_upstream_headers(request, call, "Bearer k")  # noqa: B023
            ),
        }
        print(f"\n{label}")
        for name, micros in new.items():
            print(f"  {name:<40} {micros:7.2f} µs")
        for name, micros in old.items():
            print(f"  {'before: ' + name:<40} {micros:7.2f} µs")
        added = sum(new.values()) - sum(old.values())
        print(f"  {'added per call':<40} {added:7.2f} µs")


if __name__ == "__main__":
    main()
