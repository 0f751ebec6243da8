"""scripts/setup.sh stops at the first step that cannot be done and names it, leaving nothing
marked complete."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.sh"


def _run(tmp_path, **env):
    full_env = dict(os.environ, RETCLIP_VENV=str(tmp_path / "venv"), **env)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=120)


def test_wrong_python_version_is_named(tmp_path):
    fake = tmp_path / "python-old"
    fake.write_text('#!/bin/sh\nexec /usr/bin/env python3 -c "import sys; print(\'2.7\'); sys.exit(1)"\n')
    fake.chmod(0o755)
    result = _run(tmp_path, RETCLIP_PYTHON=str(fake))
    assert result.returncode != 0
    assert 'FAILED at step "check the Python interpreter"' in result.stderr
    assert not (tmp_path / "venv" / ".retclip-setup-complete").exists()


def test_missing_interpreter_is_named(tmp_path):
    result = _run(tmp_path, RETCLIP_PYTHON=str(tmp_path / "no-such-python"))
    assert result.returncode != 0 and "not found" in result.stderr


def test_unknown_detectron2_route_is_refused(tmp_path):
    result = _run(tmp_path, RETCLIP_DETECTRON2="conda")
    assert result.returncode != 0 and "RETCLIP_DETECTRON2=conda" in result.stderr


def test_unreachable_index_fails_at_the_install_step(tmp_path):
    # A venv is created, then pip is pointed at an index that does not exist.
    result = _run(
        tmp_path,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        PIP_NO_INDEX="0",
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
        PIP_CONFIG_FILE=os.devnull,
    )
    assert result.returncode != 0
    assert 'FAILED at step "install pinned dependencies' in result.stderr
    assert not (tmp_path / "venv" / ".retclip-setup-complete").exists()
