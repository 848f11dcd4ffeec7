"""Volume types shipped with jupyterhub-af: CVMFS, CephFS, EOS, home PVC, host paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from afcore.options import Option
from afcore.quantity import format_memory, memory_bytes
from afcore.templates import PATH_FIELDS, template_problem
from afspawner.plan import VolumeMount
from afspawner.volumes.base import RenderContext, Rendered, VolumeType

HOST_TO_CONTAINER = "HostToContainer"


def _mount(volume: VolumeMount, **extra: object) -> dict[str, object]:
    return {
        "name": f"vol-{volume.name}",
        "mountPath": volume.mount,
        "readOnly": volume.read_only,
        **extra,
    }


def _host_path(volume: VolumeMount, path: str, propagation: str | None) -> Rendered:
    extra = {"mountPropagation": propagation} if propagation and propagation != "None" else {}
    return Rendered(
        volume={"name": f"vol-{volume.name}", "hostPath": {"path": path, "type": "Directory"}},
        mount=_mount(volume, **extra),
    )


def _claim(volume: VolumeMount, claim: str, read_only: bool, **extra: object) -> Rendered:
    return Rendered(
        volume={
            "name": f"vol-{volume.name}",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
        },
        mount=_mount(volume, **extra),
    )


class CVMFS(VolumeType):
    name = "cvmfs"
    description = "CernVM-FS, through the cvmfs-csi driver or the node's /cvmfs (read-only)"
    forced_read_only = True
    options: ClassVar[Mapping[str, Option]] = {
        "mode": Option("enum", choices=("hostpath", "csi"), help="default hostpath"),
        "host_path": Option("path", help="node path for mode hostpath; default /cvmfs"),
        "claim": Option("str", help="ReadOnlyMany PVC of cvmfs.csi.cern.ch for mode csi"),
    }

    @classmethod
    def check_combination(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        if options.get("mode") == "csi" and "claim" not in options:
            return [("claim", "required when mode is csi (a PVC bound to cvmfs.csi.cern.ch)")]
        if options.get("mode", "hostpath") == "hostpath" and "claim" in options:
            return [("claim", "only used with mode: csi")]
        return []

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        # autofs-style repositories appear after the pod starts: propagate host mounts
        if volume.options.get("mode") == "csi":
            return _claim(
                volume, str(volume.options["claim"]), True, mountPropagation=HOST_TO_CONTAINER
            )
        return _host_path(volume, str(volume.options.get("host_path", "/cvmfs")), HOST_TO_CONTAINER)


class CephFS(VolumeType):
    name = "cephfs"
    description = "CephFS area as a sub-path of one static claim (cephfs.csi.ceph.com)"
    options: ClassVar[Mapping[str, Option]] = {
        "claim": Option("str", required=True, help="the static PVC holding the file system"),
        "sub_path": Option("str", help="path inside the claim; may use {username}, {vo}"),
    }

    @classmethod
    def check_combination(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        sub = options.get("sub_path")
        if isinstance(sub, str) and sub:
            if sub.startswith("/") or ".." in sub.split("/"):
                return [("sub_path", f"must be relative and stay inside the claim; got '{sub}'")]
            problem = template_problem(sub, PATH_FIELDS)
            if problem:
                return [("sub_path", problem)]
        return []

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        sub = volume.options.get("sub_path")
        extra = {"subPath": sub} if isinstance(sub, str) and sub else {}
        return _claim(volume, str(volume.options["claim"]), volume.read_only, **extra)


class EOS(VolumeType):
    name = "eos"
    description = "EOS through the node's FUSE mount (hostPath, HostToContainer)"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", help="node path of the EOS mount; default /var/eos")
    }

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        path = str(volume.options.get("host_path", "/var/eos"))
        return _host_path(volume, path, HOST_TO_CONTAINER)


class Home(VolumeType):
    name = "home"
    description = "a per-user persistent volume claim"
    options: ClassVar[Mapping[str, Option]] = {
        "storage_class": Option("str", help="StorageClass of the claim; default the cluster's"),
        "size": Option("quantity", help="size of the claim; default 10Gi"),
        "access_mode": Option(
            "enum",
            choices=("ReadWriteOnce", "ReadWriteMany"),
            help="ReadWriteOnce (default: one node at a time) or ReadWriteMany (NFS/CephFS "
            "classes, for several servers of a user on different nodes)",
        ),
    }

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        size = format_memory(memory_bytes(volume.options.get("size", "10Gi")))
        spec: dict[str, object] = {
            "accessModes": [str(volume.options.get("access_mode", "ReadWriteOnce"))],
            "resources": {"requests": {"storage": size}},
        }
        if "storage_class" in volume.options:
            spec["storageClassName"] = volume.options["storage_class"]
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": ctx.home_claim, "namespace": ctx.namespace},
            "spec": spec,
        }
        rendered = _claim(volume, ctx.home_claim, volume.read_only)
        return Rendered(rendered.volume, rendered.mount, (claim,))


class HostPath(VolumeType):
    name = "hostpath"
    description = "any node path (scratch disks, site file systems)"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", required=True),
        "propagation": Option("enum", choices=("None", "HostToContainer")),
    }

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        propagation = volume.options.get("propagation")
        return _host_path(
            volume,
            str(volume.options["host_path"]),
            propagation if isinstance(propagation, str) else None,
        )
