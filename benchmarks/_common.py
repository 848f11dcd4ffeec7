"""Shared helpers of the benchmarks: machine facts, percentiles, result files.

Every benchmark writes ``benchmarks/results/<name>.json`` (all figures, the command line, the
machine and the date) and ``benchmarks/results/<name>.md`` (a short human summary).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: Distributions whose versions are recorded with every result.
PACKAGES = (
    "jupyterhub-af",
    "jupyterhub",
    "jupyterhub-kubespawner",
    "jupyterhub-ldapauthenticator",
    "oauthenticator",
    "kubernetes_asyncio",
    "ldap3",
    "tornado",
    "pyjwt",
)


def use_test_bed() -> None:
    """Make ``tests/`` importable (``testbed.ldap``, ``testbed.oidc``) and ``src/`` too."""
    for sub in ("tests", "src"):
        path = str(ROOT / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Facts that make figures comparable (or explain why they are not)."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in PACKAGES},
    }


def header(name: str) -> dict[str, Any]:
    exe = Path(sys.executable)
    if exe.is_relative_to(ROOT):  # .venv/bin/python rather than /work/.../python
        exe = exe.relative_to(ROOT)
    return {
        "benchmark": name,
        "command": " ".join(shlex.quote(str(a)) for a in [exe, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table (also readable as plain text on a terminal)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write(name: str, data: dict[str, Any], summary: str) -> tuple[Path, Path]:
    """Write the JSON figures and the Markdown summary; return both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    m = data["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    md_path.write_text(
        f"# {name}\n\n{summary.strip()}\n\n"
        f"- command: `{data['command']}`\n"
        f"- date (UTC): {data['date']}\n"
        f"- machine: {m['nproc']} usable cores (shared), load {m['loadavg_at_start']}, "
        f"Python {m['python']} on {m['platform']}\n"
        f"- packages: {pkgs}\n"
        f"- all figures: `{json_path.name}`\n"
    )
    return json_path, md_path
