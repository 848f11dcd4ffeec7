"""Parse a flavor's ``dask`` block (what its users may run as Dask clusters; docs/dask.md).

Called by :mod:`afspawner.loader` for ``flavors[i].dask``; every problem is reported with
its key path, e.g. ``flavors[2].dask.worker_sizes.huge.cpu: must be more than 0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from afcore.issues import Checker, join_path, kind
from afcore.quantity import cpu_millis, memory_bytes
from afspawner.facility import DaskSize, DaskSpec
from afspawner.images import image_problem

SIZE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
DASK_KEYS = {"image", "scheduler", "worker_sizes", "max_workers", "max_cores"}
DEFAULT_SCHEDULER = DaskSize("scheduler", 1000, 2 << 30)


def _size(c: Checker, name: str, raw: object, path: str) -> DaskSize | None:
    data = c.mapping(raw, path, {"cpu", "memory"}, {"cpu", "memory"})
    if data is None or "cpu" not in data or "memory" not in data:
        return None
    cpu = c.quantity(data["cpu"], f"{path}.cpu", cpu_millis)
    mem = c.quantity(data["memory"], f"{path}.memory", memory_bytes)
    if cpu == 0:
        c.err(f"{path}.cpu", "must be more than 0")
    if mem == 0:
        c.err(f"{path}.memory", "must be more than 0")
    if not cpu or not mem:
        return None
    return DaskSize(name, cpu, mem)


def _sizes(c: Checker, raw: object, path: str) -> tuple[DaskSize, ...]:
    if not isinstance(raw, Mapping) or not raw:
        c.err(path, f"expected a mapping of size names to {{cpu, memory}}, got {kind(raw)}")
        return ()
    sizes: list[DaskSize] = []
    for name, item in raw.items():
        where = join_path(path, str(name))
        if not isinstance(name, str) or not SIZE_NAME.match(name):
            c.err(where, "size name: lower-case letters, digits and '-', at most 32")
            continue
        size = _size(c, name, item, where)
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
