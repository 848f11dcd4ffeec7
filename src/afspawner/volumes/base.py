"""The volume-type plugin interface (entry-point group ``afspawner.volumes``).

A volume type declares its options (:class:`afcore.options.Option`); the facility loader
validates each ``volumes`` entry against them, so a typo in a site file is reported at hub
start with its key path. Path options of kind ``template-path`` may use the placeholders of
:data:`afcore.templates.PATH_FIELDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from afcore.options import Option, check_options
from afspawner.plan import VolumeMount


class VolumeType:
    """Base class of volume-type plugins (entry-point group ``afspawner.volumes``).

    Subclasses set ``options`` and implement :meth:`render` (the Kubernetes volume and mount);
    ``forced_read_only`` types (CVMFS) are always mounted read-only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    forced_read_only: ClassVar[bool] = False

    @classmethod
    def validate(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        """Problems as ``(option key, message)``; empty when ``options`` are valid."""
        problems = check_options(cls.options, options, f"a {cls.name} volume")
        problems.extend(cls.check_combination(options))
        return problems

    @classmethod
    def check_combination(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        """Cross-option rules; override in subclasses."""
        return []

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        """Kubernetes volume + mount for ``volume``; every type used on Kubernetes overrides it."""
        raise NotImplementedError(f"volume type '{cls.name}' cannot be used on Kubernetes")


@dataclass(frozen=True)
class RenderContext:
    """What a volume type may use to render: object names of this server."""

    namespace: str
    pod_name: str
    home_claim: str


@dataclass(frozen=True)
class Rendered:
    """Pod volume and container mount (plain Kubernetes JSON), plus claims to ensure."""

    volume: dict[str, Any]
    mount: dict[str, Any]
    claims: tuple[dict[str, Any], ...] = ()
