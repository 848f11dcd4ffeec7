"""The node ``oidc-provider`` process: its JSON config, start/stop, and the control API."""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from testbed.oidc.claims import default_users, stable_uuid
from testbed.oidc.model import (
    DEFAULT_CLIENT_ID,
    DEFAULT_REDIRECT_URI,
    ISSUER_NAMES,
    JSON,
    RECOMMENDED_SCOPES,
    IssuerInfo,
    OIDCClient,
    OIDCTestbedError,
    OIDCUser,
)
from testbed.procs import LOOPBACK

__all__ = ["OIDC_DIR", "SERVER_SCRIPT", "OIDCTestbed"]

OIDC_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = OIDC_DIR / "server.mjs"


class OIDCTestbed:
    """The node ``oidc-provider`` issuers, configured before ``start()``, controllable after.

    Every issuer gets a confidential client ``af-hub`` (secret ``<issuer>-hub-secret``,
    ``client_secret_basic`` or ``client_secret_post``) with ``redirect_uris`` and the default users
    of ``default_users``. Use ``add_client``, ``add_redirect_uris``, ``set_user`` and ``set_ttl``
    at any time; after ``start()`` they reconfigure the running issuers.
    """

    def __init__(
        self,
        *,
        redirect_uris: Sequence[str] = (DEFAULT_REDIRECT_URI,),
        issuers: Iterable[str] = ISSUER_NAMES,
        access_token_ttl: int = 3600,
        id_token_ttl: int = 3600,
        refresh_token_ttl: int = 14 * 24 * 3600,
        pkce_required: bool = True,
        rotate_refresh_token: bool = True,
        port: int = 0,
        node: str = "node",
        startup_timeout: float = 30.0,
    ) -> None:
        self._pkce_required = pkce_required
        self._rotate_refresh_token = rotate_refresh_token
        self._port = port
        self._node = node
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self.port = 0
        self.startup_seconds = 0.0
        self.issuers: dict[str, IssuerInfo] = {}
        for name in issuers:
            if name not in ISSUER_NAMES:
                raise ValueError(f"unknown issuer {name!r}; known: {', '.join(ISSUER_NAMES)}")
            client = OIDCClient(
                DEFAULT_CLIENT_ID,
                f"{name}-hub-secret",
                list(redirect_uris),
            )
            self.issuers[name] = IssuerInfo(
                name=name,
                profile=name,
                users=default_users(name),
                clients={DEFAULT_CLIENT_ID: client},
                scope=RECOMMENDED_SCOPES[name],
                ttl={
                    "access_token": access_token_ttl,
                    "id_token": id_token_ttl,
                    "refresh_token": refresh_token_ttl,
                },
            )

    # -- lifecycle -----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> IssuerInfo:
        return self.issuers[name]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def base_url(self) -> str:
        if not self.port:
            raise OIDCTestbedError("the test bed is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> JSON:
        """The JSON document given to server.mjs."""
        return {
            "port": self._port,
            "issuers": {
                name: {
                    "profile": info.profile,
                    "ttl": dict(info.ttl),
                    "pkce_required": self._pkce_required,
                    "rotate_refresh_token": self._rotate_refresh_token,
                    "clients": [c.to_config() for c in info.clients.values()],
                    "users": {u.username: u.to_config() for u in info.users.values()},
                }
                for name, info in self.issuers.items()
            },
        }

    def start(self) -> Self:
        if self._process is not None:
            raise OIDCTestbedError("the test bed is already started")
        node = shutil.which(self._node)
        if node is None:
            raise OIDCTestbedError(
                f"{self._node!r} not found on PATH; the OIDC test bed needs Node.js"
            )
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise OIDCTestbedError(
                f"oidc-provider is not installed in {OIDC_DIR / 'node_modules'}; run "
                "`npm ci --prefix tests/testbed/oidc --no-audit --no-fund` from the repository root"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="af-oidc-testbed-"))
        config_path = self._workdir / "config.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        stdout_path = self._workdir / "stdout.log"
        stderr_path = self._workdir / "stderr.log"
        started = time.monotonic()
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [node, str(SERVER_SCRIPT), "--config", str(config_path), "--exit-with-stdin"],
                cwd=OIDC_DIR,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, "NODE_ENV": "test"},
            )
        atexit.register(self.stop)
        try:
            self.port = self._wait_ready(stdout_path, stderr_path)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
        for name, state in self.state()["issuers"].items():
            if name in self.issuers:
                self.issuers[name].issuer = state["issuer"]
        return self

    def _wait_ready(self, stdout_path: Path, stderr_path: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            match = re.search(r"^READY (\d+)$", stdout_path.read_text(errors="replace"), re.M)
            if match:
                return int(match.group(1))
            if self._process.poll() is not None:
                raise OIDCTestbedError(
                    f"oidc test bed exited with code {self._process.returncode} before READY;"
                    f" stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise OIDCTestbedError(
                    f"oidc test bed not READY after {self._startup_timeout:.0f}s;"
                    f" stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the node process (SIGTERM, then SIGKILL) and clean up. Idempotent."""
        process, self._process = self._process, None
        if self._http is not None:
            self._http.close()
            self._http = None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.port = 0
        for info in self.issuers.values():
            info.issuer = ""

    def logs(self) -> str:
        """The node process's stderr so far (for assertion messages)."""
        if self._workdir is None:
            return ""
        path = self._workdir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- control API ---------------------------------------------------------------------------

    def _control(
        self, method: str, route: str, issuer: str | None = None, body: JSON | None = None
    ) -> JSON:
        if self._http is None or not self.running:
            raise OIDCTestbedError("the test bed is not running")
        params = {"issuer": issuer} if issuer is not None else None
        with self._lock:
            response = self._http.request(method, f"/__control/{route}", params=params, json=body)
        if response.status_code != 200:
            raise OIDCTestbedError(
                f"control {route} for {issuer}: {response.status_code} {response.text}"
            )
        result: JSON = response.json()
        return result

    def state(self) -> JSON:
        """Server-side view: issuer URLs, current key ids, clients, users, TTLs."""
        return self._control("GET", "state")

    def health(self) -> bool:
        return bool(self._control("GET", "health").get("ok"))

    def current_kids(self, issuer: str) -> list[str]:
        kids: list[str] = self.state()["issuers"][issuer]["kids"]
        return kids

    def rotate_keys(self, issuer: str) -> str:
        """Replace the issuer's signing key; the old key leaves the JWKS. Returns the new kid.

        Sessions, grants and refresh tokens issued before stay valid.
        """
        self.issuers[issuer]._require_started()
        kid: str = self._control("POST", "rotate-keys", issuer)["kid"]
        return kid

    def add_client(
        self,
        issuer: str,
        client_id: str,
        *,
        redirect_uris: Sequence[str],
        client_secret: str | None = None,
        token_endpoint_auth_method: str | None = None,
        **metadata: Any,
    ) -> OIDCClient:
        """Register (or replace) a client. No secret means a public client (auth method none)."""
        client = OIDCClient(
            client_id,
            client_secret,
            list(redirect_uris),
            token_endpoint_auth_method,
            dict(metadata),
        )
        info = self.issuers[issuer]
        if self.running:
            self._control("POST", "clients", issuer, client.to_config())
        info.clients[client_id] = client
        return client

    def add_redirect_uris(
        self, *uris: str, issuer: str | None = None, client_id: str = DEFAULT_CLIENT_ID
    ) -> None:
        """Allow more redirect URIs for a client on one issuer (or on all when issuer is None)."""
        for name in [issuer] if issuer is not None else list(self.issuers):
            old = self.issuers[name].clients[client_id]
            merged = [*old.redirect_uris, *(u for u in uris if u not in old.redirect_uris)]
            self.add_client(
                name,
                client_id,
                redirect_uris=merged,
                client_secret=old.client_secret,
                token_endpoint_auth_method=old.token_endpoint_auth_method,
                **old.metadata,
            )

    def set_user(
        self,
        issuer: str,
        username: str,
        *,
        password: str,
        claims: Mapping[str, Any],
        sub: str | None = None,
    ) -> OIDCUser:
        """Add or replace an account. Claim changes show up in the next token (also on refresh)."""
        user = OIDCUser(
            username, password, sub or stable_uuid(issuer, username), copy.deepcopy(dict(claims))
        )
        if self.running:
            self._control("POST", "users", issuer, {"username": username, **user.to_config()})
        self.issuers[issuer].users[username] = user
        return user

    def update_claims(self, issuer: str, username: str, **claims: Any) -> OIDCUser:
        """Change some claims of an existing account (e.g. drop a group, then refresh)."""
        user = self.issuers[issuer].users[username]
        return self.set_user(
            issuer, username, password=user.password, sub=user.sub, claims={**user.claims, **claims}
        )

    def set_ttl(
        self,
        issuer: str | None = None,
        *,
        access_token: int | None = None,
        id_token: int | None = None,
        refresh_token: int | None = None,
    ) -> None:
        """Change token lifetimes (seconds) for tokens issued from now on."""
        ttl = {
            k: v
            for k, v in {
                "access_token": access_token,
                "id_token": id_token,
                "refresh_token": refresh_token,
            }.items()
            if v is not None
        }
        for name in [issuer] if issuer is not None else list(self.issuers):
            if self.running:
                self._control("POST", "settings", name, {"ttl": ttl})
            self.issuers[name].ttl.update(ttl)

    def revoke_grants(self, issuer: str, username: str) -> int:
        """Revoke every grant and session of a user at the IdP (refresh tokens stop working)."""
        revoked: int = self._control("POST", "revoke-grants", issuer, {"username": username})[
            "revoked_grants"
        ]
        return revoked

    def allow_token_exchange(
        self,
        issuer: str,
        audiences: Mapping[str, Sequence[str]],
        client_id: str = DEFAULT_CLIENT_ID,
    ) -> None:
        """Let ``client_id`` exchange its users' access tokens (RFC 8693, exchange.mjs) for
        tokens of these audiences, each with at most the listed scopes (WLCG storage scopes
        also cover sub-paths); ``{}``: no audience is allowed."""
        body = {"client_id": client_id, "audiences": {a: list(s) for a, s in audiences.items()}}
        self._control("POST", "token-exchange", issuer, body)
