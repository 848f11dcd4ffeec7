"""A TCP port for a server that another process binds a moment later.

"Free now" is a race: the port is bound later, by the server's own process. Binding at port 0
would pick from the kernel's ephemeral range, the very range every outgoing connection's local
end is drawn from (the hub's, the proxy's, a notebook's ...); one of those can take the port
before the server binds it, and the server dies with EADDRINUSE. So a port is drawn at random
from *below* that range, where the kernel never allocates on its own, checked by binding it,
and never one the caller says it still holds.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Container
from pathlib import Path

LOWEST = 10_000  # ports below this are left to well-known services
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_low(range_file: Path = _RANGE_FILE) -> int:
    """The first port of the kernel's range for outgoing connections' local ends (Linux)."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; other systems' ranges start higher still


def pick_port(ip: str, held: Container[int] = frozenset(), tries: int = 200) -> int:
    """A port on ``ip`` that was free a moment ago, below the ephemeral range, not in ``held``.

    Raises ``RuntimeError`` when ``tries`` random candidates were all taken or held."""
    high = ephemeral_low() - 1
    if high < LOWEST:  # an unusual range that starts low: any port above LOWEST then
        high = 65_535
    rng = random.SystemRandom()  # independent of anybody's seeded `random`
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(tries):
        port = rng.randint(LOWEST, high)
        if port in held:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port found in {LOWEST}-{high} on {ip} after {tries} tries")
