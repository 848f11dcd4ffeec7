"""Real OIDC issuers for tests: node ``oidc-provider`` as CERN-, IAM- and CILogon-like IdPs.

This directory is both the node project (``server.mjs``, ``package.json``) and the Python side:

- :mod:`testbed.oidc.model`: issuer names, default client, users/clients/issuer records
- :mod:`testbed.oidc.claims`: the default accounts and their claims, per issuer profile
- :mod:`testbed.oidc.provider`: ``OIDCTestbed`` writes a JSON config, starts
  ``node tests/testbed/oidc/server.mjs`` on a free loopback port and talks to its
  ``/__control`` API (key rotation, clients, users, token lifetimes)
- :mod:`testbed.oidc.login`: ``drive_login`` walks an authorization URL through the provider's
  real login page like a browser
- :mod:`testbed.oidc.fixtures`: ``oidc_testbed``, a session-scoped pytest fixture

Needs ``node`` and ``npm ci --prefix tests/testbed/oidc --no-audit --no-fund``.
Run ``python -m testbed.oidc`` (from ``tests/``) to start the issuers by hand for a browser.
"""
