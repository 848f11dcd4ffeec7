"""The facility page's data: who sees what (scopes → Viewer) and the usage it shows."""

from __future__ import annotations

import dataclasses
import json

from afspawner.overview import ALL, SCOPE, Viewer, facility_view, viewer_from_scopes
from afspawner.quota import Reservation, Usage
from unit.test_form_catalog import FAC

GiB = 2**30
RES = (
    Reservation("alice", "", "cms", Usage(2000, 4 * GiB, 1)),
    Reservation("alice", "ml", "cms", Usage(2000, 8 * GiB, 1, {"t4": 1})),
    Reservation("bob", "", "dune", Usage(1000, 2 * GiB, 1)),
    Reservation("zed", "", None, Usage(1000, GiB, 1)),  # an open flavor, no VO
)
QUEUES = {"t4": ("dan/", "alice/gpu2", "erin/")}
FREE = {"t4": 0}


def test_scopes_decide_what_a_viewer_sees() -> None:
    own = {SCOPE: {"user": {"alice"}}}
    assert viewer_from_scopes(FAC, "alice", ["cms", "atlas"], own) == Viewer(
        "alice", ("cms",), sees_self=True
    )
    admin = viewer_from_scopes(FAC, "root", [], {"admin:users": ALL})
    assert admin.sees_all and admin.sees_self
    assert viewer_from_scopes(FAC, None, [], {SCOPE: ALL}).sees_all  # a service
    manager = viewer_from_scopes(
        FAC, "carol", ["cms"], {SCOPE: {"group": {"dune", "nope"}, "user": {"carol"}}}
    )
    assert manager.manages == frozenset({"dune"}) and not manager.sees_all and manager.sees_self
    # filtered admin:users is not "all"; someone else's user filter is not one's own
    limited = viewer_from_scopes(
        FAC, "eve", ["cms"], {"admin:users": {"group": {"cms"}}, SCOPE: {"user": {"alice"}}}
    )
    assert not (limited.sees_all or limited.manages or limited.sees_self)


def test_a_user_sees_their_vos_allowance_and_queue_place_only() -> None:
    view = facility_view(FAC, RES, QUEUES, FREE, Viewer("alice", ("cms",)))
    assert view.scope == "self" and view.vos == () and view.users == ()
    (cms,) = view.my_vos
    assert cms.vo.vo == "cms" and cms.mine.servers == ("alice/", "alice/ml")
    mine = {a.resource: a for a in cms.mine.usage}
    assert (mine["servers"].text, mine["servers"].left_text) == ("2 of 2", "0")
    assert (mine["cpu"].text, mine["memory"].text) == ("4 of 4", "12Gi of 16Gi")
    total = {a.resource: a.text for a in cms.vo.usage}
    assert total["gpu:t4"] == "1 of 2" and total["servers"] == "2 of 4"
    (place,) = view.my_queue
    assert (place.server, place.ahead, place.waiting) == ("alice/gpu2", 1, 3)
    (gpu,) = view.gpus
    assert (gpu.free, gpu.waiting, gpu.queue) == (0, 3, ())  # not who waits


def test_a_vo_manager_sees_only_their_vo() -> None:
    view = facility_view(
        FAC, RES, QUEUES, FREE, Viewer("carol", ("cms",), manages=frozenset({"dune"}))
    )
    assert view.scope == "vos"
    assert [v.vo for v in view.vos] == ["dune"]
    assert [(u.user, u.vo) for u in view.users] == [("bob", "dune")]
    assert [m.mine.user for m in view.my_vos] == ["carol"]


def test_an_admin_sees_every_vo_user_and_queue() -> None:
    view = facility_view(FAC, RES, QUEUES, FREE, Viewer("root", (), sees_all=True))
    assert [v.vo for v in view.vos] == ["cms", "dune"]
    assert [(u.user, u.vo) for u in view.users] == [
        ("zed", None),
        ("alice", "cms"),
        ("bob", "dune"),
    ]
    assert view.gpus[0].queue == ("dan/", "alice/gpu2", "erin/")
    # it is plain data: the JSON API's body
    body = json.loads(json.dumps(dataclasses.asdict(view)))
    assert body["users"][1]["usage"][1] == {
        "resource": "cpu",
        "label": "CPU",
        "used": 4000,
        "limit": 4000,
        "left": 0,
        "text": "4 of 4",
        "left_text": "0",
    }


def test_no_scope_no_data() -> None:
    view = facility_view(FAC, RES, QUEUES, FREE, Viewer("alice", ("cms",), sees_self=False))
    assert (view.my_vos, view.my_queue, view.vos, view.users) == ((), (), (), ())
