"""Compare reproduction results with the expected numbers of ``configs/expected/table*.json``.

Tables 1-3: ``<results_root>/<row name>/metrics_eval.json`` (what ``tools/train_net.py
--eval-only`` writes into OUTPUT_DIR) against each row's ``expected`` +- ``tolerance``. Table 4: a
sweep's ``sweep.jsonl`` against the paper's PQ at each point, and the best point's PQ. The
reproduction scripts run this at the end::

    python -m retclip.sweep.expected configs/expected/table1.json output/table1

Exit status 0 when every present row is within tolerance, 1 when one is not, 2 when nothing was
found to check. Rows without results are reported as missing (a partial reproduction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = [
    "Check",
    "load_expected",
    "metric_value",
    "read_results",
    "check_table",
    "check_sweep",
    "format_checks",
    "main",
]


@dataclass
class Check:
    """One metric of one row: ``got`` (None when missing) against ``expected`` +- ``tolerance``."""

    row: str
    metric: str
    got: Optional[float]
    expected: float
    tolerance: float

    @property
    def status(self) -> str:
        if self.got is None or math.isnan(self.got):
            return "missing"
        return "ok" if abs(self.got - self.expected) <= self.tolerance + 1e-9 else "FAIL"


def load_expected(path: str) -> Dict[str, Any]:
    """An expected-metrics file; checks the keys the checker relies on."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected-metrics file not found: {path}")
    with open(path) as f:
        spec = json.load(f)
    if "rows" in spec:
        for i, row in enumerate(spec["rows"]):
            for key in ("name", "expected", "tolerance"):
                if key not in row:
                    raise KeyError(f"{path}: rows[{i}] has no {key!r}")
            missing = set(row["expected"]) - set(row["tolerance"])
            if missing:
                raise KeyError(
                    f"{path}: row {row['name']!r} has no tolerance for {sorted(missing)}"
                )
            unknown = set(row["expected"]) - set(spec["metrics"])
            if unknown:
                raise KeyError(
                    f"{path}: row {row['name']!r} expects unknown metrics {sorted(unknown)}"
                )
    elif "points" not in spec:
        raise KeyError(
            f"{path}: an expected-metrics file has 'rows' (tables 1-3) or 'points' (table 4)"
        )
    return spec


def metric_value(results: Mapping[str, Any], task: str, key: str) -> Optional[float]:
    if task not in results:  # results of several datasets: the first that has the task
        results = next((r for r in results.values() if isinstance(r, Mapping) and task in r), {})
    value = results.get(task, {}).get(key)
    return None if value is None else float(value)


def read_results(results_root: str, row_name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(results_root, row_name, "metrics_eval.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_table(spec: Mapping[str, Any], results_root: str) -> List[Check]:
    """Checks of a table (1-3) spec against ``results_root/<row>/metrics_eval.json``."""
    checks = []
    for row in spec["rows"]:
        results = read_results(results_root, row["name"]) or {}
        for metric, expected in row["expected"].items():
            task, key = spec["metrics"][metric]
            checks.append(
                Check(
                    row["name"],
                    metric,
                    metric_value(results, task, key),
                    expected,
                    row["tolerance"][metric],
                )
            )
    return checks


def check_sweep(spec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> List[Check]:
    """Table 4: the paper's PQ at each point (``tolerance.PQ``) and the best PQ of the sweep
    against the paper's best (``best_tolerance``). Rows of another ensemble mode are ignored."""
    mode = spec.get("mode", "arithmetic")
    by_point = {(r["alpha"], r["beta"], r["gamma"]): r for r in rows if r.get("mode", mode) == mode}
    checks = []
    for p in spec["points"]:
        key = (round(p["alpha"], 6), round(p["beta"], 6), round(p["gamma"], 6))
        row = by_point.get(key)
        got = None if row is None else float(row["PQ"])
        checks.append(
            Check(
                f"a={key[0]} b={key[1]} g={key[2]}",
                "PQ",
                got,
                p["paper_PQ"],
                spec["tolerance"]["PQ"],
            )
        )
    found = [c.got for c in checks if c.got is not None and not math.isnan(c.got)]
    best_paper = max(p["paper_PQ"] for p in spec["points"])
    checks.append(
        Check("best point", "PQ", max(found) if found else None, best_paper, spec["best_tolerance"])
    )
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    lines = [f"{'row':<36}{'metric':<8}{'got':>8}{'expected':>10}{'tol':>6}  status"]
    for c in checks:
        got = "-" if c.got is None or math.isnan(c.got) else f"{c.got:.2f}"
        lines.append(
            f"{c.row:<36}{c.metric:<8}{got:>8}{c.expected:>10.2f}{c.tolerance:>6.1f}  {c.status}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check reproduction results against expected metrics."
    )
    parser.add_argument("expected", help="configs/expected/table<N>.json")
    parser.add_argument(
        "results", help="results root (tables 1-3) or sweep.jsonl / its folder (table 4)"
    )
    args = parser.parse_args(argv)
    spec = load_expected(args.expected)
    if "rows" in spec:
        checks = check_table(spec, args.results)
    else:
        path = (
            os.path.join(args.results, "sweep.jsonl")
            if os.path.isdir(args.results)
            else args.results
        )
        from .runner import read_rows

        checks = check_sweep(spec, read_rows(path))
    print(spec.get("title", args.expected))
    print(format_checks(checks))
    statuses = [c.status for c in checks]
    if spec.get("tolerance_note"):
        print(f"tolerances: {spec['tolerance_note']}")
    if all(s == "missing" for s in statuses):
        print("nothing to check: no results found")
        return 2
    if "FAIL" in statuses:
        print(f"{statuses.count('FAIL')} metric(s) outside tolerance")
        return 1
    if "missing" in statuses:
        print(
            f"{statuses.count('missing')} metric(s) missing (partial reproduction); the rest within tolerance"
        )
    else:
        print("all metrics within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
