"""Cross-references between the sections of a facility file (flavors → VOs, GPU classes,
volumes; quotas → GPU classes) and caps no user could ever meet."""

from __future__ import annotations

from collections.abc import Mapping

from afcore.issues import Checker, short
from afspawner.daskspec import check_dask_gpus
from afspawner.facility import VO, Facility, Flavor, Resources


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    return f"unknown {kind} '{short(name)}'; defined: {', '.join(sorted(known)) or 'none'}"


def _check_vo(c: Checker, fac: Facility, vo: VO, gpu_classes: set[str]) -> None:
    for part in ("quota", "per_user"):
        res: Resources = getattr(vo, part)
        for gname in res.gpus:
            if gname not in gpu_classes:
                c.err(
                    f"vos.{vo.name}.{part}.gpus.{gname}",
                    _unknown("GPU class", gname, fac.gpu_classes),
                )
    for attr, label in (("cpu_millis", "cpu"), ("memory_bytes", "memory"), ("servers", "servers")):
        total, cap = getattr(vo.quota, attr), getattr(vo.per_user, attr)
        if total is not None and cap is not None and cap > total:
            c.err(f"vos.{vo.name}.per_user.{label}", f"exceeds the VO total quota.{label}")


def _check_references(
    c: Checker, fac: Facility, fl: Flavor, path: str, declared: Mapping[str, set[str]]
) -> None:
    """The VOs, volumes and GPU class a flavor names exist; its mounts do not clash."""
    for j, vo_name in enumerate(fl.vos):
        if vo_name not in declared["vos"]:
            c.err(f"{path}.vos[{j}]", _unknown("VO", vo_name, fac.vos))
    for j, vol in enumerate(fl.volumes):
        if vol not in declared["volumes"]:
            c.err(f"{path}.volumes[{j}]", _unknown("volume", vol, fac.volumes))
    if len(set(fl.volumes)) != len(fl.volumes):
        c.err(f"{path}.volumes", "lists a volume twice")
    mounts = [fac.volumes[v].mount for v in fl.volumes if v in fac.volumes]
    if len(set(mounts)) != len(mounts):
        c.err(f"{path}.volumes", "two volumes share one mount path")
    if fl.gpu is not None and fl.gpu.gpu_class not in declared["gpu_classes"]:
        c.err(f"{path}.gpu.class", _unknown("GPU class", fl.gpu.gpu_class, fac.gpu_classes))


def _check_caps(c: Checker, fac: Facility, fl: Flavor, path: str) -> None:
    """A flavor no user could start: over a GPU class's or a VO's per-user cap."""
    if fl.gpu is not None and fl.gpu.gpu_class in fac.gpu_classes:
        gclass = fac.gpu_classes[fl.gpu.gpu_class]
        if gclass.max_per_user is not None and fl.gpu.count > gclass.max_per_user:
            c.err(
                f"{path}.gpu.count",
                f"{fl.gpu.count} exceeds {gclass.name}.max_per_user "
                f"({gclass.max_per_user}); no user could start it",
            )
    if fl.gpu is not None and fl.vos and fl.gpu.gpu_class in fac.gpu_classes:
        members = [fac.vos[v] for v in fl.vos if v in fac.vos]
        cls = fl.gpu.gpu_class
        if members and all(m.quota.gpus and cls not in m.quota.gpus for m in members):
            c.err(
                f"{path}.gpu.class",
                f"no VO of this flavor ({', '.join(fl.vos)}) lists '{cls}' in quota.gpus, so "
                "none may use it; add it there or remove the gpus map",
            )
    for vo_name in fl.vos:
        member = fac.vos.get(vo_name)
        if member is None:
            continue
        cap = member.per_user
        if cap.cpu_millis is not None and fl.cpu_millis > cap.cpu_millis:
            c.err(
                f"{path}.cpu",
                f"exceeds the per-user CPU cap of VO {vo_name}; no user could start it",
            )
        if cap.memory_bytes is not None and fl.memory_bytes > cap.memory_bytes:
            c.err(
                f"{path}.memory",
                f"exceeds the per-user memory cap of VO {vo_name}; no user could start it",
            )


def cross_check(c: Checker, fac: Facility, declared: Mapping[str, set[str]]) -> None:
    """References between sections; names that are declared but invalid were already reported."""
    for vo in fac.vos.values():
        _check_vo(c, fac, vo, declared["gpu_classes"])
    seen: dict[str, int] = {}
    defaults: list[str] = []
    for i, fl in enumerate(fac.flavors):
        path = f"flavors[{i}]"
        if fl.name and fl.name in seen:
            c.err(
                f"{path}.name",
                f"duplicate flavor name '{fl.name}' (first at flavors[{seen[fl.name]}])",
            )
        seen.setdefault(fl.name, i)
        if fl.default:
            defaults.append(path)
        _check_references(c, fac, fl, path, declared)
        _check_caps(c, fac, fl, path)
        check_dask_gpus(c, fac, fl, path, declared["gpu_classes"])
    if len(defaults) > 1:
        c.err(defaults[1] + ".default", f"only one flavor may be the default (also {defaults[0]})")
