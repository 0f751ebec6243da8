"""scripts/try_demo.sh, run as a user runs it: a fresh process, nothing registered by the tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_try_demo_script_runs_every_part(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PORT="7871", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "try_demo.sh"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[try_demo] web demo answers:" in proc.stdout
    out = tmp_path / "out"
    for photo in ("astronaut", "coffee", "chelsea"):
        picture = Image.open(out / "demo" / f"{photo}_panoptic.png")
        source = Image.open(out / "photos" / f"{photo}.png")
        assert picture.width > source.width  # the legend panel is beside the image
        segments = json.loads((out / "demo" / f"{photo}_segments.json").read_text())
        assert isinstance(segments, (list, dict)) and segments
    assert Image.open(out / "thumbnails_cat.png").size[0] > 0
