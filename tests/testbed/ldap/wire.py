"""A raw LDAPv3 simple bind (a few BER elements by hand), for what ldap3 refuses to send.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import socket

from testbed.procs import LOOPBACK

__all__ = ["simple_bind_result"]


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
    port: int, dn: str, password: bytes, *, host: str = LOOPBACK, timeout: float = 5.0
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
