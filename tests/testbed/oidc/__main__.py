"""Manual use: ``python -m testbed.oidc`` (from ``tests/``) runs the issuers for a browser."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence

from testbed.oidc.model import DEFAULT_REDIRECT_URI
from testbed.oidc.provider import OIDCTestbed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the OIDC test-bed issuers in the foreground.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--redirect-uri", action="append", default=None, help="allowed redirect URI (repeatable)"
    )
    args = parser.parse_args(argv)
    testbed = OIDCTestbed(redirect_uris=args.redirect_uri or [DEFAULT_REDIRECT_URI], port=args.port)
    with testbed:
        for info in testbed.issuers.values():
            print(f"{info.name}: {info.issuer}")
            print(f"  discovery: {info.discovery_url}")
            print(f"  client: {info.client_id} / {info.client_secret}  scope: {info.scope}")
            print(
                f"  users: {', '.join(f'{u.username}/{u.password}' for u in info.users.values())}"
            )
        print(f"started in {testbed.startup_seconds:.2f}s; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while testbed.running:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
