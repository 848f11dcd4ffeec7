"""Options of the Kubernetes backend (``c.AFSpawner.backend_options``), declared once.

Each field of :class:`KubeSettings` is an option: its type, default and help live here, the
checks and the docs table (docs/spawner.md) are derived from them
(:mod:`afspawner.backends.options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from afspawner.backends.options import option, options_table, settings_from

PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True)
class KubeSettings:
    namespace: str = option(
        "default",
        "namespace of servers of VOs without their own",
        shown="`$POD_NAMESPACE` or `default`",
        env="POD_NAMESPACE",
    )
    kubeconfig: str | None = option(
        None,
        "path of a kubeconfig (hub outside the cluster, tests)",
        shown="in-cluster config",
    )
    image_pull_policy: str = option(
        "IfNotPresent", "`imagePullPolicy` of the server containers", choices=PULL_POLICIES
    )
    unschedulable_grace: float = option(
        20.0, "seconds a pod may stay Unschedulable before the spawn fails", unit="seconds"
    )
    reconcile_quotas: bool = option(
        True, "create VO namespaces and keep a ResourceQuota `af-vo-quota` in each"
    )
    watch_nodes: bool = option(True, "watch nodes for GPU availability (needs `list/watch nodes`)")
    extra_labels: Mapping[str, str] = option(
        {}, "labels added to every object (the spawner's own labels win on a clash)"
    )
    sweep_interval: float = option(
        30.0,
        "seconds between two sweeps of orphan pods and Secrets (below); more than 0",
        positive=True,
        unit="seconds",
    )
    sweep_grace: float = option(
        30.0,
        "seconds a Secret is left alone after its creation before the sweep may remove it "
        "(a spawn creates its pod, then its Secrets); more than 0",
        positive=True,
        unit="seconds",
    )


def settings_from_options(options: Mapping[str, Any]) -> KubeSettings:
    """``c.AFSpawner.backend_options`` → KubeSettings; unknown or mistyped keys are errors."""
    return settings_from(KubeSettings, options, "kubernetes")


def docs_table() -> str:
    """The options table of docs/spawner.md ("Kubernetes backend options")."""
    return options_table(KubeSettings)
