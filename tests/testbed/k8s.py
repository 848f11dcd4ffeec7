"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok-simulated nodes, all on loopback.

Binaries come from ``tests/testbed/k8s-build/build.sh`` (built from the Go module proxy into
``~/.cache/jupyterhub-af/k8s-<version>/bin`` or ``$AF_K8S_CACHE/bin``). kwok gives pods
loopback IPs (``127.100.0.0/16``) so one local stub server can answer for every pod.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testbed.certs import TestCA, rsa_keypair
from testbed.procs import PeerProcess, free_port

K8S_VERSION = os.environ.get("K8S_VERSION", "1.34.4")
HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "k8s-build" / "build.sh"
STAGES = HERE / "kwok" / "stages.yaml"
POD_CIDR = "127.100.0.1/16"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def bin_dir() -> Path:
    cache = os.environ.get("AF_K8S_CACHE") or str(
        Path.home() / ".cache" / "jupyterhub-af" / f"k8s-{K8S_VERSION}"
    )
    return Path(cache) / "bin"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: str
    memory: str
    extended: dict[str, str] = field(default_factory=dict)  # e.g. nvidia.com/gpu: "4"
    labels: dict[str, str] = field(default_factory=dict)


def default_nodes() -> list[NodeSpec]:
    """6 CPU nodes, 2 T4 nodes (4 GPUs each), 1 A100 in MIG mixed mode."""
    nodes = [NodeSpec(f"cpu-{i}", "16", "64Gi") for i in range(1, 7)]
    t4 = {
        "nvidia.com/gpu.product": "Tesla-T4",
        "nvidia.com/gpu.memory": "15360",
        "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.present": "true",
    }
    nodes += [NodeSpec(f"gpu-t4-{i}", "32", "128Gi", {"nvidia.com/gpu": "4"}, t4) for i in (1, 2)]
    a100 = {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        "nvidia.com/gpu.memory": "40960",
        "nvidia.com/gpu.count": "1",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/mig.strategy": "mixed",
    }
    nodes.append(
        NodeSpec(
            "gpu-a100-1",
            "64",
            "256Gi",
            {"nvidia.com/mig-3g.20gb": "2", "nvidia.com/mig-1g.10gb": "7"},
            a100,
        )
    )
    return nodes


