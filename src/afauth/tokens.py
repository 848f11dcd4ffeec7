"""Pure id_token verification against a JWKS (the sign-in flow helpers are in
:mod:`afauth.flow`).

Nothing here does I/O; the OIDC IdP fetches discovery and JWKS documents and hands them in.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

#: Asymmetric algorithms accepted by default. ``none`` and the HMAC family are never accepted:
#: an id_token must be signed with a key only the IdP holds.
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MAX_TOKEN_LENGTH = 16384


class TokenError(Exception):
    """The id_token is refused; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class UnknownKeyError(TokenError):
    """The id_token names a key (``kid``) that is not in the JWKS we have."""


class KeyNotKnownYet(TokenError):
    """The id_token names a key we do not have, and the JWKS was fetched too recently to ask
    again (``jwks_refetch_interval``): the IdP may have just rotated its keys."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            "key_not_known_yet",
            f"the signing key is not known yet; retry in {_duration(seconds)}",
        )
        self.retry_after = float(seconds)


def _duration(seconds: int) -> str:
    return "a minute" if seconds <= 60 else f"{(seconds + 59) // 60} minutes"


def forbidden_algorithm(alg: str) -> bool:
    """``none``, the HMAC family and anything PyJWT does not know."""
    known = jwt.algorithms.get_default_algorithms()
    return alg.lower() == "none" or alg.upper().startswith("HS") or alg not in known


@dataclass(frozen=True)
class Expectations:
    """What a valid id_token of this relying party looks like."""

    issuer: str
    client_id: str
    nonce: str | None  # None: do not check (refresh responses carry no new nonce)
    leeway: float = 30.0
    max_age: float | None = 600.0  # reject tokens issued longer ago than this (+ leeway)
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    subject: str | None = None  # on refresh: the subject must not change


def _key_for(header: Mapping[str, Any], jwks: Mapping[str, Any]) -> Mapping[str, Any]:
    keys = [k for k in jwks.get("keys", []) if isinstance(k, Mapping)]
    usable = [k for k in keys if k.get("use", "sig") == "sig"]
    kid = header.get("kid")
    if kid is None:
        if len(usable) == 1:
            return usable[0]
        raise TokenError("no_kid", "the id_token names no key and the IdP publishes several")
    for key in usable:
        if key.get("kid") == kid:
            return key
    raise UnknownKeyError(
        "unknown_kid", "the id_token is signed with a key the IdP does not publish"
    )


def verify_id_token(
    token: str, jwks: Mapping[str, Any], expect: Expectations, *, now: float | None = None
) -> dict[str, Any]:
    """Claims of ``token`` if it is a valid id_token for ``expect``; else :class:`TokenError`.

    Checks, in order: size and structure, ``alg`` against the allow-list (never ``none`` or
    ``HS*``), the key (by ``kid``) and that its type fits ``alg``, the signature, ``iss``,
    ``aud`` (and ``azp`` with several audiences), ``exp``/``nbf``/``iat`` with ``leeway``,
    the token age, ``sub`` and ``nonce``.
    """
    now = time.time() if now is None else now
    alg, public_key = _signing_key(token, jwks, expect)
    claims = _decode(token, public_key, alg, expect)
    _check_times(claims, expect, now)
    _check_identity(claims, expect)
    return claims


def _signing_key(token: str, jwks: Mapping[str, Any], expect: Expectations) -> tuple[str, Any]:
    """The token's ``alg`` and the public key that must have signed it."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed", "the id_token is missing or too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise TokenError("malformed", f"the id_token is not a JWT: {exc}") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or forbidden_algorithm(alg) or alg not in expect.algorithms:
        raise TokenError(
            "alg", f"the id_token uses algorithm {str(alg)[:20]!r}, which is not allowed"
        )
    key = _key_for(header, jwks)
    kty = _KEY_TYPE.get(alg[:2])
    if key.get("kty") != kty or (key.get("alg") not in (None, alg)):
        raise TokenError("alg", f"the id_token's algorithm {alg} does not fit its key")
    if alg in _EC_CURVE and key.get("crv") != _EC_CURVE[alg]:
        raise TokenError("alg", f"the id_token's algorithm {alg} does not fit its key's curve")
    try:
        return alg, jwt.PyJWK(dict(key), algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise TokenError("key", f"the IdP's key {key.get('kid')!r} is unusable: {exc}") from None


def _decode(token: str, public_key: Any, alg: str, expect: Expectations) -> dict[str, Any]:
    """Signature, ``iss``, ``aud`` and the required claims (times: :func:`_check_times`)."""
    # Times are checked by _check_times against ``now`` (PyJWT would use the wall clock).
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=public_key,
            algorithms=[alg],
            audience=expect.client_id,
            issuer=expect.issuer,
            leeway=expect.leeway,
            options={
                "require": ["exp", "iat", "iss", "aud", "sub"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise TokenError("aud", "the id_token was issued to another client (aud)") from None
    except jwt.InvalidIssuerError:
        raise TokenError("iss", "the id_token was issued by another issuer (iss)") from None
    except jwt.InvalidSignatureError:
        raise TokenError("signature", "the id_token's signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("claims", f"the id_token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError("malformed", f"the id_token is invalid: {type(exc).__name__}") from None
    return claims


def _check_identity(claims: Mapping[str, Any], expect: Expectations) -> None:
    """``azp`` with several audiences, ``sub`` (pinned on refresh) and ``nonce``."""
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != expect.client_id:
        raise TokenError("aud", "the id_token has several audiences and another azp")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise TokenError("claims", "the id_token's subject (sub) is missing or invalid")
    if expect.subject is not None and sub != expect.subject:
        raise TokenError("sub", "the refreshed id_token is for another subject")
    if expect.nonce is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce, expect.nonce):
            raise TokenError("nonce", "the id_token does not answer this sign-in (nonce)")


def _check_times(claims: Mapping[str, Any], expect: Expectations, now: float) -> None:
    """exp/nbf/iat against ``now`` (PyJWT checks them against the wall clock)."""
    try:
        exp = float(claims["exp"])
        iat = float(claims["iat"])
        nbf = float(claims.get("nbf", iat))
    except (TypeError, ValueError):
        raise TokenError("claims", "the id_token's time claims are not numbers") from None
    if exp < now - expect.leeway:
        raise TokenError("expired", "the id_token has expired")
    if iat > now + expect.leeway or nbf > now + expect.leeway:
        raise TokenError("not_yet_valid", "the id_token is not valid yet (nbf/iat in the future)")
    if expect.max_age is not None and iat < now - expect.max_age - expect.leeway:
        raise TokenError("too_old", "the id_token was issued too long ago")
