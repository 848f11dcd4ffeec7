"""Kerberos tickets for password logins (an LDAP IdP's ``kerberos`` section).

At a password login the hub asks the KDC for a renewable TGT of the user's principal with
MIT ``kinit`` (the password on its stdin, never in argv, the environment or a log), reads the
credential cache into auth_state (key ``kerberos``, encrypted by JupyterHub) and removes the
file. The spawner writes the cache into the user's servers (``KRB5CCNAME``); the hub's
refresher renews it (``kinit -R`` on a temporary copy) before it expires, until the renewable
lifetime ends, and then tells the user to sign in again (docs/idps/ldap.md#kerberos-tickets).

Pure parts (data in, data out): option checks, principal templating, the credential-cache
reader, the renewal decision. I/O: :class:`Kinit` (async subprocesses, files in a private
temporary directory handled in a thread).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from afauth.errors import AuthFailure
from afauth.krb5cache import Ticket, parse_ccache
from afauth.refresh import REAUTH_KEY
from afauth.renewal import renew_at
from afcore.options import Option, check_options
from afcore.templates import template_problem

#: auth_state key of the ticket (docs/auth_state.md).
STATE_KEY = "kerberos"
OPTIONS: Mapping[str, Option] = {
    "realm": Option("str", required=True, help="e.g. FNAL.GOV"),
    "principal": Option("str", help="template, default {username}@{realm}"),
    "kdc": Option("str-list", help="host[:port] of the KDCs (else krb5_conf or the system's)"),
    "krb5_conf": Option("path", help="krb5.conf for kinit (default: the system's)"),
    "lifetime": Option("str", help="ticket lifetime, e.g. 10h (default 10h)"),
    "renew_lifetime": Option("str", help="renewable lifetime, e.g. 7d (default 7d)"),
    "required": Option("bool", help="refuse the login when no ticket is obtained (default false)"),
    "kinit": Option("path", help="the kinit program (default: kinit on PATH)"),
    "timeout": Option("number", help="seconds a kinit may take (default 15)"),
}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
#: characters a user name may not bring into a principal (realm, instance, quoting, spaces)
_BAD_NAME = re.compile(r"[@/\\\s\x00-\x1f\x7f]")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
#: why kinit failed, from its (C-locale) message
Failure = Literal["password", "unknown", "unreachable", "expired", "error"]
_FAILURES: tuple[tuple[str, Failure], ...] = (
    ("password incorrect", "password"),
    ("preauthentication failed", "password"),
    ("not found in kerberos database", "unknown"),
    ("cannot contact any kdc", "unreachable"),
    ("cannot find kdc", "unreachable"),
    ("cannot resolve", "unreachable"),
    ("timed out", "unreachable"),
    ("password has expired", "expired"),
    ("password expired", "expired"),
    ("ticket expired", "expired"),
)
_SAID: Mapping[Failure, str] = {
    "password": "the KDC refused the password",
    "unknown": "the principal is not in the Kerberos database",
    "unreachable": "the KDC could not be reached",
    "expired": "the Kerberos password or ticket has expired",
    "error": "kinit failed",
}


# -- configuration (pure) -----------------------------------------------------------------------


def parse_duration(value: object) -> int | None:
    """Seconds of ``value`` (an int of seconds, or ``10h``, ``7d``, ``1h30m``, ``90s``); ``None``
    when it is not a duration of at least one second."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str) or not value or (m := _DURATION.match(value.strip())) is None:
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    return seconds if seconds > 0 else None


def principal_for(template: str, username: str, realm: str) -> str:
    """The principal of ``username``; ValueError when the name cannot be part of one."""
    if not username or _BAD_NAME.search(username) or username.startswith("-"):
        raise ValueError(f"user name {username[:40]!r} cannot be used in a Kerberos principal")
    return template.replace("{username}", username).replace("{realm}", realm)


