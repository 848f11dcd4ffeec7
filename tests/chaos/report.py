"""The chaos suite's figures: crashes survived, orphans found, recovery times, status codes.

Each scenario records into its own entry; at the end of the session the entries are merged
into ``benchmarks/results/chaos.json`` (scenarios not run this time keep their last figures)
and printed. Figures are reported, never asserted on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("AF_CHAOS_REPORT", ROOT / "benchmarks" / "results" / "chaos.json"))


class ChaosReport:
    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[dict[str, Any]]:
        """Figures of one scenario; its outcome (passed / the failure) is recorded too."""
        figures: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        self.scenarios[name] = figures
        try:
            yield figures
        except BaseException as exc:
            figures["outcome"] = f"failed: {type(exc).__name__}: {exc}"[:4000]
            raise
        else:
            figures["outcome"] = "passed"
        finally:
            print(f"\nchaos figures, {name}:\n{json.dumps(figures, indent=1, default=str)}")

    def write(self) -> Path | None:
        if not self.scenarios:
            return None
        previous: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(RESULTS.read_text()).get("scenarios", {})
        doc = {
            "benchmark": "chaos",
            "about": "tests/chaos (docs/testbed.md): figures of the last run of each scenario",
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "scenarios": {**previous, **self.scenarios},
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
        return RESULTS


REPORT = ChaosReport()
