"""A real kube-apiserver (v1.20, built from Debian's source by scripts/get-kube.sh) on etcd, for admission tests.

- `kube_bins` (session): the two binaries' paths, from `scripts/get-kube.sh --cached-only`. FAILS (never skips)
  when they are missing, saying how to get them (`make test-kube` or `bash scripts/get-kube.sh`).
- `kube_apiserver` (session): etcd and kube-apiserver on free loopback ports, with a throwaway CA and serving
  certificate, a static admin token, `AlwaysAllow` authorization and no ServiceAccount admission (there is no
  controller-manager to create the `default` service accounts). Waits for `/readyz`, yields a `KubeCluster`:
  a small synchronous JSON client plus `issue_cert()` to make serving certificates (for a webhook) signed by
  the same CA, whose PEM is `ca_pem` (the `caBundle`).

There is no kubelet: pods are stored and stay Pending, which is all an admission test needs.

Import into a test module: `from tests.kube_fixtures import kube_apiserver, kube_bins`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[1]
GET_KUBE = ROOT / "scripts" / "get-kube.sh"
ADMIN_TOKEN = "sidecar-e2e-admin-token"
INSTALL_HINT = (
    "The kube end-to-end tests need a real kube-apiserver and etcd. Get them with `make test-kube` (which runs "
    "them) or `bash scripts/get-kube.sh` (builds kube-apiserver v1.20.2 offline from Debian bookworm's "
    "kubernetes source, several minutes the first time, then cached), or point KUBE_APISERVER_BIN and "
    "ETCD_BIN at your own binaries."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- certificates ------------------------------------------------------------------------------------------


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@dataclass
class CertificateAuthority:
    """A throwaway CA; `issue()` writes a serving cert and key for hosts (IPs or DNS names)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "sidecar-e2e-ca") -> CertificateAuthority:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, folder: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """Write `<name>.crt` and `<name>.key` (a serving cert for `hosts`) into folder; return their paths."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path


# --- a small client ------------------------------------------------------------------------------------------


class KubeError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {message}")


@dataclass
class KubeCluster:
    """The running API server: its URL, admin token and CA, and a minimal JSON client."""

    url: str  # https://127.0.0.1:PORT
    token: str
    ca: CertificateAuthority
    ca_file: Path
    workdir: Path
    version: str  # e.g. "v1.20.2"
    _ssl: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def ca_pem(self) -> bytes:
        return self.ca.pem

    @property
    def ca_bundle(self) -> str:
        """The CA as a webhook `clientConfig.caBundle` wants it (base64 of the PEM)."""
        return base64.b64encode(self.ca.pem).decode()

    def issue_cert(self, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A serving cert and key for hosts, signed by the cluster CA (so `ca_bundle` trusts it)."""
        return self.ca.issue(self.workdir / "issued", name, hosts)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Send body as JSON; return the parsed JSON answer. A non-2xx answer raises KubeError."""
        raw = self.request_raw(method, path, body, timeout)
        return json.loads(raw) if raw else None

    def request_raw(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as err:
            raw = bytes(err.read())
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise KubeError(method, path, err.code, parsed) from None
        return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> Any:
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        return self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> Any:
        return self.create(f"/api/v1/namespaces/{namespace}/pods", pod)


# --- processes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeBinaries:
    kube_apiserver: str
    etcd: str


@pytest.fixture(scope="session")
def kube_bins() -> KubeBinaries:
    proc = subprocess.run(["bash", str(GET_KUBE), "--cached-only"], capture_output=True, text=True)
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    apiserver, etcd = found.get("KUBE_APISERVER_BIN", ""), found.get("ETCD_BIN", "")
    if proc.returncode != 0 or not (os.access(apiserver, os.X_OK) and os.access(etcd, os.X_OK)):
        pytest.fail(f"{INSTALL_HINT}\n{proc.stderr[-2000:]}", pytrace=False)
    return KubeBinaries(apiserver, etcd)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start_etcd(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    client, peer = free_port(), free_port()
    log = workdir / "etcd.log"
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--name=e2e",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--log-level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"etcd exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
        try:
            with urllib.request.urlopen(client_url + "/health", timeout=1) as resp:
                if json.loads(resp.read()).get("health") == "true":
                    return proc, client_url, log
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"etcd did not become healthy in 30s:\n{_tail(log)}", pytrace=False)


def _apiserver_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v(\d+)\.(\d+)\.\d+\S*", out)
    if match is None:
        pytest.fail(f"cannot read the version of {binary}: {out!r}", pytrace=False)
    return match.group(0)


def _start_apiserver(
    binary: str, etcd_url: str, workdir: Path, ca: CertificateAuthority
) -> tuple[subprocess.Popen[bytes], KubeCluster, Path]:
    version = _apiserver_version(binary)
    minor = int(version.split(".")[1])
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca.pem)
    cert, key = ca.issue(workdir, "apiserver", ["127.0.0.1", "localhost"])
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_file, sa_pub_file = workdir / "sa.key", workdir / "sa.pub"
    sa_key_file.write_bytes(_pem_key(sa_key))
    sa_pub_file.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    port = free_port()
    args = [
        binary,
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        f"--client-ca-file={ca_file}",
        f"--token-auth-file={tokens}",
        "--authorization-mode=AlwaysAllow",
        # No controller-manager creates the `default` service account, so ServiceAccount admission would
        # reject every pod; the webhook under test is what matters here.
        "--disable-admission-plugins=ServiceAccount",
        "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        f"--service-account-key-file={sa_pub_file}",
        f"--service-account-signing-key-file={sa_key_file}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--profiling=false",
        "--v=1",
    ]
    if minor < 24:  # the insecure port (default 8080 on localhost) existed until 1.24
        args.append("--insecure-port=0")
    log = workdir / "kube-apiserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    cluster = KubeCluster(f"https://127.0.0.1:{port}", ADMIN_TOKEN, ca, ca_file, workdir, version)
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kube-apiserver exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
        try:
            cluster.request_raw("GET", "/readyz", timeout=2)
            return proc, cluster, log
        except KubeError as err:
            last = str(err)
        except OSError as err:
            last = repr(err)
        time.sleep(0.25)
    _stop(proc)
    pytest.fail(f"kube-apiserver was not ready in 90s ({last}):\n{_tail(log)}", pytrace=False)


@pytest.fixture(scope="session")
def kube_apiserver(
    kube_bins: KubeBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    workdir = tmp_path_factory.mktemp("kube")
    ca = CertificateAuthority.create()
    etcd, etcd_url, _ = _start_etcd(kube_bins.etcd, workdir)
    try:
        apiserver, cluster, _ = _start_apiserver(kube_bins.kube_apiserver, etcd_url, workdir, ca)
        try:
            yield cluster
        finally:
            _stop(apiserver)
    finally:
        _stop(etcd)
