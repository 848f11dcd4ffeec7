"""Per-service tokens by OAuth 2.0 Token Exchange (RFC 8693), as INDIGO IAM and Keycloak offer.

An OIDC IdP entry may declare ``services``: for each, the hub exchanges the user's access token
for a narrower token (one ``audience``, the service's ``scopes``) at every sign-in and at every
renewal of the access token (a visit's refresh or the token refresher of running servers), and
keeps them in auth_state under :data:`STATE_KEY` (docs/auth_state.md); servers get one file per
service (``$AF_TOKENS_DIR/<service>``)::

    services:
      rucio:
        audience: "https://rucio.example"
        scopes: ["storage.read:/", "storage.modify:/user/{username}"]
      eos: {audience: "eos.example", scopes: ["storage.read:/eos/cms"], vos: [cms], required: true}

Pure parts (checks, which services a user gets, scope templates) are functions of data; the
exchange itself goes through the IdP's token endpoint with tornado's async HTTP client (the
IdP's ``_token_request``), never blocking the event loop. Tokens never reach a log line.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from afauth.errors import AuthFailure
from afcore.issues import join_path
from afcore.templates import fill, template_problem

#: auth_state key of the service tokens: ``{service: {access_token, expires_at, audience,
#: scope, error}}`` (docs/auth_state.md).
STATE_KEY = "service_tokens"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
#: A service name: a file name in the server and a Kubernetes Secret key.
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
SERVICE_KEYS = frozenset({"audience", "scopes", "vos", "groups", "required"})
#: Placeholders of ``scopes`` and ``audience``, filled from the identity.
FIELDS = frozenset({"username", "subject", "idp"})
#: A filled-in value may only hold these, so it cannot add a scope or change a path.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9._@~+-]{1,256}$")
MAX_SERVICES = 16
WHAT = "token exchange"


class TokenEndpoint(Protocol):
    """What the exchange needs of an OIDC IdP (:class:`afauth.idps.oidc.OIDC`)."""

    name: str
    display_name: str
    log: Any

    def opt(self, key: str) -> Any: ...

    async def _token_request(
        self, form: dict[str, str], what: str
    ) -> tuple[int, dict[str, Any]]: ...

    def _token_problem(self, status: int, body: Mapping[str, Any], what: str) -> AuthFailure: ...


@dataclass(frozen=True)
class Service:
    """One declared service: who gets it and what its token may do."""

    name: str
    audience: str
    scopes: tuple[str, ...] = ()
    vos: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    required: bool = False


# -- configuration (checked at hub start through the IdP's check_combination) -------------------


def _names(value: object, path: str, problems: list[tuple[str, str]]) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        problems.append((path, "expected a list of names"))
        return frozenset()
    return frozenset(str(i) for i in items)


def _template(value: object, path: str, problems: list[tuple[str, str]]) -> str | None:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        problems.append((path, "expected a non-empty string without spaces"))
        return None
    problem = template_problem(value, FIELDS)
    if problem:
        problems.append((path, problem))
        return None
    return value


def parse_services(raw: object) -> tuple[tuple[Service, ...], list[tuple[str, str]]]:
    """The services of an IdP's ``services`` option, and every problem as ``(key path,
    message)`` relative to the IdP entry (``services.rucio.scopes[1]``)."""
    problems: list[tuple[str, str]] = []
    if raw is None:
        return (), problems
    if not isinstance(raw, Mapping):
        return (), [("services", "expected a mapping of service name to its settings")]
    if len(raw) > MAX_SERVICES:
        problems.append(("services", f"at most {MAX_SERVICES} services"))
    out: list[Service] = []
    for name, spec in raw.items():
        path = join_path("services", str(name))
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            problems.append((path, "a service name is lower-case letters, digits and '-' (≤ 32)"))
            continue
        if not isinstance(spec, Mapping):
            problems.append((path, "expected a mapping with 'audience' and 'scopes'"))
            continue
        start = len(problems)
        for key in spec:
            if key not in SERVICE_KEYS:
                allowed = ", ".join(sorted(SERVICE_KEYS))
                problems.append((join_path(path, str(key)), f"unknown key; allowed: {allowed}"))
        audience = _template(spec.get("audience"), join_path(path, "audience"), problems)
        raw_scopes = spec.get("scopes", [])
        scopes: list[str] = []
        if not isinstance(raw_scopes, list | tuple):
            problems.append((join_path(path, "scopes"), "expected a list of scopes"))
        for i, scope in enumerate(raw_scopes if isinstance(raw_scopes, list | tuple) else []):
            checked = _template(scope, f"{join_path(path, 'scopes')}[{i}]", problems)
            scopes.append(checked or "")
        vos = _names(spec.get("vos", []), join_path(path, "vos"), problems)
        groups = _names(spec.get("groups", []), join_path(path, "groups"), problems)
        required = spec.get("required", False)
        if not isinstance(required, bool):
            problems.append((join_path(path, "required"), "must be true or false"))
        if len(problems) == start and audience is not None:
            out.append(Service(name, audience, tuple(scopes), vos, groups, bool(required)))
    return tuple(out), problems


def check_services(raw: object) -> list[tuple[str, str]]:
    """Problems of an IdP's ``services`` option (empty when valid or absent)."""
    return parse_services(raw)[1]


