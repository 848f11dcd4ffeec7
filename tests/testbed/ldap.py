"""A real OpenLDAP ``slapd`` with a Fermilab-like directory, for tests.

Each :class:`LDAPTestbed` owns a temporary directory holding a TLS key pair (signed by a CA
shared by every instance of this process, so one ``ca_cert_path`` validates them all), a
``slapd.conf``, an mdb database loaded with ``slapadd``, and a ``slapd`` child process listening
on 127.0.0.1 only (plain LDAP with StartTLS, and LDAPS, on two free ports). ``slapd`` runs in the
foreground (``-d``), is tied to this process (SIGTERM if it dies, on Linux) and is stopped by
:meth:`stop`.

The tree (base ``dc=fnal,dc=gov``)::

    ou=People    inetOrgPerson (+ posixAccount for everyone but ``vera``), {SSHA} passwords
    ou=Groups    posixGroup with memberUid: cms 5063, us_cms 5064, dune 9010
                 groupOfNames with member DNs: eaf-users, gpu-approved, eaf-admins
    ou=Services  cn=eaf-hub, the read-only service account the hub binds as

ACLs: ``userPassword`` is usable for binding only (nobody reads it; the rootdn bypasses ACLs);
the service account and authenticated users read everything else; anonymous sessions read the root
DSE and the schema only. Unauthenticated binds (a DN with an empty password) are refused, as
slapd does by default, unless ``allow_unauthenticated_bind=True`` (``allow bind_anon_dn``), which
makes the server behave like directories that report such a bind as a success.

Fixtures (import them, or ``pytest_plugins = ["testbed.ldap"]`` in the root conftest):
``ldap_testbed`` (session-scoped, started; do not stop it, use the factory for that) and
``ldap_testbed_factory`` (function-scoped; starts extra instances, closes them after the test).

PYTEST_DONT_REWRITE (no assertions here; test modules may import this plugin before pytest does)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import functools
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE_DN",
    "GROUPS",
    "GROUPS_DN",
    "PEOPLE_DN",
    "SERVICES_DN",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "USERS",
    "LDAPGroup",
    "LDAPTestbed",
    "LDAPTestbedError",
    "LDAPTestbedFactory",
    "LDAPUser",
    "escape_dn_value",
    "ldap_testbed",
    "ldap_testbed_factory",
    "simple_bind_result",
    "ssha",
    "write_untrusted_ca",
]

HOST = "127.0.0.1"
BASE_DN = "dc=fnal,dc=gov"
PEOPLE_DN = f"ou=People,{BASE_DN}"
GROUPS_DN = f"ou=Groups,{BASE_DN}"
SERVICES_DN = f"ou=Services,{BASE_DN}"
SERVICE_DN = f"cn=eaf-hub,{SERVICES_DN}"
SERVICE_PASSWORD = "eaf-hub-service-password"
ADMIN_DN = f"cn=admin,{BASE_DN}"  # slapd rootdn: may write, bypasses ACLs
ADMIN_PASSWORD = "fnal-directory-admin"

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


class LDAPTestbedError(RuntimeError):
    """slapd could not be configured, loaded or started (the message carries its output)."""


@dataclass(frozen=True)
class LDAPUser:
    """A person in ``ou=People``. ``uid_number is None`` means a plain inetOrgPerson (no POSIX)."""

    uid: str
    cn: str
    sn: str
    given_name: str
    password: str
    uid_number: int | None = None
    gid_number: int | None = None
    login_shell: str = "/bin/bash"
    posix_groups: tuple[str, ...] = ()  # posixGroup cn's listing this uid in memberUid
    groups: tuple[str, ...] = ()  # groupOfNames cn's listing this user's DN in member

    @property
    def dn(self) -> str:
        return f"uid={escape_dn_value(self.uid)},{PEOPLE_DN}"

    @property
    def mail(self) -> str:
        return f"{self.uid.replace(chr(39), '').replace('+', '.')}@fnal.gov"

    @property
    def home_directory(self) -> str | None:
        return None if self.uid_number is None else f"/home/{self.uid}"

    @property
    def is_posix(self) -> bool:
        return self.uid_number is not None


@dataclass(frozen=True)
class LDAPGroup:
    cn: str
    kind: Literal["posixGroup", "groupOfNames"]
    description: str
    gid_number: int | None = None
    members: tuple[str, ...] = field(default=())  # uids, filled from USERS

    @property
    def dn(self) -> str:
        return f"cn={escape_dn_value(self.cn)},{GROUPS_DN}"


_USERS: tuple[LDAPUser, ...] = (
    # a CMS user (US CMS)
    LDAPUser("alice", "Alice Anderson", "Anderson", "Alice", "alice-password", 50001, 5063,
             posix_groups=("cms", "us_cms"), groups=("eaf-users",)),
    # a DUNE user
    LDAPUser("bob", "Bob Brown", "Brown", "Bob", "bob-password", 50002, 9010,
             posix_groups=("dune",), groups=("eaf-users",)),
    # in two experiments; non-ASCII password (sent as UTF-8)
    LDAPUser("carol", "Carol Chen", "Chen", "Carol", "carol-pässwörd", 50003, 5063,
             posix_groups=("cms", "dune"), groups=("eaf-users",)),
    # approved for GPUs
    LDAPUser("dave", "Dave Davis", "Davis", "Dave", "dave-password", 50004, 5063,
             posix_groups=("cms", "us_cms"), groups=("eaf-users", "gpu-approved")),
    # facility admin
    LDAPUser("erin", "Erin Evans", "Evans", "Erin", "erin-password", 50005, 9010,
             login_shell="/bin/zsh", posix_groups=("dune",), groups=("eaf-users", "eaf-admins")),
    # apostrophe in uid; comma and parentheses in cn (escape when a DN or filter is built from it)
    LDAPUser("o'brien", "O'Brien, Patrick (Pat)", "O'Brien", "Patrick", "obrien-password",
             50006, 5063, posix_groups=("cms",), groups=("eaf-users",)),
    # '+' in uid: the DN is uid=pat\+ops,ou=People,... (unescaped it would be a multi-valued RDN)
    LDAPUser("pat+ops", "Pat Ops", "Ops", "Pat", "patops-password", 50007, 9010,
             posix_groups=("dune",), groups=("eaf-users",)),
    # allowed to use the facility, but no POSIX identity (no uidNumber/gidNumber/home)
    LDAPUser("vera", "Vera Visitor", "Visitor", "Vera", "vera-password",
             groups=("eaf-users",)),
    # a POSIX CMS account that is not in eaf-users
    LDAPUser("nina", "Nina Nobel", "Nobel", "Nina", "nina-password", 50009, 5063,
             posix_groups=("cms",)),
)  # fmt: skip

_GROUPS: tuple[LDAPGroup, ...] = (
    LDAPGroup("cms", "posixGroup", "CMS experiment", 5063),
    LDAPGroup("us_cms", "posixGroup", "US CMS collaborators", 5064),
    LDAPGroup("dune", "posixGroup", "DUNE experiment", 9010),
    LDAPGroup("eaf-users", "groupOfNames", "May use the Elastic Analysis Facility"),
    LDAPGroup("gpu-approved", "groupOfNames", "Approved for GPU notebooks"),
    LDAPGroup("eaf-admins", "groupOfNames", "EAF administrators"),
)

USERS: Mapping[str, LDAPUser] = MappingProxyType({u.uid: u for u in _USERS})
GROUPS: Mapping[str, LDAPGroup] = MappingProxyType(
    {
        g.cn: LDAPGroup(
            g.cn,
            g.kind,
            g.description,
            g.gid_number,
            tuple(
                u.uid
                for u in _USERS
                if g.cn in (u.posix_groups if g.kind == "posixGroup" else u.groups)
            ),
        )
        for g in _GROUPS
    }
)


# ---------------------------------------------------------------------------------------------
# small helpers


def escape_dn_value(value: str) -> str:
    """Escape an attribute value for use in a string DN (RFC 4514, section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def ssha(password: str, salt: bytes | None = None) -> str:
    """``{SSHA}`` userPassword value, as ``slappasswd -h {SSHA}`` produces."""
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _ldif_line(attr: str, value: str) -> str:
    """``attr: value``, or ``attr:: base64`` when the value is not an LDIF SAFE-STRING."""
    safe = (
        value.isascii()
        and not any(c in value for c in "\0\r\n")
        and not (value[:1] in (" ", ":", "<") or value.endswith(" "))
    )
    if safe:
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode()).decode('ascii')}"


