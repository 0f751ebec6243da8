"""Table-driven bad-input cases for the command-line tools.

Each :class:`Case` runs one tool in a subprocess and asserts three things: the exit code, that the
message names the offending file, key or class, and that nothing already on disk changed
(``protect`` folders are digested before and after). Test modules in this folder list cases per
tool and call :func:`check_case`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

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


def check_case(case: Case, tmp: Path, runner: Callable[..., subprocess.CompletedProcess] = run_tool
               ) -> subprocess.CompletedProcess:
    """Run ``case`` in ``tmp`` and assert exit code, named culprit and untouched files.

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
    assert proc.returncode == case.code, (
        f"{case.id}: exit {proc.returncode}, expected {case.code}\n{out[-4000:]}")
    for name in case.names:
        assert _fill(name, tmp) in out, f"{case.id}: output does not name {name!r}\n{out[-4000:]}"
    if case.code == 2:
        assert "Traceback" not in out, f"{case.id}: a user mistake printed a traceback\n{out[-4000:]}"
    for p in protect:
        assert tree_digest(p) == before[p], f"{case.id}: {p} changed on disk"
    for a in case.absent:
        assert not Path(_fill(a, tmp)).exists(), f"{case.id}: {_fill(a, tmp)} exists afterwards"
    return proc
