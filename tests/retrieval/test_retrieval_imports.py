"""What imports what: retrieval without detectron2, compat before detectron2, quiet imports.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds
everything). Where detectron2 must be unavailable, a meta-path finder that raises ImportError for
``detectron2`` is installed first, so the check holds even on a machine where it is installed.
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BLOCK_DETECTRON2 = r"""
import importlib.abc, sys

class BlockDetectron2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, BlockDetectron2())
"""

RETRIEVAL_WITHOUT_DETECTRON2 = BLOCK_DETECTRON2 + r"""
import importlib, pkgutil
import retclip
import retclip.ensemble
import retclip.retrieval
names = [info.name for info in pkgutil.iter_modules(retclip.retrieval.__path__)]
for name in names:  # every module, new ones included
    importlib.import_module("retclip.retrieval." + name)
print("RETRIEVAL_MODULES", ",".join(names))
assert callable(retclip.ensemble.geometric_ensemble)
assert callable(retclip.retrieval.FeatureDatabase.create)
try:
    import retclip.modeling
except ImportError as e:
    print("MODELING_BLOCKED", e)
bad = sorted(m for m in sys.modules if m == "detectron2" or m.startswith("detectron2."))
print("DETECTRON2_MODULES", bad)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_retrieval_and_ensemble_import_where_detectron2_cannot():
    proc = _run(RETRIEVAL_WITHOUT_DETECTRON2)
    assert proc.returncode == 0, proc.stderr
    assert "DETECTRON2_MODULES []" in proc.stdout, proc.stdout
    imported = proc.stdout.split("RETRIEVAL_MODULES ")[1].split()[0].split(",")
    assert {"database", "index", "scoring", "search", "pipeline"} <= set(imported), imported
    # the block is real: the detectron2-facing package does need it
    assert "MODELING_BLOCKED" in proc.stdout and "blocked for this test" in proc.stdout


COMPAT_FIRST = r"""
import importlib, importlib.abc, sys

seen = {}

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" and "first" not in seen:
            from PIL import Image
            import numpy as np
            compat = sys.modules.get("retclip.compat")
            seen["first"] = (hasattr(Image, "LINEAR"), "int" in np.__dict__,
                             list(compat.APPLIED) if compat else None)
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print("AT_FIRST_DETECTRON2_IMPORT", seen.get("first"))
"""

DETECTRON2_FACING = ["retclip.config", "retclip.checkpoint", "retclip.modeling", "retclip.data",
                     "retclip.evaluation", "retclip.engine", "retclip.sweep.runner",
                     "retclip.database_builder", "retclip.proposals", "retclip.demo"]


@pytest.mark.slow
@pytest.mark.parametrize("module", DETECTRON2_FACING)
def test_compat_steps_run_before_detectron2_is_first_imported(module):
    proc = _run(COMPAT_FIRST, module)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("AT_FIRST_DETECTRON2_IMPORT")][0]
    # Pillow >= 10 has no Image.LINEAR and NumPy 2 no np.int: both present means the steps ran.
    assert line.startswith("AT_FIRST_DETECTRON2_IMPORT (True, True, ["), line


REGISTRATION = r"""
import importlib, sys
import open_clip
tiny = "retclip-tiny-convnext"
importlib.import_module(sys.argv[1])
from detectron2.modeling import META_ARCH_REGISTRY
print("META_ARCHS", sorted(k for k in ("FCCLIP", "RetCLIP", "TrainingFreeRetCLIP")
                           if k in META_ARCH_REGISTRY._obj_map))
print("TINY_REGISTERED", tiny in open_clip.list_models())
from detectron2.data import DatasetCatalog
print("DATASETS_REGISTERED", "retclip_synthetic_train" in DatasetCatalog.list())
from retclip.modeling.backbone.clip import create_clip_model
create_clip_model(tiny, "")  # a config naming a tiny test architecture registers it on demand
print("TINY_AFTER_CREATE", tiny in open_clip.list_models())
"""


@pytest.mark.slow
def test_modeling_registers_every_meta_arch_but_not_the_test_architectures():
    proc = _run(REGISTRATION, "retclip.modeling")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "META_ARCHS ['FCCLIP', 'RetCLIP', 'TrainingFreeRetCLIP']" in proc.stdout
    assert "DATASETS_REGISTERED True" in proc.stdout  # the models read their metadata
    assert "TINY_REGISTERED False" in proc.stdout
    assert "TINY_AFTER_CREATE True" in proc.stdout


@pytest.mark.slow
def test_no_jit_script_future_warning_on_import():
    proc = subprocess.run([sys.executable, "-W", "default", "-c", "import retclip.modeling"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]
    # narrow: torch.jit.script called by anyone else still warns
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c",
         "import retclip.modeling, torch\n@torch.jit.script\ndef f(x):\n    return x + 1\n"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "torch.jit.script" in proc.stderr and "FutureWarning" in proc.stderr, proc.stderr[-3000:]
