"""Dask in the demo hub (`scripts/demo`): the real demo hub process (as test_demo_browser.py
starts it) runs dask-gateway-server as its managed service. Ada signs in, starts a "CMS
analysis" notebook server, and code runs in a kernel of that server (Jupyter's kernel API and
its websocket, as JupyterLab runs a cell): ``Gateway()`` with no arguments creates a cluster,
two workers sum a dask.array, and scaling past the CMS quota is refused with the reason while
the cluster keeps the allowed size."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from integration.test_demo_browser import demo_hub

__all__ = ["demo_hub"]  # the demo test's fixture, used here too

pytestmark = [pytest.mark.hub]

_XSRF = re.compile(r'(?:name="_xsrf" value="|xsrf_token: ")([^"]+)"')  # form, or page.html

# the notebook cell: what a demo user types (no address, no token: the server's environment)
CELL = """
from dask_gateway import Gateway
import dask.array as da

gateway = Gateway()
options = gateway.cluster_options()
print("OPTIONS", sorted(options._fields), options.flavor, options.vo, options.worker_size)
cluster = gateway.new_cluster(options)
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=120)
print("SUM", da.ones((1000, 1000), chunks=(250, 250)).sum().compute())
print("ENV", sorted(set(client.run(lambda: __import__("os").environ["AF_VO"]).values())))
try:
    cluster.scale(6)
except Exception as exc:
    print("REFUSED", exc)
else:
    print("REFUSED nothing")
import time
time.sleep(3)
print("WORKERS", len(client.scheduler_info()["workers"]))
client.close()
cluster.shutdown()
print("DONE")
"""


def sign_in_and_start(url: str, user: str, flavor: str) -> str:
    """Sign in through the demo's login form, start the default server of ``flavor``, and
    return an API token of the user's (made with their session, as the token page does)."""
    with httpx.Client(base_url=url, timeout=60, follow_redirects=True) as web:
        page = web.get("/hub/login")
        xsrf = _XSRF.search(page.text)
        assert xsrf, page.text[:2000]
        r = web.post(
            "/hub/login/demo",
            data={"_xsrf": xsrf.group(1), "username": user, "password": "pw"},
        )
        assert r.status_code == 200, (r.status_code, r.text[:2000])
        page = web.get("/hub/spawn")
        xsrf = _XSRF.search(page.text)
        assert xsrf, page.text[:2000]
        web.post("/hub/spawn", data={"_xsrf": xsrf.group(1), "flavor": flavor})
        headers = {"X-XSRFToken": web.cookies.get("_xsrf", path="/hub/") or ""}
        r = web.post(f"/hub/api/users/{user}/tokens", json={"note": "demo test"}, headers=headers)
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        auth = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            model = web.get(f"/hub/api/users/{user}", headers=auth).json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return token
            time.sleep(0.5)
        raise AssertionError(f"{user}'s server is not ready: {model}")


async def run_cell(url: str, user: str, token: str, code: str, within: float) -> str:
    """Run ``code`` in a new kernel of the user's server; its output (stdout, errors)."""
    auth = {"Authorization": f"token {token}"}
    base = f"{url}/user/{user}/api"
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(f"{base}/kernels", json={"name": "python3"}, headers=auth)
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
    session = uuid.uuid4().hex
    ws_url = f"{base.replace('http', 'ws', 1)}/kernels/{kernel}/channels?session_id={session}"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=auth))
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": user,
                    "session": session,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "stop_on_error": True},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    out: list[str] = []
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            raw = await ws.read_message()
            assert raw is not None, "the kernel's websocket closed"
            msg: dict[str, Any] = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                out.append("ERROR " + "\n".join(content.get("traceback", [])))
            elif kind == "execute_reply":
                return "".join(out)
        raise AssertionError(f"the cell did not finish in {within:.0f}s: {''.join(out)}")
    finally:
        ws.close()
        async with httpx.AsyncClient(timeout=30) as http:
            await http.delete(f"{base}/kernels/{kernel}", headers=auth)


def line(output: str, key: str) -> str:
    found = [x[len(key) + 1 :] for x in output.splitlines() if x.startswith(key + " ")]
    assert found, output
    return found[0]


async def test_a_demo_user_runs_a_dask_cluster_and_meets_the_quota(demo_hub: str) -> None:
    token = await asyncio.to_thread(sign_in_and_start, demo_hub, "ada", "cms-analysis")
    output = await run_cell(demo_hub, "ada", token, CELL, within=240)
    assert "ERROR" not in output, output
    # the options the facility offers ada: the CMS flavor, charged to CMS, small workers
    assert line(output, "OPTIONS") == "['flavor', 'vo', 'worker_size'] cms-analysis cms small"
    assert line(output, "SUM") == "1000000.0"
    assert line(output, "ENV") == "['cms']"
    # her notebook (1 CPU) + the scheduler (1) + 2 workers (1 each) = the VO's 4 CPU
    refused = line(output, "REFUSED")
    assert "VO cms uses" in refused, refused
    assert "your Dask cluster can have 2 of the 6 workers you asked" in refused, refused
    assert line(output, "WORKERS") == "2"
    assert "DONE" in output
