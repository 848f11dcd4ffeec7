"""Kerberos tickets at LDAP logins: option checks (key paths), principal templating, the
credential-cache reader and the renewal decision (pure parts of afauth.kerberos)."""

from __future__ import annotations

import base64
import logging
import struct
from typing import Any

import pytest

from afauth import kerberos
from afauth.config import build_config
from afauth.identity import Identity
from afauth.idps.ldap import LDAP
from afauth.krb5cache import parse_ccache
from afauth.state import build_auth_state, identity_from_state, redacted
from afcore.issues import ConfigError

LDAP_IDP: dict[str, Any] = {
    "name": "fnal",
    "type": "ldap",
    "servers": ["ldaps://ldap.fnal.gov"],
    "bind_dn": "cn=hub",
    "bind_password": "x",
    "user_search_base": "ou=People,dc=fnal,dc=gov",
}


# -- a credential cache as MIT writes it (format 4) ---------------------------------------------


def _octets(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _principal(realm: str, *names: str) -> bytes:
    out = struct.pack(">II", 1, len(names)) + _octets(realm.encode())
    return out + b"".join(_octets(n.encode()) for n in names)


def _cred(client: bytes, server: bytes, times: tuple[int, int, int, int], flags: int) -> bytes:
    return (
        client
        + server
        + struct.pack(">H", 18)
        + _octets(b"k" * 32)
        + struct.pack(">IIII", *times)
        + b"\x00"
        + struct.pack(">I", flags)
        + struct.pack(">I", 0)
        + struct.pack(">I", 0)
        + _octets(b"ticket")
        + _octets(b"")
    )


def ccache(start: int, end: int, renew: int, *, renewable: bool = True, conf: bool = True) -> bytes:
    me = _principal("AF.TEST", "alice")
    header = struct.pack(">HH", 0x0504, 12) + struct.pack(">HH", 1, 8) + b"\0" * 8
    out = header + me
    if conf:  # kinit's configuration entries come first in real caches
        out += _cred(
            me, _principal("X-CACHECONF:", "krb5_ccache_conf_data", "pa_type"), (0, 0, 0, 0), 0
        )
    flags = 0x40000000 | 0x00400000 | (0x00800000 if renewable else 0)
    return out + _cred(
        me, _principal("AF.TEST", "krbtgt", "AF.TEST"), (start, start, end, renew), flags
    )


def test_the_tgt_and_its_times_are_read() -> None:
    t = parse_ccache(ccache(1000, 37000, 605800))
    assert (t.principal, t.starts_at, t.expires_at, t.renew_until) == (
        "alice@AF.TEST",
        1000.0,
        37000.0,
        605800.0,
    )
    assert t.lifetime == 36000
    assert parse_ccache(ccache(1000, 37000, 0, renewable=False)).renew_until is None


@pytest.mark.parametrize(
    "data", [b"", b"\x05\x04", b"\x05\x02" + b"\0" * 40, ccache(1, 2, 3)[:-5]], ids=repr
)
def test_what_is_not_a_cache_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ccache(data)


def test_a_cache_without_a_tgt_is_refused() -> None:
    me = _principal("AF.TEST", "alice")
    only_conf = (
        struct.pack(">HH", 0x0504, 0)
        + me
        + _cred(me, _principal("X-CACHECONF:", "krb5_ccache_conf_data", "x"), (0, 0, 0, 0), 0)
    )
    with pytest.raises(ValueError, match="no ticket-granting ticket"):
        parse_ccache(only_conf)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10h", 36000),
        ("7d", 604800),
        ("1h30m", 5400),
        ("90s", 90),
        ("90", 90),
        (3600, 3600),
        ("1d2h3m4s", 93784),
        ("0h", None),
        ("ten hours", None),
        ("", None),
        (True, None),
        (-5, None),
        ("5x", None),
    ],
)
def test_durations(text: object, seconds: int | None) -> None:
    assert kerberos.parse_duration(text) == seconds


def test_principal_templating() -> None:
    assert kerberos.principal_for("{username}@{realm}", "alice", "FNAL.GOV") == "alice@FNAL.GOV"
    assert kerberos.principal_for("{username}@IHEP.AC.CN", "o'brien", "X") == "o'brien@IHEP.AC.CN"
    assert kerberos.principal_for("{username}@{realm}", "pat+ops", "R") == "pat+ops@R"


@pytest.mark.parametrize(
    "name", ["alice@EVIL.ORG", "alice/admin", "a b", "a\\b", "a\x00", "", "-l", "a\nb"]
)
def test_names_that_would_change_the_principal_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in a Kerberos principal"):
        kerberos.principal_for("{username}@{realm}", name, "FNAL.GOV")


def problems(section: object) -> dict[str, str]:
    return dict(LDAP.validate({**LDAP_IDP, "kerberos": section}))


