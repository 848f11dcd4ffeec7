"""``AFAuthenticator``: several IdPs on one hub → groups, managed roles, VOs, admin, auth_state.

The traitlets edge: configuration is validated at hub start (:mod:`afauth.config`), IdPs do the
protocol work (:mod:`afauth.idps`), mapping is pure (:mod:`afauth.mapping`) and the auth_state
contract is built by :mod:`afauth.state`. Usage::

    c.JupyterHub.authenticator_class = "af"
    c.AFAuthenticator.idps = [
        {"name": "cern", "type": "cern", "client_id": "...", "client_secret": "..."},
        {"name": "fnal", "type": "ldap", "servers": ["ldaps://ldap.fnal.gov"], ...},
    ]
    c.AFAuthenticator.mapping = [
        {"claim": "wlcg.groups", "match": "/(?P<vo>cms|atlas)(/.*)?", "vo": "{vo}"},
    ]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyterhub import orm
from jupyterhub.auth import Authenticator
from jupyterhub.crypto import CryptKeeper
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import Bool, Dict, Float, Integer, List, Set, Unicode, default

from afauth import exchange, scrub, unattended
from afauth.bindings import Binding, BindingStore
from afauth.config import AuthConfig, build_config
from afauth.errors import AuthFailure
from afauth.handlers import completes_redirect_flow, handlers, set_notice
from afauth.identity import Identity
from afauth.idps import IdentityProvider, PasswordIdP, RedirectIdP
from afauth.mapping import Mapped, map_identity
from afauth.metrics import failure_reason, record_login, tag
from afauth.refresh import REAUTH_KEY, Refreshed, Refresher, RefreshGate, keep_during_outage
from afauth.renewal import Outcome
from afauth.state import build_auth_state, identity_from_state
from afauth.usernames import DEFAULT_MAX_LENGTH
from afcore.issues import ConfigError, ConfigIssue

CRYPT_HELP = (
    "afauth keeps OIDC tokens and uid/gid in auth_state, which JupyterHub must encrypt: set "
    "JUPYTERHUB_CRYPT_KEY (e.g. `openssl rand -hex 32`) in the hub's environment. For a demo "
    "with only the insecure 'dev' IdP, set c.AFAuthenticator.allow_insecure_dev_idp = True."
)


class AFAuthenticator(Authenticator):  # type: ignore[misc]  # jupyterhub is untyped
    """One authenticator, many IdPs (OIDC presets, generic OIDC, LDAP, dev)."""

    idps = List(
        Dict(),
        help="Identity providers: mappings with 'name', 'type' and the type's options.",
    ).tag(config=True)
    mapping = List(Dict(), help="Rules of the built-in 'rules' mapper.").tag(config=True)
    mappers = List(Dict(), help="Extra mapper plugins: [{'type': ..., ...}].").tag(config=True)
    managed_roles = List(
        Dict(), help="Roles granted by mapping rules; '{vo}' in a name → one role per VO."
    ).tag(config=True)
    vos = List(Unicode(), help="Known VOs; mapped VOs outside this list are dropped.").tag(
        config=True
    )
    linked_identities = Dict(
        help="Explicit links: {'alice': ['cern:alice', 'iam:<sub>']} lets each listed identity "
        "sign in as that hub user."
    ).tag(config=True)
    allow_insecure_dev_idp = Bool(False, help="Allow the insecure 'dev' IdP (demos only).").tag(
        config=True
    )
    allowed_idps = Set(help="Anyone signing in through these IdPs is allowed.").tag(config=True)
    allowed_groups = Set(help="Members of these hub groups are allowed.").tag(config=True)
    allowed_vos = Set(help="Members of these VOs are allowed.").tag(config=True)
    blocked_idps = Set(help="Always refused, even with allow_all.").tag(config=True)
    blocked_groups = Set(help="Members of these hub groups are always refused.").tag(config=True)
    blocked_vos = Set(help="Members of these VOs are always refused.").tag(config=True)
    username_max_length = Integer(DEFAULT_MAX_LENGTH, help="Longest hub name.").tag(config=True)
    refresh_margin = Integer(
        600, help="refresh_user renews OIDC tokens expiring within this many seconds."
    ).tag(config=True)
    refresh_running_servers = Bool(
        True,
        help="Renew the OIDC tokens of users with running servers before they expire, whether "
        "or not the user visits the hub, and hand them to the servers.",
    ).tag(config=True)
    refresh_interval = Float(30, help="Seconds between two passes of the token refresher.").tag(
        config=True
    )
    refresh_batch = Integer(200, help="Most users the token refresher renews per pass.").tag(
        config=True
    )
    refresh_concurrency = Integer(8, help="Renewals the token refresher runs at once.").tag(
        config=True
    )
    login_timeout = Integer(600, help="Seconds a started sign-in stays valid.").tag(config=True)
    binding_db = Unicode(help="SQLite file of name bindings; default next to the hub db.").tag(
        config=True
    )

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("manage_roles")
    def _manage_roles_default(self) -> bool:
        return bool(self.managed_roles)

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        return True

    @default("binding_db")
    def _binding_db_default(self) -> str:
        db_url = str(getattr(self.parent, "db_url", "") or "")
        path = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite:///") else ""
        folder = Path(path).parent if path and path != ":memory:" else Path.cwd()
        return str(folder / "afauth-bindings.sqlite")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used_states: dict[str, float] = {}
        self._refresh_gate = RefreshGate()
        self.refresher: Refresher | None = None
        scrub.install()
        #: The validated configuration: IdPs, mappers, managed roles, links, known VOs.
        self.auth_config: AuthConfig = self._build_config(extra_checks=self._check_hub_settings)
        self.bindings = BindingStore(self.binding_db)
        by_user: dict[str, set[tuple[str, str]]] = {}
        for key, name in self.auth_config.links.items():
            by_user.setdefault(name, set()).add(key)
        self._links_by_user = by_user
        for idp in self.auth_config.idps.values():
            if idp.insecure:
                self.log.warning("INSECURE IdP '%s' enabled: anyone can sign in.", idp.name)

    def _check_hub_settings(self, config: AuthConfig, issues: list[ConfigIssue]) -> None:
        insecure_only = bool(config.idps) and all(i.insecure for i in config.idps.values())
        if self.enable_auth_state:
            try:
                CryptKeeper.instance().check_available()
            except Exception as exc:
                if insecure_only and self.allow_insecure_dev_idp:
                    self.log.warning("No JUPYTERHUB_CRYPT_KEY: auth_state disabled (dev demo).")
                    self.set_trait("enable_auth_state", False)
                else:
                    issues.append(ConfigIssue("enable_auth_state", f"{exc}. {CRYPT_HELP}"))
        elif not insecure_only:
            issues.append(ConfigIssue("enable_auth_state", f"must be True. {CRYPT_HELP}"))
        grants_roles = any(r.get("role") or r.get("roles") for r in self.mapping)
        if grants_roles and not self.manage_roles:
            issues.append(ConfigIssue("manage_roles", "mapping rules grant roles: set True"))
        if self.username_max_length < 3 or self.username_max_length > 128:
            issues.append(ConfigIssue("username_max_length", "must be between 3 and 128"))
        if not self.refresh_interval > 0:
            issues.append(ConfigIssue("refresh_interval", "seconds, more than 0"))
        for key in ("refresh_margin", "refresh_batch", "refresh_concurrency"):
            if getattr(self, key) < 1:
                issues.append(ConfigIssue(key, "must be at least 1"))

    def _build_config(self, **extra: Any) -> AuthConfig:
        return build_config(
            idps=self.idps,
            mapping=self.mapping,
            mappers=self.mappers,
            managed_roles=self.managed_roles,
            vos=self.vos,
            linked_identities=self.linked_identities,
            allow_insecure=self.allow_insecure_dev_idp,
            max_username_length=self.username_max_length,
            log=self.log,
            **extra,
        )

    def check_config(self) -> list[ConfigIssue]:
        """Problems of the configuration (empty when valid); for tools and tests."""
        try:
            self._build_config()
        except ConfigError as exc:
            return exc.issues
        return []

    # -- IdPs, routes ----------------------------------------------------------------------------

    def idp(self, name: str) -> IdentityProvider | None:
        return self.auth_config.idps.get(name)

    def visible_idps(self) -> list[IdentityProvider]:
        return [i for i in self.auth_config.idps.values() if not i.hidden]

    def single_password_idp(self) -> PasswordIdP | None:
        found = [i for i in self.visible_idps() if isinstance(i, PasswordIdP)]
        return found[0] if len(found) == 1 else None

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        """The login routes. JupyterHub calls this once, at start, with itself: the token
        refresher of running servers starts here (it reads ``app.users``)."""
        self.start_refresher(app)
        return handlers()

    def login_url(self, base_url: str) -> str:
        visible = self.visible_idps()
        if self.auto_login and len(visible) == 1 and isinstance(visible[0], RedirectIdP):
            return str(url_path_join(base_url, "login", visible[0].name))
        return str(url_path_join(base_url, "login"))

    def used_states(self) -> set[str]:
        now = time.monotonic()
        self._used_states = {s: t for s, t in self._used_states.items() if t > now}
        return set(self._used_states)

    def mark_state_used(self, state: str) -> None:
        self._used_states[state] = time.monotonic() + self.login_timeout + 60

    # -- authentication --------------------------------------------------------------------------

    def _login_idp(self, data: Mapping[str, Any] | None) -> IdentityProvider | None:
        data = data or {}
        return self.idp(str(data.get("idp", ""))) if data.get("idp") else self.single_password_idp()

    async def get_authenticated_user(self, handler: Any, data: Any) -> Any:
        """JupyterHub's sign-in (authenticate, allow/block checks, post-auth hook), counted in
        the ``jupyterhub_af_logins_total`` metrics per IdP and outcome."""
        idp = self._login_idp(data if isinstance(data, Mapping) else None)
        name = idp.name if idp is not None else ""
        try:
            user = await super().get_authenticated_user(handler, data)
        except web.HTTPError as exc:
            record_login(name, exc.status_code, getattr(exc, "af_login_reason", None))
            raise
        record_login(name, None, None if user is not None else "not_allowed")
        return user

    async def authenticate(self, handler: Any, data: Mapping[str, Any] | None) -> dict[str, Any]:
        data = data or {}
        idp = self._login_idp(data)
        if idp is None:
            raise web.HTTPError(400, "Choose an identity provider on the login page.")
        if isinstance(idp, RedirectIdP) and not completes_redirect_flow(handler):
            raise web.HTTPError(400, f"Sign in with {idp.display_name} using its button.")
        stage = "idp"
        try:
            if isinstance(idp, RedirectIdP):
                identity = await idp.complete(
                    code=str(data["code"]),
                    redirect_uri=str(data["redirect_uri"]),
                    code_verifier=str(data["code_verifier"]),
                    nonce=str(data["nonce"]),
                )
            elif isinstance(idp, PasswordIdP):
                identity = await idp.login(
                    str(data.get("username", "")), str(data.get("password", ""))
                )
            else:  # pragma: no cover - the registry only admits the two kinds
                raise AuthFailure("This identity provider cannot sign you in here.")
            stage = "binding"
            identity = await self._bind(identity)
            stage = "access"
            model = self.auth_model(idp, identity, getattr(handler, "db", None))
            return await exchange.with_service_tokens(idp, model)  # afauth.exchange
        except AuthFailure as exc:
            self.log.warning("sign-in via %s refused: %s", idp.name, exc.detail or exc.message)
            error = web.HTTPError(exc.status, exc.message)
            raise tag(error, failure_reason(stage, exc.status)) from None

    async def _bind(self, identity: Identity) -> Identity:
        """Apply links and check the (idp, subject) ↔ name binding; refuse collisions.

        Only checks: the binding is written in :meth:`run_post_auth_hook`, once JupyterHub's
        allow/block checks have passed, so a refused login never takes a name.
        """
        key = (identity.idp, identity.subject)
        linked = self.auth_config.links.get(key)
        username = linked or identity.username
        if linked is None:
            earlier = await self.bindings.find(*key)
            if earlier:  # this person already has a name here: keep it (renames at the IdP)
                username = earlier[0].username
        self._check_binding(await self.bindings.get(username), identity.idp, key, username)
        return dataclasses.replace(identity, username=username)

    def _check_binding(
        self, binding: Binding | None, idp_name: str, key: tuple[str, str], username: str
    ) -> None:
        if binding is None or binding.owns(*key) or key in self._links_by_user.get(username, ()):
            return
        owner = self.idp(binding.idp)
        this = self.idp(idp_name)
        raise AuthFailure(
            f"The hub account '{username}' belongs to someone who signs in with "
            f"{owner.display_name if owner else binding.idp}. You signed in with "
            f"{this.display_name if this else idp_name} as a different person, so you cannot "
            "use it. If both identities are yours, ask the facility administrators to link them.",
            detail=f"name {username!r} is bound to another identity ({binding.idp})",
        )

    async def run_post_auth_hook(self, handler: Any, auth_model: dict[str, Any]) -> Any:
        """After every allow/block check passed: the site's hook, then bind the name."""
        model = await super().run_post_auth_hook(handler, auth_model)
        state = (model or {}).get("auth_state") or auth_model.get("auth_state") or {}
        if state.get("idp") and state.get("subject"):
            key = (str(state["idp"]), str(state["subject"]))
            binding = await self.bindings.claim(auth_model["name"], *key)
            try:  # a concurrent login may have taken the name a moment ago
                self._check_binding(binding, key[0], key, auth_model["name"])
            except AuthFailure as exc:
                raise tag(web.HTTPError(exc.status, exc.message), "binding") from None
        if self.refresher is not None:  # a new login of a user whose servers run
            ticket = state.get("kerberos") or {}  # an LDAP login's Kerberos ticket
            expires_at = state.get("expires_at") or ticket.get("expires_at")
            self.refresher.note(auth_model["name"], expires_at)
        return model

    def map_identity(self, identity: Identity) -> Mapped:
        config = self.auth_config
        mapped, dropped = map_identity(
            config.mappers, identity, vos=config.vos, roles=config.roles.keys()
        )
        for role in sorted(dropped):
            self.log.warning(
                "mapping granted unknown role %r to %s; ignored", role, identity.username
            )
        return mapped

    def _roles(self, names: frozenset[str], admin: bool, db: Any) -> list[dict[str, Any]]:
        """Role specs for JupyterHub's sync_roles, which strips every role not listed: so the
        default ``user`` role (and ``admin`` for admins) is listed as it is in the database."""
        specs: list[dict[str, Any]] = []
        for base in ["user", "admin"] if admin else ["user"]:
            found = orm.Role.find(db, base) if db is not None else None
            specs.append(
                {"name": base, "description": found.description, "scopes": list(found.scopes)}
                if found is not None
                else {"name": base}
            )
        specs.extend(dict(self.auth_config.roles[r]) for r in sorted(names))
        return specs

    def auth_model(
        self, idp: IdentityProvider, identity: Identity, db: Any = None
    ) -> dict[str, Any]:
        """The JupyterHub auth model of an identity that passed its IdP."""
        mapped = self.map_identity(identity)
        identity = dataclasses.replace(
            identity, groups=tuple(sorted(mapped.groups)), vos=tuple(sorted(mapped.vos))
        )
        idp.check_access(identity)
        admin = mapped.admin or identity.username in self.admin_users
        return {
            "name": identity.username,
            "admin": admin,
            "groups": sorted(mapped.groups),
            "roles": self._roles(mapped.roles, admin, db),
            "auth_state": build_auth_state(identity),
        }

    # -- allow / block ---------------------------------------------------------------------------

    def _facts(self, authentication: Mapping[str, Any] | None) -> tuple[str, set[str], set[str]]:
        model = authentication or {}
        state = model.get("auth_state") or {}
        return (
            str(state.get("idp", "")),
            set(model.get("groups") or []),
            set(state.get("vos") or []),
        )

    def check_blocked_users(self, username: str, authentication: Any = None) -> bool:
        if not super().check_blocked_users(username, authentication):
            return False
        idp, groups, vos = self._facts(authentication)
        reason = ""
        if idp and idp in self.blocked_idps:
            reason = "sign-in through this identity provider is disabled"
        elif groups & self.blocked_groups:
            reason = f"members of {', '.join(sorted(groups & self.blocked_groups))} are blocked"
        elif vos & self.blocked_vos:
            reason = f"members of VO {', '.join(sorted(vos & self.blocked_vos))} are blocked"
        if reason:
            self.log.warning("blocked %s: %s", username, reason)
            raise tag(web.HTTPError(403, f"You cannot use this hub: {reason}."), "blocked")
        return True

    def check_allowed(self, username: str, authentication: Any = None) -> bool:
        if super().check_allowed(username, authentication):
            return True
        idp, groups, vos = self._facts(authentication)
        return (
            idp in self.allowed_idps
            or bool(groups & self.allowed_groups)
            or bool(vos & self.allowed_vos)
        )

    # -- refresh, roles --------------------------------------------------------------------------

    async def refresh_user(self, user: Any, handler: Any = None) -> Refreshed:
        """Renew tokens before they expire and re-evaluate groups, roles, VOs and access.

        One refresh per user at a time (:class:`afauth.refresh.RefreshGate`): with rotating
        refresh tokens, a second concurrent renewal would present the already-used token;
        it gets the result of the first instead.
        """
        if not self.enable_auth_state:
            return True
        notice: list[str] = []

        async def refresh(state: Mapping[str, Any]) -> Refreshed:
            if state.get(REAUTH_KEY):  # the refresher found the session revoked
                notice.append(str(state[REAUTH_KEY]))
                return False
            return await self._refresh(user, state)

        result = await self._refresh_gate.run(user.name, user.get_auth_state, refresh)
        if result is False:
            self._refused_refresh(user, handler, notice[0] if notice else "")
        elif isinstance(result, dict) and self.refresher is not None:
            self.refresher.note(user.name, result["auth_state"].get("expires_at"))
        return result

    def _refused_refresh(self, user: Any, handler: Any, notice: str) -> None:
        """Before JupyterHub sends the person to the login page: avoid its traceback, and
        leave the login page a message when the token refresher ended the session."""
        if handler is None:
            return
        if not hasattr(handler, "_token_authenticated"):
            # JupyterHub 6.1.1 BaseHandler.refresh_auth reads self._token_authenticated, which
            # only token-authenticated requests set: a refused refresh of a cookie-authenticated
            # request would log "'HomeHandler' object has no attribute '_token_authenticated'".
            handler._token_authenticated = False
        if notice and getattr(handler, "_jupyterhub_user", None) is user:
            set_notice(handler, notice)

    async def _refresh(self, user: Any, state: Mapping[str, Any]) -> Refreshed:
        idp = self.idp(str(state.get("idp", "")))
        if idp is None:
            self.log.warning("%s: IdP %r is no longer configured", user.name, state.get("idp"))
            return False
        try:
            fresh = await idp.refresh(state, margin=self.refresh_margin)
            identity = identity_from_state(state) if fresh is None else fresh
            model = self.auth_model(idp, dataclasses.replace(identity, username=user.name), user.db)
            if not self.check_blocked_users(user.name, model):
                return False
            model = await exchange.with_service_tokens(idp, model, state)  # new token: new ones
        except AuthFailure as exc:
            if keep_during_outage(exc.status, state.get("expires_at"), time.time()):
                self.log.warning("refresh of %s postponed: %s", user.name, exc.detail)
                return True  # the IdP is down; what we have is still valid
            self.log.warning("refresh of %s refused: %s", user.name, exc.detail or exc.message)
            return False
        except web.HTTPError as exc:
            self.log.warning("refresh of %s refused: %s", user.name, exc.get_message())
            return False
        if not (self.allow_all or self.check_allowed(user.name, model)):
            return False
        return model

    # -- the tokens of running servers (afauth.unattended) ---------------------------------------

    def start_refresher(self, app: Any) -> Refresher | None:
        """Start the token refresher of running servers (``refresh_running_servers``) on
        ``app``, the JupyterHub application (its ``users`` and their ``spawners``)."""
        if not (self.refresh_running_servers and self.enable_auth_state):
            return None
        if self.refresher is None:
            self.refresher = unattended.refresher(self, app)
        self.refresher.start()
        return self.refresher

    async def renew_for_servers(self, user: Any) -> Outcome:
        """Renew ``user``'s tokens now for its running servers (see :mod:`afauth.unattended`)."""
        return await unattended.renew_for_servers(self, user)

    async def load_managed_roles(self) -> list[dict[str, Any]]:
        if not self.manage_roles:
            raise ValueError("Managed roles can only be loaded when `manage_roles` is True")
        return [dict(role) for role in self.auth_config.roles.values()]
