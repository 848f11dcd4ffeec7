"""IdP type ``oauthenticator``: any oauthenticator class as one IdP among several.

Sites reuse oauthenticator for providers that are not OpenID Connect (GitHub with organisation
and team membership, GitLab, Google, Azure AD, Globus, any OAuth 2 provider through the generic
class) inside the hub's multi-IdP login page, bindings, mapping rules and refresh::

    {"name": "github", "type": "oauthenticator", "class": "github",
     "options": {"client_id": "...", "client_secret": "...", "scope": ["read:org"],
                 "allowed_organizations": ["leap-stc:leap-pangeo-base-access"],
                 "populate_teams_in_auth_state": True}}

``options`` are the wrapped class's traitlets, checked at hub start. The wrapped instance's own
steps do the provider work: the authorization/token URLs and scopes, ``get_token_info`` (code
exchange), ``token_to_user``, ``user_info_to_username``, ``build_auth_state_dict``,
``update_auth_model`` (GitHub teams, Google and Globus groups), ``check_blocked_users``/
``check_allowed`` (the IdP's gate, like ``require_groups``) and ``refresh_user``. Its handlers are
not used: the hub's (``afauth.handlers``) keep the state, PKCE verifier and ``next``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Mapping
from inspect import isawaitable
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlencode

from tornado import web
from tornado.httpclient import HTTPClientError

from afauth.errors import AuthFailure
from afauth.identity import Identity, Tokens
from afauth.idps.base import RedirectIdP
from afauth.idps.oauth_support import (
    GROUP_KEYS,
    UnknownClass,
    check_options,
    default_groups,
    email_verified,
    resolve_class,
    restricts_access,
    subject_claim,
)
from afauth.mapping import lookup
from afauth.usernames import normalise_username
from afcore.options import Option, url_problem

T = TypeVar("T")
PLACEHOLDER_SECRET = "secret-from-client_secret_file"  # noqa: S105 - only while validating


def build_wrapped(cls: type[Any], config: Mapping[str, Any], secret: str | None, log: Any) -> Any:
    """An instance of the oauthenticator class ``cls`` configured by ``config["options"]``.

    It always keeps group information (``manage_groups``; the hub's groups still come from the
    mapping rules), and lets everyone in unless the site set one of its ``allowed_*`` options.
    """
    options = dict(config.get("options") or {})
    settings: dict[str, Any] = {"manage_groups": True, "enable_auth_state": True}
    if not restricts_access(options):
        settings["allow_all"] = True
    if not any(key in options for key in GROUP_KEYS):
        user_key = str(cls.user_auth_state_key)
        settings["auth_state_groups_key"] = functools.partial(default_groups, user_key=user_key)
    if secret is not None:
        options["client_secret"] = secret
    if log is not None:
        settings["log"] = log
    wrapped = cls(**{**settings, **options})
    if _lists_github_orgs(wrapped):
        wrapped.modify_auth_state_hook = _with_github_orgs(wrapped.modify_auth_state_hook)
    return wrapped


def _lists_github_orgs(wrapped: Any) -> bool:
    """GitHub with teams in auth_state and ``read:org``: organisations are listed too."""
    return (
        hasattr(wrapped, "github_api")
        and bool(getattr(wrapped, "populate_teams_in_auth_state", False))
        and "read:org" in wrapped.scope
    )


def _with_github_orgs(site_hook: Any) -> Any:
    """A ``modify_auth_state_hook`` (oauthenticator's documented place for extra requests
    before groups are read) that adds ``organizations`` (``/user/orgs``: organisations the
    person belongs to, with or without a team), then runs the site's own hook, if any."""

    async def hook(authenticator: Any, auth_state: dict[str, Any]) -> Any:
        token = auth_state.get("token_response") or {}
        response = await authenticator.httpfetch(
            f"{authenticator.github_api}/user/orgs?per_page=100",
            "fetching user organizations",
            parse_json=False,
            raise_error=False,
            method="GET",
            headers=authenticator.build_userdata_request_headers(
                token.get("access_token", ""), token.get("token_type", "bearer")
            ),
            validate_cert=authenticator.validate_server_cert,
        )
        orgs: list[dict[str, str]] = []
        if response.code == 200:
            payload = json.loads(response.body or b"[]")
            for org in payload if isinstance(payload, list) else []:
                if isinstance(org, dict) and isinstance(org.get("login"), str):
                    orgs.append({"login": org["login"]})
        else:  # not fatal: organisations then come from the teams only
            authenticator.log.warning("GitHub /user/orgs answered HTTP %s", response.code)
        auth_state["organizations"] = orgs
        return await _maybe(site_hook(authenticator, auth_state)) if site_hook else auth_state

    return hook


