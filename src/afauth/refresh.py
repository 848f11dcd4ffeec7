"""One token renewal per user at a time, and what an IdP outage means for a session.

With rotating refresh tokens, a second concurrent renewal would present the already-used
token (and look like token theft to the IdP). :class:`RefreshGate` runs the renewals of one
user one after the other, and a renewal that finds its refresh token already replaced gets the
result of the renewal that replaced it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

#: What ``Authenticator.refresh_user`` returns: True (keep), False (sign in again) or a model.
Refreshed = bool | dict[str, Any]
#: How long the result of a renewal is handed to callers that still hold the old token.
REUSE_SECONDS = 300.0


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
