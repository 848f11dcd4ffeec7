"""Ports for servers another process binds: below the kernel's ephemeral range, never held ones."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from afspawner import ports


def test_the_ephemeral_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert ports.ephemeral_low(f) == 40_000
    f.write_text("garbage")
    assert ports.ephemeral_low(f) == 32_768
    assert ports.ephemeral_low(tmp_path / "missing") == 32_768


def test_a_port_is_below_the_ephemeral_range_and_bindable() -> None:
    for _ in range(20):
        port = ports.pick_port("127.0.0.1")
        assert ports.LOWEST <= port < ports.ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free a moment ago, still free now


def test_held_and_bound_ports_are_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_low", lambda: ports.LOWEST + 3)  # 3 candidates
    a, b, c = ports.LOWEST, ports.LOWEST + 1, ports.LOWEST + 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", b))
        assert {ports.pick_port("127.0.0.1", held={a}) for _ in range(10)} == {c}
        with pytest.raises(RuntimeError, match="no free TCP port"):
            ports.pick_port("127.0.0.1", held={a, c}, tries=50)