def check_section(value: object) -> list[tuple[str, str]]:
    """Problems of an IdP's ``kerberos`` section, keys relative to it (``lifetime``)."""
    if not isinstance(value, Mapping):
        return [("", "must be a mapping (realm, principal, lifetime, ...)")]
    problems = check_options(OPTIONS, value, "the kerberos section")
    if problems:
        return problems
    template = str(value.get("principal") or "{username}@{realm}")
    bad = template_problem(template, {"username", "realm"})
    if bad:
        problems.append(("principal", bad))
    elif "{username}" not in template or template.count("@") != 1 or template.endswith("@"):
        problems.append(("principal", "must contain {username} and end with @REALM or @{realm}"))
    realm = str(value["realm"])
    if _BAD_NAME.search(realm) or realm != realm.upper():
        problems.append(("realm", "a realm name in capitals without spaces, '@' or '/'"))
    for key in ("lifetime", "renew_lifetime"):
        if key in value and parse_duration(value[key]) is None:
            problems.append((key, "a duration such as 10h, 7d, 1h30m or seconds (≥ 1)"))
    for i, kdc in enumerate(value.get("kdc") or []):
        if not _HOST_PORT.match(str(kdc)):
            problems.append((f"kdc[{i}]", "host or host:port"))
    if value.get("kdc") and value.get("krb5_conf"):
        problems.append(("kdc", "give kdc or krb5_conf, not both"))
    life, renew = (
        parse_duration(value.get("lifetime", "10h")),
        parse_duration(value.get("renew_lifetime", "7d")),
    )
    if life and renew and renew < life:
        problems.append(("renew_lifetime", "shorter than lifetime: tickets could not be renewed"))
    return problems


@dataclass(frozen=True)
class KerberosSettings:
    """A checked ``kerberos`` section."""

    realm: str
    principal: str = "{username}@{realm}"
    kdc: tuple[str, ...] = ()
    krb5_conf: str | None = None
    lifetime: int = 36000
    renew_lifetime: int = 604800
    required: bool = False
    kinit: str = "kinit"
    timeout: float = 15.0

    @classmethod
    def from_section(cls, value: Mapping[str, Any]) -> KerberosSettings:
        return cls(
            realm=str(value["realm"]),
            principal=str(value.get("principal") or cls.principal),
            kdc=tuple(str(k) for k in value.get("kdc") or ()),
            krb5_conf=value.get("krb5_conf"),
            lifetime=parse_duration(value.get("lifetime", "10h")) or cls.lifetime,
            renew_lifetime=parse_duration(value.get("renew_lifetime", "7d")) or 604800,
            required=bool(value.get("required", False)),
            kinit=str(value.get("kinit") or "kinit"),
            timeout=float(value.get("timeout", 15.0)),
        )


def krb5_conf_text(realm: str, kdcs: tuple[str, ...]) -> str:
    """A krb5.conf naming ``realm``'s KDCs (TCP, no DNS lookups)."""
    lines = "".join(f"    kdc = {k}\n" for k in kdcs)
    return (
        f"[libdefaults]\n  default_realm = {realm}\n  dns_lookup_kdc = false\n"
        "  dns_lookup_realm = false\n  rdns = false\n  udp_preference_limit = 1\n"
        f"[realms]\n  {realm} = {{\n{lines}  }}\n"
    )


def ticket_state(ticket: Ticket, ccache: bytes) -> dict[str, Any]:
    """The auth_state ``kerberos`` value of a new or renewed ticket."""
    return {
        "principal": ticket.principal,
        "ccache": base64.b64encode(ccache).decode("ascii"),
        "starts_at": ticket.starts_at,
        "expires_at": ticket.expires_at,
        "renew_until": ticket.renew_until,
        "error": None,
    }


def no_ticket(principal: str | None, error: str) -> dict[str, Any]:
    """The ``kerberos`` value of a login without a ticket (``error``: why, for the user)."""
    return {"principal": principal, "ccache": None, "starts_at": None, "expires_at": None,
            "renew_until": None, "error": error}  # fmt: skip