# -- decisions (pure) ---------------------------------------------------------------------------


def services_for(
    services: Collection[Service], *, vos: Collection[str], groups: Collection[str]
) -> list[Service]:
    """The services a user with these VOs and hub groups (from mapping) gets: those without
    ``vos``/``groups``, and those naming one of the user's VOs or groups."""
    mine_vos, mine_groups = set(vos), set(groups)
    return [
        s
        for s in services
        if (not s.vos and not s.groups) or (s.vos & mine_vos) or (s.groups & mine_groups)
    ]


def fill_values(state: Mapping[str, Any]) -> dict[str, str]:
    """Placeholder values of an auth_state (``{username}``, ``{subject}``, ``{idp}``)."""
    return {key: str(state.get(key) or "") for key in FIELDS}


def _safe(value: str) -> str:
    if not SAFE_VALUE.fullmatch(value):
        raise ValueError("a placeholder value has characters a scope cannot hold")
    return value


def request_for(service: Service, values: Mapping[str, str]) -> tuple[str, str]:
    """``(audience, scope)`` of ``service`` for a user; ValueError when a value used by a
    placeholder is empty or holds a space, ``/`` or another character that would change
    the scope's meaning."""
    audience = fill(service.audience, values, _safe)
    scope = " ".join(fill(s, values, _safe) for s in service.scopes)
    return audience, scope


def exchange_form(subject_token: str, audience: str, scope: str) -> dict[str, str]:
    """The token request of RFC 8693 section 2.1."""
    form = {
        "grant_type": GRANT_TYPE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": audience,
    }
    if scope:
        form["scope"] = scope
    return form


def entry_from_response(
    body: Mapping[str, Any], audience: str, scope: str, now: float
) -> dict[str, Any]:
    """The auth_state entry of a 200 answer; ``error`` set when it carries no usable token."""
    token = body.get("access_token")
    issued = body.get("issued_token_type", ACCESS_TOKEN_TYPE)
    entry: dict[str, Any] = {
        "access_token": None,
        "expires_at": None,
        "audience": audience,
        "scope": scope,
        "error": None,
    }
    if not isinstance(token, str) or not token:
        entry["error"] = "no access_token in the answer"
    elif issued not in (ACCESS_TOKEN_TYPE, JWT_TYPE):
        entry["error"] = f"unexpected issued_token_type {str(issued)[:80]!r}"
    else:
        entry["access_token"] = token
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            entry["expires_at"] = now + float(expires_in)
        granted = body.get("scope")
        if isinstance(granted, str):
            entry["scope"] = granted
    return entry


def keep_earlier(
    new: Mapping[str, dict[str, Any]], earlier: Mapping[str, Any], now: float
) -> dict[str, dict[str, Any]]:
    """After a renewal: a service whose exchange failed keeps its earlier token while that
    one is valid (its ``error`` says why it was not renewed)."""
    out = dict(new)
    for name, entry in new.items():
        old = earlier.get(name)
        if not entry["error"] or not isinstance(old, Mapping) or not old.get("access_token"):
            continue
        expires = old.get("expires_at")
        if expires is None or (isinstance(expires, int | float) and expires > now):
            out[name] = {**old, "error": entry["error"]}
    return out


def failed(audience: str, scope: str, error: str) -> dict[str, Any]:
    return {
        "access_token": None,
        "expires_at": None,
        "audience": audience,
        "scope": scope,
        "error": error,
    }


def earliest_expiry(state: Mapping[str, Any]) -> float | None:
    """When the first of the access token and the service tokens expires (what the token
    refresher renews for: an IdP may give exchanged tokens a shorter life)."""
    times = [state.get("expires_at")]
    services = state.get(STATE_KEY)
    if isinstance(services, Mapping):
        times += [
            e.get("expires_at")
            for e in services.values()
            if isinstance(e, Mapping) and e.get("access_token")
        ]
    known = [float(t) for t in times if isinstance(t, int | float) and not isinstance(t, bool)]
    return min(known) if known else None


