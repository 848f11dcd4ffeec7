"""Volume types shipped with jupyterhub-af: CVMFS, CephFS, EOS, home PVC, host paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from afspawner.volumes.base import Option, VolumeType


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


class CephFS(VolumeType):
    name = "cephfs"
    description = "CephFS area as a sub-path of one static claim (cephfs.csi.ceph.com)"
    options: ClassVar[Mapping[str, Option]] = {
        "claim": Option("str", required=True, help="the static PVC holding the file system"),
        "sub_path": Option("str", help="path inside the claim; may use {username}, {vo}"),
    }

    @classmethod
    def check_combination(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        from afspawner.volumes.base import template_problem

        sub = options.get("sub_path")
        if isinstance(sub, str) and sub:
            if sub.startswith("/") or ".." in sub.split("/"):
                return [("sub_path", f"must be relative and stay inside the claim; got '{sub}'")]
            problem = template_problem(sub)
            if problem:
                return [("sub_path", problem)]
        return []


class EOS(VolumeType):
    name = "eos"
    description = "EOS through the node's FUSE mount (hostPath, HostToContainer)"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", help="node path of the EOS mount; default /var/eos")
    }


class Home(VolumeType):
    name = "home"
    description = "a per-user persistent volume claim"
    options: ClassVar[Mapping[str, Option]] = {
        "storage_class": Option("str", help="StorageClass of the claim; default the cluster's"),
        "size": Option("quantity", help="size of the claim; default 10Gi"),
    }


class HostPath(VolumeType):
    name = "hostpath"
    description = "any node path (scratch disks, site file systems)"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", required=True),
        "propagation": Option("enum", choices=("None", "HostToContainer")),
    }
