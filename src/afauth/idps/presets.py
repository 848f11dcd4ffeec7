"""OIDC presets: CERN SSO, INDIGO IAM (WLCG profile) and CILogon (university SSO)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from afauth.errors import AuthFailure
from afauth.idps.oidc import OIDC, email_verified
from afauth.mapping import lookup
from afcore.options import Option, as_list


def _optional_issuer(options: Mapping[str, Option]) -> dict[str, Option]:
    return {**options, "issuer": Option("url", help="default: the public service")}


class CERN(OIDC):
    """CERN SSO (Keycloak realm ``cern``): user name from ``cern_upn``, groups from
    ``cern_roles`` (the application's roles, e.g. from the CERN Application Portal)."""

    type_name: ClassVar[str] = "cern"
    description: ClassVar[str] = "CERN Single Sign-On"
    options: ClassVar[Mapping[str, Option]] = _optional_issuer(OIDC.options)
    defaults: ClassVar[Mapping[str, object]] = {
        **OIDC.defaults,
        "issuer": "https://auth.cern.ch/auth/realms/cern",
        "username_claim": "cern_upn",
        "groups_claim": "cern_roles",
    }

    def default_display_name(self) -> str:
        return "CERN SSO"


class IAM(OIDC):
    """INDIGO IAM with the WLCG token profile: subject ``sub`` (or a unique claim the site
    chooses), groups from ``wlcg.groups`` (``/cms``, ``/cms/uscms``)."""

    type_name: ClassVar[str] = "iam"
    description: ClassVar[str] = "INDIGO IAM (WLCG profile)"
    defaults: ClassVar[Mapping[str, object]] = {
        **OIDC.defaults,
        "scope": ["openid", "profile", "email", "wlcg.groups"],
        "username_claim": "sub",
        "groups_claim": "wlcg.groups",
    }

    def default_display_name(self) -> str:
        return "INDIGO IAM"


class CILogon(OIDC):
    """CILogon: people from the institutions (SAML entity IDs) in ``allowed_idps``.

    The user name comes from ``eppn`` (or the entry's ``username_claim``); ``strip_domain``
    turns ``jdoe@ucsd.edu`` into ``jdoe`` for that institution. Logins through any other
    institution are refused, whatever ``allow_all`` says.
    """

    type_name: ClassVar[str] = "cilogon"
    description: ClassVar[str] = "CILogon (InCommon/eduGAIN institutions)"
    options: ClassVar[Mapping[str, Option]] = {
        **_optional_issuer(OIDC.options),
        "allowed_idps": Option(
            "str-or-mapping",
            required=True,
            help="entity IDs, or entity ID → {username_claim, strip_domain}",
        ),
        "select_idps": Option("bool", help="send selected_idp so CILogon lists only these"),
    }
    defaults: ClassVar[Mapping[str, object]] = {
        **OIDC.defaults,
        "issuer": "https://cilogon.org",
        "scope": ["openid", "profile", "email", "org.cilogon.userinfo"],
        "username_claim": "eppn",
        "select_idps": True,
    }
    ENTRY_KEYS = frozenset({"username_claim", "strip_domain"})

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        raw = config["allowed_idps"]
        self.allowed: dict[str, dict[str, str]] = (
            {str(k): dict(v or {}) for k, v in raw.items()}
            if isinstance(raw, Mapping)
            else {entity: {} for entity in as_list(raw)}
        )

    def default_display_name(self) -> str:
        return "your institution (CILogon)"

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        problems = super().check_combination(config)
        raw = config.get("allowed_idps")
        if isinstance(raw, Mapping):
            for entity, entry in raw.items():
                where = f"allowed_idps.{entity}"
                if entry is None:
                    continue
                if not isinstance(entry, Mapping):
                    problems.append((where, "expected a mapping (username_claim, strip_domain)"))
                    continue
                for key, value in entry.items():
                    if key not in cls.ENTRY_KEYS:
                        allowed = ", ".join(sorted(cls.ENTRY_KEYS))
                        problems.append((f"{where}.{key}", f"unknown key; allowed: {allowed}"))
                    elif not isinstance(value, str) or not value:
                        problems.append((f"{where}.{key}", "expected a non-empty string"))
        return problems

    def authorize_params(self) -> dict[str, str]:
        params = super().authorize_params()
        if self.opt("select_idps"):
            params.setdefault("selected_idp", ",".join(self.allowed))
        return params

    def raw_username(self, claims: Mapping[str, Any]) -> object:
        entity = claims.get("idp")
        if not isinstance(entity, str) or entity not in self.allowed:
            institution = claims.get("idp_name") if isinstance(claims.get("idp_name"), str) else ""
            raise AuthFailure(
                f"Signing in through {institution or 'this institution'} is not allowed on this "
                "hub. Choose one of the institutions the facility supports.",
                detail=f"CILogon idp {str(entity)[:200]!r} not in allowed_idps",
            )
        entry = self.allowed[entity]
        claim = entry.get("username_claim") or str(self.opt("username_claim"))
        if claim == "email" and not email_verified(claims):
            raise AuthFailure(
                "Your institution has not verified your email address, which this hub uses as "
                "your user name.",
                detail="email used as username but email_verified is not true",
            )
        values = lookup(claims, claim)
        value = values[0] if values else None
        if not isinstance(value, str) or not value:
            raise AuthFailure(
                f"Your institution did not release '{claim}', which this hub needs to give you "
                "an account. Ask your institution's identity team to release it to CILogon.",
                detail=f"CILogon login without {claim}",
            )
        domain = entry.get("strip_domain")
        if domain and value.lower().endswith("@" + domain.lower()):
            value = value[: -len(domain) - 1]
        return value
