"""Credentials a running server holds (bearer token, Kerberos credential cache), kept equal to
the user's auth_state: the spawner compares digests and asks the backend to rewrite or remove.

Only the auth_state contract is read here (docs/auth_state.md): afspawner never imports afauth.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

Value = TypeVar("Value", str, bytes)


def digest(value: str | bytes) -> str:
    """What the spawner keeps of a credential in its state (never the credential)."""
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


def ccache_of(auth_state: Mapping[str, Any]) -> bytes | None:
    """The Kerberos credential cache of an auth_state (``kerberos.ccache``, base64), if any."""
    krb = auth_state.get("kerberos")
    value = krb.get("ccache") if isinstance(krb, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


async def sync(
    state: dict[str, Any],
    key: str,
    value: Value,
    update: Callable[[Mapping[str, Any], Value], Awaitable[None]],
    log: logging.Logger | logging.LoggerAdapter[Any],
    what: str,
) -> None:
    """Give the server ``value`` (empty: remove it) unless ``state[key]`` says it has it; the
    digest is recorded only once the backend succeeded (the next poll retries)."""
    new = digest(value) if value else ""
    if new == state.get(key):
        return
    try:
        await update(state, value)
    except Exception as exc:  # keep polling; the next poll tries again
        log.warning("could not update the %s: %s", what, type(exc).__name__)
        return
    state[key] = new
    log.info("%s the %s", "refreshed" if value else "removed", what)


#: auth_state key of the per-service tokens (afauth.exchange, docs/auth_state.md)
SERVICES_KEY = "service_tokens"
#: A service name, used as a file name in the server and as a Secret key.
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def services_of(auth_state: Mapping[str, Any]) -> dict[str, str]:
    """``{service: token}`` of an auth_state's service tokens (``""``: the exchange failed,
    no file); empty without an access token (a revoked session) or services."""
    raw = auth_state.get(SERVICES_KEY)
    if not isinstance(raw, Mapping) or not auth_state.get("access_token"):
        return {}
    out: dict[str, str] = {}
    for name, entry in raw.items():
        token = entry.get("access_token") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and SERVICE_NAME.fullmatch(name):
            out[name] = token if isinstance(token, str) else ""
    return out


def encode_services(services: Mapping[str, str]) -> str:
    """One string for :func:`sync` (``""``: none)."""
    return json.dumps(dict(services), sort_keys=True) if services else ""


def decode_services(value: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(value).items()} if value else {}


async def sync_services(
    state: dict[str, Any],
    tokens: Mapping[str, str],
    update: Callable[[Mapping[str, Any], Mapping[str, str]], Awaitable[None]],
    log: logging.Logger | logging.LoggerAdapter[Any],
    server: str,
) -> None:
    """:func:`sync` of a server's service tokens (``state["services_sha"]``)."""

    async def write(st: Mapping[str, Any], value: str) -> None:
        await update(st, decode_services(value))

    what = f"service tokens of {server}"
    await sync(state, "services_sha", encode_services(tokens), write, log, what)
