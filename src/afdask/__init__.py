"""Dask Gateway under the facility's policy: classes for a site's ``dask_gateway_config.py``.

- :class:`afdask.auth.AFHubAuthenticator`: users authenticated by the hub, with the VOs,
  groups and POSIX identity the spawner sees (``GET /hub/api/af/dask/users/<name>``);
- :class:`afdask.backends.AFLocalBackend` / :class:`afdask.backends.AFUnsafeLocalBackend`:
  dask-gateway's local backends with the facility's cluster options, the user's uid/gid and
  every scale-up reserved in the hub's quota ledger (``/hub/api/af/dask/leases/...``).

Imports: ``afcore ← afspawner ← afdask`` (never ``afauth``). See docs/dask.md.
"""
