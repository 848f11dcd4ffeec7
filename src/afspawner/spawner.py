"""AFSpawner: thin JupyterHub glue around policy → quota → plan → backend.

Configuration errors (facility file, UID map, unknown backend) are raised when the first
spawner is created and name the bad key; refusals are HTTP errors with a message for the user,
raised before anything is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, default

from afspawner import pipeline
from afspawner.admission import WaitSettings
from afspawner.backends import Backend, LaunchFailed, LaunchRequest, Started, backends
from afspawner.facility import Facility
from afspawner.form import options_form, options_from_form
from afspawner.plan import LaunchPlan
from afspawner.policy import PolicySettings, Refusal, UserContext, parse_options
from afspawner.runtime import Runtime, create_runtime, get_runtime
from afspawner.uid import PoolSettings, resolve_identity


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _http_error(exc: LaunchFailed | Refusal) -> web.HTTPError:
    if isinstance(exc, Refusal):
        return web.HTTPError(exc.status, "%s", exc.message)
    return web.HTTPError(500, "%s", f"your server could not start: {exc.message}")


class AFSpawner(Spawner):  # type: ignore[misc]
    facility_file = Unicode(
        "", config=True, help="Path of the facility YAML file (VOs, GPU classes, volumes, flavors)."
    )
    backend = Unicode(
        "kubernetes",
        config=True,
        help="Backend entry point (group afspawner.backends): kubernetes, local, or a site's.",
    )
    backend_options = Dict(config=True, help="Options passed to the backend (see docs).")
    uid_sources = List(
        Unicode(),
        ["auth_state", "static", "pool"],
        config=True,
        help="Where the POSIX uid/gid come from, in order; none found → spawn refused.",
    )
    uid_map_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="YAML/JSON map user → {uid, gid, groups} (source 'static').",
    )
    uid_pool_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="JSON file recording pool accounts (source 'pool').",
    )
    uid_pool_range = List(
        default_value=[60000, 64999], config=True, help="First and last uid of the account pool."
    )
    uid_pool_gid = Integer(60000, config=True, help="gid of pool accounts.")
    allow_root = Bool(False, config=True, help="Allow servers to run as uid/gid 0.")
    gpu_wait = Enum(
        ["refuse", "queue"],
        "refuse",
        config=True,
        help="When no GPU of the class is free: refuse at once, or wait in a FIFO.",
    )
    gpu_queue_timeout = Float(900, config=True, help="Seconds a spawn may wait for a GPU.")
    pass_bearer_token = Bool(
        True,
        config=True,
        help="Give servers the user's OIDC access token (auth_state) in a file named by "
        "$BEARER_TOKEN_FILE and rewrite it whenever the hub refreshes the token.",
    )

    @default("port")
    def _default_port(self) -> int:
        return 8888

    # -- shared runtime ----------------------------------------------------------------------
    def _runtime_key(self) -> tuple[Any, ...]:
        return (
            self.facility_file,
            self.backend,
            repr(sorted(self.backend_options.items())),
            self.uid_map_file,
            self.uid_pool_file,
        )

    def _make_backend(self, facility: Facility) -> Backend:
        cls = backends().load(self.backend)
        return cls.create(facility, dict(self.backend_options))

    @property
    def runtime(self) -> Runtime:
        key = self._runtime_key()
        rt = get_runtime(key)
        if rt is None:
            if not self.facility_file:
                raise ValueError("c.AFSpawner.facility_file is not set")
            pool = None
            if self.uid_pool_file:
                first, last = (int(x) for x in self.uid_pool_range)
                pool = PoolSettings(Path(self.uid_pool_file), first, last, self.uid_pool_gid)
            rt = create_runtime(
                key, self.facility_file, self._make_backend, self.uid_map_file, pool
            )
        return rt

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state: dict[str, Any] = {}
        self._events: list[str] = []
        self._event_signal = asyncio.Event()
        if self.facility_file:
            _ = self.runtime  # configuration errors surface now, not at the first spawn

    # -- who is spawning ---------------------------------------------------------------------
    async def _auth_state(self) -> Mapping[str, Any]:
        state = await self.user.get_auth_state()
        return state if isinstance(state, Mapping) else {}

    async def user_context(self) -> tuple[UserContext, Mapping[str, Any]]:
        auth_state = await self._auth_state()
        user = pipeline.user_context(
            self.runtime.facility,
            self.user.name,
            (g.name for g in self.user.groups),
            auth_state.get("vos") or (),
            bool(self.user.admin),
        )
        return user, auth_state

    # -- form --------------------------------------------------------------------------------
    @default("options_form")
    def _default_options_form(self) -> Any:
        async def form(spawner: AFSpawner) -> str:
            user, _ = await spawner.user_context()
            rt = spawner.runtime
            return options_form(rt.facility, user, rt.admission.available)

        return form

    def options_from_form(self, formdata: Mapping[str, list[str]]) -> dict[str, str]:
        return options_from_form(formdata)

    # -- progress ----------------------------------------------------------------------------
    def _progress(self, message: str) -> None:
        self.log.info("spawn %s: %s", self._log_name, message)
        self._events.append(message)
        self._event_signal.set()

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        while True:
            while sent < len(self._events):
                message = self._events[sent]
                sent += 1
                yield {"progress": min(10 + 8 * sent, 90), "message": message}
            if self._spawn_future is None or self._spawn_future.done():
                return
            self._event_signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_signal.wait(), 1)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        rt = self.runtime
        await rt.backend.setup()
        await rt.ensure_restored()
        self._events = []
        plan, auth_state = await self._plan(rt)
        token = self._bearer_token(auth_state)
        try:
            started = await self._launch(rt, plan, token)
        except BaseException as exc:
            rt.ledger.release(self.user.name, self.name)
            if isinstance(exc, LaunchFailed):
                self._progress(f"Failed: {exc.message}")
            if isinstance(exc, LaunchFailed | Refusal):
                raise _http_error(exc) from None
            raise
        self._state = {**started.state, "vo": plan.vo, "flavor": plan.flavor}
        if token is not None:
            self._state["token_sha"] = _digest(token)
        self._progress(f"Server running ({plan.flavor})")
        return started.host, started.port

    async def _plan(self, rt: Runtime) -> tuple[LaunchPlan, Mapping[str, Any]]:
        """The pipeline, then the quota reservation; refusals become HTTP errors."""
        try:
            user, auth_state = await self.user_context()
            parse_options(self.user_options)  # refuse forged options before the pool file
            identity = await asyncio.to_thread(
                resolve_identity,
                self.user.name,
                self.uid_sources,
                auth_state,
                rt.static_ids,
                rt.pool,
            )
            settings = PolicySettings(allow_root=self.allow_root)
            plan = pipeline.plan_spawn(
                rt.facility, settings, user, identity, self.user_options, self.name
            )
            rt.ledger.admit(rt.facility, plan)
        except Refusal as exc:
            self.log.warning("spawn %s refused: %s", self._log_name, exc.message)
            raise _http_error(exc) from None
        return plan, auth_state

    def _request(self, plan: LaunchPlan, token: str | None) -> LaunchRequest:
        return LaunchRequest(
            plan,
            self.cmd or ["jupyterhub-singleuser"],
            self.get_args(),
            self.get_env(),
            self.port,
            float(self.start_timeout),
            token,
        )

    async def _launch(self, rt: Runtime, plan: LaunchPlan, token: str | None) -> Started:
        """Launch, holding the plan's GPUs (if any) until the backend counts them itself."""
        request = self._request(plan, token)
        if plan.gpu is None:
            return await rt.backend.launch(request, self._progress)
        wait = WaitSettings(
            "queue" if self.gpu_wait == "queue" else "refuse", float(self.gpu_queue_timeout)
        )
        async with rt.admission.gpus(plan.gpu, wait, self._progress) as grant:
            request = replace(request, gpus_counted=grant.running)
            return await rt.backend.launch(request, self._progress)

    async def poll(self) -> int | None:
        if not self._state:
            return 0
        rt = self.runtime
        status = await rt.backend.poll(self._state)
        if status is not None:
            rt.ledger.release(self.user.name, self.name)
        elif "token_sha" in self._state:
            await self._sync_token(rt)
        return status

    def _bearer_token(self, auth_state: Mapping[str, Any]) -> str | None:
        token = auth_state.get("access_token") if self.pass_bearer_token else None
        return token if isinstance(token, str) and token else None

    async def _sync_token(self, rt: Runtime) -> None:
        """Rewrite the server's token file when the hub has refreshed the token."""
        token = self._bearer_token(await self._auth_state())
        if token is None or _digest(token) == self._state.get("token_sha"):
            return
        try:
            await rt.backend.update_token(self._state, token)
        except Exception as exc:  # keep polling; the next poll tries again
            self.log.warning(
                "could not update the token of %s: %s", self._log_name, type(exc).__name__
            )
            return
        self._state["token_sha"] = _digest(token)
        self.log.info("refreshed the bearer token of %s", self._log_name)

    async def stop(self, now: bool = False) -> None:
        rt = self.runtime
        if self._state:
            await rt.backend.stop(self._state, now=now)
        rt.ledger.release(self.user.name, self.name)
        self._state = {}

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self._state:
            state["af"] = dict(self._state)
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        af = state.get("af")
        if isinstance(af, Mapping):
            self._state = dict(af)

    def clear_state(self) -> None:
        super().clear_state()
        self._state = {}
