"""One MIT ``krb5kdc`` process serving the test realm ``AF.TEST`` (plain process, loopback port).

The database is created with ``kdb5_util create -s`` in a temporary directory; principals are
added with ``kadmin.local``: one per person of the LDAP test tree (``testbed.ldap.directory``)
with the same password, except ``erin`` (her Kerberos password differs from her LDAP one, so a
good LDAP bind with a failing ``kinit`` can be tested) and ``vera`` (no principal). Every
principal requires pre-authentication, as at real sites. Tickets are renewable; the realm's
lifetimes are short by default so that tests can see tickets expire and be renewed.

Nothing system-wide is used: clients must be given :attr:`KDCTestbed.krb5_conf` (``KRB5_CONFIG``).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

from testbed.ldap.directory import USERS
from testbed.procs import LOOPBACK, free_port

__all__ = ["PRINCIPALS", "REALM", "KDCTestbed", "KDCTestbedError"]

REALM = "AF.TEST"
MASTER_PASSWORD = "af-test-kdc-master"
#: principal name → password (the LDAP passwords, except erin's; vera has no principal)
PRINCIPALS: Mapping[str, str] = MappingProxyType(
    {
        uid: ("erin-kerberos-password" if uid == "erin" else user.password)
        for uid, user in USERS.items()
        if uid != "vera"
    }
)


class KDCTestbedError(RuntimeError):
    """The KDC could not be set up or started (the message carries its output)."""


def _tool(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise KDCTestbedError(f"{name} not found; install it with: bash tests/testbed/system-deps.sh")


_LIVE: weakref.WeakSet[KDCTestbed] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for tb in list(_LIVE):
        tb.close()


class KDCTestbed:
    """A KDC for :data:`REALM`. ``start()`` it; ``stop()``/``start()`` simulate an outage (same
    port, same database); ``close()`` removes everything."""

    realm = REALM
    principals = PRINCIPALS
    host = LOOPBACK

    def __init__(
        self, name: str = "kdc", *, max_life: str = "1h", max_renewable_life: str = "1d"
    ) -> None:
        self.name = name
        self.max_life = max_life
        self.max_renewable_life = max_renewable_life
        self.workdir = Path(tempfile.mkdtemp(prefix=f"af-kdc-{name}-"))
        self.krb5_conf = self.workdir / "krb5.conf"
        self.kdc_conf = self.workdir / "kdc.conf"
        self.log_path = self.workdir / "kdc.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._created = False

    @property
    def kdc(self) -> str:
        """``127.0.0.1:PORT`` (the IdP's ``kerberos.kdc`` value)."""
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for the MIT tools (kinit, klist, kadmin.local) against this realm."""
        return {
            **os.environ,
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "LC_ALL": "C",
        }

    def principal(self, name: str) -> str:
        return f"{name}@{self.realm}"

    # -- lifecycle ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> KDCTestbed:
        if self.is_running():
            return self
        if not self.port:
            self.port = free_port()
        if not self._created:
            self._write_config()
            self._create()
        argv = [_tool("krb5kdc"), "-n", "-r", self.realm, "-P", str(self.workdir / "kdc.pid")]
        with (self.workdir / "krb5kdc.out").open("ab") as out:
            self._proc = subprocess.Popen(
                argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise KDCTestbedError(f"krb5kdc exited:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                _LIVE.add(self)
                return self
            time.sleep(0.05)
        self.stop()
        raise KDCTestbedError(f"krb5kdc did not listen on {self.kdc} in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("krb5kdc.out", "kdc.log"):
            with contextlib.suppress(OSError):
                parts.append((self.workdir / name).read_text(errors="replace"))
        return "\n".join(parts)[-4000:]

    def __enter__(self) -> KDCTestbed:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    # -- administration ------------------------------------------------------------------------

    def kadmin(self, query: str) -> str:
        """Run one ``kadmin.local`` query (``addprinc``, ``cpw``, ``modprinc``); its output."""
        res = subprocess.run(
            [_tool("kadmin.local"), "-r", self.realm, "-q", query],
            env=self.env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0 or "error" in res.stderr.lower():
            raise KDCTestbedError(f"kadmin.local {query.split()[0]} failed:\n{res.stderr}")
        return res.stdout

    def add_principal(self, name: str, password: str) -> None:
        self.kadmin(f'addprinc +requires_preauth -pw "{password}" "{name}"')

    def set_password(self, name: str, password: str) -> None:
        self.kadmin(f'cpw -pw "{password}" "{name}"')

    def klist(self, ccache: Path | str) -> subprocess.CompletedProcess[str]:
        """The real ``klist -f`` of a credential cache file (``-s``-like check: returncode)."""
        return subprocess.run(
            [_tool("klist"), "-f", "-c", f"FILE:{ccache}"],
            env=self.env(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    # -- internals -----------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.krb5_conf.write_text(
            f"""# generated by tests/testbed/krb5/kdc.py ({self.name})
[libdefaults]
  default_realm = {self.realm}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  rdns = false
  udp_preference_limit = 1
[realms]
  {self.realm} = {{
    kdc = {self.kdc}
  }}
"""
        )
        w = self.workdir
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
  kdc_listen = {self.kdc}
  kdc_tcp_listen = {self.kdc}
[realms]
  {self.realm} = {{
    database_name = {w / "principal"}
    key_stash_file = {w / "stash"}
    acl_file = {w / "kadm5.acl"}
    max_life = {self.max_life}
    max_renewable_life = {self.max_renewable_life}
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }}
[logging]
  kdc = FILE:{self.log_path}
"""
        )
        (w / "kadm5.acl").write_text("")

    def _create(self) -> None:
        res = subprocess.run(
            [_tool("kdb5_util"), "create", "-s", "-r", self.realm, "-P", MASTER_PASSWORD],
            env=self.env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise KDCTestbedError(f"kdb5_util create failed:\n{res.stdout}{res.stderr}")
        for name, password in self.principals.items():
            self.add_principal(name, password)
        self._created = True

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<KDCTestbed {self.name} {self.realm} {self.kdc} {state}>"
