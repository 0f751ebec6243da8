"""Run a tool's ``main`` inside the test process, for cases that stop before any model is built.

A tool started as a subprocess spends most of its time importing torch and detectron2; cases that
end at an argument, file or config check are run here instead, through the same
:func:`retclip.utils.cli.run_tool` the tool's ``__main__`` calls, with stdout and stderr captured.
The result looks like a finished subprocess, so :func:`harness.case_problems` checks the same things.
"""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import Any, Dict, Optional, Sequence

from retclip.utils.cli import run_tool

from .harness import TOOLS

_MODULES: Dict[str, Any] = {}


def _tool_module(tool: str) -> Any:
    if tool not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"retclip_tool_{tool[:-3]}", TOOLS / tool)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[tool] = module
    return _MODULES[tool]


def run_in_process(tool: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
                   timeout: float = 0.0) -> subprocess.CompletedProcess:
    """``tools/<tool> args`` as ``run_tool(main, args)`` here; exit code, stdout and stderr back."""
    module = _tool_module(tool)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [str(TOOLS / tool), *args]
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = run_tool(module.main, list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([tool, *args], code, out.getvalue(), err.getvalue())
