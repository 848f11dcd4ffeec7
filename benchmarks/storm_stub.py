"""The notebook servers of the spawn storm, in a process of their own.

kwok gives every pod a loopback IP (127.100.x.y). One listener on the wildcard address and the
benchmark's port answers an HTTP request sent to any of them, so the hub's readiness check
(``wait_for_http_server``) reaches "the server" as soon as the pod runs. It runs apart from the
benchmark so its CPU time is not counted as the hub's. Connections that did not arrive on a
loopback address are closed unanswered.

    python benchmarks/storm_stub.py PORT     # prints "ready" once it listens
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        local = writer.get_extra_info("sockname")
        if local and str(local[0]).startswith("127."):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(RESPONSE)
            await writer.drain()
    writer.close()


async def serve(port: int) -> None:
    # the wildcard address is the only one that covers 127.100.0.0/16 without binding each IP
    server = await asyncio.start_server(_answer, "0.0.0.0", port, backlog=4096)  # noqa: S104
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(sys.argv[1])))
