"""The Kubernetes permissions the hub uses: one declared table, the RBAC objects made from it,
and the explanation of a refusal (403) that names the missing permission.

``CALLS`` lists every place in :mod:`afspawner` that talks to the apiserver (a ``request`` or
``stream`` call, or a ``shared_informer``), keyed by module, function and HTTP method, with the
permissions that call needs. ``tests/unit/test_rbac.py`` scans the source: a new call without an
entry fails, and so does ``deploy/rbac.yaml`` when it differs from :func:`render_rbac`.

Generate the objects for a facility (hub namespace, VO namespaces)::

    python -m afspawner.kube.permissions --namespace jupyterhub --facility facility.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from afspawner.kube.client import KubeError
from afspawner.kube.informer import Informer, NamespacedInformers

Scope = Literal["servers", "vo", "cluster"]
"""``servers``: every namespace servers run in (the hub's ``namespace`` and each VO namespace);
``vo``: the VO namespaces only; ``cluster``: a cluster-scoped resource."""

When = Literal["always", "watch_nodes", "vo_namespaces", "vo_quotas"]
"""``always``; ``watch_nodes`` (backend option, default on); ``vo_namespaces`` (a VO of the
facility has a ``namespace``); ``vo_quotas`` (VO namespaces and ``reconcile_quotas``)."""

INFORMER = "LIST+WATCH"
"""The method of a ``shared_informer`` call site (a LIST, then WATCHes)."""

SERVICE_ACCOUNT = "jupyterhub-af-hub"
RBAC_FILE = "deploy/rbac.yaml"
MANAGED_BY = {"app.kubernetes.io/managed-by": "jupyterhub-af"}


@dataclass(frozen=True, order=True)
class Permission:
    verb: str
    resource: str
    scope: Scope
    when: When = "always"
    why: str = ""


@dataclass(frozen=True, order=True)
class CallSite:
    module: str
    function: str  # "Class.method" or "function"
    method: str  # GET, POST, PUT, DELETE, PATCH or INFORMER


def _p(verb: str, resource: str, scope: Scope, when: When = "always", why: str = "") -> Permission:
    return Permission(verb, resource, scope, when, why)


_K = "afspawner.backends.kubernetes"
_BACKEND = "KubernetesBackend"

CALLS: Mapping[CallSite, tuple[Permission, ...]] = {
    CallSite(_K, f"{_BACKEND}._namespace_informers", INFORMER): (
        _p("list", "pods", "servers", why="the pod informer"),
        _p("watch", "pods", "servers", why="the pod informer"),
        _p("list", "events", "servers", why="spawn progress"),
        _p("watch", "events", "servers", why="spawn progress"),
    ),
    CallSite(_K, f"{_BACKEND}._setup", INFORMER): (
        _p("list", "nodes", "cluster", "watch_nodes", "free GPUs per class"),
        _p("watch", "nodes", "cluster", "watch_nodes", "free GPUs per class"),
    ),
    CallSite(_K, f"{_BACKEND}._create", "POST"): (
        _p("create", "persistentvolumeclaims", "servers", why="home claims"),
        _p("create", "pods", "servers", why="server pods"),
    ),
    CallSite(_K, f"{_BACKEND}._put_secret", "POST"): (
        _p("create", "secrets", "servers", why="each server's credentials"),
    ),
    CallSite(_K, f"{_BACKEND}._put_secret", "PUT"): (
        _p("update", "secrets", "servers", why="token refresh, a Secret left by an old server"),
    ),
    CallSite(_K, f"{_BACKEND}.stop", "DELETE"): (
        _p("delete", "pods", "servers", why="stopping servers"),
        _p("delete", "secrets", "servers", why="stopping servers"),
    ),
    CallSite("afspawner.kube.sweep", "list_labelled", "GET"): (
        _p("list", "pods", "servers", why="the orphan sweep"),
        _p("list", "secrets", "servers", why="the orphan sweep"),
    ),
    CallSite("afspawner.kube.sweep", "_delete", "DELETE"): (
        _p("delete", "pods", "servers", why="the orphan sweep"),
        _p("delete", "secrets", "servers", why="the orphan sweep"),
    ),
    CallSite("afspawner.kube.reconcile", "reconcile_vo_namespaces", "POST"): (
        _p("create", "namespaces", "cluster", "vo_quotas", "VO namespaces"),
        _p("create", "resourcequotas", "vo", "vo_quotas", "VO quotas"),
    ),
    CallSite("afspawner.kube.reconcile", "reconcile_vo_namespaces", "GET"): (
        _p("get", "resourcequotas", "vo", "vo_quotas", "VO quotas"),
    ),
    CallSite("afspawner.kube.reconcile", "reconcile_vo_namespaces", "PUT"): (
        _p("update", "resourcequotas", "vo", "vo_quotas", "VO quotas"),
    ),
}

GENERIC: frozenset[CallSite] = frozenset(
    {
        # the informer's own LIST and WATCH: their permissions are those of each INFORMER site
        CallSite("afspawner.kube.informer", "Informer._list", "GET"),
        CallSite("afspawner.kube.informer", "Informer._watch", "GET"),
        CallSite("afspawner.kube.informer", "shared_informer", INFORMER),
    }
)
"""Call sites that serve others (their permissions are declared where they are used)."""

METHOD_VERBS: Mapping[str, frozenset[str]] = {
    "GET": frozenset({"get", "list"}),
    "POST": frozenset({"create"}),
    "PUT": frozenset({"update"}),
    "PATCH": frozenset({"patch"}),
    "DELETE": frozenset({"delete"}),
    INFORMER: frozenset({"list", "watch"}),
}
"""Which RBAC verbs an HTTP method can need (GET: ``get`` a named object, ``list`` a collection)."""


def permissions(
    when: Iterable[When] = ("always",), scopes: Iterable[Scope] = ("servers", "vo", "cluster")
) -> frozenset[tuple[str, str]]:
    """(verb, resource) pairs of the table for the given conditions and scopes."""
    conds, where = set(when), set(scopes)
    return frozenset(
        (p.verb, p.resource)
        for perms in CALLS.values()
        for p in perms
        if p.when in conds and p.scope in where
    )


# -- the RBAC objects ------------------------------------------------------------------------


def rules(pairs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """RBAC rules for (verb, resource) pairs of the core group: resources with the same verbs
    share a rule; sorted, so the output is stable."""
    verbs: dict[str, set[str]] = {}
    for verb, resource in pairs:
        verbs.setdefault(resource, set()).add(verb)
    grouped: dict[tuple[str, ...], list[str]] = {}
    for resource, vs in verbs.items():
        grouped.setdefault(tuple(sorted(vs)), []).append(resource)
    return [
        {"apiGroups": [""], "resources": sorted(res), "verbs": list(vs)}
        for vs, res in sorted(grouped.items(), key=lambda kv: sorted(kv[1]))
    ]


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**MANAGED_BY, **labels}
    return meta


def _role(kind: str, name: str, namespace: str | None, pairs: Iterable[tuple[str, str]]) -> Any:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace),
        "rules": rules(pairs),
    }


def _binding(kind: str, name: str, namespace: str | None, role: tuple[str, str], sa: Any) -> Any:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace),
        "subjects": [{"kind": "ServiceAccount", "name": sa[1], "namespace": sa[0]}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role[0], "name": role[1]},
    }


def render_rbac(
    namespace: str,
    vo_namespaces: Mapping[str, str] | None = None,
    *,
    watch_nodes: bool = True,
    reconcile_quotas: bool = True,
    name: str = SERVICE_ACCOUNT,
    base: bool = True,
) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects of a hub in ``namespace``.

    ``vo_namespaces`` maps VO names to their namespaces (VOs with a ``namespace``); with
    ``base=False`` only the objects for them are returned (``deploy/rbac-vo-namespaces.yaml``).
    """
    sa = (namespace, name)
    vos = dict(vo_namespaces or {})
    objs: list[dict[str, Any]] = []
    if base:
        objs.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)}
        )
        objs.append(_role("Role", name, namespace, permissions(scopes=["servers"])))
        objs.append(_binding("RoleBinding", name, namespace, ("Role", name), sa))
        if watch_nodes:
            nodes = f"{name}-nodes"
            objs.append(
                _role("ClusterRole", nodes, None, permissions(["watch_nodes"], ["cluster"]))
            )
            objs.append(_binding("ClusterRoleBinding", nodes, None, ("ClusterRole", nodes), sa))
    if not vos:
        return objs
    conds: list[When] = ["vo_namespaces", "vo_quotas"] if reconcile_quotas else ["vo_namespaces"]
    cluster, in_vo = f"{name}-vo-cluster", f"{name}-vo"
    if permissions(conds, ["cluster"]):
        objs.append(_role("ClusterRole", cluster, None, permissions(conds, ["cluster"])))
        objs.append(_binding("ClusterRoleBinding", cluster, None, ("ClusterRole", cluster), sa))
    in_vo_pairs = permissions(scopes=["servers"]) | permissions(conds, ["vo"])
    objs.append(_role("ClusterRole", in_vo, None, in_vo_pairs))
    for vo, ns in sorted(vos.items(), key=lambda kv: kv[1]):
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": _meta(ns, None, **{"af.jupyterhub.org/vo": vo}),
            }
        )
        objs.append(_binding("RoleBinding", in_vo, ns, ("ClusterRole", in_vo), sa))
    return objs


