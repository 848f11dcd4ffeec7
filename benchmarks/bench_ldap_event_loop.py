"""Event-loop responsiveness during LDAP logins: afauth's LDAP IdP vs ldapauthenticator.

Both authenticators run their real hub entry point, ``get_authenticated_user`` (authenticate,
allow/block checks, post-auth hook), against the same real ``slapd`` (tests/testbed/ldap/) on
loopback, with StartTLS and a verified certificate, on ONE asyncio loop. While N logins run
concurrently, a ticker coroutine sleeps 10 ms at a time and records how late it wakes up: the
loop lag a hub's other requests (proxy checks, API calls, page loads) would see.

Scenarios: ``healthy`` (slapd answers) and ``frozen`` (slapd is SIGSTOPped for --freeze
seconds while the logins start, then SIGCONTed from a thread: a hung directory, #124).

Timeouts: ours uses connect_timeout 5 s / receive_timeout 10 s. ldapauthenticator has no
timeout option; its ldap3 sockets get the same 10 s through ``socket.setdefaulttimeout`` while
it runs (the freeze is shorter than both, so neither times out: both wait for the thaw).

    .venv/bin/python benchmarks/bench_ldap_event_loop.py [--logins 20] [--freeze 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import _common

_common.use_test_bed()
os.environ.setdefault("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))  # auth_state must work

from testbed.ldap.directory import USERS  # noqa: E402
from testbed.ldap.slapd import LDAPTestbed  # noqa: E402

TICK = 0.010
TIMEOUT = 10.0
LOGIN_USERS = ("alice", "bob", "carol", "dave", "erin")  # POSIX accounts in eaf-users
FIGURES = ("wall_s", "ticks", "lag_max_ms", "lag_p99_ms", "lag_p50_ms", "login_p50_ms",
           "login_p95_ms", "login_max_ms")  # fmt: skip
Login = Callable[[str, str], Awaitable[dict[str, Any] | None]]


@dataclass
class Result:
    impl: str
    scenario: str
    logins: int
    ok: int
    wall_s: float
    ticks: float
    lag_max_ms: float
    lag_p99_ms: float
    lag_p50_ms: float
    login_p50_ms: float
    login_p95_ms: float
    login_max_ms: float


def ours(tb: LDAPTestbed, workdir: str) -> tuple[Login, Callable[[], Awaitable[None]]]:
    from afauth.authenticator import AFAuthenticator

    auth = AFAuthenticator(
        idps=[
            {
                "name": "fnal",
                "type": "ldap",
                "servers": [tb.uri],  # ldap:// + StartTLS (the default)
                "ca_file": str(tb.ca_cert_path),
                "bind_dn": tb.bind_dn,
                "bind_password": tb.bind_password,
                "user_search_base": tb.people_dn,
                "group_search_base": tb.groups_dn,
                "require_groups": ["eaf-users"],
                "connect_timeout": 5,
                "receive_timeout": TIMEOUT,
            }
        ],
        mapping=[
            {"idp": "fnal", "claim": "posix_groups", "match": "cms|dune", "vo": "{value}"},
            {"idp": "fnal", "claim": "ldap_groups", "value": "eaf-users", "group": "{value}"},
        ],
        allowed_groups={"eaf-users"},
        binding_db=os.path.join(workdir, f"bindings-{secrets.token_hex(4)}.sqlite"),
    )

    async def login(user: str, password: str) -> dict[str, Any] | None:
        data = {"idp": "fnal", "username": user, "password": password}
        result: dict[str, Any] | None = await auth.get_authenticated_user(None, data)
        return result

    async def close() -> None:
        idp = auth.idp("fnal")
        if idp is not None:
            await idp.close()

    return login, close


def peer(tb: LDAPTestbed) -> tuple[Login, Callable[[], Awaitable[None]]]:
    from ldapauthenticator import LDAPAuthenticator

    auth = LDAPAuthenticator(
        server_address=tb.host,
        server_port=tb.port,
        tls_strategy="before_bind",  # StartTLS, as ours
        tls_kwargs={"ca_certs_file": str(tb.ca_cert_path), "validate": ssl.CERT_REQUIRED},
        lookup_dn=True,  # service-account search, then bind as the user (as ours)
        lookup_dn_search_user=tb.bind_dn,
        lookup_dn_search_password=tb.bind_password,
        lookup_dn_search_filter="({login_attr}={login})",
        user_search_base=tb.people_dn,
        user_attribute="uid",
        lookup_dn_user_dn_attribute="uid",
        use_lookup_dn_username=True,
        allowed_groups=[tb.group_dn("eaf-users")],
        auth_state_attributes=["uidNumber", "gidNumber", "homeDirectory", "cn", "mail"],
    )

    async def login(user: str, password: str) -> dict[str, Any] | None:
        data = {"username": user, "password": password}
        result: dict[str, Any] | None = await auth.get_authenticated_user(None, data)
        return result

    async def close() -> None:
        return None

    return login, close


async def run_scenario(
    impl: str, scenario: str, login: Login, tb: LDAPTestbed, n: int, freeze: float
) -> Result:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - t0 - TICK)

    latencies: list[float] = []
    oks = 0

    async def one(i: int) -> None:
        nonlocal oks
        user = LOGIN_USERS[i % len(LOGIN_USERS)]
        t0 = time.perf_counter()
        try:
            model = await login(user, USERS[user].password)
            oks += bool(model and model.get("name") == user)
        except Exception as exc:  # a refused/failed login counts as not ok
            logging.getLogger("bench").warning("%s %s login %s: %r", impl, scenario, user, exc)
        latencies.append(time.perf_counter() - t0)

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0.2)  # ticker settles; its first samples are the idle floor
    lags.clear()
    timer: threading.Timer | None = None
    if scenario == "frozen":
        tb.freeze()
        timer = threading.Timer(freeze, tb.thaw)  # a thread: the loop may be blocked
        timer.start()
    t0 = time.perf_counter()
    try:
        if scenario == "serial":  # one login at a time: the latency of a lone login
            for i in range(n):
                await one(i)
        else:
            await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        if timer is not None:
            timer.join()
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.05)
    stop.set()
    await tick_task
    ms = 1000.0
    return Result(
        impl=impl,
        scenario=scenario,
        logins=n,
        ok=oks,
        wall_s=round(wall, 3),
        ticks=len(lags),
        lag_max_ms=round(max(lags) * ms, 2),
        lag_p99_ms=round(_common.percentile(lags, 99) * ms, 2),
        lag_p50_ms=round(_common.percentile(lags, 50) * ms, 2),
        login_p50_ms=round(_common.percentile(latencies, 50) * ms, 1),
        login_p95_ms=round(_common.percentile(latencies, 95) * ms, 1),
        login_max_ms=round(max(latencies) * ms, 1),
    )


async def idle_floor(seconds: float) -> Result:
    """Loop lag with nothing to do: the noise floor of this (shared) machine."""
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - t0 - TICK)
    nan = float("nan")
    return Result(
        "(none)", "idle", 0, 0, seconds, len(lags), round(max(lags) * 1000, 2),
        round(_common.percentile(lags, 99) * 1000, 2),
        round(_common.percentile(lags, 50) * 1000, 2), nan, nan, nan,
    )  # fmt: skip


async def main_async(args: argparse.Namespace, tb: LDAPTestbed, workdir: str) -> list[Result]:
    results = [await idle_floor(2.0)]
    for scenario in ("serial", "healthy", "frozen"):
        for impl in ("afauth", "ldapauthenticator"):
            for _ in range(args.repeat):
                login, close = ours(tb, workdir) if impl == "afauth" else peer(tb)
                previous = socket.getdefaulttimeout()
                if impl == "ldapauthenticator":  # its only way to get a timeout
                    socket.setdefaulttimeout(TIMEOUT)
                try:
                    await login("alice", USERS["alice"].password)  # warm-up (imports, pool)
                    res = await run_scenario(impl, scenario, login, tb, args.logins, args.freeze)
                finally:
                    socket.setdefaulttimeout(previous)
                    await close()
                results.append(res)
                print(f"  {impl:18} {scenario:8} max lag {res.lag_max_ms:8.1f} ms", flush=True)
    return results


def median_rows(results: list[Result]) -> list[Result]:
    """One row per (impl, scenario): the median of each figure over the repeated runs."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.impl, r.scenario), []).append(r)
    rows = []
    for (impl, scenario), runs in groups.items():
        fig = {k: _common.percentile([getattr(r, k) for r in runs], 50) for k in FIGURES}
        rows.append(Result(impl, scenario, runs[0].logins, min(r.ok for r in runs), **fig))
    return rows


