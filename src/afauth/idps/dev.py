"""The insecure ``dev`` IdP for demos and local testing: anyone may sign in as anyone.

The authenticator refuses to start with it unless ``allow_insecure_dev_idp = True``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from afauth.errors import AuthFailure
from afauth.identity import Identity
from afauth.idps.base import PasswordIdP
from afauth.usernames import normalise_username
from afcore.options import Option

USER_KEYS = frozenset({"groups", "claims", "uid", "gid"})


class Dev(PasswordIdP):
    """Demo users from config (``users``), optionally anyone (``allow_any_user``)."""

    type_name: ClassVar[str] = "dev"
    description: ClassVar[str] = "INSECURE demo sign-in (no real password check)"
    insecure: ClassVar[bool] = True
    options: ClassVar[Mapping[str, Option]] = {
        "users": Option("mapping", help="name → {groups, claims, uid, gid}"),
        "allow_any_user": Option("bool", help="also accept names not in 'users'"),
        "password": Option("secret", help="one shared demo password (default: none needed)"),
    }

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.users: dict[str, dict[str, Any]] = {
            str(k): dict(v or {}) for k, v in (config.get("users") or {}).items()
        }

    def default_display_name(self) -> str:
        return "Demo sign-in (insecure)"

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        users = config.get("users") or {}
        assert isinstance(users, Mapping)
        for name, entry in users.items():
            if entry is None:
                continue
            if not isinstance(entry, Mapping):
                problems.append((f"users.{name}", "expected a mapping (groups, claims, uid, gid)"))
                continue
            for key in entry:
                if key not in USER_KEYS:
                    allowed = ", ".join(sorted(USER_KEYS))
                    problems.append((f"users.{name}.{key}", f"unknown key; allowed: {allowed}"))
        if not users and not config.get("allow_any_user"):
            problems.append(("users", "give demo users or set allow_any_user: true"))
        return problems

    async def login(self, username: str, password: str) -> Identity:
        expected = self.config.get("password")
        if expected and not hmac.compare_digest(str(expected).encode(), password.encode()):
            raise AuthFailure("Invalid username or password.", detail="dev: wrong password")
        entry = self.users.get(username)
        if entry is None and not self.config.get("allow_any_user"):
            raise AuthFailure("Unknown demo user.", detail="dev: user not configured")
        entry = entry or {}
        groups = [str(g) for g in entry.get("groups", [])]
        claims = {"username": username, "groups": groups, **dict(entry.get("claims") or {})}
        uid, gid = entry.get("uid"), entry.get("gid")
        return Identity(
            idp=self.name,
            subject=username,
            username=normalise_username(username, max_length=self.max_username_length),
            uid=uid if isinstance(uid, int) else None,
            gid=gid if isinstance(gid, int) else None,
            idp_groups=tuple(groups),
            claims=MappingProxyType(claims),
        )
