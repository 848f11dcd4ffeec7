"""id_token verification (pure; keys generated here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from afauth.tokens import (
    Expectations,
    TokenError,
    UnknownKeyError,
    verify_id_token,
)

ISS = "https://idp.example.org/realm"
CLIENT = "af-hub"
NONCE = "n-0S6_WzA2Mj"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


RSA_KEY = _rsa()
OTHER_RSA_KEY = _rsa()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk_of(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo = jwt.algorithms.get_default_algorithms()[alg or "RS256"]
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


JWKS = {
    "keys": [
        jwk_of(RSA_KEY, "rsa-1", "RS256"),
        jwk_of(EC_KEY, "ec-1", "ES256"),
        jwk_of(ED_KEY, "ed-1", "EdDSA"),
    ]
}


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": CLIENT,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, kid: str | None = "rsa-1", alg="RS256"):
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def expect(**over: Any) -> Expectations:
    base: dict[str, Any] = {"issuer": ISS, "client_id": CLIENT, "nonce": NONCE}
    base.update(over)
    return Expectations(**base)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reason_of(token: str, jwks: dict[str, Any] = JWKS, **over: Any) -> str:
    with pytest.raises(TokenError) as info:
        verify_id_token(token, jwks, expect(**over))
    return info.value.reason


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [(RSA_KEY, "rsa-1", "RS256"), (EC_KEY, "ec-1", "ES256"), (ED_KEY, "ed-1", "EdDSA")],
)
def test_valid_tokens_of_each_key_type(key: Any, kid: str, alg: str) -> None:
    got = verify_id_token(sign(claims(), key, kid, alg), JWKS, expect())
    assert got["sub"] == "user-1"


def test_alg_none_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert reason_of(token) == "alg"


def test_hs256_signed_with_the_public_key_refused() -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert reason_of(f"{header}.{body}.{b64(sig)}") == "alg"


def test_alg_outside_the_configured_allow_list_refused() -> None:
    token = sign(claims(), EC_KEY, "ec-1", "ES256")
    assert reason_of(token, algorithms=("RS256",)) == "alg"


def test_alg_that_does_not_fit_the_key_refused() -> None:
    # PS256 with a key published for RS256 (kid rsa-1 declares alg RS256)
    assert reason_of(sign(claims(), RSA_KEY, "rsa-1", "PS256")) == "alg"
    # ES256 header pointing at an RSA key
    assert reason_of(sign(claims(), EC_KEY, "rsa-1", "ES256")) == "alg"


def test_unknown_kid_is_its_own_error() -> None:
    with pytest.raises(UnknownKeyError):
        verify_id_token(sign(claims(), OTHER_RSA_KEY, "rotated-2"), JWKS, expect())


def test_missing_kid_with_several_keys_refused_and_with_one_key_accepted() -> None:
    token = sign(claims(), RSA_KEY, None)
    assert reason_of(token) == "no_kid"
    single = {"keys": [jwk_of(RSA_KEY, "only")]}
    assert verify_id_token(token, single, expect())["sub"] == "user-1"


def test_signature_by_another_key_under_a_known_kid_refused() -> None:
    assert reason_of(sign(claims(), OTHER_RSA_KEY, "rsa-1")) == "signature"


def test_tampered_payload_refused() -> None:
    header, _, sig = sign(claims()).split(".")
    body = b64(json.dumps(claims(sub="admin")).encode())
    assert reason_of(f"{header}.{body}.{sig}") == "signature"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"iss": "https://evil.example.org/realm"}, "iss"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": [CLIENT, "another"], "azp": "another"}, "aud"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iat": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iat": int(time.time()) - 7200}, "too_old"),
        ({"nonce": "another-nonce"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": None}, "claims"),
        ({"exp": None}, "claims"),
        ({"sub": "x" * 300}, "claims"),
    ],
)
def test_claim_checks(over: dict[str, Any], reason: str) -> None:
    assert reason_of(sign(claims(**over))) == reason


def test_several_audiences_with_our_azp_accepted() -> None:
    token = sign(claims(aud=[CLIENT, "other"], azp=CLIENT))
    assert verify_id_token(token, JWKS, expect())["azp"] == CLIENT


def test_leeway_applies_both_ways() -> None:
    now = time.time()
    token = sign(claims(exp=int(now) - 10, iat=int(now) - 100))
    assert verify_id_token(token, JWKS, expect(leeway=30), now=now)
    assert reason_of(token, leeway=0) == "expired"


def test_refresh_expectations_skip_nonce_but_pin_the_subject() -> None:
    token = sign(claims(nonce=None))
    assert verify_id_token(token, JWKS, expect(nonce=None, subject="user-1"))
    assert reason_of(token, nonce=None, subject="someone-else") == "sub"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 20000, "e30.e30.e30"])
def test_garbage_refused_cleanly(token: str) -> None:
    with pytest.raises(TokenError):
        verify_id_token(token, JWKS, expect())
