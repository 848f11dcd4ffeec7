"""Facility loading and validation: valid files, broken files, every error with its key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from afspawner.loader import FacilityError, load_facility, load_facility_file, parse_facility_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "facilities"

BASE: dict[str, Any] = {
    "vos": {
        "cms": {
            "quota": {"cpu": 400, "memory": "1600Gi", "servers": 200, "gpus": {"t4": 8}},
            "per_user": {"cpu": 8, "memory": "32Gi", "servers": 5},
        },
        "dune": {"quota": {"cpu": 100}},
    },
    "gpu_classes": {
        "t4": {
            "resource": "nvidia.com/gpu",
            "selector": {"nvidia.com/gpu.product": "Tesla-T4"},
            "max_per_user": 1,
            "groups": ["gpu-approved"],
        },
        "a100-3g.20gb": {"resource": "nvidia.com/mig-3g.20gb"},
        "shared": {"resource": "nvidia.com/gpu.shared"},
    },
    "volumes": {
        "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
        "ceph": {
            "type": "cephfs",
            "claim": "ceph-cms",
            "sub_path": "store/user/{username}",
            "mount": "/ceph/cms/store/user/{username}",
        },
        "eos": {"type": "eos", "mount": "/eos"},
    },
    "flavors": [
        {
            "name": "cms-el9",
            "vos": ["cms"],
            "image": "img",
            "cpu": 2,
            "memory": "8Gi",
            "volumes": ["cvmfs", "ceph", "eos"],
        },
        {
            "name": "cms-t4",
            "vos": ["cms"],
            "image": "img",
            "cpu": "500m",
            "memory": "4Gi",
            "gpu": {"class": "t4"},
        },
        {"name": "open", "image": "img", "cpu": 1, "memory": "1Gi"},
    ],
}


def errors_of(data: object) -> list[str]:
    with pytest.raises(FacilityError) as info:
        load_facility(data)
    return [str(i) for i in info.value.issues]


def variant(path: str, value: object) -> dict[str, Any]:
    """A copy of BASE with one key (dotted path, list indexes as numbers) replaced."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def test_valid_facility_loads_into_typed_data() -> None:
    fac = load_facility(BASE)
    assert set(fac.vos) == {"cms", "dune"}
    cms = fac.vos["cms"]
    assert cms.quota.cpu_millis == 400_000
    assert cms.quota.memory_bytes == 1600 * 2**30
    assert cms.quota.gpus == {"t4": 8}
    assert cms.per_user.servers == 5
    assert fac.gpu_classes["t4"].sharing == "whole"
    assert fac.gpu_classes["a100-3g.20gb"].sharing == "mig"
    assert fac.gpu_classes["shared"].sharing == "time-sliced"
    assert fac.volumes["cvmfs"].read_only  # CVMFS is always read-only
    assert not fac.volumes["ceph"].read_only
    flavor = fac.flavor("cms-t4")
    assert flavor is not None and flavor.gpu is not None
    assert (flavor.cpu_millis, flavor.gpu.gpu_class, flavor.gpu.count) == (500, "t4", 1)
    assert [f.name for f in fac.flavors_for_vo("dune")] == ["open"]


