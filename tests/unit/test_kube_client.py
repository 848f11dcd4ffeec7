"""The shared apiserver client: no per-request trips to a thread, the environment's proxy kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from afspawner.kube.client import close_shared_clients, shared_api_client, watch_client

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
