"""The shared apiserver client: no per-request trips to a thread, the environment's proxy kept."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from afspawner.kube.client import close_shared_clients, request, shared_api_client, watch_client

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://api.facility.example:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: not-a-real-token}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return str(path)


async def test_requests_do_not_look_up_the_environment_each_time(
    kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    api = await shared_api_client(kubeconfig)
    try:
        # aiohttp with trust_env runs a proxy lookup and a ~/.netrc read in a thread per request
        assert api.rest_client.pool_manager.trust_env is False
        assert not api.rest_client.proxy
    finally:
        await close_shared_clients()


async def test_the_environments_proxy_still_applies(
    kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.facility.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    api = await shared_api_client(kubeconfig)
    try:
        assert api.rest_client.proxy == "http://proxy.facility.example:3128"
    finally:
        await close_shared_clients()


async def test_no_proxy_for_the_apiserver_is_respected(
    kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.facility.example:3128")
    monkeypatch.setenv("NO_PROXY", "api.facility.example")
    api = await shared_api_client(kubeconfig)
    try:
        assert not api.rest_client.proxy
    finally:
        await close_shared_clients()


async def test_watches_have_connections_of_their_own(kubeconfig: str) -> None:
    """Each watch holds a connection for minutes: never on the requests' pool of 100."""
    api = await shared_api_client(kubeconfig)
    try:
        watches = watch_client(api)
        assert watches is not api and watch_client(api) is watches
        assert api.rest_client.pool_manager.connector.limit == 100
        assert watches.rest_client.pool_manager.connector.limit == 0  # no limit
        assert watches.rest_client.pool_manager.trust_env is False
        assert watches.configuration.host == api.configuration.host
        assert watches.configuration.api_key == api.configuration.api_key
    finally:
        await close_shared_clients()
    assert watches.rest_client.pool_manager.closed  # closed with the shared clients
    assert watch_client(api) is not watches  # a closed one is replaced
    await close_shared_clients()


def _http_kubeconfig(port: int) -> str:
    return KUBECONFIG.replace(
        "https://api.facility.example:6443", f"http://127.0.0.1:{port}"
    ).replace(", insecure-skip-tls-verify: true", "")


async def _server(drip: list[bytes] | None) -> tuple[asyncio.Server, int]:
    """An HTTP peer on loopback: answers with ``drip`` (one chunk every 0.2 s), or never."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if drip is None:
            await asyncio.sleep(30)  # silent
            return
        body = b"".join(drip)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body))
        for chunk in drip:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_request_fails_on_silence_not_on_a_slow_answer(tmp_path: Path) -> None:
    """``request_timeout`` bounds the apiserver's silence: an answer arriving in pieces over
    1.4 s passes a 0.5 s limit (the hub's loop may be that slow to read it in a storm); a peer
    that says nothing fails it."""
    chunks = [b'{"items": [', b'"a", ', b'"b", ', b'"c", ', b'"d", ', b'"e", ', b'"f"]}']
    slow, slow_port = await _server(chunks)
    mute, mute_port = await _server(None)
    try:
        for port in (slow_port, mute_port):
            (tmp_path / f"k{port}").write_text(_http_kubeconfig(port))
        api = await shared_api_client(str(tmp_path / f"k{slow_port}"))
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await request(api, "GET", "/api/v1/pods", request_timeout=0.5)
        assert got == {"items": ["a", "b", "c", "d", "e", "f"]}
        assert loop.time() - began > 1.0  # the answer really took longer than the limit
        api = await shared_api_client(str(tmp_path / f"k{mute_port}"))
        with pytest.raises(asyncio.TimeoutError):
            await request(api, "GET", "/api/v1/pods", request_timeout=0.5)
    finally:
        await close_shared_clients()
        for server in (slow, mute):
            server.close()


async def test_bodies_are_sent_as_they_are_and_only_json_is_accepted(tmp_path: Path) -> None:
    """Request bodies skip kubernetes-asyncio's copy into dicts (they already are), arrive as
    the same JSON, and something JSON cannot say is refused before anything is sent."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        seen.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "k").write_text(_http_kubeconfig(port))
    body = {
        "metadata": {"name": "jupyter-é", "labels": {"a": "1"}},
        "spec": {"containers": [{"args": ("--x", "y"), "ports": [{"containerPort": 8888}]}]},
        "data": None,
    }
    try:
        api = await shared_api_client(str(tmp_path / "k"))
        assert api.sanitize_for_serialization(body) is body  # not copied
        await request(api, "POST", "/api/v1/namespaces/n/pods", body=body)
        assert [json.loads(b) for b in seen] == [json.loads(json.dumps(body))]
        with pytest.raises(TypeError, match="not JSON serializable"):
            await request(api, "POST", "/x", body={"when": datetime.datetime.now()})
        assert len(seen) == 1  # nothing sent
    finally:
        await close_shared_clients()
        server.close()


async def test_a_connection_refused_is_tried_again_within_the_limit(tmp_path: Path) -> None:
    """Nothing listens at first (an apiserver restarting): the request keeps trying and gets
    the answer once a peer listens; with nobody ever listening it gives up at its limit."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a free port, refused until the peer below starts
    (tmp_path / "k").write_text(_http_kubeconfig(port))
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"up": true}')
        await writer.drain()
        writer.close()

    servers: list[asyncio.Server] = []

    async def listen_later() -> None:
        await asyncio.sleep(1.2)
        servers.append(await asyncio.start_server(handle, "127.0.0.1", port))

    try:
        api = await shared_api_client(str(tmp_path / "k"))
        began = loop.time()
        with pytest.raises(aiohttp.ClientConnectorError):
            await request(api, "GET", "/api", request_timeout=0.8)
        assert loop.time() - began >= 0.5  # tried again before giving up
        later = asyncio.create_task(listen_later())
        assert await request(api, "GET", "/api", request_timeout=10) == {"up": True}
        await later
    finally:
        await close_shared_clients()
        for server in servers:
            server.close()
