"""Idle and lifetime limits: durations, facility keys and precedence, the stop decision."""

from __future__ import annotations

import copy
import html
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from afspawner.culling import (
    NOTICE_KEY,
    Cull,
    Lifetime,
    ServerActivity,
    decide,
    format_duration,
    has_limits,
    lifetime,
    notice,
    notice_html,
    parse_duration,
)
from afspawner.facility import IdleLimits
from afspawner.loader import FacilityError, load_facility

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
H = 3600.0

BASE: dict[str, Any] = {
    "idle": {"timeout": "8h"},
    "vos": {"cms": {"quota": {"gpus": {"t4": 4, "a100": 1}}}},
    "gpu_classes": {
        "t4": {
            "display": "NVIDIA T4",
            "resource": "nvidia.com/gpu",
            "idle": {"timeout": "2h", "max_age": "12h"},
        },
        "a100": {"resource": "nvidia.com/gpu"},
    },
    "flavors": [
        {"name": "cpu", "display": "CPU", "image": "i", "cpu": 1, "memory": "1Gi"},
        {
            "name": "t4",
            "display": "ML T4",
            "image": "i",
            "cpu": 1,
            "memory": "1Gi",
            "gpu": {"class": "t4"},
        },
        {
            "name": "t4-long",
            "display": "ML T4 (long jobs)",
            "image": "i",
            "cpu": 1,
            "memory": "1Gi",
            "gpu": {"class": "t4"},
            "idle": {"timeout": "4h"},
        },
        {
            "name": "t4-forever",
            "image": "i",
            "cpu": 1,
            "memory": "1Gi",
            "gpu": {"class": "t4"},
            "idle": {"timeout": "never", "max_age": "never"},
        },
        {"name": "a100", "image": "i", "cpu": 1, "memory": "1Gi", "gpu": {"class": "a100"}},
    ],
}


