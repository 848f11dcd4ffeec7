"""``afhub``: operator commands.

``afhub check FACILITY.yaml`` validates a facility file and prints a one-screen summary
(exit 0), or lists every error with its key path (exit 2).

``afhub render FACILITY.yaml --user U --groups a,b --flavor F [--uid N --gid N | --uid-map F]
[--image IMAGE] [--server S] [--allow-root]``
prints the exact objects the Kubernetes backend would create, or exits 2 with the refusal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import Facility, Resources
from afspawner.loader import FacilityError, load_facility_file
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal
from afspawner.uid import load_static_map, resolve_identity

EXIT_INVALID = 2


def _resources(res: Resources) -> str:
    parts = []
    if res.cpu_millis is not None:
        parts.append(f"cpu {human_cpu(res.cpu_millis)}")
    if res.memory_bytes is not None:
        parts.append(f"memory {human_memory(res.memory_bytes)}")
    if res.servers is not None:
        parts.append(f"servers {res.servers}")
    parts.extend(f"{name} {n}" for name, n in sorted(res.gpus.items()))
    return ", ".join(parts) or "unlimited"


def summary(fac: Facility) -> str:
    """One screen describing what the facility offers, per VO."""
    lines = [
        f"{fac.name}: {len(fac.vos)} VO(s), {len(fac.flavors)} flavor(s), "
        f"{len(fac.gpu_classes)} GPU class(es), {len(fac.volumes)} volume(s)"
    ]
    if fac.vos:
        lines.append("VOs:")
        for vo in fac.vos.values():
            ns = f" [namespace {vo.namespace}]" if vo.namespace else ""
            lines.append(
                f"  {vo.name}{ns}: total {_resources(vo.quota)}; per user {_resources(vo.per_user)}"
            )
            names = ", ".join(f.name for f in fac.flavors_for_vo(vo.name)) or "none"
            lines.append(f"    flavors: {names}")
    open_flavors = [f.name for f in fac.flavors if not f.vos]
    if open_flavors:
        lines.append(f"Flavors open to every user: {', '.join(open_flavors)}")
    if fac.gpu_classes:
        lines.append("GPU classes:")
        for g in fac.gpu_classes.values():
            sel = ", ".join(f"{k}={v}" for k, v in g.selector.items())
            gate = f"; groups {', '.join(g.groups)}" if g.groups else ""
            cap = f"; max {g.max_per_user}/user" if g.max_per_user else ""
            lines.append(
                f"  {g.name}: {g.resource} ({g.sharing}){' on ' + sel if sel else ''}{cap}{gate}"
            )
    if fac.volumes:
        lines.append("Volumes:")
        for v in fac.volumes.values():
            ro = " (read-only)" if v.read_only else ""
            lines.append(f"  {v.name}: {v.type} at {v.mount}{ro}")
    return "\n".join(lines)


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        fac = load_facility_file(args.facility)
    except FacilityError as exc:
        print(f"{exc.source}: {len(exc.issues)} error(s)", file=err)
        for issue in exc.issues:
            print(f"  {issue}", file=err)
        return EXIT_INVALID
    print(f"{args.facility}: OK", file=out)
    print(summary(fac), file=out)
    return 0


def _render(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import yaml

    from afspawner.manifests import PodSettings, make_objects, server_namespace
    from afspawner.pipeline import plan_spawn, user_context
    from afspawner.policy import PolicySettings

    try:
        fac = load_facility_file(args.facility)
    except FacilityError as exc:
        print(str(exc), file=err)
        return EXIT_INVALID
    user = user_context(fac, args.user, _names(args.groups), _names(args.vos))
    options: dict[str, object] = {"flavor": args.flavor}
    if args.vo:
        options["vo"] = args.vo
    if args.gpus is not None:
        options["gpus"] = args.gpus
    if args.image is not None:
        options["image"] = args.image
    try:
        identity = _identity(args)
        settings = PolicySettings(allow_root=args.allow_root)
        plan = plan_spawn(fac, settings, user, identity, options, args.server)
    except Refusal as exc:
        print(f"refused ({exc.status}): {exc.message}", file=err)
        return EXIT_INVALID
    except (OSError, ValueError) as exc:  # an unreadable or invalid --uid-map
        print(f"cannot read --uid-map: {exc}", file=err)
        return EXIT_INVALID
    pod_settings = PodSettings(
        namespace=server_namespace(plan, args.namespace),
        hub_env={"JUPYTERHUB_API_TOKEN": "<set by the hub>"},
    )
    objs = make_objects(plan, pod_settings)
    docs = [*objs.claims, objs.secret, objs.pod]
    out.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


def _identity(args: argparse.Namespace) -> UserIdentity:
    """``--uid/--gid``, else the static map (``--uid-map``), else refused like the spawner."""
    if (args.uid is None) != (args.gid is None):
        raise Refusal("give both --uid and --gid, or neither", 400)
    if args.uid is not None:
        return UserIdentity(args.user, args.uid, args.gid)
    static = load_static_map(Path(args.uid_map)) if args.uid_map else {}
    sources = ["static"] if args.uid_map else []
    return resolve_identity(args.user, sources, None, static, None)


def _names(csv: str) -> list[str]:
    return [n for n in csv.split(",") if n]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afhub", description="jupyterhub-af operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a facility file and summarise it")
    check.add_argument("facility", help="path of the facility YAML file")
    check.set_defaults(func=_check)
    render = sub.add_parser("render", help="print the manifests the spawner would create")
    render.add_argument("facility", help="path of the facility YAML file")
    render.add_argument("--user", required=True, help="hub user name")
    render.add_argument("--groups", default="", help="comma-separated hub groups")
    render.add_argument(
        "--vos", default="", help="comma-separated VOs (else: groups named like a VO)"
    )
    render.add_argument("--flavor", required=True)
    render.add_argument("--vo", help="VO to charge when the user has several")
    render.add_argument("--gpus", type=int, help="GPU count (GPU flavors)")
    render.add_argument("--image", help="image, as the form's picker or option 'image' sends it")
    render.add_argument("--uid", type=int, help="POSIX uid of the user (with --gid)")
    render.add_argument("--gid", type=int, help="POSIX gid of the user (with --uid)")
    render.add_argument(
        "--uid-map", help="as c.AFSpawner.uid_map_file: take uid/gid/groups from this map"
    )
    render.add_argument("--server", default="", help="named server")
    render.add_argument("--namespace", default="default", help="namespace of VO-less servers")
    render.add_argument(
        "--allow-root", action="store_true", help="as c.AFSpawner.allow_root (uid/gid 0 allowed)"
    )
    render.set_defaults(func=_render)
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args, out or sys.stdout, err or sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
