"""GPU FIFO fairness, UID resolution (static map, pool), options form."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from afspawner.admission import GPUAdmission, GrantState, WaitSettings
from afspawner.form import options_form, options_from_form
from afspawner.plan import GPURequest, UserIdentity
from afspawner.policy import Refusal, UserContext
from afspawner.uid import PoolSettings, from_auth_state, load_static_map, resolve_identity
from unit.test_policy import FAC


async def test_fifo_admits_in_order_and_never_jumps() -> None:
    free = {"t4": 0}
    queue = GPUAdmission(lambda c: free[c])
    first, second, third = (queue.enqueue("t4", n) for n in (2, 1, 1))
    assert not first.ready.is_set() and queue.position(third) == 2
    free["t4"] = 1  # one unit: the head needs 2, so nobody may pass it
    queue.wake("t4")
    assert not any(w.ready.is_set() for w in (first, second, third))
    free["t4"] = 3
    queue.wake("t4")
    assert first.ready.is_set() and second.ready.is_set() and not third.ready.is_set()
    assert queue.available("t4") == 0  # 3 free, 3 granted but not yet running
    free["t4"] = 1  # first's pod now runs: the backend counts its 2 units as used
    first.running()
    assert third.ready.is_set() is False  # second still holds its grant
    queue.running(second)
    queue.wake("t4")
    assert third.ready.is_set()
    assert [g.state for g in (first, second, third)] == [
        GrantState.RUNNING,
        GrantState.RUNNING,
        GrantState.GRANTED,
    ]


async def test_leaving_moves_the_others_up() -> None:
    queue = GPUAdmission(lambda c: 0)
    a, b = queue.enqueue("t4", 1), queue.enqueue("t4", 1)
    queue.release(a)
    assert b.moved.is_set() and queue.position(b) == 0 and queue.waiting("t4") == 1


async def test_unknown_capacity_does_not_block() -> None:
    queue = GPUAdmission(lambda c: None)
    assert queue.enqueue("t4", 4).ready.is_set()


T4 = GPURequest("t4", "nvidia.com/gpu", 1, display="NVIDIA T4")


async def test_refuse_mode_refuses_at_once_and_leaves_nothing_behind() -> None:
    queue = GPUAdmission(lambda c: 0)
    with pytest.raises(Refusal, match="no NVIDIA T4 GPU is free right now") as err:
        async with queue.gpus(T4, WaitSettings("refuse"), lambda m: None):
            raise AssertionError("not granted")
    assert err.value.status == 503 and queue.waiting("t4") == 0


async def test_queue_reports_position_and_hands_over_when_woken() -> None:
    free = {"t4": 0}
    queue = GPUAdmission(lambda c: free[c])
    events: list[str] = []
    entered = asyncio.Event()

    async def spawn(name: str) -> None:
        async with queue.gpus(T4, WaitSettings("queue", 30), events.append) as grant:
            entered.set()
            assert grant.state is GrantState.GRANTED and queue.available("t4") == 0
            free["t4"] = 0  # the backend now counts the pod
            grant.running()
        assert grant.state is GrantState.RUNNING  # exit keeps running units with the backend

    task = asyncio.create_task(spawn("a"))
    await asyncio.sleep(0)
    assert events == ["waiting for a NVIDIA T4: 0 ahead of you"]
    free["t4"] = 1
    queue.wake()  # what the backend's informers do
    await asyncio.wait_for(task, 5)
    assert entered.is_set() and events[-1] == "a NVIDIA T4 is free; starting"


async def test_failed_launch_gives_the_units_back_and_times_out_waiters() -> None:
    queue = GPUAdmission(lambda c: 1)
    with pytest.raises(RuntimeError):
        async with queue.gpus(T4, WaitSettings("queue", 1), lambda m: None):
            assert queue.available("t4") == 0
            raise RuntimeError("launch failed")
    assert queue.available("t4") == 1
    async with queue.gpus(T4, WaitSettings("queue", 1), lambda m: None):
        with pytest.raises(Refusal, match="became free within 0s"):
            async with queue.gpus(T4, WaitSettings("queue", 0.2, 0.05), lambda m: None):
                pass
        assert queue.waiting("t4") == 0


def test_identity_sources(tmp_path: Path) -> None:
    assert from_auth_state("a", {"uid": 5, "gid": 6}) == UserIdentity("a", 5, 6)
    for bad in (
        {"uid": "5", "gid": 6},
        {"uid": True, "gid": 1},
        {"uid": -1, "gid": 1},
        {"uid": 2**40, "gid": 1},
        {},
    ):
        assert from_auth_state("a", bad) is None
    mapping = tmp_path / "ids.yaml"
    mapping.write_text("alice: {uid: 50001, gid: 5063, groups: [5064]}\n")
    static = load_static_map(mapping)
    assert static["alice"] == UserIdentity("alice", 50001, 5063, (5064,))
    mapping.write_text("alice: {uid: lots, gid: 1}\n")
    with pytest.raises(ValueError, match="alice: uid and gid must be whole numbers"):
        load_static_map(mapping)


def test_pool_allocates_once_and_refuses_when_exhausted(tmp_path: Path) -> None:
    pool = PoolSettings(tmp_path / "pool.json", 70000, 70001, 7000)
    a = resolve_identity("a", ["auth_state", "pool"], {}, {}, pool)
    b = resolve_identity("b", ["pool"], None, {}, pool)
    assert (a.uid, b.uid) == (70000, 70001)
    assert resolve_identity("a", ["pool"], None, {}, pool).uid == 70000  # stable
    assert json.loads((tmp_path / "pool.json").read_text()) == {"a": 70000, "b": 70001}
    with pytest.raises(Refusal, match=r"pool .* is exhausted; .* no shared fallback uid"):
        resolve_identity("c", ["pool"], None, {}, pool)


def test_no_source_means_refusal() -> None:
    with pytest.raises(Refusal, match="no POSIX account is known for 'x'"):
        resolve_identity("x", ["auth_state", "static"], {}, {}, None)


def test_form_lists_only_offered_flavors_and_escapes() -> None:
    user = UserContext("alice", frozenset(), ("cms", "dune"))
    html = options_form(FAC, user, lambda c: 3)
    assert 'value="cms-el9" checked' in html
    assert "cms-t4" not in html  # needs gpu-approved
    assert 'value="huge/dune"' in html  # two VOs: an open flavor once per VO
    dave = UserContext("dave", frozenset({"gpu-approved"}), ("cms",))
    assert "1 x NVIDIA T4 GPU (3 free now)" in options_form(FAC, dave, lambda c: 3)
    assert "none free now" in options_form(FAC, dave, lambda c: 0)
    outsider = options_form(FAC, UserContext("x", frozenset(), ("atlas",)), lambda c: 0)
    assert 'value="huge"' in outsider and "cms-el9" not in outsider  # open flavors only
    assert "&lt;script&gt;" in options_form(
        FAC.__class__(
            FAC.name,
            FAC.vos,
            FAC.gpu_classes,
            FAC.volumes,
            (
                FAC.flavors[0].__class__(
                    **{**FAC.flavors[0].__dict__, "display": "<script>x</script>"}
                ),
            ),
        ),
        user,
        lambda c: 0,
    )


def test_options_from_form_keeps_unknown_keys_for_refusal() -> None:
    assert options_from_form({"flavor": ["cms-el9"], "gpus": [""], "_xsrf": ["t"]}) == {
        "flavor": "cms-el9"
    }
    assert options_from_form({"flavor": ["x"], "image": ["evil"]}) == {
        "flavor": "x",
        "image": "evil",
    }
