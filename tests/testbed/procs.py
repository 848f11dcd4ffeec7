"""Small helpers to run real peer processes (servers) for tests: free ports, logs, teardown."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"  # every test peer listens on this address only


_HANDED_OUT: set[int] = set()
_LOWEST = 10_000  # ports below this are left to well-known services


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ends."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that nothing takes by chance.

    The port is bound later by another process, so "free now" is a race. Binding at port 0
    would pick from the kernel's ephemeral range, the very range every outgoing connection's
    local end is drawn from (the hub's, the apiserver's, etcd's ...): one of those can take the
    port before the server binds it (EADDRINUSE). So the port is drawn at random from *below*
    that range, where the kernel never allocates on its own, is checked by binding it, and is
    never handed out twice by this process.
    """
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()  # independent of any test's seeded `random`
    for _ in range(200):
        port = rng.randint(_LOWEST, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port found in {_LOWEST}-{high} on {LOOPBACK}")


class PeerProcess:
    """A server process whose output goes to a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until true; fail with the process log if it dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} while waiting for "
                    f"{what}; last log lines:\n{self.tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # noqa: S110 - not up yet; retried until the deadline
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name}: {what} not reached in {timeout:.0f}s; log:\n{self.tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
