"""Local backend: servers as processes on the hub's machine (single-machine sites, the demo).

As root it switches to the plan's uid/gid and runs in ``<root_dir>/<user>``; otherwise it only
runs servers as the hub's own user when ``run_as_hub_user`` is set (no isolation: demo only).
Volumes and GPUs are Kubernetes concepts and are refused here rather than silently dropped.
Servers started by this process are also known by (user, server), so ``stop()`` works without
saved state; processes of an earlier hub process are not tracked (they die with their session
or are found by their saved pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from afspawner.backends.base import Backend, LaunchFailed, LaunchRequest, ProgressSink, Started
from afspawner.backends.options import option, options_table, settings_from
from afspawner.facility import Facility
from afspawner.plan import LaunchPlan, UserIdentity
from afspawner.ports import pick_port

DEFAULT_ROOT = Path.home() / "af-servers"


@dataclass(frozen=True)
class LocalSettings:
    """Options of the local backend (``c.AFSpawner.backend_options``), declared once."""

    root_dir: Path = option(  # noqa: RUF009 - option() returns a dataclasses.field
        DEFAULT_ROOT, "per-user working directories", shown="`~/af-servers`"
    )
    run_as_hub_user: bool = option(
        False, "run servers as the hub's own user (no isolation: demos only)"
    )
    ip: str = option("127.0.0.1", "where servers listen")


def local_docs_table() -> str:
    """The options table of docs/spawner.md ("Local backend options")."""
    return options_table(LocalSettings)


def _with_port(url: str, ip: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme or "http", f"{ip}:{port}", parts.path, parts.query, ""))


def _write_token(path: Path, token: str | bytes, owner: tuple[int, int] | None) -> None:
    """Atomically replace the token file (mode 0600, owned by the server's user as root).

    The directory belongs to the user: the temporary file is created anew (never through a
    link the user left there) and its owner set on the open file."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if owner is not None:
            os.fchown(fh.fileno(), *owner)
        fh.write(token.encode() if isinstance(token, str) else token)
    os.replace(tmp, path)


def _rewrite_token(path: Path, token: str | bytes) -> None:
    """Replace the token file, owned by the owner of the server's directory; ``""``: remove
    it."""
    if not token:
        path.unlink(missing_ok=True)
        return
    st = os.lstat(path.parent)
    _write_token(path, token, (st.st_uid, st.st_gid) if os.geteuid() == 0 else None)


def _write_services(folder: Path, tokens: Mapping[str, str], owner: tuple[int, int] | None) -> None:
    """Make ``folder`` (0700, created if needed) hold one 0600 file per non-empty token and
    nothing else; names are service names (``credentials.SERVICE_NAME``). ``owner``: set on
    the folder and the files (the hub runs as root); ``None``: the hub's own user."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):  # the user put a link or a file there: refuse
        raise LaunchFailed(f"{folder} is not a directory")
    if owner is not None:
        os.chown(folder, *owner, follow_symlinks=False)
    for name in os.listdir(folder):
        if not tokens.get(name):
            with contextlib.suppress(OSError):  # not ours (a folder the user made): leave it
                (folder / name).unlink()
    for name, token in tokens.items():
        if token:
            _write_token(folder / name, token, owner)


def _rewrite_services(folder: Path, tokens: Mapping[str, str]) -> None:
    """:func:`_write_services` for a running server, as the owner of its directory."""
    st = os.lstat(folder.parent)
    _write_services(folder, tokens, (st.st_uid, st.st_gid) if os.geteuid() == 0 else None)


async def _spawn(
    cmd: list[str], env: dict[str, str], cwd: Path, ident: UserIdentity | None
) -> asyncio.subprocess.Process:
    """Start ``cmd`` in its own session, as ``ident`` when given (the hub runs as root)."""

    def demote() -> None:  # runs in the child, before exec
        os.setsid()
        if ident is not None:
            os.setgroups(list(ident.supplemental_gids))
            os.setgid(ident.gid)
            os.setuid(ident.uid)

    try:
        return await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=cwd, preexec_fn=demote, stdin=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        raise LaunchFailed(f"cannot run {cmd[0]}: {exc.strerror or exc}") from exc


class LocalBackend(Backend):
    sweep_interval = 30.0  # nothing to delete; the ledger is still checked against the hub

    @classmethod
    def create(cls, facility: Facility, options: Mapping[str, Any]) -> Backend:
        return cls(settings_from(LocalSettings, options, "local"))

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._by_server: dict[tuple[str, str], dict[str, Any]] = {}
        self._ports: set[int] = set()  # of the servers this process started, until stopped

    def _check(self, plan: LaunchPlan) -> bool:
        """Refuse what this backend cannot do; ``True`` when it runs as root (can switch uid)."""
        if plan.gpu is not None:
            raise LaunchFailed("the local backend has no GPUs; pick a flavor without a GPU")
        if plan.volumes:
            names = ", ".join(v.name for v in plan.volumes)
            raise LaunchFailed(f"the local backend cannot mount volumes ({names})")
        uid = plan.identity.uid
        as_root = os.geteuid() == 0
        if not as_root and uid != os.getuid() and not self.settings.run_as_hub_user:
            raise LaunchFailed(
                f"the hub runs as uid {os.getuid()} and cannot start a server as uid {uid}; "
                "run the hub as root or set backend_options.run_as_hub_user (demo only)"
            )
        return as_root

    def _env(self, req: LaunchRequest, workdir: Path, port: int) -> dict[str, str]:
        """The process environment: basics, the hub's variables, then the plan's ``env``."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(workdir),
            "USER": req.plan.identity.username,
            **req.hub_env,
            **req.plan.env,
        }
        if "JUPYTERHUB_SERVICE_URL" in env:
            env["JUPYTERHUB_SERVICE_URL"] = _with_port(
                env["JUPYTERHUB_SERVICE_URL"], self.settings.ip, port
            )
        return env

    def _command(self, req: LaunchRequest, port: int) -> list[str]:
        cmd = [*req.cmd, *req.args, f"--ip={self.settings.ip}", f"--port={port}"]
        if cmd[0] == "jupyterhub-singleuser":
            cmd[0] = str(Path(sys.executable).parent / "jupyterhub-singleuser")
        return cmd

    async def launch(self, req: LaunchRequest, progress: ProgressSink) -> Started:
        plan, ident = req.plan, req.plan.identity
        as_root = self._check(plan)
        workdir = self.settings.root_dir / plan.username
        workdir.mkdir(parents=True, exist_ok=True)
        if as_root:
            os.chown(workdir, ident.uid, ident.gid)
        port = pick_port(self.settings.ip, held=self._ports)
        env = self._env(req, workdir, port)
        state: dict[str, Any] = {"port": port}
        if req.bearer_token is not None:
            token_file = workdir / ".af-bearer-token"
            _write_token(token_file, req.bearer_token, (ident.uid, ident.gid) if as_root else None)
            env["BEARER_TOKEN_FILE"] = state["token_file"] = str(token_file)
        if req.krb5_ccache is not None:
            ccache = workdir / ".af-krb5cc"
            _write_token(ccache, req.krb5_ccache, (ident.uid, ident.gid) if as_root else None)
            state["ccache_file"] = str(ccache)
            env["KRB5CCNAME"] = f"FILE:{ccache}"
        if req.service_tokens is not None:  # afauth.exchange's tokens: $AF_TOKENS_DIR/<service>
            folder = workdir / ".af-tokens"
            _write_services(folder, req.service_tokens, (ident.uid, ident.gid) if as_root else None)
            env["AF_TOKENS_DIR"] = state["tokens_dir"] = str(folder)
        switch = as_root and not self.settings.run_as_hub_user
        progress(f"Starting {plan.flavor} as uid {ident.uid} on port {port}")
        proc = await _spawn(self._command(req, port), env, workdir, ident if switch else None)
        self._procs[proc.pid] = proc
        self._ports.add(port)
        started = {"pid": proc.pid, **state}
        self._by_server[(plan.username, plan.server_name)] = started
        return Started(self.settings.ip, port, started)

    async def find(self, username: str, server_name: str) -> Mapping[str, Any] | None:
        state = self._by_server.get((username, server_name))
        if state is None or await self.poll(state) is not None:
            return None
        return dict(state)

    async def update_token(self, state: Mapping[str, Any], token: str) -> None:
        path = state.get("token_file")
        if path:
            await asyncio.to_thread(_rewrite_token, Path(str(path)), token)

    async def update_ccache(self, state: Mapping[str, Any], data: bytes) -> None:
        path = state.get("ccache_file")
        if path:
            await asyncio.to_thread(_rewrite_token, Path(str(path)), data)

    async def update_services(self, state: Mapping[str, Any], tokens: Mapping[str, str]) -> None:
        folder = state.get("tokens_dir")
        if folder:
            await asyncio.to_thread(_rewrite_services, Path(str(folder)), tokens)

    async def poll(self, state: Mapping[str, Any]) -> int | None:
        pid = int(state.get("pid", 0))
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.returncode
        if pid <= 0:
            return 0
        try:
            os.kill(pid, 0)  # survived a hub restart?
        except OSError:
            return 0
        return None

    async def stop(self, state: Mapping[str, Any], now: bool = False) -> None:
        pid = int(state.get("pid", 0))
        if pid <= 0:
            return
        for key in [k for k, v in self._by_server.items() if v.get("pid") == pid]:
            del self._by_server[key]
        self._ports.discard(int(state.get("port", 0)))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        proc = self._procs.pop(pid, None)
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 1 if now else 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            await proc.wait()
