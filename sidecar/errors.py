"""OpenAI-shaped error responses (docs/errors.md).

Every failure the sidecar produces itself is a `SidecarError`; the proxy turns it into the body the
`openai` client parses (`{"error": {"message", "type", "param", "code"}}`) so agents raise the right
exception class, and adds `x-should-retry: false` where a retry cannot succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from aiohttp import web

# The OpenAI `type` that goes with each HTTP status the sidecar emits.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
# Codes whose OpenAI `type` is not the one of their status: an exhausted budget is a quota, as at OpenAI.
_CODE_TYPES = {"budget_exceeded": "insufficient_quota"}


@dataclass(slots=True)
class SidecarError(Exception):
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": _CODE_TYPES.get(self.code) or _ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def no_retry(status: int, code: str, message: str, **headers: str) -> SidecarError:
    """An error the client must not retry: the same request would get the same answer."""
    return SidecarError(status, code, message, {"x-should-retry": "false", **headers})


def unauthenticated(message: str = "Missing or invalid caller credential.") -> SidecarError:
    return SidecarError(401, "unauthenticated", message, {"www-authenticate": 'Bearer realm="sidecar"'})


def invalid_request(message: str, param: str | None = None) -> SidecarError:
    return SidecarError(400, "invalid_request", message, {"x-should-retry": "false"}, param)


def too_large(limit: int) -> SidecarError:
    return no_retry(413, "request_too_large", f"Request body exceeds the sidecar's limit of {limit} bytes.")


def policy_unavailable(detail: str) -> SidecarError:
    return SidecarError(503, "policy_unavailable", f"Policy engine unavailable: {detail}")


def overloaded(message: str, retry_after: int) -> SidecarError:
    """The sidecar itself is too busy (its dependencies are not to blame): retry after a pause."""
    return SidecarError(503, "overloaded", message, {"retry-after": str(retry_after)})


def error_response(err: SidecarError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id, **err.headers}
    return web.Response(
        status=err.status, body=orjson.dumps(err.body()), content_type="application/json", headers=headers
    )
