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
from pathlib import Path
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Bool, Dict, Enum, Float, List, Unicode, default

from afspawner.backends import Backend, LaunchFailed, backends
from afspawner.backends.base import LaunchRequest
from afspawner.facility import Facility
from afspawner.form import options_form, options_from_form
from afspawner.policy import PolicySettings, Refusal, UserContext, parse_options, resolve
from afspawner.runtime import Runtime, create_runtime, get_runtime
from afspawner.uid import PoolSettings, resolve_identity

PROGRESS_DONE = object()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    uid_pool_gid = Float(60000, config=True, help="gid of pool accounts.")
    allow_root = Bool(False, config=True, help="Allow servers to run as uid/gid 0.")
    gpu_wait = Enum(
        ["refuse", "queue"],
        "refuse",
        config=True,
        help="When no GPU of the class is free: refuse at once, or wait in a FIFO.",
    )
    gpu_queue_timeout = Float(900, config=True, help="Seconds a spawn may wait for a GPU.")
    bearer_token_file = Bool(
        True,
        config=True,
        help="Give servers the user's OIDC access token (auth_state) as $BEARER_TOKEN_FILE "
        "and rewrite it whenever the hub refreshes the token.",
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
        return cls.create(facility, dict(self.backend_options), self)

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
                pool = PoolSettings(Path(self.uid_pool_file), first, last, int(self.uid_pool_gid))
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
        groups = frozenset(g.name for g in self.user.groups)
        vos: list[str] = [v for v in auth_state.get("vos") or [] if isinstance(v, str)]
        vos += [g for g in sorted(groups) if g in self.runtime.facility.vos and g not in vos]
        return UserContext(self.user.name, groups, tuple(vos), bool(self.user.admin)), auth_state

    # -- form --------------------------------------------------------------------------------
    @default("options_form")
    def _default_options_form(self) -> Any:
        async def form(spawner: AFSpawner) -> str:
            user, _ = await spawner.user_context()
            rt = spawner.runtime
            return options_form(rt.facility, user, rt.queue.available)

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
        try:
            user, auth_state = await self.user_context()
            options = parse_options(self.user_options)
            identity = await asyncio.to_thread(
                resolve_identity,
                self.user.name,
                self.uid_sources,
                auth_state,
                rt.static_ids,
                rt.pool,
            )
            plan = resolve(
                rt.facility,
                user,
                options,
                identity,
                self.name,
                PolicySettings(allow_root=self.allow_root),
            )
            rt.ledger.admit(rt.facility, plan)
        except Refusal as exc:
            self.log.warning("spawn %s refused: %s", self._log_name, exc.message)
            raise web.HTTPError(exc.status, "%s", exc.message) from None
        waiter = None
        token = self._bearer_token(auth_state)
        try:
            if plan.gpu is not None:
                waiter = await self._wait_for_gpu(rt, plan.gpu.gpu_class, plan.gpu.count)
            request = LaunchRequest(
                plan,
                self.cmd or ["jupyterhub-singleuser"],
                self.get_args(),
                self.get_env(),
                self.port,
                float(self.start_timeout),
                token,
            )
            started = await rt.backend.launch(request, self._progress)
        except BaseException as exc:
            rt.ledger.release(self.user.name, self.name)
            if isinstance(exc, LaunchFailed):
                self._progress(f"Failed: {exc.message}")
                raise web.HTTPError(
                    500, "%s", f"your server could not start: {exc.message}"
                ) from None
            if isinstance(exc, Refusal):
                raise web.HTTPError(exc.status, "%s", exc.message) from None
            raise
        finally:
            if waiter is not None and plan.gpu is not None:
                rt.queue.done(plan.gpu.gpu_class, waiter)
                rt.queue.leave(plan.gpu.gpu_class, waiter)
        self._state = {**started.state, "vo": plan.vo, "flavor": plan.flavor}
        if token is not None:
            self._state["token_sha"] = _digest(token)
        self._progress(f"Server running ({plan.flavor})")
        return started.host, started.port

    async def _wait_for_gpu(self, rt: Runtime, gpu_class: str, count: int) -> Any:
        gclass = rt.facility.gpu_classes[gpu_class]
        waiter = rt.queue.enqueue(gpu_class, count)
        if waiter.ready.is_set():
            return waiter
        if self.gpu_wait == "refuse":
            rt.queue.leave(gpu_class, waiter)
            raise Refusal(
                f"no {gclass.display} GPU is free right now; try again later or pick a "
                "flavor without a GPU",
                503,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gpu_queue_timeout
        try:
            while not waiter.ready.is_set():
                ahead = rt.queue.position(gpu_class, waiter)
                self._progress(f"waiting for a {gclass.display}: {ahead} ahead of you")
                waiter.moved.clear()
                left = deadline - loop.time()
                if left <= 0:
                    raise Refusal(
                        f"no {gclass.display} GPU became free within "
                        f"{self.gpu_queue_timeout:.0f}s; try again later",
                        503,
                    )
                ready = asyncio.create_task(waiter.ready.wait())
                moved = asyncio.create_task(waiter.moved.wait())
                await asyncio.wait(
                    {ready, moved}, timeout=min(left, 30), return_when=asyncio.FIRST_COMPLETED
                )
                ready.cancel()
                moved.cancel()
                rt.queue.recheck(gpu_class)
        except BaseException:
            if waiter.ready.is_set():
                rt.queue.done(gpu_class, waiter)
            rt.queue.leave(gpu_class, waiter)
            raise
        self._progress(f"a {gclass.display} is free; starting")
        return waiter

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
        token = auth_state.get("access_token") if self.bearer_token_file else None
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
