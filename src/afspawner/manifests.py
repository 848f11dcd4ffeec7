"""LaunchPlan → Kubernetes objects (plain JSON dicts), as pure functions.

The pod carries labels to find it and an annotation with its reservation, so a restarted hub
can rebuild its quota ledger from the cluster alone. Hub credentials (the API token) go into
a per-server Secret consumed with ``envFrom``, not into the pod spec; the backend creates the
pod first and then its Secrets owned by it (:func:`owned_by`), so garbage collection removes
them with the pod. Home claims are labelled (component ``home``) but owned by nobody: they
are the user's data and outlive every server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afcore.quantity import format_cpu, format_memory
from afcore.registry import PluginError
from afspawner.names import home_claim_name, label_value, pod_name
from afspawner.plan import GPURequest, LaunchPlan
from afspawner.quota import Reservation, Usage, plan_usage
from afspawner.volumes import RenderContext, VolumeType, volume_types

LABEL_PREFIX = "af.jupyterhub.org"
MANAGED_BY = {"app.kubernetes.io/managed-by": "jupyterhub-af"}
COMPONENT = {"app.kubernetes.io/component": "singleuser-server"}
HOME_COMPONENT = {"app.kubernetes.io/component": "home"}
RESERVATION_ANNOTATION = f"{LABEL_PREFIX}/reservation"
USERNAME_ANNOTATION = f"{LABEL_PREFIX}/username"
SERVER_ANNOTATION = f"{LABEL_PREFIX}/server-name"
CONTAINER = "notebook"
TOKEN_DIR = "/etc/af-token"  # noqa: S105 - a path, not a secret
TOKEN_KEY = "bearer_token"  # noqa: S105 - a Secret key name
KRB5_DIR = "/etc/af-krb5"
KRB5_KEY = "krb5cc"
SERVICES_DIR = "/etc/af-tokens"  # $AF_TOKENS_DIR: one file per service token


@dataclass(frozen=True)
class PodSettings:
    """Per-hub settings of the pods (from AFSpawner traits)."""

    namespace: str
    port: int = 8888
    cmd: Sequence[str] = ("jupyterhub-singleuser",)
    args: Sequence[str] = ()
    hub_env: Mapping[str, str] = field(default_factory=dict)  # secret: goes to the Secret
    image_pull_policy: str = "IfNotPresent"
    extra_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Objects:
    pod: dict[str, Any]
    secret: dict[str, Any]
    claims: tuple[dict[str, Any], ...]
    token_secret: dict[str, Any] | None = None
    krb5_secret: dict[str, Any] | None = None
    services_secret: dict[str, Any] | None = None


def token_secret_name(pod: str) -> str:
    return f"{pod}-token"


def krb5_secret_name(pod: str) -> str:
    return f"{pod}-krb5"


def services_secret_name(pod: str) -> str:
    return f"{pod}-services"


def services_secret(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    tokens: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Secret behind ``$AF_TOKENS_DIR``: one key per service token (afauth.exchange);
    a service without a token has no key, so no file."""
    secret = token_secret(name, namespace, labels, "", annotations)
    secret["stringData"] = {k: v for k, v in tokens.items() if v}
    return secret


def krb5_secret(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    ccache: bytes,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Secret behind KRB5CCNAME (a Kerberos credential cache); rewritten at renewals."""
    secret = token_secret(name, namespace, labels, "", annotations)
    del secret["stringData"]
    secret["data"] = {KRB5_KEY: base64.b64encode(ccache).decode("ascii")}
    return secret


def token_secret(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    token: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Secret behind BEARER_TOKEN_FILE; rewritten when the hub refreshes the token."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "stringData": {TOKEN_KEY: token},
    }


def owned_by(obj: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with an ownerReference to ``pod`` (as created: it needs the pod's uid)."""
    pod_meta = pod.get("metadata") or {}
    ref = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod_meta["name"],
        "uid": pod_meta["uid"],
        "blockOwnerDeletion": False,
    }
    meta = {**(obj.get("metadata") or {}), "ownerReferences": [ref]}
    return {**obj, "metadata": meta}


def server_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(username, server name)`` from the annotations of a pod or Secret we created."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    user = ann.get(USERNAME_ANNOTATION)
    if not isinstance(user, str):
        return None
    return user, str(ann.get(SERVER_ANNOTATION) or "")


def server_annotations(username: str, server_name: str) -> dict[str, str]:
    return {USERNAME_ANNOTATION: username, SERVER_ANNOTATION: server_name}


