"""`SIDECAR_AUTH_MODE=pod`: a loopback caller is the pod's own workload.

In a pod, only containers of that pod can reach 127.0.0.1, so the network peer *is* the credential: the
identity is the pod's, fixed at start-up from settings or the Kubernetes downward API. Any bearer token
the agent sends is ignored. A peer that is not loopback (another pod, when the listener is bound wider)
is refused. The peer address is the TCP connection's, never an X-Forwarded-For header.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from aiohttp import web

from sidecar.config import ConfigError, Settings
from sidecar.identity.base import NOT_LOOPBACK, refused
from sidecar.pipeline.context import Subject


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack listener
    return address.is_loopback


def read_labels(path: Path) -> dict[str, str]:
    """A downward-API labels file: one `key="value"` per line (values are Go-quoted)."""
    labels: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        try:
            value = json.loads(raw)  # label values are [A-Za-z0-9._-]: Go's quoting is JSON's here
        except ValueError:
            value = raw.strip('"')
        labels[key.strip()] = str(value)
    return labels


def _read(folder: Path | None, name: str) -> str:
    if folder is None:
        return ""
    path = folder / name
    try:
        return path.read_text().strip() if path.is_file() else ""
    except OSError as exc:
        raise ConfigError(f"SIDECAR_POD_INFO_DIR: {path}: {exc}") from None


def pod_subject(settings: Settings) -> Subject:
    """The pod's identity: explicit settings first, then the downward API files in SIDECAR_POD_INFO_DIR.

    - sub: SIDECAR_POD_SUB, else `system:serviceaccount:<namespace>:<service account>` (the `sub` the
      pod's service-account tokens carry), from SIDECAR_POD_NAMESPACE (or the `namespace` file) and
      SIDECAR_POD_SERVICE_ACCOUNT (the downward API has it only as an env var: spec.serviceAccountName);
    - tenant: SIDECAR_POD_TENANT, else the SIDECAR_POD_TENANT_LABEL label from the `labels` file;
    - groups: SIDECAR_POD_GROUPS, comma-separated.
    """
    folder = Path(settings.pod_info_dir) if settings.pod_info_dir else None
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"SIDECAR_POD_INFO_DIR {folder} is not a directory")
    namespace = settings.pod_namespace or _read(folder, "namespace")
    sub = settings.pod_sub
    if not sub and namespace and settings.pod_service_account:
        sub = f"system:serviceaccount:{namespace}:{settings.pod_service_account}"
    if not sub:
        raise ConfigError(
            "SIDECAR_AUTH_MODE=pod needs SIDECAR_POD_SUB, or SIDECAR_POD_SERVICE_ACCOUNT with the namespace "
            "(SIDECAR_POD_NAMESPACE or a `namespace` file in SIDECAR_POD_INFO_DIR)"
        )
    tenant = settings.pod_tenant
    labels_file = folder / "labels" if folder is not None else None
    if not tenant and labels_file is not None and labels_file.is_file():
        tenant = read_labels(labels_file).get(settings.pod_tenant_label, "")
    if not tenant:
        raise ConfigError(
            "SIDECAR_AUTH_MODE=pod needs a tenant: SIDECAR_POD_TENANT, or the pod label "
            f"{settings.pod_tenant_label!r} in the `labels` file of SIDECAR_POD_INFO_DIR"
        )
    groups = tuple(g.strip() for g in settings.pod_groups.split(",") if g.strip())
    return Subject(authenticated=True, sub=sub, tenant=tenant, groups=groups, issuer="pod")


class PodIdentity:
    """Loopback peers get the pod's `Subject`; anyone else a 401 (`not_loopback`)."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject

    async def authenticate(self, request: web.Request) -> Subject:
        if not is_loopback(request.remote):
            raise refused(
                NOT_LOOPBACK, "Pod mode serves only the pod's own containers (loopback callers).", "peer"
            )
        return self.subject
