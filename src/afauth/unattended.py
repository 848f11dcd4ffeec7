"""Hub glue of the token refresher: renew a user's tokens without a request, for its servers.

The authenticator starts a :class:`afauth.refresh.Refresher` at hub start
(``c.AFAuthenticator.refresh_running_servers``). It reads only JupyterHub's own objects:
``app.users``, ``user.spawners`` (``ready``), ``user.get_auth_state``/``save_auth_state``,
``sync_groups``/``sync_roles``. New tokens reach the servers through the spawner's optional
``auth_state_updated(auth_state)`` coroutine (docs/auth_state.md; ``AFSpawner`` rewrites the
token file or Secret there). afauth never imports afspawner.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

from tornado import web

from afauth import exchange, kerberos
from afauth.errors import AuthFailure
from afauth.refresh import REAUTH_KEY, Refreshed, Refresher
from afauth.renewal import Outcome, Timing, is_due


def refresher(auth: Any, app: Any) -> Refresher:
    """A refresher over ``app``'s users with ready servers, renewing through ``auth``."""
    timing = Timing(
        margin=float(auth.refresh_margin),
        interval=float(auth.refresh_interval),
        batch=int(auth.refresh_batch),
    )

    def running() -> list[str]:
        return [
            u.name
            for u in list(app.users.values())
            if any(s.ready for s in list(u.spawners.values()))
        ]

    async def renew(name: str) -> Outcome:
        return await renew_for_servers(auth, app.users[name])

    cls = type(app)
    singleton = bool(getattr(cls, "initialized", lambda: False)()) and cls.instance() is app

    def alive() -> bool:  # a hub that was the running instance and was cleared: stop
        return not singleton or (cls.initialized() and cls.instance() is app)

    return Refresher(
        timing,
        running,
        renew,
        concurrency=int(auth.refresh_concurrency),
        log=auth.log,
        alive=alive,
    )


async def renew_for_servers(auth: Any, user: Any) -> Outcome:
    """Renew ``user``'s tokens now (the refresher found them due; the user need not be here)
    and hand them to the user's running servers. When the IdP refuses, remove them from the
    servers and flag the session (:data:`REAUTH_KEY`) so that the next visit signs in again.
    One renewal per user at a time, shared with the visits' ``refresh_user``."""
    seen: list[Outcome] = []

    async def renew(state: Mapping[str, Any]) -> Refreshed:
        outcome, model = await _renew(auth, user, state)
        seen.append(outcome)
        return model if model is not None else outcome.kind != "revoked"

    result = await auth._refresh_gate.run(user.name, user.get_auth_state, renew)
    if seen:
        return seen[0]
    if isinstance(result, dict):  # a visit's refresh renewed them a moment ago
        state = result["auth_state"]
        await hand_to_servers(auth, user, state)
        expires = state.get("expires_at")
        return Outcome("renewed", float(expires) if expires is not None else None)
    return Outcome("idle")


