"""The configuration keys of AFSpawner (``c.AFSpawner.<key>``), declared once with their help.

Kept apart from the JupyterHub glue in :mod:`afspawner.spawner` so that module stays small;
``docs/spawner.md`` documents every key.
"""

from __future__ import annotations

from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode
from traitlets.config import Configurable


class SpawnerTraits(Configurable):
    """Mixed into :class:`afspawner.spawner.AFSpawner`; configure it as ``c.AFSpawner``."""

    facility_file = Unicode(
        "", config=True, help="Path of the facility YAML file (VOs, GPU classes, volumes, flavors)."
    )
    backend = Unicode(
        "kubernetes",
        config=True,
        help="Backend entry point (group afspawner.backends): kubernetes, local, or a site's.",
    )
    backend_options = Dict(config=True, help="Options passed to the backend (see docs).")
    uid_sources = List(
        Unicode(),
        ["auth_state", "static", "pool"],
        config=True,
        help="Where the POSIX uid/gid come from, in order; none found → spawn refused.",
    )
    uid_map_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="YAML/JSON map user → {uid, gid, groups} (source 'static').",
    )
    uid_pool_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="JSON file recording pool accounts (source 'pool').",
    )
    uid_pool_range = List(
        default_value=[60000, 64999], config=True, help="First and last uid of the account pool."
    )
    uid_pool_gid = Integer(60000, config=True, help="gid of pool accounts.")
    uid_sources_by_idp = Dict(
        config=True,
        help="IdP name (auth_state 'idp') → uid sources for its users, instead of uid_sources.",
    )
    uid_source_rules = List(
        Dict(),
        config=True,
        help="Rules {idp, groups, claims, sources}; the first that matches the login decides "
        "the uid sources (before uid_sources_by_idp).",
    )
    idle_check_interval = Float(
        60,
        config=True,
        help="Seconds between two checks of the facility's idle and lifetime limits "
        "(0: the hub does not enforce them).",
    )
    allow_root = Bool(False, config=True, help="Allow servers to run as uid/gid 0.")
    gpu_wait = Enum(
        ["refuse", "queue"],
        "refuse",
        config=True,
        help="When no GPU of the class is free: refuse at once, or wait in a FIFO.",
    )
    gpu_queue_timeout = Float(900, config=True, help="Seconds a spawn may wait for a GPU.")
    pacing_budget = Float(
        0.02,
        min=0.0,
        config=True,
        help="Seconds of spawn and stop work the hub's event loop runs per iteration when "
        "many start at once; the rest wait their turn in order, so logins and the proxy "
        "stay responsive in a storm (afspawner.pacing; 0 turns pacing off).",
    )
    pass_bearer_token = Bool(
        True,
        config=True,
        help="Give servers the user's OIDC access token (auth_state) in a file named by "
        "$BEARER_TOKEN_FILE and rewrite it whenever the hub refreshes the token.",
    )
    pass_kerberos_ticket = Bool(
        True,
        config=True,
        help="Give servers the user's Kerberos credential cache (auth_state 'kerberos', from an "
        "LDAP IdP with a kerberos section) as $KRB5CCNAME and rewrite it when the hub renews it.",
    )
    dask_gateway = Dict(
        config=True,
        help="The site's Dask Gateway as servers reach it: {address, proxy_address, "
        "public_address}; sets DASK_GATEWAY__* so dask_gateway.Gateway() needs no arguments "
        "(docs/dask.md).",
    )
