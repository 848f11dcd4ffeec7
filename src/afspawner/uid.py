"""POSIX identity of a user's server: from auth_state, a static map, or a persistent pool.

Which sources, in which order, may depend on the login (:func:`sources_for`: the first
matching rule, else the IdP's own list, else the default order), so that users of an external
IdP get pool accounts while directory users keep their uid.
Resolvers are tried in that order; if none knows the user the spawn is refused —
there is never a silent fallback to a shared uid (the Purdue "everyone is 1000" failure).
The pool is a JSON file written atomically under a lock; callers run it in a thread.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from afcore.issues import Checker, ConfigError, join_path
from afspawner.facility import frozen_map
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal

MAX_ID = 2**31 - 1


def _valid_id(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_ID else None


def from_auth_state(username: str, auth_state: Mapping[str, object] | None) -> UserIdentity | None:
    """uid/gid carried by the authenticator (LDAP uidNumber/gidNumber, SSO claims)."""
    if not auth_state:
        return None
    uid, gid = _valid_id(auth_state.get("uid")), _valid_id(auth_state.get("gid"))
    if uid is None or gid is None:
        return None
    raw_extra = auth_state.get("supplemental_gids") or []
    extra = tuple(g for g in (raw_extra if isinstance(raw_extra, list) else []) if _valid_id(g))
    return UserIdentity(username, uid, gid, extra)


def load_static_map(path: Path) -> dict[str, UserIdentity]:
    """``{"alice": {"uid": 50001, "gid": 5063, "groups": [5064]}}`` (JSON or YAML)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of user name to {{uid, gid}}")
    out: dict[str, UserIdentity] = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: {name}: expected {{uid, gid}}")
        uid, gid = _valid_id(entry.get("uid")), _valid_id(entry.get("gid"))
        if uid is None or gid is None:
            raise ValueError(f"{path}: {name}: uid and gid must be whole numbers in 0..{MAX_ID}")
        groups = entry.get("groups") or []
        if not isinstance(groups, list) or any(_valid_id(g) is None for g in groups):
            raise ValueError(f"{path}: {name}.groups: expected a list of gids")
        out[str(name)] = UserIdentity(str(name), uid, gid, tuple(groups))
    return out


@dataclass(frozen=True)
class PoolSettings:
    path: Path
    first_uid: int
    last_uid: int
    gid: int


def pool_identity(username: str, pool: PoolSettings) -> UserIdentity:
    """The user's pool account, allocating the lowest free uid once; refuses when exhausted.

    Blocking (file lock + fsync): call it from a thread.
    """
    pool.path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = pool.path.with_suffix(pool.path.suffix + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            assigned: dict[str, int] = {}
            if pool.path.exists():
                loaded = json.loads(pool.path.read_text() or "{}")
                assigned = {str(k): int(v) for k, v in loaded.items()}
            if username not in assigned:
                used = set(assigned.values())
                free = next(
                    (u for u in range(pool.first_uid, pool.last_uid + 1) if u not in used), None
                )
                if free is None:
                    raise Refusal(
                        f"the account pool ({pool.first_uid}-{pool.last_uid}) is exhausted; "
                        "ask your facility to enlarge it — no shared fallback uid is used"
                    )
                assigned[username] = free
                tmp = pool.path.with_suffix(".tmp")
                with open(tmp, "w") as fh:
                    json.dump(assigned, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, pool.path)
            return UserIdentity(username, assigned[username], pool.gid)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_identity(
    username: str,
    order: Sequence[str],
    auth_state: Mapping[str, object] | None,
    static: Mapping[str, UserIdentity],
    pool: PoolSettings | None,
) -> UserIdentity:
    """Try each source in ``order`` (``auth_state``, ``static``, ``pool``); refuse if none."""
    for source in order:
        found: UserIdentity | None = None
        if source == "auth_state":
            found = from_auth_state(username, auth_state)
        elif source == "static":
            found = static.get(username)
        elif source == "pool" and pool is not None:
            found = pool_identity(username, pool)
        if found is not None:
            return found
    raise Refusal(
        f"no POSIX account is known for '{username}' (looked in: {', '.join(order)}); "
        "ask your facility to register your uid/gid"
    )


# -- which sources, per identity provider ---------------------------------------------------

SOURCES = ("auth_state", "static", "pool")
_RULE_KEYS = {"idp", "groups", "claims", "sources"}


@dataclass(frozen=True)
class SourceRule:
    """Sources for the users a rule matches: every given condition must hold.

    ``idps``: the login's IdP is one of them; ``groups``: the user is in one of these hub
    groups (auth_state ``groups``); ``claims``: each named claim of the login (auth_state
    ``claims``) has, or contains, one of the values. No condition: every user.
    """

    sources: tuple[str, ...]
    idps: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: frozen_map({}))

    def matches(self, auth_state: Mapping[str, object]) -> bool:
        if self.idps and auth_state.get("idp") not in self.idps:
            return False
        if self.groups and not set(_texts(auth_state.get("groups"))) & set(self.groups):
            return False
        raw_claims = auth_state.get("claims")
        claims = raw_claims if isinstance(raw_claims, Mapping) else {}
        return all(set(_texts(claims.get(k))) & set(v) for k, v in self.claims.items())


