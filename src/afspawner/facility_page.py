"""Install the facility page: ``afspawner.facility_page.setup(c)`` in ``jupyterhub_config.py``.

Adds ``/hub/facility`` (page) and ``/hub/api/facility`` (JSON) through
``c.JupyterHub.extra_handlers``, the page's templates through ``c.JupyterHub.template_paths``,
the scope ``custom:af-facility:read`` through ``c.JupyterHub.custom_scopes``, and gives every
user ``custom:af-facility:read!user`` (their own usage) through
``c.JupyterHub.extra_user_scopes``. Admins (``admin:users``) see everything; a VO manager's
role holds ``custom:af-facility:read!group=<vo>`` (docs/operations.md, "Facility page").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afspawner.overview import SCOPE

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAV_TEMPLATES = TEMPLATES / "nav"
DESCRIPTION = (
    "Read the analysis facility's quota and GPU usage: without a filter every VO and user; "
    "!group=<vo> one VO and its users; !user one's own."
)


def setup(c: Any, nav_link: bool = True) -> None:
    """Add the facility page and API to the hub configuration ``c`` (once).

    ``nav_link`` puts a "Facility" link in the hub's navigation bar, through a ``page.html``
    that extends the hub's own; a site with its own ``page.html`` sets it to ``False`` and
    links ``{{ base_url }}facility`` itself.
    """
    from afspawner.handlers import FacilityAPI, FacilityPage  # jupyterhub only when used

    hub = c.JupyterHub
    hub.extra_handlers.extend([(r"/facility", FacilityPage), (r"/api/facility", FacilityAPI)])
    hub.template_paths.append(str(TEMPLATES))
    if nav_link:
        hub.template_paths.insert(0, str(NAV_TEMPLATES))
    hub.custom_scopes.update({SCOPE: {"description": DESCRIPTION}})
    own = f"{SCOPE}!user"
    scopes = hub.extra_user_scopes  # a set trait: unset, a lazy value that takes ``update``
    if isinstance(scopes, list | set | tuple | frozenset):
        hub.extra_user_scopes = [*scopes, own]
    else:
        scopes.update({own})
