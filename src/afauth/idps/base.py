"""The identity-provider plugin interface (entry-point group ``afauth.idps``).

An IdP type declares its options; the authenticator validates each ``idps`` entry against them
at hub start. Two kinds exist: *redirect* IdPs (OIDC: a button on the login page, a flow through
the IdP and a callback) and *password* IdPs (LDAP, dev: a form on the login page).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from afauth.errors import AuthFailure
from afauth.identity import Identity
from afauth.usernames import DEFAULT_MAX_LENGTH
from afcore.options import Option, as_list, check_options, file_problem

#: An IdP's ``name``: its route (``/hub/login/<name>``) and binding key.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

#: Options every IdP accepts, whatever its type.
COMMON_OPTIONS: Mapping[str, Option] = {
    "name": Option("str", required=True, help="route and binding name, e.g. 'cern'"),
    "type": Option("str", required=True, help="IdP type (entry point in afauth.idps)"),
    "display_name": Option("str", help="text of the login button / form heading"),
    "hidden": Option("bool", help="not shown on the login page; /hub/login/<name> still works"),
    "require_groups": Option(
        "str-list", help="the IdP's own groups (any of) a person needs to sign in here"
    ),
}


class IdentityProvider:
    """Base class of IdP plugins. Subclass :class:`RedirectIdP` or :class:`PasswordIdP`."""

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[Literal["redirect", "password"]] = "password"
    options: ClassVar[Mapping[str, Option]] = {}
    #: Values of options the site leaves unset (presets override some); read with :meth:`opt`.
    defaults: ClassVar[Mapping[str, object]] = {}
    #: Insecure types (``dev``) are refused unless the site explicitly allows them.
    insecure: ClassVar[bool] = False
    #: Options naming files that must be readable when the hub starts.
    files: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        log: logging.Logger | None = None,
        max_username_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.config = dict(config)
        self.max_username_length = max_username_length
        self.name: str = str(config["name"])
        self.display_name: str = str(config.get("display_name") or self.default_display_name())
        self.hidden: bool = bool(config.get("hidden", False))
        self.require_groups: frozenset[str] = frozenset(as_list(config.get("require_groups")))
        self.log = log or logging.getLogger(f"afauth.idp.{self.name}")

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def all_options(cls) -> dict[str, Option]:
        return {**COMMON_OPTIONS, **cls.options}

    @classmethod
    def validate(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        """Problems as ``(option key, message)``; empty when ``config`` is valid."""
        problems = check_options(cls.all_options(), config, f"a {cls.type_name} IdP")
        name = config.get("name")
        if isinstance(name, str) and not NAME_RE.fullmatch(name):
            problems.append(
                ("name", f"'{name[:40]}' must be lower-case letters, digits and '-' (≤ 32)")
            )
        if not problems:
            problems.extend(cls.check_combination(config))
        for key in cls.files:
            path = config.get(key)
            problem = file_problem(path) if isinstance(path, str) and path else None
            if problem:
                problems.append((key, problem))
        return problems

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        """Rules across options; override in subclasses."""
        return []

    def opt(self, key: str) -> Any:
        """The configured value of option ``key``, else its default (``None`` if neither)."""
        value = self.config.get(key)
        return self.defaults.get(key) if value is None else value

    def default_display_name(self) -> str:
        return self.name

    # -- lifecycle -----------------------------------------------------------------------------

    async def refresh(self, state: Mapping[str, Any], *, margin: float) -> Identity | None:
        """A fresh identity for the auth_state of an earlier login, or ``None`` if nothing
        needs doing. Raise :class:`AuthFailure` when the person must sign in again."""
        return None

    def check_access(self, identity: Identity) -> None:
        """Refuse identities this IdP must not let in (``require_groups``)."""
        if self.require_groups and not self.require_groups & set(identity.idp_groups):
            need = ", ".join(sorted(self.require_groups))
            raise AuthFailure(
                f"Your {self.display_name} account is not in a group allowed to use this hub "
                f"({need}). Ask the facility administrators for access.",
                detail=f"{identity.username}: not in require_groups of {self.name}",
            )

    async def close(self) -> None:
        """Release connections and threads (hub shutdown, tests)."""


class PasswordIdP(IdentityProvider):
    """An IdP that checks a username and password (a form on the login page)."""

    kind: ClassVar[Literal["redirect", "password"]] = "password"

    async def login(self, username: str, password: str) -> Identity:
        raise NotImplementedError


class RedirectIdP(IdentityProvider):
    """An IdP the browser is sent to (OIDC authorization code flow)."""

    kind: ClassVar[Literal["redirect", "password"]] = "redirect"

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        raise NotImplementedError

    async def complete(
        self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str
    ) -> Identity:
        raise NotImplementedError

    async def end_session_url(self, *, id_token: str | None, post_logout_uri: str) -> str | None:
        """Where to send the browser on hub logout to end the IdP session, if configured."""
        return None
