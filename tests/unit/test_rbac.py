"""The RBAC objects in deploy/ against the calls the code makes (src/afspawner/kube/permissions.py).

The source is scanned (AST): every ``request``/``stream``/``shared_informer`` call must have its
entry in ``CALLS`` (and every entry a call), the verbs must fit the HTTP method, informer paths
must name the declared resources, and the YAML files must be what the table renders.
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from afspawner.kube import permissions as perms
from afspawner.kube.client import KubeError
from afspawner.kube.informer import Informer
from afspawner.kube.permissions import (
    CALLS,
    GENERIC,
    INFORMER,
    METHOD_VERBS,
    CallSite,
    explain_forbidden,
    refusal,
    render_rbac,
    synced_or_refused,
)

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "afspawner"
KUBE_CALLS = {"request", "stream", "shared_informer", "Informer"}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _path_resource(node: ast.expr) -> str | None:
    """The last segment of a literal or f-string path ("/api/v1/namespaces/{ns}/pods" → pods)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr) and isinstance(node.values[-1], ast.Constant):
        text = str(node.values[-1].value)
    else:
        return None
    return text.rstrip("/").rsplit("/", 1)[-1] or None


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.stack: list[tuple[str, bool]] = []  # (name, is a class)
        self.found: list[tuple[CallSite, str | None, int]] = []
        self.raw: list[int] = []

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append((node.name, isinstance(node, ast.ClassDef)))
        self.generic_visit(node)
        self.stack.pop()

    visit_ClassDef = _scoped
    visit_FunctionDef = _scoped
    visit_AsyncFunctionDef = _scoped

    def _where(self) -> str:
        """``Class.method`` or ``function``; nested closures count for the one they are in."""
        if not self.stack:
            return "<module>"
        if self.stack[0][1] and len(self.stack) > 1:
            return f"{self.stack[0][0]}.{self.stack[1][0]}"
        return self.stack[0][0]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute) and func.attr == "call_api":
            self.raw.append(node.lineno)
        if name in KUBE_CALLS:
            resource = None
            if name == "request":
                method_node = node.args[1]
                assert isinstance(method_node, ast.Constant), (
                    f"{self.module}:{node.lineno}: the HTTP method of request() must be a literal"
                )
                method = str(method_node.value)
            elif name == "stream":
                method = "GET"
            else:
                method = INFORMER
                resource = _path_resource(node.args[1]) if len(node.args) > 1 else None
            self.found.append((CallSite(self.module, self._where(), method), resource, node.lineno))
        self.generic_visit(node)


def _scan() -> Iterator[_Scanner]:
    for path in sorted(SRC.rglob("*.py")):
        scanner = _Scanner(_module(path))
        scanner.visit(ast.parse(path.read_text(), str(path)))
        yield scanner


def _defined_here(site: CallSite) -> bool:
    """``request``/``stream`` defined in kube/client.py call ``call_api``, not themselves."""
    return site.module == "afspawner.kube.client"


def test_every_apiserver_call_has_its_permissions_declared() -> None:
    sites: set[CallSite] = set()
    raw: dict[str, list[int]] = {}
    for scanner in _scan():
        sites |= {site for site, _, _ in scanner.found if not _defined_here(site)}
        if scanner.raw:
            raw[scanner.module] = scanner.raw
    # the scanner finds calls at all (a refactoring that hides them must fail here too)
    assert len(sites) >= 10
    assert not set(CALLS) & GENERIC
    missing = sorted(sites - set(CALLS) - GENERIC)
    assert not missing, (
        f"apiserver calls without an entry in afspawner/kube/permissions.py CALLS: {missing}; "
        "declare the permissions they need, then update deploy/*.yaml"
    )
    stale = sorted((set(CALLS) | GENERIC) - sites)
    assert not stale, f"entries of permissions.CALLS without such a call: {stale}"
    # only the client talks to the apiserver directly
    assert set(raw) == {"afspawner.kube.client"}, raw


def test_informer_paths_name_the_declared_resources() -> None:
    by_site: dict[CallSite, set[str]] = {}
    for scanner in _scan():
        for site, resource, line in scanner.found:
            if site.method == INFORMER and site not in GENERIC:
                assert resource, f"{site.module}:{line}: informer path without a literal resource"
                by_site.setdefault(site, set()).add(resource)
    assert by_site
    for site, resources in by_site.items():
        assert {p.resource for p in CALLS[site]} == resources, site


@pytest.mark.parametrize("site", sorted(CALLS), ids=lambda s: f"{s.function}:{s.method}")
def test_declared_verbs_fit_the_http_method(site: CallSite) -> None:
    assert CALLS[site], site
    for p in CALLS[site]:
        assert p.verb in METHOD_VERBS[site.method], (site, p)
        assert p.scope in ("servers", "vo", "cluster") and p.why
    if site.method == INFORMER:  # an informer LISTs and WATCHes each of its resources
        for resource in {p.resource for p in CALLS[site]}:
            verbs = {p.verb for p in CALLS[site] if p.resource == resource}
            assert verbs == {"list", "watch"}, (site, resource)


def _yaml(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if doc]


REGENERATE = (
    "{} differs from what permissions.CALLS renders: replace its objects (keep the header "
    "comment) with the output of python -m afspawner.kube.permissions --namespace jupyterhub{}"
)


