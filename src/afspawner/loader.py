"""Load and validate a facility file (YAML or dict) into :class:`~afspawner.facility.Facility`.

Every problem is collected, not just the first, and each names the path of its key, e.g.
``flavors[3].gpu.class: unknown GPU class 'v100'; defined: a100-3g.20gb, t4``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import yaml

from afcore.issues import Checker, ConfigError, ConfigIssue, join_path, kind
from afcore.quantity import cpu_millis, memory_bytes
from afcore.registry import PluginError
from afcore.templates import PATH_FIELDS, template_problem
from afspawner.culling import idle_limits
from afspawner.daskspec import load_dask
from afspawner.facility import (
    VO,
    Facility,
    Flavor,
    FlavorGPU,
    GPUClass,
    GPUSharing,
    IdleLimits,
    Resources,
    Toleration,
    Volume,
    frozen_map,
)
from afspawner.images import image_problem, load_image_choice
from afspawner.references import cross_check
from afspawner.volumes import VolumeType, volume_types

T = TypeVar("T")

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
GPU_CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
EXTENDED_RESOURCE = re.compile(
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FILE_BYTES = 1 << 20


class FacilityError(ConfigError):
    """The facility file is invalid; ``issues`` lists every problem, ``source`` names the file."""

    def __init__(self, issues: list[ConfigIssue], source: str = "facility") -> None:
        super().__init__(issues, source)


def _resources(c: Checker, raw: object, path: str) -> Resources:
    data = c.mapping(raw, path, {"cpu", "memory", "servers", "gpus"})
    if data is None:
        return Resources()
    gpus: dict[str, int] = {}
    if "gpus" in data:
        gmap = c.mapping(
            data["gpus"],
            f"{path}.gpus",
            set(data["gpus"]) if isinstance(data["gpus"], Mapping) else set(),
        )
        for name, n in (gmap or {}).items():
            counted = c.count(n, join_path(f"{path}.gpus", name))
            if counted is not None:
                gpus[name] = counted
    return Resources(
        cpu_millis=c.quantity(data["cpu"], f"{path}.cpu", cpu_millis) if "cpu" in data else None,
        memory_bytes=(
            c.quantity(data["memory"], f"{path}.memory", memory_bytes) if "memory" in data else None
        ),
        servers=c.count(data["servers"], f"{path}.servers") if "servers" in data else None,
        gpus=frozen_map(gpus),
    )


def _vo(c: Checker, name: str, raw: object, path: str) -> VO:
    c.string(name, path, DNS_LABEL, "VO name (lower-case letters, digits and '-')")
    data = c.mapping(raw, path, {"display", "namespace", "quota", "per_user"}) or {}
    namespace = None
    if "namespace" in data:
        namespace = c.string(data["namespace"], f"{path}.namespace", DNS_LABEL, "namespace name")
    return VO(
        name=name,
        display=_display(c, data, path, name),
        namespace=namespace,
        quota=_resources(c, data.get("quota", {}), f"{path}.quota"),
        per_user=_resources(c, data.get("per_user", {}), f"{path}.per_user"),
    )


def _toleration(c: Checker, raw: object, path: str) -> Toleration | None:
    data = c.mapping(raw, path, {"key", "operator", "value", "effect"}, {"key"})
    if data is None or "key" not in data:
        return None
    key = c.string(data["key"], f"{path}.key", LABEL_KEY, "taint key")
    operator = data.get("operator", "Exists" if "value" not in data else "Equal")
    if operator not in ("Equal", "Exists"):
        c.err(f"{path}.operator", f"must be Equal or Exists; got {operator!r}")
        return None
    effect = data.get("effect")
    if effect is not None and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        c.err(
            f"{path}.effect", f"must be NoSchedule, PreferNoSchedule or NoExecute; got {effect!r}"
        )
        return None
    value = (
        c.string(data["value"], f"{path}.value", LABEL_VALUE, "label value")
        if "value" in data
        else None
    )
    return Toleration(key=key or "", operator=operator, value=value, effect=effect) if key else None


def _gpu_sharing(resource: str) -> GPUSharing:
    if resource.startswith("nvidia.com/mig-"):
        return "mig"
    if resource.endswith(".shared"):
        return "time-sliced"
    return "whole"


def _selector(c: Checker, raw: object, path: str) -> dict[str, str]:
    selector: dict[str, str] = {}
    sel = c.mapping(raw, path, set(raw) if isinstance(raw, Mapping) else set())
    for key, value in (sel or {}).items():
        k = c.string(key, join_path(path, key), LABEL_KEY, "label key")
        v = value if isinstance(value, str) else None
        if v is None or not LABEL_VALUE.match(v):
            c.err(
                join_path(path, key), f"label value must be a string like 'Tesla-T4'; got {value!r}"
            )
        elif k:
            selector[k] = v
    return selector


def _tolerations(c: Checker, raw: object, path: str) -> tuple[Toleration, ...]:
    if not isinstance(raw, list):
        c.err(path, f"expected a list, got {kind(raw)}")
        return ()
    return tuple(t for i, x in enumerate(raw) if (t := _toleration(c, x, f"{path}[{i}]")))


def _sharing(c: Checker, data: Mapping[str, object], resource: str, path: str) -> GPUSharing:
    if "sharing" not in data:
        return _gpu_sharing(resource)
    if data["sharing"] not in ("whole", "mig", "time-sliced"):
        c.err(f"{path}.sharing", f"must be whole, mig or time-sliced; got {data['sharing']!r}")
        return _gpu_sharing(resource)
    return data["sharing"]


_GPU_CLASS_KEYS = {
    "display",
    "resource",
    "selector",
    "tolerations",
    "max_per_user",
    "groups",
    "sharing",
    "idle",
}


def _gpu_class(c: Checker, name: str, raw: object, path: str) -> GPUClass:
    c.string(name, path, GPU_CLASS_NAME, "GPU class name (lower-case letters, digits, '-', '.')")
    data = c.mapping(raw, path, _GPU_CLASS_KEYS, {"resource"}) or {}
    resource = ""
    if "resource" in data:
        what = "extended resource name (e.g. nvidia.com/gpu)"
        resource = c.string(data["resource"], f"{path}.resource", EXTENDED_RESOURCE, what) or ""
    return GPUClass(
        name=name,
        display=_display(c, data, path, name),
        resource=resource,
        sharing=_sharing(c, data, resource, path),
        selector=frozen_map(_selector(c, data.get("selector", {}), f"{path}.selector")),
        tolerations=(
            _tolerations(c, data["tolerations"], f"{path}.tolerations")
            if "tolerations" in data
            else ()
        ),
        max_per_user=c.count(data["max_per_user"], f"{path}.max_per_user", 1)
        if "max_per_user" in data
        else None,
        groups=c.strings(data["groups"], f"{path}.groups") if "groups" in data else (),
        idle=idle_limits(c, data["idle"], f"{path}.idle") if "idle" in data else IdleLimits(),
    )


def _display(c: Checker, data: Mapping[str, object], path: str, name: str) -> str:
    """``display`` if given, else ``name``."""
    if "display" not in data:
        return name
    return c.string(data["display"], f"{path}.display") or name


def _volume(
    c: Checker, name: str, raw: object, path: str, types: Callable[[str], type[VolumeType] | str]
) -> Volume | None:
    c.string(name, path, DNS_LABEL, "volume name (lower-case letters, digits and '-')")
    if not isinstance(raw, Mapping):
        c.err(path, f"expected a mapping, got {kind(raw)}")
        return None
    if "type" not in raw:
        c.err(f"{path}.type", "required (e.g. cvmfs, cephfs, eos, home, hostpath)")
        return None
    if "mount" not in raw:
        c.err(f"{path}.mount", "required: the absolute path inside the server")
    vtype = c.string(raw["type"], f"{path}.type")
    if vtype is None:
        return None
    plugin = types(vtype)
    if isinstance(plugin, str):
        c.err(f"{path}.type", plugin)
        return None
    options = {k: v for k, v in raw.items() if k not in ("type", "mount", "read_only")}
    c.extend(path, plugin.validate(options))
    mount = raw.get("mount")
    if mount is not None:
        if not isinstance(mount, str) or not mount.startswith("/"):
            c.err(f"{path}.mount", f"must be an absolute path; got {mount!r}")
        elif (problem := template_problem(mount, PATH_FIELDS)) is not None:
            c.err(f"{path}.mount", problem)
    read_only = c.boolean(raw["read_only"], f"{path}.read_only") if "read_only" in raw else False
    return Volume(
        name=name,
        type=vtype,
        mount=mount if isinstance(mount, str) else "",
        read_only=read_only or plugin.forced_read_only,
        options=frozen_map(options),
    )


_FLAVOR_KEYS = {
    "name",
    "display",
    "description",
    "image",
    "cpu",
    "memory",
    "cpu_limit",
    "memory_limit",
    "vos",
    "groups",
    "gpu",
    "volumes",
    "env",
    "default",
    "idle",
    "image_choice",
    "dask",
}


def _optional_quantity(
    c: Checker, data: Mapping[str, object], key: str, path: str, parse: Callable[[object], int]
) -> int | None:
    return c.quantity(data[key], f"{path}.{key}", parse) if key in data else None


def _flavor_sizes(
    c: Checker, data: Mapping[str, object], path: str
) -> tuple[int | None, int | None, int | None, int | None]:
    """``cpu``, ``memory`` and their limits, checked against each other."""
    cpu = _optional_quantity(c, data, "cpu", path, cpu_millis)
    mem = _optional_quantity(c, data, "memory", path, memory_bytes)
    cpu_limit = _optional_quantity(c, data, "cpu_limit", path, cpu_millis)
    mem_limit = _optional_quantity(c, data, "memory_limit", path, memory_bytes)
    if cpu is not None and cpu_limit is not None and cpu_limit < cpu:
        c.err(f"{path}.cpu_limit", "must not be below cpu")
    if mem is not None and mem_limit is not None and mem_limit < mem:
        c.err(f"{path}.memory_limit", "must not be below memory")
    if cpu == 0:
        c.err(f"{path}.cpu", "must be more than 0")
    if mem == 0:
        c.err(f"{path}.memory", "must be more than 0")
    return cpu, mem, cpu_limit, mem_limit


def _flavor_gpu(c: Checker, raw: object, path: str) -> FlavorGPU | None:
    if raw is None:
        return None
    g = c.mapping(raw, path, {"class", "count"}, {"class"})
    if g is None or "class" not in g:
        return None
    gclass = c.string(g["class"], f"{path}.class")
    count = c.count(g.get("count", 1), f"{path}.count", 1)
    return FlavorGPU(gclass, count) if gclass and count else None


def _env(c: Checker, raw: object, path: str) -> dict[str, str]:
    env: dict[str, str] = {}
    e = c.mapping(raw, path, set(raw) if isinstance(raw, Mapping) else set())
    for key, value in (e or {}).items():
        if not ENV_NAME.match(key):
            c.err(join_path(path, key), "not a valid environment variable name")
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            c.err(join_path(path, key), f"value must be a string, got {kind(value)}")
        else:
            env[key] = str(value)
    return env


def _flavor(c: Checker, raw: object, path: str) -> Flavor | None:
    data = c.mapping(raw, path, _FLAVOR_KEYS, {"name", "image", "cpu", "memory"})
    if data is None:
        return None
    what = "flavor name (lower-case letters, digits and '-')"
    name = c.string(data["name"], f"{path}.name", DNS_LABEL, what) if "name" in data else None
    image = c.string(data["image"], f"{path}.image") if "image" in data else None
    if image is not None and (problem := image_problem(image)) is not None:
        c.err(f"{path}.image", problem)
    cpu, mem, cpu_limit, mem_limit = _flavor_sizes(c, data, path)

    def names(key: str) -> tuple[str, ...]:
        return c.strings(data[key], f"{path}.{key}") if key in data else ()

    return Flavor(
        name=name or "",
        display=_display(c, data, path, name or ""),
        description=(c.string(data["description"], f"{path}.description") or "")
        if "description" in data
        else "",
        image=image or "",
        cpu_millis=cpu or 0,
        memory_bytes=mem or 0,
        cpu_limit_millis=cpu_limit,
        memory_limit_bytes=mem_limit,
        vos=names("vos"),
        groups=names("groups"),
        gpu=_flavor_gpu(c, data.get("gpu"), f"{path}.gpu"),
        volumes=names("volumes"),
        env=frozen_map(_env(c, data["env"], f"{path}.env") if "env" in data else {}),
        default=c.boolean(data["default"], f"{path}.default") if "default" in data else False,
        idle=idle_limits(c, data["idle"], f"{path}.idle") if "idle" in data else IdleLimits(),
        image_choice=load_image_choice(c, data["image_choice"], f"{path}.image_choice", image)
        if "image_choice" in data
        else None,
        dask=load_dask(c, data["dask"], f"{path}.dask", image) if "dask" in data else None,
    )


def _named(
    c: Checker, raw: object, path: str, build: Callable[[str, object, str], T | None]
) -> dict[str, T]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        c.err(path, f"expected a mapping of names, got {kind(raw)}")
        return {}
    out: dict[str, T] = {}
    for name, item in raw.items():
        if not isinstance(name, str):
            c.err(path, f"names must be strings, got {kind(name)} {str(name)[:40]!r}")
            continue
        built = build(name, item, join_path(path, name))
        if built is not None:
            out[name] = built
    return out


def _plugin_lookup() -> Callable[[str], type[VolumeType] | str]:
    registry = volume_types()

    def lookup(vtype: str) -> type[VolumeType] | str:
        try:
            return registry.load(vtype)
        except PluginError as exc:
            return str(exc)

    return lookup


def load_facility(data: object, source: str = "facility") -> Facility:
    """Validate ``data`` (the parsed YAML) and return a Facility, or raise FacilityError."""
    c = Checker()
    top = c.mapping(
        data, "", {"site", "vos", "gpu_classes", "volumes", "flavors", "idle"}, {"flavors"}
    )
    if top is None:
        raise FacilityError(c.issues, source)
    site = c.mapping(top.get("site", {}), "site", {"name"}) or {}
    name = (c.string(site["name"], "site.name") or "") if "name" in site else "analysis facility"
    vos = _named(c, top.get("vos"), "vos", lambda n, r, p: _vo(c, n, r, p))
    gpus = _named(c, top.get("gpu_classes"), "gpu_classes", lambda n, r, p: _gpu_class(c, n, r, p))
    lookup = _plugin_lookup()
    volumes = _named(c, top.get("volumes"), "volumes", lambda n, r, p: _volume(c, n, r, p, lookup))
    flavors: list[Flavor] = []
    raw_flavors = top.get("flavors")
    if "flavors" in top and not isinstance(raw_flavors, list):
        c.err("flavors", f"expected a list, got {kind(raw_flavors)}")
    elif isinstance(raw_flavors, list):
        if not raw_flavors:
            c.err("flavors", "at least one flavor is needed")
        flavors = [f for i, r in enumerate(raw_flavors) if (f := _flavor(c, r, f"flavors[{i}]"))]
    facility = Facility(
        name=name,
        vos=frozen_map(vos),
        gpu_classes=frozen_map(gpus),
        volumes=frozen_map(volumes),
        flavors=tuple(flavors),
        idle=idle_limits(c, top["idle"], "idle") if "idle" in top else IdleLimits(),
    )
    declared = {
        key: {k for k in top[key] if isinstance(k, str)}
        if isinstance(top.get(key), Mapping)
        else set()
        for key in ("vos", "gpu_classes", "volumes")
    }
    cross_check(c, facility, declared)
    if c.issues:
        raise FacilityError(c.issues, source)
    return facility


def parse_facility_text(text: str, source: str = "facility") -> Facility:
    """Parse YAML text (safe loader only) and validate it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FacilityError(
            [ConfigIssue("", f"not valid YAML: {where}{problem}")], source
        ) from None
    except RecursionError:
        raise FacilityError(
            [ConfigIssue("", "not valid YAML: nested too deeply")], source
        ) from None
    return load_facility(data, source)


def load_facility_file(path: str | Path) -> Facility:
    """Read and validate a facility file; errors name the file and every bad key."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FacilityError(
            [ConfigIssue("", f"cannot read: {exc.strerror or exc}")], str(p)
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FacilityError([ConfigIssue("", f"larger than {MAX_FILE_BYTES} bytes")], str(p))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FacilityError([ConfigIssue("", "not UTF-8 text")], str(p)) from None
    return parse_facility_text(text, str(p))