def _ldif_entry(dn: str, attrs: list[tuple[str, str]]) -> str:
    return "\n".join([_ldif_line("dn", dn), *(_ldif_line(a, v) for a, v in attrs)]) + "\n"


def _tree_ldif() -> str:
    entries = [
        _ldif_entry(BASE_DN, [("objectClass", "top"), ("objectClass", "dcObject"),
                              ("objectClass", "organization"), ("dc", "fnal"),
                              ("o", "Fermi National Accelerator Laboratory")]),
        *(
            _ldif_entry(dn, [("objectClass", "organizationalUnit"), ("ou", dn[3:].split(",")[0])])
            for dn in (PEOPLE_DN, GROUPS_DN, SERVICES_DN)
        ),
        _ldif_entry(SERVICE_DN, [("objectClass", "applicationProcess"),
                                 ("objectClass", "simpleSecurityObject"), ("cn", "eaf-hub"),
                                 ("description", "JupyterHub EAF read-only bind account"),
                                 ("userPassword", ssha(SERVICE_PASSWORD))]),
    ]  # fmt: skip
    for u in USERS.values():
        attrs = [("objectClass", "inetOrgPerson")]
        if u.is_posix:
            attrs.append(("objectClass", "posixAccount"))
        attrs += [("uid", u.uid), ("cn", u.cn), ("sn", u.sn), ("givenName", u.given_name),
                  ("mail", u.mail), ("userPassword", ssha(u.password))]  # fmt: skip
        if u.is_posix:
            attrs += [
                ("uidNumber", str(u.uid_number)),
                ("gidNumber", str(u.gid_number)),
                ("homeDirectory", str(u.home_directory)),
                ("loginShell", u.login_shell),
            ]
        entries.append(_ldif_entry(u.dn, attrs))
    for g in GROUPS.values():
        attrs = [("objectClass", g.kind), ("cn", g.cn), ("description", g.description)]
        if g.kind == "posixGroup":
            attrs += [("gidNumber", str(g.gid_number)), *(("memberUid", m) for m in g.members)]
        else:
            attrs += [("member", USERS[m].dn) for m in g.members]
        entries.append(_ldif_entry(g.dn, attrs))
    return "\n".join(entries)


