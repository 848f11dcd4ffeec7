"""AFSpawner: thin JupyterHub glue around policy → quota → plan → backend.

Configuration errors (facility file, UID map, unknown backend) are raised when the first
spawner is created and name the bad key; refusals are HTTP errors with a message for the user,
raised before anything is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import default

from afspawner import credentials, metrics, pacing, pipeline
from afspawner.admission import WaitSettings
from afspawner.backends import Backend, LaunchFailed, LaunchRequest, Started, backends
from afspawner.culling import NOTICE_KEY, notice_html
from afspawner.daskpolicy import gateway_env
from afspawner.facility import Facility
from afspawner.form import options_form, options_from_form
from afspawner.hubcull import attach as attach_culling
from afspawner.hubview import HubView
from afspawner.plan import LaunchPlan, UserIdentity
from afspawner.policy import PolicySettings, Refusal, UserContext, parse_options
from afspawner.runtime import Runtime, create_runtime, get_runtime
from afspawner.spawner_traits import SpawnerTraits
from afspawner.uid import PoolSettings, SourceConfig, resolve_identity, source_config, sources_for


def _launch_timeout(start_timeout: float) -> float:
    """The backend's own limit: a little under JupyterHub's ``start_timeout``, so the user sees
    the backend's reason ("did not start within 57s (pod phase: Pending)"), not a bare timeout."""
    return max(start_timeout - 3.0, min(start_timeout, 1.0))


def _http_error(exc: LaunchFailed | Refusal) -> web.HTTPError:
    if isinstance(exc, Refusal):
        return web.HTTPError(exc.status, "%s", exc.message)
    return web.HTTPError(500, "%s", f"your server could not start: {exc.message}")


async def _admit_hook(spawner: AFSpawner, user_options: Mapping[str, Any] | None) -> None:
    """Default ``apply_user_options``: admission (see :meth:`AFSpawner.admit`)."""
    await spawner.admit(user_options)


