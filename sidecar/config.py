"""Settings (SPEC §2): environment variables or a YAML file given with `--config`; the environment wins.

YAML keys are the variable names without the `SIDECAR_` prefix, in lower case
(`upstream_url: https://api.openai.com`); the full variable name is accepted too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    audit_log: str = "-"
    fail_mode: str = "closed"
    pii_mode: str = "ner"
    pii_config: str = ""
    pii_score_threshold: float = 0.35
    pii_workers: int = 2
    pii_max_tasks_per_child: int = 2000
    pii_timeout: float = 10.0
    pii_cache_entries: int = 50_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    input_headers: tuple[str, ...] = DEFAULT_INPUT_HEADERS
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


def _coerce(name: str, raw: Any) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
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
    if s.event_loop not in {"uvloop", "asyncio"}:
        raise ConfigError("SIDECAR_EVENT_LOOP must be uvloop or asyncio")
    if bad := NEVER_INPUT_HEADERS.intersection(s.input_headers):
        raise ConfigError(f"SIDECAR_INPUT_HEADERS may not expose credentials: {sorted(bad)}")