def selector_labels(username: str | None = None) -> dict[str, str]:
    labels = {**MANAGED_BY, **COMPONENT}
    if username is not None:
        labels[f"{LABEL_PREFIX}/user"] = label_value(username)
    return labels


def _home_claim(claim: dict[str, Any], plan: LaunchPlan, settings: PodSettings) -> dict[str, Any]:
    """The project's labels on a home claim (found by operators, never counted as a server)."""
    meta = dict(claim.get("metadata") or {})
    meta["labels"] = {
        **settings.extra_labels,
        **(meta.get("labels") or {}),
        **MANAGED_BY,
        **HOME_COMPONENT,
        f"{LABEL_PREFIX}/user": label_value(plan.username),
    }
    meta["annotations"] = {**(meta.get("annotations") or {}), USERNAME_ANNOTATION: plan.username}
    return {**claim, "metadata": meta}


def _resources(plan: LaunchPlan) -> dict[str, dict[str, str]]:
    requests = {"cpu": format_cpu(plan.cpu_millis), "memory": format_memory(plan.memory_bytes)}
    limits: dict[str, str] = {}
    if plan.cpu_limit_millis is not None:
        limits["cpu"] = format_cpu(plan.cpu_limit_millis)
    if plan.memory_limit_bytes is not None:
        limits["memory"] = format_memory(plan.memory_limit_bytes)
    if plan.gpu is not None:  # extended resources: limits must equal requests
        requests[plan.gpu.resource] = limits[plan.gpu.resource] = str(plan.gpu.count)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def reservation_annotation(plan: LaunchPlan) -> str:
    usage = plan_usage(plan)
    return json.dumps(
        {
            "vo": plan.vo,
            "cpu": usage.cpu_millis,
            "memory": usage.memory_bytes,
            "gpus": dict(usage.gpus),
        },
        sort_keys=True,
    )