def test_a_good_section_has_no_problems_and_gives_settings() -> None:
    section = {
        "realm": "FNAL.GOV",
        "principal": "{username}@FNAL.GOV",
        "kdc": ["kdc.fnal.gov:88"],
        "lifetime": "10h",
        "renew_lifetime": "7d",
        "required": True,
        "timeout": 5,
    }
    assert problems(section) == {}
    s = kerberos.KerberosSettings.from_section(section)
    assert (s.realm, s.lifetime, s.renew_lifetime, s.required, s.kdc, s.timeout) == (
        "FNAL.GOV",
        36000,
        604800,
        True,
        ("kdc.fnal.gov:88",),
        5.0,
    )
    d = kerberos.KerberosSettings.from_section({"realm": "AF.TEST"})
    assert (d.principal, d.lifetime, d.renew_lifetime, d.required) == (
        "{username}@{realm}",
        36000,
        604800,
        False,
    )


def test_problems_are_reported_with_their_key_paths() -> None:
    found = problems(
        {
            "realm": "fnal.gov",
            "principal": "{user}@FNAL.GOV",
            "lifetime": "ten hours",
            "renew_lifetime": "1h",
            "kdc": ["kdc one"],
        }
    )
    assert set(found) == {
        "kerberos.realm",
        "kerberos.principal",
        "kerberos.lifetime",
        "kerberos.kdc[0]",
    }
    assert "unknown placeholder '{user}'" in found["kerberos.principal"]
    assert "10h" in found["kerberos.lifetime"]
    assert problems({"realm": "A.B", "lifetime": "10h", "renew_lifetime": "1h"}) == {
        "kerberos.renew_lifetime": "shorter than lifetime: tickets could not be renewed"
    }
    assert set(problems({"realm": "A.B", "principal": "{username}"})) == {"kerberos.principal"}
    assert set(problems({"realm": "A.B", "kdc": ["k:88"], "krb5_conf": "/etc/krb5.conf"})) == {
        "kerberos.kdc"
    }
    unknown = problems({"realm": "A.B", "password": "x"})
    assert "unknown option for the kerberos section" in unknown["kerberos.password"]
    assert problems({"lifetime": "1h"}) == {"kerberos.realm": "required for the kerberos section"}
    assert set(problems("FNAL.GOV")) == {"kerberos"}


def test_the_hub_reports_the_whole_path() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            idps=[{**LDAP_IDP, "kerberos": {"realm": "FNAL.GOV", "lifetime": "x"}}],
            mapping=[],
            mappers=[],
            managed_roles=[],
            vos=[],
            linked_identities={},
            allow_insecure=False,
            max_username_length=48,
            log=logging.getLogger("t"),
        )
    assert [i.path for i in err.value.issues] == ["idps[0].kerberos.lifetime"]


def test_krb5_conf_for_kdcs() -> None:
    text = kerberos.krb5_conf_text("AF.TEST", ("127.0.0.1:8888", "kdc2"))
    assert "default_realm = AF.TEST" in text and "dns_lookup_kdc = false" in text
    assert "    kdc = 127.0.0.1:8888\n    kdc = kdc2\n" in text


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("kinit: Password incorrect while getting initial credentials", "password"),
        ("kinit: Client 'x@A' not found in Kerberos database while ...", "unknown"),
        ("kinit: Cannot contact any KDC for realm 'A' while ...", "unreachable"),
        ("Password expired.  You must change it now.", "expired"),
        ("kinit: Ticket expired while renewing credentials", "expired"),
        ("kinit: something else", "error"),
    ],
)
def test_kinit_failures_are_classified(message: str, kind: str) -> None:
    assert kerberos.classify(message) == kind


# -- the renewal decision -------------------------------------------------------------------------

HOUR = 3600.0


@pytest.mark.parametrize(
    ("now", "renew_until", "action", "at"),
    [
        (0.0, 7 * 24 * HOUR, "wait", 10 * HOUR - 600),  # fresh: renew 10 min before the end
        (10 * HOUR - 601, 7 * 24 * HOUR, "wait", 10 * HOUR - 600),
        (10 * HOUR - 600, 7 * 24 * HOUR, "renew", 10 * HOUR - 600),  # due
        (10 * HOUR - 1, 7 * 24 * HOUR, "renew", 10 * HOUR - 1),
        (10 * HOUR, 7 * 24 * HOUR, "ended", 10 * HOUR),  # expired: cannot be renewed
        (10 * HOUR - 300, 10 * HOUR, "ended", 10 * HOUR),  # due, renewable lifetime used up
        (10 * HOUR - 300, None, "ended", 10 * HOUR),  # not renewable
        (1.0, 10 * HOUR, "wait", 10 * HOUR - 600),  # the last one: wait until it is due
    ],
)
def test_when_a_ticket_is_renewed(
    now: float, renew_until: float | None, action: str, at: float
) -> None:
    assert kerberos.decide(10 * HOUR, renew_until, 0.0, now, 600.0) == kerberos.Decision(action, at)  # type: ignore[arg-type]


