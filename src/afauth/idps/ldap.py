"""LDAP IdP (ldap3): service-account search, then a bind as the user.

Every ldap3 call runs in this IdP's own thread pool, so a slow or hung directory never blocks
the hub's event loop (ldapauthenticator #124). Service-account connections are pooled and
reused; servers are tried in order with failover, and a server that failed is skipped for
``retry_after`` seconds. Filter values are escaped (RFC 4515); DNs come from the directory.
Empty passwords are refused before any server is contacted: an LDAP "unauthenticated bind"
(a DN with an empty password) succeeds on many servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import ldap3
from ldap3.utils.conv import escape_filter_chars

from afauth import kerberos
from afauth.errors import AuthFailure
from afauth.identity import Identity
from afauth.idps.base import PasswordIdP
from afauth.idps.ldap_support import close, fill, filter_problem, first, parent, to_int
from afauth.metrics import idp_request
from afauth.usernames import MAX_INPUT_LENGTH, normalise_username
from afcore.options import Option, as_list

INVALID = "Invalid username or password."


class _ServerDown(Exception):
    """A server could not be used (connect, TLS, timeout); try the next one."""


@dataclass
class _Stats:
    service_connections: int = 0  # service-account connections opened
    service_reuses: int = 0  # operations served by an already open pooled connection
    user_binds: int = 0
    failovers: int = 0  # times a server was skipped after a failure


class LDAP(PasswordIdP):
    """An LDAP directory (``type: ldap``), e.g. Fermilab's."""

    type_name: ClassVar[str] = "ldap"
    description: ClassVar[str] = "LDAP directory (username and password)"
    files: ClassVar[tuple[str, ...]] = ("ca_file", "bind_password_file")
    options: ClassVar[Mapping[str, Option]] = {
        "servers": Option("ldap-url-list", required=True, help="tried in order (failover)"),
        "start_tls": Option("bool", help="StartTLS on ldap:// servers (default true)"),
        "allow_plaintext": Option("bool", help="allow ldap:// without StartTLS (never in prod)"),
        "ca_file": Option("path", help="CA bundle that signed the servers' certificates"),
        "bind_dn": Option("str", required=True, help="the read-only service account"),
        "bind_password": Option("secret"),
        "bind_password_file": Option("path"),
        "user_search_base": Option("str", required=True),
        "user_filter": Option("str", help="default (uid={username})"),
        "username_attribute": Option("str", help="default uid"),
        "subject_attribute": Option("str", help="stable id: default the username attribute"),
        "group_search_base": Option("str", help="default: user_search_base's parent"),
        "posix_group_filter": Option("str"),
        "member_group_filter": Option("str"),
        "attributes": Option("str-list", help="extra user attributes copied into the claims"),
        "connect_timeout": Option("number", help="seconds (default 5)"),
        "receive_timeout": Option("number", help="seconds per operation (default 10)"),
        "retry_after": Option("number", help="seconds a failed server is skipped (default 30)"),
        "pool_size": Option("int", help="pooled service connections (default 2)"),
        "max_workers": Option("int", help="threads for LDAP calls (default 4)"),
        "kerberos": Option("mapping", help="obtain a Kerberos ticket at login (see docs)"),
    }
    defaults: ClassVar[Mapping[str, object]] = {
        "start_tls": True,
        "allow_plaintext": False,
        "user_filter": "(uid={username})",
        "username_attribute": "uid",
        "posix_group_filter": "(&(objectClass=posixGroup)(memberUid={username}))",
        "member_group_filter": "(&(objectClass=groupOfNames)(member={dn}))",
        "connect_timeout": 5,
        "receive_timeout": 10,
        "retry_after": 30,
        "pool_size": 2,
        "max_workers": 4,
    }

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.servers = as_list(config["servers"])
        self._server_objs: list[ldap3.Server] = []  # built on first use (reads ca_file)
        self._down_until = [0.0] * len(self.servers)
        self._pool: list[tuple[int, ldap3.Connection]] = []
        self._pool_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=int(self.opt("max_workers")), thread_name_prefix=f"afauth-ldap-{self.name}"
        )
        self.stats = _Stats()
        self._bind_password: str | None = None
        section = config.get("kerberos")
        self.kerberos = (  # tickets at login (afauth.kerberos), renewed by the hub's refresher
            kerberos.Kinit(kerberos.KerberosSettings.from_section(section), self.log)
            if isinstance(section, Mapping)
            else None
        )

    def default_display_name(self) -> str:
        return self.name.upper()

    @classmethod
    def check_combination(cls, config: Mapping[str, object]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        start_tls = config.get("start_tls", True)
        for i, uri in enumerate(as_list(config.get("servers"))):
            if uri.startswith("ldap://") and not start_tls and not config.get("allow_plaintext"):
                problems.append(
                    (
                        f"servers[{i}]",
                        f"{uri} without StartTLS sends passwords in clear text; use ldaps://, "
                        "start_tls: true, or (test beds only) allow_plaintext: true",
                    )
                )
        if bool(config.get("bind_password")) == bool(config.get("bind_password_file")):
            problems.append(("bind_password", "give exactly one of bind_password and its file"))
        for key, fields in (
            ("user_filter", {"username"}),
            ("posix_group_filter", {"username", "dn"}),
            ("member_group_filter", {"username", "dn"}),
        ):
            value = config.get(key)
            if isinstance(value, str):
                problem = filter_problem(
                    value, fields, required="username" * (key == "user_filter")
                )
                if problem:
                    problems.append((key, problem))
        for key in ("pool_size", "max_workers"):
            if config.get(key) == 0:
                problems.append((key, "must be at least 1"))
        if config.get("kerberos") is not None:
            problems += [
                (f"kerberos.{k}" if k else "kerberos", m)
                for k, m in kerberos.check_section(config["kerberos"])
            ]
        return problems

    # -- servers and connections (worker threads only) -----------------------------------------

    def _servers(self) -> list[ldap3.Server]:
        with self._pool_lock:
            if not self._server_objs:
                tls = ldap3.Tls(
                    validate=ssl.CERT_REQUIRED,
                    ca_certs_file=self.config.get("ca_file"),
                    version=ssl.PROTOCOL_TLS_CLIENT,
                )
                self._server_objs = [self._server(uri, tls) for uri in self.servers]
            return self._server_objs

    def _server(self, uri: str, tls: ldap3.Tls) -> ldap3.Server:
        parts = urlsplit(uri)
        ldaps = parts.scheme == "ldaps"
        return ldap3.Server(
            parts.hostname,
            port=parts.port or (636 if ldaps else 389),
            use_ssl=ldaps,
            tls=tls,
            connect_timeout=float(self.opt("connect_timeout")),
            get_info=ldap3.NONE,
        )

    def _connect(self, index: int, user: str, password: str) -> ldap3.Connection:
        """An open, TLS-protected connection to server ``index`` bound as ``user``.

        Raises _ServerDown for transport problems, AuthFailure for a refused bind.
        """
        try:
            server = self._servers()[index]
        except Exception as exc:  # e.g. a CA file that is not PEM
            raise _ServerDown(f"TLS setup failed: {type(exc).__name__}: {exc}") from None
        server.reset_availability()  # failover is decided here, not by ldap3's own memory
        conn = ldap3.Connection(
            server,
            user=user,
            password=password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            receive_timeout=max(1, math.ceil(float(self.opt("receive_timeout")))),  # ldap3: int
            read_only=True,
            raise_exceptions=False,
        )
        try:
            with idp_request(self.name, "bind"):
                conn.open()
                starttls = self.servers[index].startswith("ldap://") and self.opt("start_tls")
                if starttls and not conn.start_tls():
                    raise _ServerDown(f"StartTLS refused: {conn.result.get('description')}")
                ok = conn.bind()
        except Exception as exc:  # ldap3 raises more than LDAPException here
            close(conn)
            raise _ServerDown(f"{type(exc).__name__}: {exc}") from None
        if not ok:
            result = dict(conn.result or {})
            close(conn)
            if result.get("result") == 49:  # invalidCredentials
                raise AuthFailure(INVALID, detail="bind refused: invalidCredentials")
            raise AuthFailure(
                f"The {self.display_name} directory refused the sign-in "
                f"({result.get('description', 'error')}).",
                detail=f"bind as {user!r} refused: {result.get('description')}",
            )
        return conn

    def _order(self) -> list[int]:
        now = time.monotonic()
        up = [i for i in range(len(self.servers)) if self._down_until[i] <= now]
        down = [i for i in range(len(self.servers)) if self._down_until[i] > now]
        return up + down  # servers marked down are still tried, last

    def _mark_down(self, index: int, why: str) -> None:
        self._down_until[index] = time.monotonic() + float(self.opt("retry_after"))
        self.stats.failovers += 1
        self.log.warning("%s: LDAP server %s failed: %s", self.name, self.servers[index], why)

    @contextlib.contextmanager
    def _service(
        self, index: int, *, fresh: bool = False
    ) -> Iterator[tuple[ldap3.Connection, bool]]:
        """A service-account connection to server ``index`` and whether it was pooled.

        It goes back to the pool afterwards unless the server failed (_ServerDown).
        """
        conn = None
        with self._pool_lock:
            mine = [c for i, c in self._pool if i == index]
            if fresh:
                self._pool = [(i, c) for i, c in self._pool if i != index]
            elif mine:
                conn = mine[0]
                self._pool = [(i, c) for i, c in self._pool if c is not conn]
                self.stats.service_reuses += 1
        if fresh:
            for stale in mine:
                close(stale)
        reused = conn is not None
        if conn is None:
            conn = self._connect(index, str(self.config["bind_dn"]), self.bind_password)
            self.stats.service_connections += 1
        try:
            yield conn, reused
        except _ServerDown:
            close(conn)
            raise
        finally:
            if not conn.closed:
                with self._pool_lock:
                    if len(self._pool) < int(self.opt("pool_size")):
                        self._pool.append((index, conn))
                        conn = None
                if conn is not None:
                    close(conn)

    def _attempt(self, index: int, operation: Any) -> Any:
        """``operation`` on server ``index``; a dead pooled connection gets one fresh retry."""
        reused = False
        try:
            with self._service(index) as (conn, reused):
                return operation(index, conn)
        except _ServerDown:
            if not reused:
                raise
        with self._service(index, fresh=True) as (conn, _):
            return operation(index, conn)

    @property
    def bind_password(self) -> str:
        if self._bind_password is None:
            if self.config.get("bind_password"):
                self._bind_password = str(self.config["bind_password"])
            else:
                with open(str(self.config["bind_password_file"]), encoding="utf-8") as f:
                    self._bind_password = f.read().strip()
        return self._bind_password

    def _with_failover(self, operation: Any) -> Any:
        """Run ``operation(index, service_conn)`` on the first server that works."""
        errors: list[str] = []
        for index in self._order():
            try:
                result = self._attempt(index, operation)
            except _ServerDown as exc:
                self._mark_down(index, str(exc))
                errors.append(f"{self.servers[index]}: {exc}")
                continue
            self._down_until[index] = 0.0
            return result
        raise AuthFailure(
            f"The {self.display_name} directory cannot be reached right now. Try again in a few "
            "minutes; if it persists, tell the facility administrators.",
            detail="; ".join(errors),
            status=503,
        )

    def _search(self, conn: ldap3.Connection, base: str, flt: str, attrs: list[str]) -> list[Any]:
        try:
            with idp_request(self.name, "search"):
                conn.search(base, flt, ldap3.SUBTREE, attributes=attrs, size_limit=50)
        except Exception as exc:  # ldap3 raises more than LDAPException here
            raise _ServerDown(f"search failed: {type(exc).__name__}: {exc}") from None
        result = conn.result or {}
        if result.get("result") not in (0, 4, 32):  # success, sizeLimitExceeded, noSuchObject
            raise _ServerDown(f"search failed: {result.get('description')}")
        return [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]

    # -- login and lookup (worker threads) -----------------------------------------------------

    def _user_attrs(self) -> list[str]:
        attrs = {"uidNumber", "gidNumber", "homeDirectory", "cn", "displayName", "mail"}
        attrs.add(str(self.opt("username_attribute")))
        if self.config.get("subject_attribute") not in (None, "dn"):
            attrs.add(str(self.config["subject_attribute"]))
        attrs.update(as_list(self.config.get("attributes")))
        return sorted(attrs)

    def _find_user(self, conn: ldap3.Connection, username: str) -> tuple[str, dict[str, Any]]:
        flt = str(self.opt("user_filter")).replace("{username}", escape_filter_chars(username))
        entries = self._search(conn, str(self.config["user_search_base"]), flt, self._user_attrs())
        if len(entries) != 1:
            if len(entries) > 1:
                self.log.warning("%s: %d entries match one user name", self.name, len(entries))
            raise AuthFailure(INVALID, detail=f"user search found {len(entries)} entries")
        return str(entries[0]["dn"]), dict(entries[0].get("attributes") or {})

    def _groups(
        self, conn: ldap3.Connection, uid: str, dn: str
    ) -> tuple[list[str], list[str], list[int]]:
        base = str(
            self.config.get("group_search_base") or parent(str(self.config["user_search_base"]))
        )
        values = {"username": escape_filter_chars(uid), "dn": escape_filter_chars(dn)}
        posix: list[str] = []
        gids: list[int] = []
        for entry in self._search(
            conn, base, fill(self.opt("posix_group_filter"), values), ["cn", "gidNumber"]
        ):
            attrs = entry.get("attributes") or {}
            if cn := first(attrs.get("cn")):
                posix.append(cn)
            if (gid := to_int(attrs.get("gidNumber"))) is not None:
                gids.append(gid)
        member = [
            cn
            for entry in self._search(
                conn, base, fill(self.opt("member_group_filter"), values), ["cn"]
            )
            if (cn := first((entry.get("attributes") or {}).get("cn")))
        ]
        return sorted(set(posix)), sorted(set(member)), sorted(set(gids))

    def _identity(self, conn: ldap3.Connection, dn: str, attrs: Mapping[str, Any]) -> Identity:
        uid = first(attrs.get(str(self.opt("username_attribute"))))
        username = normalise_username(uid, max_length=self.max_username_length)
        assert uid is not None
        subject_attr = self.config.get("subject_attribute") or self.opt("username_attribute")
        subject = dn if subject_attr == "dn" else first(attrs.get(str(subject_attr)))
        if not subject:
            raise AuthFailure(INVALID, detail=f"entry has no {subject_attr}")
        posix, member, gids = self._groups(conn, uid, dn)
        claims: dict[str, Any] = {
            key: (vals if isinstance(vals, list) and len(vals) != 1 else first(vals))
            for key, vals in attrs.items()
        }
        claims.update(
            {
                "dn": dn,
                "posix_groups": posix,
                "ldap_groups": member,
                "groups": sorted({*posix, *member}),
            }
        )
        gid = to_int(attrs.get("gidNumber"))
        mail = first(attrs.get("mail"))
        return Identity(
            idp=self.name,
            subject=str(subject),
            username=username,
            email=mail,
            email_verified=mail is not None,
            uid=to_int(attrs.get("uidNumber")),
            gid=gid,
            idp_groups=tuple(sorted({*posix, *member})),
            supplemental_gids=tuple(g for g in gids if g != gid),
            home=first(attrs.get("homeDirectory")),
            display_name=first(attrs.get("displayName")) or first(attrs.get("cn")),
            claims=MappingProxyType(claims),
        )

    def _login_sync(self, username: str, password: str) -> Identity:
        def operation(index: int, conn: ldap3.Connection) -> Identity:
            dn, attrs = self._find_user(conn, username)
            user_conn = self._connect(index, dn, password)
            self.stats.user_binds += 1
            close(user_conn)
            return self._identity(conn, dn, attrs)

        result: Identity = self._with_failover(operation)
        return result

    def _lookup_sync(self, username: str) -> Identity:
        def operation(index: int, conn: ldap3.Connection) -> Identity:
            dn, attrs = self._find_user(conn, username)
            return self._identity(conn, dn, attrs)

        result: Identity = self._with_failover(operation)
        return result

    # -- async API (event loop) ----------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Identity:
        loop = asyncio.get_running_loop()
        result: Identity = await loop.run_in_executor(self._executor, fn, *args)
        return result

    async def login(self, username: str, password: str) -> Identity:
        if not password:
            raise AuthFailure("Enter your password.", detail="empty password refused")
        if not username:
            raise AuthFailure("Enter your user name.", detail="empty username refused")
        if len(username) > MAX_INPUT_LENGTH or len(password) > 1024:
            raise AuthFailure(INVALID, detail="oversized username or password")
        if not username.isascii() or not username.isprintable() or "\x00" in password:
            raise AuthFailure(
                "User names may only contain plain ASCII letters, digits and punctuation.",
                detail="non-ASCII or control characters in the username",
            )
        identity = await self._run(self._login_sync, username, password)
        if self.kerberos is None:
            return identity
        name = identity.claims.get(str(self.opt("username_attribute")))
        ticket = await kerberos.login_ticket(
            self.kerberos, str(name or identity.username), password, self.name
        )
        return dataclasses.replace(identity, kerberos=ticket)

    async def refresh(self, state: Mapping[str, Any], *, margin: float) -> Identity | None:
        claims = state.get("claims") or {}
        uid = (
            claims.get(str(self.opt("username_attribute"))) if isinstance(claims, Mapping) else None
        )
        if not isinstance(uid, str) or not uid:
            return None
        try:
            identity = await self._run(self._lookup_sync, uid)
        except AuthFailure as exc:
            if exc.status == 503:
                return None  # directory unreachable: keep what we have, try again later
            raise AuthFailure(
                f"Your {self.display_name} account is no longer active. Contact the facility "
                "administrators.",
                detail=f"refresh: {exc.detail}",
            ) from None
        if identity.subject != state.get("subject"):
            raise AuthFailure(
                f"Your {self.display_name} account changed. Please sign in again.",
                detail="refresh: subject changed",
            )
        ticket = state.get(kerberos.STATE_KEY)  # kept; renewed when due
        if self.kerberos is not None and isinstance(ticket, Mapping):
            step = await kerberos.renew_ticket(self.kerberos, state, margin=margin)
            if step.kind == "renewed" and step.state is not None:
                ticket = step.state[kerberos.STATE_KEY]
        return dataclasses.replace(identity, kerberos=ticket)

    async def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for _, conn in pool:
            close(conn)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.kerberos is not None:
            self.kerberos.close()
