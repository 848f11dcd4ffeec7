"""Reading MIT FILE credential caches (pure): the ticket-granting ticket and its times.

Format: https://web.mit.edu/kerberos/krb5-latest/doc/formats/ccache_file_format.html
(versions 3 and 4, big-endian; configuration entries such as ``X-CACHECONF:`` are skipped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    """The TGT of a credential cache: whose, and its times (Unix seconds)."""

    principal: str
    starts_at: float
    expires_at: float
    renew_until: float | None  # None: not renewable

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.starts_at


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated credential cache")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def octets(self) -> bytes:
        return self.take(self.u32())

    def principal(self) -> tuple[str, tuple[str, ...]]:
        self.u32()  # name type
        count = self.u32()
        realm = self.octets().decode("utf-8", "replace")
        return realm, tuple(self.octets().decode("utf-8", "replace") for _ in range(count))


def parse_ccache(data: bytes) -> Ticket:
    """The TGT in a FILE credential cache (format 3 or 4, as MIT writes them); ValueError if
    there is none or the data is not a cache."""
    r = _Reader(data)
    version = r.u16()
    if version not in (0x0503, 0x0504):
        raise ValueError("not a version 3/4 credential cache")
    if version == 0x0504:
        r.take(r.u16())  # header tags (KDC time offset)
    realm, names = r.principal()
    client = "/".join(names) + "@" + realm
    while r.pos < len(data):
        r.principal()  # client
        srealm, snames = r.principal()
        r.u16()  # key type
        r.octets()
        _auth, start, end, renew = (r.u32() for _ in range(4))
        r.u8()  # is_skey
        flags = r.u32()
        for _ in range(r.u32()):  # addresses
            r.u16()
            r.octets()
        for _ in range(r.u32()):  # authdata
            r.u16()
            r.octets()
        r.octets()  # ticket
        r.octets()  # second ticket
        if snames == ("krbtgt", realm) and srealm == realm:
            renewable = bool(flags & 0x00800000) and renew >= end  # == end: used up
            return Ticket(
                client, float(start or _auth), float(end), float(renew) if renewable else None
            )
    raise ValueError(f"no ticket-granting ticket for {client} in the credential cache")
