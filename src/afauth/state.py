"""The auth_state contract the spawner reads (see docs/auth_state.md).

JupyterHub encrypts auth_state with JUPYTERHUB_CRYPT_KEY. The keys of :data:`CONTRACT` are
always present (values may be ``None``); :data:`EXTRAS` are present too and documented, but the
spawner must not rely on anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afauth.identity import Identity, Tokens

CONTRACT: tuple[str, ...] = (
    "idp",
    "subject",
    "username",
    "email",
    "uid",
    "gid",
    "groups",
    "vos",
    "access_token",
    "refresh_token",
    "id_token",
    "expires_at",
)
EXTRAS: tuple[str, ...] = (
    "supplemental_gids",
    "home",
    "display_name",
    "idp_groups",
    "claims",
    "version",
)
#: Keys holding credentials: never logged, never shown.
SECRET_KEYS = frozenset({"access_token", "refresh_token", "id_token", "kerberos", "service_tokens"})
VERSION = 1


def build_auth_state(identity: Identity) -> dict[str, Any]:
    """auth_state of a mapped identity (``groups``/``vos`` already the hub's)."""
    tokens = identity.tokens
    state = {
        "idp": identity.idp,
        "subject": identity.subject,
        "username": identity.username,
        "email": identity.email,
        "uid": identity.uid,
        "gid": identity.gid,
        "groups": sorted(identity.groups),
        "vos": sorted(identity.vos),
        "access_token": tokens.access_token if tokens else None,
        "refresh_token": tokens.refresh_token if tokens else None,
        "id_token": tokens.id_token if tokens else None,
        "expires_at": tokens.expires_at if tokens else None,
        "supplemental_gids": list(identity.supplemental_gids),
        "home": identity.home,
        "display_name": identity.display_name,
        "idp_groups": list(identity.idp_groups),
        "claims": _jsonable(identity.claims),
        "version": VERSION,
    }
    if identity.kerberos is not None:  # afauth.kerberos: a password login's ticket
        state["kerberos"] = _jsonable(identity.kerberos)
    return state


def identity_from_state(state: Mapping[str, Any]) -> Identity:
    """The identity an auth_state describes (to re-map it without asking the IdP)."""
    token = state.get("access_token")
    tokens = (
        Tokens(
            access_token=str(token),
            refresh_token=state.get("refresh_token"),
            id_token=state.get("id_token"),
            expires_at=state.get("expires_at"),
        )
        if token
        else None
    )
    return Identity(
        idp=str(state["idp"]),
        subject=str(state["subject"]),
        username=str(state["username"]),
        email=state.get("email"),
        email_verified=state.get("email") is not None,
        uid=state.get("uid"),
        gid=state.get("gid"),
        claims=dict(state.get("claims") or {}),
        tokens=tokens,
        idp_groups=tuple(state.get("idp_groups") or ()),
        supplemental_gids=tuple(state.get("supplemental_gids") or ()),
        home=state.get("home"),
        display_name=state.get("display_name"),
        kerberos=state.get("kerberos"),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def redacted(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy safe to log: tokens replaced by ``'<redacted>'``, claims dropped."""
    if not state:
        return {}
    out = {k: ("<redacted>" if k in SECRET_KEYS and v else v) for k, v in state.items()}
    out.pop("claims", None)
    return out
