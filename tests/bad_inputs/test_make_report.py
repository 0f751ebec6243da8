"""tools/make_report.py with bad inputs: results folders that hold nothing (no table of dashes),
expected-metrics files that are missing or malformed, torn or empty sweep files."""
import json

import pytest

from .harness import Case, case_problems
from .in_process import run_in_process
from .inputs import TABLE1, sweep_rows


def _table(id, names, results="{tmp}/results", expected=TABLE1, prepare=None):
    return Case(id=id, tool="make_report.py",
                args=["table", "--expected", expected, "--results", results, "--out", "{tmp}/report.md"],
                names=names, prepare=prepare, protect=["{tmp}/in"], absent=["{tmp}/report.md"])


def _sweep(id, names, prepare, sweep="{tmp}/in/sweep.jsonl"):
    return Case(id=id, tool="make_report.py", args=["sweep", "--sweep", sweep, "--out-dir", "{tmp}/report"],
                names=names, prepare=prepare, protect=["{tmp}/in"], absent=["{tmp}/report"])


def _empty_results(tmp):
    (tmp / "results" / "some_other_run").mkdir(parents=True)


def _expected(text):
    def prepare(tmp):
        (tmp / "in").mkdir()
        (tmp / "in" / "expected.json").write_text(text)
    return prepare


CASES = [
    _table("table-results-missing", ["--results {tmp}/nothere", "no such folder"], results="{tmp}/nothere"),
    _table("table-results-without-metrics", ["{tmp}/results", "metrics_eval.json", "fcclip_r50x64_ade20k"],
           prepare=_empty_results),
    _table("table-expected-missing", ["{tmp}/none.json"], expected="{tmp}/none.json"),
    _table("table-expected-not-json", ["{tmp}/in/expected.json", "not valid JSON"], expected="{tmp}/in/expected.json",
           prepare=_expected("{rows: [")),
    _table("table-expected-row-without-key", ["{tmp}/in/expected.json", "rows[0]", "'tolerance'"],
           expected="{tmp}/in/expected.json",
           prepare=_expected(json.dumps({"metrics": {}, "rows": [{"name": "a", "expected": {}}]}))),
    _sweep("sweep-torn-last-line", ["{tmp}/in/sweep.jsonl, line 2", "torn"],
           prepare=lambda t: sweep_rows(t / "in" / "sweep.jsonl")),
    _sweep("sweep-file-missing", ["{tmp}/in/none.jsonl"], prepare=lambda t: (t / "in").mkdir(),
           sweep="{tmp}/in/none.jsonl"),
    _sweep("sweep-file-empty", ["no sweep rows", "{tmp}/in/sweep.jsonl"],
           prepare=lambda t: ((t / "in").mkdir(), (t / "in" / "sweep.jsonl").write_text(""))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_make_report_mistake(case, tmp_path):
    _, problems = case_problems(case, tmp_path, runner=run_in_process)
    assert not problems, "\n".join(problems)
