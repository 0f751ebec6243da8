"""The retrieval modules and the ensembles must not import detectron2.

``import retclip.retrieval`` always runs ``retclip/__init__`` first, which imports detectron2 on
purpose, so importing through the package proves nothing. Instead a fresh interpreter registers
an empty package whose search path is the ``retclip`` directory (so relative imports such as
``..utils.registry`` resolve inside it) and imports ``retrieval`` and ``ensemble`` from it, never
executing ``retclip/__init__``; then it checks that detectron2 is absent from ``sys.modules``. This catches transitive imports too, which an AST scan would miss.
"""
import subprocess
import sys
from pathlib import Path

import retclip

PACKAGE_DIR = Path(retclip.__file__).resolve().parent

SCRIPT = r"""
import importlib, sys, types
pkg = types.ModuleType("isolated_retclip")  # the package without running retclip/__init__
pkg.__path__ = [sys.argv[1]]
sys.modules["isolated_retclip"] = pkg
mod = importlib.import_module("isolated_retclip.retrieval")
for sub in ("database", "fingerprint", "index", "scoring", "label_matching", "search",
            "shards", "pipeline"):
    importlib.import_module("isolated_retclip.retrieval." + sub)
ens = importlib.import_module("isolated_retclip.ensemble")
assert callable(ens.geometric_ensemble) and callable(mod.FeatureDatabase.create)
assert "retclip" not in sys.modules, "retclip/__init__ was executed"
bad = sorted(m for m in sys.modules if m == "detectron2" or m.startswith("detectron2."))
print("DETECTRON2_MODULES", bad)
"""


def test_retrieval_and_ensemble_do_not_import_detectron2():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(PACKAGE_DIR)], capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DETECTRON2_MODULES []" in proc.stdout, proc.stdout
