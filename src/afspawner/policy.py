"""Pure spawn policy: which flavors a user may start and what exactly to launch.

``resolve`` takes the facility, who the user is and the options they sent (form or REST API)
and returns a :class:`~afspawner.plan.LaunchPlan`, or raises :class:`Refusal` with a message
for the user. It does no I/O; quotas are checked afterwards by :mod:`afspawner.quota`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from afspawner.facility import Facility, Flavor
from afspawner.images import OTHER, ImageError, parse_reference, reference_or_none
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity, VolumeMount
from afspawner.volumes.paths import render_template

OPTION_KEYS = ("flavor", "vo", "gpus", "image")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class Refusal(Exception):
    """The spawn is refused; ``message`` is for the user, ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class UserContext:
    """Who is spawning, as the spawner learned it from the hub and the auth_state."""

    name: str
    groups: frozenset[str] = frozenset()
    vos: tuple[str, ...] = ()
    admin: bool = False


@dataclass(frozen=True)
class SpawnOptions:
    flavor: str | None = None
    vo: str | None = None
    gpus: int | None = None
    image: str | None = None  # a well-formed image reference; whether it is allowed: resolve


@dataclass(frozen=True)
class PolicySettings:
    """Site-wide knobs of the policy (set by AFSpawner traits)."""

    allow_root: bool = False


def _first(value: object) -> object:
    """Form posts arrive as lists of strings; the REST API sends plain JSON values."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def parse_options(raw: Mapping[str, object] | None) -> SpawnOptions:
    """Validate untrusted ``user_options``; unknown keys and wrong types are refused (400)."""
    if raw is None:
        return SpawnOptions()
    if not isinstance(raw, Mapping):
        raise Refusal("server options must be a JSON object", 400)
    unknown = sorted(str(k)[:40] for k in raw if k not in OPTION_KEYS)
    if unknown:
        raise Refusal(
            f"unknown server option(s) {', '.join(repr(u) for u in unknown)}; "
            f"allowed: {', '.join(OPTION_KEYS)}",
            400,
        )
    flavor, vo, gpus, image = (_first(raw.get(k)) for k in OPTION_KEYS)
    for key, value in (("flavor", flavor), ("vo", vo)):
        if value is not None and (not isinstance(value, str) or not _NAME.match(value)):
            raise Refusal(f"option '{key}' must be a flavor/VO name, got {str(value)[:40]!r}", 400)
    count: int | None = None
    if gpus is not None and gpus != "":
        if isinstance(gpus, str) and gpus.isdigit() and len(gpus) <= 3:
            count = int(gpus)
        elif isinstance(gpus, int) and not isinstance(gpus, bool):
            count = gpus
        else:
            raise Refusal(f"option 'gpus' must be a whole number, got {str(gpus)[:40]!r}", 400)
        if count < 1:
            raise Refusal("option 'gpus' must be at least 1", 400)
    if image == "":
        image = None  # the form's empty "Other..." box when a preset is picked
    if image == OTHER:
        raise Refusal("you picked 'Other...' for the image but typed no image reference", 400)
    if image is not None:
        try:
            parse_reference(image)
        except ImageError as exc:
            raise Refusal(f"option 'image' is not a valid image reference: {exc}", 400) from None
    return SpawnOptions(
        flavor=flavor if isinstance(flavor, str) else None,
        vo=vo if isinstance(vo, str) else None,
        gpus=count,
        image=image if isinstance(image, str) else None,
    )


def _denial(fac: Facility, user: UserContext, flavor: Flavor) -> str | None:
    """Why ``user`` may not start ``flavor`` (``None`` when allowed)."""
    if flavor.vos and not set(flavor.vos) & set(user.vos):
        return (
            f"flavor '{flavor.name}' is for members of {', '.join(flavor.vos)}; "
            f"your VOs: {', '.join(user.vos) or 'none'}"
        )
    missing = [g for g in flavor.groups if g not in user.groups]
    if missing:
        return f"flavor '{flavor.name}' requires membership of group {', '.join(missing)}"
    if flavor.gpu is not None:
        gclass = fac.gpu_classes[flavor.gpu.gpu_class]
        if gclass.groups and not set(gclass.groups) & user.groups:
            return (
                f"{gclass.display} GPUs require approval (group "
                f"{' or '.join(gclass.groups)}); ask your facility's support to be added"
            )
    return None


def offered_flavors(fac: Facility, user: UserContext) -> tuple[Flavor, ...]:
    """The flavors ``user`` may start, in facility order."""
    return tuple(f for f in fac.flavors if _denial(fac, user, f) is None)


def _pick_flavor(fac: Facility, user: UserContext, name: str | None) -> Flavor:
    offered = offered_flavors(fac, user)
    if name is None:
        if not offered:
            raise Refusal(
                "no environment is available to you; your VOs: "
                f"{', '.join(user.vos) or 'none'}. Ask your facility to add you to an experiment"
            )
        return next((f for f in offered if f.default), offered[0])
    flavor = fac.flavor(name)
    if flavor is None:
        raise Refusal(f"unknown flavor '{name}'", 400)
    denial = _denial(fac, user, flavor)
    if denial is not None:
        raise Refusal(denial)
    return flavor


def _pick_vo(flavor: Flavor, user: UserContext, requested: str | None) -> str | None:
    candidates = [v for v in user.vos if not flavor.vos or v in flavor.vos]
    if requested is not None:
        if requested not in candidates:
            raise Refusal(
                f"you cannot charge flavor '{flavor.name}' to VO '{requested}'; "
                f"possible: {', '.join(candidates) or 'none'}"
            )
        return requested
    return candidates[0] if candidates else None


def _gpu(fac: Facility, flavor: Flavor, vo: str | None, asked: int | None) -> GPURequest | None:
    if flavor.gpu is None:
        if asked is not None:
            raise Refusal(f"flavor '{flavor.name}' has no GPU; do not send option 'gpus'", 400)
        return None
    gclass = fac.gpu_classes[flavor.gpu.gpu_class]
    count = asked if asked is not None else flavor.gpu.count
    caps = [c for c in (gclass.max_per_user,) if c is not None]
    if vo is not None and vo in fac.vos and gclass.name in fac.vos[vo].per_user.gpus:
        caps.append(fac.vos[vo].per_user.gpus[gclass.name])
    if caps and count > min(caps):
        raise Refusal(f"at most {min(caps)} {gclass.display} GPU(s) per server; you asked {count}")
    return GPURequest(
        gpu_class=gclass.name,
        resource=gclass.resource,
        count=count,
        selector=gclass.selector,
        tolerations=gclass.tolerations,
        display=gclass.display,
    )


def _image(flavor: Flavor, asked: str | None) -> str:
    """The image to run: the flavor's, a preset, or an allowed typed one (else Refusal)."""
    if asked is None or asked == flavor.image:
        return flavor.image
    ref = reference_or_none(asked)
    if ref is None:  # parse_options refuses these first; SpawnOptions may be built directly
        raise Refusal(f"option 'image' is not a valid image reference: {str(asked)[:80]!r}", 400)
    choice = flavor.image_choice
    if choice is None:
        if reference_or_none(flavor.image) == ref:
            return flavor.image
        raise Refusal(
            f"flavor '{flavor.name}' does not let you choose an image (it runs "
            f"{flavor.image}); do not send option 'image'",
            400,
        )
    try:
        return choice.check(asked)
    except ImageError as exc:
        raise Refusal(f"{exc} (flavor '{flavor.name}')") from None


