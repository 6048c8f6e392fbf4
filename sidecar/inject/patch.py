"""Pod + injection config → RFC 6902 JSONPatch. Pure functions; no I/O.

Rules, in order:
- opted out (annotation or label `<prefix>/inject: "false"`): nothing;
- already injected (annotation `<prefix>/status: injected`, or a container named like an injected one, as a
  pod built from the chart's static templates has): nothing, so injection is idempotent;
- `hostNetwork: true`: nothing, since the sidecar's loopback ports would be the node's;
- otherwise the injected init containers (native sidecars) go first, in order, so they are up before any
  other init container or app container runs; the volumes are appended; every app container gets each
  injected env var it does not set itself (`OPENAI_BASE_URL`); missing image pull secrets are added; labels
  and annotations are merged in.

A pod whose volume names or declared ports clash with the injected ones is refused with a clear message,
since the patched pod would not work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.inject.config import InjectionConfig

Op = dict[str, Any]

OPT_OUT_VALUES = frozenset({"false", "no", "off", "0", "disabled"})
INJECTED = "injected"


class PodError(ValueError):
    """The pod is malformed, or cannot take the injection (a clash)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    patch: list[dict[str, Any]]
    reason: str

    @property
    def injected(self) -> bool:
        return bool(self.patch)


def escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PodError(f"{where}: expected an object")
    return value


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PodError(f"{where}: expected a list of objects")
    return value


def _names(items: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(item["name"]) for item in items if isinstance(item.get("name"), str)}


def _ports(containers: Iterable[Mapping[str, Any]]) -> set[int]:
    ports: set[int] = set()
    for container in containers:
        for port in container.get("ports") or []:
            if isinstance(port, dict) and isinstance(port.get("containerPort"), int):
                ports.add(port["containerPort"])
    return ports


def _add_items(path: str, existing: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[Op]:
    if not items:
        return []
    if not existing:
        return [{"op": "add", "path": path, "value": items}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]


def _merge_map(path: str, existing: Any, wanted: Mapping[str, str]) -> list[dict[str, Any]]:
    current = _mapping(existing, path)
    if not current:
        return [{"op": "add", "path": path, "value": dict(wanted)}] if wanted else []
    return [
        {"op": "add", "path": f"{path}/{escape(key)}", "value": value}
        for key, value in wanted.items()
        if current.get(key) != value
    ]


def opted_out(meta: Mapping[str, Any], cfg: InjectionConfig) -> bool:
    for where in ("annotations", "labels"):
        values = _mapping(meta.get(where), f"metadata.{where}")
        if str(values.get(cfg.inject_key, "")).strip().lower() in OPT_OUT_VALUES:
            return True
    return False


def plan(pod: Any, cfg: InjectionConfig) -> Outcome:
    """The patch that injects `cfg` into `pod` (empty when nothing is to be done), and why."""
    if not isinstance(pod, dict):
        raise PodError("object: expected a Pod object")
    meta = _mapping(pod.get("metadata"), "metadata")
    spec = _mapping(pod.get("spec"), "spec")
    if opted_out(meta, cfg):
        return Outcome([], f"opted out by {cfg.inject_key}")
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    if annotations.get(cfg.status_key) == INJECTED:
        return Outcome([], f"already injected ({cfg.status_key})")
    containers = _objects(spec.get("containers"), "spec.containers")
    if not containers:
        raise PodError("spec.containers: a pod needs at least one container")
    inits = _objects(spec.get("initContainers"), "spec.initContainers")
    if present := sorted(_names([*containers, *inits]) & cfg.container_names):
        return Outcome([], f"already injected (containers {', '.join(present)})")
    if spec.get("hostNetwork") is True:
        return Outcome([], "not injected: hostNetwork pods share the node's loopback ports")

    volumes = _objects(spec.get("volumes"), "spec.volumes")
    if clash := sorted(_names(volumes) & _names(cfg.volumes)):
        raise PodError(f"spec.volumes: {', '.join(clash)} clash with the injected volumes; rename them")
    if clash_ports := sorted(_ports([*containers, *inits]) & _ports(cfg.init_containers)):
        ports = ", ".join(map(str, clash_ports))
        raise PodError(f"ports {ports} are used by the injected sidecar; move the app or opt out")

    ops: list[dict[str, Any]] = []
    if "metadata" not in pod or pod["metadata"] is None:
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    if inits:
        ops += [
            {"op": "add", "path": f"/spec/initContainers/{i}", "value": container}
            for i, container in enumerate(cfg.init_containers)
        ]
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": list(cfg.init_containers)})
    ops += _add_items("/spec/volumes", volumes, list(cfg.volumes))
    for index, container in enumerate(containers):
        env = _objects(container.get("env"), f"spec.containers[{index}].env")
        have = _names(env)
        missing = [var for var in cfg.env if var["name"] not in have]
        ops += _add_items(f"/spec/containers/{index}/env", env, missing)
        mounts = _objects(container.get("volumeMounts"), f"spec.containers[{index}].volumeMounts")
        paths = {str(m.get("mountPath")) for m in mounts}
        absent = [m for m in cfg.volume_mounts if m["mountPath"] not in paths]
        ops += _add_items(f"/spec/containers/{index}/volumeMounts", mounts, absent)
    pull_secrets = _objects(spec.get("imagePullSecrets"), "spec.imagePullSecrets")
    have_secrets = _names(pull_secrets)
    wanted = [ref for ref in cfg.image_pull_secrets if ref["name"] not in have_secrets]
    ops += _add_items("/spec/imagePullSecrets", pull_secrets, wanted)
    ops += _merge_map("/metadata/labels", meta.get("labels"), cfg.labels)
    ops += _merge_map("/metadata/annotations", annotations, {**cfg.annotations, cfg.status_key: INJECTED})
    return Outcome(ops, INJECTED)
