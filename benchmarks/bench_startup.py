"""Start-up time of every command-line tool: ``--help`` and a bare ``import retclip``.

Each measurement is a fresh interpreter (what a user waits for), timed from spawn to exit; the
best of ``--repeat`` runs is printed, with the 2-second target of ``--help`` as a ratio.

    python benchmarks/bench_startup.py [--repeat 3]

Prints one row per tool in ``tools/`` (``--help`` seconds, target / measured), then the time of
``import retclip``, of ``import retclip.retrieval`` and of a bare interpreter for reference, and
whether any output line of ``--help`` is a warning.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


def _best_time(cmd: List[str], repeat: int) -> Tuple[float, str, int]:
    """Best wall time of ``repeat`` runs of ``cmd``, with the last run's output and exit code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    best, out, code = float("inf"), "", 0
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
        out, code = proc.stdout + proc.stderr, proc.returncode
    return best, out, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    args = parser.parse_args()
    py = sys.executable
    print(f"{'command':<44}{'seconds':>9}{'target/measured':>17}  notes")
    for tool in sorted((ROOT / "tools").glob("*.py")):
        seconds, out, code = _best_time([py, str(tool), "--help"], args.repeat)
        warnings = [line for line in out.splitlines() if "Warning" in line]
        note = "" if code == 0 else f"exit {code}"
        note += f" {len(warnings)} warning line(s): {warnings[0][:60]}" if warnings else ""
        print(f"{tool.name + ' --help':<44}{seconds:>9.2f}{TARGET_S / seconds:>16.1f}x  {note}")
    for label, code in (
        ("import retclip", "import retclip"),
        ("import retclip.retrieval", "import retclip.retrieval"),
        ("import retclip.modeling (detectron2 parts)", "import retclip.modeling"),
        ("python -c pass", "pass"),
    ):
        seconds, out, rc = _best_time([py, "-c", code], args.repeat)
        note = "" if rc == 0 else f"exit {rc}: {out.strip().splitlines()[-1][:60]}"
        print(f"{label:<44}{seconds:>9.2f}{'':>17}  {note}")


if __name__ == "__main__":
    main()
