"""End to end against a real kube-apiserver: the chart's webhook registration and injection config, served by
`sidecar inject-webhook`, mutate pods the API server then validates and stores.

What is real: kube-apiserver v1.20.2 and etcd 3.4 (scripts/get-kube.sh builds and caches them), the chart
rendered by Helm (helm-python-sdk), its MutatingWebhookConfiguration (selectors, rules, failure policy) and
its injection ConfigMap, and the webhook process over TLS. What is adapted, and why:

- `clientConfig`: the chart points at its Service, which a cluster with no kube-proxy cannot reach; the test
  registers the same webhooks by `url` (the webhook on 127.0.0.1) and `caBundle` (the test CA).
- v1.20 has no native sidecars: it stores init containers without `restartPolicy: Always` (the field is
  unknown to it and dropped) and refuses probes and `lifecycle` on init containers ("must not be set for init
  containers"), so those four fields are removed from the injection config the webhook is given. Everything
  else the chart injects reaches the API server, which validates and stores it.
- No kubelet: the pods stay Pending, which is all admission needs.

Run with `make test-kube` (gets the binaries, then `pytest -m kube`).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube_fixtures import KubeCluster, KubeError, free_port, kube_apiserver, kube_bins  # noqa: F401

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "openai-policy-sidecar"
RELEASE, RELEASE_NAMESPACE = "e2e", "policy-system"
# Fields a v1.20 API server refuses on an init container (see the module docstring). `restartPolicy` stays in
# the injected containers: v1.20 does not know it and drops it.
REFUSED_BY_V1_20 = ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle")


def render_chart() -> list[dict[str, Any]]:
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render({}, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for template, manifest in rendered.items():
        if not template.endswith((".yaml", ".yml")):  # NOTES.txt
            continue
        docs += [doc for doc in yaml.safe_load_all(manifest) if isinstance(doc, dict)]
    return docs


def only(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[d['metadata'] for d in found]}"
    return found[0]


@dataclass
class Injection:
    """The registered webhook and what it injects (the chart's config, adapted to v1.20)."""

    cluster: KubeCluster
    config: dict[str, Any]
    prefix: str
    webhook_url: str

    @property
    def container_names(self) -> list[str]:
        return [str(c["name"]) for c in self.config["initContainers"]]

    @property
    def namespace_label(self) -> str:
        return f"{self.prefix}-injection"

    def namespace(self, label: str | None) -> str:
        """A fresh namespace, with the injection label set to `label` (or without it)."""
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.cluster.create_namespace(name, {self.namespace_label: label} if label else None)
        return name

    def create_pod(
        self,
        namespace: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        dry_run: bool = False,
        **spec: Any,
    ) -> dict[str, Any]:
        """Create an agent pod; return the pod as the API server stored it (GET after the create)."""
        meta: dict[str, Any] = {"name": f"agent-{uuid.uuid4().hex[:6]}"}
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = annotations
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"containers": [{"name": "agent", "image": "example.com/agent:1"}], **spec},
        }
        path = f"/api/v1/namespaces/{namespace}/pods"
        if dry_run:
            return dict(self.cluster.create(path + "?dryRun=All", body))
        self.cluster.create(path, body)
        return dict(self.cluster.get(f"{path}/{meta['name']}"))


def adapt_for_v1_20(config: dict[str, Any]) -> dict[str, Any]:
    adapted = copy.deepcopy(config)
    for container in adapted["initContainers"]:
        for key in REFUSED_BY_V1_20:
            container.pop(key, None)
    return adapted


