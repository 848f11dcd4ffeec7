"""Local backend: the server environment is the plan's, exactly as on Kubernetes."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from afspawner import ports
from afspawner.backends.base import LaunchRequest
from afspawner.backends.local import LocalBackend, LocalSettings
from afspawner.manifests import PodSettings, make_objects
from afspawner.policy import SpawnOptions, resolve
from unit.test_policy import ALICE, FAC, IDENT


def test_local_and_kubernetes_servers_get_the_same_environment(tmp_path: Path) -> None:
    plan = resolve(FAC, ALICE, SpawnOptions(), IDENT)
    hub_env = {"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0/u/"}
    req = LaunchRequest(plan, ["jupyterhub-singleuser"], [], hub_env, 8888, 30)
    backend = LocalBackend(LocalSettings(tmp_path, run_as_hub_user=True, ip="127.0.0.2"))
    env = backend._env(req, tmp_path / "alice", 9999)
    pod = make_objects(plan, PodSettings(namespace="ns")).pod
    pod_env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert pod_env == dict(plan.env)
    assert {k: env[k] for k in pod_env} == pod_env
    assert env["AF_VO"] == "cms" and env["NB_UID"] == str(IDENT.uid)
    assert env["JUPYTERHUB_API_TOKEN"] == "t"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.2:9999/u/"


async def test_local_server_is_found_and_stopped_without_saved_state(tmp_path: Path) -> None:
    plan = replace(resolve(FAC, ALICE, SpawnOptions(), IDENT, "nb"), volumes=())
    script = "import time; time.sleep(60)"
    req = LaunchRequest(plan, [sys.executable, "-c", script], [], {}, 0, 30)
    backend = LocalBackend(LocalSettings(tmp_path, run_as_hub_user=True))
    assert await backend.find(plan.username, "nb") is None
    started = await backend.launch(req, lambda m: None)
    found = await backend.find(plan.username, "nb")
    assert found is not None and found["pid"] == started.state["pid"]
    assert await backend.find(plan.username, "") is None  # another server of the user
    await backend.stop(found, now=True)
    assert await backend.poll(started.state) is not None
    assert await backend.find(plan.username, "nb") is None


async def test_a_running_servers_port_is_not_given_to_another_until_it_stops(
    tmp_path: Path,
) -> None:
    plan = replace(resolve(FAC, ALICE, SpawnOptions(), IDENT, "nb"), volumes=())
    req = LaunchRequest(plan, [sys.executable, "-c", "import time; time.sleep(60)"], [], {}, 0, 30)
    backend = LocalBackend(LocalSettings(tmp_path, run_as_hub_user=True))
    started = await backend.launch(req, lambda m: None)
    try:
        assert started.state["port"] == started.port < ports.ephemeral_low()
        assert backend._ports == {started.port}
    finally:
        await backend.stop(started.state, now=True)
    assert backend._ports == set()
