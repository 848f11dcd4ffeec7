"""Manifests (pure): pods, secrets and claims from a LaunchPlan; names; status reading."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afspawner.capacity import gpu_capacity
from afspawner.facility import GPUClass, Toleration
from afspawner.kube.status import exit_status, pod_failure, pod_ready
from afspawner.loader import load_facility
from afspawner.manifests import PodSettings, make_objects, reservation_from_pod
from afspawner.names import home_claim_name, label_value, pod_name
from afspawner.plan import UserIdentity
from afspawner.policy import SpawnOptions, UserContext, resolve
from afspawner.volumes.paths import safe_component

FAC = load_facility(
    {
        "vos": {"cms": {"namespace": "af-cms"}},
        "gpu_classes": {
            "t4": {
                "resource": "nvidia.com/gpu",
                "selector": {"nvidia.com/gpu.product": "Tesla-T4"},
                "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
            }
        },
        "volumes": {
            "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
            "cvmfs-csi": {"type": "cvmfs", "mount": "/cvmfs2", "mode": "csi", "claim": "cvmfs"},
            "ceph": {
                "type": "cephfs",
                "claim": "ceph-cms",
                "sub_path": "store/user/{username}",
                "mount": "/ceph/cms/store/user/{username}",
            },
            "eos": {"type": "eos", "mount": "/eos"},
            "home": {
                "type": "home",
                "mount": "/home/jovyan",
                "storage_class": "rbd",
                "size": "20Gi",
            },
        },
        "flavors": [
            {
                "name": "ml",
                "vos": ["cms"],
                "image": "img:1",
                "cpu": 2,
                "memory": "8Gi",
                "memory_limit": "16Gi",
                "gpu": {"class": "t4", "count": 2},
                "volumes": ["cvmfs", "cvmfs-csi", "ceph", "eos", "home"],
                "env": {"X509_CERT_DIR": "/cvmfs/grid.cern.ch/etc/grid-security/certificates"},
            }
        ],
    }
)
USER = UserContext("o'brien", frozenset(), ("cms",))
PLAN = resolve(FAC, USER, SpawnOptions("ml"), UserIdentity("o'brien", 50006, 5063, (5064,)), "gpu1")
SETTINGS = PodSettings(namespace="af-cms", hub_env={"JUPYTERHUB_API_TOKEN": "secret-token"})


def test_pod_spec() -> None:
    objs = make_objects(PLAN, SETTINGS)
    pod = objs.pod
    assert pod["metadata"]["name"] == "jupyter-o-27brien--gpu1"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsUser": 50006,
        "runAsGroup": 5063,
        "fsGroup": 5063,
        "fsGroupChangePolicy": "OnRootMismatch",
        "supplementalGroups": [5064],
        "runAsNonRoot": True,
    }
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    [c] = spec["containers"]
    assert c["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "2"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["X509_CERT_DIR"].startswith("/cvmfs/")
    assert "secret-token" not in str(pod)  # the token is only in the Secret
    assert objs.secret["stringData"] == {"JUPYTERHUB_API_TOKEN": "secret-token"}
    assert c["envFrom"] == [{"secretRef": {"name": pod["metadata"]["name"]}}]


def test_volumes() -> None:
    objs = make_objects(PLAN, SETTINGS)
    vols = {v["name"]: v for v in objs.pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in objs.pod["spec"]["containers"][0]["volumeMounts"]}
    assert vols["vol-cvmfs"]["hostPath"] == {"path": "/cvmfs", "type": "Directory"}
    assert mounts["vol-cvmfs"]["mountPropagation"] == "HostToContainer"
    assert mounts["vol-cvmfs"]["readOnly"] is True
    assert vols["vol-cvmfs-csi"]["persistentVolumeClaim"] == {
        "claimName": "cvmfs",
        "readOnly": True,
    }
    assert mounts["vol-ceph"]["subPath"] == "store/user/o-27brien"
    assert mounts["vol-ceph"]["mountPath"] == "/ceph/cms/store/user/o-27brien"
    assert vols["vol-eos"]["hostPath"]["path"] == "/var/eos"
    assert mounts["vol-eos"]["mountPropagation"] == "HostToContainer"
    [claim] = objs.claims
    assert claim["metadata"]["name"] == "home-o-27brien"
    assert claim["spec"]["storageClassName"] == "rbd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # the default


def test_home_claim_access_mode_is_the_sites_choice() -> None:
    from afspawner.volumes import volume_types

    home = volume_types().load("home")
    assert home.validate({"access_mode": "ReadWriteMany"}) == []
    [(key, message)] = home.validate({"access_mode": "ReadOnlyMany"})
    assert key == "access_mode" and "must be one of ReadWriteOnce, ReadWriteMany" in message
    fac = load_facility(
        {
            "volumes": {"home": {"type": "home", "mount": "/home", "access_mode": "ReadWriteMany"}},
            "flavors": [
                {"name": "f", "image": "i", "cpu": 1, "memory": "1Gi", "volumes": ["home"]}
            ],
        }
    )
    ident = UserIdentity("u", 1000, 1000)
    plan = resolve(fac, UserContext("u", frozenset(), (), False), SpawnOptions(), ident)
    [claim] = make_objects(plan, SETTINGS).claims
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_reservation_round_trip() -> None:
    pod = make_objects(PLAN, SETTINGS).pod
    r = reservation_from_pod(pod)
    assert r is not None
    assert (r.username, r.server_name, r.vo) == ("o'brien", "gpu1", "cms")
    assert (r.usage.cpu_millis, r.usage.memory_bytes, r.usage.gpus) == (2000, 8 * 2**30, {"t4": 2})
    assert reservation_from_pod({"metadata": {"annotations": {}}}) is None
    assert (
        reservation_from_pod(
            {"metadata": {"annotations": {"af.jupyterhub.org/reservation": "{not json"}}}
        )
        is None
    )


DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@given(st.text(min_size=1, max_size=300), st.text(max_size=300))
def test_names_are_always_valid(user: str, server: str) -> None:
    name = pod_name(user, server)
    assert len(name) <= 63 and DNS.match(name), name
    assert len(home_claim_name(user)) <= 63 and DNS.match(home_claim_name(user))
    value = label_value(user)
    assert len(value) <= 63 and LABEL.match(value), value


@given(st.text(max_size=50), st.text(max_size=50))
def test_names_are_injective(a: str, b: str) -> None:
    if a != b and len(a) < 10 and len(b) < 10:
        assert pod_name(a) != pod_name(b)
        assert safe_component(a) != safe_component(b)


@given(st.text(max_size=80))
def test_safe_component_is_one_harmless_component(value: str) -> None:
    comp = safe_component(value)
    assert "/" not in comp and comp not in ("", ".", "..") and not comp.startswith(".")


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _pod(**status: object) -> dict[str, object]:
    return {"metadata": {"name": "p"}, "status": status}


def test_status_reading() -> None:
    ready = _pod(
        phase="Running", podIP="127.100.0.2", conditions=[{"type": "Ready", "status": "True"}]
    )
    assert pod_ready(ready) and pod_failure(ready, NOW, 10) is None
    assert exit_status(ready) is None and exit_status(None) == 0
    pull = _pod(
        phase="Pending",
        containerStatuses=[
            {
                "name": "notebook",
                "state": {
                    "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image x"}
                },
            }
        ],
    )
    assert pod_failure(pull, NOW, 10) == (
        "ImagePullBackOff: Back-off pulling image x (container notebook)"
    )
    since = (NOW - dt.timedelta(seconds=5)).isoformat()
    unsched = _pod(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/9 nodes are available: 9 Insufficient cpu.",
                "lastTransitionTime": since,
            }
        ],
    )
    assert pod_failure(unsched, NOW, 10) is None  # still within the grace period
    assert pod_failure(unsched, NOW, 2) == (
        "Unschedulable: 0/9 nodes are available: 9 Insufficient cpu."
    )
    failed = _pod(phase="Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 3}}}])
    assert exit_status(failed) == 3


def _node(name: str, product: str, gpus: str, ready: bool = True) -> dict[str, object]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _gpu_pod(node: str | None, n: int, phase: str = "Running") -> dict[str, object]:
    return {
        "metadata": {"name": "x"},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(n)}}}],
        },
        "status": {"phase": phase},
    }


def test_gpu_capacity() -> None:
    t4 = GPUClass(
        "t4",
        "T4",
        "nvidia.com/gpu",
        "whole",
        {"nvidia.com/gpu.product": "Tesla-T4"},
        (Toleration("x"),),
        None,
        (),
    )
    nodes = [
        _node("a", "Tesla-T4", "4"),
        _node("b", "Tesla-T4", "4", ready=False),
        _node("c", "A100", "8"),
    ]
    pods = [_gpu_pod("a", 1), _gpu_pod("c", 8), _gpu_pod(None, 2), _gpu_pod("a", 1, "Succeeded")]
    cap = gpu_capacity(t4, nodes, pods)
    assert (cap.total, cap.used, cap.pending, cap.free) == (4, 1, 2, 3)


@pytest.mark.parametrize("image_pull_policy", ["IfNotPresent", "Always"])
def test_settings_are_applied(image_pull_policy: str) -> None:
    settings = PodSettings(
        namespace="ns",
        port=9999,
        image_pull_policy=image_pull_policy,
        extra_labels={"site": "ucsd"},
        args=("--debug",),
    )
    pod = make_objects(replace(PLAN, allow_root=True), settings).pod
    c = pod["spec"]["containers"][0]
    assert c["imagePullPolicy"] == image_pull_policy and c["args"] == ["--debug"]
    assert c["ports"][0]["containerPort"] == 9999
    assert "runAsNonRoot" not in pod["spec"]["securityContext"]
    assert pod["metadata"]["labels"]["site"] == "ucsd"


def test_bearer_token_is_a_file_from_its_own_secret() -> None:
    objs = make_objects(PLAN, SETTINGS, bearer_token="eyJ.access.token")
    pod, token = objs.pod, objs.token_secret
    assert token is not None
    assert token["metadata"]["name"] == "jupyter-o-27brien--gpu1-token"
    assert token["stringData"] == {"bearer_token": "eyJ.access.token"}
    assert "eyJ.access.token" not in str(pod) and "eyJ" not in str(objs.secret)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["af-token"]["secret"]["secretName"] == "jupyter-o-27brien--gpu1-token"
    assert vols["af-token"]["secret"]["defaultMode"] == 0o440  # group = fsGroup can read
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["BEARER_TOKEN_FILE"] == "/etc/af-token/bearer_token"
    assert {"name": "af-token", "mountPath": "/etc/af-token", "readOnly": True} in c["volumeMounts"]
    assert make_objects(PLAN, SETTINGS).token_secret is None
