"""What the OIDC test bed is made of: issuers, their default client, users and clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_REDIRECT_URI",
    "ISSUER_NAMES",
    "JSON",
    "RECOMMENDED_SCOPES",
    "IssuerInfo",
    "OIDCClient",
    "OIDCTestbedError",
    "OIDCUser",
]

JSON = dict[str, Any]

ISSUER_NAMES: tuple[str, ...] = ("cern", "iam", "cilogon")
DEFAULT_CLIENT_ID = "af-hub"
DEFAULT_REDIRECT_URI = "http://127.0.0.1/cb"

#: Scopes a relying party should request to receive every claim of the profile.
RECOMMENDED_SCOPES: dict[str, str] = {
    "cern": "openid profile email",
    "iam": "openid profile email wlcg wlcg.groups eduperson_entitlement",
    "cilogon": "openid profile email org.cilogon.userinfo",
}


class OIDCTestbedError(RuntimeError):
    """The node issuers could not be started or controlled."""


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
