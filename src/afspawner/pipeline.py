"""The one spawn pipeline, shared by ``AFSpawner.start`` and ``afhub render``.

Pure: who the user is (name, hub groups, VOs from the login), their POSIX identity and the
raw ``user_options`` → a :class:`~afspawner.plan.LaunchPlan`, or :class:`~afspawner.policy.Refusal`.
I/O stays with the callers: the spawner resolves the identity (pool file, in a thread) and
then reserves quota and GPUs; ``afhub render`` takes the identity from its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from afspawner.facility import Facility
from afspawner.plan import LaunchPlan, UserIdentity
from afspawner.policy import PolicySettings, UserContext, parse_options, resolve


def user_context(
    fac: Facility,
    name: str,
    groups: Iterable[str],
    login_vos: Iterable[object] = (),
    admin: bool = False,
) -> UserContext:
    """Who is spawning; VOs: the login's (auth_state ``vos``), then hub groups named like a VO."""
    group_set = frozenset(groups)
    vos = [v for v in login_vos if isinstance(v, str) and v]
    vos += [g for g in sorted(group_set) if g in fac.vos and g not in vos]
    return UserContext(name, group_set, tuple(dict.fromkeys(vos)), admin)


def plan_spawn(
    fac: Facility,
    settings: PolicySettings,
    user: UserContext,
    identity: UserIdentity,
    raw_options: Mapping[str, object] | None,
    server_name: str = "",
) -> LaunchPlan:
    """Validate the untrusted options and decide exactly what to launch (or raise Refusal)."""
    return resolve(fac, user, parse_options(raw_options), identity, server_name, settings)