class AFSpawner(Spawner, SpawnerTraits):  # type: ignore[misc]
    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        env.update(gateway_env(self.dask_gateway))
        return env

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
        self._login_state: Mapping[str, Any] | None = None
        self._launch_services: Mapping[str, str] = {}  # this spawn's service tokens
        self._admitted: tuple[LaunchPlan, Mapping[str, Any]] | None = None
        self._stop_notice: dict[str, str] | None = None  # why the hub stopped the last server
        self._uid_config: SourceConfig | None = None
        if self.facility_file:
            # configuration errors surface now, not at the first spawn
            self._attach(self.runtime)
            self.uid_config()

    def uid_config(self) -> SourceConfig:
        """``uid_sources``, ``uid_sources_by_idp``, ``uid_source_rules``, checked (ConfigError)."""
        if self._uid_config is None:
            self._uid_config = source_config(
                self.uid_sources,
                self.uid_sources_by_idp,
                self.uid_source_rules,
                bool(self.uid_pool_file),
            )
        return self._uid_config

    def _attach(self, rt: Runtime) -> None:
        """Give the runtime the hub's view of its servers, and start its sweep."""
        db = getattr(self.user, "db", None)  # the hub's session (Spawner.db is deprecated)
        if db is None:  # not inside a hub (tests, tools)
            return
        if rt.hub_view is None:
            rt.hub_view = HubView(db)
        if isinstance(rt.hub_view, HubView):
            rt.hub_view.add(self)
        rt.start_sweeping()
        attach_culling(rt, self, float(self.idle_check_interval))

    # -- who is spawning ---------------------------------------------------------------------
    async def _auth_state(self) -> Mapping[str, Any]:
        if self._login_state is not None:  # this spawn's, from run_auth_state_hook
            return self._login_state
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
            with contextlib.suppress(LaunchFailed):  # the catalog shows what is known
                await rt.ensure_restored()
            return notice_html(spawner._stop_notice) + options_form(
                rt.facility, user, rt.admission.available, rt.ledger.usage, spawner.gpu_wait
            )

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
    # -- admission: decided before anything slow -------------------------------------------
    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return _admit_hook

    async def run_auth_state_hook(self, auth_state: Any) -> None:
        """Keep the auth_state JupyterHub has just decrypted for this spawn (no second decrypt)."""
        self._login_state = auth_state if isinstance(auth_state, Mapping) else {}
        await super().run_auth_state_hook(auth_state)

    async def admit(self, user_options: Mapping[str, Any] | None) -> None:
        """Validate the options, resolve the plan and reserve quota, or refuse (HTTP 4xx).

        JupyterHub (≥ 5.3) calls this through ``apply_user_options`` before the pre-spawn hook
        and ``start()``, inside the spawn request, so a refusal reaches the caller as the
        response to that request. A site that sets its own ``apply_user_options`` still gets
        the same decision, made at the beginning of ``start()``.
        """
        try:
            self._admitted = await self._decide(self.runtime, user_options)
        except BaseException:
            self._login_state = None
            raise

    async def _decide(
        self, rt: Runtime, user_options: Mapping[str, Any] | None
    ) -> tuple[LaunchPlan, Mapping[str, Any]]:
        """Backend ready and ledger restored, then the plan and its reservation."""
        began = time.monotonic()
        try:
            await rt.backend.setup()
            await rt.ensure_restored()
        except LaunchFailed as exc:  # the Kubernetes API did not answer
            self.log.warning("spawn %s: %s", self._log_name, exc.message)
            metrics.record_outcome("failure")
            raise _http_error(exc) from None
        admitted = await self._plan(rt, user_options)
        metrics.observe_phase("admission", admitted[0], time.monotonic() - began)
        return admitted

    async def start(self) -> tuple[str, int]:
        rt = self.runtime
        self._events = []
        admitted, self._admitted = self._admitted, None
        try:
            if admitted is None:  # a site's own apply_user_options: decide here
                admitted = await self._decide(rt, self.user_options)
            # the decision is made (a refusal is the spawn request's own 403); building and
            # sending the objects waits its turn in a storm (afspawner.pacing)
            await pacing.pacer(self.pacing_budget).turn()
        except BaseException:
            if admitted is not None:
                rt.ledger.release(self.user.name, self.name)
            raise
        finally:
            self._login_state = None  # later reads (token refresh) go to the hub again
        plan, auth_state = admitted
        token = self._bearer_token(auth_state)
        ccache = self._ccache(auth_state)
        services = credentials.services_of(auth_state) if token else {}  # afauth.exchange
        self._launch_services = services
        try:
            started = await self._launch(rt, plan, token, ccache)
        except BaseException as exc:
            rt.ledger.release(self.user.name, self.name)
            if isinstance(exc, Refusal):  # from the GPU admission
                metrics.record_refusal(metrics.refusal_reason(exc, "gpu", self.gpu_wait), plan)
            else:
                metrics.record_outcome("failure", plan)
            if isinstance(exc, LaunchFailed):
                self._progress(f"Failed: {exc.message}")
            if isinstance(exc, LaunchFailed | Refusal):
                raise _http_error(exc) from None
            raise
        self._state = {**started.state, "vo": plan.vo, "flavor": plan.flavor}
        if token is not None:
            self._state["token_sha"] = credentials.digest(token)
        if ccache is not None:
            self._state["ccache_sha"] = credentials.digest(ccache)
        if services:
            self._state["services_sha"] = credentials.digest(credentials.encode_services(services))
        metrics.record_outcome("success", plan)
        self._stop_notice = None
        self._progress(f"Server running ({plan.flavor})")
        return started.host, started.port

    async def _plan(
        self, rt: Runtime, user_options: Mapping[str, Any] | None
    ) -> tuple[LaunchPlan, Mapping[str, Any]]:
        """The pipeline, then the quota reservation; refusals become HTTP errors.

        Nothing here waits on a thread unless the uid must come from the account pool.
        """
        stage: metrics.Stage = "options"
        planned: LaunchPlan | None = None
        try:
            user, auth_state = await self.user_context()
            parse_options(user_options)  # refuse forged options before the pool file
            stage = "identity"
            identity = await self._identity(rt, auth_state)
            stage = "policy"
            settings = PolicySettings(allow_root=self.allow_root)
            plan = planned = pipeline.plan_spawn(
                rt.facility, settings, user, identity, user_options, self.name
            )
            stage = "quota"
            rt.ledger.admit(rt.facility, plan)
        except Refusal as exc:
            self.log.warning("spawn %s refused: %s", self._log_name, exc.message)
            metrics.record_refusal(metrics.refusal_reason(exc, stage), planned)
            raise _http_error(exc) from None
        return plan, auth_state

    async def _identity(self, rt: Runtime, auth_state: Mapping[str, Any]) -> UserIdentity:
        """The POSIX identity: auth_state and the static map at once, the pool in a thread.

        Which sources, in which order, depends on the login (``uid.sources_for``)."""
        sources = list(sources_for(self.uid_config(), auth_state))
        quick = [s for s in sources if s != "pool"]
        first_pool = sources.index("pool") if "pool" in sources else None
        if first_pool is None or rt.pool is None:
            return resolve_identity(self.user.name, quick, auth_state, rt.static_ids, None)
        with contextlib.suppress(Refusal):  # sources before the pool, without a thread
            before = sources[:first_pool]
            if before:
                return resolve_identity(self.user.name, before, auth_state, rt.static_ids, None)
        return await asyncio.to_thread(
            resolve_identity, self.user.name, sources, auth_state, rt.static_ids, rt.pool
        )

    def _request(
        self, plan: LaunchPlan, token: str | None, ccache: bytes | None = None
    ) -> LaunchRequest:
        return LaunchRequest(
            plan,
            self.cmd or ["jupyterhub-singleuser"],
            self.get_args(),
            self.get_env(),
            self.port,
            _launch_timeout(float(self.start_timeout)),
            token,
            krb5_ccache=ccache,
            service_tokens=self._launch_services or None,  # afauth.exchange's tokens
        )

    async def _launch(
        self, rt: Runtime, plan: LaunchPlan, token: str | None, ccache: bytes | None = None
    ) -> Started:
        """Launch, holding the plan's GPUs (if any) until the backend counts them itself."""
        request = self._request(plan, token, ccache)
        if plan.gpu is None:
            return await metrics.timed_launch(rt.backend.launch(request, self._progress), plan)
        wait = WaitSettings(
            "queue" if self.gpu_wait == "queue" else "refuse", float(self.gpu_queue_timeout)
        )
        owner = f"{self.user.name}/{self.name}"
        hold = rt.admission.gpus(plan.gpu, wait, self._progress, owner)
        async with metrics.timed_gpus(hold, plan, wait.mode) as grant:
            request = replace(request, gpus_counted=grant.running)
            return await metrics.timed_launch(rt.backend.launch(request, self._progress), plan)

    async def poll(self) -> int | None:
        """``None`` while the server runs; else its exit status, its quota released.

        Without saved state (the hub stopped between creating the server row and saving the
        state, or a spawn failed), the server is not running: unless its spawn is still in
        progress here, its reservation is released and leftovers found by their
        deterministic names are removed, so JupyterHub's cleanup (which calls ``stop()``
        only when ``poll()`` says running) leaves nothing behind.
        """
        rt = self.runtime
        await rt.ensure_restored()
        if not self._state:
            if not (self._spawn_pending or self._start_pending):
                await self._remove_leftovers(rt)
            return 0
        status = await rt.backend.poll(self._state)
        if status is not None:
            rt.ledger.release(self.user.name, self.name)
        elif "token_sha" in self._state or "ccache_sha" in self._state:
            await self._sync_token(rt)
        return status

    def _bearer_token(self, auth_state: Mapping[str, Any]) -> str | None:
        token = auth_state.get("access_token") if self.pass_bearer_token else None
        return token if isinstance(token, str) and token else None

    async def auth_state_updated(self, auth_state: Mapping[str, Any]) -> None:
        """The hub saved a new auth_state for this user (afauth's token refresher, see
        docs/auth_state.md): give the running server its new token now, or remove it."""
        if self._state and ("token_sha" in self._state or "ccache_sha" in self._state):
            await self._sync_token(self.runtime, auth_state)

    async def _sync_token(self, rt: Runtime, auth_state: Mapping[str, Any] | None = None) -> None:
        """Rewrite the server's token file (and Kerberos credential cache) when the hub has
        refreshed it; remove it when the auth_state has none any more (the IdP revoked the
        session, the ticket expired)."""
        state = await self._auth_state() if auth_state is None else auth_state
        name = self._log_name
        if "token_sha" in self._state:
            token = self._bearer_token(state) or ""
            update = rt.backend.update_token
            await credentials.sync(
                self._state, "token_sha", token, update, self.log, f"bearer token of {name}"
            )
        if "ccache_sha" in self._state:  # the Kerberos ticket (renewed, or a new login's)
            data = self._ccache(state) or b""
            update_cc = rt.backend.update_ccache
            await credentials.sync(
                self._state, "ccache_sha", data, update_cc, self.log, f"Kerberos ticket of {name}"
            )
        if "services_sha" in self._state:  # per-service tokens ($AF_TOKENS_DIR)
            tokens, update_sv = credentials.services_of(state), rt.backend.update_services
            await credentials.sync_services(self._state, tokens, update_sv, self.log, name)

    def _ccache(self, auth_state: Mapping[str, Any]) -> bytes | None:
        return credentials.ccache_of(auth_state) if self.pass_kerberos_ticket else None

    async def _remove_leftovers(self, rt: Runtime) -> None:
        rt.ledger.release(self.user.name, self.name)
        found = await rt.backend.find(self.user.name, self.name)
        if found:
            self.log.warning("removing %s, left without saved state: %s", self._log_name, found)
            await rt.backend.stop(found, now=True)

    async def stop(self, now: bool = False) -> None:
        """Stop the server; without saved state, what its deterministic names find."""
        rt = self.runtime
        await pacing.pacer(self.pacing_budget).turn()
        state = self._state or await rt.backend.find(self.user.name, self.name)
        if state:
            await rt.backend.stop(state, now=now)
        rt.ledger.release(self.user.name, self.name)
        self._state = {}

    def note_stop(self, notice: Mapping[str, str]) -> None:
        """Why the hub is stopping this server (``afspawner.hubcull``): saved with the state,
        shown on the spawn page until the next start."""
        self._stop_notice = dict(notice)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self._state:
            state["af"] = dict(self._state)
        if self._stop_notice:  # kept by clear_state: the server is stopped, the reason stays
            state[NOTICE_KEY] = dict(self._stop_notice)
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        af = state.get("af")
        if isinstance(af, Mapping):
            self._state = dict(af)
        notice = state.get(NOTICE_KEY)
        if isinstance(notice, Mapping):
            self._stop_notice = {str(k): str(v) for k, v in notice.items()}

    def clear_state(self) -> None:
        super().clear_state()
        self._state = {}
