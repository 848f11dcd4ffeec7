"""One ``slapd`` process serving the test directory: its config (ACLs), ``slapadd``, lifecycle.

``slapd`` runs in the foreground (``-d``), is tied to this process (SIGTERM if it dies, on Linux)
and is stopped by :meth:`LDAPTestbed.stop`.

ACLs: ``userPassword`` is usable for binding only (nobody reads it; the rootdn bypasses ACLs);
the service account and authenticated users read everything else; anonymous sessions read the root
DSE and the schema only. Unauthenticated binds (a DN with an empty password) are refused, as
slapd does by default, unless ``allow_unauthenticated_bind=True`` (``allow bind_anon_dn``), which
makes the server behave like directories that report such a bind as a success.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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
from pathlib import Path
from types import TracebackType

from testbed.ldap.directory import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    GROUPS,
    GROUPS_DN,
    PEOPLE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SERVICES_DN,
    USERS,
    ssha,
    tree_ldif,
)
from testbed.ldap.pki import write_server_pki
from testbed.ldap.wire import simple_bind_result
from testbed.procs import LOOPBACK, free_port

__all__ = ["LDAPTestbed", "LDAPTestbedError"]

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


class LDAPTestbedError(RuntimeError):
    """slapd could not be configured, loaded or started (the message carries its output)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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

    host = LOOPBACK
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
        self.ca_cert_path, self.cert_path, self.key_path = write_server_pki(self.workdir)
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
                self.port, self.ldaps_port = free_port(), free_port()
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
            f"""# generated by tests/testbed/ldap/slapd.py ({self.name})
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
        ldif.write_text(tree_ldif(), encoding="utf-8")
        slapadd = self._slapd.with_name("slapadd")
        cmd = [str(slapadd) if slapadd.exists() else "slapadd", "-q", "-f", str(self.config_path),
               "-l", str(ldif)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise LDAPTestbedError(f"slapadd failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        self._loaded = True

    def _spawn(self, timeout: float) -> bool:
        urls = f"ldap://{LOOPBACK}:{self.port}/ ldaps://{LOOPBACK}:{self.ldaps_port}/"
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
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False