class KubeCluster:
    """Start and stop a loopback control plane; talk to it with an admin bearer token."""

    def __init__(self, workdir: Path, binaries: Path | None = None) -> None:
        self.dir = workdir
        self.bin = binaries or bin_dir()
        self.token = secrets.token_urlsafe(32)
        self.procs: list[PeerProcess] = []
        self.server = ""
        self.kubeconfig = workdir / "kubeconfig"
        self.ca_path = workdir / "ca.crt"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, nodes: list[NodeSpec] | None = None, timeout: float = 180.0) -> None:
        missing = [b for b in BINARIES if not (self.bin / b).exists()]
        if missing:
            raise RuntimeError(
                f"Kubernetes test bed binaries missing in {self.bin}: {', '.join(missing)}. "
                f"Build them with: bash {BUILD_SCRIPT.relative_to(HERE.parent.parent)}"
            )
        started = time.monotonic()
        ca = TestCA(self.dir, "jupyterhub-af test cluster CA")
        crt, key = ca.server_cert(
            "apiserver",
            [
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "10.96.0.1",
            ],
        )
        sa_key, sa_pub = rsa_keypair(self.dir, "service-account")
        tokens = self.dir / "tokens.csv"
        tokens.write_text(f'{self.token},af-admin,af-admin,"system:masters"\n')
        tokens.chmod(0o600)
        self._start_etcd(timeout)
        self._start_apiserver(crt, key, sa_key, sa_pub, tokens, timeout)
        self._write_kubeconfig()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.ca_path}",
                "--use-service-account-credentials=false",
                "--controllers=*,-csrsigning,-csrapproving,-csrcleaner,-bootstrapsigner,-tokencleaner",
                "--concurrent-resource-quota-syncs=4",
                "--resource-quota-sync-period=10s",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=40",
            ],
        )
        with self.http() as client:
            wanted = nodes if nodes is not None else default_nodes()
            for node in wanted:
                self._create_node(client, node)
            self._wait_nodes_ready(client, timeout, len(wanted))
            self._wait(
                client,
                "/api/v1/namespaces/default/serviceaccounts/default",
                "the default ServiceAccount (controller-manager)",
                timeout,
            )
        self.startup_seconds = time.monotonic() - started

    def restart_apiserver(self, down_seconds: float = 2.0, timeout: float = 120.0) -> None:
        """Stop kube-apiserver, keep it down a moment, start it again on the same port."""
        old = next(p for p in self.procs if p.name == "kube-apiserver")
        old.stop()
        self.procs.remove(old)
        time.sleep(down_seconds)
        proc = self._spawn("kube-apiserver", self._apiserver_args)
        with self.http() as client:
            proc.wait_until(
                lambda: client.get("/readyz").status_code == 200,
                timeout,
                "kube-apiserver /readyz after restart",
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # -- clients -----------------------------------------------------------------------------
    def http(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return httpx.Client(
            base_url=self.server,
            verify=ctx,
            timeout=30,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def logs(self) -> dict[str, str]:
        return {p.name: p.tail(50) for p in self.procs}

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> PeerProcess:
        proc = PeerProcess(name, [str(self.bin / name), *args], self.dir)
        self.procs.append(proc)
        return proc

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            "etcd",
            [
                "--name=af",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=af=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )
        proc.wait_until(
            lambda: httpx.get(f"{self.etcd_url}/health", timeout=2).json()["health"] == "true",
            timeout,
            "etcd health",
        )

    def _start_apiserver(
        self, crt: Path, key: Path, sa_key: Path, sa_pub: Path, tokens: Path, timeout: float
    ) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._apiserver_args = [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={crt}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.ca_path}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ]
        proc = self._spawn("kube-apiserver", self._apiserver_args)
        with self.http() as client:
            proc.wait_until(
                lambda: client.get("/readyz").status_code == 200, timeout, "kube-apiserver /readyz"
            )

    def _write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "af",
            "clusters": [
                {
                    "name": "af",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": "af-admin", "user": {"token": self.token}}],
            "contexts": [{"name": "af", "context": {"cluster": "af", "user": "af-admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    def _create_node(self, client: httpx.Client, node: NodeSpec) -> None:
        capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110", **node.extended}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **node.labels,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        r = client.post("/api/v1/nodes", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"creating node {node.name}: {r.status_code} {r.text}")

    def _wait_nodes_ready(self, client: httpx.Client, timeout: float, expected: int) -> None:
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while time.monotonic() < deadline:
            items = client.get("/api/v1/nodes").json()["items"]
            pending = [n["metadata"]["name"] for n in items if not _ready_untainted(n)]
            if len(items) >= expected and not pending:
                return
            self._check_alive()
            time.sleep(0.5)
        raise TimeoutError(
            f"nodes not Ready/untainted after {timeout:.0f}s: {pending}\n"
            f"{self.logs().get('kwok', '')}"
        )

    def _wait(self, client: httpx.Client, path: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.get(path).status_code == 200:
                return
            self._check_alive()
            time.sleep(0.5)
        raise TimeoutError(f"{what} not there after {timeout:.0f}s")

    def _check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} died (code {p.proc.returncode}):\n{p.tail()}")


def _ready_untainted(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and not node.get("spec", {}).get("taints")


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[KubeCluster]:
    """The session's real control plane with the default node set."""
    workdir = Path(tempfile.mkdtemp(prefix="af-k8s-"))
    cluster = KubeCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("AF_KEEP_TESTBED") is None:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def k8s_api(k8s_cluster: KubeCluster) -> AsyncIterator[Any]:
    """A kubernetes-asyncio ApiClient for the session's cluster."""
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(k8s_cluster.kubeconfig), client_configuration=cfg)
    async with client.ApiClient(cfg) as api_client:
        yield api_client