def test_deploy_rbac_yaml_is_what_the_table_renders() -> None:
    assert _yaml("rbac.yaml") == render_rbac("jupyterhub"), REGENERATE.format("rbac.yaml", "")
    vos = {"cms": "af-cms", "dune": "af-dune"}
    assert _yaml("rbac-vo-namespaces.yaml") == render_rbac("jupyterhub", vos, base=False), (
        REGENERATE.format(
            "rbac-vo-namespaces.yaml", " and a facility with VO namespaces af-cms, af-dune"
        )
    )


def _granted(objs: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str]]:
    [role] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return {(v, r) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_hub_role_grants_exactly_what_the_code_calls() -> None:
    objs = _yaml("rbac.yaml")
    assert _granted(objs, "Role", "jupyterhub-af-hub") == {
        ("create", "pods"),
        ("delete", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("create", "secrets"),
        ("update", "secrets"),
        ("delete", "secrets"),
        ("list", "secrets"),
        ("create", "persistentvolumeclaims"),
        ("list", "events"),
        ("watch", "events"),
    }
    assert _granted(objs, "ClusterRole", "jupyterhub-af-hub-nodes") == {
        ("list", "nodes"),
        ("watch", "nodes"),
    }
    # no wildcard, no group but the core one, no cluster-wide pods or secrets
    for obj in objs:
        for rule in obj.get("rules", []):
            assert rule["apiGroups"] == [""] and "*" not in rule["verbs"] + rule["resources"]
    [sa] = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert sa["metadata"] == {
        "name": "jupyterhub-af-hub",
        "namespace": "jupyterhub",
        "labels": {"app.kubernetes.io/managed-by": "jupyterhub-af"},
    }
    for binding in (o for o in objs if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "jupyterhub-af-hub", "namespace": "jupyterhub"}
        ]


def test_vo_namespaces_get_their_rights_only_there() -> None:
    objs = render_rbac("hub-ns", {"cms": "af-cms"})
    vo_rights = _granted(objs, "ClusterRole", "jupyterhub-af-hub-vo")
    assert vo_rights == _granted(objs, "Role", "jupyterhub-af-hub") | {
        ("create", "resourcequotas"),
        ("get", "resourcequotas"),
        ("update", "resourcequotas"),
    }
    assert _granted(objs, "ClusterRole", "jupyterhub-af-hub-vo-cluster") == {
        ("create", "namespaces")
    }
    [binding] = [
        o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole"
    ]
    assert binding["metadata"]["namespace"] == "af-cms"
    # without quotas: no namespace creation, no quota rights
    bare = render_rbac("hub-ns", {"cms": "af-cms"}, reconcile_quotas=False, watch_nodes=False)
    names = {o["metadata"]["name"] for o in bare if o["kind"].startswith("Cluster")}
    assert names == {"jupyterhub-af-hub-vo"}
    assert not {r for _, r in _granted(bare, "ClusterRole", "jupyterhub-af-hub-vo")} & {
        "resourcequotas"
    }


def test_the_command_line_renders_a_facility(capsys: pytest.CaptureFixture[str]) -> None:
    fac = ROOT / "examples" / "facilities" / "ucsd-cms.yaml"
    assert perms.main(["--namespace", "hub", "--facility", str(fac)]) == 0
    objs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    from afspawner.loader import load_facility_file

    vos = {v.name: v.namespace for v in load_facility_file(fac).vos.values() if v.namespace}
    assert objs == render_rbac("hub", vos)


FORBIDDEN = (
    'secrets is forbidden: User "system:serviceaccount:af-test-1:jupyterhub-af-hub" cannot '
    'create resource "secrets" in API group "" in the namespace "af-test-1"'
)


def test_a_refusal_names_the_missing_permission() -> None:
    text = refusal(403, FORBIDDEN)
    assert text.startswith(
        "the hub's ServiceAccount jupyterhub-af-hub (namespace af-test-1) may not create "
        "secrets in namespace af-test-1 (Kubernetes RBAC, needed for each server's credentials"
    )
    assert text.endswith("grant it as deploy/rbac.yaml does")
    nodes = (
        'nodes is forbidden: User "af-user" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )
    assert explain_forbidden(nodes) == (
        "the hub's Kubernetes account af-user may not list nodes at the cluster scope "
        "(Kubernetes RBAC, needed for free GPUs per class); grant it as deploy/rbac.yaml does"
    )
    # other errors pass through unchanged
    assert refusal(422, FORBIDDEN) == FORBIDDEN
    assert refusal(403, "admission webhook denied the request") == (
        "admission webhook denied the request"
    )


async def test_setup_fails_at_once_when_an_informer_is_refused() -> None:
    informer = Informer(None, "/api/v1/nodes")  # type: ignore[arg-type]  # never started: only its last_error is read
    never = asyncio.Event()
    informer.last_error = str(KubeError(403, json.dumps({"message": FORBIDDEN})))
    with pytest.raises(KubeError) as err:
        await asyncio.wait_for(synced_or_refused(never.wait(), [informer, None], 30), 5)
    assert err.value.status == 403 and err.value.message == FORBIDDEN
    informer.lists = 1  # it listed once: a later refusal is its own business, not setup's
    with pytest.raises(TimeoutError):
        await synced_or_refused(never.wait(), [informer], 0.3)
    informer.lists = 0
    informer.last_error = "ClientConnectorError: refused"  # not RBAC: wait, then time out
    with pytest.raises(TimeoutError):
        await synced_or_refused(never.wait(), [informer], 0.3)
    informer.last_error = str(KubeError(403, json.dumps({"message": FORBIDDEN})))
    done = asyncio.Event()
    done.set()
    await synced_or_refused(done.wait(), [informer], 5)
