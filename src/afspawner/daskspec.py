"""Parse a flavor's ``dask`` block (what its users may run as Dask clusters; docs/dask.md).

Called by :mod:`afspawner.loader` for ``flavors[i].dask``; every problem is reported with
its key path, e.g. ``flavors[2].dask.worker_sizes.huge.cpu: must be more than 0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from afcore.issues import Checker, join_path, kind, short
from afcore.quantity import cpu_millis, memory_bytes
from afspawner.facility import DaskSize, DaskSpec, Facility, Flavor, FlavorGPU
from afspawner.images import image_problem

SIZE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
DASK_KEYS = {"image", "scheduler", "worker_sizes", "max_workers", "max_cores"}
DEFAULT_SCHEDULER = DaskSize("scheduler", 1000, 2 << 30)


def _gpu(c: Checker, raw: object, path: str) -> FlavorGPU | None:
    """``gpu: {class, count}`` of a worker size (``count`` 1 unless given)."""
    g = c.mapping(raw, path, {"class", "count"}, {"class"})
    if g is None or "class" not in g:
        return None
    gclass = c.string(g["class"], f"{path}.class")
    count = c.count(g.get("count", 1), f"{path}.count", 1)
    return FlavorGPU(gclass, count) if gclass and count else None


def _size(c: Checker, name: str, raw: object, path: str, worker: bool = False) -> DaskSize | None:
    keys = {"cpu", "memory", "gpu"} if worker else {"cpu", "memory"}
    data = c.mapping(raw, path, keys, {"cpu", "memory"})
    if data is None or "cpu" not in data or "memory" not in data:
        return None
    gpu = _gpu(c, data["gpu"], f"{path}.gpu") if "gpu" in data else None
    if "gpu" in data and gpu is None:
        return None
    cpu = c.quantity(data["cpu"], f"{path}.cpu", cpu_millis)
    mem = c.quantity(data["memory"], f"{path}.memory", memory_bytes)
    if cpu == 0:
        c.err(f"{path}.cpu", "must be more than 0")
    if mem == 0:
        c.err(f"{path}.memory", "must be more than 0")
    if not cpu or not mem:
        return None
    return DaskSize(name, cpu, mem, gpu)


def _sizes(c: Checker, raw: object, path: str) -> tuple[DaskSize, ...]:
    if not isinstance(raw, Mapping) or not raw:
        c.err(path, f"expected a mapping of size names to {{cpu, memory, gpu}}, got {kind(raw)}")
        return ()
    sizes: list[DaskSize] = []
    for name, item in raw.items():
        where = join_path(path, str(name))
        if not isinstance(name, str) or not SIZE_NAME.match(name):
            c.err(where, "size name: lower-case letters, digits and '-', at most 32")
            continue
        size = _size(c, name, item, where, worker=True)
        if size is not None:
            sizes.append(size)
    return tuple(sizes)


def load_dask(c: Checker, raw: object, path: str, flavor_image: str | None) -> DaskSpec | None:
    """``flavors[i].dask`` → :class:`DaskSpec` (``None`` when invalid; problems in ``c``)."""
    data = c.mapping(raw, path, DASK_KEYS, {"worker_sizes"})
    if data is None or "worker_sizes" not in data:
        return None
    image = flavor_image or ""
    if "image" in data:
        image = c.string(data["image"], f"{path}.image") or ""
        if image and (problem := image_problem(image)) is not None:
            c.err(f"{path}.image", problem)
    scheduler = DEFAULT_SCHEDULER
    if "scheduler" in data:
        scheduler = _size(c, "scheduler", data["scheduler"], f"{path}.scheduler") or scheduler
    sizes = _sizes(c, data["worker_sizes"], f"{path}.worker_sizes")
    max_workers = (
        c.count(data["max_workers"], f"{path}.max_workers", 1) if "max_workers" in data else None
    )
    max_cores = (
        c.quantity(data["max_cores"], f"{path}.max_cores", cpu_millis)
        if "max_cores" in data
        else None
    )
    if max_cores is not None:
        small = [s.name for s in sizes if s.cpu_millis > max_cores]
        if small:
            c.err(f"{path}.max_cores", f"smaller than one worker of size {', '.join(small)}")
    if not sizes:
        return None
    return DaskSpec(image, scheduler, sizes, max_workers, max_cores)


def check_dask_gpus(c: Checker, fac: Facility, fl: Flavor, path: str, classes: set[str]) -> None:
    """The GPU classes of a flavor's worker sizes exist and are allowed to the flavor's VOs,
    by the rules of a notebook flavor's ``gpu`` (:mod:`afspawner.references`)."""
    if fl.dask is None:
        return
    for size in fl.dask.worker_sizes:
        if size.gpu is None:
            continue
        where = join_path(f"{path}.dask.worker_sizes", size.name) + ".gpu"
        cls = size.gpu.gpu_class
        if cls not in classes:
            known = ", ".join(sorted(fac.gpu_classes)) or "none"
            c.err(f"{where}.class", f"unknown GPU class '{short(cls)}'; defined: {known}")
            continue
        gclass = fac.gpu_classes.get(cls)
        if gclass is None:  # declared but invalid: reported already
            continue
        if gclass.max_per_user is not None and size.gpu.count > gclass.max_per_user:
            c.err(
                f"{where}.count",
                f"{size.gpu.count} exceeds {cls}.max_per_user ({gclass.max_per_user}); "
                "no worker of this size could run",
            )
        members = [fac.vos[v] for v in fl.vos if v in fac.vos]
        if members and all(m.quota.gpus and cls not in m.quota.gpus for m in members):
            c.err(
                f"{where}.class",
                f"no VO of this flavor ({', '.join(fl.vos)}) lists '{cls}' in quota.gpus, so "
                "none may use it; add it there or remove the gpus map",
            )
