"""What the webhook adds to a pod; the chart renders it into the ConfigMap `<release>-injection`.

A YAML (or JSON) mapping:

```yaml
prefix: openai-policy-sidecar        # annotation/label prefix: <prefix>/inject, <prefix>/status
initContainers: [...]                # native sidecars (restartPolicy: Always), put first, in this order
volumes: [...]                       # pod volumes those containers mount
env: [...]                           # set on every app container that does not set the name already
volumeMounts: [...]                  # mounted into every app container that does not mount that path already
imagePullSecrets: [...]              # added to the pod when missing (a private registry for the images)
labels: {...}                        # added to the pod (the NetworkPolicy example selects on them)
annotations: {...}                   # added to the pod, with <prefix>/status: injected
```

Only the shape the webhook relies on is checked here (names present and unique); the containers themselves
are the chart's, and the API server validates the patched pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KNOWN_KEYS = frozenset(
    {
        "prefix",
        "initContainers",
        "volumes",
        "env",
        "volumeMounts",
        "imagePullSecrets",
        "labels",
        "annotations",
    }
)


class InjectionConfigError(ValueError):
    """The injection config cannot be used."""


@dataclass(frozen=True, slots=True)
class InjectionConfig:
    prefix: str
    init_containers: tuple[dict[str, Any], ...]
    volumes: tuple[dict[str, Any], ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    volume_mounts: tuple[dict[str, Any], ...] = ()
    image_pull_secrets: tuple[dict[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def inject_key(self) -> str:
        """Pod annotation (or label) that opts a pod out (`"false"`) or, as a label, in (`"true"`)."""
        return f"{self.prefix}/inject"

    @property
    def status_key(self) -> str:
        """Pod annotation the webhook sets to `injected`; a pod carrying it is left alone."""
        return f"{self.prefix}/status"

    @property
    def container_names(self) -> frozenset[str]:
        return frozenset(str(c["name"]) for c in self.init_containers)


def _named_list(doc: Mapping[str, Any], key: str, *, required: bool = False) -> tuple[dict[str, Any], ...]:
    raw = doc.get(key)
    if raw is None:
        raw = []
    if not isinstance(raw, list) or (required and not raw):
        what = "a non-empty list" if required else "a list"
        raise InjectionConfigError(f"{key}: expected {what} of objects")
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InjectionConfigError(f"{key}[{i}]: expected an object with a non-empty string 'name'")
        if item["name"] in seen:
            raise InjectionConfigError(f"{key}: name {item['name']!r} appears twice")
        seen.add(item["name"])
    return tuple(raw)


def _mounts(doc: Mapping[str, Any], volumes: set[str]) -> tuple[dict[str, Any], ...]:
    mounts = _named_list(doc, "volumeMounts")
    for i, mount in enumerate(mounts):
        if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"].startswith("/"):
            raise InjectionConfigError(f"volumeMounts[{i}]: expected an absolute 'mountPath'")
        if mount["name"] not in volumes:
            raise InjectionConfigError(
                f"volumeMounts[{i}]: {mount['name']!r} is not one of the injected volumes"
            )
    return mounts


def _string_map(doc: Mapping[str, Any], key: str) -> dict[str, str]:
    raw = doc.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise InjectionConfigError(f"{key}: expected a mapping of strings to strings")
    return dict(raw)


def parse(doc: Any) -> InjectionConfig:
    if not isinstance(doc, dict):
        raise InjectionConfigError("expected a mapping with prefix, initContainers, volumes, env, ...")
    if unknown := sorted(set(doc) - KNOWN_KEYS):
        raise InjectionConfigError(f"unknown keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    prefix = doc.get("prefix")
    if not isinstance(prefix, str) or len(prefix) > 253 or not _PREFIX.match(prefix):
        raise InjectionConfigError(
            f"prefix: expected a DNS subdomain (openai-policy-sidecar), not {prefix!r}"
        )
    return InjectionConfig(
        prefix=prefix,
        init_containers=_named_list(doc, "initContainers", required=True),
        volumes=_named_list(doc, "volumes"),
        env=_named_list(doc, "env"),
        volume_mounts=_mounts(doc, {str(v["name"]) for v in _named_list(doc, "volumes")}),
        image_pull_secrets=_named_list(doc, "imagePullSecrets"),
        labels=_string_map(doc, "labels"),
        annotations=_string_map(doc, "annotations"),
    )


def load(path: str | Path) -> InjectionConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InjectionConfigError(f"{path}: not YAML: {exc}") from None
    try:
        return parse(doc)
    except InjectionConfigError as exc:
        raise InjectionConfigError(f"{path}: {exc}") from None
