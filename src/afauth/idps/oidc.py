"""Generic OpenID Connect IdP: discovery, authorization code + PKCE, id_token checks, refresh.

All HTTP goes through tornado's ``AsyncHTTPClient``: nothing blocks the hub's event loop.
Tokens never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from afauth.errors import AuthFailure
from afauth.exchange import check_services
from afauth.identity import Identity, Tokens
from afauth.idps.base import RedirectIdP
from afauth.mapping import claim_values, lookup
from afauth.metrics import idp_request, oidc_operation
from afauth.tokens import (
    DEFAULT_ALGORITHMS,
    Expectations,
    KeyNotKnownYet,
    TokenError,
    UnknownKeyError,
    forbidden_algorithm,
    verify_id_token,
)
from afauth.usernames import normalise_username
from afcore.options import Option, as_list, url_problem

#: Claims that only the (signed) id_token may set when userinfo is merged in.
PROTOCOL_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "nonce", "azp", "auth_time", "at_hash")
#: Parameters of the authorization request that site options cannot override.
RESERVED_PARAMS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce"}
    | {"code_challenge", "code_challenge_method"}
)
MAX_RESPONSE = 1024 * 1024
#: Token endpoint errors (RFC 6749 5.2) that say nothing about the person's grant.
NOT_ABOUT_THE_USER = frozenset(
    {"server_error", "temporarily_unavailable", "invalid_client", "unauthorized_client"}
)


def email_verified(claims: Mapping[str, Any]) -> bool:
    """Whether the IdP vouches for the ``email`` claim (``email_verified`` true, or "true")."""
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.lower() == "true")


class OIDC(RedirectIdP):
    """Any OpenID Connect provider (``type: oidc``)."""

    type_name: ClassVar[str] = "oidc"
    description: ClassVar[str] = "OpenID Connect (authorization code + PKCE)"
    files: ClassVar[tuple[str, ...]] = ("client_secret_file", "ca_file")
    options: ClassVar[Mapping[str, Option]] = {
        "issuer": Option("url", required=True, help="exact 'iss' of the IdP"),
        "discovery_url": Option("url", help="default: {issuer}/.well-known/openid-configuration"),
        "client_id": Option("str", required=True),
        "client_secret": Option("secret"),
        "client_secret_file": Option("path", help="file holding the client secret"),
        "token_endpoint_auth_method": Option(
            "enum", choices=("client_secret_basic", "client_secret_post", "none")
        ),
        "scope": Option("str-list"),
        "authorize_params": Option("mapping", help="extra authorization request parameters"),
        "username_claim": Option("str", help="claim holding the stable user name"),
        "groups_claim": Option("str", help="claim holding the IdP's group names"),
        "userinfo": Option("bool", help="merge the userinfo endpoint's claims (default true)"),
        "leeway": Option("number", help="clock skew tolerated, seconds (default 30)"),
        "max_token_age": Option("number", help="oldest acceptable id_token iat, s (default 600)"),
        "algorithms": Option("str-list", help="id_token signature algorithms accepted"),
        "discovery_ttl": Option("number", help="seconds the discovery document is cached"),
        "jwks_refetch_interval": Option("number", help="min seconds between JWKS refetches"),
        "redirect_uri": Option("url", help="default: <hub>/hub/login/<name>/callback"),
        "ca_file": Option("path", help="CA bundle for the IdP's TLS certificate"),
        "http_timeout": Option("number", help="seconds per HTTP request (default 10)"),
        "refresh": Option("bool", help="use refresh tokens in refresh_user (default true)"),
        "end_session": Option("bool", help="end the IdP session on hub logout"),
        "services": Option("mapping", help="per-service tokens by token exchange (RFC 8693)"),
    }
    defaults: ClassVar[Mapping[str, object]] = {
        "scope": ["openid", "profile", "email"],
        "username_claim": "sub",
        "userinfo": True,
        "leeway": 30,
        "max_token_age": 600,
        "algorithms": list(DEFAULT_ALGORITHMS),
        "discovery_ttl": 3600,
        "jwks_refetch_interval": 30,
        "http_timeout": 10,
        "refresh": True,
        "end_session": False,
    }

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.issuer = str(self.opt("issuer"))
        self.client_id = str(self.opt("client_id"))
        self.discovery_url = str(
            self.opt("discovery_url")
            or self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        self._client_secret: str | None = None
        self.algorithms = tuple(as_list(self.opt("algorithms")))
        self._discovery: dict[str, Any] | None = None
        self._discovery_at = 0.0
        self._jwks: dict[str, Any] | None = None
        self._jwks_at = -1e12
        self._lock = asyncio.Lock()
        self.jwks_fetches = 0
        self.discovery_fetches = 0

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        secret, secret_file = config.get("client_secret"), config.get("client_secret_file")
        method = config.get("token_endpoint_auth_method")
        if secret and secret_file:
            problems.append(("client_secret_file", "give client_secret or the file, not both"))
        if method in ("client_secret_basic", "client_secret_post") and not (secret or secret_file):
            problems.append(("client_secret", f"required with {method}"))
        for i, alg in enumerate(as_list(config.get("algorithms"))):
            if forbidden_algorithm(alg):
                problems.append((f"algorithms[{i}]", f"'{alg}' is not allowed for id_tokens"))
        params = config.get("authorize_params")
        if isinstance(params, Mapping):
            for key in params:
                if key in RESERVED_PARAMS:
                    problems.append((f"authorize_params.{key}", "set by the authenticator"))
        scope = as_list(config.get("scope"))
        if scope and "openid" not in scope:
            problems.append(("scope", "must include 'openid'"))
        return problems + check_services(config.get("services"))

    @property
    def client_secret(self) -> str | None:
        if self._client_secret is None:
            if self.config.get("client_secret"):
                self._client_secret = str(self.config["client_secret"])
            elif self.config.get("client_secret_file"):
                with open(str(self.config["client_secret_file"]), encoding="utf-8") as f:
                    self._client_secret = f.read().strip()
        return self._client_secret

    @property
    def auth_method(self) -> str:
        method = self.config.get("token_endpoint_auth_method")
        if method:
            return str(method)
        return "client_secret_basic" if self.client_secret else "none"

    # -- HTTP ----------------------------------------------------------------------------------

    async def _fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        what: str,
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` of a request; AuthFailure when the IdP is unreachable."""
        body = urlencode(form) if form is not None else None
        all_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        timeout = float(self.opt("http_timeout"))
        request = HTTPRequest(
            url,
            method=method,
            body=body,
            headers=all_headers,
            connect_timeout=timeout,
            request_timeout=timeout,
            ca_certs=self.config.get("ca_file"),
            follow_redirects=False,
        )
        try:
            with idp_request(self.name, oidc_operation(what)):
                response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise self._unreachable(what, f"{type(exc).__name__}: {exc}") from None
        if response.code == 599:  # tornado: no HTTP response (connection/timeout)
            raise self._unreachable(what, str(response.error))
        raw = response.body or b""
        if len(raw) > MAX_RESPONSE:
            raise self._unreachable(what, f"response of {len(raw)} bytes is too large")
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._unreachable(what, f"HTTP {response.code}, not a JSON object")
        return response.code, data

    def _unreachable(self, what: str, detail: str) -> AuthFailure:
        self.log.warning("%s: %s failed: %s", self.name, what, detail)
        return AuthFailure(
            f"{self.display_name} did not answer as expected ({what}). Try again in a few "
            "minutes; if it persists, tell the facility administrators.",
            detail=f"{what}: {detail}",
            status=503,
        )

    # -- discovery and keys --------------------------------------------------------------------

    def _discovery_cached(self) -> dict[str, Any] | None:
        ttl = float(self.opt("discovery_ttl"))
        if self._discovery is not None and time.monotonic() - self._discovery_at < ttl:
            return self._discovery
        return None

    async def discovery(self) -> dict[str, Any]:
        """The discovery document, cached for ``discovery_ttl`` seconds."""
        cached = self._discovery_cached()
        if cached is not None:
            return cached
        async with self._lock:
            return self._discovery_cached() or await self._load_discovery()

    async def _load_discovery(self) -> dict[str, Any]:
        status, doc = await self._fetch(self.discovery_url, what="discovery")
        self.discovery_fetches += 1
        if status != 200:
            raise self._unreachable("discovery", f"HTTP {status}")
        if doc.get("issuer") != self.issuer:
            raise self._unreachable(
                "discovery", f"issuer {str(doc.get('issuer'))[:200]!r} != {self.issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            if not isinstance(value, str) or url_problem(value):
                raise self._unreachable("discovery", f"bad or missing {key}")
        self._discovery, self._discovery_at = doc, time.monotonic()
        return doc

    async def jwks(self, *, refetch: bool = False) -> dict[str, Any]:
        """The IdP's keys; ``refetch`` asks again unless the last fetch is too recent."""
        interval = float(self.opt("jwks_refetch_interval"))
        if self._jwks is not None and not refetch:
            return self._jwks
        async with self._lock:
            if self._jwks is not None and time.monotonic() - self._jwks_at < interval:
                return self._jwks  # rate-limited: at most one refetch per interval
            doc = self._discovery_cached() or await self._load_discovery()
            status, keys = await self._fetch(str(doc["jwks_uri"]), what="key set")
            self.jwks_fetches += 1
            if status != 200 or not isinstance(keys.get("keys"), list):
                raise self._unreachable("key set", f"HTTP {status}, no 'keys'")
            self._jwks, self._jwks_at = keys, time.monotonic()
            return keys

    def expectations(self, nonce: str | None, subject: str | None = None) -> Expectations:
        max_age = self.opt("max_token_age")
        return Expectations(
            issuer=self.issuer,
            client_id=self.client_id,
            nonce=nonce,
            leeway=float(self.opt("leeway")),
            max_age=float(max_age) if max_age else None,
            algorithms=self.algorithms,
            subject=subject,
        )

    async def verify(self, id_token: str, expect: Expectations) -> dict[str, Any]:
        """Verified claims; one (rate-limited) JWKS refetch when the ``kid`` is unknown."""
        await self.discovery()
        try:
            return verify_id_token(id_token, await self.jwks(), expect)
        except UnknownKeyError:
            fetched = self._jwks_at
            keys = await self.jwks(refetch=True)
            try:
                return verify_id_token(id_token, keys, expect)
            except UnknownKeyError:
                if self._jwks_at != fetched:  # asked again: the IdP really does not publish it
                    raise
                wait = float(self.opt("jwks_refetch_interval")) - (time.monotonic() - fetched)
                raise KeyNotKnownYet(wait) from None

    # -- the flow ------------------------------------------------------------------------------

    def authorize_params(self) -> dict[str, str]:
        params = self.opt("authorize_params") or {}
        return {str(k): str(v) for k, v in params.items()}

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        doc = await self.discovery()
        params = {
            **self.authorize_params(),
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(as_list(self.opt("scope"))),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        endpoint = str(doc["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def _token_request(self, form: dict[str, str], what: str) -> tuple[int, dict[str, Any]]:
        doc = await self.discovery()
        headers: dict[str, str] = {}
        secret = self.client_secret
        if self.auth_method == "client_secret_basic" and secret:
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
            if self.auth_method == "client_secret_post" and secret:
                form["client_secret"] = secret
        return await self._fetch(
            str(doc["token_endpoint"]), method="POST", form=form, headers=headers, what=what
        )

    def _token_problem(self, status: int, body: Mapping[str, Any], what: str) -> AuthFailure:
        """A refusal of the token endpoint: 403, or 503 when it is not about this person (the
        IdP failing or throttling, or refusing the hub as a client): an outage, during which
        a session is kept while its token is valid and the token refresher retries."""
        error = str(body.get("error", f"HTTP {status}"))[:64]
        self.log.warning("%s: %s refused: %s", self.name, what, error)
        outage = status >= 500 or status == 429 or error in NOT_ABOUT_THE_USER
        return AuthFailure(
            f"{self.display_name} refused the {what} ({error}). Please sign in again.",
            detail=f"{what}: {error}",
            status=503 if outage else 403,
        )

    async def complete(
        self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str
    ) -> Identity:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        status, body = await self._token_request(form, "sign-in code")
        if status != 200:
            raise self._token_problem(status, body, "sign-in code")
        return await self._identity_from(body, self.expectations(nonce), previous={})

    async def _identity_from(
        self, body: Mapping[str, Any], expect: Expectations, previous: Mapping[str, Any]
    ) -> Identity:
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise self._unreachable("token response", "no access_token")
        id_token = body.get("id_token")
        if isinstance(id_token, str) and id_token:
            try:
                id_claims = await self.verify(id_token, expect)
            except KeyNotKnownYet as exc:  # transient: 503, the session is kept meanwhile
                self.log.warning("%s: id_token refused: %s", self.name, exc.reason)
                raise AuthFailure(
                    f"{self.display_name} signed its answer with a key this hub does not know "
                    f"yet ({exc.message}).",
                    detail=f"id_token refused ({exc.reason})",
                    status=503,
                ) from None
            except TokenError as exc:
                self.log.warning("%s: id_token refused: %s", self.name, exc.reason)
                raise AuthFailure(
                    f"The answer from {self.display_name} failed a security check: "
                    f"{exc.message}. Please sign in again.",
                    detail=f"id_token refused ({exc.reason})",
                ) from None
        elif previous:  # a refresh response without a new id_token
            id_token = previous.get("id_token")
            id_claims = dict(previous.get("claims") or {})
        else:
            raise self._unreachable("token response", "no id_token")
        claims = dict(id_claims)
        if self.opt("userinfo"):
            claims = await self._merge_userinfo(claims, access_token)
        expires_in = body.get("expires_in")
        expires_at = (
            time.time() + float(expires_in) if isinstance(expires_in, int | float) else None
        )
        refresh_token = body.get("refresh_token") or previous.get("refresh_token")
        tokens = Tokens(
            access_token=access_token,
            refresh_token=str(refresh_token) if refresh_token else None,
            id_token=str(id_token) if id_token else None,
            expires_at=expires_at,
        )
        return self.identity_from_claims(claims, tokens)

    async def _merge_userinfo(self, claims: dict[str, Any], access_token: str) -> dict[str, Any]:
        doc = await self.discovery()
        endpoint = doc.get("userinfo_endpoint")
        if not isinstance(endpoint, str) or url_problem(endpoint):
            return claims
        status, info = await self._fetch(
            endpoint, headers={"Authorization": f"Bearer {access_token}"}, what="user info"
        )
        if status != 200:
            raise self._unreachable("user info", f"HTTP {status}")
        if info.get("sub") != claims.get("sub"):
            raise self._unreachable("user info", "userinfo is for another subject")
        merged = {**claims, **info}
        for key in PROTOCOL_CLAIMS:
            if key in claims:
                merged[key] = claims[key]
        return merged

    # -- identity ------------------------------------------------------------------------------

    def raw_username(self, claims: Mapping[str, Any]) -> object:
        """The stable identifier the hub name is made from (override in presets)."""
        claim = str(self.opt("username_claim"))
        if claim == "email" and not email_verified(claims):
            raise AuthFailure(
                f"{self.display_name} has not verified your email address, which this hub "
                "uses as your user name. Verify it there, then sign in again.",
                detail="email used as username but email_verified is not true",
            )
        values = lookup(claims, claim)
        return values[0] if values else None

    def identity_from_claims(self, claims: Mapping[str, Any], tokens: Tokens | None) -> Identity:
        username = normalise_username(
            self.raw_username(claims), max_length=self.max_username_length
        )
        verified = email_verified(claims)
        email = claims.get("email") if verified and isinstance(claims.get("email"), str) else None
        groups_claim = self.opt("groups_claim")
        idp_groups = tuple(claim_values(claims, str(groups_claim))) if groups_claim else ()
        name = claims.get("name")
        return Identity(
            idp=self.name,
            subject=str(claims["sub"]),
            username=username,
            email=email,
            email_verified=verified,
            idp_groups=idp_groups,
            claims=MappingProxyType(dict(claims)),
            tokens=tokens,
            display_name=name if isinstance(name, str) else None,
        )

    # -- refresh and logout --------------------------------------------------------------------

    async def refresh(self, state: Mapping[str, Any], *, margin: float) -> Identity | None:
        expires_at = state.get("expires_at")
        now = time.time()
        fresh = isinstance(expires_at, int | float) and expires_at - now > margin
        if fresh:
            return None
        refresh_token = state.get("refresh_token")
        if not refresh_token or not self.opt("refresh"):
            if isinstance(expires_at, int | float) and expires_at < now:
                raise AuthFailure(
                    f"Your {self.display_name} session has expired. Please sign in again.",
                    detail="access token expired and no refresh token",
                )
            return None
        status, body = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": str(refresh_token)}, "session renewal"
        )
        if status != 200:
            raise self._token_problem(status, body, "session renewal")
        expect = self.expectations(None, subject=str(state.get("subject")))
        return await self._identity_from(body, expect, previous=state)

    async def end_session_url(self, *, id_token: str | None, post_logout_uri: str) -> str | None:
        if not self.opt("end_session"):
            return None
        try:
            doc = await self.discovery()
        except AuthFailure:
            return None
        endpoint = doc.get("end_session_endpoint")
        if not isinstance(endpoint, str) or url_problem(endpoint):
            return None
        params = {"client_id": self.client_id, "post_logout_redirect_uri": post_logout_uri}
        if id_token:
            params["id_token_hint"] = id_token
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
