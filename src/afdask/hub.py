"""The gateway's client of the hub's Dask API (:mod:`afspawner.daskapi`); aiohttp, no policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp


class HubError(Exception):
    """The hub refused (``status`` 4xx, ``message`` for the user) or could not be reached."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Lease:
    workers: int
    message: str | None


class HubClient:
    """Calls ``<hub api url>/af/dask/...`` with the gateway's service token."""

    def __init__(self, api_url: str, token: str, timeout: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"token {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, *parts: str) -> str:
        return "/".join([self.api_url, "af", "dask", *(quote(p, safe="") for p in parts)])

    async def _call(self, method: str, url: str, body: object = None) -> dict[str, Any]:
        try:
            async with self.session.request(method, url, json=body, headers=self._headers) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if resp.status >= 400:
                    message = data.get("message") if isinstance(data, Mapping) else None
                    raise HubError(str(message or f"the hub answered {resp.status}"), resp.status)
                return dict(data) if isinstance(data, Mapping) else {}
        except aiohttp.ClientError as exc:
            raise HubError(f"the hub could not be reached ({type(exc).__name__})") from None
        except TimeoutError:
            raise HubError("the hub did not answer in time") from None

    async def user(self, name: str) -> dict[str, Any]:
        return await self._call("GET", self._url("users", name))

    async def token(self, name: str) -> str | None:
        """The user's bearer token for their clusters (``None``: none); never logged."""
        token = (await self._call("GET", self._url("users", name, "token"))).get("token")
        return token if isinstance(token, str) and token else None

    async def lease(
        self, user: str, cluster: str, options: Mapping[str, Any], workers: int, running: int = 0
    ) -> Lease:
        """Reserve the scheduler and up to ``workers`` workers; how many the hub granted."""
        body = {"options": dict(options), "workers": workers, "running": running}
        data = await self._call("PUT", self._url("leases", user, cluster), body)
        granted = data.get("workers")
        if not isinstance(granted, int):
            raise HubError("the hub's lease answer has no worker count")
        message = data.get("message")
        return Lease(granted, message if isinstance(message, str) else None)

    async def release(self, user: str, cluster: str) -> None:
        try:
            await self._call("DELETE", self._url("leases", user, cluster))
        except HubError as exc:
            if exc.status != 404:
                raise
