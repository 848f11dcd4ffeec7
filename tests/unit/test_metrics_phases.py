"""Spawn phases from a pod's status timestamps (afspawner.kube.phases), and the launch split."""

from __future__ import annotations

from typing import Any

import pytest

from afspawner.kube.phases import pod_phases
from afspawner.kube.slim import slim_pod
from afspawner.metrics import launch_phases


def pod(
    created: str | None = "2026-12-02T06:00:00Z",
    scheduled: str | None = "2026-12-02T06:00:03Z",
    started: tuple[str | None, ...] = ("2026-12-02T06:01:10Z",),
    ready: str | None = "2026-12-02T06:01:14Z",
) -> dict[str, Any]:
    conditions = [{"type": "Initialized", "status": "True", "lastTransitionTime": created}]
    if scheduled is not None:
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}
        )
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": ready})
    statuses = [
        {"name": f"c{i}", "state": {"running": {"startedAt": s}} if s else {"waiting": {}}}
        for i, s in enumerate(started)
    ]
    meta = {"name": "jupyter-alice", "namespace": "ns"}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "notebook", "image": "x", "env": []}]},
        "status": {"phase": "Running", "conditions": conditions, "containerStatuses": statuses},
    }


def test_the_three_phases_of_a_ready_pod() -> None:
    assert pod_phases(pod()) == {"scheduling": 3.0, "image_pull": 67.0, "ready": 4.0}


def test_the_last_container_to_start_ends_the_image_pull() -> None:
    p = pod(started=("2026-12-02T06:00:30Z", "2026-12-02T06:00:50Z"))
    assert pod_phases(p) == {"scheduling": 3.0, "image_pull": 47.0, "ready": 24.0}


def test_fractional_and_offset_timestamps() -> None:
    p = pod(
        created="2026-12-02T06:00:00.250000Z",
        scheduled="2026-12-02T07:00:01+01:00",
        started=("2026-12-02T06:00:02Z",),
        ready="2026-12-02T06:00:02Z",
    )
    assert pod_phases(p) == {"scheduling": 0.75, "image_pull": 1.0, "ready": 0.0}


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"created": None}, {"image_pull", "ready"}),
        ({"scheduled": None}, {"ready"}),
        ({"started": ("2026-12-02T06:01:10Z", None)}, {"scheduling"}),  # one not running
        ({"started": ()}, {"scheduling"}),
        ({"ready": None}, {"scheduling", "image_pull"}),
        ({"created": "not a time"}, {"image_pull", "ready"}),
    ],
)
def test_missing_timestamps_leave_their_phases_out(kw: dict[str, Any], expected: set[str]) -> None:
    assert set(pod_phases(pod(**kw))) == expected


def test_clock_skew_never_gives_negative_seconds() -> None:
    p = pod(scheduled="2026-12-02T05:59:58Z", ready="2026-12-02T06:01:09Z")
    assert pod_phases(p) == {"scheduling": 0.0, "image_pull": 72.0, "ready": 0.0}


def test_a_condition_that_is_not_true_does_not_count() -> None:
    p = pod()
    for cond in p["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond["status"] = "False"
    assert "ready" not in pod_phases(p)


def test_garbage_is_tolerated() -> None:
    assert pod_phases({}) == {}
    assert pod_phases({"metadata": None, "status": {"conditions": [None, "x"]}}) == {}
    junk = {"status": {"containerStatuses": [None, {"state": "running"}]}}
    assert pod_phases(junk) == {}


def test_the_informers_slim_pod_keeps_what_the_phases_read() -> None:
    assert pod_phases(slim_pod(pod())) == pod_phases(pod())


def test_launch_phases_add_create_as_the_rest_of_the_launch() -> None:
    reported = {"scheduling": 3.0, "image_pull": 67.0, "ready": 4.0}
    assert launch_phases(75.5, reported) == {"create": 1.5, **reported}
    # the pod's one-second timestamps may sum to more than the measured time
    assert launch_phases(73.2, reported)["create"] == 0.0
    # a backend without phases: the whole launch is object creation
    assert launch_phases(0.8, {}) == {"create": 0.8}
    # unknown names and the spawner's own phases are not taken from a backend
    assert launch_phases(2.0, {"bogus": 1.0, "admission": 1.0, "ready": -1.0}) == {
        "create": 2.0,
        "ready": 0.0,
    }
    assert launch_phases(9.0, {"create": 4.0, "ready": 1.0}) == {"create": 4.0, "ready": 1.0}