def test_loaded_data_is_immutable() -> None:
    fac = load_facility(BASE)
    with pytest.raises(TypeError):
        fac.vos["x"] = fac.vos["cms"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        fac.flavors[0].image = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "flavors.1.gpu",
            {"class": "v100"},
            "flavors[1].gpu.class: unknown GPU class 'v100'; defined: a100-3g.20gb, shared, t4",
        ),
        ("flavors.0.memory", "8GG", "flavors[0].memory: '8GG' is not a Kubernetes quantity"),
        ("flavors.0.vos", ["cms", "atlas"], "flavors[0].vos[1]: unknown VO 'atlas'"),
        ("flavors.0.volumes", ["cvmfs", "nope"], "flavors[0].volumes[1]: unknown volume 'nope'"),
        ("flavors.0.image", DELETE, "flavors[0].image: required"),
        ("flavors.0.colour", "red", "flavors[0].colour: unknown key"),
        ("flavors.0.name", "CMS EL9", "flavors[0].name: 'CMS EL9' is not a valid flavor name"),
        (
            "flavors.2.name",
            "cms-el9",
            "flavors[2].name: duplicate flavor name 'cms-el9' (first at flavors[0])",
        ),
        ("flavors.0.cpu", 16, "flavors[0].cpu: exceeds the per-user CPU cap of VO cms"),
        ("flavors.0.cpu", 0, "flavors[0].cpu: must be more than 0"),
        ("flavors.0.cpu_limit", "1", "flavors[0].cpu_limit: must not be below cpu"),
        ("flavors.0.env", {"1BAD": "x"}, "flavors[0].env.1BAD: not a valid environment variable"),
        (
            "flavors.1.gpu",
            {"class": "t4", "count": 2},
            "flavors[1].gpu.count: 2 exceeds t4.max_per_user (1)",
        ),
        ("flavors.1.gpu", {"class": "t4", "count": 0}, "flavors[1].gpu.count: must be between 1"),
        ("vos.cms.quota.gpus", {"v100": 2}, "vos.cms.quota.gpus.v100: unknown GPU class 'v100'"),
        ("vos.cms.quota.cpu", "lots", "vos.cms.quota.cpu: 'lots' is not a Kubernetes quantity"),
        ("vos.cms.per_user", {"cpu": 500}, "vos.cms.per_user.cpu: exceeds the VO total"),
        ("vos.cms.namespace", "AF_CMS", "vos.cms.namespace: 'AF_CMS' is not a valid namespace"),
        ("vos.cms.quota.servers", -1, "vos.cms.quota.servers: must be between 0"),
        ("vos.cms.quota.servers", True, "vos.cms.quota.servers: expected a whole number"),
        (
            "gpu_classes.t4.resource",
            "gpu",
            "gpu_classes.t4.resource: 'gpu' is not a valid extended resource name",
        ),
        ("gpu_classes.t4.resource", DELETE, "gpu_classes.t4.resource: required"),
        (
            "gpu_classes.t4.selector",
            {"nvidia.com/gpu.product": 5},
            "gpu_classes.t4.selector.'nvidia.com/gpu.product': label value must be a string",
        ),
        (
            "gpu_classes.t4.tolerations",
            [{"key": "gpu", "effect": "Sometimes"}],
            "gpu_classes.t4.tolerations[0].effect: must be NoSchedule",
        ),
        ("volumes.cvmfs.type", "nfs", "volumes.cvmfs.type: unknown volume type 'nfs'; installed:"),
        ("volumes.cvmfs.mode", "csi", "volumes.cvmfs.claim: required when mode is csi"),
        ("volumes.cvmfs.mount", "cvmfs", "volumes.cvmfs.mount: must be an absolute path"),
        ("volumes.ceph.claim", DELETE, "volumes.ceph.claim: required for a cephfs volume"),
        ("volumes.ceph.sub_path", "../../etc", "volumes.ceph.sub_path: must be relative and stay"),
        ("volumes.ceph.mount", "/ceph/{user}", "volumes.ceph.mount: unknown placeholder '{user}'"),
        ("volumes.ceph.mount", "/ceph/{username!r}", "must not carry a format"),
        (
            "volumes.eos.host_path",
            "relative",
            "volumes.eos.host_path: host_path must be an absolute path",
        ),
        ("volumes.eos.speed", "fast", "volumes.eos.speed: unknown option for a eos volume"),
        ("flavors", [], "flavors: at least one flavor is needed"),
        ("flavors", {"a": 1}, "flavors: expected a list, got a mapping"),
        ("vos", ["cms"], "vos: expected a mapping of names, got a list"),
    ],
)
def test_broken_facility_reports_key_path(path: str, value: object, expected: str) -> None:
    errors = errors_of(variant(path, value))
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    data = variant("flavors.0.memory", "8GG")
    data["flavors"][1]["gpu"] = {"class": "v100"}
    data["volumes"]["cvmfs"]["type"] = "nfs"
    errors = errors_of(data)
    assert len(errors) == 3, errors


def test_two_defaults_refused() -> None:
    data = copy.deepcopy(BASE)
    data["flavors"][0]["default"] = True
    data["flavors"][2]["default"] = True
    assert errors_of(data) == [
        "flavors[2].default: only one flavor may be the default (also flavors[0])"
    ]


@pytest.mark.parametrize("top", [None, [], "flavors", 3])
def test_top_level_must_be_a_mapping(top: object) -> None:
    assert errors_of(top)[0].startswith("expected a mapping")


def test_unknown_top_level_key() -> None:
    data = copy.deepcopy(BASE)
    data["flavours"] = []
    allowed = "flavors, gpu_classes, idle, site, volumes, vos"
    assert f"flavours: unknown key; allowed: {allowed}" in errors_of(data)


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(FacilityError) as info:
        parse_facility_text("flavors:\n  - name: a\n   image: [\n")
    assert "not valid YAML: line" in str(info.value)


def test_yaml_aliases_and_tags_are_safe() -> None:
    with pytest.raises(FacilityError):
        parse_facility_text("flavors: !!python/object/apply:os.system ['true']\n")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FacilityError, match="cannot read"):
        load_facility_file(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(FacilityError, match="larger than"):
        load_facility_file(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00flavors")
    with pytest.raises(FacilityError, match="not UTF-8"):
        load_facility_file(binary)


def test_error_message_names_source(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump(variant("flavors.0.memory", "8GG")))
    with pytest.raises(FacilityError) as info:
        load_facility_file(f)
    assert str(info.value).startswith(f"{f} has 1 error(s):")


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    fac = load_facility_file(example)
    assert fac.flavors


def test_a_gpu_flavor_no_vo_of_it_has_quota_for_is_an_error() -> None:
    data = copy.deepcopy(BASE)
    data["flavors"].append(
        {
            "name": "cms-a100",
            "vos": ["cms"],
            "image": "img",
            "cpu": 1,
            "memory": "1Gi",
            "gpu": {"class": "a100-3g.20gb"},
        }
    )
    with pytest.raises(FacilityError) as info:
        load_facility(data)
    assert [str(i) for i in info.value.issues] == [
        f"flavors[{len(data['flavors']) - 1}].gpu.class: no VO of this flavor (cms) lists "
        "'a100-3g.20gb' in quota.gpus, so none may use it; add it there or remove the gpus map"
    ]
    data["vos"]["cms"]["quota"]["gpus"]["a100-3g.20gb"] = 2
    assert load_facility(data).flavor("cms-a100") is not None
