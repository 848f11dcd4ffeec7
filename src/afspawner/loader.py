"""Load and validate a facility file (YAML or dict) into :class:`~afspawner.facility.Facility`.

Every problem is collected, not just the first, and each names the path of its key, e.g.
``flavors[3].gpu.class: unknown GPU class 'v100'; defined: a100-3g.20gb, t4``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar, cast

import yaml

from afspawner.facility import (
    VO,
    Facility,
    Flavor,
    FlavorGPU,
    GPUClass,
    GPUSharing,
    Resources,
    Toleration,
    Volume,
    frozen_map,
)
from afspawner.quantity import cpu_millis, memory_bytes
from afspawner.references import cross_check
from afspawner.registry import PluginError
from afspawner.validation import Checker as _Checker
from afspawner.validation import ConfigIssue, FacilityError
from afspawner.validation import join as _join
from afspawner.validation import kind as _kind
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


def _resources(c: _Checker, raw: object, path: str) -> Resources:
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
            counted = c.count(n, _join(f"{path}.gpus", name))
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


def _vo(c: _Checker, name: str, raw: object, path: str) -> VO:
    c.string(name, path, DNS_LABEL, "VO name (lower-case letters, digits and '-')")
    data = c.mapping(raw, path, {"display", "namespace", "quota", "per_user"}) or {}
    namespace = None
    if "namespace" in data:
        namespace = c.string(data["namespace"], f"{path}.namespace", DNS_LABEL, "namespace name")
    return VO(
        name=name,
        display=c.string(data["display"], f"{path}.display") or name if "display" in data else name,
        namespace=namespace,
        quota=_resources(c, data.get("quota", {}), f"{path}.quota"),
        per_user=_resources(c, data.get("per_user", {}), f"{path}.per_user"),
    )


def _toleration(c: _Checker, raw: object, path: str) -> Toleration | None:
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


def _gpu_class(c: _Checker, name: str, raw: object, path: str) -> GPUClass:
    c.string(name, path, GPU_CLASS_NAME, "GPU class name (lower-case letters, digits, '-', '.')")
    data = (
        c.mapping(
            raw,
            path,
            {"display", "resource", "selector", "tolerations", "max_per_user", "groups", "sharing"},
            {"resource"},
        )
        or {}
    )
    resource = ""
    if "resource" in data:
        resource = (
            c.string(
                data["resource"],
                f"{path}.resource",
                EXTENDED_RESOURCE,
                "extended resource name (e.g. nvidia.com/gpu)",
            )
            or ""
        )
    sharing = _gpu_sharing(resource)
    if "sharing" in data:
        if data["sharing"] not in ("whole", "mig", "time-sliced"):
            c.err(f"{path}.sharing", f"must be whole, mig or time-sliced; got {data['sharing']!r}")
        else:
            sharing = cast(GPUSharing, data["sharing"])
    selector: dict[str, str] = {}
    sel = c.mapping(
        data.get("selector", {}),
        f"{path}.selector",
        set(data["selector"]) if isinstance(data.get("selector"), Mapping) else set(),
    )
    for key, value in (sel or {}).items():
        k = c.string(key, _join(f"{path}.selector", key), LABEL_KEY, "label key")
        v = value if isinstance(value, str) else None
        if v is None or not LABEL_VALUE.match(v):
            c.err(
                _join(f"{path}.selector", key),
                f"label value must be a string like 'Tesla-T4'; got {value!r}",
            )
        elif k:
            selector[k] = v
    tolerations: list[Toleration] = []
    if "tolerations" in data:
        raw_t = data["tolerations"]
        if not isinstance(raw_t, list):
            c.err(f"{path}.tolerations", f"expected a list, got {_kind(raw_t)}")
        else:
            tolerations = [
                t
                for i, x in enumerate(raw_t)
                if (t := _toleration(c, x, f"{path}.tolerations[{i}]"))
            ]
    return GPUClass(
        name=name,
        display=(c.string(data["display"], f"{path}.display") or name)
        if "display" in data
        else name,
        resource=resource,
        sharing=sharing,
        selector=frozen_map(selector),
        tolerations=tuple(tolerations),
        max_per_user=c.count(data["max_per_user"], f"{path}.max_per_user", 1)
        if "max_per_user" in data
        else None,
        groups=c.strings(data["groups"], f"{path}.groups") if "groups" in data else (),
    )


def _volume(
    c: _Checker, name: str, raw: object, path: str, types: Callable[[str], type[VolumeType] | str]
) -> Volume | None:
    c.string(name, path, DNS_LABEL, "volume name (lower-case letters, digits and '-')")
    if not isinstance(raw, Mapping):
        c.err(path, f"expected a mapping, got {_kind(raw)}")
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
    for key, message in plugin.validate(options):
        c.err(_join(path, str(key)), message)
    mount = raw.get("mount")
    if mount is not None:
        from afspawner.volumes.base import template_problem

        if not isinstance(mount, str) or not mount.startswith("/"):
            c.err(f"{path}.mount", f"must be an absolute path; got {mount!r}")
        elif (problem := template_problem(mount)) is not None:
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
}


def _flavor(c: _Checker, raw: object, path: str) -> Flavor | None:
    data = c.mapping(raw, path, _FLAVOR_KEYS, {"name", "image", "cpu", "memory"})
    if data is None:
        return None
    name = (
        c.string(
            data["name"],
            f"{path}.name",
            DNS_LABEL,
            "flavor name (lower-case letters, digits and '-')",
        )
        if "name" in data
        else None
    )
    image = c.string(data["image"], f"{path}.image") if "image" in data else None
    cpu = c.quantity(data["cpu"], f"{path}.cpu", cpu_millis) if "cpu" in data else None
    mem = c.quantity(data["memory"], f"{path}.memory", memory_bytes) if "memory" in data else None
    cpu_limit = (
        c.quantity(data["cpu_limit"], f"{path}.cpu_limit", cpu_millis)
        if "cpu_limit" in data
        else None
    )
    mem_limit = (
        c.quantity(data["memory_limit"], f"{path}.memory_limit", memory_bytes)
        if "memory_limit" in data
        else None
    )
    if cpu is not None and cpu_limit is not None and cpu_limit < cpu:
        c.err(f"{path}.cpu_limit", "must not be below cpu")
    if mem is not None and mem_limit is not None and mem_limit < mem:
        c.err(f"{path}.memory_limit", "must not be below memory")
    if cpu == 0:
        c.err(f"{path}.cpu", "must be more than 0")
    if mem == 0:
        c.err(f"{path}.memory", "must be more than 0")
    gpu = None
    if "gpu" in data and data["gpu"] is not None:
        g = c.mapping(data["gpu"], f"{path}.gpu", {"class", "count"}, {"class"})
        if g is not None and "class" in g:
            gclass = c.string(g["class"], f"{path}.gpu.class")
            count = c.count(g.get("count", 1), f"{path}.gpu.count", 1)
            if gclass and count:
                gpu = FlavorGPU(gclass, count)
    env: dict[str, str] = {}
    if "env" in data:
        e = c.mapping(
            data["env"],
            f"{path}.env",
            set(data["env"]) if isinstance(data["env"], Mapping) else set(),
        )
        for key, value in (e or {}).items():
            if not ENV_NAME.match(key):
                c.err(_join(f"{path}.env", key), "not a valid environment variable name")
            elif not isinstance(value, str | int | float) or isinstance(value, bool):
                c.err(_join(f"{path}.env", key), f"value must be a string, got {_kind(value)}")
            else:
                env[key] = str(value)
    return Flavor(
        name=name or "",
        display=(c.string(data["display"], f"{path}.display") or "")
        if "display" in data
        else name or "",
        description=(c.string(data["description"], f"{path}.description") or "")
        if "description" in data
        else "",
        image=image or "",
        cpu_millis=cpu or 0,
        memory_bytes=mem or 0,
        cpu_limit_millis=cpu_limit,
        memory_limit_bytes=mem_limit,
        vos=c.strings(data["vos"], f"{path}.vos") if "vos" in data else (),
        groups=c.strings(data["groups"], f"{path}.groups") if "groups" in data else (),
        gpu=gpu,
        volumes=c.strings(data["volumes"], f"{path}.volumes") if "volumes" in data else (),
        env=frozen_map(env),
        default=c.boolean(data["default"], f"{path}.default") if "default" in data else False,
    )


def _named(
    c: _Checker, raw: object, path: str, build: Callable[[str, object, str], T | None]
) -> dict[str, T]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        c.err(path, f"expected a mapping of names, got {_kind(raw)}")
        return {}
    out: dict[str, T] = {}
    for name, item in raw.items():
        if not isinstance(name, str):
            c.err(path, f"names must be strings, got {_kind(name)} {str(name)[:40]!r}")
            continue
        built = build(name, item, _join(path, name))
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
    c = _Checker()
    top = c.mapping(data, "", {"site", "vos", "gpu_classes", "volumes", "flavors"}, {"flavors"})
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
        c.err("flavors", f"expected a list, got {_kind(raw_flavors)}")
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
