"""pytest fixtures for the slapd test bed.

Import them, or ``pytest_plugins = ["testbed.ldap.fixtures"]`` in the root conftest:
``ldap_testbed`` (session-scoped, started; do not stop it, use the factory for that) and
``ldap_testbed_factory`` (function-scoped; starts extra instances, closes them after the test).

PYTEST_DONT_REWRITE (no assertions here; test modules may import this plugin before pytest does)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pytest

from testbed.ldap.slapd import LDAPTestbed

__all__ = ["LDAPTestbedFactory", "ldap_testbed", "ldap_testbed_factory"]


class LDAPTestbedFactory(Protocol):
    def __call__(
        self, name: str = ..., *, allow_unauthenticated_bind: bool = ..., debug_level: str = ...
    ) -> LDAPTestbed: ...


@pytest.fixture(scope="session")
def ldap_testbed() -> Iterator[LDAPTestbed]:
    """The shared, started slapd. Read-only by convention; never stop it (use the factory)."""
    with LDAPTestbed("session") as tb:
        yield tb


@pytest.fixture
def ldap_testbed_factory() -> Iterator[LDAPTestbedFactory]:
    """Start extra slapd instances (failover, crash, config variants); all closed after the test."""
    started: list[LDAPTestbed] = []

    def factory(
        name: str = "extra", *, allow_unauthenticated_bind: bool = False, debug_level: str = "0"
    ) -> LDAPTestbed:
        tb = LDAPTestbed(
            f"{name}{len(started)}",
            allow_unauthenticated_bind=allow_unauthenticated_bind,
            debug_level=debug_level,
        )
        started.append(tb)
        return tb.start()

    yield factory
    for tb in started:
        tb.close()
