"""The spawn form as a catalog: groups per experiment, live GPU counts, allowance, disabled
choices with the refusal's own reason, accessible markup (parsed with html.parser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from afspawner.form import catalog, options_form, options_from_form
from afspawner.loader import load_facility, load_facility_file
from afspawner.pipeline import plan_spawn
from afspawner.plan import UserIdentity
from afspawner.policy import PolicySettings, Refusal, UserContext
from afspawner.quota import Ledger, QuotaRefusal

FAC = load_facility(
    {
        "site": {"name": "catalog test"},
        "vos": {
            "cms": {
                "display": "CMS LPC",
                "quota": {"cpu": 8, "memory": "32Gi", "servers": 4, "gpus": {"t4": 2}},
                "per_user": {"cpu": 4, "memory": "16Gi", "servers": 2},
            },
            "dune": {"display": "DUNE", "quota": {"servers": 3}},
        },
        "gpu_classes": {"t4": {"display": "NVIDIA T4", "resource": "nvidia.com/gpu"}},
        "flavors": [
            {"name": "basic", "display": "Basic", "image": "i", "cpu": 1, "memory": "2Gi"},
            {
                "name": "cms-el9",
                "display": "CMS EL9",
                "vos": ["cms"],
                "image": "i",
                "cpu": 2,
                "memory": "4Gi",
                "default": True,
            },
            {
                "name": "cms-t4",
                "display": "CMS ML (T4)",
                "vos": ["cms"],
                "image": "i",
                "cpu": 2,
                "memory": "8Gi",
                "gpu": {"class": "t4"},
            },
            {
                "name": "dune-sl7",
                "display": "DUNE SL7",
                "vos": ["dune"],
                "image": "i",
                "cpu": 1,
                "memory": "2Gi",
            },
        ],
    }
)
ALICE = UserContext("alice", frozenset(), ("cms",))
CAROL = UserContext("carol", frozenset(), ("cms", "dune"))


@dataclass
class Parsed:
    """What a browser (and a screen reader) gets from the form."""

    legends: list[str] = field(default_factory=list)  # of the groups (outermost fieldsets)
    sublegends: list[str] = field(default_factory=list)  # of a flavor offered per VO
    groups: dict[str, list[dict[str, str | None]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # for → text
    texts: dict[str, str] = field(default_factory=dict)  # element id → text
    ids: list[str] = field(default_factory=list)


class FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.out = Parsed()
        self._fieldsets: list[str] = []  # legends of the open fieldsets, outermost first
        self._in_legend = False
        self._open: list[tuple[str, str]] = []  # (tag, id) of elements collecting text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.out.ids.append(str(a["id"]))
        if tag == "fieldset":
            self._fieldsets.append("")
        elif tag == "legend":
            self._in_legend = True
        elif tag == "input":
            assert self._fieldsets and self._fieldsets[0], "an input outside a legended group"
            self.out.groups.setdefault(self._fieldsets[0], []).append(a)
        if tag == "label" and a.get("for"):
            self.out.labels[str(a["for"])] = ""
        if tag in ("label", "span") and (a.get("for") or a.get("id")):
            self._open.append((tag, str(a.get("for") or a.get("id"))))
            self.out.texts.setdefault(self._open[-1][1], "")
        elif tag in ("label", "span"):
            self._open.append((tag, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "legend":
            self._in_legend = False
            if len(self._fieldsets) == 1:
                self.out.legends.append(self._fieldsets[0])
            else:
                self.out.sublegends.append(self._fieldsets[-1])
        if tag == "fieldset":
            self._fieldsets.pop()
        if tag in ("label", "span") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._in_legend:
            self._fieldsets[-1] += data
        for _, key in self._open:
            if key:
                self.out.texts[key] += data


def parse(html: str) -> Parsed:
    p = FormParser()
    p.feed(html)
    p.close()
    return p.out


def radios(parsed: Parsed) -> list[dict[str, str | None]]:
    return [i for g in parsed.groups.values() for i in g]


def ledger_with(*spawns: tuple[str, str, str]) -> Ledger:
    ledger = Ledger()
    for user, flavor, server in spawns:
        u = CAROL if user == "carol" else UserContext(user, frozenset(), ("cms",))
        ident = UserIdentity(user, 1000, 1000)
        plan = plan_spawn(FAC, PolicySettings(), u, ident, {"flavor": flavor}, server)
        ledger.admit(FAC, plan)
    return ledger


def test_groups_per_experiment_then_the_open_flavors() -> None:
    parsed = parse(options_form(FAC, CAROL, lambda c: 2, Ledger().usage))
    assert parsed.legends == ["CMS LPC", "DUNE", "Open to every experiment"]
    values = {k: [i["value"] for i in v] for k, v in parsed.groups.items()}
    assert values == {
        "CMS LPC": ["cms-el9", "cms-t4"],  # the GPU flavor beside the CPU one
        "DUNE": ["dune-sl7"],
        "Open to every experiment": ["basic/cms", "basic/dune"],  # charged to either VO
    }
    checked = [i["value"] for i in radios(parsed) if "checked" in i]
    assert checked == ["cms-el9"]  # the default flavor
    # a flavor offered per VO: a fieldset named after it, one "charged to" radio per VO
    assert parsed.sublegends == ["Basic"]
    charged = [parsed.texts[str(i["id"])] for i in parsed.groups["Open to every experiment"]]
    assert charged == ["charged to CMS LPC", "charged to DUNE"]
    # one VO: the open flavor needs no VO in its value
    alice = parse(options_form(FAC, ALICE, lambda c: 2, Ledger().usage))
    assert [i["value"] for i in alice.groups["Open to every experiment"]] == ["basic"]
    assert "DUNE" not in alice.legends


def test_every_input_is_a_labelled_radio_described_by_its_details() -> None:
    html = options_form(FAC, CAROL, lambda c: 0, ledger_with(("carol", "cms-el9", "")).usage)
    parsed = parse(html)
    assert len(parsed.ids) == len(set(parsed.ids)), "duplicate ids"
    for field_ in radios(parsed):
        assert field_["type"] == "radio" and field_["name"] == "flavor"
        assert field_["id"] in parsed.labels, f"no <label for> {field_['id']}"
        assert parsed.texts.get(str(field_["id"])), f"empty label for {field_['id']}"
        assert field_["aria-describedby"] in parsed.ids
    assert "<script" not in html  # works without JavaScript


def test_live_gpu_count_and_refuse_mode_disables_with_the_admission_reason() -> None:
    def t4(inputs: Parsed) -> dict[str, str | None]:
        return next(i for i in radios(inputs) if i["value"] == "cms-t4")

    free = parse(options_form(FAC, ALICE, lambda c: 3, Ledger().usage))
    assert "disabled" not in t4(free)
    assert "1 x NVIDIA T4 GPU (3 free now)" in free.texts[str(t4(free)["aria-describedby"])]
    none = parse(options_form(FAC, ALICE, lambda c: 0, Ledger().usage, "refuse"))
    assert "disabled" in t4(none)
    assert (
        "Cannot start now: no NVIDIA T4 GPU is free right now; try again later or pick a "
        "flavor without a GPU" in none.texts[str(t4(none)["aria-describedby"])]
    )
    queued = parse(options_form(FAC, ALICE, lambda c: 0, Ledger().usage, "queue"))
    assert "disabled" not in t4(queued)
    assert "you will wait in a queue" in queued.texts[str(t4(queued)["aria-describedby"])]
    unknown = parse(options_form(FAC, ALICE, lambda c: None, Ledger().usage, "refuse"))
    assert "disabled" not in t4(unknown)


def test_allowance_used_up_disables_with_the_ledgers_own_message() -> None:
    ledger = ledger_with(("alice", "cms-el9", ""), ("alice", "cms-el9", "two"))
    parsed = parse(options_form(FAC, ALICE, lambda c: 1, ledger.usage))
    cms = {i["value"]: i for i in parsed.groups["CMS LPC"]}
    assert all("disabled" in i for i in cms.values())
    with pytest.raises(QuotaRefusal) as refused:
        ledger.admit(
            FAC,
            plan_spawn(
                FAC, PolicySettings(), ALICE, UserIdentity("alice", 1, 1), {"flavor": "cms-t4"}, "3"
            ),
        )
    reason = parsed.texts[str(cms["cms-t4"]["aria-describedby"])]
    assert f"Cannot start now: {refused.value.message}" in reason
    assert "you already run 2/2 servers in VO cms; stop one first" in reason
    # the allowance line of the group
    html = options_form(FAC, ALICE, lambda c: 1, ledger.usage)
    assert 'id="af-allow-cms"' in html
    assert "Your allowance in CMS LPC: 2 of 2 servers · 4 of 4 CPU" in html
    assert "left: 0 servers, 0 CPU, 8Gi memory" in html
    # the open flavor is charged to CMS too: disabled as well; nothing is checked
    assert "disabled" in parsed.groups["Open to every experiment"][0]
    assert not [i for i in radios(parsed) if "checked" in i]
    assert "Nothing you may start can start right now" in html


def test_vo_total_reason() -> None:
    ledger = ledger_with(("bob", "cms-el9", ""), ("dan", "cms-el9", ""), ("eve", "cms-el9", ""))
    parsed = parse(options_form(FAC, ALICE, lambda c: 1, ledger.usage))
    cms = {i["value"]: i for i in parsed.groups["CMS LPC"]}
    assert "disabled" not in cms["cms-el9"] and "checked" in cms["cms-el9"]  # 6 + 2 of 8 CPU
    ledger = ledger_with(*((u, "cms-el9", "") for u in ("bob", "dan", "eve")), ("fay", "basic", ""))
    parsed = parse(options_form(FAC, ALICE, lambda c: 1, ledger.usage))
    cms = {i["value"]: i for i in parsed.groups["CMS LPC"]}
    assert "disabled" in cms["cms-el9"]
    assert (
        "VO cms already runs 4/4 servers; try again later"
        in parsed.texts[str(cms["cms-el9"]["aria-describedby"])]
    )


def test_the_default_moves_to_the_first_choice_that_can_start() -> None:
    ledger = ledger_with(("carol", "cms-el9", ""), ("carol", "cms-el9", "two"))
    parsed = parse(options_form(FAC, CAROL, lambda c: 1, ledger.usage))
    state = {i["value"]: ("disabled" in i, "checked" in i) for i in radios(parsed)}
    assert state == {
        "cms-el9": (True, False),
        "cms-t4": (True, False),
        "dune-sl7": (False, True),
        "basic/cms": (True, False),
        "basic/dune": (False, False),
    }


def test_catalog_is_pure_data() -> None:
    groups = catalog(FAC, CAROL, lambda c: 1, Ledger().usage)
    assert [g.key for g in groups] == ["cms", "dune", ""]
    assert [(c.flavor.name, c.vo) for c in groups[2].choices] == [
        ("basic", "cms"),
        ("basic", "dune"),
    ]
    assert groups[0].allowance[0].text == "0 of 2"
    assert groups[1].allowance[0].limit is None  # DUNE has no per-user cap


def test_a_choice_with_a_vo_posts_flavor_and_vo() -> None:
    assert options_from_form({"flavor": ["basic/dune"]}) == {"flavor": "basic", "vo": "dune"}
    # an explicit vo wins; the composite flavor is then refused by the policy
    assert options_from_form({"flavor": ["basic/dune"], "vo": ["cms"]}) == {
        "flavor": "basic/dune",
        "vo": "cms",
    }


def test_the_fermilab_eaf_catalog_is_grouped_like_its_page() -> None:
    eaf = load_facility_file(
        str(Path(__file__).resolve().parents[2] / "examples/facilities/fermilab-eaf.yaml")
    )
    user = UserContext("maria", frozenset(), ("cms", "dune"))
    parsed = parse(options_form(eaf, user, {"t4": 2, "k40m": 0}.get, Ledger().usage))
    assert parsed.legends == [
        "CMS LPC (USCMS)",
        "LBNF / DUNE / ProtoDUNE",
        "Open to every experiment",
    ]
    cms = {i["value"]: i for i in parsed.groups["CMS LPC (USCMS)"]}
    assert list(cms) == ["cmslpc-sl7", "cmslpc-coffea-dask", "cmslpc-gpu-t4", "cmslpc-gpu-k40m"]
    assert "disabled" in cms["cmslpc-gpu-k40m"] and "disabled" not in cms["cmslpc-gpu-t4"]
    assert "2 free now" in parsed.texts[str(cms["cmslpc-gpu-t4"]["aria-describedby"])]
    assert [i["value"] for i in parsed.groups["Open to every experiment"]] == [
        "basic-sl7/cms",
        "basic-sl7/dune",
        "basic-cc8/cms",
        "basic-cc8/dune",
    ]


@pytest.mark.parametrize(
    ("posted", "refusal"),
    [
        ("cms-el9/dune", "you cannot charge flavor 'cms-el9' to VO 'dune'"),
        ("dune-sl7/cms", "flavor 'dune-sl7' is for members of dune"),
        ("basic/atlas", "you cannot charge flavor 'basic' to VO 'atlas'"),
        ("basic/cms/x", "option 'vo' must be a flavor/VO name"),
    ],
)
def test_forged_choices_are_refused_by_the_policy(posted: str, refusal: str) -> None:
    options = options_from_form({"flavor": [posted]})
    with pytest.raises(Refusal, match=refusal):
        plan_spawn(FAC, PolicySettings(), ALICE, UserIdentity("alice", 1, 1), options)
