"""``scratch``: a node-local fast disk (e.g. NVMe at /scratch on Purdue-like nodes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from afspawner.volumes import Option, VolumeType


class Scratch(VolumeType):
    name = "scratch"
    description = "node-local scratch disk, wiped when the server stops"
    options: ClassVar[Mapping[str, Option]] = {
        "host_path": Option("path", required=True, help="node directory holding scratch areas"),
        "size": Option("quantity", help="size limit of the area"),
    }
