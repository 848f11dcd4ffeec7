"""The site configurations of examples/sites/ load and pass the hub's own checks.

Each ``jupyterhub_config.py`` is loaded the way JupyterHub loads it (traitlets'
``PyFileConfigLoader``), with production values (no ``AF_SITE_*`` overrides but the secrets and
state directories), then checked with the authenticator's configuration check, the facility
loader and the uid-source check. LEAP's GitHub IdP is a real ``GitHubOAuthenticator``.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from afauth.config import AuthConfig, build_config
from afauth.idps.oauth import OAuthenticatorIdP
from afspawner.loader import load_facility_file
from afspawner.uid import source_config

SITES_DIR = Path(__file__).resolve().parents[2] / "examples" / "sites"
SITES = ("ucsd-cms", "escape-vre", "ihep", "fermilab-eaf", "leap-pangeo")


@pytest.fixture(autouse=True)
def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test-bed override but the secrets directory (the Prometheus token is read at load)."""
    for name in [
        "AF_SITE_ISSUER_CERN",
        "AF_SITE_ISSUER_UCSD",
        "AF_SITE_ISSUER_ESCAPE_IAM",
        "AF_SITE_LDAP_URL",
        "AF_SITE_LDAP_CA_FILE",
        "AF_SITE_LDAP_BASE",
        "AF_SITE_KUBECONFIG",
        "AF_SITE_GITHUB_STANDIN",
        "AF_SITE_PUBLIC_URL",
        "AF_SITE_STATE_DIR",
    ]:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "prometheus-token").write_text("t0ken\n")
    (tmp_path / "dask-gateway-token").write_text("d4sk\n")  # EAF's Dask Gateway service
    monkeypatch.setenv("AF_SITE_SECRETS_DIR", str(tmp_path))
    # secret files are checked to exist at hub start; they are the operator's to create
    monkeypatch.setattr("afauth.idps.base.file_problem", lambda path: None)
    return tmp_path


def load(site: str) -> Any:
    loader = PyFileConfigLoader("jupyterhub_config.py", path=str(SITES_DIR / site))
    return loader.load_config()


def auth_config(c: Config) -> AuthConfig:
    auth = c.AFAuthenticator
    return build_config(
        idps=auth.idps,
        mapping=auth.mapping,
        mappers=[],
        managed_roles=auth.get("managed_roles", []),
        vos=auth.vos,
        linked_identities={},
        allow_insecure=False,
        max_username_length=48,
        log=logging.getLogger("sites"),
    )


@pytest.mark.parametrize("site", SITES)
def test_the_site_config_loads_and_passes_the_hubs_checks(site: str, production: Path) -> None:
    c = load(site)
    assert c.JupyterHub.authenticator_class == "af" and c.JupyterHub.spawner_class == "af"
    config = auth_config(c)
    assert config.idps
    # the facility file is the shared one of examples/facilities, by a relative path
    facility_file = Path(c.AFSpawner.facility_file)
    assert facility_file.resolve() == (SITES_DIR.parent / "facilities" / f"{site}.yaml").resolve()
    facility = load_facility_file(facility_file)
    # every VO the authenticator maps to is one of the facility's
    assert set(config.vos) <= set(facility.vos), (config.vos, list(facility.vos))
    spawner = c.AFSpawner
    source_config(
        spawner.uid_sources,
        spawner.get("uid_sources_by_idp", {}),
        spawner.get("uid_source_rules", []),
        bool(spawner.get("uid_pool_file")),
    )
    assert spawner.backend == "kubernetes"
    assert "kubeconfig" not in spawner.backend_options  # in-cluster in production
    # production addresses: https public URL, state on the hub's volume
    assert c.JupyterHub.public_url.startswith("https://")
    assert c.JupyterHub.db_url == "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    assert c.AFAuthenticator.binding_db == "/srv/jupyterhub/afauth-bindings.sqlite"
    # facility page and metrics
    handlers = c.JupyterHub.extra_handlers.get_value([])  # facility_page.setup extends
    assert any(route == r"/facility" for route, _ in handlers)
    assert c.JupyterHub.authenticate_prometheus is True
    service = c.JupyterHub.services[0]  # Prometheus (EAF: then its Dask Gateway)
    assert service["api_token"] == "t0ken"
    role = c.JupyterHub.load_roles[0]
    assert role["scopes"] == ["read:metrics"] and role["services"] == [service["name"]]
    assert spawner.idle_check_interval > 0