async def _renew(
    auth: Any, user: Any, state: Mapping[str, Any]
) -> tuple[Outcome, dict[str, Any] | None]:
    """One renewal without a request (inside the gate): the outcome and the new model."""
    if not state.get(REAUTH_KEY) and state.get(kerberos.STATE_KEY):  # an LDAP login's ticket
        return await _renew_ticket(auth, user, state), None
    if state.get(REAUTH_KEY) or not state.get("access_token"):
        return Outcome("idle"), None  # nothing to renew (LDAP, or already signed out)
    began = time.time()
    expires_at = exchange.earliest_expiry(state)  # the access token's or a service token's
    if isinstance(expires_at, int | float) and not is_due(
        float(expires_at), None, float(auth.refresh_margin), began
    ):
        return Outcome("valid", float(expires_at)), None  # first look, or renewed by a visit
    idp = auth.idp(str(state.get("idp", "")))
    try:
        if idp is None:
            raise AuthFailure(
                "The identity provider of your session is no longer configured here.",
                detail=f"IdP {str(state.get('idp'))[:40]!r} is no longer configured",
            )
        fresh = await idp.refresh(state, margin=math.inf)  # due: the refresher decided
        if fresh is None:  # no refresh token: nothing to do until the token expires
            return Outcome("idle"), None
        model: dict[str, Any] = auth.auth_model(
            idp, dataclasses.replace(fresh, username=user.name), user.db
        )
        auth.check_blocked_users(user.name, model)  # raises 403 when blocked
        if not (auth.allow_all or auth.check_allowed(user.name, model)):
            raise AuthFailure("You are no longer allowed to use this hub.", detail="not allowed")
        model = await exchange.with_service_tokens(idp, model, state)  # per-service tokens
    except AuthFailure as exc:
        if exc.status == 503:
            auth.log.warning("token refresh of %s postponed: %s", user.name, exc.detail)
            return Outcome("outage"), None
        message, detail = exc.message, exc.detail or exc.message
    except web.HTTPError as exc:
        message = detail = exc.get_message() or "You can no longer use this hub."
    else:
        await apply_model(auth, user, model)
        new = model["auth_state"]
        await hand_to_servers(auth, user, new)
        expires = exchange.earliest_expiry(new)
        lifetime = float(expires) - began if expires is not None else None
        auth.log.info("renewed the tokens of %s for its running servers", user.name)
        return Outcome("renewed", expires, lifetime), model
    auth.log.warning(
        "token refresh of %s refused (%s): its servers' tokens are removed", user.name, detail
    )
    flagged = {**state, "access_token": None, "refresh_token": None, "expires_at": None}
    flagged.pop(exchange.STATE_KEY, None)
    flagged[REAUTH_KEY] = f"Your servers' tokens were removed. {message}"
    await user.save_auth_state(flagged)
    await hand_to_servers(auth, user, flagged)
    if hasattr(user, "_auth_refreshed"):  # JupyterHub's: the next request refreshes
        user._auth_refreshed = None
    return Outcome("revoked"), None


async def _renew_ticket(auth: Any, user: Any, state: Mapping[str, Any]) -> Outcome:
    """Renew the Kerberos ticket of a password login when due (:mod:`afauth.kerberos`);
    when it cannot be renewed any more the session is flagged (:data:`REAUTH_KEY`)."""
    kinit = getattr(auth.idp(str(state.get("idp", ""))), "kerberos", None)
    if not isinstance(kinit, kerberos.Kinit):
        return Outcome("idle")
    step = await kerberos.renew_ticket(kinit, state, margin=float(auth.refresh_margin))
    if step.state is not None:
        await user.save_auth_state(step.state)
        await hand_to_servers(auth, user, step.state)
        if step.kind == "revoked" and hasattr(user, "_auth_refreshed"):
            user._auth_refreshed = None  # the next request refreshes, and is told why
    return Outcome(step.kind, step.expires_at, step.lifetime)


async def apply_model(auth: Any, user: Any, model: Mapping[str, Any]) -> None:
    """What JupyterHub's ``auth_to_user`` does with a refresh result, without a request."""
    if model.get("admin") is not None and model["admin"] != user.admin:
        user.admin = model["admin"]
    if auth.manage_groups and model.get("groups") is not None:
        user.sync_groups(model["groups"])
    if auth.manage_roles and model.get("roles") is not None:
        user.sync_roles(model["roles"])
    await user.save_auth_state(model["auth_state"])


async def hand_to_servers(auth: Any, user: Any, state: Mapping[str, Any]) -> None:
    """Each ready server of ``user`` whose spawner takes credentials
    (``auth_state_updated``) gets ``state`` now; errors are logged (its next poll retries)."""
    for spawner in list(user.spawners.values()):
        hook = getattr(spawner, "auth_state_updated", None)
        if hook is None or not spawner.ready:
            continue
        try:
            await hook(state)
        except Exception as exc:
            auth.log.warning(
                "could not give %s's server %r its new tokens: %s",
                user.name,
                spawner.name,
                type(exc).__name__,
            )