# -- explaining a refusal --------------------------------------------------------------------

_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>[\w-]+) resource "(?P<resource>[^"]+)"'
    r' in API group "(?P<group>[^"]*)"'
    r'(?: in the namespace "(?P<namespace>[^"]+)"| at the cluster scope)?'
)


def _who(user: str) -> str:
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return f"the hub's ServiceAccount {parts[3]} (namespace {parts[2]})"
    return f"the hub's Kubernetes account {user}" if user else "the hub's Kubernetes account"


def _purpose(verb: str, resource: str) -> str:
    whys = sorted(
        {
            p.why
            for perms in CALLS.values()
            for p in perms
            if (p.verb, p.resource) == (verb, resource)
        }
        - {""}
    )
    return f", needed for {' and '.join(whys)}" if whys else ""


def explain_forbidden(message: str) -> str | None:
    """The apiserver's 403 message → which permission is missing, or ``None`` if not RBAC."""
    m = _FORBIDDEN.search(message)
    if m is None:
        return None
    verb, resource = m["verb"], m["resource"]
    group = f" (API group {m['group']})" if m["group"] else ""
    where = f"in namespace {m['namespace']}" if m["namespace"] else "at the cluster scope"
    return (
        f"{_who(m['user'])} may not {verb} {resource}{group} {where} (Kubernetes RBAC"
        f"{_purpose(verb, resource)}); grant it as {RBAC_FILE} does"
    )


