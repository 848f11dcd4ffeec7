"""User-chosen images end to end without peers: the facility keys, the policy, the form, the CLI."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from afspawner.cli import main
from afspawner.form import options_form, options_from_form
from afspawner.loader import FacilityError, load_facility, load_facility_file
from afspawner.pipeline import plan_spawn
from afspawner.plan import UserIdentity
from afspawner.policy import PolicySettings, Refusal, SpawnOptions, UserContext, resolve
from afspawner.policy import parse_options as parse
from integration.spawnkit import facility as spawn_facility

ROOT = Path(__file__).resolve().parents[2]
LEAP = ROOT / "examples" / "facilities" / "leap-pangeo.yaml"
SHA = "sha256:" + "ab" * 32
PANGEO = "quay.io/pangeo/pangeo-notebook:2023.05.08"
ML = "quay.io/pangeo/ml-notebook:2023.05.08"


def fac_with(image_choice: Any, image: str = PANGEO) -> Any:
    data = spawn_facility()
    data["flavors"].append(
        {
            "name": "pangeo",
            "display": "Pangeo",
            "vos": ["cms"],
            "image": image,
            "image_choice": image_choice,
            "cpu": 1,
            "memory": "2Gi",
        }
    )
    return load_facility(data)


FAC = fac_with(
    {
        "choices": [{"image": ML, "display": "Pangeo ML"}, "quay.io/pangeo/pytorch-notebook:1"],
        "allow": ["quay.io/pangeo/*", "docker.io/library/python:3.1*"],
    }
)
ALICE = UserContext("alice", frozenset(), ("cms",))
IDENT = UserIdentity("alice", 50001, 5063)


def plan(**options: Any) -> Any:
    return plan_spawn(FAC, PolicySettings(), ALICE, IDENT, {"flavor": "pangeo", **options})


# -- facility keys -------------------------------------------------------------------------------


def issues(image_choice: Any, image: str = PANGEO) -> list[str]:
    with pytest.raises(FacilityError) as failed:
        fac_with(image_choice, image)
    return [str(i) for i in failed.value.issues]


@pytest.mark.parametrize(
    ("image_choice", "image", "expected"),
    [
        (
            {"allow": ["quay.io/x/*"]},
            "Quay.io/X",
            "flavors[7].image: image has an invalid registry 'Quay.io'",
        ),
        (
            {"allow": ["quay.io/x/*", "*/pangeo/*"]},
            PANGEO,
            "flavors[7].image_choice.allow[1]: write the registry out, without wildcards",
        ),
        ({"allow": "quay.io/*"}, PANGEO, "flavors[7].image_choice.allow: expected a list"),
        (
            {"allow": ["quay.io/x/*"], "tags": ["v1", "bad tag"]},
            PANGEO,
            "flavors[7].image_choice.tags[1]: 'bad tag' is not a tag pattern",
        ),
        (
            {"choices": [ML, {"image": "quay.io/a b"}]},
            PANGEO,
            "flavors[7].image_choice.choices[1].image: image may not contain spaces",
        ),
        (
            {"choices": [{"display": "x"}]},
            PANGEO,
            "flavors[7].image_choice.choices[0].image: required",
        ),
        (
            {"choices": [ML, "quay.io/pangeo/ml-notebook:2023.05.08"]},
            PANGEO,
            "flavors[7].image_choice.choices[1]: names the same image as an earlier choice",
        ),
        (
            {"allow": ["quay.io/x/*"], "require_digest": "yes"},
            PANGEO,
            "flavors[7].image_choice.require_digest: expected true or false",
        ),
        ({"allow": [], "colour": 1}, PANGEO, "flavors[7].image_choice.colour: unknown key"),
        ({}, PANGEO, "flavors[7].image_choice: give choices"),
        (
            {"choices": [ML], "require_digest": True},
            PANGEO,
            "flavors[7].image_choice: tags and require_digest apply to typed images",
        ),
        ("quay.io/*", PANGEO, "flavors[7].image_choice: expected a mapping, got a string"),
    ],
)
def test_facility_keys_are_checked_with_their_key_path(
    image_choice: Any, image: str, expected: str
) -> None:
    found = issues(image_choice, image)
    assert any(i.startswith(expected) for i in found), found


def test_flavor_images_are_checked_everywhere() -> None:
    data = spawn_facility()
    data["flavors"][0]["image"] = "cms/EL9:1"
    with pytest.raises(FacilityError) as failed:
        load_facility(data)
    assert [str(i) for i in failed.value.issues] == [
        "flavors[0].image: image: the repository must be lower-case ('EL9')"
    ]


def test_the_flavors_image_is_the_first_choice() -> None:
    choice = FAC.flavor("pangeo").image_choice
    assert [p.image for p in choice.presets] == [PANGEO, ML, "quay.io/pangeo/pytorch-notebook:1"]
    assert [p.display for p in choice.presets][:2] == [PANGEO, "Pangeo ML"]
    listed = fac_with({"choices": [ML, {"image": PANGEO, "display": "Default"}]})
    assert [p.display for p in listed.flavor("pangeo").image_choice.presets] == ["Default", ML]


def test_the_leap_example_models_the_seed_picker() -> None:
    fac = load_facility_file(LEAP)
    for flavor in fac.flavors:
        choice = flavor.image_choice
        assert choice is not None and len(choice.presets) == 3
        assert [p.text for p in choice.allow] == ["quay.io/**", "ghcr.io/**", "docker.io/**"]
    assert "Not modelled" not in LEAP.read_text()


# -- policy --------------------------------------------------------------------------------------


def test_every_server_gets_its_image_as_jupyter_image_spec() -> None:
    for p, image in (
        (plan(), PANGEO),
        (plan(image=ML), ML),
        (plan_spawn(FAC, PolicySettings(), ALICE, IDENT, {"flavor": "cms-el9"}), "cms/el9:1"),
    ):
        assert p.image == image
        assert p.env["JUPYTER_IMAGE_SPEC"] == image == p.env["JUPYTER_IMAGE"]


@pytest.mark.parametrize(
    ("asked", "runs"),
    [
        ("quay.io/pangeo/xarray:2024.1", "quay.io/pangeo/xarray:2024.1"),
        ("quay.io/pangeo/xarray", "quay.io/pangeo/xarray:latest"),
        ("python:3.12", "docker.io/library/python:3.12"),
        (f"quay.io/pangeo/x@{SHA}", f"quay.io/pangeo/x@{SHA}"),
        # a preset spelled another way runs as the site wrote it
        ("quay.io/pangeo/pytorch-notebook:1", "quay.io/pangeo/pytorch-notebook:1"),
    ],
)
def test_allowed_typed_images_run_in_canonical_form(asked: str, runs: str) -> None:
    p = plan(image=asked)
    assert p.image == runs and p.env["JUPYTER_IMAGE_SPEC"] == runs


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"image": "quay.io/evil/miner"}, 403, "image 'quay.io/evil/miner:latest' is not allowed"),
        ({"image": "quay.io/pangeo/a/b"}, 403, "is not allowed here; allowed: quay.io/pangeo/*"),
        ({"image": "python:2.7"}, 403, "(flavor 'pangeo')"),
        ({"image": "quay.io/pangeo/X"}, 400, "option 'image' is not a valid image reference"),
        ({"image": "quay.io/pangeo/x "}, 400, "may not contain spaces"),
        ({"image": "https://quay.io/pangeo/x"}, 400, "is not a URL"),
        ({"image": 7}, 400, "image must be a string"),
        ({"image": ["a", "b"]}, 400, "image must be a string"),
        ({"image": ":other"}, 400, "you picked 'Other...' for the image but typed no image"),
        (
            {"flavor": "cms-el9", "image": "quay.io/pangeo/x"},
            400,
            "flavor 'cms-el9' does not let you choose an image",
        ),
    ],
)
def test_forged_or_disallowed_images_are_refused(
    options: dict[str, Any], status: int, message: str
) -> None:
    with pytest.raises(Refusal) as refused:
        plan(**options)
    assert refused.value.status == status
    assert message in refused.value.message


def test_a_flavor_without_choice_accepts_its_own_image() -> None:
    p = plan_spawn(FAC, PolicySettings(), ALICE, IDENT, {"flavor": "cms-el9", "image": "cms/el9:1"})
    assert p.image == "cms/el9:1"
    p = plan_spawn(
        FAC,
        PolicySettings(),
        ALICE,
        IDENT,
        {"flavor": "cms-el9", "image": "docker.io/cms/el9:1"},
    )
    assert p.image == "cms/el9:1"


def test_a_choice_flavor_without_allow_offers_its_presets_only() -> None:
    fac = fac_with({"choices": [ML]})
    user = UserContext("alice", frozenset(), ("cms",))
    assert resolve(fac, user, SpawnOptions("pangeo", image=ML), IDENT).image == ML
    with pytest.raises(Refusal, match="is not one of the choices") as refused:
        resolve(fac, user, SpawnOptions("pangeo", image="quay.io/pangeo/other:1"), IDENT)
    assert refused.value.status == 403


def test_tags_and_digests_restrict_typed_images() -> None:
    fac = fac_with({"allow": ["quay.io/pangeo/*"], "tags": ["2023.*"], "require_digest": True})
    user = UserContext("alice", frozenset(), ("cms",))
    ok = f"quay.io/pangeo/x:2023.05.08@{SHA}"
    assert resolve(fac, user, SpawnOptions("pangeo", image=ok), IDENT).image == ok
    for bad, why in (
        ("quay.io/pangeo/x:2023.05.08", "must be pinned by digest"),
        (f"quay.io/pangeo/x:2024.1@{SHA}", "must have one of the tags 2023.*"),
    ):
        with pytest.raises(Refusal) as refused:
            resolve(fac, user, SpawnOptions("pangeo", image=bad), IDENT)
        assert why in refused.value.message and refused.value.status == 403
    assert parse({"image": ""}) == SpawnOptions()


# -- form ----------------------------------------------------------------------------------------


class Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labels: dict[str, str] = {}
        self._label: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input":
            self.inputs.append(a)
        if tag == "label":
            self._label = a.get("for")
            self.labels[str(self._label)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label = None

    def handle_data(self, data: str) -> None:
        if self._label is not None:
            self.labels[self._label] += data


def test_the_form_offers_presets_and_a_labelled_other_input() -> None:
    html = options_form(FAC, ALICE, lambda c: 1)
    parsed = Inputs()
    parsed.feed(html)
    picker = [i for i in parsed.inputs if str(i.get("name", "")).endswith("@pangeo")]
    radios = [i for i in picker if i["type"] == "radio"]
    assert [r["value"] for r in radios] == [
        PANGEO,
        ML,
        "quay.io/pangeo/pytorch-notebook:1",
        ":other",
    ]
    assert all(r["name"] == "image@pangeo" for r in radios)
    assert "checked" in radios[0] and all("checked" not in r for r in radios[1:])
    assert parsed.labels[str(radios[-1]["id"])] == "Other..."
    [text] = [i for i in picker if i["type"] == "text"]
    assert text["name"] == "image_other@pangeo"
    assert "Image reference" in parsed.labels[str(text["id"])]
    assert "Allowed: quay.io/pangeo/*, docker.io/library/python:3.1*" in html
    ids = [i["id"] for i in parsed.inputs]
    assert len(ids) == len(set(ids))
    # flavors without a choice have no picker
    assert not any("@cms-el9" in str(i.get("name")) for i in parsed.inputs)


def test_the_form_sends_the_chosen_flavors_pick_only() -> None:
    form = {
        "flavor": ["pangeo"],
        "image@pangeo": [":other"],
        "image_other@pangeo": ["  quay.io/pangeo/xarray:1\r\n"],
        "image@other-flavor": ["quay.io/evil/x"],
        "image_other@other-flavor": ["x"],
    }
    assert options_from_form(form) == {"flavor": "pangeo", "image": "quay.io/pangeo/xarray:1"}
    form["image@pangeo"] = [ML]
    assert options_from_form(form) == {"flavor": "pangeo", "image": ML}
    assert options_from_form({"flavor": ["pangeo"], "image@pangeo": [":other"]}) == {
        "flavor": "pangeo",
        "image": ":other",
    }
    assert options_from_form({"flavor": ["cms-el9"], "image@pangeo": [ML]}) == {"flavor": "cms-el9"}
    typed = options_from_form(form | {"image@pangeo": [":other"]})
    assert plan(**{k: v for k, v in typed.items() if k != "flavor"}).image == (
        "quay.io/pangeo/xarray:1"
    )


# -- afhub render --------------------------------------------------------------------------------


def render(*extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["render", str(LEAP), "--user", "ann", "--vos", "leap", "--flavor", "pangeo-small"]
    code = main([*argv, "--uid", "1000", "--gid", "100", *extra], out, err)
    return code, out.getvalue(), err.getvalue()


def test_afhub_render_takes_an_image() -> None:
    code, out, err = render("--image", "ghcr.io/leap-stc/project:v1")
    assert code == 0, err
    pod = list(yaml.safe_load_all(out))[-1]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/leap-stc/project:v1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JUPYTER_IMAGE_SPEC"] == "ghcr.io/leap-stc/project:v1"
    code, out, err = render("--image", "evil.example/miner:1")
    assert code == 2 and out == ""
    assert "refused (403): image 'evil.example/miner:1' is not allowed here" in err


def test_resolve_refuses_a_malformed_image_given_directly() -> None:
    with pytest.raises(Refusal, match="not a valid image reference") as refused:
        resolve(FAC, ALICE, SpawnOptions("pangeo", image="Evil Image"), IDENT)
    assert refused.value.status == 400
