"""One kubernetes-asyncio ApiClient per hub process, and raw JSON requests on it."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException

_clients: dict[str | None, client.ApiClient] = {}
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # pauses between connection attempts (doubling)
CONNECT_RETRY_SECONDS = 30.0  # how long a request without its own limit keeps trying
_lock = asyncio.Lock()


async def shared_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """The process-wide client for ``kubeconfig`` (in-cluster config when ``None``)."""
    async with _lock:
        if kubeconfig in _clients:
            return _clients[kubeconfig]
        cfg = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except ConfigException:
                await config.load_kube_config(client_configuration=cfg)
        _resolve_proxy_once(cfg)
        api = client.ApiClient(cfg)
        _no_per_request_env(api)
        _plain_json_bodies(api)
        _clients[kubeconfig] = api
        return api


def _resolve_proxy_once(cfg: client.Configuration) -> None:
    """The proxy the environment names for the apiserver (``HTTPS_PROXY``, ``NO_PROXY``),
    looked up once here instead of on every request (see :func:`_no_per_request_env`)."""
    if cfg.proxy:
        return
    host = urllib.parse.urlsplit(str(cfg.host)).hostname or ""
    proxies = urllib.request.getproxies()
    scheme = urllib.parse.urlsplit(str(cfg.host)).scheme or "https"
    proxy = proxies.get(scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        cfg.proxy = proxy


def _no_per_request_env(api: client.ApiClient) -> None:
    """kubernetes-asyncio opens its aiohttp session with ``trust_env=True``, so every request
    made two trips to a thread (a proxy lookup in the environment and a ``~/.netrc`` read): in
    a spawn storm, thousands of thread hops contending with the event loop for the GIL. The
    proxy is resolved once (:func:`_resolve_proxy_once`); apiserver credentials never come
    from ``.netrc``."""
    session = api.rest_client.pool_manager
    if hasattr(session, "_trust_env"):  # tests/unit/test_kube_client.py fails if it goes
        session._trust_env = False


def _plain_json_bodies(api: client.ApiClient) -> None:
    """Dicts go to the JSON encoder as they are: kubernetes-asyncio otherwise copies every
    request's headers and body, key by key, to turn model objects into dicts (about 1 ms per
    spawn, a tenth of the hub's CPU per spawn in a storm). Every request here is built from
    plain JSON types by :func:`request`'s callers (manifests); anything else fails in the
    encoder with a ``TypeError``."""
    general = api.sanitize_for_serialization

    def sanitize(obj: Any) -> Any:
        return obj if isinstance(obj, dict) else general(obj)

    api.sanitize_for_serialization = sanitize  # type: ignore[method-assign]


async def close_shared_clients() -> None:
    async with _lock:
        for api in [*_clients.values(), *_watch_clients]:
            await api.close()
        _clients.clear()
        _watch_clients.clear()


_watch_clients: list[client.ApiClient] = []  # closed with the shared clients
_WATCH_ATTR = "_af_watch_client"


def watch_client(api: client.ApiClient) -> client.ApiClient:
    """The client ``api``'s watches go through: same configuration (and credentials, refreshed
    the same way), its own connections, no limit on their number.

    A watch holds its connection for minutes. On ``api`` itself, every watched namespace (pods
    and events each) would take one of its 100 connections for good, and a facility with ~50
    VO namespaces would leave none for requests: spawns would wait forever. Watches are
    bounded by the informers, so their own pool needs no limit."""
    found: client.ApiClient | None = getattr(api, _WATCH_ATTR, None)
    if found is None or found.rest_client.pool_manager.closed:  # new, or closed at shutdown
        cfg = copy.copy(api.configuration)
        cfg.connection_pool_maxsize = 0  # aiohttp: no limit
        found = client.ApiClient(cfg)
        _no_per_request_env(found)
        setattr(api, _WATCH_ATTR, found)
        _watch_clients.append(found)
    return found


def silence_timeout(seconds: float | None) -> aiohttp.ClientTimeout | None:
    """A request fails when the apiserver stays silent for ``seconds``: no connection, or no
    byte of the answer, for that long. Not a limit on the whole request: under a spawn storm
    the hub's own event loop can take tens of seconds to get round to an answer that came
    at once, and a wall-clock limit failed admitted spawns for the hub's slowness, not the
    apiserver's (tests/chaos/test_quota_storm.py). The spawn's ``start_timeout`` bounds it.
    A connection that cannot be made is tried again within the same limit (:func:`request`)."""
    if seconds is None:
        return None
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


class KubeError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = str(message)


async def request(
    api: client.ApiClient,
    method: str,
    path: str,
    query: dict[str, Any] | None = None,
    body: Any = None,
    request_timeout: float | None = 30,
    decode: bool = True,
) -> Any:
    """A JSON request on the shared client; raises :class:`KubeError` on non-2xx.

    A connection that cannot be made is tried again (0.5 s, 1 s, 2 s... apart) until
    ``request_timeout`` has passed; a refused TLS setting is not. ``body``: plain JSON types
    only (dicts, lists, strings, numbers, booleans, ``None``), sent as they are
    (:func:`_plain_json_bodies`). ``request_timeout``: see :func:`silence_timeout`.
    ``decode=False``: the answer's body is not parsed (``None``), for callers that do not read
    it (a DELETE answers with the whole object)."""
    loop = asyncio.get_running_loop()
    give_up, pause = loop.time() + (request_timeout or CONNECT_RETRY_SECONDS), RETRY_FIRST
    while True:
        try:
            resp = await api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                body=body,
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=silence_timeout(request_timeout),
            )
            break
        except aiohttp.ClientSSLError:  # a certificate or TLS setting: trying again won't help
            raise
        except aiohttp.ClientConnectorError:
            # No connection, so nothing was sent: safe to try again, within the request's
            # limit. The apiserver restarting, or closing a TLS handshake the hub's loop was
            # too busy to finish (its ReadHeaderTimeout is 32 s; a storm can stall the loop
            # that long: tests/chaos/test_quota_storm.py).
            if loop.time() + pause > give_up:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)
    try:
        body_bytes = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status < 300:
        raise KubeError(resp.status, body_bytes.decode("utf-8", "replace"))
    # Decoded here, not in a thread: a decoder holds the GIL for the whole document, so a thread
    # would stall the loop just as long. Callers keep documents small (LIST pages, see informer);
    # orjson decodes them ~3x faster than json (a 6 KB pod: 41 us instead of 114 us).
    return orjson.loads(body_bytes) if body_bytes and decode else None


async def stream(
    api: client.ApiClient, path: str, query: dict[str, Any], request_timeout: float
) -> Any:
    """Open a streaming GET (watch); the caller reads ``resp.content`` and releases it."""
    resp = await watch_client(api).call_api(
        path,
        "GET",
        query_params=list(query.items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=request_timeout,
    )
    if resp.status != 200:
        text = await resp.text()
        resp.release()
        raise KubeError(resp.status, text)
    return resp
