"""One token renewal per user at a time, what an IdP outage means for a session, and the
hub-side refresher of running servers' tokens.

With rotating refresh tokens, a second concurrent renewal would present the already-used
token (and look like token theft to the IdP). :class:`RefreshGate` runs the renewals of one
user one after the other, and a renewal that finds its refresh token already replaced gets the
result of the renewal that replaced it.

:class:`Refresher` is the periodic task behind ``c.AFAuthenticator.refresh_running_servers``:
every ``refresh_interval`` seconds it renews the due users among those with running servers
(decisions in :mod:`afauth.renewal`), at most ``refresh_batch`` per tick and
``refresh_concurrency`` at a time. It knows nothing of JupyterHub: the authenticator hands it
the running users and the renewal of one user.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from afauth.renewal import Outcome, Schedule, Timing

#: What ``Authenticator.refresh_user`` returns: True (keep), False (sign in again) or a model.
Refreshed = bool | dict[str, Any]
#: How long the result of a renewal is handed to callers that still hold the old token.
REUSE_SECONDS = 300.0
#: auth_state key set when the token refresher found the session revoked: its value is the
#: message the login page shows; the next ``refresh_user`` sends the person to sign in again.
REAUTH_KEY = "signed_out"


def token_digest(token: object) -> str:
    """A key for a refresh token that does not keep the token itself; ``""`` for none."""
    return hashlib.sha256(token.encode()).hexdigest() if isinstance(token, str) and token else ""


def keep_during_outage(status: int, expires_at: object, now: float) -> bool:
    """Whether a failed renewal (HTTP ``status``) leaves the session as it is: the IdP is
    unreachable (503) and the access token has not expired (or has no known expiry)."""
    if status != 503:
        return False
    return expires_at is None or (isinstance(expires_at, int | float) and expires_at > now)


class RefreshGate:
    """Serialises renewals per user and remembers each rotation for :data:`REUSE_SECONDS`."""

    def __init__(
        self, reuse_for: float = REUSE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reuse_for = reuse_for
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._renewed: dict[str, tuple[float, dict[str, Any]]] = {}

    async def run(
        self,
        user: str,
        load: Callable[[], Awaitable[Mapping[str, Any] | None]],
        renew: Callable[[Mapping[str, Any]], Awaitable[Refreshed]],
    ) -> Refreshed:
        """``renew(state)`` of ``user``'s current auth_state (``load()``), one at a time.

        No auth_state: True. A state whose refresh token an earlier renewal already replaced
        gets (a copy of) that renewal's model instead of renewing again.
        """
        async with self._locks.setdefault(user, asyncio.Lock()):
            state = await load()
            if not state:
                return True
            now = self._clock()
            self._renewed = {k: v for k, v in self._renewed.items() if v[0] > now}
            old = token_digest(state.get("refresh_token"))
            if old in self._renewed:
                return copy.deepcopy(self._renewed[old][1])
            result = await renew(state)
            if isinstance(result, dict) and old:
                new = token_digest(result["auth_state"].get("refresh_token"))
                if new != old:
                    self._renewed[old] = (now + self.reuse_for, copy.deepcopy(result))
            return result


class Refresher:
    """Renews the tokens of users with running servers before they expire, in bounded ticks.

    ``running()`` names the users with running servers (cheap, in memory); ``renew(name)``
    renews one user (through the :class:`RefreshGate`) and says what happened. Per tick: one
    pass over ``running()`` (set operations), then at most ``timing.batch`` renewals,
    ``concurrency`` at a time; the rest wait for the next tick.
    """

    def __init__(
        self,
        timing: Timing,
        running: Callable[[], Collection[str]],
        renew: Callable[[str], Awaitable[Outcome]],
        *,
        concurrency: int = 8,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.timing = timing
        self.schedule = Schedule(timing)
        self._running = running
        self._renew = renew
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._clock = clock
        self._alive = alive
        self.log = log or logging.getLogger("afauth.refresh")
        self._task: asyncio.Task[None] | None = None
        #: counts of outcomes since start, for tests and the docs' timeline
        self.counts: dict[str, int] = {}

    def note(self, name: str, expires_at: float | None) -> None:
        """A login or a visit's refresh gave ``name`` a token expiring at ``expires_at``."""
        self.schedule.note(name, expires_at, self._clock())

    async def _one(self, name: str) -> None:
        async with self._limit:
            try:
                outcome = await self._renew(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or the hub's database: retry like an outage
                self.log.warning(
                    "token refresh of %s failed: %s: %s", name, type(exc).__name__, exc
                )
                outcome = Outcome("outage")
        self.counts[outcome.kind] = self.counts.get(outcome.kind, 0) + 1
        due = self.schedule.record(name, outcome, self._clock())
        self.log.debug("token refresh of %s: %s; next check at %s", name, outcome.kind, due)

    async def tick(self) -> list[str]:
        """One pass: the users renewed (or tried) in it."""
        now = self._clock()
        self.schedule.sync(set(self._running()), now)
        names = self.schedule.take(now, self.timing.batch)
        if names:
            await asyncio.gather(*(self._one(n) for n in names))
        return names

    async def _loop(self) -> None:
        """Until cancelled (JupyterHub cancels every task at shutdown) or the hub is gone;
        errors are retried."""
        while self._alive():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("token refresher tick failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.timing.interval)

    def start(self) -> None:
        """Start ticking on the running event loop (once; nothing without a loop)."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._loop(), name="afauth token refresher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
