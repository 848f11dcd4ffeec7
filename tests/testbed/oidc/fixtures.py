"""The ``oidc_testbed`` pytest fixture: one node process per test session."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from testbed.oidc.provider import OIDCTestbed

__all__ = ["oidc_testbed"]

_shared_lock = threading.Lock()
_shared: OIDCTestbed | None = None
_shared_users = 0


@contextlib.contextmanager
def _shared_testbed() -> Iterator[OIDCTestbed]:
    """One process per test session, even if the fixture is imported into several modules."""
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            _shared = OIDCTestbed().start()
        _shared_users += 1
        testbed = _shared
    try:
        yield testbed
    finally:
        with _shared_lock:
            _shared_users -= 1
            if _shared_users == 0:
                _shared = None
                testbed.stop()


@pytest.fixture(scope="session")
def oidc_testbed() -> Iterator[OIDCTestbed]:
    """The running CERN/IAM/CILogon issuers, default clients allowing ``http://127.0.0.1/cb``.

    Shared by the whole session: tests add redirect URIs/clients/users rather than replace
    them, and restore TTLs they shorten.
    """
    with _shared_testbed() as testbed:
        yield testbed
