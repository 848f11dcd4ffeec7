"""Smoke tests of the real slapd test bed (tests/testbed/ldap/) through ldap3.

They pin down the behaviour the LDAP authenticator relies on, against a real OpenLDAP server.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.core.exceptions import (
    LDAPPasswordIsMandatoryError,
    LDAPSocketOpenError,
    LDAPSocketReceiveError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars

from testbed.ldap.directory import GROUPS, PEOPLE_DN, USERS
from testbed.ldap.fixtures import LDAPTestbedFactory
from testbed.ldap.pki import write_untrusted_ca
from testbed.ldap.slapd import LDAPTestbed
from testbed.ldap.wire import simple_bind_result

# the ldap_testbed / ldap_testbed_factory fixtures (harmless if the root conftest registers them)

pytestmark = pytest.mark.ldap

POSIX_ATTRS = ["uid", "cn", "mail", "uidNumber", "gidNumber", "homeDirectory", "loginShell"]
INVALID_CREDENTIALS = 49
UNWILLING_TO_PERFORM = 53


def _tls(ca: Path) -> ldap3.Tls:
    return ldap3.Tls(ca_certs_file=str(ca), validate=ssl.CERT_REQUIRED)


def _server(tb: LDAPTestbed, *, ldaps: bool = False, ca: Path | None = None) -> ldap3.Server:
    return ldap3.Server(
        tb.ldaps_uri if ldaps else tb.uri,
        tls=_tls(ca or tb.ca_cert_path),
        get_info=ldap3.NONE,
        connect_timeout=5,
    )


def _conn(server: Any, user: str | None = None, password: str | None = None) -> ldap3.Connection:
    return ldap3.Connection(server, user=user, password=password, receive_timeout=10)


def _service(tb: LDAPTestbed) -> ldap3.Connection:
    conn = _conn(_server(tb), tb.bind_dn, tb.bind_password)
    assert conn.bind(), conn.result
    return conn


def _values(conn: ldap3.Connection, base: str, flt: str, attr: str) -> set[str]:
    assert conn.search(base, flt, attributes=[attr]) or conn.result["result"] == 0, conn.result
    return {str(e[attr].value) for e in conn.entries}


# --- service account ------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(USERS))
def test_service_account_reads_each_user_as_in_the_table(
    ldap_testbed: LDAPTestbed, uid: str
) -> None:
    user = USERS[uid]
    conn = _service(ldap_testbed)
    assert conn.search(
        PEOPLE_DN, f"(uid={escape_filter_chars(uid)})", attributes=[*POSIX_ATTRS, "userPassword"]
    )
    assert len(conn.entries) == 1
    entry = conn.entries[0].entry_attributes_as_dict
    assert entry["uid"] == [uid]
    assert entry["cn"] == [user.cn]
    assert entry["mail"] == [user.mail]
    assert not entry.get("userPassword")  # readable by nobody (ldap3 lists it, empty)
    if user.is_posix:
        # get_info=NONE: no schema, so ldap3 returns the values as strings
        assert entry["uidNumber"] == [str(user.uid_number)]
        assert entry["gidNumber"] == [str(user.gid_number)]
        assert entry["homeDirectory"] == [f"/home/{uid}"]
        assert entry["loginShell"] == [user.login_shell]
    else:  # vera: an inetOrgPerson without POSIX identity
        assert not entry.get("uidNumber") and not entry.get("gidNumber")
        assert not entry.get("homeDirectory")


def test_fermilab_identities(ldap_testbed: LDAPTestbed) -> None:
    conn = _service(ldap_testbed)
    assert conn.search(PEOPLE_DN, "(uid=alice)", attributes=POSIX_ATTRS)
    alice = conn.entries[0]
    assert (alice.uidNumber.value, alice.gidNumber.value) == ("50001", "5063")
    assert alice.homeDirectory.value == "/home/alice"
    assert conn.search(PEOPLE_DN, "(uid=bob)", attributes=["gidNumber"])
    assert conn.entries[0].gidNumber.value == "9010"
    # every POSIX user, and only them, is a posixAccount
    posix = _values(conn, PEOPLE_DN, "(objectClass=posixAccount)", "uid")
    assert posix == {u.uid for u in USERS.values() if u.is_posix}
    assert "vera" not in posix


# --- user binds -----------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(USERS))
def test_user_binds_with_own_password(ldap_testbed: LDAPTestbed, uid: str) -> None:
    user = USERS[uid]
    conn = _conn(_server(ldap_testbed), user.dn, user.password)
    assert conn.bind(), conn.result
    who = conn.extend.standard.who_am_i()
    assert who.startswith("dn:uid=") and who.endswith("," + PEOPLE_DN), who
    conn.unbind()


@pytest.mark.parametrize(
    ("uid", "password"),
    [("alice", "alice-passwor"), ("alice", "bob-password"), ("carol", "carol-passwörd"),
     ("o'brien", "OBRIEN-PASSWORD"), ("alice", " ")],
)  # fmt: skip
def test_user_bind_with_wrong_password_fails(
    ldap_testbed: LDAPTestbed, uid: str, password: str
) -> None:
    conn = _conn(_server(ldap_testbed), USERS[uid].dn, password)
    assert not conn.bind()
    assert conn.result["result"] == INVALID_CREDENTIALS
    assert conn.result["description"] == "invalidCredentials"


def test_unknown_user_bind_fails(ldap_testbed: LDAPTestbed) -> None:
    conn = _conn(_server(ldap_testbed), f"uid=nobody,{PEOPLE_DN}", "whatever")
    assert not conn.bind()
    assert conn.result["result"] == INVALID_CREDENTIALS


def test_empty_password_is_an_unauthenticated_bind(
    ldap_testbed: LDAPTestbed, ldap_testbed_factory: LDAPTestbedFactory
) -> None:
    """Why authenticators must refuse empty passwords themselves.

    A simple bind with a DN and an empty password is an *unauthenticated* bind (RFC 4513 5.1.2):
    servers that allow it answer "success" although nobody proved anything, and the session is
    anonymous. ldap3 2.9 happens to refuse empty passwords client-side, but that is a client
    detail, not a guarantee (other clients, versions, raw requests). OpenLDAP refuses it unless
    ``allow bind_anon_dn``; Active Directory-like servers accept it.
    """
    alice = USERS["alice"]
    with pytest.raises(LDAPPasswordIsMandatoryError):
        _conn(_server(ldap_testbed), alice.dn, "").bind()

    # slapd's default: unwillingToPerform
    code, message = simple_bind_result(ldap_testbed.port, alice.dn, b"")
    assert code == UNWILLING_TO_PERFORM, message
    assert "unauthenticated bind" in message

    # a server that allows unauthenticated binds reports success, for a session that is anonymous
    lax = ldap_testbed_factory("lax", allow_unauthenticated_bind=True)
    assert simple_bind_result(lax.port, alice.dn, b"") == (0, "")
    assert simple_bind_result(lax.port, f"uid=nobody,{PEOPLE_DN}", b"")[0] == 0
    who = subprocess.run(
        ["ldapwhoami", "-x", "-H", lax.uri, "-D", alice.dn, "-w", ""],
        capture_output=True, text=True, env=lax.env(), timeout=30, check=False,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() == "anonymous"
    # while a wrong non-empty password still fails there
    assert simple_bind_result(lax.port, alice.dn, b"wrong")[0] == INVALID_CREDENTIALS
    assert simple_bind_result(lax.port, alice.dn, alice.password.encode())[0] == 0


# --- groups ---------------------------------------------------------------------------------


def test_posix_group_member_uid_lookup(ldap_testbed: LDAPTestbed) -> None:
    conn = _service(ldap_testbed)
    groups = ldap_testbed.groups_dn

    def of(uid: str) -> set[str]:
        return _values(conn, groups, f"(&(objectClass=posixGroup)(memberUid={uid}))", "cn")

    assert of("carol") == {"cms", "dune"}  # the two-experiment user
    assert of("alice") == {"cms", "us_cms"}
    assert of("bob") == {"dune"}
    assert of("vera") == set()
    assert of(escape_filter_chars("o'brien")) == {"cms"}
    assert conn.search(groups, "(&(objectClass=posixGroup)(cn=dune))", attributes=["gidNumber"])
    assert conn.entries[0].gidNumber.value == "9010"
    assert {g.cn: g.gid_number for g in GROUPS.values() if g.kind == "posixGroup"} == {
        "cms": 5063, "us_cms": 5064, "dune": 9010,
    }  # fmt: skip


def test_group_of_names_member_lookup(ldap_testbed: LDAPTestbed) -> None:
    conn = _service(ldap_testbed)

    def of(uid: str) -> set[str]:
        dn = escape_filter_chars(USERS[uid].dn)  # pat+ops: the DN holds a backslash
        flt = f"(&(objectClass=groupOfNames)(member={dn}))"
        return _values(conn, ldap_testbed.groups_dn, flt, "cn")

    assert of("carol") == {"eaf-users"}
    assert of("dave") == {"eaf-users", "gpu-approved"}
    assert of("erin") == {"eaf-users", "eaf-admins"}
    assert of("vera") == {"eaf-users"}
    assert of("nina") == set()
    assert of("pat+ops") == {"eaf-users"}
    assert of("o'brien") == {"eaf-users"}
    # and the table agrees with the directory for every user
    for uid, user in USERS.items():
        assert of(uid) == set(user.groups), uid


def test_filter_input_must_be_escaped(ldap_testbed: LDAPTestbed) -> None:
    conn = _service(ldap_testbed)
    # a "username" of "*" matches everybody unless escaped
    assert len(_values(conn, PEOPLE_DN, "(uid=*)", "uid")) == len(USERS)
    assert _values(conn, PEOPLE_DN, f"(uid={escape_filter_chars('*')})", "uid") == set()
    cn = USERS["o'brien"].cn  # comma and parentheses
    assert _values(conn, PEOPLE_DN, f"(cn={escape_filter_chars(cn)})", "uid") == {"o'brien"}
    assert _values(conn, PEOPLE_DN, "(uid=pat+ops)", "uid") == {"pat+ops"}


# --- TLS ------------------------------------------------------------------------------------


def test_starttls_with_the_test_ca(ldap_testbed: LDAPTestbed) -> None:
    conn = _conn(_server(ldap_testbed), ldap_testbed.bind_dn, ldap_testbed.bind_password)
    conn.open()
    assert conn.start_tls()
    assert conn.tls_started
    assert conn.bind(), conn.result
    assert conn.extend.standard.who_am_i() == f"dn:{ldap_testbed.bind_dn}"


def test_starttls_with_an_untrusted_ca_fails(ldap_testbed: LDAPTestbed, tmp_path: Path) -> None:
    other = write_untrusted_ca(tmp_path / "other-ca.pem")
    conn = _conn(_server(ldap_testbed, ca=other))
    conn.open()
    with pytest.raises(LDAPStartTLSError):
        conn.start_tls()
    assert not conn.tls_started


def test_ldaps(ldap_testbed: LDAPTestbed, tmp_path: Path) -> None:
    server = _server(ldap_testbed, ldaps=True)
    assert server.ssl
    conn = _conn(server, USERS["dave"].dn, USERS["dave"].password)
    assert conn.bind(), conn.result
    assert conn.extend.standard.who_am_i() == f"dn:{USERS['dave'].dn}"

    untrusted = _server(ldap_testbed, ldaps=True, ca=write_untrusted_ca(tmp_path / "o.pem"))
    with pytest.raises(LDAPSocketOpenError):
        _conn(untrusted, USERS["dave"].dn, USERS["dave"].password).bind()


# --- anonymous ------------------------------------------------------------------------------


def test_anonymous_cannot_read_people_or_passwords(ldap_testbed: LDAPTestbed) -> None:
    conn = _conn(_server(ldap_testbed))
    assert conn.bind()  # an anonymous bind itself is fine
    assert conn.extend.standard.who_am_i() in (None, "")
    conn.search(PEOPLE_DN, "(uid=alice)", attributes=["uid", "userPassword", "uidNumber"])
    assert conn.entries == []
    assert conn.result["description"] == "insufficientAccessRights"
    # the root DSE stays readable, so clients can discover StartTLS and naming contexts
    assert conn.search("", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["+"])
    assert ldap_testbed.base_dn in conn.entries[0].namingContexts.values
    assert "1.3.6.1.4.1.1466.20037" in conn.entries[0].supportedExtension.values  # StartTLS


def test_users_cannot_read_passwords_either(ldap_testbed: LDAPTestbed) -> None:
    alice = USERS["alice"]
    conn = _conn(_server(ldap_testbed), alice.dn, alice.password)
    assert conn.bind()
    assert conn.search(PEOPLE_DN, "(objectClass=inetOrgPerson)", attributes=["*", "userPassword"])
    assert len(conn.entries) == len(USERS)
    assert all(not e.entry_attributes_as_dict.get("userPassword") for e in conn.entries)
    assert all(e.entry_attributes_as_dict["uid"] for e in conn.entries)


# --- several instances ----------------------------------------------------------------------


def test_stop_one_instance_while_another_serves(
    ldap_testbed_factory: LDAPTestbedFactory,
) -> None:
    first, second = ldap_testbed_factory("a"), ldap_testbed_factory("b")
    assert first.port != second.port
    assert first.ca_cert_path.read_bytes() == second.ca_cert_path.read_bytes()  # one CA
    port = first.port

    first.stop()
    assert not first.is_running()
    with pytest.raises(LDAPSocketOpenError):
        _conn(_server(first), first.bind_dn, first.bind_password).bind()
    assert _service(second).extend.standard.who_am_i() == f"dn:{second.bind_dn}"

    # a pool that lists the stopped server first fails over to the live one
    pool = ldap3.ServerPool([_server(first), _server(second)], ldap3.FIRST, active=1, exhaust=True)
    conn = _conn(pool, first.bind_dn, first.bind_password)
    assert conn.bind(), conn.result
    assert conn.server.port == second.port

    first.start()  # same data, same port
    assert first.port == port
    assert _service(first).search(PEOPLE_DN, "(uid=carol)", attributes=["uidNumber"])


def test_frozen_instance_times_out_then_recovers(ldap_testbed_factory: LDAPTestbedFactory) -> None:
    tb = ldap_testbed_factory("hung")
    tb.freeze()
    conn = ldap3.Connection(_server(tb), tb.bind_dn, tb.bind_password, receive_timeout=1)
    with pytest.raises(LDAPSocketReceiveError):
        conn.bind()
    tb.thaw()
    assert _service(tb).bound
