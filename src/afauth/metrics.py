"""Prometheus metrics of the authenticator, served by the hub at ``/hub/metrics``.

In ``prometheus_client``'s default registry, like JupyterHub's own metrics, named
``jupyterhub_af_*`` (list and meaning: docs/operations.md):

- sign-ins per IdP by outcome (``success``, ``refused``, ``error``) and refusals by reason;
- how long each request to an IdP took (OIDC discovery, keys, token endpoint, user info; LDAP
  bind and search), per IdP and operation.

Label values are configured IdP names and fixed strings of the code, never user input. A
refusal's reason travels from where it is decided to :func:`login_outcome` as an attribute of
the ``HTTPError`` (:func:`tag`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

from prometheus_client import Counter, Histogram
from tornado import web

PREFIX = "jupyterhub_af_"
#: Where in a sign-in a refusal was decided (the ``reason`` label).
Reason = Literal[
    "bad_request",  # no or unknown IdP, a flow that must use its button
    "credentials",  # the IdP refused: wrong password, refused code, unusable account or claims
    "idp_unavailable",  # the IdP did not answer (an ``error``, not a refusal)
    "binding",  # the hub name belongs to another identity
    "access",  # the IdP's require_groups
    "blocked",  # blocked_idps / blocked_groups / blocked_vos / blocked_users
    "not_allowed",  # passed the IdP but not allowed on this hub
]
REASON_ATTR = "af_login_reason"
IDP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Operation label of each OIDC request (the ``what`` of ``OIDC._fetch``).
OIDC_OPERATIONS: Mapping[str, str] = {
    "discovery": "discovery",
    "key set": "jwks",
    "sign-in code": "token",
    "session renewal": "token",
    "user info": "userinfo",
}

LABELS: Mapping[str, tuple[str, ...]] = {
    PREFIX + "logins_total": ("idp", "outcome"),
    PREFIX + "login_refusals_total": ("idp", "reason"),
    PREFIX + "idp_request_duration_seconds": ("idp", "operation"),
}
LOGINS = Counter(
    PREFIX + "logins_total",
    "Sign-ins by IdP and outcome (success, refused, error)",
    LABELS[PREFIX + "logins_total"],
)
LOGIN_REFUSALS = Counter(
    PREFIX + "login_refusals_total",
    "Refused or failed sign-ins by IdP and reason",
    LABELS[PREFIX + "login_refusals_total"],
)
IDP_LATENCY = Histogram(
    PREFIX + "idp_request_duration_seconds",
    "Seconds a request to an IdP took (OIDC: discovery, jwks, token, userinfo; LDAP: bind, "
    "search), whatever its answer",
    LABELS[PREFIX + "idp_request_duration_seconds"],
    buckets=IDP_BUCKETS,
)


def tag(error: web.HTTPError, reason: Reason) -> web.HTTPError:
    """``error`` marked with the reason of the refusal (kept if one is set already)."""
    if getattr(error, REASON_ATTR, None) is None:
        setattr(error, REASON_ATTR, reason)
    return error


def login_outcome(status: int | None, reason: str | None) -> tuple[str, str | None]:
    """``(outcome, reason)`` of a sign-in: ``status`` ``None`` means a user came out;
    ``reason`` ``None`` with no user means JupyterHub's allow checks said no."""
    if status is None:
        return ("success", None) if reason is None else ("refused", reason)
    if status >= 500 or reason == "idp_unavailable":
        return "error", reason or "idp_unavailable"
    return "refused", reason or ("bad_request" if status in (400, 404, 405) else "credentials")


def record_login(idp: str, status: int | None, reason: str | None) -> None:
    outcome, why = login_outcome(status, reason)
    LOGINS.labels(idp, outcome).inc()
    if why is not None:
        LOGIN_REFUSALS.labels(idp, why).inc()


def failure_reason(stage: str, status: int) -> Reason:
    """Reason of an ``AuthFailure`` raised while authenticating, from where it was raised."""
    if status >= 500:
        return "idp_unavailable"
    if stage == "binding":
        return "binding"
    if stage == "access":
        return "access"
    return "credentials"


def oidc_operation(what: str) -> str:
    return OIDC_OPERATIONS.get(what, "other")


@contextmanager
def idp_request(idp: str, operation: str) -> Iterator[None]:
    """Time one request to an IdP (any thread), whether it succeeds or fails."""
    began = time.monotonic()
    try:
        yield
    finally:
        IDP_LATENCY.labels(idp, operation).observe(time.monotonic() - began)