def summarise(results: list[Result], args: argparse.Namespace) -> str:
    rows = [
        (r.impl, r.scenario, f"{r.ok}/{r.logins}", r.wall_s, r.lag_max_ms, r.lag_p99_ms,
         r.lag_p50_ms, r.login_p50_ms, r.login_p95_ms)
        for r in median_rows(results)
    ]  # fmt: skip
    heads = ("impl", "scenario", "ok", "wall s", "lag max ms", "lag p99 ms", "lag p50 ms",
             "login p50 ms", "login p95 ms")  # fmt: skip
    return (
        f"{args.logins} concurrent LDAP logins (StartTLS, service search + user bind + groups) "
        f"on one asyncio loop; ticker every {TICK * 1000:.0f} ms measures loop lag. `frozen`: "
        f"slapd SIGSTOPped for {args.freeze} s at the start (a hung directory, #124). "
        f"`serial`: the same logins one at a time. Timeouts 10 s on both sides. Each row is the "
        f"median of {args.repeat} run(s) (every run is in the JSON; `ok` is the worst run).\n\n"
        + _common.table(heads, rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=20, help="concurrent logins (20)")
    parser.add_argument("--freeze", type=float, default=3.0, help="seconds slapd hangs (3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (3)")
    args = parser.parse_args()
    if args.freeze >= TIMEOUT:
        parser.error(f"--freeze must stay below the {TIMEOUT} s timeouts")
    logging.basicConfig(level=logging.ERROR)
    data = _common.header("bench_ldap_event_loop")
    with tempfile.TemporaryDirectory(prefix="af-bench-") as workdir, LDAPTestbed("bench") as tb:
        results = asyncio.run(main_async(args, tb, workdir))
    summary = summarise(results, args)
    print(summary)
    data.update(
        parameters={"logins": args.logins, "freeze_s": args.freeze, "tick_s": TICK,
                    "timeout_s": TIMEOUT, "repeat": args.repeat, "users": LOGIN_USERS},
        medians=[asdict(r) for r in median_rows(results)],
        runs=[asdict(r) for r in results],
    )  # fmt: skip
    for path in _common.write("bench_ldap_event_loop", data, summary):
        print("wrote", path.relative_to(_common.ROOT))


if __name__ == "__main__":
    main()
