"""MockHub wired for jupyterhub-af: ``af_hub(facility=..., **AFSpawner config)``.

Uses JupyterHub's own MockHub (a real hub with a real configurable-http-proxy) through
pytest-jupyterhub's ``hub_app`` fixture, with ``spawner_class = "af"`` resolved through the
entry point, like an operator's ``jupyterhub_config.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from afspawner.runtime import clear_runtimes
from testbed.procs import free_port

HubFactory = Callable[..., Awaitable[Any]]
os.environ.setdefault("JUPYTERHUB_CRYPT_KEY", "0" * 64)


def _two_ports() -> tuple[int, int]:
    """Two free ports (``free_port`` never hands out the same one twice)."""
    return free_port(), free_port()


def hub_config(
    facility_file: Path,
    spawner: Mapping[str, Any] | None = None,
    authenticator: Mapping[str, Any] | None = None,
    hub: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    public, api = _two_ports()
    return {
        # a plain base URL: the Python configurable-http-proxy re-encodes MockHub's default
        # '/@/space%20word/' prefix and loops
        "JupyterHub": {
            "spawner_class": "af",
            "allow_named_servers": True,
            "named_server_limit_per_user": 0,
            "bind_url": f"http://127.0.0.1:{public}/",
            "cookie_secret_file": str(facility_file.parent / "cookie_secret"),
            **(hub or {}),
        },
        "AFSpawner": {
            "facility_file": str(facility_file),
            "start_timeout": 60,
            "http_timeout": 30,
            **(spawner or {}),
        },
        "Authenticator": {"enable_auth_state": True, "allow_all": True, **(authenticator or {})},
        # one pid file per hub: a shared one makes a new hub kill the previous test's proxy
        # the proxy's API port chosen here too: MockHub's random one could equal bind_url's port
        "ConfigurableHTTPProxy": {
            "pid_file": str(facility_file.parent / "proxy.pid"),
            "api_url": f"http://127.0.0.1:{api}",
        },
    }


@pytest.fixture
async def af_hub(hub_app: HubFactory, tmp_path: Path) -> Any:
    """Factory: ``await af_hub(facility_dict, spawner={...})`` → a started MockHub."""
    clear_runtimes()

    async def start(
        facility: Mapping[str, Any], spawner: Mapping[str, Any] | None = None, **kw: Any
    ) -> Any:
        path = tmp_path / f"facility-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(dict(facility)))
        return await hub_app(hub_config(path, spawner, **kw))

    yield start
    clear_runtimes()
