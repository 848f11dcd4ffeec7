"""Real OIDC issuers for tests: node ``oidc-provider`` as CERN-, IAM- and CILogon-like IdPs.

``OIDCTestbed`` writes a JSON config, starts ``node tests/testbed/oidc/server.mjs`` on a free
loopback port and talks to its ``/__control`` API (key rotation, clients, users, token
lifetimes). ``drive_login`` walks an authorization URL through the provider's real login page
like a browser. ``oidc_testbed`` is a session-scoped pytest fixture.

Needs ``node`` and ``npm ci --prefix tests/testbed/oidc --no-audit --no-fund``.
Run ``python -m testbed.oidc`` (from ``tests/``) to start the issuers by hand for a browser.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_REDIRECT_URI",
    "ISSUER_NAMES",
    "OIDC_DIR",
    "RECOMMENDED_SCOPES",
    "IssuerInfo",
    "LoginError",
    "OIDCClient",
    "OIDCTestbed",
    "OIDCTestbedError",
    "OIDCUser",
    "default_users",
    "drive_login",
    "oidc_testbed",
]

JSON = dict[str, Any]

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SERVER_SCRIPT = OIDC_DIR / "server.mjs"
ISSUER_NAMES: tuple[str, ...] = ("cern", "iam", "cilogon")
DEFAULT_CLIENT_ID = "af-hub"
DEFAULT_REDIRECT_URI = "http://127.0.0.1/cb"
LOOPBACK = "127.0.0.1"

#: Scopes a relying party should request to receive every claim of the profile.
RECOMMENDED_SCOPES: dict[str, str] = {
    "cern": "openid profile email",
    "iam": "openid profile email wlcg wlcg.groups eduperson_entitlement",
    "cilogon": "openid profile email org.cilogon.userinfo",
}


class OIDCTestbedError(RuntimeError):
    """The node issuers could not be started or controlled."""


class LoginError(RuntimeError):
    """``drive_login`` did not reach the relying party's redirect URI."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass
class OIDCUser:
    username: str
    password: str
    sub: str
    claims: JSON = field(default_factory=dict)

    def to_config(self) -> JSON:
        return {"password": self.password, "sub": self.sub, "claims": self.claims}


@dataclass
class OIDCClient:
    client_id: str
    client_secret: str | None
    redirect_uris: list[str]
    token_endpoint_auth_method: str | None = None
    metadata: JSON = field(default_factory=dict)

    def to_config(self) -> JSON:
        config: JSON = {
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            **self.metadata,
            "client_id": self.client_id,
            "redirect_uris": list(self.redirect_uris),
        }
        if self.client_secret is not None:
            config["client_secret"] = self.client_secret
        if self.token_endpoint_auth_method is not None:
            config["token_endpoint_auth_method"] = self.token_endpoint_auth_method
        return config


@dataclass
class IssuerInfo:
    """One issuer of the test bed. ``issuer`` is empty until the test bed is started."""

    name: str
    profile: str
    users: dict[str, OIDCUser]
    clients: dict[str, OIDCClient]
    scope: str
    ttl: dict[str, int]
    issuer: str = ""

    @property
    def discovery_url(self) -> str:
        self._require_started()
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def client(self) -> OIDCClient:
        return self.clients[DEFAULT_CLIENT_ID]

    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def client_secret(self) -> str:
        secret = self.client.client_secret
        assert secret is not None
        return secret

    def user(self, username: str) -> OIDCUser:
        return self.users[username]

    def _require_started(self) -> None:
        if not self.issuer:
            raise OIDCTestbedError(f"issuer {self.name!r}: the test bed is not started")


