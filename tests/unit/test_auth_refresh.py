"""Refresh serialisation (one renewal per user, rotations reused) and the outage rule."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from afauth.refresh import RefreshGate, keep_during_outage, token_digest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_renewals_share_the_first_rotation() -> None:
    state: dict[str, Any] = {"refresh_token": "r1"}
    calls: list[str] = []

    async def load() -> Mapping[str, Any]:
        return dict(state)

    async def renew(current: Mapping[str, Any]) -> dict[str, Any]:
        calls.append(str(current["refresh_token"]))
        await asyncio.sleep(0.01)
        return {"name": "alice", "auth_state": {"refresh_token": "r2"}}

    gate = RefreshGate()
    results = await asyncio.gather(*(gate.run("alice", load, renew) for _ in range(5)))
    assert calls == ["r1"]  # the old token is presented once
    assert all(r == results[0] for r in results)
    assert results[1] is not results[0]  # callers get copies


async def test_reuse_expires_and_empty_state_is_kept() -> None:
    clock = Clock()
    gate = RefreshGate(reuse_for=300, clock=clock)
    calls = 0

    async def load() -> Mapping[str, Any]:
        return {"refresh_token": "r1"}

    async def renew(current: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"auth_state": {"refresh_token": f"r{calls + 1}"}}

    await gate.run("alice", load, renew)
    await gate.run("alice", load, renew)
    assert calls == 1
    clock.now += 301
    await gate.run("alice", load, renew)
    assert calls == 2

    async def nothing() -> None:
        return None

    assert await gate.run("bob", nothing, renew) is True


@pytest.mark.parametrize(
    ("status", "expires_at", "keep"),
    [(503, None, True), (503, 2000.0, True), (503, 500.0, False), (403, 2000.0, False)],
)
def test_outage_keeps_only_a_valid_session(status: int, expires_at: object, keep: bool) -> None:
    assert keep_during_outage(status, expires_at, now=1000.0) is keep


def test_token_digest_hides_the_token() -> None:
    assert token_digest("secret") != "secret" and len(token_digest("secret")) == 64
    assert token_digest(None) == token_digest("") == ""
