"""uid sources per identity provider and per rule: the pure resolution and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from afcore.issues import ConfigError
from afspawner.policy import Refusal
from afspawner.uid import (
    SOURCES,
    PoolSettings,
    SourceConfig,
    resolve_identity,
    source_config,
    sources_for,
)

CILOGON = {
    "idp": "cilogon",
    "uid": None,
    "gid": None,
    "groups": ["cms"],
    "claims": {"idp": "https://idp.example.edu/idp/shibboleth", "eppn": "x@example.edu"},
}
FNAL = {"idp": "fnal-ldap", "uid": 5001, "gid": 5063, "groups": ["cms", "gpu-approved"]}


def config(by_idp: Any = None, rules: Any = None, pool: bool = True) -> SourceConfig:
    return source_config(
        ["auth_state", "static", "pool"], by_idp or {}, rules or [], pool_configured=pool
    )


def test_default_order_without_per_idp_settings() -> None:
    assert sources_for(config(), FNAL) == SOURCES
    assert sources_for(config(), None) == SOURCES
    assert sources_for(SourceConfig(), CILOGON) == SOURCES


def test_by_idp() -> None:
    cfg = config({"cilogon": ["pool"], "fnal-ldap": ["auth_state"]})
    assert sources_for(cfg, CILOGON) == ("pool",)
    assert sources_for(cfg, FNAL) == ("auth_state",)
    assert sources_for(cfg, {"idp": "cern"}) == SOURCES  # others: the default order
    assert sources_for(cfg, {"idp": ["cilogon"]}) == SOURCES  # not a name


def test_rules_first_match_then_by_idp() -> None:
    cfg = config(
        {"cilogon": ["pool"]},
        [
            # CILogon users whose home institution is the lab keep the lab's uid (static map)
            {
                "idp": "cilogon",
                "claims": {"idp": ["https://idp.fnal.gov/idp/shibboleth"]},
                "sources": ["static", "pool"],
            },
            {"groups": ["service-accounts"], "sources": ["static"]},
            {
                "idp": ["fnal-ldap", "fnal-kca"],
                "claims": {"eppn": "svc@fnal.gov"},
                "sources": ["static"],
            },
        ],
    )
    lab = {**CILOGON, "claims": {"idp": "https://idp.fnal.gov/idp/shibboleth"}}
    assert sources_for(cfg, lab) == ("static", "pool")
    assert sources_for(cfg, CILOGON) == ("pool",)  # no rule: by IdP
    assert sources_for(cfg, {**FNAL, "groups": ["service-accounts"]}) == ("static",)
    assert sources_for(cfg, {**FNAL, "claims": {"eppn": ["a", "svc@fnal.gov"]}}) == ("static",)
    assert sources_for(cfg, {**FNAL, "claims": {"eppn": "other"}}) == SOURCES
    assert sources_for(cfg, {**FNAL, "claims": "junk"}) == SOURCES


def test_every_problem_at_once_with_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        source_config(
            ["auth_state", "ldap"],
            {"cilogon": ["pool", "pool"], "x": [], "y": "static", "z": ["pool"]},
            [
                {"idp": "a"},
                {"sources": ["nope"], "when": 1},
                "junk",
                {"idp": 3, "sources": ["static"]},
            ],
            pool_configured=False,
        )
    found = [str(i).replace("c.AFSpawner.", "") for i in info.value.issues]
    known = "known: auth_state, static, pool"
    assert found == [
        "uid_sources[1]: unknown uid source 'ldap'; " + known,
        "uid_sources_by_idp.cilogon[0]: source 'pool' needs uid_pool_file",
        "uid_sources_by_idp.cilogon[1]: source 'pool' needs uid_pool_file",
        "uid_sources_by_idp.cilogon: a source is listed twice",
        "uid_sources_by_idp.x: at least one source is needed (auth_state, static, pool)",
        "uid_sources_by_idp.y: expected a list, got a string",
        "uid_sources_by_idp.z[0]: source 'pool' needs uid_pool_file",
        "uid_source_rules[0].sources: required",
        "uid_source_rules[1].when: unknown key; allowed: claims, groups, idp, sources",
        "uid_source_rules[1].sources[0]: unknown uid source 'nope'; " + known,
        "uid_source_rules[2]: expected a mapping, got a string",
        "uid_source_rules[3].idp: expected a list, got a number",
    ]
    assert info.value.source == "AFSpawner configuration"


def test_pool_in_the_default_order_needs_no_pool_file() -> None:
    """As before: the default order names the pool, which is skipped without a pool file."""
    assert source_config(["auth_state", "pool"], {}, [], pool_configured=False).default == (
        "auth_state",
        "pool",
    )


def test_resolution_follows_the_chosen_sources(tmp_path: Path) -> None:
    cfg = config({"cilogon": ["pool"], "fnal-ldap": ["auth_state"]})
    pool = PoolSettings(tmp_path / "pool.json", 61000, 61009, 61000)
    # the CILogon user gets a pool account even with a uid in auth_state
    ext = {**CILOGON, "uid": 7, "gid": 7}
    got = resolve_identity("carla", sources_for(cfg, ext), ext, {}, pool)
    assert (got.uid, got.gid) == (61000, 61000)
    # the LDAP user keeps the directory uid, and never gets a pool account
    got = resolve_identity("dana", sources_for(cfg, FNAL), FNAL, {}, pool)
    assert (got.uid, got.gid) == (5001, 5063)
    with pytest.raises(Refusal, match="looked in: auth_state"):
        no_uid = {**FNAL, "uid": None}
        resolve_identity("erin", sources_for(cfg, no_uid), no_uid, {}, pool)
    assert '"dana"' not in (tmp_path / "pool.json").read_text()
