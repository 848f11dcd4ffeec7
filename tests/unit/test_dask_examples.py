"""The Dask examples: the demo's and Fermilab EAF's ``dask_gateway_config.py`` load as
dask-gateway-server loads them (``DaskGateway.initialize(["-f", file])``, with the test's
addresses in the environment), every setting names a real trait, and the facility files'
``dask`` blocks give the numbers the examples promise (the hub's own grant function)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.backends.db_base import DBBackendBase
from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
from dask_gateway_server.proxy import Proxy
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from afdask.auth import AFHubAuthenticator
from afdask.backends import AFClusterConfig, AFUnsafeLocalBackend
from afspawner import daskapi
from afspawner.daskpolicy import (
    ClusterRequest,
    gateway_env,
    grant_workers,
    option_spec,
    resolve_cluster,
)
from afspawner.loader import load_facility_file
from afspawner.policy import UserContext
from afspawner.quota import Ledger, Reservation, Usage

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
EAF = ROOT / "examples" / "sites" / "fermilab-eaf"
FACILITIES = ROOT / "examples" / "facilities"


def gateway(config_file: Path) -> DaskGateway:
    """dask-gateway-server's application, initialized from ``config_file`` as its CLI does."""
    app = DaskGateway()
    app.initialize(["-f", str(config_file)])
    return app


def unknown_settings(app: DaskGateway) -> list[str]:
    """``Class.key`` settings of the file that no class of the gateway has as a trait."""
    classes: dict[str, type] = {}
    local = isinstance(app.backend, DBBackendBase)  # its own proxy; Kubernetes: Traefik
    for cls in (
        type(app),
        type(app.backend),
        type(app.authenticator),
        *((Proxy, AFClusterConfig) if local else (KubeClusterConfig,)),
    ):
        for base in cls.__mro__:
            classes.setdefault(base.__name__, base)
    config: Config = app.config
    wrong = []
    for section, values in config.items():
        cls = classes.get(section)
        traits = (
            cls.class_trait_names() if cls is not None and hasattr(cls, "class_trait_names") else []
        )
        wrong += [f"{section}.{key}" for key in values if key not in traits]
    return wrong


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "DASK_GATEWAY_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_demo_gateway_config_loads(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("AF_DEMO_DIR", str(tmp_path))
    clean_env.setenv("AF_DEMO_GATEWAY_PORT", "18786")
    clean_env.setenv("AF_DEMO_GATEWAY_API_PORT", "18788")
    # what the hub gives its managed service
    clean_env.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    app = gateway(DEMO / "dask_gateway_config.py")
    assert unknown_settings(app) == []
    assert isinstance(app.backend, AFUnsafeLocalBackend)
    assert isinstance(app.authenticator, AFHubAuthenticator)
    assert app.address == "127.0.0.1:18788"
    assert app.config.Proxy.address == app.config.Proxy.tcp_address == "127.0.0.1:18786"
    backend: Any = app.backend
    assert backend.hub_api_url == "http://127.0.0.1:8081/hub/api"
    assert backend.hub_api_token == "service-token"
    assert Path(backend.clusters_directory) == tmp_path / "dask-clusters"
    assert Path(backend.facility_file) == DEMO / "facility.yaml"
    load_facility_file(backend.facility_file)


def test_the_demo_hub_runs_the_gateway_as_its_service(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("AF_DEMO_DIR", str(tmp_path))
    clean_env.setenv("AF_DEMO_GATEWAY_PORT", "18786")
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(DEMO)).load_config()
    [service] = c.JupyterHub.services
    assert service["name"] == "dask-gateway"
    exe, flag, config_file = service["command"]
    assert Path(exe) == Path(sys.executable).parent / "dask-gateway-server"
    assert (flag, Path(config_file)) == ("-f", DEMO / "dask_gateway_config.py")
    assert service["environment"]["AF_DEMO_GATEWAY_PORT"] == "18786"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["dask-gateway"]["scopes"] == [daskapi.SCOPE]
    assert "access:services!service=dask-gateway" in roles["server"]["scopes"]
    assert "user" not in roles  # the default user role keeps the facility page's scope
    extra = c.JupyterHub.extra_user_scopes.get_value(set())  # a lazy value (``update``)
    assert {"access:services!service=dask-gateway", "custom:af-facility:read!user"} <= extra
    handlers = c.JupyterHub.extra_handlers.get_value([])
    assert any("af/dask/leases" in route for route, _ in handlers)
    assert gateway_env(c.AFSpawner.dask_gateway) == {
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_GATEWAY__ADDRESS": "http://127.0.0.1:18786",
        "DASK_GATEWAY__PROXY_ADDRESS": "gateway://127.0.0.1:18786",
    }


