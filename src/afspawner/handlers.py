"""The facility page (``/hub/facility``) and its JSON API (``/hub/api/facility``).

Thin JupyterHub handlers: they find the hub process's shared :class:`~afspawner.runtime.Runtime`
(creating it from the spawner's configuration when no spawner exists yet), turn the request's
scopes into a :class:`~afspawner.overview.Viewer` and render the pure
:func:`~afspawner.overview.facility_view`. Installed by :func:`afspawner.facility_page.setup`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from jupyterhub.scopes import Scope
from tornado import web

from afspawner import pipeline
from afspawner.hubview import HubView
from afspawner.overview import ALL, SCOPE, FacilityView, Viewer, facility_view, viewer_from_scopes
from afspawner.runtime import Runtime
from afspawner.spawner import AFSpawner

_PROBE = PROBE = "afspawner_facility_probe"  # the settings key of the configuration probe
_SCOPES = (SCOPE, "admin:users")


def runtime_of(handler: BaseHandler) -> Runtime:
    """The runtime every AFSpawner of this hub shares (the same key as theirs)."""
    settings: dict[str, Any] = handler.settings
    probe = settings.get(_PROBE)
    if probe is None:
        cls = settings.get("spawner_class")
        if not (isinstance(cls, type) and issubclass(cls, AFSpawner)):
            raise web.HTTPError(404, "the facility page needs c.JupyterHub.spawner_class = 'af'")
        # a spawner without a user: it reads the configuration and never spawns
        probe = settings[_PROBE] = cls(config=handler.config)
    rt: Runtime = probe.runtime
    if rt.hub_view is None:  # no spawner yet: the ledger follows the hub's servers all the same
        rt.hub_view = HubView(handler.db)
        rt.start_sweeping()
    return rt


def _scopes(handler: BaseHandler) -> dict[str, object]:
    parsed: Mapping[str, Any] = getattr(handler, "parsed_scopes", {}) or {}
    out: dict[str, object] = {}
    for name in _SCOPES:
        if name in parsed:
            value = parsed[name]
            out[name] = ALL if value == Scope.ALL else value
    return out


async def viewer_of(handler: BaseHandler, rt: Runtime) -> Viewer:
    """Who asks: their VOs (as the spawner sees them) and what their scopes let them see."""
    current = handler.current_user
    if current is None:
        raise web.HTTPError(403, "Missing or invalid credentials.")
    name = None
    vos: tuple[str, ...] = ()
    if getattr(current, "kind", None) == "user":
        name = current.name
        state = await current.get_auth_state()
        login_vos = (state.get("vos") or ()) if isinstance(state, Mapping) else ()
        user = pipeline.user_context(
            rt.facility, name, (g.name for g in current.groups), login_vos, bool(current.admin)
        )
        vos = user.vos
    viewer = viewer_from_scopes(rt.facility, name, vos, _scopes(handler))
    if not (viewer.sees_all or viewer.manages or viewer.sees_self):
        raise web.HTTPError(403, f"Action is not authorized with current scopes; requires {SCOPE}")
    return viewer


def snapshot(rt: Runtime, viewer: Viewer) -> FacilityView:
    admission = rt.admission
    return facility_view(
        rt.facility,
        rt.ledger.reservations(),
        admission.queued(),
        {name: admission.available(name) for name in rt.facility.gpu_classes},
        viewer,
    )


async def _current(handler: BaseHandler) -> FacilityView:
    rt = runtime_of(handler)
    viewer = await viewer_of(handler, rt)
    try:
        await rt.ensure_restored()  # after a restart, before any spawner ran
    except Exception as exc:  # the backend did not answer: show what the ledger holds
        handler.log.warning("facility page: ledger not restored (%s)", type(exc).__name__)
    return snapshot(rt, viewer)


class FacilityPage(BaseHandler):  # type: ignore[misc]
    """``GET /hub/facility``: the page, in the hub's look (extends ``page.html``)."""

    @web.authenticated
    async def get(self) -> None:
        view = await _current(self)
        html = await self.render_template("af-facility.html", view=view)
        self.finish(html)


class FacilityAPI(APIHandler):  # type: ignore[misc]
    """``GET /hub/api/facility``: the same view as JSON, for tokens with the right scopes."""

    async def get(self) -> None:
        view = await _current(self)
        self.finish(json.dumps(dataclasses.asdict(view)))
