"""Pure policy: which flavors a user may start and exactly what gets launched."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afspawner.loader import load_facility
from afspawner.pipeline import plan_spawn, user_context
from afspawner.plan import UserIdentity
from afspawner.policy import (
    PolicySettings,
    Refusal,
    SpawnOptions,
    UserContext,
    offered_flavors,
    parse_options,
    resolve,
)
from integration.spawnkit import facility as spawn_facility

FAC = load_facility(
    {
        **spawn_facility(),
        "volumes": {
            "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
            "eos": {"type": "eos", "mount": "/eos"},
            "ceph": {
                "type": "cephfs",
                "claim": "ceph-cms",
                "sub_path": "store/user/{username}",
                "mount": "/ceph/cms/store/user/{username}",
            },
        },
    }
)
ALICE = UserContext("alice", frozenset(), ("cms",))
DAVE = UserContext("dave", frozenset({"gpu-approved"}), ("cms",))
CAROL = UserContext("carol", frozenset(), ("cms", "dune"))
NOBODY = UserContext("nobody")
IDENT = UserIdentity("alice", 50001, 5063)


def test_offered_flavors_follow_vos_and_groups() -> None:
    names = lambda u: [f.name for f in offered_flavors(FAC, u)]  # noqa: E731
    assert names(ALICE) == ["cms-el9", "cms-a100", "broken-image", "crashing", "huge"]
    assert "cms-t4" in names(DAVE)
    assert "dune-sl7" in names(CAROL) and "cms-el9" in names(CAROL)
    assert names(NOBODY) == ["huge"]  # open flavors only


def test_default_flavor_and_plan_contents() -> None:
    plan = resolve(FAC, ALICE, SpawnOptions(), IDENT)
    assert plan.flavor == "cms-el9" and plan.vo == "cms"
    assert (plan.cpu_millis, plan.memory_bytes) == (2000, 4 * 2**30)
    assert plan.identity == IDENT
    assert [v.name for v in plan.volumes] == ["cvmfs", "eos"]
    assert plan.gpu is None
    assert not plan.allow_root and plan.namespace is None


def test_plan_env_is_the_complete_server_environment() -> None:
    plan = resolve(FAC, ALICE, SpawnOptions(), IDENT)
    assert dict(plan.env) == {
        "NB_USER": IDENT.username,
        "NB_UID": str(IDENT.uid),
        "NB_GID": str(IDENT.gid),
        "JUPYTER_IMAGE_SPEC": "cms/el9:1",
        "JUPYTER_IMAGE": "cms/el9:1",
        "AF_FLAVOR": "cms-el9",
        "AF_VO": "cms",
    }
    assert "AF_VO" not in resolve(FAC, NOBODY, SpawnOptions("huge"), IDENT).env


def test_one_pipeline_for_spawner_and_cli() -> None:
    user = user_context(FAC, "carol", ["dune", "staff", "cms"], ["cms", 7, ""])
    assert user.vos == ("cms", "dune") and user.groups == frozenset({"dune", "staff", "cms"})
    plan = plan_spawn(FAC, PolicySettings(), user, IDENT, {"flavor": ["huge"], "vo": "dune"})
    assert (plan.flavor, plan.vo) == ("huge", "dune")
    with pytest.raises(Refusal, match="unknown server option"):
        plan_spawn(FAC, PolicySettings(), user, IDENT, {"command": "evil"})


def test_gpu_plan_carries_class_details() -> None:
    plan = resolve(FAC, DAVE, SpawnOptions("cms-t4", gpus=2), IDENT)
    assert plan.gpu is not None
    assert (plan.gpu.resource, plan.gpu.count) == ("nvidia.com/gpu", 2)
    assert plan.gpu.selector == {"nvidia.com/gpu.product": "Tesla-T4"}


@pytest.mark.parametrize(
    ("user", "options", "status", "message"),
    [
        (ALICE, SpawnOptions("dune-sl7"), 403, "is for members of dune; your VOs: cms"),
        (ALICE, SpawnOptions("cms-t4"), 403, "GPUs require approval (group gpu-approved)"),
        (DAVE, SpawnOptions("cms-t4", gpus=5), 403, "at most 4 NVIDIA T4 GPU(s) per server"),
        (DAVE, SpawnOptions("cms-el9", gpus=1), 400, "has no GPU"),
        (ALICE, SpawnOptions("nope"), 400, "unknown flavor 'nope'"),
        (ALICE, SpawnOptions("cms-el9", vo="dune"), 403, "cannot charge flavor 'cms-el9' to VO"),
        (NOBODY, SpawnOptions("cms-el9"), 403, "your VOs: none"),
    ],
)
def test_refusals(user: UserContext, options: SpawnOptions, status: int, message: str) -> None:
    with pytest.raises(Refusal) as refused:
        resolve(FAC, user, options, IDENT)
    assert refused.value.status == status
    assert message in refused.value.message


def test_user_in_two_vos_chooses_which_to_charge() -> None:
    assert resolve(FAC, CAROL, SpawnOptions("huge"), IDENT).vo == "cms"
    assert resolve(FAC, CAROL, SpawnOptions("huge", vo="dune"), IDENT).vo == "dune"


def test_root_refused_unless_allowed() -> None:
    root = UserIdentity("alice", 0, 0)
    with pytest.raises(Refusal, match="uid/gid 0"):
        resolve(FAC, ALICE, SpawnOptions(), root)
    allowed = resolve(FAC, ALICE, SpawnOptions(), root, settings=PolicySettings(allow_root=True))
    assert allowed.allow_root


def test_templated_paths_are_escaped() -> None:
    fac = load_facility(
        {
            **spawn_facility(),
            "volumes": {
                "ceph": {
                    "type": "cephfs",
                    "claim": "c",
                    "sub_path": "store/user/{username}",
                    "mount": "/ceph/{username}",
                }
            },
            "flavors": [
                {"name": "f", "image": "i", "cpu": 1, "memory": "1Gi", "volumes": ["ceph"]}
            ],
        }
    )
    plan = resolve(fac, UserContext("../../etc/x"), SpawnOptions(), IDENT)
    [vol] = plan.volumes
    # one path component, with no '/' and no leading dot: it cannot leave /ceph
    assert vol.mount == "/ceph/-2e.-2f..-2fetc-2fx"
    assert vol.options["sub_path"] == "store/user/-2e.-2f..-2fetc-2fx"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, SpawnOptions()),
        ({}, SpawnOptions()),
        ({"flavor": ["cms-el9"], "gpus": ["2"]}, SpawnOptions("cms-el9", gpus=2)),  # form posts
        ({"flavor": "cms-el9", "vo": "cms", "gpus": 1}, SpawnOptions("cms-el9", "cms", 1)),
        ({"gpus": ""}, SpawnOptions()),
    ],
)
def test_parse_options(raw: Any, expected: SpawnOptions) -> None:
    assert parse_options(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"command": "x"}, "unknown server option(s) 'command'"),
        ({"flavor": "X Y"}, "option 'flavor' must be a flavor/VO name"),
        ({"flavor": 3}, "option 'flavor' must be"),
        ({"gpus": "2.5"}, "option 'gpus' must be a whole number"),
        ({"gpus": True}, "option 'gpus' must be a whole number"),
        ({"gpus": 0}, "at least 1"),
        ({"gpus": "99999"}, "whole number"),
        ("flavor", "must be a JSON object"),
    ],
)
def test_parse_options_refuses_forgeries(raw: Any, message: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_options(raw)
    assert refused.value.status == 400
    assert message in refused.value.message


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda c: st.one_of(
        st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["flavor", "vo", "gpus", "image", "x"]), json_values, max_size=4
    ),
    st.sampled_from([ALICE, DAVE, CAROL, NOBODY]),
)
def test_resolve_never_grants_what_is_not_offered(raw: dict[str, Any], user: UserContext) -> None:
    """Whatever options arrive, the result is a Refusal or a plan the user is entitled to."""
    try:
        plan = resolve(FAC, user, parse_options(raw), IDENT)
    except Refusal as refused:
        assert refused.status in (400, 403) and refused.message
        return
    assert plan.flavor in {f.name for f in offered_flavors(FAC, user)}
    flavor = FAC.flavor(plan.flavor)
    assert flavor is not None
    assert plan.vo is None or plan.vo in user.vos
    if flavor.vos:
        assert plan.vo in flavor.vos
    if plan.gpu is not None:
        gclass = FAC.gpu_classes[plan.gpu.gpu_class]
        assert not gclass.groups or set(gclass.groups) & user.groups
        assert gclass.max_per_user is None or plan.gpu.count <= gclass.max_per_user
