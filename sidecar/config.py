"""Settings (docs/configuration.md): environment variables or a YAML file (`--config`); the environment wins.

YAML keys are the variable names without the `SIDECAR_` prefix, in lower case
(`upstream_url: https://api.openai.com`); the full variable name is accepted too.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.documents import UPSTREAM_ID

PACKAGE_BUNDLE = Path(__file__).resolve().parent / "bundle"

# Headers that may be shown to the policy; credentials are refused even if an operator lists them.
DEFAULT_INPUT_HEADERS = (
    "x-tenant-id",
    "x-agent-name",
    "user-agent",
    "x-stainless-retry-count",
    "openai-beta",
)
NEVER_INPUT_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-end-user-token", "api-key"}
)
# Request headers SIDECAR_FORWARD_HEADERS may not add to the forwarded ones (sidecar.pipeline.forward):
# credentials, what the sidecar sets itself (framing, account, request id, trace), hop-by-hop headers, and
# routing overrides an upstream or a proxy in front of it might obey. Names starting `x-forwarded-` or
# `proxy-` are refused too.
NEVER_FORWARD_HEADERS = NEVER_INPUT_HEADERS | {
    "x-api-key",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "accept-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "openai-organization",
    "openai-project",
    "x-client-request-id",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-end-user-token",
    "forwarded",
    "via",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
}
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z")
# Signature algorithms a JWT may use (SIDECAR_JWT_ALGORITHMS picks from these): public-key ones only.
JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


class ConfigError(ValueError):
    """A setting has a value the sidecar cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    upstream_url: str = "https://api.openai.com"
    upstream_api_key: str = field(default="", repr=False)
    upstream_api_key_file: str = ""
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0
    upstream_max_connections: int = 256
    opa_url: str = ""
    opa_timeout: float = 0.5
    bundle: str = str(PACKAGE_BUNDLE)
    bundle_url: str = ""
    bundle_poll_seconds: float = 10.0
    bundle_watch: bool = True
    bundle_verification_key: str = ""
    bundle_verification_key_id: str = "default"
    bundle_signing_alg: str = "RS256"
    decision_path: str = "sidecar/decision"
    decision_cache_entries: int = 10_000
    redis_url: str = ""
    redis_timeout: float = 0.5
    budget_reservation_ttl: int = 900
    auth_mode: str = "static"
    static_keys_file: str = ""
    oidc_issuer: str = ""
    jwks_url: str = ""
    jwt_audience: str = ""
    tenant_claim: str = "tenant"
    # Identity (sidecar.identity): JWT verification, the end-user token, and pod mode. See README "Identity".
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_leeway: float = 30.0
    groups_claim: str = "groups"
    jwks_min_refresh_interval: float = 30.0
    jwks_max_age: float = 300.0
    jwks_timeout: float = 5.0
    jwks_ca_file: str = ""
    jwks_token_file: str = ""
    end_user_issuer: str = ""
    end_user_jwks_url: str = ""
    end_user_audience: str = ""
    end_user_groups_claim: str = ""
    pod_sub: str = ""
    pod_tenant: str = ""
    pod_groups: str = ""
    pod_namespace: str = ""
    pod_service_account: str = ""
    pod_info_dir: str = ""
    pod_tenant_label: str = "tenant"
    # Approvals (sidecar.approvals): how long one waits for a decision, then for its use; the approver
    # query; the notification webhook; how the admin API authenticates approvers (jwt | static | off).
    approval_ttl: float = 3600.0
    approver_decision_path: str = "sidecar/approver"
    approval_webhook_url: str = ""
    approval_webhook_secret: str = field(default="", repr=False)
    approval_webhook_timeout: float = 5.0
    admin_auth: str = ""  # default: jwt when a JWKS is configured, else static with the keys file
    admin_jwt_audience: str = ""  # default: SIDECAR_JWT_AUDIENCE
    # A gated upload is read in full before it is forwarded (sidecar.approvals.spool): at most this many
    # bytes (0: SIDECAR_MAX_UPLOAD_BYTES, which is also the ceiling), beyond 1 MiB in a temporary file in
    # this directory (empty: the system temporary directory).
    approval_spool_bytes: int = 0
    approval_spool_dir: str = ""
    audit_log: str = "-"
    fail_mode: str = "closed"
    pii_mode: str = "ner"
    pii_config: str = ""
    pii_score_threshold: float = 0.35
    pii_workers: int = 2
    pii_max_tasks_per_child: int = 2000
    pii_timeout: float = 10.0
    pii_cache_entries: int = 50_000
    pii_max_chunk_chars: int = 20_000  # the most text one worker task holds; longer texts are windowed
    pii_worker_memory_mb: int = 1024  # address space a worker may add after warm-up (RLIMIT_AS); 0: none
    pii_restart_backoff_max: float = 30.0  # seconds: the longest wait between two rebuilds of the pool
    max_body_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    # Hostile bodies and slow clients (sidecar.pipeline.receive, sidecar.listener): how deep a JSON body may
    # nest; how long a request head may take from the connection (or its first byte); the longest silence
    # while a body is read (408); how long an idle kept-alive connection stays open.
    max_json_depth: int = 64
    client_header_timeout: float = 10.0
    client_body_timeout: float = 60.0
    client_keepalive_timeout: float = 75.0
    input_headers: tuple[str, ...] = DEFAULT_INPUT_HEADERS
    # Request headers forwarded upstream besides sidecar.pipeline.forward.FORWARD_HEADERS.
    forward_headers: tuple[str, ...] = ()
    # OpenAI-Organization / OpenAI-Project sent upstream, unless the decision's `upstream` names others.
    upstream_organization: str = ""
    upstream_project: str = ""
    # Admission (sidecar.pipeline.admit): calls checked at once, calls waiting for that, and how long one
    # may wait; beyond either, 503 `overloaded` with retry-after.
    max_concurrency: int = 64
    max_queue: int = 1024
    queue_timeout: float = 10.0
    log_level: str = "info"
    event_loop: str = "uvloop"
    shutdown_timeout: float = 30.0

    @property
    def fail_open(self) -> bool:
        return self.fail_mode == "open"

    def provider_key(self) -> str:
        """The provider key, read from the file setting when the literal is not given."""
        if self.upstream_api_key:
            return self.upstream_api_key
        if self.upstream_api_key_file:
            return Path(self.upstream_api_key_file).read_text().strip()
        return ""


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _coerce(name: str, raw: Any) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word not in _BOOLEANS:  # a typo such as "ture" must not quietly read as false
                raise ValueError("expected true/false, 1/0, yes/no or on/off")
            return _BOOLEANS[word]
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(str(i).strip().lower() for i in items if str(i).strip())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {raw!r}: {exc}") from None
    return str(raw)


