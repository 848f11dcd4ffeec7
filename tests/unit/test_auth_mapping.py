"""Mapping rules: claims / LDAP attributes → hub groups, managed roles, VOs, admin (pure)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afauth.identity import Identity
from afauth.mapping import (
    GROUP_NAME,
    ROLE_NAME,
    VO_NAME,
    Mapped,
    Mapper,
    RulesMapper,
    apply_rules,
    claim_values,
    lookup,
    map_identity,
    mapper_types,
    parse_rules,
)

WLCG = {
    "claim": "wlcg.groups",
    "match": "^/(?P<vo>cms|atlas)(/.*)?$",
    "vo": "{vo}",
    "group": "{vo}",
}


def ident(idp: str = "iam", **claims: Any) -> Identity:
    return Identity(idp=idp, subject="s", username="u", claims=MappingProxyType(claims))


def rules(*raw: dict[str, Any]) -> list[Any]:
    parsed, issues = parse_rules(list(raw))
    assert not issues, issues
    return parsed


def mapped(raw: list[dict[str, Any]], identity: Identity) -> Mapped:
    return apply_rules(rules(*raw), identity)


# -- lookup ------------------------------------------------------------------------------------


def test_lookup_prefers_keys_with_dots_and_walks_nested_paths() -> None:
    claims = {
        "wlcg.groups": ["/cms"],
        "resource_access": {"af-hub": {"roles": ["admin"]}, "other.app": {"roles": ["x"]}},
        "a": {"b.c": 1},
    }
    assert lookup(claims, "wlcg.groups") == [["/cms"]]
    assert lookup(claims, "resource_access.af-hub.roles") == [["admin"]]
    assert lookup(claims, "resource_access.other.app.roles") == [["x"]]
    assert lookup(claims, "a.b.c") == [1]
    assert lookup(claims, "missing") == []
    assert lookup(claims, "wlcg.groups.x") == []
    assert lookup("not a mapping", "x") == []


def test_claim_values_flatten_scalars_and_lists_skip_mappings() -> None:
    claims = {"l": ["a", 1, True, {"x": 1}, ["nested"]], "b": False, "n": None, "d": {"k": "v"}}
    assert claim_values(claims, "l") == ["a", "1", "true", "nested"]
    assert claim_values(claims, "b") == ["false"]
    assert claim_values(claims, "n") == []
    assert claim_values(claims, "d") == []


def test_claim_values_are_bounded() -> None:
    claims = {"many": [str(i) for i in range(5000)], "long": ["x" * 5000, "ok"]}
    assert len(claim_values(claims, "many")) == 1000
    assert claim_values(claims, "long") == ["ok"]


# -- rules ---------------------------------------------------------------------------------------


def test_wlcg_groups_to_vos_and_groups() -> None:
    got = mapped([WLCG], ident(**{"wlcg.groups": ["/cms", "/cms/uscms", "/dune"]}))
    assert got == Mapped(groups=frozenset({"cms"}), vos=frozenset({"cms"}))


def test_match_must_cover_the_whole_value() -> None:
    rule = {"claim": "groups", "match": "cms", "vo": "cms"}
    assert mapped([rule], ident(groups=["notcms", "cms-x"])).vos == frozenset()
    assert mapped([rule], ident(groups=["cms"])).vos == {"cms"}


def test_value_rules_and_admin() -> None:
    rule = {"claim": "cern_roles", "value": "admin", "admin": True}
    assert mapped([rule], ident(cern_roles=["default-role", "admin"])).admin
    assert not mapped([rule], ident(cern_roles=["administrator"])).admin
    assert not mapped([rule], ident()).admin


def test_value_list_and_non_string_values() -> None:
    rule = {"claim": "affiliation", "value": ["staff", "faculty"], "group": "ucsd-{value}"}
    assert mapped([rule], ident(affiliation=["faculty"])).groups == {"ucsd-faculty"}
    flag = {"claim": "is_admin", "value": True, "admin": True}
    assert mapped([flag], ident(is_admin=True)).admin
    assert not mapped([flag], ident(is_admin="yes")).admin


def test_presence_rule_ignores_empty_and_false() -> None:
    rule = {"claim": "gpu_ok", "group": "gpu-approved"}
    assert mapped([rule], ident(gpu_ok="yes")).groups == {"gpu-approved"}
    assert mapped([rule], ident(gpu_ok=False)).groups == frozenset()
    assert mapped([rule], ident(gpu_ok="")).groups == frozenset()


def test_idp_filter_and_claimless_rules() -> None:
    every_fnal = {"idp": "fnal", "group": "fermilab"}
    only_iam = {"idp": ["iam"], **WLCG}
    assert mapped([every_fnal, only_iam], ident("fnal", **{"wlcg.groups": ["/cms"]})) == Mapped(
        groups=frozenset({"fermilab"})
    )
    assert mapped([every_fnal, only_iam], ident("iam", **{"wlcg.groups": ["/cms"]})).vos == {"cms"}


def test_ldap_posix_groups_to_vos() -> None:
    rule = {"claim": "posix_groups", "match": "cms|dune", "vo": "{value}"}
    got = mapped([rule], ident("fnal", posix_groups=["cms", "us_cms", "dune"]))
    assert got.vos == {"cms", "dune"}


def test_roles_from_templates_and_several_outputs() -> None:
    rule = {
        "claim": "wlcg.groups",
        "match": "/(?P<vo>cms|atlas)/af-admins",
        "roles": ["vo-manager-{vo}", "af-staff"],
        "groups": ["{vo}-admins", "staff"],
    }
    got = mapped([rule], ident(**{"wlcg.groups": ["/cms/af-admins"]}))
    assert got.roles == {"vo-manager-cms", "af-staff"}
    assert got.groups == {"cms-admins", "staff"}


def test_rendered_names_that_are_invalid_are_dropped() -> None:
    rule = {"claim": "g", "match": "(?P<x>.*)", "group": "{x}", "vo": "{x}", "role": "r-{x}"}
    got = mapped([rule], ident(g=["/cms/uscms", "ok", "UPPER", "a b", "ok2\n"]))
    assert got.groups == {"ok", "UPPER"}
    assert got.vos == {"ok"}
    assert got.roles == {"r-ok"}


def test_optional_named_group_renders_empty() -> None:
    rule = {"claim": "g", "match": "/(?P<vo>cms)(?P<sub>/.*)?", "group": "{vo}{sub}"}
    assert mapped([rule], ident(g=["/cms"])).groups == {"cms"}


def test_unicode_lookalikes_do_not_match() -> None:
    rule = {"claim": "cern_roles", "value": "admin", "admin": True}
    assert not mapped(
        [rule], ident(cern_roles=["\uff41\uff44\uff4d\uff49\uff4e", "adm\u0131n", "admin\u200b"])
    ).admin


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        ({"claim": "x", "matc": "y", "group": "g"}, "mapping[0].matc", "unknown key"),
        ({"claim": "x", "match": "(", "group": "g"}, "mapping[0].match", "invalid regex"),
        ({"claim": "x", "match": "a", "value": "a", "group": "g"}, "mapping[0]", "either"),
        ({"value": "a", "group": "g"}, "mapping[0].claim", "required"),
        ({"group": "g"}, "mapping[0]", "needs a 'claim' or an 'idp'"),
        ({"claim": "x"}, "mapping[0]", "needs an output"),
        ({"claim": "x", "group": "{vo}"}, "mapping[0].group", "unknown placeholder '{vo}'"),
        ({"claim": "x", "match": "(?P<v>a)", "vo": "{v!r}"}, "mapping[0].vo", "format"),
        ({"claim": "x", "group": "{"}, "mapping[0].group", "not a valid template"),
        ({"claim": "x", "vo": "CMS"}, "mapping[0].vo", "not a valid vo name"),
        ({"claim": "x", "role": "A"}, "mapping[0].role", "not a valid role name"),
        ({"claim": "x", "groups": ["ok", 3.5]}, "mapping[0].groups[1]", "non-empty string"),
        ({"claim": "x", "admin": "yes"}, "mapping[0].admin", "true or false"),
        ({"claim": "", "group": "g"}, "mapping[0].claim", "non-empty"),
        ("not a mapping", "mapping[0]", "expected a mapping"),
    ],
)
def test_validation_reports_key_paths(rule: Any, path: str, message: str) -> None:
    parsed, issues = parse_rules([rule])
    assert parsed == []
    assert any(i.path == path and message in i.message for i in issues), issues


def test_validation_collects_every_problem() -> None:
    _, issues = parse_rules([WLCG, {"claim": "x"}, {"claim": "y", "match": "("}, 7])
    assert [i.path for i in issues] == ["mapping[1]", "mapping[2].match", "mapping[3]"]


def test_not_a_list() -> None:
    assert parse_rules({"claim": "x"})[1][0].path == "mapping"
    assert parse_rules(None) == ([], [])


# -- mapper plugins --------------------------------------------------------------------------


def test_rules_mapper_is_registered_and_works() -> None:
    cls = mapper_types().load("rules")
    assert cls is RulesMapper
    mapper = cls({"type": "rules", "rules": [WLCG]})
    assert mapper.map(ident(**{"wlcg.groups": ["/atlas"]})).vos == {"atlas"}
    assert mapper.role_templates() == []
    issues = RulesMapper.validate({"type": "rules", "rulez": []}, "mappers[0]")
    assert issues[0].path == "mappers[0].rulez"


def test_base_mapper_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError):
        Mapper({}).map(ident())


# -- properties ------------------------------------------------------------------------------

claim_value = st.one_of(
    st.text(max_size=30), st.integers(), st.booleans(), st.lists(st.text(max_size=12), max_size=5)
)
claims_strategy = st.dictionaries(
    st.sampled_from(["wlcg.groups", "groups", "cern_roles", "posix_groups", "x"]), claim_value
)
rules_strategy = st.lists(
    st.sampled_from(
        [
            WLCG,
            {"claim": "groups", "match": "(?P<g>[a-z]+)", "group": "{g}", "vo": "{g}"},
            {"claim": "cern_roles", "value": "admin", "admin": True},
            {"claim": "posix_groups", "match": ".*", "role": "r-{value}"},
            {"idp": "iam", "group": "iam-users"},
        ]
    ),
    max_size=5,
)


@given(rules_strategy, claims_strategy, st.sampled_from(["iam", "cern", "fnal"]))
def test_outputs_are_always_valid_names(raw: list[Any], claims: Any, idp: str) -> None:
    got = apply_rules(rules(*raw), ident(idp, **claims))
    assert all(GROUP_NAME.fullmatch(g) for g in got.groups)
    assert all(VO_NAME.fullmatch(v) for v in got.vos)
    assert all(ROLE_NAME.fullmatch(r) for r in got.roles)


@given(rules_strategy, rules_strategy, claims_strategy)
def test_rules_are_a_union_order_does_not_matter(a: list[Any], b: list[Any], claims: Any) -> None:
    identity = ident("iam", **claims)
    together = apply_rules(rules(*a, *b), identity)
    assert together == apply_rules(rules(*a), identity).merge(apply_rules(rules(*b), identity))
    assert together == apply_rules(rules(*b, *a), identity)


@given(claims_strategy)
def test_no_rules_no_privileges(claims: Any) -> None:
    assert apply_rules([], ident("iam", **claims)) == Mapped()


def test_map_identity_merges_mappers_and_keeps_known_vos_and_managed_roles() -> None:
    first = RulesMapper(
        {"rules": [WLCG, {"claim": "wlcg.groups", "value": "/cms", "role": "cms-x"}]}
    )
    second = RulesMapper({"rules": [{"idp": "iam", "vo": "dune", "role": "ghost"}]})
    identity = ident("iam", **{"wlcg.groups": ["/cms", "/atlas"]})
    mapped, dropped = map_identity([first, second], identity, vos={"cms", "dune"}, roles={"cms-x"})
    assert mapped.vos == {"cms", "dune"} and mapped.groups == {"cms", "atlas"}
    assert mapped.roles == {"cms-x"} and dropped == {"ghost"}
    unfiltered, _ = map_identity([first, second], identity, vos=(), roles=())
    assert unfiltered.vos == {"cms", "atlas", "dune"} and unfiltered.roles == frozenset()