def test_the_demo_quota_leaves_a_notebook_and_two_dask_workers() -> None:
    """The README's demo story: with one CMS notebook, scale(6) gets 2 workers."""
    fac = load_facility_file(DEMO / "facility.yaml")
    ada = UserContext("ada", frozenset({"cms"}), ("cms",), False)
    spec = option_spec(fac, ada)
    assert [c.name for c in spec.flavors] == ["cms-analysis"]
    assert [c.name for c in spec.worker_sizes] == ["small"]
    bob = UserContext("bob", frozenset({"dune"}), ("dune",), False)
    assert option_spec(fac, bob).flavors == ()  # only the CMS flavor has Dask
    ledger = Ledger()
    ledger.put(Reservation("ada", "", "cms", Usage(1000, 2 << 30, 1)))  # her notebook
    plan = resolve_cluster(fac, ada, ClusterRequest())
    assert grant_workers(fac, ledger, plan, "c1", 2).workers == 2
    grant = grant_workers(fac, ledger, plan, "c1", 6)
    assert grant.workers == 2
    assert grant.message is not None
    assert "your Dask cluster can have 2 of the 6 workers you asked" in grant.message


def test_the_eaf_gateway_config_loads(clean_env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("afdask.kube_backend")
    clean_env.setenv("DASK_GATEWAY_HUB_TOKEN", "gateway-token")
    clean_env.setenv("AF_SITE_HUB_API_URL", "http://127.0.0.1:18081/hub/api")
    clean_env.setenv("AF_SITE_GATEWAY_API", "127.0.0.1:18001")
    clean_env.setenv("AF_SITE_GATEWAY_API_URL", "http://127.0.0.1:18001/api")
    app = gateway(EAF / "dask_gateway_config.py")
    assert unknown_settings(app) == []
    assert type(app.backend).__name__ == "AFKubeBackend"
    assert isinstance(app.authenticator, AFHubAuthenticator)
    assert app.authenticator.jupyterhub_api_url == "http://127.0.0.1:18081/hub/api"
    assert app.authenticator.jupyterhub_api_token == "gateway-token"
    assert app.authenticator.jupyterhub_service_name == "dask-gateway"
    backend: Any = app.backend
    assert (backend.hub_api_url, backend.hub_api_token) == (
        "http://127.0.0.1:18081/hub/api",
        "gateway-token",
    )
    # the hub's own facility file (jupyterhub_config.py names the same one)
    assert Path(backend.facility_file).resolve() == (FACILITIES / "fermilab-eaf.yaml").resolve()
    assert app.address == "127.0.0.1:18001"
    assert (backend.api_url, backend.gateway_instance) == ("http://127.0.0.1:18001/api", "af-dask")
    assert "Proxy" not in app.config  # Traefik, routed by the controller


def test_the_eaf_coffea_dask_flavor_fits_the_persons_8_cores() -> None:
    fac = load_facility_file(FACILITIES / "fermilab-eaf.yaml")
    dask = [f.name for f in fac.flavors if f.dask is not None]
    assert dask == ["cmslpc-coffea-dask"]
    alice = UserContext("alice", frozenset({"cms"}), ("cms",), False)
    spec = option_spec(fac, alice)
    assert [c.name for c in spec.worker_sizes] == ["standard", "wide"]
    dune = UserContext("dan", frozenset({"dune"}), ("dune",), False)
    assert option_spec(fac, dune).flavors == ()
    ledger = Ledger()
    ledger.put(Reservation("alice", "dask", "cms", Usage(2000, 8 << 30, 1)))  # the notebook
    plan = resolve_cluster(fac, alice, ClusterRequest())
    assert (plan.image, plan.max_workers) == ("mapsacosta/eafjupyter:cmslpc-dask-notebook", 5)
    assert grant_workers(fac, ledger, plan, "c1", 50).workers == 5
    assert ledger.usage("cms", "alice").cpu_millis == 8000  # the person's 8 cores, exactly
    wide = resolve_cluster(fac, alice, ClusterRequest(worker_size="wide"))
    assert wide.max_workers == 2  # max_cores 5 // 2


def test_ucsd_offers_dask_within_the_same_allowance() -> None:
    fac = load_facility_file(FACILITIES / "ucsd-cms.yaml")
    cms = UserContext("c", frozenset({"cms"}), ("cms",), False)
    assert [c.name for c in option_spec(fac, cms).flavors] == ["cms-el9"]
    ucsd = UserContext("u", frozenset({"ucsd"}), ("ucsd",), False)
    assert option_spec(fac, ucsd).flavors == ()


def test_the_eaf_hub_registers_its_gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("prometheus-token", "dask-gateway-token"):
        (tmp_path / name).write_text(f"{name}-value\n")
    monkeypatch.setenv("AF_SITE_SECRETS_DIR", str(tmp_path))
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(EAF)).load_config()
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["dask-gateway"]["api_token"] == "dask-gateway-token-value"
    assert "command" not in services["dask-gateway"]  # its own Deployment, not a hub child
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["dask-gateway"] == {
        "name": "dask-gateway",
        "scopes": [daskapi.SCOPE],
        "services": ["dask-gateway"],
    }
    assert "access:services!service=dask-gateway" in roles["server"]["scopes"]
    assert "user" not in roles
    extra = c.JupyterHub.extra_user_scopes.get_value(set())
    assert "access:services!service=dask-gateway" in extra
    env = gateway_env(c.AFSpawner.dask_gateway)
    assert env["DASK_GATEWAY__ADDRESS"] == "http://dask-gateway.jupyterhub.svc:8000"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://dask-gateway.jupyterhub.svc:8786"