@dataclass(frozen=True)
class SourceConfig:
    """``uid_source_rules`` (first match), then ``uid_sources_by_idp``, then ``uid_sources``."""

    default: tuple[str, ...] = SOURCES
    by_idp: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: frozen_map({}))
    rules: tuple[SourceRule, ...] = ()


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def sources_for(config: SourceConfig, auth_state: Mapping[str, object] | None) -> tuple[str, ...]:
    """The uid sources, in order, for the user of this login (pure)."""
    state = auth_state or {}
    for rule in config.rules:
        if rule.matches(state):
            return rule.sources
    idp = state.get("idp")
    if isinstance(idp, str) and idp in config.by_idp:
        return config.by_idp[idp]
    return config.default


def _sources(c: Checker, raw: object, path: str, pool: bool | None) -> tuple[str, ...]:
    names = c.strings(raw, path)
    if isinstance(raw, list) and not raw:
        c.err(path, "at least one source is needed (auth_state, static, pool)")
    for i, name in enumerate(names):
        if name not in SOURCES:
            c.err(f"{path}[{i}]", f"unknown uid source {name!r}; known: {', '.join(SOURCES)}")
        elif name == "pool" and pool is False:
            c.err(f"{path}[{i}]", "source 'pool' needs c.AFSpawner.uid_pool_file")
    if len(set(names)) != len(names):
        c.err(path, "a source is listed twice")
    return names


def _one_or_many(c: Checker, raw: object, path: str) -> tuple[str, ...]:
    """A string or a list of strings."""
    if isinstance(raw, str):
        one = c.string(raw, path)
        return (one,) if one else ()
    return c.strings(raw, path)


def _rule(c: Checker, raw: object, path: str, pool: bool) -> SourceRule | None:
    data = c.mapping(raw, path, _RULE_KEYS, {"sources"})
    if data is None or "sources" not in data:
        return None
    raw_claims = data.get("claims", {})
    names = set(raw_claims) if isinstance(raw_claims, Mapping) else set()
    claims = {
        claim: _one_or_many(c, values, join_path(f"{path}.claims", claim))
        for claim, values in (c.mapping(raw_claims, f"{path}.claims", names) or {}).items()
    }
    return SourceRule(
        _sources(c, data["sources"], f"{path}.sources", pool),
        _one_or_many(c, data["idp"], f"{path}.idp") if "idp" in data else (),
        c.strings(data["groups"], f"{path}.groups") if "groups" in data else (),
        frozen_map(claims),
    )


def source_config(
    default: Sequence[str],
    by_idp: Mapping[str, object],
    rules: Sequence[object],
    pool_configured: bool,
) -> SourceConfig:
    """Check ``uid_sources``, ``uid_sources_by_idp`` and ``uid_source_rules``; every problem at
    once (ConfigError naming ``c.AFSpawner.<key>``). ``pool`` in the default order is skipped
    without a pool file (as before); named by an IdP or a rule, it needs one."""
    c = Checker()
    base = _sources(c, list(default), "c.AFSpawner.uid_sources", None)
    per_idp: dict[str, tuple[str, ...]] = {}
    for idp, raw in by_idp.items():
        path = join_path("c.AFSpawner.uid_sources_by_idp", str(idp))
        per_idp[str(idp)] = _sources(
            c, list(raw) if isinstance(raw, tuple) else raw, path, pool_configured
        )
    parsed = [
        _rule(c, raw, f"c.AFSpawner.uid_source_rules[{i}]", pool_configured)
        for i, raw in enumerate(rules)
    ]
    if c.issues:
        raise ConfigError(c.issues, "AFSpawner configuration")
    return SourceConfig(base, frozen_map(per_idp), tuple(r for r in parsed if r is not None))
