"""``scratch``: a node-local fast disk (e.g. NVMe at /scratch on Purdue-like nodes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from afspawner.plan import VolumeMount
from afspawner.volumes import Option, RenderContext, Rendered, VolumeType


class Scratch(VolumeType):
    name = "scratch"
    description = "node-local scratch disk, wiped when the server stops"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", required=True, help="node directory holding scratch areas"),
        "size": Option("quantity", help="size limit of the area"),
    }

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        # one directory per server under the node's scratch area
        path = f"{volume.options['host_path']}/{ctx.pod_name}"
        return Rendered(
            volume={
                "name": f"vol-{volume.name}",
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            },
            mount={"name": f"vol-{volume.name}", "mountPath": volume.mount, "readOnly": False},
        )
