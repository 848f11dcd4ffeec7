"""pytest fixtures for the KDC test bed.

``krb5_testbed`` (session-scoped, started; do not stop it) and ``krb5_testbed_factory``
(function-scoped: extra KDCs to stop, restart or reconfigure; closed after the test).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testbed.krb5.kdc import KDCTestbed

__all__ = ["KDCTestbedFactory", "krb5_testbed", "krb5_testbed_factory"]

KDCTestbedFactory = Callable[..., KDCTestbed]


@pytest.fixture(scope="session")
def krb5_testbed() -> Iterator[KDCTestbed]:
    """The shared, started KDC. Read-only by convention; never stop it (use the factory)."""
    with KDCTestbed("session") as tb:
        yield tb


@pytest.fixture
def krb5_testbed_factory() -> Iterator[KDCTestbedFactory]:
    """Start extra KDCs (``max_life``, ``max_renewable_life`` keywords); closed after the test."""
    started: list[KDCTestbed] = []

    def factory(name: str = "extra", **kw: str) -> KDCTestbed:
        tb = KDCTestbed(f"{name}{len(started)}", **kw)
        started.append(tb)
        return tb.start()

    yield factory
    for tb in started:
        tb.close()
