"""docs/operations.md lists exactly the metrics the code registers, with types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

from afauth import metrics as auth_metrics
from afspawner import metrics as spawn_metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(jupyterhub_af_[a-z_]+)` \| (\w+) \| ([^|]*) \| [^|]+ \|$", re.M)


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Metrics") :]
    section = section[: section.index("\n## ", 1)]
    return {
        name: (kind, tuple(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in ROW.findall(section)
    }


def registered() -> dict[str, str]:
    """Exposed name → type of every ``jupyterhub_af_*`` family in the hub's registry."""
    found = {}
    for family in REGISTRY.collect():
        if family.name.startswith("jupyterhub_af_"):
            suffix = "_total" if family.type == "counter" else ""
            found[family.name + suffix] = family.type
    return found


def test_every_registered_metric_is_documented_with_its_type() -> None:
    code = registered()
    doc = documented()
    assert len(code) >= 11
    assert sorted(code) == sorted(doc), "docs/operations.md ## Metrics differs from the code"
    assert {name: kind for name, (kind, _) in doc.items()} == code


def test_documented_labels_are_the_code_labels() -> None:
    labels = {**spawn_metrics.LABELS, **auth_metrics.LABELS}
    assert sorted(labels) == sorted(registered())
    assert {name: lbl for name, (_, lbl) in documented().items()} == dict(labels)


def test_label_declarations_are_what_the_metrics_use() -> None:
    objects = [
        spawn_metrics.SPAWN_PHASE,
        spawn_metrics.SPAWNS,
        spawn_metrics.REFUSALS,
        spawn_metrics.GPU_WAIT,
        auth_metrics.LOGINS,
        auth_metrics.LOGIN_REFUSALS,
        auth_metrics.IDP_LATENCY,
    ]
    labels = {**spawn_metrics.LABELS, **auth_metrics.LABELS}
    for metric in objects:
        family = next(iter(metric.collect()))
        name = family.name + ("_total" if family.type == "counter" else "")
        assert tuple(metric._labelnames) == labels[name]


def test_the_spawn_buckets_reach_past_two_minutes() -> None:
    assert max(spawn_metrics.SPAWN_BUCKETS) >= 600
    assert any(120 < b < 600 for b in spawn_metrics.SPAWN_BUCKETS)