def ccache_bytes(state: Mapping[str, Any] | None) -> bytes | None:
    """The credential cache an auth_state carries, or ``None``."""
    krb = (state or {}).get(STATE_KEY)
    value = krb.get("ccache") if isinstance(krb, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def classify(message: str) -> Failure:
    """Why kinit failed, from what it printed."""
    low = message.lower()
    return next((kind for text, kind in _FAILURES if text in low), "error")


# -- renewal decision (pure) --------------------------------------------------------------------

Action = Literal["wait", "renew", "ended"]


@dataclass(frozen=True)
class Decision:
    """``wait`` until ``at``; ``renew`` now; ``ended``: the ticket has expired, or it is due
    and cannot be extended (its renewable lifetime ends), ``at`` being when it expires."""

    action: Action
    at: float


def decide(
    expires_at: float, renew_until: float | None, starts_at: float | None, now: float, margin: float
) -> Decision:
    """What to do with a ticket at ``now``: renew ``margin`` seconds before it expires (or half
    its lifetime before, for short tickets), as long as renewing moves its end."""
    if now >= expires_at:
        return Decision("ended", expires_at)
    lifetime = expires_at - starts_at if starts_at is not None else None
    due = renew_at(expires_at, lifetime, margin)
    if now < due:
        return Decision("wait", due)
    if renew_until is None or renew_until <= expires_at + 1:
        return Decision("ended", expires_at)
    return Decision("renew", now)


# -- kinit (I/O) --------------------------------------------------------------------------------


class KinitFailed(Exception):
    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _read_and_remove(folder: str, name: str) -> bytes:
    try:
        return (Path(folder) / name).read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _private_copy(data: bytes | None) -> tuple[str, str]:
    """A private directory (0700) with ``data`` as its ``ccache`` file (mode 0600)."""
    folder = tempfile.mkdtemp(prefix="afauth-krb5-")
    path = os.path.join(folder, "ccache")
    if data is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return folder, path


class Kinit:
    """Runs MIT ``kinit`` for one IdP's settings; nothing blocks the event loop."""

    def __init__(self, settings: KerberosSettings, log: logging.Logger | None = None) -> None:
        self.settings = settings
        self.log = log or logging.getLogger("afauth.kerberos")
        self._conf_dir: str | None = None

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self.settings.krb5_conf:
            env["KRB5_CONFIG"] = self.settings.krb5_conf
        elif self.settings.kdc:
            if self._conf_dir is None:
                self._conf_dir = tempfile.mkdtemp(prefix="afauth-krb5conf-")
                text = krb5_conf_text(self.settings.realm, self.settings.kdc)
                Path(self._conf_dir, "krb5.conf").write_text(text, encoding="utf-8")
            env["KRB5_CONFIG"] = os.path.join(self._conf_dir, "krb5.conf")
        elif "KRB5_CONFIG" in os.environ:
            env["KRB5_CONFIG"] = os.environ["KRB5_CONFIG"]
        return env

    async def _run(self, args: list[str], stdin: bytes, secret: str = "") -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.settings.kinit,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,  # the password prompt
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
                start_new_session=True,  # no controlling terminal: kinit reads stdin
            )
        except OSError as exc:
            raise KinitFailed(
                "error", f"cannot run {self.settings.kinit}: {exc.strerror}"
            ) from None
        try:
            async with asyncio.timeout(self.settings.timeout):
                _, err = await proc.communicate(stdin)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise KinitFailed(
                "unreachable", f"kinit took more than {self.settings.timeout}s"
            ) from None
        if proc.returncode != 0:
            text = err.decode("utf-8", "replace").strip().replace("\n", "; ")[:400]
            if secret:
                text = text.replace(secret, "[password]")
            raise KinitFailed(classify(text), text or f"kinit exited with {proc.returncode}")

    async def obtain(self, principal: str, password: str) -> bytes:
        """A new renewable TGT of ``principal``: the credential cache's bytes."""
        folder, path = await asyncio.to_thread(_private_copy, None)
        try:
            s = self.settings
            args = ["-l", f"{s.lifetime}s", "-r", f"{s.renew_lifetime}s", "-c", f"FILE:{path}"]
            await self._run([*args, "--", principal], password.encode() + b"\n", password)
        finally:
            data = await asyncio.to_thread(_read_and_remove_quiet, folder)
        if not data:
            raise KinitFailed("error", "kinit wrote no credential cache")
        return data

    async def renew(self, ccache: bytes) -> bytes:
        """The renewed credential cache (``kinit -R`` on a private copy)."""
        folder, path = await asyncio.to_thread(_private_copy, ccache)
        try:
            await self._run(["-R", "-c", f"FILE:{path}"], b"")
        finally:
            data = await asyncio.to_thread(_read_and_remove_quiet, folder)
        if not data:
            raise KinitFailed("error", "kinit -R left no credential cache")
        return data

    def close(self) -> None:
        if self._conf_dir is not None:
            shutil.rmtree(self._conf_dir, ignore_errors=True)
            self._conf_dir = None


def _read_and_remove_quiet(folder: str) -> bytes:
    try:
        return _read_and_remove(folder, "ccache")
    except OSError:
        return b""


