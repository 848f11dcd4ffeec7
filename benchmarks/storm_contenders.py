"""The contenders of the spawn storm, spawners driven the way JupyterHub drives them.

- ``floor``, ``floor-same``, ``floor-pod``: pods POSTed straight to the apiserver, no spawner
  (``storm_floors.py``);
- ``afspawner``: :class:`afspawner.spawner.AFSpawner`, Kubernetes backend;
- ``kubespawner``: ``kubespawner.KubeSpawner`` (7.x) with its defaults.

Spawner objects live without a hub: :func:`hub_spawn` and :func:`hub_stop` make the calls
``jupyterhub.user.User.spawn``/``stop`` (JupyterHub 6) make, in the same order, through the
public spawner API (``run_auth_state_hook``, ``apply_group_overrides``, the
``apply_user_options`` hook, ``run_pre_spawn_hook``, ``start`` within ``start_timeout``, then
``wait_for_http_server`` on the returned URL; ``stop``, ``clear_state``, ``run_post_stop_hook``).
What is not done: the hub's database rows, API tokens in the database, the proxy route and the
periodic ``poll`` (both spawners skip the same work).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import yaml
from jupyterhub.utils import maybe_future, wait_for_http_server
from storm_floors import (
    CPU,
    FACILITY,
    FLOOR_CONNECTIONS,
    IMAGE,
    FloorContender,
    SameObjectsFloor,
    SamePodFloor,
    StormSettings,
)
from storm_kit import HubStandIn, UserStandIn

__all__ = ["CONTENDERS", "FLOOR_CONNECTIONS", "Contender", "StormSettings"]

HUB = HubStandIn()


class Contender(Protocol):
    name: str
    namespace: str

    async def prepare(self, tag: str, n: int) -> None:
        """Make ``n`` users (and spawner objects) for the next storm; not timed."""

    async def spawn(self, i: int) -> None: ...

    async def stop(self, i: int) -> None: ...

    async def close(self) -> None: ...


def _auth_state(uid: int) -> dict[str, Any]:
    return {"uid": uid, "gid": 50000, "vos": ["storm"]}


def _url(returned: Any) -> str:
    """What ``User.spawn`` makes of ``start()``'s return value."""
    if isinstance(returned, str):
        return returned.rstrip("/")
    ip, port = returned
    return f"http://{ip}:{int(port)}"


async def hub_spawn(spawner: Any, options: Mapping[str, Any]) -> None:
    """``User.spawn`` + ``BaseHandler.finish_user_spawn``'s readiness check."""
    spawner.user_options = dict(options)
    spawner.clear_state()
    spawner.api_token = secrets.token_hex(16)
    spawner._start_pending = True
    try:
        await spawner.run_auth_state_hook(await spawner.user.get_auth_state())
        await spawner.apply_group_overrides()
        await spawner._run_apply_user_options(spawner.user_options)
        await maybe_future(spawner.run_pre_spawn_hook())
        returned = await asyncio.wait_for(maybe_future(spawner.start()), spawner.start_timeout)
    finally:
        spawner._start_pending = False
    spawner.get_state()  # the hub saves it in its database
    url = f"{_url(returned)}/user/{spawner.user.name}/"
    await wait_for_http_server(url, timeout=spawner.http_timeout)


async def hub_stop(spawner: Any) -> None:
    """``User.stop``: stop, clear the state, post-stop hook."""
    spawner._stop_pending = True
    try:
        await maybe_future(spawner.stop())
    finally:
        spawner._stop_pending = False
    spawner.clear_state()
    spawner.get_state()
    await maybe_future(spawner.run_post_stop_hook())


# -- AFSpawner --------------------------------------------------------------------------------


class AFContender:
    name = "afspawner"
    namespace = "storm-af"

    def __init__(self, s: StormSettings) -> None:
        self.s = s
        self.facility_file = s.workdir / "storm-facility.yaml"
        self.facility_file.write_text(yaml.safe_dump(FACILITY))
        self.spawners: list[Any] = []

    async def prepare(self, tag: str, n: int) -> None:
        from afspawner.spawner import AFSpawner

        self.spawners = [
            AFSpawner(
                user=UserStandIn(f"{tag}{i:04d}", 50001 + i, _auth_state(50001 + i)),
                hub=HUB,
                oauth_client_id=f"jupyterhub-user-{tag}{i:04d}",
                facility_file=str(self.facility_file),
                backend="kubernetes",
                backend_options={
                    "kubeconfig": str(self.s.kubeconfig),
                    "namespace": self.namespace,
                },
                uid_sources=["auth_state"],
                port=self.s.port,
                start_timeout=int(self.s.start_timeout),
                http_timeout=int(self.s.http_timeout),
                pacing_budget=self.s.pacing_budget,
            )
            for i in range(n)
        ]

    async def spawn(self, i: int) -> None:
        await hub_spawn(self.spawners[i], {"flavor": "storm"})

    async def stop(self, i: int) -> None:
        await hub_stop(self.spawners[i])

    async def close(self) -> None:
        self.spawners = []


# -- KubeSpawner ------------------------------------------------------------------------------
class KubeContender:
    name = "kubespawner"
    namespace = "storm-kube"

    def __init__(self, s: StormSettings) -> None:
        self.s = s
        # kubespawner.clients.load_config reads the default kubeconfig, whose path
        # kubernetes-asyncio took from $KUBECONFIG when it was imported
        os.environ["KUBECONFIG"] = str(s.kubeconfig)
        from kubernetes_asyncio.config import kube_config

        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(s.kubeconfig)
        self.spawners: list[Any] = []

    async def prepare(self, tag: str, n: int) -> None:
        from kubespawner import KubeSpawner  # type: ignore[import-untyped]

        self.spawners = [
            KubeSpawner(
                user=UserStandIn(f"{tag}{i:04d}", 50001 + i, _auth_state(50001 + i)),
                hub=HUB,
                oauth_client_id=f"jupyterhub-user-{tag}{i:04d}",
                namespace=self.namespace,
                image=IMAGE,
                cmd=["jupyterhub-singleuser"],
                port=self.s.port,
                cpu_guarantee=float(CPU),
                cpu_limit=float(CPU),
                mem_guarantee="1G",  # 1024**3 bytes, as the Gi of the others
                mem_limit="1G",
                start_timeout=int(self.s.start_timeout),
                http_timeout=int(self.s.http_timeout),
            )
            for i in range(n)
        ]

    async def spawn(self, i: int) -> None:
        await hub_spawn(self.spawners[i], {})

    async def stop(self, i: int) -> None:
        await hub_stop(self.spawners[i])

    async def close(self) -> None:
        self.spawners = []
        from kubespawner import KubeSpawner

        with contextlib.suppress(Exception):
            await KubeSpawner._stop_all_reflectors()


# -- the floor --------------------------------------------------------------------------------
CONTENDERS: dict[str, Callable[[StormSettings], Contender]] = {
    "floor": FloorContender,
    "floor-same": SameObjectsFloor,
    "floor-pod": SamePodFloor,
    "afspawner": AFContender,
    "kubespawner": KubeContender,
}
