"""Crash safety (pure parts): the orphan decision, the ledger sync, ownership in manifests."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afspawner.backends.base import Backend, KeepView, LaunchRequest, ProgressSink, Started
from afspawner.backends.kubernetes import settings_from_options
from afspawner.facility import Facility
from afspawner.kube.sweep import observe
from afspawner.manifests import PodSettings, make_objects, owned_by, server_of
from afspawner.names import pod_name
from afspawner.ownership import (
    LedgerChanges,
    Observed,
    ServerView,
    find_orphans,
    ledger_changes,
)
from afspawner.quota import Reservation, Usage
from afspawner.runtime import Runtime
from unit.test_manifests import FAC, PLAN, SETTINGS

ALICE = ("alice", "")
BOB = ("bob", "gpu")


def pod(key: tuple[str, str], uid: str = "", ns: str = "ns", **kw: Any) -> Observed:
    return Observed(ns, pod_name(*key), uid or f"uid-{key[0]}", key, **kw)


def secret(name: str, owners: tuple[str, ...] = (), age: float = 100, **kw: Any) -> Observed:
    return Observed(kw.pop("ns", "ns"), name, f"s-{name}", kw.pop("key", None), age, owners, **kw)


# -- pods ------------------------------------------------------------------------------------
def test_pod_of_a_known_server_stays_and_others_go() -> None:
    out = find_orphans([pod(ALICE), pod(BOB)], [], {ALICE}, grace=30)
    assert [p.name for p in out.pods] == ["jupyter-bob--gpu"]
    assert out.secrets == ()


def test_pod_without_annotations_is_matched_by_its_deterministic_name() -> None:
    bare = Observed("ns", pod_name("alice"), "u1")  # key None: made by an older version
    assert not find_orphans([bare], [], {ALICE}, 30)
    assert find_orphans([bare], [], set(), 30).pods == (bare,)


def test_pod_being_deleted_is_left_alone() -> None:
    assert not find_orphans([pod(BOB, deleting=True)], [], set(), 30)


def test_nothing_known_means_everything_goes() -> None:
    out = find_orphans([pod(ALICE), pod(BOB)], [], set(), 30)
    assert len(out.pods) == 2


# -- secrets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("owners", "keep", "age", "orphan"),
    [
        (("uid-alice",), {ALICE}, 100, False),  # owner stays
        (("uid-alice",), set(), 100, True),  # owner is an orphan pod
        (("uid-gone",), {ALICE}, 100, True),  # owner pod gone (GC would, we do at once)
        (("uid-gone",), {ALICE}, 5, False),  # young: its pod may not be in the informer yet
        (("uid-gone", "uid-alice"), {ALICE}, 100, False),  # one owner stays
    ],
)
def test_owned_secret(
    owners: tuple[str, ...], keep: set[tuple[str, str]], age: float, orphan: bool
) -> None:
    s = secret("jupyter-alice", owners, age)
    out = find_orphans([pod(ALICE)], [s], keep, grace=30)
    assert (out.secrets == (s,)) is orphan


@pytest.mark.parametrize(
    ("name", "ns", "orphan"),
    [
        ("jupyter-alice", "ns", False),  # the server Secret of a staying pod
        ("jupyter-alice-token", "ns", False),  # its token Secret
        ("jupyter-alice", "other", True),  # same name, other namespace: no pod there
        ("jupyter-carol", "ns", True),  # no pod at all (hub killed before the pod)
        ("jupyter-carol-token", "ns", True),
    ],
)
def test_secret_without_owner(name: str, ns: str, orphan: bool) -> None:
    s = secret(name, ns=ns)
    out = find_orphans([pod(ALICE)], [s], {ALICE}, grace=30)
    assert (out.secrets == (s,)) is orphan


def test_young_secret_without_owner_waits_for_the_grace() -> None:
    assert not find_orphans([], [secret("jupyter-carol", age=29.9)], set(), 30)
    assert find_orphans([], [secret("jupyter-carol", age=30)], set(), 30)


def test_secret_of_an_orphan_pod_goes_with_it() -> None:
    out = find_orphans([pod(BOB)], [secret("jupyter-bob--gpu")], {ALICE}, 30)
    assert [s.name for s in out.secrets] == ["jupyter-bob--gpu"]


SERVERS = [("alice", ""), ("bob", ""), ("bob", "gpu")]


@given(
    st.sets(st.sampled_from(SERVERS)),
    st.sets(st.sampled_from(SERVERS)),
    st.floats(min_value=0, max_value=100),
)
def test_orphans_are_exactly_the_objects_of_unknown_servers(
    running: set[tuple[str, str]], keep: set[tuple[str, str]], age: float
) -> None:
    pods = [pod(k, uid=f"u-{k}") for k in sorted(running)]
    secrets = [secret(pod_name(*k), (f"u-{k}",), age) for k in SERVERS]
    out = find_orphans(pods, secrets, keep, grace=30)
    assert {p.key for p in out.pods} == running - keep
    expected = set() if age < 30 else {pod_name(*k) for k in SERVERS if k not in keep & running}
    assert {s.name for s in out.secrets} == expected


# -- the ledger ------------------------------------------------------------------------------
def res(key: tuple[str, str], cpu: int = 1000) -> Reservation:
    return Reservation(key[0], key[1], "cms", Usage(cpu, 0, 1))


def test_ledger_releases_unknown_and_counts_known_running() -> None:
    view = ServerView(servers=frozenset({ALICE, BOB}))
    changes = ledger_changes([res(("carol", ""))], [res(ALICE), res(("dave", ""))], view)
    assert changes.release == (("carol", ""),)
    assert [r.key for r in changes.restore] == ["alice/"]  # dave: a leftover, never counted


def test_ledger_leaves_busy_servers_alone() -> None:
    view = ServerView(servers=frozenset({ALICE}), busy=frozenset({ALICE, BOB}))
    changes = ledger_changes([res(BOB)], [res(ALICE)], view)
    assert changes == LedgerChanges()  # bob is starting; alice's spawn admits itself


def test_ledger_keeps_what_it_holds_for_known_servers() -> None:
    view = ServerView(servers=frozenset({ALICE}))
    assert not ledger_changes([res(ALICE, 2000)], [res(ALICE, 1000)], view)


@given(
    st.sets(st.sampled_from(SERVERS)),
    st.sets(st.sampled_from(SERVERS)),
    st.sets(st.sampled_from(SERVERS)),
    st.sets(st.sampled_from(SERVERS)),
)
def test_after_sync_the_ledger_is_the_hubs_servers(
    held: set[tuple[str, str]],
    running: set[tuple[str, str]],
    servers: set[tuple[str, str]],
    busy: set[tuple[str, str]],
) -> None:
    view = ServerView(frozenset(servers), frozenset(busy))
    changes = ledger_changes([res(k) for k in held], [res(k) for k in running], view)
    after = (held - set(changes.release)) | {(r.username, r.server_name) for r in changes.restore}
    idle = set(SERVERS) - busy
    # not busy: counted exactly when the hub has the server and it holds or runs
    assert after & idle == servers & (held | running) & idle
    assert after & busy == held & busy  # busy: untouched


# -- manifests -------------------------------------------------------------------------------
def test_secrets_name_their_server_and_can_be_owned_by_the_pod() -> None:
    objs = make_objects(PLAN, SETTINGS, bearer_token="tok")
    assert objs.token_secret is not None
    for obj in (objs.pod, objs.secret, objs.token_secret):
        assert server_of(obj) == ("o'brien", "gpu1")
    created = {**objs.pod, "metadata": {**objs.pod["metadata"], "uid": "1234"}}
    owned = owned_by(objs.secret, created)
    [ref] = owned["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": objs.pod["metadata"]["name"],
        "uid": "1234",
        "blockOwnerDeletion": False,
    }
    assert "ownerReferences" not in objs.secret["metadata"]  # pure: input unchanged


def test_home_claim_is_labelled_but_not_as_a_server() -> None:
    settings = PodSettings(namespace="af-cms", extra_labels={"site": "ucsd"})
    [claim] = make_objects(PLAN, settings).claims
    labels = claim["metadata"]["labels"]
    assert labels == {
        "site": "ucsd",
        "app.kubernetes.io/managed-by": "jupyterhub-af",
        "app.kubernetes.io/component": "home",
        "af.jupyterhub.org/user": "o-27-brien",
    }
    assert claim["metadata"]["annotations"] == {"af.jupyterhub.org/username": "o'brien"}
    assert "ownerReferences" not in claim["metadata"]


def test_observe_reads_owner_age_and_deletion() -> None:
    now = dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.UTC)
    obj = {
        "metadata": {
            "name": "jupyter-alice",
            "namespace": "ns",
            "uid": "s1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"kind": "Pod", "uid": "p1"}, {"kind": "Node", "uid": "n"}],
            "annotations": {"af.jupyterhub.org/username": "alice"},
            "deletionTimestamp": "2026-01-01T00:00:30Z",
        }
    }
    seen = observe(obj, now)
    assert (seen.key, seen.owners, seen.age, seen.deleting) == (ALICE, ("p1",), 60.0, True)
    assert observe({"metadata": {"name": "x"}}, now).age == 0.0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"sweep_interval": 0}, "sweep_interval: seconds, more than 0"),
        ({"sweep_grace": -1}, "sweep_grace: seconds, more than 0"),
        ({"sweep_interval": "30"}, "sweep_interval: wrong type str"),
    ],
)
def test_sweep_options_are_checked(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        settings_from_options(options)


def test_sweep_options_defaults() -> None:
    s = settings_from_options({})
    assert (s.sweep_interval, s.sweep_grace) == (30.0, 30.0)
    assert settings_from_options({"sweep_interval": 2}).sweep_interval == 2.0


# -- the runtime applies it ------------------------------------------------------------------
class FakeBackend(Backend):
    sweep_interval = 0.01

    def __init__(self, running: list[Reservation]) -> None:
        self._running = running
        self.kept: list[frozenset[tuple[str, str]]] = []
        self.fail = False

    @classmethod
    def create(cls, facility: Facility, options: Mapping[str, Any]) -> Backend:
        raise NotImplementedError

    async def launch(self, request: LaunchRequest, progress: ProgressSink) -> Started:
        raise NotImplementedError

    async def poll(self, state: Mapping[str, Any]) -> int | None:
        return 0

    async def stop(self, state: Mapping[str, Any], now: bool = False) -> None:
        return None

    async def running(self) -> list[Reservation]:
        return list(self._running)

    async def sweep(self, keep: KeepView) -> int:
        if self.fail:
            raise ConnectionError("apiserver down")
        self.kept.append(frozenset(keep()))
        return 0


async def test_runtime_rebuilds_from_known_servers_only_and_sweeps() -> None:
    backend = FakeBackend([res(ALICE), res(("leftover", ""))])
    view = {"servers": frozenset({ALICE, BOB})}
    rt = Runtime(FAC, backend, {}, None)
    rt.hub_view = lambda: ServerView(view["servers"])
    await rt.ensure_restored()
    assert [r.key for r in rt.ledger.reservations()] == ["alice/"]
    view["servers"] = frozenset()  # alice stopped while the hub was down
    await rt.reconcile()
    assert backend.kept == [frozenset()]
    assert len(rt.ledger) == 0


async def test_sweep_loop_survives_errors_and_stops_on_close() -> None:
    backend = FakeBackend([])
    rt = Runtime(FAC, backend, {}, None)
    rt.hub_view = lambda: ServerView(frozenset({ALICE}))
    backend.fail = True
    rt.start_sweeping()
    await asyncio.sleep(0.05)
    assert rt.sweeps == 0
    backend.fail = False
    for _ in itertools.repeat(None, 100):
        if rt.sweeps >= 2:
            break
        await asyncio.sleep(0.01)
    assert rt.sweeps >= 2 and backend.kept[0] == {ALICE}
    rt.close()
    done = rt.sweeps
    await asyncio.sleep(0.05)
    assert rt.sweeps == done