def refusal(status: int, message: str) -> str:
    """What to tell the user/operator about an apiserver error (403s name the permission)."""
    if status == 403:
        explained = explain_forbidden(message)
        if explained:
            return explained
    return message


def refused_from_text(text: str | None) -> str | None:
    """An informer's ``last_error`` (``"<status>: <message>"``): the message if it is a 403."""
    if not text or not text.startswith("403: "):
        return None
    return text[5:]


def _members(informers: Iterable[Informer | NamespacedInformers | None]) -> list[Informer]:
    found: list[Informer] = []
    for inf in informers:
        if isinstance(inf, NamespacedInformers):
            found.extend(inf.members.values())
        elif inf is not None:
            found.append(inf)
    return found


async def synced_or_refused(
    synced: Awaitable[Any],
    informers: Iterable[Informer | NamespacedInformers | None],
    within: float,
) -> None:
    """Wait for ``synced`` (the informers' first LISTs); raise :class:`KubeError` 403 at once
    when the apiserver refuses the LIST of an informer that never listed (the informers
    themselves retry for ever), and ``TimeoutError`` after ``within`` seconds."""
    members = _members(informers)
    task = asyncio.ensure_future(synced)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0)
            if done:
                task.result()
                return
            for member in members:
                message = refused_from_text(member.last_error) if member.lists == 0 else None
                if message is not None:
                    raise KubeError(403, json.dumps({"message": message}))
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"informers not synced within {within:.0f}s")
            await asyncio.wait({task}, timeout=min(0.2, left))
    finally:
        if not task.done():
            task.cancel()


# -- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(
        prog="python -m afspawner.kube.permissions",
        description="print the hub's ServiceAccount and RBAC objects (YAML) for a facility",
    )
    parser.add_argument("--namespace", required=True, help="the hub's namespace")
    parser.add_argument("--facility", help="facility file: RBAC for its VO namespaces too")
    parser.add_argument("--no-watch-nodes", action="store_true", help="watch_nodes is off")
    parser.add_argument("--no-reconcile-quotas", action="store_true", help="reconcile_quotas off")
    args = parser.parse_args(argv)
    vos: dict[str, str] = {}
    if args.facility:
        from afspawner.loader import load_facility_file

        fac = load_facility_file(args.facility)
        vos = {vo.name: vo.namespace for vo in fac.vos.values() if vo.namespace}
    objs = render_rbac(
        args.namespace,
        vos,
        watch_nodes=not args.no_watch_nodes,
        reconcile_quotas=not args.no_reconcile_quotas,
    )
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
