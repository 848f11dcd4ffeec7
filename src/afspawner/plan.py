"""LaunchPlan: everything a backend needs to start one server, as plain frozen data.

``policy.resolve`` produces it from the facility, the user and their options; backends
(Kubernetes, local) turn it into processes or manifests without making policy decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from afspawner.facility import Toleration


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class UserIdentity:
    """The POSIX identity a server runs as."""

    username: str
    uid: int
    gid: int
    supplemental_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GPURequest:
    gpu_class: str
    resource: str
    count: int
    selector: Mapping[str, str] = field(default_factory=_empty)
    tolerations: tuple[Toleration, ...] = ()
    display: str = ""  # the class's name for people ("NVIDIA T4")

    @property
    def label(self) -> str:
        return self.display or self.gpu_class


@dataclass(frozen=True)
class VolumeMount:
    """A resolved volume: its plugin type, the path inside the server and type options."""

    name: str
    type: str
    mount: str
    read_only: bool
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LaunchPlan:
    """What to run, decided by policy; backends add only their own mechanics.

    ``env`` is the server's complete environment from policy (flavor variables, the identity
    as ``NB_*``, the image as ``JUPYTER_IMAGE_SPEC``/``JUPYTER_IMAGE``, ``AF_FLAVOR``/``AF_VO``);
    every backend passes it unchanged and it wins over the hub's own ``JUPYTERHUB_*`` variables.
    ``namespace`` is the VO's own namespace (``None``: the backend's default). ``allow_root``
    says the site allows uid/gid 0. The local backend runs no container and ignores ``image``.
    """

    username: str
    server_name: str  # "" for the default server
    vo: str | None
    flavor: str
    image: str  # the flavor's image, a preset, or a user's allowed choice (canonical form)
    cpu_millis: int
    memory_bytes: int
    cpu_limit_millis: int | None
    memory_limit_bytes: int | None
    identity: UserIdentity
    gpu: GPURequest | None = None
    volumes: tuple[VolumeMount, ...] = ()
    env: Mapping[str, str] = field(default_factory=_empty)
    namespace: str | None = None
    allow_root: bool = False
