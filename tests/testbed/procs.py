"""Small helpers to run real peer processes (servers) for tests: free ports, logs, teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from afspawner.ports import pick_port

LOOPBACK = "127.0.0.1"  # every test peer listens on this address only


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing takes by chance before a peer binds it.

    ``afspawner.ports.pick_port`` (below the kernel's ephemeral range, checked by binding),
    never handed out twice by this process: peers start and stop within one test session.
    """
    port = pick_port(LOOPBACK, held=_HANDED_OUT)
    _HANDED_OUT.add(port)
    return port


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
