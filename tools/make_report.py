#!/usr/bin/env python
"""Markdown tables in the paper's layout (Tables 1-4) and PQ heatmaps from results.

    # Tables 1-3: one OUTPUT_DIR per row (<results>/<row>/metrics_eval.json)
    python tools/make_report.py table --expected configs/expected/table1.json --results output/table1
    # Table 4 / any sweep: sweep.jsonl -> markdown + pq_alpha_gamma.png, pq_beta_gamma.png
    python tools/make_report.py sweep --sweep output/table4/sweep.jsonl \\
        --expected configs/expected/table4.json --out-dir output/table4/report

The markdown goes to --out (default: stdout; for "sweep" also <out-dir>/table.md).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)


def _expected(path: str):
    """The expected-metrics file, its mistakes (bad JSON, a missing key) named."""
    from retclip.sweep.expected import load_expected

    try:
        return load_expected(path)
    except KeyError as e:
        raise UserError(e.args[0] if e.args else str(e)) from e
    except ValueError as e:  # json.JSONDecodeError
        raise UserError(f"{path} is not valid JSON: {e}") from e


def _check_results(spec, results: str) -> None:
    """A table of dashes is no table: the results folder must exist and hold some row's metrics."""
    if not os.path.isdir(results):
        raise UserError(f"--results {results}: no such folder")
    names = [row["name"] for row in spec["rows"]]
    missing = [n for n in names if not os.path.isfile(os.path.join(results, n, "metrics_eval.json"))]
    if len(missing) == len(names):
        raise UserError(
            f"--results {results}: no <row>/metrics_eval.json for any row (rows: {', '.join(names)})"
        )
    for name in missing:
        print(f"make_report.py: warning: no {os.path.join(results, name, 'metrics_eval.json')}; "
              "its cells are '-'", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="kind", required=True)
    t = sub.add_parser("table", help="Tables 1-3 from metrics_eval.json files")
    t.add_argument(
        "--expected",
        required=True,
        help="configs/expected/table<N>.json (rows, labels, paper numbers)",
    )
    t.add_argument(
        "--results", required=True, help="folder with one <row>/metrics_eval.json per row"
    )
    t.add_argument("--out", help="markdown file (default: stdout)")
    t.add_argument("--note", default="", help="text after the title (e.g. 'synthetic data')")
    s = sub.add_parser("sweep", help="Table 4 layout and PQ heatmaps from a sweep")
    s.add_argument("--sweep", required=True, help="sweep.jsonl (or the sweep output folder)")
    s.add_argument("--expected", help="configs/expected/table4.json, for the paper's PQ column")
    s.add_argument("--out-dir", required=True, help="where table.md and the PNG heatmaps go")
    s.add_argument("--note", default="", help="text after the title (e.g. 'synthetic data')")
    s.add_argument("--mode", help="only rows of this ensemble mode (default: all)")
    s.add_argument("--dpi", type=int, default=80)
    args = p.parse_args(argv)
    from retclip.sweep.expected import load_expected
    from retclip.sweep.report import pq_heatmaps, sweep_markdown, table_markdown
    from retclip.sweep.runner import read_rows
    from retclip.utils.fileio import atomic_write_text

    if args.kind == "table":
        spec = _expected(args.expected)
        if "rows" not in spec:
            raise UserError(f"--expected {args.expected} describes a sweep (points), not a table")
        _check_results(spec, args.results)
        text = table_markdown(spec, args.results, args.note)
        if args.out:
            atomic_write_text(args.out, text)
        print(text)
        return 0
    path = os.path.join(args.sweep, "sweep.jsonl") if os.path.isdir(args.sweep) else args.sweep
    if not os.path.isfile(path):
        raise UserError(f"--sweep {args.sweep}: no such file ({path})")
    rows = read_rows(path)
    if args.mode:
        rows = [r for r in rows if r["mode"] == args.mode]
    if not rows:
        raise UserError(f"no sweep rows in {path}" + (f" with mode {args.mode!r}" if args.mode else ""))
    spec = _expected(args.expected) if args.expected else None
    text = sweep_markdown(rows, spec, args.note)
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write_text(os.path.join(args.out_dir, "table.md"), text)
    title = args.note
    for png in pq_heatmaps(rows, args.out_dir, title=title, dpi=args.dpi):
        print(f"wrote {png}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