class _StateHolder:
    """What ``OAuthenticator.refresh_user`` reads of a hub user: a name and its auth_state."""

    def __init__(self, name: str, state: Mapping[str, Any]) -> None:
        self.name = name
        self._state = dict(state)

    async def get_auth_state(self) -> dict[str, Any]:
        return self._state


class OAuthenticatorIdP(RedirectIdP):
    """One oauthenticator class, wrapped (``type: oauthenticator``)."""

    type_name: ClassVar[str] = "oauthenticator"
    description: ClassVar[str] = "an oauthenticator class (GitHub, GitLab, Google, ...)"
    files: ClassVar[tuple[str, ...]] = ("client_secret_file",)
    options: ClassVar[Mapping[str, Option]] = {
        "class": Option("str", required=True, help="github, gitlab, google, ... or module:Class"),
        "options": Option("mapping", help="traitlets config of the wrapped class"),
        "client_secret_file": Option("path", help="file holding the client secret"),
        "redirect_uri": Option("url", help="default: <hub>/hub/login/<name>/callback"),
        "subject_claim": Option("str", help="user info key of the stable id (binding subject)"),
        "refresh": Option("bool", help="re-read the user and groups in refresh_user (true)"),
    }
    defaults: ClassVar[Mapping[str, object]] = {"refresh": True}

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        self.wrapped_class = resolve_class(str(config["class"]))
        super().__init__(config, **kwargs)
        self.wrapped = build_wrapped(self.wrapped_class, self.config, None, self.log)
        self.subject_claim = subject_claim(self.wrapped_class, self.config.get("subject_claim"))
        self._secret_loaded = not self.config.get("client_secret_file")

    def _client(self) -> Any:
        """The wrapped instance, with the secret of ``client_secret_file`` read on first use."""
        if not self._secret_loaded:
            with open(str(self.config["client_secret_file"]), encoding="utf-8") as f:
                self.wrapped.client_secret = f.read().strip()
            self._secret_loaded = True
        return self.wrapped

    def default_display_name(self) -> str:
        return str(getattr(self.wrapped_class, "__name__", "OAuth")).removesuffix("OAuthenticator")

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        try:
            wrapped_class = resolve_class(str(config["class"]))
        except UnknownClass as exc:
            return [("class", str(exc))]
        options = config.get("options") or {}
        assert isinstance(options, Mapping)
        problems = check_options(wrapped_class, options)
        if config.get("client_secret_file") and "client_secret" in options:
            problems.append(("client_secret_file", "give options.client_secret or the file"))
        if problems:
            return problems
        secret = PLACEHOLDER_SECRET if config.get("client_secret_file") else None
        try:
            wrapped = build_wrapped(wrapped_class, config, secret, None)
        except Exception as exc:  # traitlets cross-checks: TraitError, ValueError, ...
            return [("options", f"{wrapped_class.__name__} refuses these options: {exc}"[:400])]
        return _check_instance(wrapped)

    # -- the flow ------------------------------------------------------------------------------

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        w = self._client()
        params = {str(k): str(v) for k, v in dict(w.extra_authorize_params).items()}
        params.update(
            {"response_type": "code", "client_id": w.client_id, "redirect_uri": redirect_uri}
        )
        if w.scope:
            params["scope"] = " ".join(w.scope)
        params["state"] = state
        if w.enable_pkce:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        endpoint = str(w.authorize_url)
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def complete(
        self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str
    ) -> Identity:
        w = self._client()
        params: dict[str, Any] = {
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
        }
        if w.enable_pkce:
            params["code_verifier"] = code_verifier
        if not w.basic_auth:
            params.update(client_id=w.client_id, client_secret=w.client_secret)
        params.update(w.token_params)
        token_info = await self._call("sign-in code", w.get_token_info(None, params))
        return await self._finish(await self._auth_model(token_info))

    async def _auth_model(self, token_info: dict[str, Any]) -> dict[str, Any]:
        """The wrapped class's own steps from a token response to its auth model."""
        w = self.wrapped
        user_info = await self._call("user info", w.token_to_user(token_info))
        if not isinstance(user_info, dict):
            raise self._unreachable("user info", "not a JSON object")
        try:
            name = w.normalize_username(w.user_info_to_username(user_info))
            auth_state = await _maybe(w.build_auth_state_dict(token_info, user_info))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._no_user(exc) from None
        if w.modify_auth_state_hook is not None:
            hook = _maybe(w.modify_auth_state_hook(w, auth_state))
            auth_state = await self._call("user details", hook)
        model = {"name": name, "admin": None, "auth_state": auth_state}
        model = await self._call("user details", w.update_auth_model(model))
        groups = await self._call("groups", _maybe(w.get_user_groups(model["auth_state"])))
        model["groups"] = sorted(str(g) for g in groups)
        return dict(model)

    async def _finish(self, model: dict[str, Any]) -> Identity:
        """The gate (the wrapped class's block and allow checks), then the identity."""
        w, name = self.wrapped, str(model["name"])
        try:
            blocked = not await _maybe(w.check_blocked_users(name, model))
            allowed = not blocked and await w.check_allowed(name, model)
        except web.HTTPError as exc:
            raise AuthFailure(
                f"{self.display_name} sign-in refused: {exc.log_message or 'not allowed'}"[:300],
                detail=f"{name}: refused by {w.__class__.__name__} ({exc.status_code})",
            ) from None
        if not allowed:
            raise AuthFailure(
                f"Your {self.display_name} account is not allowed on this hub (it is not in an "
                "allowed organisation, team or group). Ask the facility administrators.",
                detail=f"{name}: not allowed by {w.__class__.__name__}",
            )
        return self.identity_from_model(model)

    def identity_from_model(self, model: Mapping[str, Any]) -> Identity:
        """An :class:`Identity` from the wrapped class's auth model (pure)."""
        w = self.wrapped
        state: Mapping[str, Any] = model["auth_state"]
        user: Mapping[str, Any] = state.get(w.user_auth_state_key) or {}
        subject = next((v for v in lookup(user, self.subject_claim) if _scalar(v)), None)
        if subject is None:
            raise AuthFailure(
                f"{self.display_name} did not give a stable account id. Please tell the facility "
                "administrators.",
                detail=f"no '{self.subject_claim}' in the user info",
            )
        verified = email_verified(user)
        if getattr(w, "username_claim", None) == "email" and not verified:
            raise AuthFailure(
                f"{self.display_name} has not verified your email address, which this hub uses "
                "as your user name. Verify it there, then sign in again.",
                detail="email used as username but it is not verified",
            )
        username = normalise_username(model["name"], max_length=self.max_username_length)
        groups = [str(g) for g in model.get("groups") or ()]
        response = state.get("token_response") or {}
        claims = {
            **user,
            "groups": groups,
            "oauth": {"token_type": response.get("token_type"), "scope": state.get("scope")},
        }
        lifetime = _seconds(response.get("expires_in"))
        expires_at = time.time() + lifetime if lifetime is not None else None
        tokens = Tokens(
            access_token=str(state["access_token"]),
            refresh_token=state.get("refresh_token") or None,
            id_token=state.get("id_token") or None,
            expires_at=expires_at,
        )
        email, name = user.get("email"), user.get("name")
        return Identity(
            idp=self.name,
            subject=str(subject),
            username=username,
            email=email if verified and isinstance(email, str) else None,
            email_verified=verified,
            idp_groups=tuple(groups),
            claims=MappingProxyType(claims),
            tokens=tokens,
            display_name=name if isinstance(name, str) else None,
        )

    # -- refresh -------------------------------------------------------------------------------

    async def refresh(self, state: Mapping[str, Any], *, margin: float) -> Identity | None:
        """Renew with the refresh token when the access token expires within ``margin``;
        otherwise re-read the user and groups with the wrapped class's ``refresh_user`` (it
        uses the refresh token itself when the provider refuses the access token)."""
        expires_at, now = _seconds(state.get("expires_at")), time.time()
        expired = expires_at is not None and expires_at < now
        refresh_token = state.get("refresh_token")
        if not state.get("access_token") or (expired and not refresh_token):
            raise AuthFailure(
                f"Your {self.display_name} session has expired. Please sign in again.",
                detail="access token expired and no refresh token",
            )
        if not self.opt("refresh"):
            return None
        w = self._client()
        if refresh_token and expires_at is not None and expires_at - now <= margin:
            params = w.build_refresh_token_request_params(refresh_token)
            token_info = await self._call("session renewal", w.get_token_info(None, params))
            if not token_info.get("refresh_token"):  # not rotated: keep the one we have
                token_info["refresh_token"] = refresh_token
            return await self._finish(await self._auth_model(token_info))
        meta = (state.get("claims") or {}).get("oauth") or {}
        token_response = {
            "access_token": state["access_token"],
            "token_type": meta.get("token_type") or "bearer",
            "refresh_token": refresh_token,
            "id_token": state.get("id_token"),
            "scope": " ".join(meta.get("scope") or []),
        }
        holder = _StateHolder(
            str(state.get("username")),
            {"token_response": token_response, "refresh_token": refresh_token},
        )
        model = await self._call("session renewal", w.refresh_user(holder))
        if not model:
            raise AuthFailure(
                f"{self.display_name} no longer accepts your session. Please sign in again.",
                detail="refresh_user of the wrapped class returned False",
            )
        return await self._finish(dict(model))

    # -- errors --------------------------------------------------------------------------------

    async def _call(self, what: str, step: Awaitable[T]) -> T:
        """Await a step of the wrapped class; its errors become :class:`AuthFailure` (503
        when the provider is unreachable). Error texts are not echoed: oauthenticator puts
        token responses into some of them."""
        try:
            return await step
        except HTTPClientError as exc:
            if exc.code >= 500 or exc.code == 599:
                raise self._unreachable(what, f"HTTP {exc.code}") from None
            self.log.warning("%s: %s refused: HTTP %s", self.name, what, exc.code)
            raise AuthFailure(
                f"{self.display_name} refused the {what} (HTTP {exc.code}). Please sign in again.",
                detail=f"{what}: HTTP {exc.code}",
            ) from None
        except web.HTTPError as exc:
            if exc.status_code >= 500:
                raise self._unreachable(what, f"HTTP {exc.status_code}") from None
            raise AuthFailure(
                f"{self.display_name} refused the {what}. Please sign in again.",
                detail=f"{what}: {exc.status_code}",
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise self._unreachable(what, type(exc).__name__) from None

    def _unreachable(self, what: str, detail: str) -> AuthFailure:
        self.log.warning("%s: %s failed: %s", self.name, what, detail)
        return AuthFailure(
            f"{self.display_name} did not answer as expected ({what}). Try again in a few "
            "minutes; if it persists, tell the facility administrators.",
            detail=f"{what}: {detail}",
            status=503,
        )

    def _no_user(self, exc: Exception) -> AuthFailure:
        self.log.warning("%s: no usable user name: %s", self.name, type(exc).__name__)
        return AuthFailure(
            f"{self.display_name} did not give a user name this hub can use. Please tell the "
            "facility administrators.",
            detail=f"user_info_to_username: {type(exc).__name__}",
        )


def _check_instance(wrapped: Any) -> list[tuple[str, str]]:
    """What a configured wrapped instance still lacks: client, endpoints, user info."""
    problems: list[tuple[str, str]] = []
    name = wrapped.__class__.__name__
    if not wrapped.client_id:
        problems.append(("options.client_id", f"required for {name}"))
    if not wrapped.client_secret:
        problems.append(("options.client_secret", "required (or client_secret_file)"))
    for key in ("authorize_url", "token_url"):
        value = str(getattr(wrapped, key) or "")
        problem = url_problem(value) if value else f"required for {name}"
        if problem:
            problems.append((f"options.{key}", problem))
    from oauthenticator.oauth2 import OAuthenticator  # type: ignore[import-untyped]

    own_lookup = type(wrapped).token_to_user is not OAuthenticator.token_to_user
    if not (wrapped.userdata_url or wrapped.userdata_from_id_token or own_lookup):
        problems.append(("options.userdata_url", f"required for {name}"))
    elif wrapped.userdata_url and (problem := url_problem(str(wrapped.userdata_url))):
        problems.append(("options.userdata_url", problem))
    return problems


async def _maybe(value: Any) -> Any:
    return await value if isawaitable(value) else value


def _scalar(value: object) -> bool:
    return (isinstance(value, str) and bool(value)) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _seconds(value: object) -> float | None:
    """``value`` as a number of seconds, or ``None`` when it is not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
