"""The token refresher's decisions (afauth.renewal), its bounded ticks (afauth.refresh.Refresher),
the log scrubber and the "key not known yet" message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from afauth.idps.oidc import OIDC as OIDCIdP
from afauth.refresh import Refresher
from afauth.renewal import (
    Outcome,
    Schedule,
    Timing,
    backoff,
    is_due,
    next_check,
    renew_at,
)
from afauth.scrub import ScrubFilter, scrub
from afauth.tokens import KeyNotKnownYet
from afcore.issues import ConfigError
from unit.test_auth_config import OIDC, authenticator, crypt_key

__all__ = ["crypt_key"]

T = Timing(margin=600, interval=30, batch=3, recheck=900, backoff_cap=600, lease=300)


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- pure decisions ------------------------------------------------------------------------------


def test_renew_at_uses_the_margin_or_half_a_short_lifetime() -> None:
    assert renew_at(5000, None, 600) == 4400
    assert renew_at(5000, 3600, 600) == 4400  # long-lived: the margin
    assert renew_at(5000, 300, 600) == 4850  # a 5-minute token: after half its life
    assert renew_at(5000, 0, 600) == 4400  # unknown lifetime


def test_is_due() -> None:
    assert not is_due(5000, None, 600, now=4399)
    assert is_due(5000, None, 600, now=4400)
    assert is_due(5000, 300, 600, now=4850) and not is_due(5000, 300, 600, now=4849)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 30, 600) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert backoff(10_000, 30, 600) == 600  # no overflow


@pytest.mark.parametrize(
    ("outcome", "attempts", "due", "after"),
    [
        (Outcome("renewed", 5000.0, 3600.0), 3, 4400.0, 0),  # margin before expiry
        (Outcome("renewed", 1010.0, 20.0), 0, 1030.0, 0),  # never sooner than the next tick
        (Outcome("renewed", None), 0, 1900.0, 0),  # no expiry: recheck
        (Outcome("valid", 5000.0), 0, 4400.0, 0),  # first look: renewed on time
        (Outcome("idle"), 0, 1900.0, 0),
        (Outcome("revoked"), 2, 1900.0, 0),
        (Outcome("outage"), 0, 1030.0, 1),
        (Outcome("outage"), 1, 1060.0, 2),
        (Outcome("outage"), 9, 1600.0, 10),  # capped
    ],
)
def test_next_check(outcome: Outcome, attempts: int, due: float, after: int) -> None:
    assert next_check(outcome, attempts, 1000.0, T) == (due, after)


def test_schedule_follows_the_running_users_and_takes_a_bounded_batch() -> None:
    s = Schedule(T)
    s.sync({f"u{i}" for i in range(10)}, now=100)
    first = s.take(100, T.batch)
    assert len(first) == 3  # bounded, however many are due
    second = s.take(100, T.batch)
    assert len(second) == 3 and not set(first) & set(second)  # leased: not taken twice
    for name in first + second:
        s.record(name, Outcome("renewed", 100 + 3600.0, 3600.0), now=100)
    assert len(s.take(100, 100)) == 4  # the rest
    assert s.take(100, 100) == []  # nothing due
    assert s.due("u0") is not None
    s.sync({"u0"}, now=200)  # the others stopped their servers
    assert len(s) == 1 and "u1" not in s


def test_schedule_renews_on_time_and_backs_off_during_an_outage() -> None:
    s = Schedule(T)
    s.sync({"alice"}, now=0)
    assert s.take(0, 10) == ["alice"]
    assert s.record("alice", Outcome("renewed", 1200.0, 1200.0), now=0) == 600.0
    assert s.take(599, 10) == []
    assert s.take(600, 10) == ["alice"]
    assert s.record("alice", Outcome("outage"), now=600) == 630.0
    assert s.take(629, 10) == []
    assert s.take(630, 10) == ["alice"]
    assert s.record("alice", Outcome("outage"), now=630) == 690.0
    assert s.attempts("alice") == 2
    assert s.take(690, 10) == ["alice"]
    s.record("alice", Outcome("renewed", 690 + 1200.0, 1200.0), now=690)
    assert s.attempts("alice") == 0 and s.due("alice") == 690 + 600.0


def test_a_lost_renewal_is_retried_after_its_lease() -> None:
    s = Schedule(T)
    s.sync({"alice"}, now=0)
    assert s.take(0, 10) == ["alice"]  # and never recorded
    assert s.take(299, 10) == []
    assert s.take(300, 10) == ["alice"]


def test_note_learns_a_new_login_and_the_lifetime() -> None:
    s = Schedule(T)
    s.note("nobody", 5000.0, now=0)  # not watched: found by sync when a server runs
    assert "nobody" not in s
    s.sync({"alice"}, now=0)
    s.take(0, 10)
    s.record("alice", Outcome("revoked"), now=0)  # signed out: rechecked in 900 s
    s.note("alice", 300.0, now=0)  # signed in again, a 5-minute token
    assert s.due("alice") == 150.0
    assert s.take(150, 10) == ["alice"]


def test_stale_heap_rows_are_dropped() -> None:
    s = Schedule(T)
    s.sync({"alice"}, now=0)
    for i in range(1000):
        s.note("alice", 10_000.0 + i, now=0)
    assert len(s._heap) < 200
    assert s.take(10_999.0 - 600, 10) == ["alice"]


# -- the refresher's ticks -----------------------------------------------------------------------


async def test_ticks_are_bounded_and_concurrency_limited() -> None:
    clock = Clock(0.0)
    running = {f"u{i:02}" for i in range(20)}
    active = 0
    peak = 0
    calls: list[str] = []

    async def renew(name: str) -> Outcome:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        calls.append(name)
        return Outcome("renewed", clock.now + 1200.0, 1200.0)

    timing = Timing(margin=600, interval=30, batch=8)
    r = Refresher(timing, lambda: running, renew, concurrency=3, clock=clock)
    assert len(await r.tick()) == 8
    assert peak == 3
    assert len(await r.tick()) == 8
    assert len(await r.tick()) == 4
    assert await r.tick() == []  # everyone renewed, due in 600 s
    assert sorted(calls) == sorted(running)
    clock.now = 600.0
    assert len(await r.tick()) == 8
    assert r.counts == {"renewed": 28}


async def test_a_failing_renewal_is_retried_like_an_outage() -> None:
    clock = Clock(0.0)

    async def renew(name: str) -> Outcome:
        raise RuntimeError("database is locked")

    r = Refresher(Timing(interval=30), lambda: ["alice"], renew, clock=clock)
    assert await r.tick() == ["alice"]
    assert r.counts == {"outage": 1}
    assert r.schedule.due("alice") == 30.0


async def test_start_and_stop() -> None:
    ticks = 0

    async def renew(name: str) -> Outcome:
        nonlocal ticks
        ticks += 1
        return Outcome("idle")

    r = Refresher(Timing(interval=0.01), lambda: ["alice"], renew)
    r.start()
    r.start()  # once
    await asyncio.sleep(0.05)
    await r.stop()
    assert ticks == 1  # idle: rechecked in 900 s, not every tick


# -- logs and messages ---------------------------------------------------------------------------


def test_scrub_hides_sign_in_parameters() -> None:
    url = (
        "302 GET /hub/login/iam -> https://iam.example/authorize?response_type=code&client_id=hub"
        "&state=abc.def&nonce=n0nce-VALUE&code_challenge=xyz&code_challenge_method=S256 (@1.2.3.4)"
    )
    clean = scrub(url)
    assert "n0nce-VALUE" not in clean and "abc.def" not in clean and "xyz" not in clean
    assert "nonce=[secret]" in clean and "client_id=hub" in clean
    assert "code_challenge_method=S256" in clean


def test_scrub_filter_rewrites_the_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("afauth.test.scrub")
    logger.addFilter(ScrubFilter())
    with caplog.at_level(logging.INFO, logger="afauth.test.scrub"):
        logger.info("%s -> %s", "302 GET /x", "https://idp/a?nonce=SECRET1&x=1")
    assert "SECRET1" not in caplog.text and "nonce=[secret]&x=1" in caplog.text


def test_key_not_known_yet_says_to_retry() -> None:
    exc = KeyNotKnownYet(12.5)
    assert exc.message == "the signing key is not known yet; retry in a minute"
    assert exc.reason == "key_not_known_yet" and exc.retry_after == 13
    assert KeyNotKnownYet(600).message.endswith("retry in 10 minutes")


# -- the authenticator's settings ----------------------------------------------------------------


def test_refresher_settings_are_checked(crypt_key: None, tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        authenticator(
            tmp_path, idps=[OIDC], refresh_interval=0, refresh_batch=0, refresh_concurrency=0
        )
    text = str(info.value)
    assert "3 error(s)" in text
    for key in ("refresh_interval", "refresh_batch", "refresh_concurrency"):
        assert key in text


async def test_refresher_starts_once_and_only_when_enabled(crypt_key: None, tmp_path: Any) -> None:
    class App:
        users: dict[str, Any] = {}  # noqa: RUF012 - a stand-in for JupyterHub's UserDict

    off = authenticator(tmp_path, idps=[OIDC], refresh_running_servers=False)
    assert off.start_refresher(App()) is None
    on = authenticator(tmp_path, idps=[OIDC], refresh_interval=0.01)
    refresher = on.start_refresher(App())
    assert refresher is not None and on.start_refresher(App()) is refresher
    assert refresher.timing.margin == 600 and refresher.timing.batch == 200
    await asyncio.sleep(0.03)
    await refresher.stop()


def test_a_refused_refresh_does_not_trip_jupyterhub_6_1_1(crypt_key: None, tmp_path: Any) -> None:
    class Handler:  # a cookie-authenticated request: JupyterHub never set the attribute
        pass

    auth = authenticator(tmp_path, idps=[OIDC])
    handler = Handler()
    auth._refused_refresh(object(), handler, "")
    assert handler._token_authenticated is False  # type: ignore[attr-defined]
    token_handler = Handler()
    token_handler._token_authenticated = True  # type: ignore[attr-defined]
    auth._refused_refresh(object(), token_handler, "")
    assert token_handler._token_authenticated is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (400, "invalid_grant", 403),  # revoked or expired grant: sign in again
        (400, "invalid_client", 503),  # the hub's client, not the person
        (400, "temporarily_unavailable", 503),
        (500, "server_error", 503),
        (502, None, 503),
        (429, None, 503),
    ],
)
def test_token_endpoint_refusals_that_are_outages(
    status: int, error: str | None, expected: int
) -> None:
    idp = OIDCIdP(
        {"name": "iam", "type": "oidc", "issuer": "https://iam.example", "client_id": "c"}
    )
    body = {"error": error} if error else {}
    assert idp._token_problem(status, body, "session renewal").status == expected