def test_short_tickets_are_renewed_at_half_their_life() -> None:
    # a 60 s ticket with a 10 min margin: renewed after 30 s, not on every tick
    assert kerberos.decide(1060.0, 5000.0, 1000.0, 1010.0, 600.0) == kerberos.Decision(
        "wait", 1030.0
    )
    assert kerberos.decide(1060.0, 5000.0, 1000.0, 1030.0, 600.0).action == "renew"
    assert kerberos.decide(1060.0, 5000.0, None, 1010.0, 600.0).action == "renew"


# -- auth_state -----------------------------------------------------------------------------------


def test_the_ticket_is_kept_in_auth_state_and_never_logged() -> None:
    data = ccache(1000, 37000, 605800)
    ticket = kerberos.ticket_state(parse_ccache(data), data)
    identity = Identity("fnal", "alice", "alice", uid=50001, kerberos=ticket)
    state = build_auth_state(identity)
    assert state["kerberos"]["principal"] == "alice@AF.TEST"
    assert state["kerberos"]["renew_until"] == 605800.0
    assert kerberos.ccache_bytes(state) == data
    assert base64.b64decode(state["kerberos"]["ccache"]) == data
    assert redacted(state)["kerberos"] == "<redacted>"
    assert "ccache" not in repr(identity)
    assert identity_from_state(state).kerberos == state["kerberos"]
    assert "kerberos" not in build_auth_state(Identity("fnal", "bob", "bob"))
    assert kerberos.ccache_bytes({"kerberos": kerberos.no_ticket("bob@A", "why")}) is None
    assert kerberos.ccache_bytes({"kerberos": {"ccache": "not base64!"}}) is None


# -- renew_ticket: what the refresher saves (kinit replaced by a stub; the real one is in
# -- tests/integration/test_kerberos.py) -----------------------------------------------------------


class StubKinit(kerberos.Kinit):
    def __init__(self, result: bytes | kerberos.KinitFailed) -> None:
        super().__init__(kerberos.KerberosSettings(realm="AF.TEST"))
        self.result = result
        self.calls = 0

    async def renew(self, ccache: bytes) -> bytes:
        self.calls += 1
        if isinstance(self.result, kerberos.KinitFailed):
            raise self.result
        return self.result


def login_state(start: int, end: int, renew: int) -> dict[str, Any]:
    data = ccache(start, end, renew)
    return {"idp": "fnal", "kerberos": kerberos.ticket_state(parse_ccache(data), data)}


async def test_a_due_ticket_is_renewed_and_saved() -> None:
    state = login_state(0, 3600, 86400)
    stub = StubKinit(ccache(3000, 6600, 86400))
    step = await kerberos.renew_ticket(stub, state, margin=600, now=3000)
    assert step.kind == "renewed" and step.state is not None and stub.calls == 1
    assert step.state["kerberos"]["expires_at"] == 6600 == step.expires_at
    assert step.lifetime == 3600 and step.state["idp"] == "fnal"
    waiting = await kerberos.renew_ticket(stub, state, margin=600, now=100)
    assert (waiting.kind, waiting.state, waiting.expires_at, stub.calls) == ("valid", None, 3600, 1)


async def test_a_kdc_outage_keeps_the_ticket_and_retries() -> None:
    stub = StubKinit(kerberos.KinitFailed("unreachable", "Cannot contact any KDC"))
    step = await kerberos.renew_ticket(stub, login_state(0, 3600, 86400), margin=600, now=3100)
    assert step == kerberos.Step("outage")


async def test_the_end_of_the_renewable_lifetime_flags_the_session() -> None:
    stub = StubKinit(ccache(0, 1, 2))
    state = login_state(0, 3600, 3600)
    step = await kerberos.renew_ticket(stub, state, margin=600, now=3100)
    assert step.kind == "revoked" and step.state is not None and stub.calls == 0
    assert step.state["signed_out"] == (
        "Your Kerberos ticket ends at 1970-01-01 01:00 UTC and cannot be renewed any more "
        "(its renewable lifetime ends). Sign in again to get a new one."
    )
    assert step.state["kerberos"] == state["kerberos"]  # still valid for 500 s: kept
    # flagged: nothing more to do
    assert (await kerberos.renew_ticket(stub, step.state, margin=600, now=3200)).kind == "idle"


async def test_a_refused_or_expired_ticket_is_removed() -> None:
    refused = StubKinit(kerberos.KinitFailed("error", "Client's credentials have been revoked"))
    step = await kerberos.renew_ticket(refused, login_state(0, 3600, 86400), margin=600, now=3100)
    assert step.kind == "revoked" and step.state is not None
    assert "the KDC did not renew it (kinit failed)" in step.state["signed_out"]
    expired = await kerberos.renew_ticket(
        refused, login_state(0, 3600, 86400), margin=600, now=4000
    )
    assert expired.state is not None and expired.state["kerberos"]["ccache"] is None
    assert "ended at" in expired.state["kerberos"]["error"]
    assert refused.calls == 1  # an expired ticket cannot be renewed: not even tried
    assert (await kerberos.renew_ticket(refused, {"kerberos": None}, margin=600)).kind == "idle"
