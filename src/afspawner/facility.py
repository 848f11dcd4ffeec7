"""The facility model: VOs, quotas, GPU classes, volumes and flavors, as frozen data.

Instances are produced by :func:`afspawner.loader.load_facility`, which validates a YAML
file or a plain dict and reports every problem with the path of the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

from afspawner.images import ImageChoice

K = TypeVar("K")
V = TypeVar("V")

GPUSharing = Literal["whole", "mig", "time-sliced"]


def frozen_map(data: Mapping[K, V] | None = None) -> Mapping[K, V]:
    """A read-only view of a copy of ``data``; used for every mapping held by frozen data."""
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Resources:
    """An amount of schedulable resources; every field is optional (``None`` = no limit)."""

    cpu_millis: int | None = None
    memory_bytes: int | None = None
    servers: int | None = None
    gpus: Mapping[str, int] = field(default_factory=lambda: frozen_map({}))  # GPU class → units


@dataclass(frozen=True)
class VO:
    """A virtual organisation (experiment) with its totals and per-user caps."""

    name: str
    display: str
    namespace: str | None
    quota: Resources
    per_user: Resources


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


@dataclass(frozen=True)
class IdleLimits:
    """Idle and lifetime limits declared at one level (facility, GPU class or flavor).

    Seconds; ``None``: not set at this level (the less specific level decides);
    ``math.inf``: explicitly no limit (``never`` in the file). See :mod:`afspawner.culling`.
    """

    timeout: float | None = None  # stop after this long without activity
    max_age: float | None = None  # stop this long after the start, active or not

    @property
    def empty(self) -> bool:
        return self.timeout is None and self.max_age is None


@dataclass(frozen=True)
class GPUClass:
    """A kind of GPU a user may ask for: whole devices, a MIG profile, or a time-sliced share."""

    name: str
    display: str
    resource: str  # e.g. nvidia.com/gpu, nvidia.com/mig-3g.20gb, nvidia.com/gpu.shared
    sharing: GPUSharing
    selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    max_per_user: int | None
    groups: tuple[str, ...]  # empty = every user of a VO whose flavor offers the class
    idle: IdleLimits = field(default_factory=IdleLimits)


@dataclass(frozen=True)
class Volume:
    """A volume declared by the site; ``options`` are validated by its type's plugin."""

    name: str
    type: str
    mount: str
    read_only: bool
    options: Mapping[str, object]


@dataclass(frozen=True)
class FlavorGPU:
    gpu_class: str
    count: int


@dataclass(frozen=True)
class DaskSize:
    """CPU, memory (and GPUs) of one Dask worker (a named size) or of the scheduler."""

    name: str
    cpu_millis: int
    memory_bytes: int
    gpu: FlavorGPU | None = None  # per worker; never for the scheduler


@dataclass(frozen=True)
class DaskSpec:
    """What a flavor lets its users run as Dask clusters (``flavors[].dask``; docs/dask.md)."""

    image: str  # the flavor's image unless the block names one
    scheduler: DaskSize
    worker_sizes: tuple[DaskSize, ...]  # the first is the default
    max_workers: int | None  # per cluster
    max_cores_millis: int | None  # workers' CPU per cluster


@dataclass(frozen=True)
class Flavor:
    """An environment a user can pick ("CMS EL9 interactive", "ML GPU T4")."""

    name: str
    display: str
    description: str
    image: str
    cpu_millis: int
    memory_bytes: int
    cpu_limit_millis: int | None
    memory_limit_bytes: int | None
    vos: tuple[str, ...]  # empty = open to every authenticated user
    groups: tuple[str, ...]  # empty = no group restriction beyond the VOs
    gpu: FlavorGPU | None
    volumes: tuple[str, ...]
    env: Mapping[str, str]
    default: bool
    idle: IdleLimits = field(default_factory=IdleLimits)
    image_choice: ImageChoice | None = None  # None: the flavor's image only
    dask: DaskSpec | None = None  # None: no Dask clusters with this flavor


@dataclass(frozen=True)
class Facility:
    """Everything a site declares, validated and cross-referenced."""

    name: str
    vos: Mapping[str, VO]
    gpu_classes: Mapping[str, GPUClass]
    volumes: Mapping[str, Volume]
    flavors: tuple[Flavor, ...]
    idle: IdleLimits = field(default_factory=IdleLimits)  # the facility's default limits

    def flavor(self, name: str) -> Flavor | None:
        return next((f for f in self.flavors if f.name == name), None)

    def flavors_for_vo(self, vo: str) -> tuple[Flavor, ...]:
        return tuple(f for f in self.flavors if not f.vos or vo in f.vos)
