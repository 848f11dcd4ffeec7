"""Entry-point plugin registries.

Sites extend jupyterhub-af by installing a package that declares entry points; nothing needs
subclassing. Each package declares its own groups next to the plugin interface
(``afspawner.volumes``, ``afspawner.backends``, ``afauth.idps``, ``afauth.mappers``) and
makes one registry per group with :func:`functools.cache`, so installed distributions are
scanned once per process.

A plugin that fails to import, or exports the wrong kind of object, is reported with the
group, the name, the distribution that declared it and the original exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class PluginError(Exception):
    """A plugin is unknown, broken, or of the wrong kind."""


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown package"
    return f"{ep.value} from {where}"


class Registry(Generic[T]):
    """Plugins of one entry-point group, discovered once, loaded lazily and cached.

    ``check`` decides whether a loaded object is acceptable (e.g. ``issubclass`` of a base);
    ``eps`` replaces discovery from installed distributions (used by tests).
    """

    def __init__(
        self,
        group: str,
        kind: str,
        check: Callable[[object], bool],
        eps: Iterable[EntryPoint] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self._check = check
        self._eps = list(eps) if eps is not None else None
        self._by_name: dict[str, list[EntryPoint]] | None = None
        self._cache: dict[str, T] = {}

    def _entry_points(self) -> dict[str, list[EntryPoint]]:
        if self._by_name is None:
            found = self._eps if self._eps is not None else list(entry_points(group=self.group))
            by_name: dict[str, list[EntryPoint]] = {}
            for ep in found:
                if ep.group == self.group:
                    by_name.setdefault(ep.name, []).append(ep)
            self._by_name = by_name
        return self._by_name

    def names(self) -> list[str]:
        return sorted(self._entry_points())

    def load(self, name: str) -> T:
        if name in self._cache:
            return self._cache[name]
        candidates = self._entry_points()
        eps = candidates.get(name, [])
        if not eps:
            known = ", ".join(sorted(candidates)) or "none"
            raise PluginError(
                f"unknown {self.kind} '{name}'; installed: {known} "
                f"(entry-point group '{self.group}')"
            )
        distinct = {ep.value for ep in eps}
        if len(distinct) > 1:
            origins = "; ".join(sorted(_origin(ep) for ep in eps))
            raise PluginError(f"{self.kind} '{name}' is declared more than once: {origins}")
        ep = eps[0]
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"{self.kind} plugin '{name}' ({_origin(ep)}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not self._check(obj):
            raise PluginError(
                f"{self.kind} plugin '{name}' ({_origin(ep)}) is not a valid {self.kind}: "
                f"got {obj!r}"
            )
        plugin = cast(T, obj)
        self._cache[name] = plugin
        return plugin