def wait_https(url: str, ca_file: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"inject-webhook exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"inject-webhook did not answer {url} in 30s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def injection(
    kube_apiserver: KubeCluster,  # noqa: F811  (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Injection]:
    cluster = kube_apiserver
    workdir = tmp_path_factory.mktemp("webhook")
    docs = render_chart()
    configmap = only(docs, "ConfigMap", "-injection")
    chart_config = yaml.safe_load(configmap["data"]["config.yaml"])
    config = adapt_for_v1_20(chart_config)
    config_file = workdir / "injection.yaml"
    config_file.write_text(yaml.safe_dump(config))

    cert, key = cluster.issue_cert("webhook", ["127.0.0.1"])
    port = free_port()
    log = workdir / "inject-webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "inject-webhook",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--tls-cert={cert}",
                f"--tls-key={key}",
                f"--config={config_file}",
                "--reload-seconds=0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"https://127.0.0.1:{port}"
    try:
        wait_https(base + "/readyz", cluster.ca_file, proc, log)
        registration = copy.deepcopy(only(docs, "MutatingWebhookConfiguration"))
        registration["metadata"] = {"name": registration["metadata"]["name"]}
        for webhook in registration["webhooks"]:
            path = webhook["clientConfig"]["service"].get("path", "/")
            webhook["clientConfig"] = {"url": base + path, "caBundle": cluster.ca_bundle}
        created = cluster.create(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", registration
        )
        inj = Injection(cluster, config, str(config["prefix"]), base + "/mutate")
        # The API server picks registrations up asynchronously: wait until a dry-run pod gets injected.
        probe_ns = inj.namespace("enabled")
        deadline = time.monotonic() + 30
        while not inj.create_pod(probe_ns, dry_run=True)["spec"].get("initContainers"):
            if time.monotonic() > deadline:
                pytest.fail(f"the webhook was not called within 30s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield inj
        cluster.delete(
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{created['metadata']['name']}"
        )
    finally:
        proc.terminate()
        proc.wait(10)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def assert_untouched(pod: dict[str, Any], inj: Injection) -> None:
    assert "initContainers" not in pod["spec"], pod["spec"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["agent"]
    assert "OPENAI_BASE_URL" not in env_of(pod["spec"]["containers"][0])
    assert f"{inj.prefix}/status" not in (pod["metadata"].get("annotations") or {})


def test_pod_in_labelled_namespace_gets_the_sidecar_and_opa(injection: Injection) -> None:
    inj = injection
    pod = inj.create_pod(inj.namespace("enabled"))

    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == inj.container_names
    assert inj.container_names == [f"{inj.prefix}-opa", inj.prefix]  # OPA first, then the sidecar
    for stored, wanted in zip(inits, inj.config["initContainers"], strict=True):
        assert stored["image"] == wanted["image"]
        assert stored.get("args") == wanted.get("args")
        assert {p["containerPort"] for p in stored.get("ports", [])} == {
            p["containerPort"] for p in wanted.get("ports", [])
        }
        # The webhook sends the chart's native-sidecar restartPolicy; v1.20 has no such field and drops it.
        assert wanted["restartPolicy"] == "Always"
        assert "restartPolicy" not in stored
    sidecar_env = env_of(inits[1])
    assert sidecar_env["SIDECAR_OPA_URL"].startswith("http://127.0.0.1:")

    [agent] = pod["spec"]["containers"]
    assert agent["name"] == "agent"
    assert env_of(agent)["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"

    volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
    assert {v["name"] for v in inj.config["volumes"]} <= volumes
    assert pod["metadata"]["annotations"][f"{inj.prefix}/status"] == "injected"
    assert pod["metadata"]["labels"][f"{inj.prefix}/injected"] == "true"
    assert pod["status"]["phase"] == "Pending"  # stored; no kubelet runs it


def test_pod_in_unlabelled_namespace_is_untouched(injection: Injection) -> None:
    assert_untouched(injection.create_pod(injection.namespace(None)), injection)


def test_pod_that_opts_out_is_untouched(injection: Injection) -> None:
    inj = injection
    ns = inj.namespace("enabled")
    key = f"{inj.prefix}/inject"
    # By label: the registration's objectSelector keeps the API server from calling the webhook at all.
    assert_untouched(inj.create_pod(ns, labels={key: "false"}), inj)
    # By annotation: the webhook is called and answers without a patch.
    assert_untouched(inj.create_pod(ns, annotations={key: "false"}), inj)


def test_pod_label_opts_in_outside_labelled_namespaces(injection: Injection) -> None:
    inj = injection
    opt_in = {f"{inj.prefix}/inject": "true"}
    pod = inj.create_pod(inj.namespace(None), labels=opt_in)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == inj.container_names
    # A namespace that says `disabled` wins over the pod's opt-in.
    assert_untouched(inj.create_pod(inj.namespace("disabled"), labels=opt_in), inj)


def test_pod_that_clashes_is_refused_with_the_webhooks_reason(injection: Injection) -> None:
    inj = injection
    volume = inj.config["volumes"][0]["name"]
    with pytest.raises(KubeError) as caught:
        inj.create_pod(inj.namespace("enabled"), volumes=[{"name": volume, "emptyDir": {}}])
    assert caught.value.status == 400
    assert volume in str(caught.value) and "clash" in str(caught.value)
