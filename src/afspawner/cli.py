"""``afhub``: operator commands.

``afhub check FACILITY.yaml`` validates a facility file and prints a one-screen summary
(exit 0), or lists every error with its key path (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from afspawner.facility import Facility, Resources
from afspawner.loader import load_facility_file
from afspawner.quantity import human_cpu, human_memory
from afspawner.validation import FacilityError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="afhub", description="jupyterhub-af operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a facility file and summarise it")
    check.add_argument("facility", help="path of the facility YAML file")
    check.set_defaults(func=_check)
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args, out or sys.stdout, err or sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