# ---------------------------------------------------------------------------------------------
# PKI


@dataclass(frozen=True)
class _CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _new_ca(common_name: str) -> _CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyterhub-af test bed"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])  # fmt: skip
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _CA(key, cert)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


@functools.cache
def _shared_ca() -> _CA:
    return _new_ca("af test bed LDAP CA")


def _write_server_pki(directory: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server.key (for localhost and 127.0.0.1) into ``directory``."""
    ca = _shared_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca.pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def write_untrusted_ca(path: Path) -> Path:
    """Write a CA certificate that signed none of the test bed's servers (negative TLS tests)."""
    path.write_bytes(_new_ca("untrusted test CA").pem)
    return path


# ---------------------------------------------------------------------------------------------
# process handling


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tlv(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + payload


def _read_tlv(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position) of the BER element at ``pos``; IndexError if incomplete."""
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first & 0x80:
        size = first & 0x7F
        n = int.from_bytes(buf[pos : pos + size], "big")
        pos += size
    else:
        n = first
    if pos + n > len(buf):
        raise IndexError("truncated BER element")
    return tag, buf[pos : pos + n], pos + n


def simple_bind_result(
    port: int, dn: str, password: bytes, *, host: str = HOST, timeout: float = 5.0
) -> tuple[int, str]:
    """Send one raw LDAPv3 simple BindRequest over plain LDAP; return (resultCode, diagnostic).

    Unlike ldap3 (which refuses an empty password client-side), this sends exactly what it is
    given, so tests can show how the server itself treats an unauthenticated bind (a DN with an
    empty password, RFC 4513 section 5.1.2).
    """
    bind = _tlv(0x02, b"\x03") + _tlv(0x04, dn.encode()) + _tlv(0x80, password)
    request = _tlv(0x30, _tlv(0x02, b"\x01") + _tlv(0x60, bind))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        buf = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} bytes")
            buf += chunk
            try:
                tag, message, _ = _read_tlv(buf, 0)
                break
            except IndexError:
                continue
    _, _, pos = _read_tlv(message, 0)  # messageID
    tag, response, _ = _read_tlv(message, pos)
    if tag != 0x61:
        raise ConnectionError(f"expected a BindResponse, got tag {tag:#x}")
    _, code, pos = _read_tlv(response, 0)
    _, _, pos = _read_tlv(response, pos)  # matchedDN
    _, diagnostic, _ = _read_tlv(response, pos)
    return int.from_bytes(code, "big"), diagnostic.decode(errors="replace")


def _answers_ldap(port: int, timeout: float) -> bool:
    try:
        return simple_bind_result(port, "", b"", timeout=timeout)[0] == 0  # anonymous bind
    except OSError:
        return False


_LIVE: weakref.WeakSet[LDAPTestbed] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # safety net; PDEATHSIG covers a killed interpreter
    for tb in list(_LIVE):
        tb.close()


def _find_slapd() -> Path:
    for candidate in (shutil.which("slapd"), "/usr/sbin/slapd"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise LDAPTestbedError("slapd not found; install it with: bash tests/testbed/system-deps.sh")


class LDAPTestbed:
    """One slapd instance with the Fermilab-like tree. ``start()`` it; ``close()`` it when done.

    ``stop()``/``kill()``/``freeze()`` simulate a server going away (gracefully, crashing, hanging:
    the kernel still accepts TCP connections but nothing answers); ``start()`` after ``stop()`` or
    ``kill()`` serves the same data on the same ports again.
    """

    host = HOST
    base_dn = BASE_DN
    people_dn = PEOPLE_DN
    groups_dn = GROUPS_DN
    services_dn = SERVICES_DN
    bind_dn = SERVICE_DN  # the read-only service account
    bind_password = SERVICE_PASSWORD
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    users = USERS
    groups = GROUPS

    def __init__(
        self,
        name: str = "ldap",
        *,
        allow_unauthenticated_bind: bool = False,
        debug_level: str = "0",
        workdir: Path | None = None,
    ) -> None:
        self.name = name
        self.allow_unauthenticated_bind = allow_unauthenticated_bind
        self.debug_level = debug_level  # slapd -d: "0", "stats", "acl", "any", ...
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"af-slapd-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_cert_path, self.cert_path, self.key_path = _write_server_pki(self.workdir)
        self.config_path = self.workdir / "slapd.conf"
        self.db_dir = self.workdir / "db"
        self.log_path = self.workdir / "slapd.log"
        self.pid_path = self.workdir / "slapd.pid"
        self.port = 0
        self.ldaps_port = 0
        self.startup_seconds: float | None = None  # of the last start(): exec to first answer
        self._slapd = _find_slapd()
        self._proc: subprocess.Popen[bytes] | None = None
        self._loaded = False
        self._frozen = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """``ldap://127.0.0.1:PORT`` (plain; StartTLS available)."""
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    def user_dn(self, uid: str) -> str:
        return USERS[uid].dn

    def group_dn(self, cn: str) -> str:
        return GROUPS[cn].dn

    def env(self) -> dict[str, str]:
        """Environment for the OpenLDAP command-line tools (ldapsearch -H ... -ZZ)."""
        return {**os.environ, "LDAPTLS_CACERT": str(self.ca_cert_path), "LDAPTLS_REQCERT": "demand"}

    # -- lifecycle ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def start(self, timeout: float = 60.0) -> LDAPTestbed:
        """Start slapd (loading the tree the first time) and wait until it answers LDAP."""
        if self.is_running():
            return self
        fixed_ports = self.port != 0
        for attempt in range(5):
            if not fixed_ports:
                self.port, self.ldaps_port = _free_port(), _free_port()
                if self.port == self.ldaps_port:
                    continue
            self._write_config()
            if not self._loaded:
                self._load()
            if self._spawn(timeout):
                return self
            if fixed_ports or "Address already in use" not in self.log() or attempt == 4:
                break
        raise LDAPTestbedError(f"slapd {self.name} did not start:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (SIGTERM, as an operator would); SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if self._frozen:
            proc.send_signal(signal.SIGCONT)
            self._frozen = False
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """Crash: SIGKILL, no shutdown."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        if self._proc is not None and self.is_running():
            self._proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._proc is not None and self._frozen:
            self._proc.send_signal(signal.SIGCONT)
            self._frozen = False

    def close(self) -> None:
        """Stop and remove the working directory (if this object created it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> LDAPTestbed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LDAPTestbed {self.name} {self.uri} {self.ldaps_uri} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        modules = ""
        if (MODULE_DIR / "back_mdb.so").exists():  # Debian builds backends as modules
            modules = f"modulepath {MODULE_DIR}\nmoduleload back_mdb\n"
        schemas = "".join(f"include {SCHEMA_DIR / s}.schema\n" for s in SCHEMAS)
        allow = "allow bind_anon_dn\n" if self.allow_unauthenticated_bind else ""
        svc = f'dn.exact="{SERVICE_DN}"'
        self.config_path.write_text(
            f"""# generated by tests/testbed/ldap.py ({self.name})
{schemas}{modules}{allow}pidfile {self.pid_path}
argsfile {self.workdir / "slapd.args"}
TLSCACertificateFile {self.ca_cert_path}
TLSCertificateFile {self.cert_path}
TLSCertificateKeyFile {self.key_path}
TLSVerifyClient never

# frontend: anyone may read the root DSE (StartTLS/SASL discovery) and the schema
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read

database mdb
maxsize 67108864
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {self.db_dir}
dbnosync
index objectClass eq
index uid,cn,mail eq,sub
index memberUid,member,uidNumber,gidNumber eq

access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by {svc} read
    by users read
    by anonymous auth
    by * none
"""
        )

    def _load(self) -> None:
        self.db_dir.mkdir(exist_ok=True)
        ldif = self.workdir / "tree.ldif"
        ldif.write_text(_tree_ldif(), encoding="utf-8")
        slapadd = self._slapd.with_name("slapadd")
        cmd = [str(slapadd) if slapadd.exists() else "slapadd", "-q", "-f", str(self.config_path),
               "-l", str(ldif)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise LDAPTestbedError(f"slapadd failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        self._loaded = True

    def _spawn(self, timeout: float) -> bool:
        urls = f"ldap://{HOST}:{self.port}/ ldaps://{HOST}:{self.ldaps_port}/"
        cmd = [str(self._slapd), "-d", self.debug_level, "-h", urls, "-f", str(self.config_path)]
        # Tie slapd's life to ours only when started from the main thread: PDEATHSIG fires when the
        # *thread* that forked exits, and worker threads come and go.
        on_main = threading.current_thread() is threading.main_thread()
        start = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if on_main and sys.platform == "linux" else None,
            )
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _answers_ldap(self.port, 1.0) and _port_open(self.ldaps_port):
                _LIVE.add(self)
                self.startup_seconds = time.monotonic() - start
                return True
            time.sleep(0.02)
        self.kill()
        raise LDAPTestbedError(f"slapd {self.name} did not answer in {timeout}s:\n{self.log()}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# pytest fixtures


class LDAPTestbedFactory(Protocol):
    def __call__(
        self, name: str = ..., *, allow_unauthenticated_bind: bool = ..., debug_level: str = ...
    ) -> LDAPTestbed: ...


@pytest.fixture(scope="session")
def ldap_testbed() -> Iterator[LDAPTestbed]:
    """The shared, started slapd. Read-only by convention; never stop it (use the factory)."""
    with LDAPTestbed("session") as tb:
        yield tb


@pytest.fixture
def ldap_testbed_factory() -> Iterator[LDAPTestbedFactory]:
    """Start extra slapd instances (failover, crash, config variants); all closed after the test."""
    started: list[LDAPTestbed] = []

    def factory(
        name: str = "extra", *, allow_unauthenticated_bind: bool = False, debug_level: str = "0"
    ) -> LDAPTestbed:
        tb = LDAPTestbed(
            f"{name}{len(started)}",
            allow_unauthenticated_bind=allow_unauthenticated_bind,
            debug_level=debug_level,
        )
        started.append(tb)
        return tb.start()

    yield factory
    for tb in started:
        tb.close()