# -- login and renewal (I/O around the pure parts) ----------------------------------------------


async def login_ticket(kinit: Kinit, username: str, password: str, idp_name: str) -> dict[str, Any]:
    """The ``kerberos`` value for a login: a ticket, or why there is none. Raises
    :class:`AuthFailure` when the site requires a ticket and none was obtained."""
    s = kinit.settings
    principal: str | None = None
    try:
        principal = principal_for(s.principal, username, s.realm)
        ticket_data = await kinit.obtain(principal, password)
        ticket = parse_ccache(ticket_data)
    except (ValueError, KinitFailed) as exc:
        kind: Failure = exc.kind if isinstance(exc, KinitFailed) else "error"
        detail = exc.detail if isinstance(exc, KinitFailed) else str(exc)
        said = _SAID[kind]
        kinit.log.warning(
            "%s: no Kerberos ticket for %s: %s (%s)", idp_name, principal or username, said, detail
        )
        if s.required:
            raise AuthFailure(
                f"Your Kerberos ticket could not be obtained ({said}). Try again; if it "
                "persists, tell the facility administrators.",
                detail=f"kerberos {principal or username}: {detail}",
                status=503 if kind == "unreachable" else 403,
            ) from None
        return no_ticket(principal, f"No Kerberos ticket: {said}.")
    kinit.log.info(
        "%s: Kerberos ticket for %s until %s (renewable until %s)",
        idp_name,
        ticket.principal,
        _utc(ticket.expires_at),
        _utc(ticket.renew_until) if ticket.renew_until else "never",
    )
    return ticket_state(ticket, ticket_data)


@dataclass(frozen=True)
class Step:
    """What a renewal attempt did. ``state``: the new auth_state to save and hand to the
    servers (``None``: nothing changed); ``kind`` as :class:`afauth.renewal.Outcome`."""

    kind: Literal["renewed", "valid", "idle", "outage", "revoked"]
    state: dict[str, Any] | None = None
    expires_at: float | None = None
    lifetime: float | None = None


def _utc(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "?"


async def renew_ticket(
    kinit: Kinit, state: Mapping[str, Any], *, margin: float, now: float | None = None
) -> Step:
    """Renew the ticket of ``state`` when it is due; when it cannot be renewed any more, flag
    the session (:data:`afauth.refresh.REAUTH_KEY`) so that the user is told to sign in again."""
    krb = state.get(STATE_KEY)
    data = ccache_bytes(state)
    if not isinstance(krb, Mapping) or data is None or state.get(REAUTH_KEY):
        return Step("idle")
    now = time.time() if now is None else now
    try:
        old = parse_ccache(data)
    except ValueError:
        return Step("idle")
    choice = decide(old.expires_at, old.renew_until, old.starts_at, now, margin)
    if choice.action == "wait":
        return Step("valid", expires_at=old.expires_at, lifetime=old.lifetime)
    why = "its renewable lifetime ends"
    if choice.action == "renew":
        try:
            fresh = await kinit.renew(data)
            new = parse_ccache(fresh)
        except (KinitFailed, ValueError) as exc:
            kind = exc.kind if isinstance(exc, KinitFailed) else "error"
            detail = exc.detail if isinstance(exc, KinitFailed) else str(exc)
            if kind == "unreachable" and now < old.expires_at:
                kinit.log.warning("Kerberos renewal for %s postponed: %s", old.principal, detail)
                return Step("outage")
            why = f"the KDC did not renew it ({_SAID[kind]})"
            kinit.log.warning("Kerberos renewal for %s refused: %s", old.principal, detail)
        else:
            kinit.log.info("renewed the Kerberos ticket of %s", old.principal)
            out = {**state, STATE_KEY: ticket_state(new, fresh)}
            return Step("renewed", out, new.expires_at, new.lifetime)
    ends = "ended" if now >= old.expires_at else "ends"
    message = (
        f"Your Kerberos ticket {ends} at {_utc(old.expires_at)} and cannot be renewed any more "
        f"({why}). Sign in again to get a new one."
    )
    kinit.log.warning("Kerberos ticket of %s %s: %s", old.principal, ends, why)
    flagged = {**state, REAUTH_KEY: message}
    if now >= old.expires_at:  # useless now: remove it from the servers
        flagged[STATE_KEY] = {**krb, "ccache": None, "error": message}
    return Step("revoked", flagged)
