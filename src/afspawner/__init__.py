"""Analysis-facility spawner for JupyterHub.

``from afspawner import AFSpawner`` gives the spawner class (like ``kubespawner.KubeSpawner``);
it is imported on first use, so the pure modules (``afspawner.policy``, the ``afhub`` CLI) do
not load JupyterHub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afspawner.spawner import AFSpawner

__all__ = ["AFSpawner"]


def __getattr__(name: str) -> Any:
    if name == "AFSpawner":
        from afspawner.spawner import AFSpawner

        return AFSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