# SIDECAR_* variables that are not settings of the server: the scripts' build cache, the tests' knobs.
NOT_SETTINGS = frozenset({"SIDECAR_CACHE_DIR", "SIDECAR_FUZZ_EXAMPLES", "SIDECAR_FUZZ_RANDOM"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """SIDECAR_* variables that name no setting (a typo is reported, never silently ignored), each with
    the closest real name when there is one."""
    env = os.environ if environ is None else environ
    found = []
    for var in sorted(env):
        if var.startswith("SIDECAR_") and var not in NOT_SETTINGS and var.lower()[8:] not in _FIELDS:
            # Compared without the shared prefix, which would make every name look close.
            close = difflib.get_close_matches(var.lower()[8:], list(_FIELDS), n=1)
            found.append((var, f"SIDECAR_{close[0].upper()}" if close else None))
    return found


def load(
    config_file: str | None = None, environ: Mapping[str, str] | None = None, *, require_keys: bool = True
) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        doc = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{config_file}: expected a mapping of settings")
        for key, raw in doc.items():
            name = str(key).lower().removeprefix("sidecar_")
            if name not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, raw)
    for name in _FIELDS:
        var = f"SIDECAR_{name.upper()}"
        if var in env:
            values[name] = _coerce(name, env[var])
    settings = Settings(**values)
    _validate(settings, require_keys)
    return settings


def _validate(s: Settings, require_keys: bool = True) -> None:
    if s.auth_mode not in {"static", "jwt", "pod"}:
        raise ConfigError(f"SIDECAR_AUTH_MODE must be static, jwt or pod, not {s.auth_mode!r}")
    if s.admin_auth not in {"", "jwt", "static", "off"}:
        raise ConfigError(f"SIDECAR_ADMIN_AUTH must be jwt, static or off, not {s.admin_auth!r}")
    if s.approval_ttl <= 0:
        raise ConfigError("SIDECAR_APPROVAL_TTL must be a positive number of seconds")
    if s.approval_spool_bytes < 0:
        raise ConfigError("SIDECAR_APPROVAL_SPOOL_BYTES must be 0 (the upload limit) or a number of bytes")
    if s.approval_spool_dir and not Path(s.approval_spool_dir).is_dir():
        raise ConfigError(f"SIDECAR_APPROVAL_SPOOL_DIR {s.approval_spool_dir} is not a directory")
    if s.fail_mode not in {"closed", "open"}:
        raise ConfigError(f"SIDECAR_FAIL_MODE must be closed or open, not {s.fail_mode!r}")
    if require_keys and s.auth_mode == "static" and not s.static_keys_file:
        raise ConfigError("SIDECAR_AUTH_MODE=static needs SIDECAR_STATIC_KEYS_FILE")
    if require_keys and s.auth_mode == "jwt" and not (s.oidc_issuer and s.jwt_audience):
        # Without an issuer and an audience, any token the IdP ever signed, for any client, would pass.
        raise ConfigError("SIDECAR_AUTH_MODE=jwt needs SIDECAR_OIDC_ISSUER and SIDECAR_JWT_AUDIENCE")
    # Keys come from a public JWKS, so only public-key algorithms make sense: `none` and HS* are refused here,
    # and the verifier refuses any alg outside this list before a key is even looked up.
    if unknown_algs := {a.upper() for a in s.jwt_algorithms} - JWT_ALGORITHMS:
        raise ConfigError(
            f"SIDECAR_JWT_ALGORITHMS may only name {', '.join(sorted(JWT_ALGORITHMS))}, "
            f"not {sorted(unknown_algs)}"
        )
    if s.upstream_api_key_file and not Path(s.upstream_api_key_file).is_file():
        raise ConfigError(f"SIDECAR_UPSTREAM_API_KEY_FILE {s.upstream_api_key_file} does not exist")
    if s.pii_mode not in {"patterns", "ner", "off"}:
        raise ConfigError(f"SIDECAR_PII_MODE must be patterns, ner or off, not {s.pii_mode!r}")
    if not 2_000 <= s.pii_max_chunk_chars <= 1_000_000:
        raise ConfigError("SIDECAR_PII_MAX_CHUNK_CHARS must be within [2000, 1000000]")
    if s.pii_worker_memory_mb < 0:
        raise ConfigError("SIDECAR_PII_WORKER_MEMORY_MB must be 0 (no limit) or a number of MiB")
    if s.pii_restart_backoff_max <= 0:
        raise ConfigError("SIDECAR_PII_RESTART_BACKOFF_MAX must be a positive number of seconds")
    if s.max_concurrency < 1 or s.max_queue < 0 or not s.queue_timeout > 0:
        raise ConfigError(
            "SIDECAR_MAX_CONCURRENCY must be at least 1, SIDECAR_MAX_QUEUE at least 0, "
            "and SIDECAR_QUEUE_TIMEOUT a positive number of seconds"
        )
    if not 1 <= s.max_json_depth <= 200:  # orjson cannot re-serialise past 254 levels
        raise ConfigError("SIDECAR_MAX_JSON_DEPTH must be between 1 and 200")
    if not min(s.client_header_timeout, s.client_body_timeout, s.client_keepalive_timeout) > 0:
        raise ConfigError(
            "SIDECAR_CLIENT_HEADER_TIMEOUT, SIDECAR_CLIENT_BODY_TIMEOUT and SIDECAR_CLIENT_KEEPALIVE_TIMEOUT "
            "must be positive numbers of seconds"
        )
    if s.event_loop not in {"uvloop", "asyncio"}:
        raise ConfigError("SIDECAR_EVENT_LOOP must be uvloop or asyncio")
    if bad := NEVER_INPUT_HEADERS.intersection(s.input_headers):
        raise ConfigError(f"SIDECAR_INPUT_HEADERS may not expose credentials: {sorted(bad)}")
    for name in s.forward_headers:
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"SIDECAR_FORWARD_HEADERS: {name!r} is not a header name")
        if name in NEVER_FORWARD_HEADERS or name.startswith(("x-forwarded-", "proxy-")):
            raise ConfigError(
                f"SIDECAR_FORWARD_HEADERS may not name {name!r}: a credential, a header the sidecar sets, "
                "or one that changes how the request is routed"
            )
    for var, value in (
        ("SIDECAR_UPSTREAM_ORGANIZATION", s.upstream_organization),
        ("SIDECAR_UPSTREAM_PROJECT", s.upstream_project),
    ):
        if value and not UPSTREAM_ID.match(value):
            raise ConfigError(f"{var} must be an OpenAI id (letters, digits, `_.:-`), not {value!r}")
