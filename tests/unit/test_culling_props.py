"""Properties of the idle/lifetime decision and of the limits' precedence (hypothesis)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st

from afspawner.culling import Lifetime, ServerActivity, decide, lifetime, parse_duration
from afspawner.facility import IdleLimits
from afspawner.loader import load_facility

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
seconds = st.integers(min_value=0, max_value=3 * 86400)
limit = st.none() | st.integers(min_value=1, max_value=2 * 86400).map(float)


@st.composite
def servers(draw: st.DrawFn) -> ServerActivity:
    started = draw(seconds)  # seconds before NOW
    active = draw(st.none() | seconds)
    return ServerActivity(
        "u",
        draw(st.sampled_from(["", "a", "b"])),
        None,
        NOW - timedelta(seconds=started),
        None if active is None else NOW - timedelta(seconds=active),
    )


def _expected(s: ServerActivity, life: Lifetime, now: datetime) -> bool:
    assert s.started is not None
    last = max(s.started, s.last_activity) if s.last_activity else s.started
    idle = (now - last).total_seconds()
    age = (now - s.started).total_seconds()
    return (life.idle_timeout is not None and idle >= life.idle_timeout) or (
        life.max_age is not None and age >= life.max_age
    )


@given(st.lists(servers(), max_size=8), limit, limit)
def test_stopped_exactly_when_a_limit_is_reached(
    batch: list[ServerActivity], idle: float | None, age: float | None
) -> None:
    life = Lifetime(idle, age)
    culls = decide(batch, lambda f: life, NOW)
    assert len(culls) == sum(_expected(s, life, NOW) for s in batch)
    for cull in culls:
        assert cull.elapsed >= cull.limit
        assert cull.limit == (idle if cull.reason == "idle" else age)


@given(servers(), limit, limit, st.integers(min_value=0, max_value=86400))
def test_once_due_always_due(
    s: ServerActivity, idle: float | None, age: float | None, later: int
) -> None:
    """Waiting longer without new activity never saves a server."""
    life = Lifetime(idle, age)
    if decide([s], lambda f: life, NOW):
        assert decide([s], lambda f: life, NOW + timedelta(seconds=later))


@given(servers(), limit, st.integers(min_value=0, max_value=86400))
def test_new_activity_never_makes_a_server_due(
    s: ServerActivity, idle: float | None, back: int
) -> None:
    life = Lifetime(idle, None)
    newer = NOW - timedelta(seconds=back)
    assume(s.last_activity is None or newer >= s.last_activity)
    fresher = ServerActivity(s.username, s.server_name, None, s.started, newer)
    if decide([fresher], lambda f: life, NOW):
        assert decide([s], lambda f: life, NOW)


durations = st.none() | st.sampled_from(["never", "30s", "2h", "8h", "1d"])


@given(durations, durations, durations, durations, durations, durations)
def test_each_key_from_the_most_specific_level(
    ft: str | None, fa: str | None, gt: str | None, ga: str | None, dt: str | None, da: str | None
) -> None:
    def idle(timeout: str | None, max_age: str | None) -> dict[str, str]:
        out = {}
        if timeout is not None:
            out["timeout"] = timeout
        if max_age is not None:
            out["max_age"] = max_age
        return out

    fac = load_facility(
        {
            "idle": idle(dt, da),
            "gpu_classes": {"t4": {"resource": "nvidia.com/gpu", "idle": idle(gt, ga)}},
            "flavors": [
                {
                    "name": "f",
                    "image": "i",
                    "cpu": 1,
                    "memory": "1Gi",
                    "gpu": {"class": "t4"},
                    "idle": idle(ft, fa),
                }
            ],
        }
    )
    got = lifetime(fac, "f")

    def want(*levels: str | None) -> float | None:
        first = next((v for v in levels if v is not None), None)
        if first is None:
            return None
        value = parse_duration(first)
        return None if math.isinf(value) else value

    assert got.idle_timeout == want(ft, gt, dt)
    assert got.max_age == want(fa, ga, da)
    assert fac.flavors[0].idle == IdleLimits(
        parse_duration(ft) if ft else None, parse_duration(fa) if fa else None
    )


@given(st.integers(min_value=1, max_value=366 * 86400))
def test_durations_in_units_add_up(total: int) -> None:
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = "".join(f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n)
    assert parse_duration(text) == total
