"""Kubernetes backend: objects from :mod:`afspawner.manifests`, state from shared informers.

Crash safety: a server's pod is created first and its Secrets are owned by it (garbage
collection removes them with the pod); names follow from (user, server), so a server is found
without saved state; a periodic sweep (:mod:`afspawner.kube.sweep`) removes labelled pods and
Secrets of servers the hub does not know.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from afspawner.backends.base import (
    Backend,
    CapacityListener,
    KeepView,
    LaunchFailed,
    LaunchRequest,
    ProgressSink,
    Started,
)
from afspawner.backends.kube_settings import KubeSettings, settings_from_options
from afspawner.capacity import GPUCounters
from afspawner.facility import Facility
from afspawner.kube.client import KubeError, request, shared_api_client
from afspawner.kube.informer import Informer, NamespacedInformers, shared_informer
from afspawner.kube.lifetime import close_at_shutdown
from afspawner.kube.permissions import refusal, synced_or_refused
from afspawner.kube.phases import pod_phases
from afspawner.kube.reconcile import reconcile_vo_namespaces
from afspawner.kube.slim import involved_key, slim_event, slim_node, slim_pod
from afspawner.kube.status import exit_status, pod_failure, pod_ready, unschedulable_deadline
from afspawner.kube.sweep import sweep_once
from afspawner.manifests import (
    PodSettings,
    krb5_secret,
    krb5_secret_name,
    make_objects,
    owned_by,
    reservation_from_pod,
    selector_labels,
    server_annotations,
    server_namespace,
    server_of,
    services_secret,
    services_secret_name,
    token_secret,
    token_secret_name,
)
from afspawner.names import pod_name
from afspawner.quota import Reservation

log = logging.getLogger("afspawner.kubernetes")
DEADLINE_SLACK = 0.05  # seconds past an unschedulable deadline before it is checked
REQUEST_SECONDS = 30.0  # a launch's writes wait at least this long for the apiserver


def _unreachable(exc: BaseException) -> LaunchFailed:
    log.warning("the Kubernetes API did not answer: %r", exc)
    return LaunchFailed("the Kubernetes API did not answer; try again in a minute")


def _secrets_of(state: Mapping[str, Any]) -> list[str]:
    """The server's Secrets to delete with its pod, so credentials go at once.

    A started server's state says which credential Secrets it has (``token_sha``,
    ``ccache_sha``, ``services_sha``: set by the spawner whenever it writes one). A state
    found by name, or of a launch that failed, says nothing: every name is deleted. Whatever
    is missed is owned by the pod, so the garbage collector removes it with the pod.
    """
    name = str(state["pod"])
    known = "vo" in state
    pairs = (
        ("token_sha", token_secret_name(name)),
        ("ccache_sha", krb5_secret_name(name)),
        ("services_sha", services_secret_name(name)),
    )
    return [name] + [secret for marker, secret in pairs if not known or marker in state]


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class KubernetesBackend(Backend):
    @classmethod
    def create(cls, facility: Facility, options: Mapping[str, Any]) -> Backend:
        return cls(facility, settings_from_options(options))

    def __init__(self, facility: Facility, settings: KubeSettings) -> None:
        self.facility = facility
        self.settings = settings
        self._setup_lock = asyncio.Lock()
        self._ready = False
        self._capacity_listeners: list[CapacityListener] = []
        self._gpu = GPUCounters(facility.gpu_classes.values())  # fed by the informers
        self.pods: NamespacedInformers  # one informer per namespace of _namespaces()
        self.events: NamespacedInformers  # keyed by the pod they are about; stores nothing
        self.nodes: Informer | None = None
        self.sweep_interval = settings.sweep_interval

    def _namespace_informers(self, api: Any) -> tuple[NamespacedInformers, NamespacedInformers]:
        """Pod and Pod-event informers, one per namespace servers may run in (never cluster-wide:
        no cluster-scoped LIST, no cluster RBAC)."""
        pods, events = {}, {}
        for ns in self._namespaces():
            pods[ns] = shared_informer(
                api,
                f"/api/v1/namespaces/{ns}/pods",
                label_selector=_selector(selector_labels()),
                transform=slim_pod,
            )
            events[ns] = shared_informer(
                api,
                f"/api/v1/namespaces/{ns}/events",
                field_selector="involvedObject.kind=Pod",
                index=involved_key,
                transform=slim_event,
                keep=False,  # each spawn hears its pod's events as they come; none is read later
            )
        return NamespacedInformers(pods), NamespacedInformers(events)

    def _namespaces(self) -> list[str]:
        """Every namespace servers of this facility may run in."""
        found = [self.settings.namespace]
        found += [vo.namespace for vo in self.facility.vos.values() if vo.namespace]
        return sorted(set(found))

    async def setup(self) -> None:
        """Connect, start the shared informers and reconcile VO namespaces (once).

        Raises :class:`LaunchFailed` (a clear message) when the apiserver does not answer.
        """
        if self._ready:
            return
        try:
            await self._setup()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(exc) from exc
        except KubeError as exc:
            raise LaunchFailed(
                f"Kubernetes refused the hub's setup: {refusal(exc.status, exc.message)}"
            ) from exc

    async def _setup(self) -> None:
        async with self._setup_lock:
            if self._ready:
                return
            api = await shared_api_client(self.settings.kubeconfig)
            if self.settings.reconcile_quotas:
                await reconcile_vo_namespaces(api, self.facility)
            self.pods, self.events = self._namespace_informers(api)
            waits = [self.pods.wait_synced(), self.events.wait_synced()]
            if self.settings.watch_nodes:
                self.nodes = shared_informer(api, "/api/v1/nodes", transform=slim_node)
                waits.append(self.nodes.wait_synced())
            if self.nodes is not None:  # the counters first: capacity listeners read them
                self.pods.add_listener(self._gpu.pod_changed)
                self.nodes.add_listener(self._gpu.node_changed)
                self._gpu.seed(self.nodes.values(), self.pods.values())  # shared: may hold some
            for informer in (self.pods, self.nodes):
                if informer is not None:
                    informer.add_listener(self._capacity_changed)
            close_at_shutdown()
            # a refused LIST (RBAC) fails at once: the informers themselves retry for ever
            await synced_or_refused(
                asyncio.gather(*waits), (self.pods, self.events, self.nodes), 60
            )
            self.api = api
            self._ready = True
            self._capacity_changed("SYNC", {})

    # -- capacity reports -------------------------------------------------------------------
    def gpu_free(self, gpu_class: str) -> int | None:
        """Units of the class not used or requested by any server pod the informer sees."""
        if gpu_class not in self.facility.gpu_classes or self.nodes is None or not self._ready:
            return None
        return self._gpu.available(gpu_class)  # O(1): counters kept from informer changes

    def watch_capacity(self, listener: CapacityListener) -> None:
        self._capacity_listeners.append(listener)

    def _capacity_changed(self, kind: str, obj: dict[str, Any]) -> None:
        for listener in list(self._capacity_listeners):
            listener()

    # -- lifecycle --------------------------------------------------------------------------
    def _pod_settings(self, req: LaunchRequest) -> PodSettings:
        return PodSettings(
            namespace=server_namespace(req.plan, self.settings.namespace),
            port=req.port,
            cmd=tuple(req.cmd),
            args=tuple(req.args),
            hub_env=dict(req.hub_env),
            image_pull_policy=self.settings.image_pull_policy,
            extra_labels=self.settings.extra_labels,
        )

    async def launch(self, req: LaunchRequest, progress: ProgressSink) -> Started:
        """Launch; an apiserver that does not answer fails the spawn with a clear message."""
        try:
            return await self._launch(req, progress)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(exc) from exc

    async def _launch(self, req: LaunchRequest, progress: ProgressSink) -> Started:
        deadline = asyncio.get_running_loop().time() + req.timeout
        await self.setup()
        settings = self._pod_settings(req)
        objs = make_objects(
            req.plan, settings, req.bearer_token, req.krb5_ccache, req.service_tokens
        )
        ns, name = settings.namespace, objs.pod["metadata"]["name"]
        state = {"namespace": ns, "pod": name}
        key = f"{ns}/{name}"
        if self.pods.get(key) is not None:
            progress(f"Removing a previous server pod {name}")
            await self.stop(state, now=True)
        unsubscribe = self._follow(ns, name, progress, req.gpus_counted)
        try:
            secrets = [objs.secret] + ([objs.token_secret] if objs.token_secret else [])
            secrets += [objs.krb5_secret] if objs.krb5_secret else []
            secrets += [objs.services_secret] if objs.services_secret else []
            # each write may wait as long as the spawn itself: under a storm the hub's own loop
            # can take longer than REQUEST_SECONDS to get round to a TLS handshake (connect
            # timeouts are wall-clock); a dead apiserver still fails the spawn by its deadline
            left = deadline - asyncio.get_running_loop().time()
            uid = await self._create(objs.claims, secrets, objs.pod, max(left, REQUEST_SECONDS))
            del objs, secrets  # not held while waiting: less for the collector to scan
            progress(f"Server pod {ns}/{name} created; waiting for Kubernetes to start it")
            left = deadline - asyncio.get_running_loop().time()
            pod = await self._wait_ready(key, max(left, 1.0), uid)
        except BaseException:
            try:
                await self.stop(state, now=True)
            except Exception as exc:  # the sweep removes what is left; keep the first error
                log.warning("could not remove %s after a failed spawn: %r", key, exc)
            raise
        finally:
            unsubscribe()
        return Started(pod["status"]["podIP"], req.port, state, pod_phases(pod))

    def _follow(
        self, ns: str, name: str, progress: ProgressSink, counted: Callable[[], None]
    ) -> Callable[[], None]:
        """Stream the pod's events to ``progress``; call ``counted`` once the informer has it.

        Keyed listeners: called for this pod's changes and events only, whatever else runs.
        """
        seen_events: set[str] = set()
        key = f"{ns}/{name}"

        def on_event(kind: str, ev: dict[str, Any]) -> None:
            uid = (ev.get("metadata") or {}).get("uid", "")
            if kind != "DELETED" and uid not in seen_events:
                seen_events.add(uid)
                progress(f"{ev.get('reason', '')}: {ev.get('message', '')}".strip(": "))

        def on_pod(kind: str, pod: dict[str, Any]) -> None:
            if kind != "DELETED":
                counted()  # gpu_free counts it from now on (pending or bound)

        stops = (self.events.watch_key(key, on_event), self.pods.watch_key(key, on_pod))

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe

    async def _put_secret(
        self, secret: dict[str, Any], wait_seconds: float = REQUEST_SECONDS
    ) -> None:
        """Create the Secret, or replace one left by an earlier server of the same name."""
        base = f"/api/v1/namespaces/{secret['metadata']['namespace']}/secrets"
        try:
            await request(
                self.api, "POST", base, body=secret, request_timeout=wait_seconds, decode=False
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
            path = f"{base}/{secret['metadata']['name']}"
            await request(
                self.api, "PUT", path, body=secret, request_timeout=wait_seconds, decode=False
            )

    async def _create(
        self,
        claims: tuple[dict[str, Any], ...],
        secrets: list[dict[str, Any]],
        pod: dict[str, Any],
        wait_seconds: float,
    ) -> str:
        """Claims, then the pod, then its Secrets owned by it (the kubelet waits for them);
        the created pod's uid."""
        ns = pod["metadata"]["namespace"]
        base = f"/api/v1/namespaces/{ns}"
        try:
            for claim in claims:
                try:
                    await request(
                        self.api,
                        "POST",
                        f"{base}/persistentvolumeclaims",
                        body=claim,
                        request_timeout=wait_seconds,
                    )
                except KubeError as exc:
                    if exc.status != 409:  # the user's home claim already exists: keep it
                        raise
            created = await request(
                self.api, "POST", f"{base}/pods", body=pod, request_timeout=wait_seconds
            )
            for secret in secrets:
                await self._put_secret(owned_by(secret, created), wait_seconds)
            return str(created["metadata"]["uid"])
        except KubeError as exc:
            raise LaunchFailed(
                f"Kubernetes refused the server: {refusal(exc.status, exc.message)}"
            ) from exc

    async def _wait_ready(self, key: str, limit: float, uid: str) -> dict[str, Any]:
        """Wait for the pod of ``key`` only: woken by its own changes, and by a timer only when
        a verdict waits on the clock (the unschedulable grace: ``unschedulable_deadline``).
        No polling: in a storm thousands of spawns wait for their pods for a minute or more.

        Only the pod with ``uid`` (the one this launch created) counts: a predecessor of the
        same name that the informer has not yet seen go (a stop just before, a slow watch)
        is being deleted, and must not fail the new server."""
        outcome: dict[str, Any] = {}
        grace = self.settings.unschedulable_grace
        armed = False  # a timer runs for the current unschedulable deadline

        def mine(pod: dict[str, Any] | None) -> dict[str, Any] | None:
            return pod if pod and (pod.get("metadata") or {}).get("uid") == uid else None

        def settled(pod: dict[str, Any] | None) -> bool:
            pod = mine(pod)
            if pod is None:
                return False
            if pod_ready(pod):
                outcome["pod"] = pod
                return True
            failure = pod_failure(pod, dt.datetime.now(dt.UTC), grace)
            if failure:
                outcome["failure"] = failure
                return True
            # a verdict now waits on the clock, with no timer for it yet: back to arm one
            return not armed and unschedulable_deadline(pod, grace) is not None

        async def waiter() -> None:
            nonlocal armed
            while not outcome:
                deadline = unschedulable_deadline(mine(self.pods.get(key)), grace)
                after = None
                if deadline is not None:
                    left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
                    after = max(left, 0.0) + DEADLINE_SLACK
                armed = after is not None
                try:
                    async with asyncio.timeout(after):
                        await self.pods.wait_key(key, settled)
                except TimeoutError:
                    continue

        try:
            async with asyncio.timeout(limit):
                await waiter()
        except TimeoutError:
            pod = self.pods.get(key) or {}
            phase = (pod.get("status") or {}).get("phase", "not created")
            raise LaunchFailed(
                f"the server did not start within the start timeout (pod phase: {phase})"
            ) from None
        if "failure" in outcome:
            raise LaunchFailed(outcome["failure"])
        return dict(outcome["pod"])

    async def poll(self, state: Mapping[str, Any]) -> int | None:
        await self.setup()
        return exit_status(self.pods.get(f"{state['namespace']}/{state['pod']}"))

    async def find(self, username: str, server_name: str) -> Mapping[str, Any] | None:
        """The server's pod by its deterministic name, in any namespace of the facility."""
        await self.setup()
        name = pod_name(username, server_name)
        for ns in self._namespaces():
            if self.pods.get(f"{ns}/{name}") is not None:
                return {"namespace": ns, "pod": name}
        return None

    async def sweep(self, keep: KeepView) -> int:
        await self.setup()
        return await sweep_once(
            self.api,
            self._namespaces(),
            _selector(selector_labels()),
            keep,
            self.settings.sweep_grace,
        )

    async def stop(self, state: Mapping[str, Any], now: bool = False) -> None:
        await self.setup()
        ns, name = state.get("namespace"), state.get("pod")
        if not ns or not name:
            return
        base = f"/api/v1/namespaces/{ns}"
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0 if now else 10,
            "propagationPolicy": "Background",
        }

        async def delete(path: str) -> None:
            try:
                await request(self.api, "DELETE", path, body=body, decode=False)
            except KubeError as exc:
                if exc.status != 404:
                    raise

        # the pod in this task (its request is built within the caller's paced section),
        # then its Secrets together
        await delete(f"{base}/pods/{name}")
        await asyncio.gather(*(delete(f"{base}/secrets/{s}") for s in _secrets_of(state)))
        key = f"{ns}/{name}"
        try:
            async with asyncio.timeout(60):
                await self.pods.wait_key(key, lambda pod: pod is None)
        except TimeoutError:
            log.warning("pod %s still present 60s after deletion", key)

    async def update_ccache(self, state: Mapping[str, Any], data: bytes) -> None:
        await self.setup()
        ns, name = state.get("namespace"), state.get("pod")
        pod = self.pods.get(f"{ns}/{name}") if ns and name else None
        if pod is None or exit_status(pod) is not None:
            return  # the server is gone: its Secrets go with it
        meta = pod.get("metadata") or {}
        key = server_of(pod)
        owner = server_annotations(*key) if key else None
        labels = meta.get("labels") or {}
        secret = krb5_secret(krb5_secret_name(str(name)), str(ns), labels, data, owner)
        await self._put_secret(owned_by(secret, pod))

    async def update_services(self, state: Mapping[str, Any], tokens: Mapping[str, str]) -> None:
        await self.setup()
        ns, name = state.get("namespace"), state.get("pod")
        pod = self.pods.get(f"{ns}/{name}") if ns and name else None
        if pod is None or exit_status(pod) is not None:
            return  # the server is gone: its Secrets go with it
        key = server_of(pod)
        labels = (pod.get("metadata") or {}).get("labels") or {}
        owner = server_annotations(*key) if key else None
        secret = services_secret(services_secret_name(str(name)), str(ns), labels, tokens, owner)
        await self._put_secret(owned_by(secret, pod))

    async def update_token(self, state: Mapping[str, Any], token: str) -> None:
        await self.setup()
        ns, name = state.get("namespace"), state.get("pod")
        if not ns or not name:
            return
        pod = self.pods.get(f"{ns}/{name}")
        if pod is None or exit_status(pod) is not None:
            return  # the server is gone: its Secrets go with it
        meta = pod.get("metadata") or {}
        key = server_of(pod)
        owner = server_annotations(*key) if key else None
        secret = token_secret(
            token_secret_name(str(name)), str(ns), meta.get("labels") or {}, token, owner
        )
        await self._put_secret(owned_by(secret, pod))

    async def running(self) -> list[Reservation]:
        await self.setup()
        found = []
        for pod in self.pods.values():
            if exit_status(pod) is None:
                reservation = reservation_from_pod(pod)
                if reservation is not None:
                    found.append(reservation)
        return found