def server_env(
    flavor: Flavor, identity: UserIdentity, vo: str | None, image: str | None = None
) -> dict[str, str]:
    """The server's environment: the flavor's variables, then the identity and AF_* facts,
    and the image it runs as ``JUPYTER_IMAGE_SPEC`` (and ``JUPYTER_IMAGE``, as KubeSpawner)."""
    image = image or flavor.image
    return {
        **flavor.env,
        "NB_USER": identity.username,
        "NB_UID": str(identity.uid),
        "NB_GID": str(identity.gid),
        "JUPYTER_IMAGE_SPEC": image,
        "JUPYTER_IMAGE": image,
        "AF_FLAVOR": flavor.name,
        **({"AF_VO": vo} if vo else {}),
    }


def _volumes(fac: Facility, flavor: Flavor, values: Mapping[str, str]) -> tuple[VolumeMount, ...]:
    return tuple(
        VolumeMount(
            name=v.name,
            type=v.type,
            mount=render_template(v.mount, values),
            read_only=v.read_only,
            options={
                k: render_template(o, values) if k == "sub_path" and isinstance(o, str) else o
                for k, o in v.options.items()
            },
        )
        for v in (fac.volumes[name] for name in flavor.volumes)
    )


def resolve(
    fac: Facility,
    user: UserContext,
    options: SpawnOptions,
    identity: UserIdentity,
    server_name: str = "",
    settings: PolicySettings | None = None,
) -> LaunchPlan:
    """Decide exactly what to launch for ``user``, or raise :class:`Refusal`."""
    settings = settings or PolicySettings()
    if (identity.uid == 0 or identity.gid == 0) and not settings.allow_root:
        raise Refusal("refusing to run a server as uid/gid 0; the site does not allow root")
    flavor = _pick_flavor(fac, user, options.flavor)
    vo = _pick_vo(flavor, user, options.vo)
    gpu = _gpu(fac, flavor, vo, options.gpus)
    image = _image(flavor, options.image)
    values = {
        "username": user.name,
        "vo": vo or "",
        "uid": str(identity.uid),
        "gid": str(identity.gid),
        "server_name": server_name,
    }
    return LaunchPlan(
        username=user.name,
        server_name=server_name,
        vo=vo,
        flavor=flavor.name,
        image=image,
        cpu_millis=flavor.cpu_millis,
        memory_bytes=flavor.memory_bytes,
        cpu_limit_millis=flavor.cpu_limit_millis,
        memory_limit_bytes=flavor.memory_limit_bytes,
        identity=identity,
        gpu=gpu,
        volumes=_volumes(fac, flavor, values),
        env=MappingProxyType(server_env(flavor, identity, vo, image)),
        namespace=fac.vos[vo].namespace if vo is not None and vo in fac.vos else None,
        allow_root=settings.allow_root,
    )
