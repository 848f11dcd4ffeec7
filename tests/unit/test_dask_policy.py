"""Dask clusters under the facility's policy: the ``dask`` keys, the options a user gets,
forged options, and workers counted in the one quota ledger with the notebook servers."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any

import pytest

from afspawner.daskapi import Leases
from afspawner.daskpolicy import (
    ClusterRequest,
    Grant,
    cluster_usage,
    grant_workers,
    option_spec,
    parse_cluster_options,
    resolve_cluster,
)
from afspawner.facility import Facility
from afspawner.loader import FacilityError, load_facility
from afspawner.ownership import ServerView, ledger_changes
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity
from afspawner.policy import Refusal, UserContext
from afspawner.quota import Ledger, QuotaRefusal

FACILITY: dict[str, Any] = {
    "vos": {
        "cms": {"quota": {"cpu": 13, "memory": "64Gi"}, "per_user": {"cpu": 9}},
        "atlas": {"quota": {"cpu": 100}},
    },
    "flavors": [
        {
            "name": "cms-nb",
            "vos": ["cms"],
            "image": "registry.example/cms:1",
            "cpu": 2,
            "memory": "4Gi",
            "default": True,
            "env": {"EXPERIMENT": "cms"},
            "dask": {
                "scheduler": {"cpu": 1, "memory": "2Gi"},
                "worker_sizes": {
                    "small": {"cpu": 1, "memory": "2Gi"},
                    "large": {"cpu": 4, "memory": "8Gi"},
                },
                "max_workers": 50,
                "max_cores": 20,
            },
        },
        {
            "name": "atlas-nb",
            "vos": ["atlas"],
            "image": "registry.example/atlas:1",
            "cpu": 1,
            "memory": "2Gi",
            "dask": {"worker_sizes": {"medium": {"cpu": 2, "memory": "4Gi"}}},
        },
        {"name": "plain", "image": "registry.example/plain:1", "cpu": 1, "memory": "1Gi"},
    ],
}
ALICE = UserContext("alice", frozenset({"cms"}), ("cms",))
BOB = UserContext("bob", frozenset({"atlas"}), ("atlas",))
NOBODY = UserContext("eve", frozenset(), ())


@pytest.fixture
def fac() -> Facility:
    return load_facility(copy.deepcopy(FACILITY))


def test_dask_keys_are_parsed(fac: Facility) -> None:
    cms = fac.flavor("cms-nb")
    assert cms is not None and cms.dask is not None
    assert cms.dask.image == "registry.example/cms:1"  # the flavor's image by default
    assert [(s.name, s.cpu_millis, s.memory_bytes) for s in cms.dask.worker_sizes] == [
        ("small", 1000, 2 << 30),
        ("large", 4000, 8 << 30),
    ]
    assert (cms.dask.max_workers, cms.dask.max_cores_millis) == (50, 20000)
    atlas = fac.flavor("atlas-nb")
    assert atlas is not None and atlas.dask is not None
    assert (atlas.dask.scheduler.cpu_millis, atlas.dask.scheduler.memory_bytes) == (1000, 2 << 30)
    plain = fac.flavor("plain")
    assert plain is not None and plain.dask is None


def test_bad_dask_keys_are_reported_with_their_paths() -> None:
    data = copy.deepcopy(FACILITY)
    data["flavors"][0]["dask"] = {
        "worker_sizes": {
            "Big!": {"cpu": 1, "memory": "1Gi"},
            "zero": {"cpu": 0, "memory": "1"},
            "two": {"cpu": 2, "memory": "1Gi"},
        },
        "max_cores": "500m",
        "max_workers": -1,
        "colour": "blue",
    }
    data["flavors"][1]["dask"] = {"worker_sizes": []}
    with pytest.raises(FacilityError) as err:
        load_facility(data)
    text = str(err.value)
    for expected in (
        "flavors[0].dask.worker_sizes.'Big!': size name",
        "flavors[0].dask.max_cores: smaller than one worker of size two",
        "flavors[0].dask.worker_sizes.zero.cpu: must be more than 0",
        "flavors[0].dask.max_workers",
        "flavors[0].dask.colour: unknown key",
        "flavors[1].dask.worker_sizes: expected a mapping",
    ):
        assert expected in text, text


def test_options_offered_follow_the_flavors_vos(fac: Facility) -> None:
    spec = option_spec(fac, ALICE)
    assert [c.name for c in spec.flavors] == ["cms-nb"]
    assert [c.name for c in spec.vos] == ["cms"]
    assert [c.name for c in spec.worker_sizes] == ["small", "large"]
    assert spec.worker_sizes[1].label == "large (4 CPU, 8Gi)"
    assert [c.name for c in option_spec(fac, BOB).flavors] == ["atlas-nb"]
    assert option_spec(fac, NOBODY).flavors == ()


def test_a_plan_from_the_flavor(fac: Facility) -> None:
    plan = resolve_cluster(fac, ALICE, parse_cluster_options({"worker_size": "large"}))
    assert (plan.flavor, plan.vo, plan.worker.name, plan.image) == (
        "cms-nb",
        "cms",
        "large",
        "registry.example/cms:1",
    )
    assert plan.max_workers == 5  # max_cores 20 / 4 CPU per worker, below max_workers 50
    assert plan.env["EXPERIMENT"] == "cms" and plan.env["AF_VO"] == "cms"
    assert plan.options() == {"flavor": "cms-nb", "vo": "cms", "worker_size": "large"}


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        ({"flavor": "atlas-nb"}, 403, "flavor 'atlas-nb' is for members of atlas; your VOs: cms"),
        ({"vo": "atlas"}, 403, "cannot charge a Dask cluster of flavor 'cms-nb' to VO 'atlas'"),
        ({"worker_size": "medium"}, 400, "has no worker size 'medium'; sizes: small, large"),
        ({"flavor": "plain"}, 400, "flavor 'plain' offers no Dask clusters; yours: cms-nb"),
        ({"flavor": "nope"}, 400, "flavor 'nope' offers no Dask clusters"),
        ({"image": "evil:latest"}, 400, "unknown cluster option(s) 'image'"),
        ({"flavor": ["cms-nb"]}, 400, "cluster option 'flavor' must be a name"),
        ({"worker_size": "x" * 500}, 400, "must be a name"),
        ("cms-nb", 400, "cluster options must be a JSON object"),
    ],
)
def test_forged_options_are_refused_with_a_clear_message(
    fac: Facility, raw: Any, status: int, message: str
) -> None:
    with pytest.raises(Refusal) as err:
        resolve_cluster(fac, ALICE, parse_cluster_options(raw))
    assert err.value.status == status
    assert message in err.value.message


def test_no_dask_for_a_user_without_vo(fac: Facility) -> None:
    with pytest.raises(Refusal, match="no Dask cluster is available to you"):
        resolve_cluster(fac, NOBODY, ClusterRequest())


def _notebook(user: str, server: str, cpu: int) -> LaunchPlan:
    return LaunchPlan(
        username=user,
        server_name=server,
        vo="cms",
        flavor="cms-nb",
        image="x",
        cpu_millis=cpu * 1000,
        memory_bytes=1 << 30,
        cpu_limit_millis=None,
        memory_limit_bytes=None,
        identity=UserIdentity(user, 50001, 5063),
    )


def test_workers_fit_the_vo_quota_and_user_cap_with_the_notebooks(fac: Facility) -> None:
    ledger = Ledger()
    plan = resolve_cluster(fac, ALICE, ClusterRequest(worker_size="small"))
    ledger.admit(fac, _notebook("alice", "", 2))  # 2 of alice's 9 CPU
    grant = grant_workers(fac, ledger, plan, "c1", 10_000)
    # capped at max_workers (20 cores / 1), then alice's cap: 9 - 2 (notebook) - 1 (scheduler)
    assert grant.workers == 6
    assert grant.message is not None
    assert "you use" in grant.message and "6 of the 20 workers" in grant.message
    assert ledger.usage("cms", "alice").cpu_millis == 9000
    # another user of the VO: 13 - 9 = 4 CPU left in the VO
    carol = UserContext("carol", frozenset({"cms"}), ("cms",))
    other = resolve_cluster(fac, carol, ClusterRequest())
    assert grant_workers(fac, ledger, other, "c2", 10).workers == 3  # 1 scheduler + 3
    assert ledger.usage("cms").cpu_millis == 13000
    # now a notebook does not fit: the same ledger refuses it
    with pytest.raises(QuotaRefusal, match="VO cms uses 13/13 CPU"):
        ledger.admit(fac, _notebook("dave", "", 1))
    # a new cluster without room for its scheduler is refused
    with pytest.raises(QuotaRefusal, match="no room for a Dask scheduler"):
        grant_workers(fac, ledger, other, "c3", 1)
    # scaling down gives the room back; a re-grant replaces the reservation
    assert grant_workers(fac, ledger, plan, "c1", 1).message is None
    assert ledger.usage("cms", "alice").cpu_millis == 2000 + 1000 + 1000
    ledger.release("alice", "dask:c1")
    assert ledger.usage("cms", "alice").cpu_millis == 2000


def test_running_workers_are_always_counted(fac: Facility) -> None:
    """A renewal after a hub restart counts what runs even when it no longer fits."""
    ledger = Ledger()
    plan = resolve_cluster(fac, ALICE, ClusterRequest(worker_size="small"))
    ledger.admit(fac, _notebook("alice", "", 8))
    grant = grant_workers(fac, ledger, plan, "c1", 4, running=3)
    assert grant.workers == 3
    # 8 (notebook) + 1 (scheduler) + 3 running workers: over alice's 9, counted all the same
    assert ledger.usage("cms", "alice").cpu_millis == 12_000
    assert cluster_usage(plan, 3).servers == 0  # Dask pods are not notebook servers


def test_many_scale_ups_never_exceed_the_vo_quota(fac: Facility) -> None:
    """40 clusters of 40 users asking for 10,000 workers each, against 13 CPU."""
    ledger = Ledger()
    granted = 0
    for i in range(40):
        user = UserContext(f"u{i}", frozenset({"cms"}), ("cms",))
        plan = resolve_cluster(fac, user, ClusterRequest())
        with contextlib.suppress(QuotaRefusal):
            granted += grant_workers(fac, ledger, plan, f"c{i}", 10_000).workers
        assert ledger.usage("cms").cpu_millis <= 13_000
    assert ledger.usage("cms").cpu_millis == 13_000
    assert granted < 13


def test_bad_cluster_names_are_refused(fac: Facility) -> None:
    plan = resolve_cluster(fac, ALICE, ClusterRequest())
    with pytest.raises(Refusal, match="not a cluster name"):
        grant_workers(fac, Ledger(), plan, "../bob/c1", 1)


def test_leases_expire_and_the_sweep_keeps_live_ones(fac: Facility) -> None:
    ledger = Ledger()
    plan = resolve_cluster(fac, ALICE, ClusterRequest())
    grant_workers(fac, ledger, plan, "c1", 2)
    leases = Leases(ttl=100)
    leases.renew(("alice", "dask:c1"), now=1000)
    live = leases.live(now=1050)
    assert live == {("alice", "dask:c1")}
    # the sweep's decision leaves a live lease alone (it is "busy"), releases an expired one
    view = ServerView(frozenset(), frozenset(live))
    assert not ledger_changes(ledger.reservations(), [], view).release
    expired = ServerView(frozenset(), leases.live(now=1101))
    assert ledger_changes(ledger.reservations(), [], expired).release == (("alice", "dask:c1"),)


def test_the_server_environment_names_the_gateway() -> None:
    from afspawner.daskpolicy import gateway_env

    assert gateway_env({}) == {}
    assert gateway_env(
        {"address": "http://gw:8000", "proxy_address": "gateway://gw-proxy:8786"}
    ) == {
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_GATEWAY__ADDRESS": "http://gw:8000",
        "DASK_GATEWAY__PROXY_ADDRESS": "gateway://gw-proxy:8786",
    }
    with pytest.raises(ValueError, match="unknown key"):
        gateway_env({"address": "http://gw", "adress": "x"})
    with pytest.raises(ValueError, match="address: required"):
        gateway_env({"proxy_address": "gateway://gw:8786"})


def test_the_hub_view_counts_live_leases_as_busy() -> None:
    from afspawner.hubview import HubView

    view = HubView(db=None)
    leases = Leases(ttl=100)
    leases.renew(("alice", "dask:c1"), now=0)
    view.also_busy.append(lambda: leases.live(now=50))
    assert view.busy() == {("alice", "dask:c1")}


# -- GPU worker sizes --------------------------------------------------------------------------
GPU_FACILITY: dict[str, Any] = {
    "vos": {
        "cms": {"quota": {"cpu": 100, "gpus": {"t4": 2}}, "per_user": {"gpus": {"t4": 2}}},
        "atlas": {"quota": {"cpu": 100, "gpus": {"a100": 4}}},
    },
    "gpu_classes": {
        "t4": {
            "display": "NVIDIA T4",
            "resource": "nvidia.com/gpu",
            "selector": {"nvidia.com/gpu.product": "Tesla-T4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
        "a100": {"resource": "nvidia.com/gpu", "groups": ["gpu-approved"]},
    },
    "flavors": [
        {
            "name": "ml",
            "vos": ["cms", "atlas"],
            "image": "registry.example/ml:1",
            "cpu": 1,
            "memory": "2Gi",
            "dask": {
                "worker_sizes": {
                    "cpu": {"cpu": 1, "memory": "2Gi"},
                    "t4": {"cpu": 1, "memory": "4Gi", "gpu": {"class": "t4"}},
                    "a100": {"cpu": 1, "memory": "4Gi", "gpu": {"class": "a100", "count": 2}},
                }
            },
        },
    ],
}


@pytest.fixture
def gpu_fac() -> Facility:
    return load_facility(copy.deepcopy(GPU_FACILITY))


def test_gpu_worker_sizes_are_parsed(gpu_fac: Facility) -> None:
    ml = gpu_fac.flavor("ml")
    assert ml is not None and ml.dask is not None
    gpus = {s.name: s.gpu and (s.gpu.gpu_class, s.gpu.count) for s in ml.dask.worker_sizes}
    assert gpus == {"cpu": None, "t4": ("t4", 1), "a100": ("a100", 2)}
    labels = [c.label for c in option_spec(gpu_fac, ALICE).worker_sizes]
    assert "t4 (1 CPU, 4Gi, 1 t4 GPU)" in labels, labels


def test_bad_gpu_worker_sizes_are_reported_with_their_paths() -> None:
    data = copy.deepcopy(GPU_FACILITY)
    data["gpu_classes"]["t4"]["max_per_user"] = 1
    data["vos"]["atlas"]["quota"]["gpus"] = {"t4": 1}  # neither VO lists a100 now
    sizes = data["flavors"][0]["dask"]["worker_sizes"]
    sizes["v100"] = {"cpu": 1, "memory": "1Gi", "gpu": {"class": "v100"}}
    sizes["zero"] = {"cpu": 1, "memory": "1Gi", "gpu": {"class": "t4", "count": 0}}
    sizes["half"] = {"cpu": 1, "memory": "1Gi", "gpu": {"class": "t4", "count": 1.5}}
    sizes["two"] = {"cpu": 1, "memory": "1Gi", "gpu": {"class": "t4", "count": 2}}
    sizes["noclass"] = {"cpu": 1, "memory": "1Gi", "gpu": {"count": 1, "kind": "x"}}
    data["flavors"][0]["dask"]["scheduler"] = {"cpu": 1, "memory": "1Gi", "gpu": {"class": "t4"}}
    with pytest.raises(FacilityError) as err:
        load_facility(data)
    text = str(err.value)
    for expected in (
        "flavors[0].dask.worker_sizes.v100.gpu.class: unknown GPU class 'v100'; defined: a100, t4",
        "flavors[0].dask.worker_sizes.zero.gpu.count",
        "flavors[0].dask.worker_sizes.half.gpu.count",
        "flavors[0].dask.worker_sizes.two.gpu.count: 2 exceeds t4.max_per_user (1)",
        "flavors[0].dask.worker_sizes.noclass.gpu.class",
        "flavors[0].dask.worker_sizes.noclass.gpu.kind: unknown key",
        "flavors[0].dask.worker_sizes.a100.gpu.class: no VO of this flavor (cms, atlas) lists "
        "'a100' in quota.gpus",
        "flavors[0].dask.scheduler.gpu: unknown key",
    ):
        assert expected in text, text


def _t4_notebook(user: str, server: str) -> LaunchPlan:
    return dataclasses.replace(
        _notebook(user, server, 1),
        flavor="ml",
        gpu=GPURequest("t4", "nvidia.com/gpu", 1, display="NVIDIA T4"),
    )


def test_gpu_workers_are_counted_per_class_with_the_notebooks(gpu_fac: Facility) -> None:
    ledger = Ledger()
    plan = resolve_cluster(gpu_fac, ALICE, ClusterRequest(vo="cms", worker_size="t4"))
    assert plan.gpu is not None and plan.gpu.resource == "nvidia.com/gpu"
    assert cluster_usage(plan, 3).gpus == {"t4": 3} and cluster_usage(plan, 0).gpus == {}
    grant = grant_workers(gpu_fac, ledger, plan, "c1", 5)
    assert grant.workers == 2
    assert grant.message is not None
    assert "you use 0/2 t4 GPUs" in grant.message, grant.message
    assert "2 of the 5 workers" in grant.message
    assert ledger.usage("cms").gpus == {"t4": 2}
    # a notebook holding a T4 leaves room for one worker only
    ledger.release("alice", "dask:c1")
    ledger.admit(gpu_fac, _t4_notebook("bob", ""))
    grant = grant_workers(gpu_fac, ledger, plan, "c1", 5)
    assert grant.workers == 1
    assert grant.message is not None and "VO cms uses 1/2 t4 GPUs" in grant.message
    # the same ledger now refuses a T4 notebook; CPU workers still grow
    with pytest.raises(QuotaRefusal, match="VO cms uses 2/2 t4 GPUs"):
        ledger.admit(gpu_fac, _t4_notebook("carol", ""))
    cpu = resolve_cluster(gpu_fac, ALICE, ClusterRequest(vo="cms", worker_size="cpu"))
    assert grant_workers(gpu_fac, ledger, cpu, "c2", 5) == Grant(5, None)


def test_a_vo_has_no_quota_for_gpu_classes_it_does_not_list(gpu_fac: Facility) -> None:
    ledger = Ledger()
    both = UserContext("dan", frozenset({"cms", "atlas"}), ("cms", "atlas"))
    plan = resolve_cluster(gpu_fac, both, ClusterRequest(vo="atlas", worker_size="t4"))
    grant = grant_workers(gpu_fac, ledger, plan, "c1", 3)
    assert grant.workers == 0  # the scheduler runs; no T4 worker
    assert grant.message is not None
    assert "0 of the 3 t4 workers" in grant.message
    assert "VO atlas has no quota for NVIDIA T4 GPUs (it has: a100)" in grant.message
    assert ledger.usage("atlas").cpu_millis == 1000  # the scheduler
    # a GPU class that needs a group the user lacks is refused as for notebooks
    with pytest.raises(Refusal, match="GPUs require approval"):
        resolve_cluster(gpu_fac, both, ClusterRequest(vo="atlas", worker_size="a100"))
