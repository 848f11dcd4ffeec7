"""POSIX identity of a user's server: from auth_state, a static map, or a persistent pool.

Resolvers are tried in the configured order; if none knows the user the spawn is refused —
there is never a silent fallback to a shared uid (the Purdue "everyone is 1000" failure).
The pool is a JSON file written atomically under a lock; callers run it in a thread.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
