"""User-chosen images through a real JupyterHub (MockHub) against the real Kubernetes control plane.

A user types an allowed image in the spawn form's "Other..." box (the real form page, posted
like a browser without JavaScript) and gets a pod running that image with JUPYTER_IMAGE_SPEC;
a preset runs as the site wrote it; forged or disallowed images sent to the REST API are
refused on the request and nothing is created.
"""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup
from jupyterhub.tests.utils import async_requests, public_host
from jupyterhub.utils import url_path_join

from integration.spawnkit import (
    facility,
    kube_http,
    make_user,
    new_namespace,
    pods_in,
    request_spawn,
    spawn_result,
    stop_server,
)
from testbed.k8s import KubeCluster
from testbed.podstub import PodStub

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

CMS = {"uid": 50001, "gid": 5063, "vos": ["cms"]}
PANGEO = "quay.io/pangeo/pangeo-notebook:2023.05.08"
ML = "quay.io/pangeo/ml-notebook:2023.05.08"
TYPED = "quay.io/pangeo/xarray-notebook:2024.01.15"


def image_facility() -> dict[str, Any]:
    data = facility()
    data["flavors"].append(
        {
            "name": "pangeo",
            "display": "Pangeo",
            "vos": ["cms"],
            "image": PANGEO,
            "image_choice": {
                "choices": [{"image": ML, "display": "Pangeo TensorFlow"}],
                "allow": ["quay.io/pangeo/*"],
            },
            "cpu": 1,
            "memory": "2Gi",
        }
    )
    return data


@pytest.fixture
async def hub(af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub) -> Any:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        image_facility(),
        spawner={"backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}},
    )
    app.af_namespace = ns
    return app


def container(pod: dict[str, Any]) -> tuple[str, dict[str, str]]:
    c = pod["spec"]["containers"][0]
    return c["image"], {e["name"]: e.get("value") for e in c.get("env", [])}


async def test_an_image_typed_in_the_form_runs_with_jupyter_image_spec(
    hub: Any, k8s_cluster: KubeCluster
) -> None:
    cookies = await hub.login_user("ann")
    await make_user(hub, "ann", auth_state=CMS)
    spawn_url = url_path_join(public_host(hub), hub.hub.base_url, "spawn")
    r = await async_requests.get(spawn_url, cookies=cookies)
    r.raise_for_status()
    page = BeautifulSoup(r.text, "html.parser")
    other = page.find("input", attrs={"name": "image@pangeo", "value": ":other"})
    assert other is not None
    assert page.find("label", attrs={"for": other["id"]}).get_text() == "Other..."
    box = page.find("input", attrs={"name": "image_other@pangeo", "type": "text"})
    assert box is not None and page.find("label", attrs={"for": box["id"]}) is not None
    flavor = page.find("input", attrs={"name": "flavor", "value": "pangeo"})
    assert flavor is not None
    # what a browser without JavaScript posts: every field, only the checked radios
    data: dict[str, str] = {"flavor": "pangeo"}
    for radio in page.find_all("input", attrs={"type": "radio"}):
        if radio["name"] != "flavor" and radio.has_attr("checked"):
            data[radio["name"]] = radio["value"]
    data["image@pangeo"] = ":other"
    data["image_other@pangeo"] = f" {TYPED} "
    form = page.find("form")
    r = await async_requests.post(public_host(hub) + form["action"], cookies=cookies, data=data)
    assert r.status_code < 400, r.text[:2000]
    await spawn_result(hub, "ann")
    [pod] = await pods_in(k8s_cluster, hub.af_namespace)
    image, env = container(pod)
    assert image == TYPED and env["JUPYTER_IMAGE_SPEC"] == TYPED
    assert hub.users["ann"].spawners[""].user_options["image"] == TYPED
    await stop_server(hub, "ann")


@pytest.mark.parametrize(
    ("options", "image"),
    [
        ({"flavor": "pangeo"}, PANGEO),
        ({"flavor": "pangeo", "image": ML}, ML),
        ({"flavor": "pangeo", "image": TYPED}, TYPED),
        ({"flavor": "cms-el9"}, "cms/el9:1"),
    ],
)
async def test_rest_api_spawns_run_the_image_they_name(
    hub: Any, k8s_cluster: KubeCluster, options: dict[str, Any], image: str
) -> None:
    await make_user(hub, "bea", auth_state=CMS)
    r = await request_spawn(hub, "bea", options)
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "bea")
    [pod] = await pods_in(k8s_cluster, hub.af_namespace)
    assert container(pod)[0] == image
    assert container(pod)[1]["JUPYTER_IMAGE_SPEC"] == image
    await stop_server(hub, "bea")


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        (
            {"flavor": "pangeo", "image": "quay.io/evil/miner:1"},
            403,
            "image 'quay.io/evil/miner:1' is not allowed here; allowed: quay.io/pangeo/*",
        ),
        (
            {"flavor": "pangeo", "image": "quay.io/pangeo/a/b:1"},
            403,
            "is not allowed here",
        ),
        (
            {"flavor": "pangeo", "image": "quay.io.evil.com/pangeo/x:1"},
            403,
            "is not allowed here",
        ),
        ({"flavor": "pangeo", "image": "quay.io/pangeo/x:1 --privileged"}, 400, "spaces"),
        ({"flavor": "pangeo", "image": "quay.io/pangeo/../x"}, 400, "not a valid image"),
        ({"flavor": "pangeo", "image": "https://quay.io/pangeo/x"}, 400, "not a URL"),
        ({"flavor": "pangeo", "image": {"name": "x"}}, 400, "image must be a string"),
        (
            {"flavor": "cms-el9", "image": "quay.io/pangeo/x:1"},
            400,
            "flavor 'cms-el9' does not let you choose an image",
        ),
    ],
)
async def test_forged_or_disallowed_images_are_refused_and_create_nothing(
    hub: Any, k8s_cluster: KubeCluster, options: dict[str, Any], status: int, message: str
) -> None:
    await make_user(hub, "mallory", auth_state=CMS)
    r = await request_spawn(hub, "mallory", options)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert await pods_in(k8s_cluster, hub.af_namespace) == []
    async with kube_http(k8s_cluster) as k:
        secrets = (await k.get(f"/api/v1/namespaces/{hub.af_namespace}/secrets")).json()
    assert [s for s in secrets["items"] if s["metadata"]["name"].startswith("jupyter-")] == []
