"""Pure helpers of the sign-in flow: PKCE, the signed login state and the local ``next`` URL.

What the browser carries between ``/login/<idp>`` and its callback, and the checks the
callback makes on it. Nothing here does I/O; :mod:`afauth.handlers` moves the values between
HTTP and these functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_secret(nbytes: int = 32) -> str:
    return b64url(secrets.token_bytes(nbytes))


def pkce_challenge(verifier: str) -> str:
    """S256 code challenge of a PKCE ``verifier`` (RFC 7636 section 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class LoginState:
    """What the browser carries (signed) between ``/login/<idp>`` and its callback."""

    idp: str
    state: str
    nonce: str
    verifier: str
    next_url: str
    created: float

    @classmethod
    def start(cls, idp: str, next_url: str, now: float) -> LoginState:
        """A fresh sign-in: new ``state``, ``nonce`` and PKCE verifier."""
        return cls(
            idp=idp,
            state=new_secret(),
            nonce=new_secret(),
            verifier=new_secret(48),
            next_url=next_url,
            created=now,
        )

    def encode(self) -> str:
        return json.dumps(
            {
                "i": self.idp,
                "s": self.state,
                "n": self.nonce,
                "v": self.verifier,
                "x": self.next_url,
                "t": self.created,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> LoginState | None:
        try:
            d = json.loads(raw)
            return cls(
                str(d["i"]), str(d["s"]), str(d["n"]), str(d["v"]), str(d["x"]), float(d["t"])
            )
        except (ValueError, TypeError, KeyError):
            return None


def check_state(
    saved: LoginState | None,
    idp: str,
    returned_state: str | None,
    *,
    now: float,
    max_age: float,
    used: Collection[str] = (),
) -> str | None:
    """Why the callback's ``state`` does not match the login this browser started, or None."""
    if saved is None:
        return "no sign-in was started in this browser, or it has already been completed"
    if not returned_state:
        return "the identity provider returned no state"
    if saved.idp != idp:
        return "the sign-in was started with another identity provider"
    if not hmac.compare_digest(saved.state.encode(), returned_state.encode()):
        return "the sign-in was started in another tab or window"
    if saved.state in used:
        return "this sign-in has already been completed"
    if now - saved.created > max_age or saved.created > now + 60:
        return "the sign-in took too long"
    return None


def safe_next(next_url: object, base_url: str = "/") -> str:
    """``next_url`` if it is a local path under ``base_url``, else ``""``.

    Refuses absolute and scheme-relative URLs (``//evil``, ``/\\evil``), other schemes
    (``javascript:``), control characters and paths outside the hub's base URL.
    """
    if not isinstance(next_url, str) or not next_url or len(next_url) > 2048:
        return ""
    if any(ord(c) < 0x20 or c == "\x7f" or c == "\\" for c in next_url):
        return ""
    if not next_url.startswith("/") or next_url.startswith("//"):
        return ""
    parts = urlsplit(next_url)
    if parts.scheme or parts.netloc:
        return ""
    if not (next_url + "/").startswith(base_url if base_url.endswith("/") else base_url + "/"):
        return ""
    return next_url
