"""The gateway's classes without a gateway: generated dask-gateway Options, the cluster's
configuration from the plan, the hub's user answer, and the uid/gid switch of
``AFLocalBackend`` checked on a real child process (``/usr/bin/id``)."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from afdask.auth import AFUser, user_from
from afdask.backends import AFClusterConfig, AFLocalBackend
from afdask.options import cluster_options
from afspawner.facility import Facility
from afspawner.loader import load_facility
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal
from unit.test_dask_policy import FACILITY, GPU_FACILITY

ALICE = AFUser("alice", {"cms"}, vos=("cms",), identity=UserIdentity("alice", 50001, 5063, (5064,)))


@pytest.fixture
def fac() -> Facility:
    return load_facility(copy.deepcopy(FACILITY))


def test_options_are_generated_for_the_user(fac: Facility) -> None:
    spec = {f["field"]: f for f in cluster_options(fac, ALICE).get_specification()}
    assert spec["flavor"]["spec"] == {"type": "select", "options": ["cms-nb"]}
    assert spec["vo"]["spec"]["options"] == ["cms"]
    assert spec["worker_size"]["spec"]["options"] == ["small", "large"]
    nobody = AFUser("eve")
    assert cluster_options(fac, nobody).get_specification() == []
    with pytest.raises(Refusal, match="no Dask cluster is available to you"):
        cluster_options(fac, nobody).parse_options({})


def test_the_cluster_configuration_comes_from_the_plan(fac: Facility) -> None:
    options = cluster_options(fac, ALICE)
    chosen = options.parse_options({"worker_size": "large"})
    assert chosen == {"flavor": "cms-nb", "vo": "cms", "worker_size": "large"}
    config = options.get_configuration(chosen, ALICE)
    assert (config["worker_cores"], config["worker_memory"]) == (4, 8 << 30)
    assert config["cluster_max_workers"] == 5
    assert (config["uid"], config["gid"], config["supplemental_gids"]) == (50001, 5063, [5064])
    assert config["environment"]["NB_UID"] == "50001"
    assert config["environment"]["AF_VO"] == "cms"
    assert config["image"] == "registry.example/cms:1"
    AFClusterConfig(**{k: v for k, v in config.items() if k != "image"})  # valid traits


def test_forged_options_and_missing_identity_are_refused(fac: Facility) -> None:
    with pytest.raises(Refusal, match="flavor 'atlas-nb' is for members of atlas"):
        cluster_options(fac, ALICE).parse_options({"flavor": "atlas-nb"})
    no_id = AFUser("carl", {"cms"}, vos=("cms",), identity_problem="no uid for carl")
    options = cluster_options(fac, no_id)
    with pytest.raises(Refusal, match="no uid for carl"):
        options.get_configuration(options.parse_options({}), no_id)
    root = AFUser("root", {"cms"}, vos=("cms",), identity=UserIdentity("root", 0, 0))
    options = cluster_options(fac, root)
    with pytest.raises(Refusal, match="uid/gid 0"):
        options.get_configuration(options.parse_options({}), root)


def test_the_hubs_user_answer() -> None:
    user = user_from(
        {
            "name": "alice",
            "vos": ["cms"],
            "groups": ["cms", "x"],
            "admin": False,
            "identity": {
                "username": "alice",
                "uid": 50001,
                "gid": 5063,
                "supplemental_gids": [5064],
            },
        }
    )
    assert (user.name, user.vos, user.groups) == ("alice", ("cms",), {"cms", "x"})
    assert user.identity == UserIdentity("alice", 50001, 5063, (5064,))
    assert user.context().vos == ("cms",)
    assert user_from({"name": "bob", "identity": {"uid": "0"}}).identity is None


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
def test_local_processes_run_as_the_users_uid_and_gid() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is closed to other uids
        Path(tmp).chmod(0o755)
        _run_as_user(Path(tmp) / "cluster")


def _run_as_user(workdir: Path) -> None:
    (workdir / ".certs").mkdir(parents=True)
    (workdir / ".certs" / "dask.pem").write_text("key")
    cluster = SimpleNamespace(
        config={"uid": 50001, "gid": 5063, "supplemental_gids": [5064]},
        state={"workdir": str(workdir)},
        username="alice",
    )
    backend = AFLocalBackend()
    backend._chown_to = backend._ids(cluster)[:2]
    backend.set_file_permissions([str(workdir), *"xy"], "alice")
    st = (workdir / ".certs" / "dask.pem").stat()
    assert (st.st_uid, st.st_gid) == (50001, 5063)
    out = subprocess.run(
        ["/usr/bin/id"],
        preexec_fn=backend.make_preexec_fn(cluster),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "uid=50001 gid=5063 groups=5063,5064", out
    with pytest.raises(Exception, match="no POSIX identity"):
        backend._ids(SimpleNamespace(config={}, state={}))


def test_the_hub_side_is_installed_on_a_fresh_config() -> None:
    from traitlets.config import Config

    from afspawner import daskapi

    c = Config()
    daskapi.setup(c, lease_ttl=120)
    from jupyterhub.app import JupyterHub

    hub = JupyterHub(config=c)
    assert [p for p, _ in hub.extra_handlers] == [
        r"/api/af/dask/users/([^/]+)",
        r"/api/af/dask/users/([^/]+)/token",
        r"/api/af/dask/leases/([^/]+)/([^/]+)",
    ]
    assert daskapi.SCOPE in hub.custom_scopes
    assert hub.tornado_settings["af_dask_lease_ttl"] == 120.0


def test_kubernetes_pods_get_the_plan_and_the_users_identity(fac: Facility) -> None:
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig

    from afdask.kube import kube_cluster_config
    from afspawner.daskpolicy import ClusterRequest, resolve_cluster

    plan = resolve_cluster(fac, ALICE.context(), ClusterRequest(worker_size="large"))
    assert ALICE.identity is not None
    values = kube_cluster_config(plan, ALICE.identity, namespace="af-cms")
    config = KubeClusterConfig(**values)  # every value is a valid trait value
    assert (config.image, config.namespace) == ("registry.example/cms:1", "af-cms")
    assert (config.worker_cores, config.worker_memory) == (4.0, 8 << 30)
    assert (config.worker_cores_limit, config.worker_memory_limit) == (4.0, 8 << 30)
    security = config.worker_extra_pod_config["securityContext"]
    assert security == {
        "runAsUser": 50001,
        "runAsGroup": 5063,
        "fsGroup": 5063,
        "supplementalGroups": [5064],
        "runAsNonRoot": True,
    }
    assert config.worker_extra_pod_labels["jupyterhub-af/vo"] == "cms"
    assert config.environment["NB_UID"] == "50001"


def test_local_backends_refuse_gpu_worker_sizes() -> None:
    backend = AFLocalBackend()
    backend.facility = load_facility(copy.deepcopy(GPU_FACILITY))
    user = AFUser("alice", {"cms"}, vos=("cms",), identity=UserIdentity("alice", 50001, 5063))
    options = asyncio.run(backend.get_cluster_options(user))
    cpu = options.parse_options({"worker_size": "cpu"})
    assert options.get_configuration(cpu, user)["worker_memory"] == 2 << 30
    gpu = options.parse_options({"worker_size": "t4"})
    with pytest.raises(Refusal, match="the local Dask backend has no GPUs; worker size 't4' "):
        options.get_configuration(gpu, user)
