"""CPU cost of building a user pod manifest: afspawner vs KubeSpawner's ``objects.make_pod``.

Ours: ``afspawner.policy.resolve`` (flavor access, GPU class, volumes, identity) and
``afspawner.manifests.make_objects`` (Pod + Secret + home PVC as JSON-ready dicts) for the
GPU flavor of tests/unit/test_manifests.py (T4 x2, CVMFS hostPath + CSI, CephFS subPath, EOS,
home PVC). Peer: ``kubespawner.objects.make_pod`` (+ ``make_pvc``) with the arguments KubeSpawner
would pass for the same pod (taken from our pod once, outside the timing), and the
``sanitize_for_serialization`` its API client runs before sending the V1Pod.

Timing: ``timeit`` with ``time.process_time`` (CPU time, less sensitive to a shared machine),
best and median of --repeat rounds. Memory: ``tracemalloc`` peak while building 1000 manifests
and keeping them (a hub with 1000 pending spawns), and the transient peak of one build.

    .venv/bin/python benchmarks/bench_manifests.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import importlib.metadata
import statistics
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass
from typing import Any

import _common

_common.use_test_bed()

from kubernetes_asyncio.client import ApiClient  # noqa: E402
from kubespawner.objects import make_pod, make_pvc  # noqa: E402

from afspawner.manifests import PodSettings, make_objects  # noqa: E402
from afspawner.plan import UserIdentity  # noqa: E402
from afspawner.policy import SpawnOptions, UserContext, resolve  # noqa: E402
from unit.test_manifests import FAC  # noqa: E402  # the GPU + storage facility of the tests

USER = UserContext("o'brien", frozenset(), ("cms",))
IDENTITY = UserIdentity("o'brien", 50006, 5063, (5064,))
OPTIONS = SpawnOptions("ml")
#: What JupyterHub hands a spawner (Spawner.get_env); ours puts it in a Secret, KubeSpawner in env.
HUB_ENV = {
    "JUPYTERHUB_API_TOKEN": "0123456789abcdef0123456789abcdef",
    "JPY_API_TOKEN": "0123456789abcdef0123456789abcdef",
    "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-o%27brien-gpu1",
    "JUPYTERHUB_HOST": "",
    "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/o%27brien/gpu1/oauth_callback",
    "JUPYTERHUB_OAUTH_SCOPES": '["access:servers!server=o\'brien/gpu1"]',
    "JUPYTERHUB_USER": "o'brien",
    "JUPYTERHUB_SERVER_NAME": "gpu1",
    "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
    "JUPYTERHUB_ACTIVITY_URL": "http://hub:8081/hub/api/users/o%27brien/activity",
    "JUPYTERHUB_BASE_URL": "/",
    "JUPYTERHUB_SERVICE_PREFIX": "/user/o%27brien/gpu1/",
    "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/o%27brien/gpu1/",
}
SETTINGS = PodSettings(namespace="af-cms", hub_env=HUB_ENV)


def ours_full() -> Any:
    return make_objects(resolve(FAC, USER, OPTIONS, IDENTITY, "gpu1"), SETTINGS)


PLAN = resolve(FAC, USER, OPTIONS, IDENTITY, "gpu1")


def ours_objects_only() -> Any:
    return make_objects(PLAN, SETTINGS)


def peer_arguments() -> tuple[dict[str, Any], dict[str, Any]]:
    """make_pod / make_pvc keyword arguments equivalent to our pod (KubeSpawner's traits)."""
    objs = ours_full()
    pod, [claim] = copy.deepcopy(objs.pod), objs.claims
    spec, [c] = pod["spec"], pod["spec"]["containers"]
    sc = spec["securityContext"]
    env = {e["name"]: e["value"] for e in c["env"]} | HUB_ENV
    res = c["resources"]
    pod_kw = {
        "name": pod["metadata"]["name"],
        "cmd": c["command"],
        "port": 8888,
        "image": c["image"],
        "image_pull_policy": c["imagePullPolicy"],
        "node_selector": spec["nodeSelector"],
        "uid": sc["runAsUser"],
        "gid": sc["runAsGroup"],
        "fs_gid": sc["fsGroup"],
        "supplemental_gids": sc["supplementalGroups"],
        "pod_security_context": {"fsGroupChangePolicy": "OnRootMismatch", "runAsNonRoot": True},
        "env": env,
        "volumes": spec["volumes"],
        "volume_mounts": c["volumeMounts"],
        "labels": pod["metadata"]["labels"],
        "annotations": pod["metadata"]["annotations"],
        "cpu_guarantee": 2.0,
        "mem_guarantee": PLAN.memory_bytes,
        "mem_limit": PLAN.memory_limit_bytes,
        "extra_resource_guarantees": {"nvidia.com/gpu": res["requests"]["nvidia.com/gpu"]},
        "extra_resource_limits": {"nvidia.com/gpu": res["limits"]["nvidia.com/gpu"]},
        "tolerations": spec["tolerations"],
        "automount_service_account_token": False,
    }
    pvc_kw = {
        "name": claim["metadata"]["name"],
        "storage_class": claim["spec"]["storageClassName"],
        "access_modes": claim["spec"]["accessModes"],
        "selector": None,
        "storage": claim["spec"]["resources"]["requests"]["storage"],
        "labels": claim["metadata"].get("labels"),
    }
    return pod_kw, pvc_kw


async def _sanitizer() -> Callable[[Any], Any]:
    client = ApiClient()  # builds an aiohttp session: needs a running loop
    await client.close()  # sanitize_for_serialization is pure
    sanitize: Callable[[Any], Any] = client.sanitize_for_serialization
    return sanitize


@dataclass
class Row:
    impl: str
    what: str
    us_best: float
    us_median: float
    kib_transient_peak: float
    mib_1000_retained_peak: float


def measure(impl: str, what: str, fn: Callable[[], Any], repeat: int) -> Row:
    fn()  # warm-up (imports, caches)
    timer = timeit.Timer(fn, timer=time.process_time)
    number, _ = timer.autorange()
    number = max(number, 200)
    per = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
    gc.collect()
    tracemalloc.start()
    fn()
    _, transient = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    kept = [fn() for _ in range(1000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return Row(impl, what, round(min(per), 1), round(statistics.median(per), 1),
               round(transient / 1024, 1), round((peak - base) / 2**20, 2))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit rounds (7)")
    args = parser.parse_args()
    data = _common.header("bench_manifests")
    pod_kw, pvc_kw = peer_arguments()
    sanitize = asyncio.run(_sanitizer())

    def peer_pod() -> Any:  # with plain-string env values make_pod leaves its arguments alone
        return make_pod(**pod_kw)

    def peer_pod_pvc_json() -> Any:
        return sanitize(peer_pod()), sanitize(make_pvc(**pvc_kw))

    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("afspawner", "resolve + make_objects (Pod+Secret+PVC, JSON-ready)", ours_full),
        ("afspawner", "make_objects only (plan given)", ours_objects_only),
        ("kubespawner", "make_pod (V1Pod)", peer_pod),
        ("kubespawner", "make_pod + make_pvc + sanitize (JSON-ready, as sent)", peer_pod_pvc_json),
    ]
    rows = []
    for impl, what, fn in cases:
        rows.append(measure(impl, what, fn, args.repeat))
        print(f"  {impl:12} {what:55} {rows[-1].us_best:8.1f} us", flush=True)

    peer_json = sanitize(peer_pod())
    ours_pod = ours_full().pod
    check = {
        "volumes": [len(ours_pod["spec"]["volumes"]), len(peer_json["spec"]["volumes"])],
        "mounts": [
            len(ours_pod["spec"]["containers"][0]["volumeMounts"]),
            len(peer_json["spec"]["containers"][0]["volumeMounts"]),
        ],
        "gpu_limit": [
            ours_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            peer_json["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        ],
        "tolerations": [len(p["spec"]["tolerations"]) for p in (ours_pod, peer_json)],
    }
    n_dists = sum(1 for _ in importlib.metadata.distributions())
    heads = ("impl", "what", "µs best", "µs median", "KiB transient", "MiB / 1000 kept")
    summary = (
        "CPU time (process_time) per manifest build, GPU flavor with CVMFS (hostPath + CSI), "
        f"CephFS subPath, EOS and a home PVC; best and median of {args.repeat} timeit rounds. "
        "Memory from tracemalloc: transient peak of one build, and peak growth while 1000 builds "
        "are kept. The peer gets its arguments ready-made (KubeSpawner's own get_pod_manifest work "
        "- traits, _expand_all, get_env - is not counted). Same-content check, ours vs peer: "
        f"`{check}`.\n\n" + _common.table(heads, [astuple(r) for r in rows])
    )
    print(summary)
    data.update(
        parameters={"repeat": args.repeat, "flavor": "ml", "user": USER.name},
        installed_distributions=n_dists,
        same_content_check=check,
        results=[asdict(r) for r in rows],
    )
    for path in _common.write("bench_manifests", data, summary):
        print("wrote", path.relative_to(_common.ROOT))


if __name__ == "__main__":
    main()
