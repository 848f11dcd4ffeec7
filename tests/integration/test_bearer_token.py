"""Tokens in running servers stay fresh: the hub rewrites the server's token Secret (Kubernetes)
or file (local backend) when the user's auth_state carries a new access token."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

import pytest

from afspawner.backends.base import LaunchRequest
from afspawner.backends.local import LocalBackend, LocalSettings
from afspawner.plan import LaunchPlan, UserIdentity
from integration.spawnkit import (
    facility,
    kube_http,
    make_user,
    new_namespace,
    request_spawn,
    spawn_result,
    stop_server,
)
from testbed.k8s import KubeCluster
from testbed.podstub import PodStub


async def _token_secret(cluster: KubeCluster, ns: str, name: str) -> str | None:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    if r.status_code == 404:
        return None
    return base64.b64decode(r.json()["data"]["bearer_token"]).decode()


@pytest.mark.k8s
@pytest.mark.hub
async def test_kubernetes_token_secret_follows_auth_state(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={"backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}},
    )
    user = await make_user(
        app, "tina", auth_state={"uid": 50010, "gid": 5063, "vos": ["cms"], "access_token": "tok-1"}
    )
    r = await request_spawn(app, "tina", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "tina")
    assert await _token_secret(k8s_cluster, ns, "jupyter-tina-token") == "tok-1"
    spawner = user.spawners[""]
    assert await spawner.poll() is None
    # the authenticator refreshed the token: the next poll rewrites the Secret
    await user.save_auth_state({**(await user.get_auth_state()), "access_token": "tok-2"})
    assert await spawner.poll() is None
    assert await _token_secret(k8s_cluster, ns, "jupyter-tina-token") == "tok-2"
    await stop_server(app, "tina")
    assert await _token_secret(k8s_cluster, ns, "jupyter-tina-token") is None


async def test_local_backend_token_file_is_private_and_rewritten(tmp_path: Path) -> None:
    backend = LocalBackend(LocalSettings(tmp_path, run_as_hub_user=True))
    plan = LaunchPlan(
        "tina", "", None, "f", "local", 1000, 2**30, None, None, UserIdentity("tina", 50010, 5063)
    )
    out = tmp_path / "seen"
    script = (
        "import os, sys, time; p = os.environ['BEARER_TOKEN_FILE']; "
        f"open({str(out)!r}, 'w').write(p + '\\n' + open(p).read()); time.sleep(60)"
    )
    req = LaunchRequest(plan, [sys.executable, "-c", script], [], {}, 0, 30, bearer_token="tok-1")
    started = await backend.launch(req, lambda m: None)
    try:
        for _ in range(100):
            if out.exists() and out.read_text().endswith("tok-1"):
                break
            await asyncio.sleep(0.1)
        path, content = out.read_text().split("\n")
        assert content == "tok-1"
        assert Path(path).stat().st_mode & 0o777 == 0o600
        await backend.update_token(started.state, "tok-2")
        assert Path(path).read_text() == "tok-2"
        assert await backend.poll(started.state) is None
    finally:
        await backend.stop(started.state, now=True)
    assert await backend.poll(started.state) is not None
