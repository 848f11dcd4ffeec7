"""Users of the gateway, authenticated by the hub, with what the spawner knows of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dask_gateway_server.auth import JupyterHubAuthenticator
from dask_gateway_server.models import User

from afdask.hub import HubClient, HubError
from afspawner.plan import UserIdentity
from afspawner.policy import UserContext


class AFUser(User):  # type: ignore[misc]
    """A gateway user with the VOs and POSIX identity the hub's spawner would use."""

    def __init__(
        self,
        name: str,
        groups: Iterable[str] = (),
        admin: bool = False,
        vos: Iterable[str] = (),
        identity: UserIdentity | None = None,
        identity_problem: str | None = None,
    ) -> None:
        super().__init__(name, groups=groups, admin=admin)
        self.vos: tuple[str, ...] = tuple(vos)
        self.identity = identity
        self.identity_problem = identity_problem

    def context(self) -> UserContext:
        groups: set[str] = self.groups
        return UserContext(str(self.name), frozenset(groups), self.vos, bool(self.admin))


def identity_from(data: object) -> UserIdentity | None:
    if not isinstance(data, Mapping):
        return None
    uid, gid = data.get("uid"), data.get("gid")
    extra = data.get("supplemental_gids") or []
    if not isinstance(uid, int) or not isinstance(gid, int) or not isinstance(extra, list):
        return None
    return UserIdentity(str(data.get("username", "")), uid, gid, tuple(int(g) for g in extra))


def user_from(data: Mapping[str, Any]) -> AFUser:
    """The hub's ``GET /hub/api/af/dask/users/<name>`` answer → :class:`AFUser`."""
    problem = data.get("identity_problem")
    return AFUser(
        str(data["name"]),
        groups=[str(g) for g in data.get("groups") or ()],
        admin=bool(data.get("admin")),
        vos=[str(v) for v in data.get("vos") or ()],
        identity=identity_from(data.get("identity")),
        identity_problem=problem if isinstance(problem, str) else None,
    )


class AFHubAuthenticator(JupyterHubAuthenticator):  # type: ignore[misc]
    """dask-gateway's JupyterHub authentication, then the user's VOs, groups and identity
    from the hub's Dask API (the gateway's service token needs ``custom:af-dask:lease``)."""

    async def setup(self, app: Any) -> None:
        await super().setup(app)
        self.hub = HubClient(self.jupyterhub_api_url, self.jupyterhub_api_token)

    async def cleanup(self) -> None:
        await super().cleanup()
        if hasattr(self, "hub"):
            await self.hub.close()

    async def authenticate(self, request: Any) -> User:
        from aiohttp import web

        user = await super().authenticate(request)
        if ":" in user.name:  # a service, not a user: no VOs, no identity
            return user
        try:
            data = await self.hub.user(user.name)
        except HubError as exc:
            self.log.warning("no facility data for %s: %s", user.name, exc.message)
            raise web.HTTPBadGateway(reason="the hub did not say who you are; try again") from None
        return user_from(data)
