"""When the hub renews the tokens of users with running servers (pure: no I/O, no clock).

The hub-side refresher (:class:`afauth.refresh.Refresher`) keeps one :class:`Schedule` of the
users whose servers run, ordered by when each one's access token must be renewed. A tick takes
at most ``batch`` users that are due, however many users run; what happened to each
(:class:`Outcome`) decides when that user is looked at again (:func:`next_check`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

#: ``renewed``: new tokens (or another caller's fresh ones); ``valid``: the token is not
#: due yet (first look at a user); ``idle``: nothing to renew (no access or refresh token, an
#: LDAP login, a session that must sign in again);
#: ``outage``: the IdP did not answer (retry with backoff); ``revoked``: the IdP refused the
#: refresh token, or the person may no longer use the hub (tokens removed from the servers).
Kind = Literal["renewed", "valid", "idle", "outage", "revoked"]


@dataclass(frozen=True)
class Timing:
    """The refresher's settings (``c.AFAuthenticator.refresh_*``)."""

    margin: float = 600.0  # renew when less than this is left (refresh_margin)
    interval: float = 30.0  # seconds between ticks (refresh_interval)
    batch: int = 200  # at most this many users per tick (refresh_batch)
    recheck: float = 900.0  # users with nothing to renew are looked at again after this
    backoff_cap: float = 600.0  # longest wait between two tries while the IdP is down
    lease: float = 300.0  # a user taken by a tick that never reported is retried after this


@dataclass(frozen=True)
class Outcome:
    """What one renewal attempt found. ``expires_at``: Unix time the (new) access token
    expires, when known; ``lifetime``: its whole lifetime in seconds, when known."""

    kind: Kind
    expires_at: float | None = None
    lifetime: float | None = None


def renew_at(expires_at: float, lifetime: float | None, margin: float) -> float:
    """When to renew a token expiring at ``expires_at``: ``margin`` seconds before, or half
    its ``lifetime`` before when it lives less than twice the margin (a 5-minute token with a
    10-minute margin is renewed after 2.5 minutes, not on every tick)."""
    lead = margin if lifetime is None or lifetime <= 0 else min(margin, lifetime / 2)
    return expires_at - max(lead, 0.0)


def is_due(expires_at: float, lifetime: float | None, margin: float, now: float) -> bool:
    """Whether a token expiring at ``expires_at`` must be renewed at ``now``."""
    return now >= renew_at(expires_at, lifetime, margin)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before try number ``attempt`` (1, 2, ...) while the IdP is down: ``base``,
    twice that, four times, ... never more than ``cap``."""
    return float(min(cap, base * 2 ** min(max(attempt - 1, 0), 30)))


def next_check(outcome: Outcome, attempts: int, now: float, timing: Timing) -> tuple[float, int]:
    """``(when to look at this user again, failed attempts so far)`` after ``outcome``.

    Never sooner than the next tick: a token that is already inside its margin (renewed by
    an IdP that hands out short tokens) is tried once per tick, not in a loop.
    """
    soonest = now + timing.interval
    if outcome.kind == "outage":
        attempts += 1
        return max(soonest, now + backoff(attempts, timing.interval, timing.backoff_cap)), attempts
    if outcome.kind in ("renewed", "valid") and outcome.expires_at is not None:
        return max(soonest, renew_at(outcome.expires_at, outcome.lifetime, timing.margin)), 0
    return max(soonest, now + timing.recheck), 0


@dataclass
class _Entry:
    due: float
    attempts: int = 0
    lifetime: float | None = None


class Schedule:
    """The users being watched, by when each is due; heap ordered, lazily cleaned.

    ``sync`` follows the set of users with running servers (new ones are due at once, to learn
    their token's expiry); ``take`` pops the due ones, at most a batch; ``record`` reschedules a
    user after its outcome; ``note`` learns a new expiry from a login or a visit's refresh.
    """

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def due(self, name: str) -> float | None:
        entry = self._entries.get(name)
        return entry.due if entry else None

    def attempts(self, name: str) -> int:
        entry = self._entries.get(name)
        return entry.attempts if entry else 0

    def _set(self, name: str, due: float) -> None:
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = entry = _Entry(due)
        entry.due = due
        heapq.heappush(self._heap, (due, next(self._seq), name))
        if len(self._heap) > 2 * len(self._entries) + 64:  # drop stale heap rows
            self._heap = [(e.due, next(self._seq), n) for n, e in self._entries.items()]
            heapq.heapify(self._heap)

    def sync(self, running: Collection[str], now: float) -> None:
        """Watch exactly the users in ``running``: new ones are due now, others forgotten."""
        for name in [n for n in self._entries if n not in running]:
            del self._entries[name]
        for name in running:
            if name not in self._entries:
                self._set(name, now)

    def take(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` users due at ``now``, earliest first. Each is leased: due again
        after ``timing.lease`` unless :meth:`record` says otherwise."""
        taken: dict[str, None] = {}
        while self._heap and len(taken) < limit and self._heap[0][0] <= now:
            due, _, name = heapq.heappop(self._heap)
            entry = self._entries.get(name)
            if entry is None or entry.due != due or name in taken:
                continue  # a stale row: the user was rescheduled or forgotten
            taken[name] = None
        for name in taken:
            self._set(name, now + self.timing.lease)
        return list(taken)

    def record(self, name: str, outcome: Outcome, now: float) -> float | None:
        """Reschedule ``name`` after ``outcome``; its new due time (``None``: not watched)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        if outcome.lifetime is not None:
            entry.lifetime = max(entry.lifetime or 0.0, outcome.lifetime)
        known = Outcome(outcome.kind, outcome.expires_at, entry.lifetime)
        due, entry.attempts = next_check(known, entry.attempts, now, self.timing)
        self._set(name, due)
        return due

    def note(self, name: str, expires_at: float | None, now: float) -> None:
        """A login or a visit's refresh gave ``name`` a token expiring at ``expires_at``:
        renew it on time (only users already watched; others are found by :meth:`sync`)."""
        entry = self._entries.get(name)
        if entry is None or expires_at is None or not math.isfinite(expires_at):
            return
        lifetime = expires_at - now
        if lifetime > 0:
            entry.lifetime = max(entry.lifetime or 0.0, lifetime)
        entry.attempts = 0
        due = renew_at(expires_at, entry.lifetime, self.timing.margin)
        self._set(name, max(due, now))
