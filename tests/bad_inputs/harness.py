"""Table-driven bad-input cases for the command-line tools.

Each :class:`Case` runs one tool in a subprocess and asserts three things: the exit code, that the
message names the offending file, key or class, and that nothing already on disk changed
(``protect`` folders are digested before and after). Test modules in this folder list cases per
tool and assert that :func:`case_problems` finds none.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"


@dataclass
class Case:
    """One bad input.

    Attributes:
        id: short name shown by pytest.
        tool: file name under ``tools/`` ("demo.py").
        args: command-line arguments; ``{tmp}`` is replaced by the test's temporary folder.
        names: substrings the combined output must contain (the file, key or class at fault).
        code: expected exit code (2 for a user mistake).
        protect: folders (``{tmp}`` allowed) whose contents must be byte-identical afterwards.
        absent: paths that must not exist afterwards (a payload's trace, a half-written output).
        prepare: optional callable(tmp: Path) run first to lay out the inputs.
        env: extra environment variables.
    """

    id: str
    tool: str
    args: Sequence[str]
    names: Sequence[str]
    code: int = 2
    protect: Sequence[str] = ()
    absent: Sequence[str] = ()
    prepare: Optional[Callable[[Path], None]] = None
    env: Dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0


def tree_digest(folder: Path) -> str:
    """sha256 over relative names, modes and bytes of every file below ``folder``."""
    h = hashlib.sha256()
    if not folder.exists():
        return "absent"
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            h.update(str(p.relative_to(folder)).encode())
            h.update(oct(p.stat().st_mode).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_tool(tool: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
             timeout: float = 600.0) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("TRANSFORMERS_OFFLINE", "1")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(TOOLS / tool), *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _fill(value: str, tmp: Path) -> str:
    return value.replace("{tmp}", str(tmp))


def case_problems(case: Case, tmp: Path,
                  runner: Callable[..., subprocess.CompletedProcess] = run_tool,
                  ) -> Tuple[subprocess.CompletedProcess, List[str]]:
    """Run ``case`` in ``tmp``; every way it misses its contract (exit code, named culprit, no
    traceback for a user mistake, protected folders unchanged, files that must not appear), all
    of them, not only the first. A test asserts the list is empty.

    ``runner(tool, args, env, timeout)`` runs the tool: a subprocess by default; cases that stop
    before any model is built may pass ``in_process.run_in_process`` (same checks, no start-up).
    """
    if case.prepare is not None:
        case.prepare(tmp)
    protect: List[Path] = [Path(_fill(p, tmp)) for p in case.protect]
    before = {p: tree_digest(p) for p in protect}
    proc = runner(case.tool, [_fill(a, tmp) for a in case.args],
                  {k: _fill(v, tmp) for k, v in case.env.items()}, case.timeout)
    out = proc.stdout + proc.stderr
    problems = []
    if proc.returncode != case.code:
        problems.append(f"exit {proc.returncode}, expected {case.code}")
    problems += [f"output does not name {_fill(n, tmp)!r}" for n in case.names if _fill(n, tmp) not in out]
    if case.code == 2 and "Traceback" in out:
        problems.append("a user mistake printed a traceback")
    problems += [f"{p} changed on disk" for p in protect if tree_digest(p) != before[p]]
    problems += [f"{_fill(a, tmp)} exists afterwards" for a in case.absent if Path(_fill(a, tmp)).exists()]
    if problems:
        problems = [f"{case.id}: {p}" for p in problems] + [f"output tail:\n{out[-4000:]}"]
    return proc, problems


def check_case(case: Case, tmp: Path, runner: Callable[..., subprocess.CompletedProcess] = run_tool
               ) -> subprocess.CompletedProcess:
    """:func:`case_problems`, asserting there are none (for tests that go on to use ``proc``)."""
    proc, problems = case_problems(case, tmp, runner)
    assert not problems, "\n".join(problems)
    return proc