def test_every_site_has_a_readme_that_quotes_its_seed() -> None:
    index = (SITES_DIR / "README.md").read_text(encoding="utf-8")
    for site in SITES:
        assert f"({site}/)" in index or f"({site}/README.md)" in index, site
        text = (SITES_DIR / site / "README.md").read_text(encoding="utf-8")
        assert re.search(r"seed 00\d", text), site
        assert text.count("\n> ") >= 3, f"{site}: quote the seed page where a choice comes from"


def test_ucsd_cern_for_cms_and_cilogon_for_campus() -> None:
    c = load("ucsd-cms")
    config = auth_config(c)
    cern, ucsd = config.idps["cern"], config.idps["ucsd"]
    assert cern.opt("issuer") == "https://auth.cern.ch/auth/realms/cern"
    assert ucsd.opt("issuer") == "https://cilogon.org"
    assert c.JupyterHub.named_server_limit_per_user == 4  # 5 servers in all (per_user.servers)
    assert c.AFSpawner.uid_sources == ["pool"]


def test_escape_iam_issuer_and_one_server() -> None:
    c = load("escape-vre")
    iam = auth_config(c).idps["escape-iam"]
    assert iam.opt("issuer") == "https://iam-escape.cloud.cnaf.infn.it/"
    assert "offline_access" in iam.opt("scope")
    assert c.JupyterHub.allow_named_servers is False


def test_ldap_sites_keep_the_directory_uid() -> None:
    for site, server in (("fermilab-eaf", "ldaps://ldap1.fnal.gov"), ("ihep", "ldaps://")):
        c = load(site)
        [idp] = auth_config(c).idps.values()
        assert idp.opt("servers")[0].startswith(server)
        assert "ca_file" not in idp.config  # the system's CAs
        assert c.AFSpawner.uid_sources == ["auth_state"]


def test_fermilab_default_plus_five_named_servers_and_8h_idle() -> None:
    c = load("fermilab-eaf")
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.named_server_limit_per_user == 5
    facility = load_facility_file(Path(c.AFSpawner.facility_file))
    assert facility.idle.timeout == 8 * 3600
    # six servers per user in every VO: default + 5 named
    assert {vo.per_user.servers for vo in facility.vos.values()} == {6}
    assert c.AFSpawner.gpu_wait == "refuse"  # "first come, first serve ... try again later"


def test_leap_github_configuration_validates_and_is_github() -> None:
    c = load("leap-pangeo")
    idp = auth_config(c).idps["github"]
    assert isinstance(idp, OAuthenticatorIdP)
    wrapped = idp.wrapped
    assert type(wrapped).__name__ == "GitHubOAuthenticator"
    assert wrapped.allowed_organizations == {
        "leap-stc:leap-pangeo-base-access",
        "leap-stc:leap-pangeo-full-access",
        "leap-stc:leap-pangeo-research",
    }
    assert wrapped.populate_teams_in_auth_state is True
    assert "read:org" in wrapped.scope
    assert idp.subject_claim == "id"  # GitHub's numeric account id: renames keep the name
    assert c.AFAuthenticator.allowed_idps == {"github"}


def test_leap_github_typo_is_refused_with_its_key_path(monkeypatch: pytest.MonkeyPatch) -> None:
    c = load("leap-pangeo")
    [github] = c.AFAuthenticator.idps
    github["options"]["allowed_organisations"] = github["options"].pop("allowed_organizations")
    with pytest.raises(Exception, match=r"idps\[0\]\.options\.allowed_organisations"):
        auth_config(c)


def test_fermilab_optional_kerberos_block_is_valid(tmp_path: Path) -> None:
    """``GET_KERBEROS_TICKETS = True`` gives a kerberos section the hub accepts."""
    copy = tmp_path / "examples"
    (copy / "sites" / "fermilab-eaf").mkdir(parents=True)
    (copy / "facilities").mkdir()
    shutil.copy(SITES_DIR / "_site_env.py", copy / "sites")
    shutil.copy(SITES_DIR.parent / "facilities" / "fermilab-eaf.yaml", copy / "facilities")
    source = (SITES_DIR / "fermilab-eaf" / "jupyterhub_config.py").read_text(encoding="utf-8")
    assert source.count("GET_KERBEROS_TICKETS = False") == 1
    (copy / "sites" / "fermilab-eaf" / "jupyterhub_config.py").write_text(
        source.replace("GET_KERBEROS_TICKETS = False", "GET_KERBEROS_TICKETS = True")
    )
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(copy / "sites" / "fermilab-eaf"))
    loaded = c.load_config()
    [idp] = auth_config(loaded).idps.values()
    assert idp.config["kerberos"]["realm"] == "FNAL.GOV"