# -- the exchange (I/O) -------------------------------------------------------------------------


def configured(idp: object) -> tuple[Service, ...]:
    """The services of an IdP (none for IdP types without the ``services`` option)."""
    opt = getattr(idp, "opt", None)
    raw = opt("services") if callable(opt) and "services" in getattr(idp, "options", {}) else None
    return parse_services(raw)[0] if raw else ()


async def _one(
    idp: TokenEndpoint, service: Service, subject_token: str, values: Mapping[str, str]
) -> tuple[dict[str, Any], AuthFailure | None]:
    try:
        audience, scope = request_for(service, values)
    except (ValueError, KeyError) as exc:
        idp.log.warning("%s: no %s token for service %s: %s", idp.name, WHAT, service.name, exc)
        error = AuthFailure(
            f"This hub cannot ask {idp.display_name} for a {service.name} token for you.",
            detail=f"service {service.name}: {exc}",
        )
        return failed(service.audience, "", "scope template"), error
    try:
        status, body = await idp._token_request(exchange_form(subject_token, audience, scope), WHAT)
    except AuthFailure as exc:  # unreachable: already logged by the IdP, without tokens
        return failed(audience, scope, "no answer"), exc
    if status != 200:
        problem = idp._token_problem(status, body, f"{WHAT} for {service.name}")
        return failed(audience, scope, str(body.get("error", f"HTTP {status}"))[:64]), problem
    entry = entry_from_response(body, audience, scope, time.time())
    if entry["error"]:
        idp.log.warning("%s: %s for %s: %s", idp.name, WHAT, service.name, entry["error"])
        return entry, AuthFailure(
            f"{idp.display_name} did not give a usable {service.name} token.",
            detail=f"{WHAT} for {service.name}: {entry['error']}",
            status=503,
        )
    return entry, None


async def exchange_all(
    idp: TokenEndpoint,
    services: Collection[Service],
    state: Mapping[str, Any],
    *,
    enforce: bool = True,
) -> dict[str, dict[str, Any]]:
    """One token per service of ``state``'s user, exchanged concurrently; a failed one has
    ``access_token: null`` and ``error``. With ``enforce``, raises the failure of a
    ``required`` service."""
    subject_token = str(state.get("access_token") or "")
    chosen = services_for(services, vos=state.get("vos") or (), groups=state.get("groups") or ())
    if not subject_token or not chosen:
        return {}
    values = fill_values(state)
    results = await asyncio.gather(*(_one(idp, s, subject_token, values) for s in chosen))
    out = {s.name: entry for s, (entry, _) in zip(chosen, results, strict=True)}
    for service, (_, problem) in zip(chosen, results, strict=True):
        if problem is not None and service.required and enforce:
            raise problem
    lacking = sorted(name for name, e in out.items() if e["error"])
    idp.log.info(
        "%s: service tokens for %s: %s%s",
        idp.name,
        state.get("username"),
        ", ".join(sorted(set(out) - set(lacking))) or "none",
        f" (none for {', '.join(lacking)})" if lacking else "",
    )
    return out


async def with_service_tokens(
    idp: object, model: dict[str, Any], previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``model`` (a JupyterHub auth model) with its auth_state's service tokens: exchanged
    anew when the access token is new, else kept from ``previous`` (for the services the
    user still gets). No-op for IdPs without ``services``.

    At sign-in (no ``previous``) a failed ``required`` service refuses the sign-in; at a
    renewal nothing raises (the renewed, possibly rotated, tokens must be saved): a failed
    service keeps its earlier token while it is valid."""
    services = configured(idp)
    state = model.get("auth_state")
    if not services or not isinstance(state, dict):
        return model
    if not state.get("access_token"):
        state.pop(STATE_KEY, None)
        return model
    earlier = previous.get(STATE_KEY) if previous else None
    if (
        previous
        and previous.get("access_token") == state["access_token"]
        and isinstance(earlier, Mapping)
    ):
        names = {s.name for s in services_for(services, vos=state["vos"], groups=state["groups"])}
        state[STATE_KEY] = {k: dict(v) for k, v in earlier.items() if k in names}
        return model
    fresh = await exchange_all(idp, services, state, enforce=previous is None)  # type: ignore[arg-type]
    if isinstance(earlier, Mapping):
        fresh = keep_earlier(fresh, earlier, time.time())
    state[STATE_KEY] = fresh
    return model