def reservation_from_pod(pod: Mapping[str, Any]) -> Reservation | None:
    """Rebuild a reservation from a pod we created (hub restart); ``None`` if not ours."""
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    try:
        data = json.loads(ann[RESERVATION_ANNOTATION])
        gpus = {str(k): int(v) for k, v in (data.get("gpus") or {}).items()}
        usage = Usage(int(data["cpu"]), int(data["memory"]), 1, gpus)
        vo = data.get("vo")
        return Reservation(
            str(ann[USERNAME_ANNOTATION]),
            str(ann.get(SERVER_ANNOTATION, "")),
            str(vo) if vo is not None else None,
            usage,
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def server_namespace(plan: LaunchPlan, default: str) -> str:
    """The plan's VO namespace, else the backend's ``default``."""
    return plan.namespace or default


def _security_context(plan: LaunchPlan) -> dict[str, Any]:
    ident = plan.identity
    ctx: dict[str, Any] = {
        "runAsUser": ident.uid,
        "runAsGroup": ident.gid,
        "fsGroup": ident.gid,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    if ident.supplemental_gids:
        ctx["supplementalGroups"] = list(ident.supplemental_gids)
    if not plan.allow_root:
        ctx["runAsNonRoot"] = True
    return ctx


def _volume_type(name: str) -> type[VolumeType]:
    try:
        return volume_types().load(name)
    except PluginError as exc:  # validated at load; a plugin uninstalled since then
        raise ValueError(str(exc)) from exc


def _labels(plan: LaunchPlan, settings: PodSettings) -> dict[str, str]:
    labels = {
        **settings.extra_labels,
        **selector_labels(plan.username),
        f"{LABEL_PREFIX}/flavor": plan.flavor,
        f"{LABEL_PREFIX}/server": label_value(plan.server_name) or "default",
    }
    if plan.vo:
        labels[f"{LABEL_PREFIX}/vo"] = plan.vo
    if plan.gpu:
        labels[f"{LABEL_PREFIX}/gpu-class"] = label_value(plan.gpu.gpu_class)
    return labels


def _container(
    plan: LaunchPlan, settings: PodSettings, secret_name: str, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    """The notebook container: ``plan.env`` in the spec, the hub's secrets via ``envFrom``."""
    return {
        "name": CONTAINER,
        "image": plan.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.cmd),
        "args": list(settings.args),
        "ports": [{"name": "notebook", "containerPort": settings.port}],
        "env": [{"name": k, "value": v} for k, v in sorted(plan.env.items())],
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": _resources(plan),
        "volumeMounts": mounts,
    }


def _placement(gpu: GPURequest | None) -> dict[str, Any]:
    """nodeSelector and tolerations of the GPU class (nothing for CPU servers)."""
    if gpu is None:
        return {}
    out: dict[str, Any] = {}
    if gpu.selector:
        out["nodeSelector"] = dict(gpu.selector)
    if gpu.tolerations:
        out["tolerations"] = [
            {
                k: v
                for k, v in {
                    "key": t.key,
                    "operator": t.operator,
                    "value": t.value,
                    "effect": t.effect,
                }.items()
                if v is not None
            }
            for t in gpu.tolerations
        ]
    return out


def _mount_token(spec: dict[str, Any], container: dict[str, Any], secret_name: str) -> None:
    """Mount the token Secret read-only and name the file in ``$BEARER_TOKEN_FILE``."""
    spec["volumes"].append(
        {
            "name": "af-token",
            "secret": {
                "secretName": secret_name,
                "defaultMode": 0o440,
                "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
            },
        }
    )
    container["volumeMounts"].append({"name": "af-token", "mountPath": TOKEN_DIR, "readOnly": True})
    container["env"].append({"name": "BEARER_TOKEN_FILE", "value": f"{TOKEN_DIR}/{TOKEN_KEY}"})


def _mount_krb5(spec: dict[str, Any], container: dict[str, Any], secret_name: str) -> None:
    """Mount the credential cache read-only (0440, group fsGroup) and name it in KRB5CCNAME."""
    spec["volumes"].append(
        {
            "name": "af-krb5",
            "secret": {
                "secretName": secret_name,
                "defaultMode": 0o440,
                "items": [{"key": KRB5_KEY, "path": KRB5_KEY}],
            },
        }
    )
    container["volumeMounts"].append({"name": "af-krb5", "mountPath": KRB5_DIR, "readOnly": True})
    container["env"].append({"name": "KRB5CCNAME", "value": f"FILE:{KRB5_DIR}/{KRB5_KEY}"})


def _mount_services(spec: dict[str, Any], container: dict[str, Any], secret_name: str) -> None:
    """Mount the service tokens read-only as a directory (every key a file; keys added or
    removed later appear or vanish with the kubelet's sync) named by ``$AF_TOKENS_DIR``."""
    volume = {"secretName": secret_name, "defaultMode": 0o440}
    spec["volumes"].append({"name": "af-services", "secret": volume})
    mount = {"name": "af-services", "mountPath": SERVICES_DIR, "readOnly": True}
    container["volumeMounts"].append(mount)
    container["env"].append({"name": "AF_TOKENS_DIR", "value": SERVICES_DIR})


def make_objects(
    plan: LaunchPlan,
    settings: PodSettings,
    bearer_token: str | None = None,
    krb5_ccache: bytes | None = None,
    service_tokens: Mapping[str, str] | None = None,
) -> Objects:
    """The Secrets, claims and Pod that run ``plan``.

    With ``bearer_token``, the server finds it at ``$BEARER_TOKEN_FILE`` (WLCG bearer token
    discovery), a read-only file from its own Secret, never in the pod spec.
    """
    name = pod_name(plan.username, plan.server_name)
    labels = _labels(plan, settings)
    ctx = RenderContext(settings.namespace, name, home_claim_name(plan.username))
    rendered = [_volume_type(v.type).render(v, ctx) for v in plan.volumes]
    container = _container(plan, settings, name, [r.mount for r in rendered])
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "OnFailure",
        "securityContext": _security_context(plan),
        "containers": [container],
        "volumes": [r.volume for r in rendered],
        **_placement(plan.gpu),
    }
    owner = server_annotations(plan.username, plan.server_name)
    token = None
    if bearer_token is not None:
        token = token_secret(
            token_secret_name(name), settings.namespace, labels, bearer_token, owner
        )
        _mount_token(spec, container, token_secret_name(name))
    krb5 = None
    if krb5_ccache is not None:
        krb5 = krb5_secret(krb5_secret_name(name), settings.namespace, labels, krb5_ccache, owner)
        _mount_krb5(spec, container, krb5_secret_name(name))
    services = None
    if service_tokens is not None:
        services = services_secret(
            services_secret_name(name), settings.namespace, labels, service_tokens, owner
        )
        _mount_services(spec, container, services_secret_name(name))
    meta = {"name": name, "namespace": settings.namespace, "labels": labels}
    annotations = {**owner, RESERVATION_ANNOTATION: reservation_annotation(plan)}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**meta, "annotations": annotations},
        "spec": spec,
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {**meta, "annotations": dict(owner)},
        "stringData": dict(settings.hub_env),
    }
    claims = tuple(_home_claim(c, plan, settings) for r in rendered for c in r.claims)
    return Objects(pod, secret, claims, token, krb5, services)
