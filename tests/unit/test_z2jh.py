"""examples/z2jh: the values.yaml's hub.extraConfig executed as the chart's jupyterhub_config.py
runs it, against the facility file of the example ConfigMap; the YAML files parse and agree."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config

from afauth.authenticator import AFAuthenticator
from afspawner.backends.kubernetes import KubernetesBackend
from afspawner.cli import main as afhub
from afspawner.kube.permissions import SERVICE_ACCOUNT
from afspawner.loader import FacilityError, load_facility_file
from afspawner.spawner import AFSpawner

ROOT = Path(__file__).resolve().parents[2]
Z2JH = ROOT / "examples" / "z2jh"
CHART_LABELS = {"app": "jupyterhub", "release": "jh", "chart": "jupyterhub-4.2.0"}


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load((Z2JH / "values.yaml").read_text()))


def _configmap() -> dict[str, Any]:
    return dict(yaml.safe_load((Z2JH / "facility-configmap.yaml").read_text()))


def _chart_config() -> Config:
    """What the chart's jupyterhub_config.py has set before it runs hub.extraConfig."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner"
    c.JupyterHub.hub_connect_url = "http://hub:8081"
    c.KubeSpawner.common_labels = dict(CHART_LABELS)
    return c


def run_extra_config(
    facility_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Config, Path]:
    """The files where the hub pod has them (under AF_CONFIG_DIR), then every snippet of
    hub.extraConfig in the chart's order (sorted by key), each ``exec``-ed with ``c``."""
    (tmp_path / "facility").mkdir()
    facility_file = tmp_path / "facility" / "facility.yaml"
    facility_file.write_text(facility_text)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cilogon-client-secret").write_text("not-a-real-secret\n")
    monkeypatch.setenv("AF_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("POD_NAMESPACE", "jupyterhub")
    c = _chart_config()
    hub = _values()["hub"]
    c.merge(Config(hub.get("config") or {}))
    for _, snippet in sorted(hub["extraConfig"].items()):
        # as the chart does: the operator's own config, run in the hub
        exec(compile(snippet, "hub.extraConfig", "exec"), {"c": c, "__name__": "z2jh"})  # noqa: S102
    return c, facility_file


def test_every_yaml_file_parses() -> None:
    files = sorted(Z2JH.glob("*.yaml")) + sorted((ROOT / "deploy").glob("*.yaml"))
    assert {p.name for p in files} >= {
        "values.yaml",
        "facility-configmap.yaml",
        "rbac.yaml",
        "rbac-vo-namespaces.yaml",
    }
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_extra_config_sets_up_jupyterhub_af(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c, facility_file = run_extra_config(
        _configmap()["data"]["facility.yaml"], tmp_path, monkeypatch
    )
    assert c.JupyterHub.spawner_class == "af"
    assert c.JupyterHub.authenticator_class == "af"
    [spawner] = entry_points(group="jupyterhub.spawners", name="af")
    [authenticator] = entry_points(group="jupyterhub.authenticators", name="af")
    assert spawner.load() is AFSpawner and authenticator.load() is AFAuthenticator
    # the facility file the spawner will read is the ConfigMap's, and `afhub check` passes it
    assert c.AFSpawner.facility_file == str(facility_file)
    assert afhub(["check", c.AFSpawner.facility_file]) == 0
    assert "Example analysis facility (z2jh): 2 VO(s), 3 flavor(s)" in capsys.readouterr().out
    # every key set is a configurable trait (a typo would be ignored by traitlets)
    assert set(c.AFSpawner) <= set(AFSpawner.class_trait_names(config=True))
    assert set(c.AFAuthenticator) <= set(AFAuthenticator.class_trait_names(config=True))
    # backend options pass the backend's own checks; the servers carry the chart's labels
    facility = load_facility_file(facility_file)
    backend = KubernetesBackend.create(facility, c.AFSpawner.backend_options)
    assert isinstance(backend, KubernetesBackend)
    settings = backend.settings
    assert settings.namespace == "jupyterhub" and settings.kubeconfig is None  # in-cluster
    assert dict(settings.extra_labels) == {
        **CHART_LABELS,
        "component": "singleuser-server",
        "hub.jupyter.org/network-access-hub": "true",
    }
    assert c.JupyterHub.hub_connect_url == "http://hub:8081"  # no VO namespace: unchanged
    # the authenticator accepts its configuration (IdP options, secret file, mapping rules)
    auth = AFAuthenticator(config=c)
    assert [idp.name for idp in auth.auth_config.idps.values()] == ["cilogon"]
    assert auth.enable_auth_state is True


def test_a_facility_with_vo_namespaces_gets_a_qualified_hub_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "examples" / "facilities" / "ucsd-cms.yaml").read_text()
    c, _ = run_extra_config(text, tmp_path, monkeypatch)
    assert c.JupyterHub.hub_connect_url == "http://hub.jupyterhub.svc.cluster.local:8081"


def test_a_broken_facility_file_stops_the_hub_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _configmap()["data"]["facility.yaml"].replace("cpu: 2\n", "cpu: lots\n", 1)
    with pytest.raises(FacilityError) as err:
        run_extra_config(text, tmp_path, monkeypatch)
    assert any("flavors[0].cpu" in str(issue) for issue in err.value.issues)


def test_mounts_names_and_versions_agree() -> None:
    values, cm = _values(), _configmap()
    hub = values["hub"]
    volumes = {v["name"]: v for v in hub["extraVolumes"]}
    mounts = {m["name"]: m["mountPath"] for m in hub["extraVolumeMounts"]}
    # the ConfigMap is mounted where the snippet reads facility.yaml
    assert volumes["af-facility"]["configMap"]["name"] == cm["metadata"]["name"]
    assert "facility.yaml" in cm["data"]
    snippet = hub["extraConfig"]["00-jupyterhub-af"]
    assert mounts["af-facility"] == "/etc/jupyterhub-af/facility"
    assert '"/etc/jupyterhub-af"' in snippet and '/ "facility" / "facility.yaml"' in snippet
    assert mounts["af-secrets"] == "/etc/jupyterhub-af/secrets"
    # the hub runs as deploy/rbac.yaml's ServiceAccount, which the chart does not create
    assert hub["serviceAccount"] == {"create": False, "name": SERVICE_ACCOUNT}
    rbac = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    assert {"ServiceAccount": SERVICE_ACCOUNT} in [{d["kind"]: d["metadata"]["name"]} for d in rbac]
    assert cm["metadata"]["namespace"] == rbac[0]["metadata"]["namespace"]
    # one chart version everywhere: helm --version, the image's base tag, the hub image tag
    header = (Z2JH / "values.yaml").read_text()
    [chart] = re.findall(r"--version (\d+\.\d+\.\d+)", header)
    dockerfile = (Z2JH / "Dockerfile").read_text()
    assert f"ARG Z2JH_VERSION={chart}\n" in dockerfile
    assert "FROM quay.io/jupyterhub/k8s-hub:${Z2JH_VERSION}" in dockerfile
    assert str(hub["image"]["tag"]).startswith(f"{chart}-af")