def errors(data: Any) -> list[str]:
    with pytest.raises(FacilityError) as info:
        load_facility(data)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("90m", 5400),
        ("8h", 8 * H),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1d 2h", 93600),
        ("1.5h", 5400),
        ("never", math.inf),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (8, "expected a duration like 30m, 8h"),  # a bare number: hours or seconds?
        ("8", "expected a duration"),
        ("8 hours", "expected a duration"),
        ("30m1h", "expected a duration"),  # largest unit first
        ("1h1h", "expected a duration"),
        ("0s", "at least 1s"),
        ("400d", "at most 366d"),
        (None, r"got nothing \(null\)"),
        ("", "expected a duration"),
        (True, "expected a duration"),
    ],
)
def test_bad_durations(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_duration(value)


def test_format_duration() -> None:
    assert format_duration(7380) == "2h 3m"
    assert format_duration(8 * H) == "8h"
    assert format_duration(2.4) == "2s"
    assert format_duration(0) == "0s"
    assert format_duration(90061) == "1d 1h"


def test_keys_are_loaded_at_every_level() -> None:
    fac = load_facility(BASE)
    assert fac.idle == IdleLimits(timeout=8 * H)
    assert fac.gpu_classes["t4"].idle == IdleLimits(2 * H, 12 * H)
    assert fac.gpu_classes["a100"].idle == IdleLimits()
    assert fac.flavor("t4-long").idle == IdleLimits(timeout=4 * H)  # type: ignore[union-attr]
    assert fac.flavor("t4-forever").idle == IdleLimits(math.inf, math.inf)  # type: ignore[union-attr]


def test_precedence_flavor_then_gpu_class_then_default_per_key() -> None:
    fac = load_facility(BASE)
    assert lifetime(fac, "cpu") == Lifetime(8 * H, None, "servers of this facility", "")
    assert lifetime(fac, "t4") == Lifetime(2 * H, 12 * H, "NVIDIA T4 servers", "NVIDIA T4 servers")
    # the flavor sets only the idle timeout: the class's max_age still applies
    assert lifetime(fac, "t4-long") == Lifetime(
        4 * H, 12 * H, "ML T4 (long jobs) servers", "NVIDIA T4 servers"
    )
    # never lifts the limits of the class and of the default
    assert lifetime(fac, "t4-forever").unlimited
    # a class without limits: the default
    assert lifetime(fac, "a100").idle_timeout == 8 * H
    # a flavor no longer in the file: the default
    assert lifetime(fac, "gone") == lifetime(fac, None) == lifetime(fac, "cpu")
    assert has_limits(fac)


def test_no_limits_anywhere() -> None:
    data = copy.deepcopy(BASE)
    del data["idle"]
    data["gpu_classes"]["t4"].pop("idle")
    for f in data["flavors"]:
        f.pop("idle", None)
    assert not has_limits(load_facility(data))


def test_errors_name_their_key_paths() -> None:
    data = copy.deepcopy(BASE)
    data["idle"] = {"timeout": 8, "maxage": "1h"}
    data["gpu_classes"]["t4"]["idle"] = {"timeout": "2 hours"}
    data["flavors"][1]["idle"] = {"max_age": "0s"}
    data["flavors"][2]["idle"] = "4h"
    found = errors(data)
    expected = "expected a duration like 30m, 8h, 1h30m or 2d (units d, h, m, s), or never"
    assert f"idle.timeout: {expected}; got a number '8'" in found
    assert "idle.maxage: unknown key; allowed: max_age, timeout" in found
    assert any(e.startswith("gpu_classes.t4.idle.timeout: expected a duration") for e in found)
    assert "flavors[1].idle.max_age: must be at least 1s; got '0s'" in found
    assert "flavors[2].idle: expected a mapping, got a string" in found
    assert len(found) == 5


def at(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def server(
    name: str, flavor: str | None, started: float | None, active: float | None
) -> ServerActivity:
    return ServerActivity(
        "alice",
        name,
        flavor,
        at(started) if started is not None else None,
        at(active) if active is not None else None,
    )


def test_decide_gpu_idle_stopped_cpu_kept() -> None:
    fac = load_facility(BASE)
    servers = [
        server("gpu", "t4", started=3, active=2.5),  # idle 2.5h > 2h
        server("cpu", "cpu", started=3, active=2.5),  # idle 2.5h < 8h
        server("long", "t4-long", started=3, active=2.5),  # idle 2.5h < 4h
        server("old", "t4-long", started=13, active=0.1),  # running 13h > 12h, active
        server("free", "t4-forever", started=100, active=99),
        server("pending", "t4", started=None, active=50),
    ]
    culls = decide(servers, lambda f: lifetime(fac, f), NOW)
    assert [(c.server_name, c.reason) for c in culls] == [("gpu", "idle"), ("old", "max_age")]
    idle, old = culls
    assert idle.elapsed == 2.5 * H and idle.limit == 2 * H
    assert old.elapsed == 13 * H and old.limit == 12 * H
    assert idle.message(NOW) == (
        "Your server 'gpu' was stopped by the hub on 2026-12-02 12:00 UTC after 2h 30m without "
        "activity (the limit for NVIDIA T4 servers is 2h idle). Your files are kept."
    )
    assert "after running for 13h (the limit for NVIDIA T4 servers is 12h in all)" in old.message(
        NOW
    )


def test_the_limit_reached_first_is_the_reason() -> None:
    life = Lifetime(2 * H, 12 * H, "x", "y")
    # idle since 11h (deadline 9h ago), started 14h ago (deadline 2h ago): idle came first
    (cull,) = decide([server("", None, 14, 11)], lambda f: life, NOW)
    assert cull.reason == "idle" and cull.limit_from == "x"
    # idle since 4h (deadline 2h ago), started 13h ago (deadline 1h ago)
    (cull,) = decide([server("", None, 13, 4)], lambda f: life, NOW)
    assert cull.reason == "idle"
    # both deadlines 1h ago: max_age
    (cull,) = decide([server("", None, 13, 3)], lambda f: life, NOW)
    assert cull.reason == "max_age"
    (cull,) = decide([server("", None, 13, 1)], lambda f: life, NOW)
    assert cull.reason == "max_age"


def test_last_activity_before_the_start_counts_from_the_start() -> None:
    """A record left from an earlier run of the server does not make a new one idle."""
    life = Lifetime(2 * H, None)
    assert decide([server("", None, 1, 30)], lambda f: life, NOW) == ()
    assert decide([server("", None, 1, None)], lambda f: life, NOW) == ()
    assert len(decide([server("", None, 3, None)], lambda f: life, NOW)) == 1


def test_naive_datetimes_are_utc() -> None:
    """JupyterHub keeps naive UTC datetimes in its database."""
    life = Lifetime(2 * H, None)
    naive = ServerActivity("a", "", None, datetime(2026, 12, 2, 9, 0), datetime(2026, 12, 2, 10, 1))
    assert decide([naive], lambda f: life, NOW) == ()
    naive = ServerActivity("a", "", None, datetime(2026, 12, 2, 9, 0), datetime(2026, 12, 2, 10, 0))
    assert len(decide([naive], lambda f: life, NOW)) == 1  # exactly at the limit


def test_notice_is_escaped_html() -> None:
    cull = Cull("a", "<b>x</b>", "idle", 3 * H, 2 * H, "GPU servers")
    saved = notice(cull, NOW)
    assert saved["reason"] == "idle" and saved["at"] == "2026-12-02T12:00:00+00:00"
    page = notice_html(saved)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>" not in page
    assert notice_html(None) == notice_html({}) == notice_html({"message": 3}) == ""


def test_home_page_notices_only_for_servers_still_stopped() -> None:
    from types import SimpleNamespace

    from afspawner.hubcull import stop_notices

    cull = Cull("a", "gpu", "idle", 3 * H, 2 * H, "GPU servers")
    saved = {NOTICE_KEY: notice(cull, NOW)}
    stopped = SimpleNamespace(state=saved, server_id=None)
    running = SimpleNamespace(state=saved, server_id=7)  # started again, state not yet saved
    other = SimpleNamespace(state={"af": {}}, server_id=None)

    def user(*spawners: object) -> object:
        return SimpleNamespace(orm_user=SimpleNamespace(orm_spawners=dict(enumerate(spawners))))

    assert stop_notices(user(stopped, other)) == html.escape(cull.message(NOW))
    assert stop_notices(user(running, other)) is None  # the site's announcement stays
    assert stop_notices(None) is None