def _uuid(issuer: str, username: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://af-testbed.invalid/{issuer}/{username}"))


def _password(username: str) -> str:
    return f"{username}-pw"


_PEOPLE: dict[str, tuple[str, str]] = {
    "cmsuser": ("Carla", "Mendes"),
    "atlasuser": ("Arjun", "Tanaka"),
    "duneuser": ("Dana", "Nwosu"),
    "multiuser": ("Mika", "Virtanen"),
    "afadmin": ("Ada", "Fermi"),
    "unverified": ("Uli", "Novak"),
}


def _person(username: str) -> JSON:
    given, family = _PEOPLE[username]
    return {"given_name": given, "family_name": family, "name": f"{given} {family}"}


def _cern_users() -> dict[str, OIDCUser]:
    roles = {
        "cmsuser": ["default-role", "cms-users"],
        "atlasuser": ["default-role", "atlas-users"],
        "duneuser": ["default-role", "dune-users"],
        "multiuser": ["default-role", "cms-users", "atlas-users"],
        "afadmin": ["default-role", "cms-users", "admin"],
        "unverified": ["default-role", "cms-users"],
    }
    users: dict[str, OIDCUser] = {}
    for number, (username, user_roles) in enumerate(roles.items(), start=1):
        given, family = _PEOPLE[username]
        claims: JSON = {
            **_person(username),
            "preferred_username": username,
            "cern_upn": username,
            "cern_person_id": str(812000 + number),
            "cern_roles": user_roles,
            "resource_access": {DEFAULT_CLIENT_ID: {"roles": user_roles}},
            "email": f"{given.lower()}.{family.lower()}@cern.ch",
            "email_verified": username != "unverified",
        }
        # CERN SSO's subject is the login name.
        users[username] = OIDCUser(username, _password(username), username, claims)
    return users


def _iam_users() -> dict[str, OIDCUser]:
    groups = {
        "cmsuser": ["/cms", "/cms/uscms"],
        "atlasuser": ["/atlas"],
        "duneuser": ["/dune", "/dune/production"],
        "multiuser": ["/cms", "/atlas"],
        "afadmin": ["/cms", "/cms/uscms", "/cms/af-admins"],
        "unverified": ["/cms"],
    }
    users: dict[str, OIDCUser] = {}
    for username, wlcg_groups in groups.items():
        given, family = _PEOPLE[username]
        entitlements = [
            "urn:mace:egi.eu:group:" + g.strip("/").replace("/", ":") + ":role=member#aai.egi.eu"
            for g in wlcg_groups
        ]
        claims: JSON = {
            **_person(username),
            "preferred_username": username,
            "wlcg.ver": "1.0",
            "wlcg.groups": wlcg_groups,
            "groups": [g.lstrip("/") for g in wlcg_groups],
            "eduperson_entitlement": entitlements,
            "email": f"{given.lower()}.{family.lower()}@example.org",
            "email_verified": username != "unverified",
        }
        users[username] = OIDCUser(username, _password(username), _uuid("iam", username), claims)
    return users


_CILOGON_IDPS: dict[str, tuple[str, str, str]] = {
    # username: (entity id, display name, scope)
    "cmsuser": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
    "atlasuser": ("urn:mace:incommon:uchicago.edu", "University of Chicago", "uchicago.edu"),
    "duneuser": (
        "https://idp.fnal.gov/idp/shibboleth",
        "Fermi National Accelerator Laboratory",
        "fnal.gov",
    ),
    "multiuser": ("https://idp.purdue.edu/idp/shibboleth", "Purdue University", "purdue.edu"),
    "afadmin": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
    "unverified": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
}


def _cilogon_users() -> dict[str, OIDCUser]:
    users: dict[str, OIDCUser] = {}
    for number, (username, (entity_id, idp_name, scope)) in enumerate(
        _CILOGON_IDPS.items(), start=1
    ):
        given, family = _PEOPLE[username]
        kind = "staff" if username == "afadmin" else "faculty"
        claims: JSON = {
            **_person(username),
            "idp": entity_id,
            "idp_name": idp_name,
            "eppn": f"{username}@{scope}",
            "eptid": f"{entity_id}!https://cilogon.org/shibboleth!{_uuid('eptid', username)}",
            "affiliation": f"member@{scope};{kind}@{scope};employee@{scope}",
            "ou": "Physics",
            "email": f"{given.lower()}.{family.lower()}@{scope}",
            "email_verified": username != "unverified",
        }
        sub = f"http://cilogon.org/serverA/users/{10000 + number}"
        users[username] = OIDCUser(username, _password(username), sub, claims)
    return users


def default_users(profile: str) -> dict[str, OIDCUser]:
    """Fresh default accounts for an issuer profile (``cern``, ``iam`` or ``cilogon``)."""
    factories = {"cern": _cern_users, "iam": _iam_users, "cilogon": _cilogon_users}
    return factories[profile]()


# ---------------------------------------------------------------------------------------------
# The test bed process
# ---------------------------------------------------------------------------------------------


class OIDCTestbed:
    """The node ``oidc-provider`` issuers, configured before ``start()``, controllable after.

    Every issuer gets a confidential client ``af-hub`` (secret ``<issuer>-hub-secret``,
    ``client_secret_basic`` or ``client_secret_post``) with ``redirect_uris`` and the default users
    of ``default_users``. Use ``add_client``, ``add_redirect_uris``, ``set_user`` and ``set_ttl``
    at any time; after ``start()`` they reconfigure the running issuers.
    """

    def __init__(
        self,
        *,
        redirect_uris: Sequence[str] = (DEFAULT_REDIRECT_URI,),
        issuers: Iterable[str] = ISSUER_NAMES,
        access_token_ttl: int = 3600,
        id_token_ttl: int = 3600,
        refresh_token_ttl: int = 14 * 24 * 3600,
        pkce_required: bool = True,
        rotate_refresh_token: bool = True,
        port: int = 0,
        node: str = "node",
        startup_timeout: float = 30.0,
    ) -> None:
        self._pkce_required = pkce_required
        self._rotate_refresh_token = rotate_refresh_token
        self._port = port
        self._node = node
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self.port = 0
        self.startup_seconds = 0.0
        self.issuers: dict[str, IssuerInfo] = {}
        for name in issuers:
            if name not in ISSUER_NAMES:
                raise ValueError(f"unknown issuer {name!r}; known: {', '.join(ISSUER_NAMES)}")
            client = OIDCClient(
                DEFAULT_CLIENT_ID,
                f"{name}-hub-secret",
                list(redirect_uris),
            )
            self.issuers[name] = IssuerInfo(
                name=name,
                profile=name,
                users=default_users(name),
                clients={DEFAULT_CLIENT_ID: client},
                scope=RECOMMENDED_SCOPES[name],
                ttl={
                    "access_token": access_token_ttl,
                    "id_token": id_token_ttl,
                    "refresh_token": refresh_token_ttl,
                },
            )

    # -- lifecycle -----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> IssuerInfo:
        return self.issuers[name]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def base_url(self) -> str:
        if not self.port:
            raise OIDCTestbedError("the test bed is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> JSON:
        """The JSON document given to server.mjs."""
        return {
            "port": self._port,
            "issuers": {
                name: {
                    "profile": info.profile,
                    "ttl": dict(info.ttl),
                    "pkce_required": self._pkce_required,
                    "rotate_refresh_token": self._rotate_refresh_token,
                    "clients": [c.to_config() for c in info.clients.values()],
                    "users": {u.username: u.to_config() for u in info.users.values()},
                }
                for name, info in self.issuers.items()
            },
        }

    def start(self) -> Self:
        if self._process is not None:
            raise OIDCTestbedError("the test bed is already started")
        node = shutil.which(self._node)
        if node is None:
            raise OIDCTestbedError(
                f"{self._node!r} not found on PATH; the OIDC test bed needs Node.js"
            )
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise OIDCTestbedError(
                f"oidc-provider is not installed in {OIDC_DIR / 'node_modules'}; run "
                "`npm ci --prefix tests/testbed/oidc --no-audit --no-fund` from the repository root"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="af-oidc-testbed-"))
        config_path = self._workdir / "config.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        stdout_path = self._workdir / "stdout.log"
        stderr_path = self._workdir / "stderr.log"
        started = time.monotonic()
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [node, str(SERVER_SCRIPT), "--config", str(config_path), "--exit-with-stdin"],
                cwd=OIDC_DIR,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, "NODE_ENV": "test"},
            )
        atexit.register(self.stop)
        try:
            self.port = self._wait_ready(stdout_path, stderr_path)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
        for name, state in self.state()["issuers"].items():
            if name in self.issuers:
                self.issuers[name].issuer = state["issuer"]
        return self

    def _wait_ready(self, stdout_path: Path, stderr_path: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            match = re.search(r"^READY (\d+)$", stdout_path.read_text(errors="replace"), re.M)
            if match:
                return int(match.group(1))
            if self._process.poll() is not None:
                raise OIDCTestbedError(
                    f"oidc test bed exited with code {self._process.returncode} before READY;"
                    f" stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise OIDCTestbedError(
                    f"oidc test bed not READY after {self._startup_timeout:.0f}s;"
                    f" stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the node process (SIGTERM, then SIGKILL) and clean up. Idempotent."""
        process, self._process = self._process, None
        if self._http is not None:
            self._http.close()
            self._http = None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.port = 0
        for info in self.issuers.values():
            info.issuer = ""

    def logs(self) -> str:
        """The node process's stderr so far (for assertion messages)."""
        if self._workdir is None:
            return ""
        path = self._workdir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- control API ---------------------------------------------------------------------------

    def _control(
        self, method: str, route: str, issuer: str | None = None, body: JSON | None = None
    ) -> JSON:
        if self._http is None or not self.running:
            raise OIDCTestbedError("the test bed is not running")
        params = {"issuer": issuer} if issuer is not None else None
        with self._lock:
            response = self._http.request(method, f"/__control/{route}", params=params, json=body)
        if response.status_code != 200:
            raise OIDCTestbedError(
                f"control {route} for {issuer}: {response.status_code} {response.text}"
            )
        result: JSON = response.json()
        return result

    def state(self) -> JSON:
        """Server-side view: issuer URLs, current key ids, clients, users, TTLs."""
        return self._control("GET", "state")

    def health(self) -> bool:
        return bool(self._control("GET", "health").get("ok"))

    def current_kids(self, issuer: str) -> list[str]:
        kids: list[str] = self.state()["issuers"][issuer]["kids"]
        return kids

    def rotate_keys(self, issuer: str) -> str:
        """Replace the issuer's signing key; the old key leaves the JWKS. Returns the new kid.

        Sessions, grants and refresh tokens issued before stay valid.
        """
        self.issuers[issuer]._require_started()
        kid: str = self._control("POST", "rotate-keys", issuer)["kid"]
        return kid

    def add_client(
        self,
        issuer: str,
        client_id: str,
        *,
        redirect_uris: Sequence[str],
        client_secret: str | None = None,
        token_endpoint_auth_method: str | None = None,
        **metadata: Any,
    ) -> OIDCClient:
        """Register (or replace) a client. No secret means a public client (auth method none)."""
        client = OIDCClient(
            client_id,
            client_secret,
            list(redirect_uris),
            token_endpoint_auth_method,
            dict(metadata),
        )
        info = self.issuers[issuer]
        if self.running:
            self._control("POST", "clients", issuer, client.to_config())
        info.clients[client_id] = client
        return client

    def add_redirect_uris(
        self, *uris: str, issuer: str | None = None, client_id: str = DEFAULT_CLIENT_ID
    ) -> None:
        """Allow more redirect URIs for a client on one issuer (or on all when issuer is None)."""
        for name in [issuer] if issuer is not None else list(self.issuers):
            old = self.issuers[name].clients[client_id]
            merged = [*old.redirect_uris, *(u for u in uris if u not in old.redirect_uris)]
            self.add_client(
                name,
                client_id,
                redirect_uris=merged,
                client_secret=old.client_secret,
                token_endpoint_auth_method=old.token_endpoint_auth_method,
                **old.metadata,
            )

    def set_user(
        self,
        issuer: str,
        username: str,
        *,
        password: str,
        claims: Mapping[str, Any],
        sub: str | None = None,
    ) -> OIDCUser:
        """Add or replace an account. Claim changes show up in the next token (also on refresh)."""
        user = OIDCUser(
            username, password, sub or _uuid(issuer, username), copy.deepcopy(dict(claims))
        )
        if self.running:
            self._control("POST", "users", issuer, {"username": username, **user.to_config()})
        self.issuers[issuer].users[username] = user
        return user

    def update_claims(self, issuer: str, username: str, **claims: Any) -> OIDCUser:
        """Change some claims of an existing account (e.g. drop a group, then refresh)."""
        user = self.issuers[issuer].users[username]
        return self.set_user(
            issuer, username, password=user.password, sub=user.sub, claims={**user.claims, **claims}
        )

    def set_ttl(
        self,
        issuer: str | None = None,
        *,
        access_token: int | None = None,
        id_token: int | None = None,
        refresh_token: int | None = None,
    ) -> None:
        """Change token lifetimes (seconds) for tokens issued from now on."""
        ttl = {
            k: v
            for k, v in {
                "access_token": access_token,
                "id_token": id_token,
                "refresh_token": refresh_token,
            }.items()
            if v is not None
        }
        for name in [issuer] if issuer is not None else list(self.issuers):
            if self.running:
                self._control("POST", "settings", name, {"ttl": ttl})
            self.issuers[name].ttl.update(ttl)

    def revoke_grants(self, issuer: str, username: str) -> int:
        """Revoke every grant and session of a user at the IdP (refresh tokens stop working)."""
        revoked: int = self._control("POST", "revoke-grants", issuer, {"username": username})[
            "revoked_grants"
        ]
        return revoked


# ---------------------------------------------------------------------------------------------
# Scripted browser login
# ---------------------------------------------------------------------------------------------


@dataclass
class _Form:
    action: str
    method: str
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, value)

    @property
    def has_password(self) -> bool:
        return any(kind == "password" for kind, _, _ in self.fields)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.alerts: list[str] = []
        self._form: _Form | None = None
        self._alert_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = _Form(
                attributes.get("action", ""), attributes.get("method", "get").upper()
            )
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name"):
            kind = attributes.get("type", "text").lower()
            if kind not in ("submit", "button", "image", "reset"):
                self._form.fields.append((kind, attributes["name"], attributes.get("value", "")))
        if attributes.get("role") == "alert" or "error" in attributes.get("class", "").split():
            self._alert_depth += 1
            self.alerts.append("")
        elif self._alert_depth:
            self._alert_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._alert_depth:
            self._alert_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._alert_depth:
            self.alerts[-1] += data


def _same_endpoint(url: str, target: str) -> bool:
    a, b = urlsplit(url), urlsplit(target)
    return (a.scheme, a.netloc, a.path or "/") == (b.scheme, b.netloc, b.path or "/")


_USERNAME_FIELDS = ("username", "login", "user", "email", "j_username")


async def drive_login(
    client: httpx.AsyncClient,
    authorize_url: str,
    username: str,
    password: str,
    *,
    max_steps: int = 20,
) -> str:
    """Follow ``authorize_url`` through the IdP's login (and consent) pages as a browser would.

    Uses ``client``'s cookie jar, follows redirects by hand and submits HTML forms. Returns the
    redirect to the relying party's ``redirect_uri`` (with ``code`` and ``state``, or ``error``)
    without requesting it. Raises ``LoginError`` when the IdP shows the login form again (wrong
    password: the page's error text is in the message) or answers anything unexpected.
    """
    query = parse_qs(urlsplit(authorize_url).query)
    redirect_uri = query.get("redirect_uri", [""])[0]
    idp_netloc = urlsplit(authorize_url).netloc
    method, url, data = "GET", authorize_url, None
    credentials_sent = False
    for _ in range(max_steps):
        response = await client.request(method, url, data=data, follow_redirects=False)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if (redirect_uri and _same_endpoint(location, redirect_uri)) or (
                not redirect_uri and urlsplit(location).netloc != idp_netloc
            ):
                return location
            method, url, data = "GET", location, None
            continue

        parser = _PageParser()
        if "html" in response.headers.get("content-type", ""):
            parser.feed(response.text)
        alerts = " ".join(" ".join(a.split()) for a in parser.alerts if a.strip())
        login_form = next((f for f in parser.forms if f.has_password), None)
        form = login_form or (
            parser.forms[0] if parser.forms and response.status_code == 200 else None
        )
        if form is None:
            raise LoginError(
                f"unexpected {response.status_code} from {response.url}: "
                f"{alerts or response.text[:500]}",
                status_code=response.status_code,
                url=str(response.url),
            )
        if form.has_password:
            if credentials_sent:
                raise LoginError(
                    f"login as {username!r} refused: {alerts or 'login form shown again'}",
                    status_code=response.status_code,
                    url=str(response.url),
                )
            credentials_sent = True
        fields: dict[str, str] = {}
        for kind, name, value in form.fields:
            if kind == "password":
                fields[name] = password
            elif kind in ("text", "email") and name in _USERNAME_FIELDS:
                fields[name] = username
            elif kind in ("checkbox", "radio") and not value:
                continue
            else:
                fields[name] = value
        action = urljoin(str(response.url), form.action or str(response.url))
        if redirect_uri and _same_endpoint(action, redirect_uri):
            raise LoginError("response_mode=form_post is not supported by drive_login", url=action)
        method, url = form.method, action
        data = fields if method == "POST" else None
        if method == "GET":
            url = str(httpx.URL(action).copy_merge_params(fields))
    raise LoginError(f"no redirect to the relying party after {max_steps} steps", url=url)


# ---------------------------------------------------------------------------------------------
# pytest fixture
# ---------------------------------------------------------------------------------------------

_shared_lock = threading.Lock()
_shared: OIDCTestbed | None = None
_shared_users = 0


@contextlib.contextmanager
def _shared_testbed() -> Iterator[OIDCTestbed]:
    """One process per test session, even if the fixture is imported into several modules."""
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            _shared = OIDCTestbed().start()
        _shared_users += 1
        testbed = _shared
    try:
        yield testbed
    finally:
        with _shared_lock:
            _shared_users -= 1
            if _shared_users == 0:
                _shared = None
                testbed.stop()


@pytest.fixture(scope="session")
def oidc_testbed() -> Iterator[OIDCTestbed]:
    """The running CERN/IAM/CILogon issuers, default clients allowing ``http://127.0.0.1/cb``.

    Shared by the whole session: tests add redirect URIs/clients/users rather than replace
    them, and restore TTLs they shorten.
    """
    with _shared_testbed() as testbed:
        yield testbed


# ---------------------------------------------------------------------------------------------
# Manual use: python -m testbed.oidc
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the OIDC test-bed issuers in the foreground.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--redirect-uri", action="append", default=None, help="allowed redirect URI (repeatable)"
    )
    args = parser.parse_args(argv)
    testbed = OIDCTestbed(redirect_uris=args.redirect_uri or [DEFAULT_REDIRECT_URI], port=args.port)
    with testbed:
        for info in testbed.issuers.values():
            print(f"{info.name}: {info.issuer}")
            print(f"  discovery: {info.discovery_url}")
            print(f"  client: {info.client_id} / {info.client_secret}  scope: {info.scope}")
            print(
                f"  users: {', '.join(f'{u.username}/{u.password}' for u in info.users.values())}"
            )
        print(f"started in {testbed.startup_seconds:.2f}s; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while testbed.running:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
