"""The retrieval modules and the ensembles must not import detectron2.

``import retclip.retrieval`` always runs ``retclip/__init__`` first, which imports detectron2 on
purpose, so importing through the package proves nothing. Instead a fresh interpreter loads
``retclip/retrieval`` as a stand-alone package (``spec_from_file_location`` with its own
directory as the search path, so its relative imports resolve inside it) and ``retclip/ensemble.py``
as a stand-alone module, never executing ``retclip/__init__`` (a bare ``retclip`` module lets
``retclip.utils`` import); then it checks that detectron2 is
absent from ``sys.modules``. This catches transitive imports too, which an AST scan would miss.
"""
import subprocess
import sys
from pathlib import Path

import retclip

PACKAGE_DIR = Path(retclip.__file__).resolve().parent

SCRIPT = r"""
import importlib.util, sys, types
pkg_dir = sys.argv[1]
# retclip.utils (file and CLI helpers, no detectron2) may be used by the retrieval modules: make
# it importable under a bare "retclip" module whose __init__ never runs.
bare = types.ModuleType("retclip")
bare.__path__ = [pkg_dir]
sys.modules["retclip"] = bare
spec = importlib.util.spec_from_file_location(
    "isolated_retrieval", pkg_dir + "/retrieval/__init__.py",
    submodule_search_locations=[pkg_dir + "/retrieval"])
mod = importlib.util.module_from_spec(spec)
sys.modules["isolated_retrieval"] = mod
spec.loader.exec_module(mod)
for sub in ("database", "fingerprint", "index", "scoring", "label_matching", "search",
            "shards", "pipeline", "labels", "index_build"):
    __import__("isolated_retrieval." + sub)
spec = importlib.util.spec_from_file_location("isolated_ensemble", pkg_dir + "/ensemble.py")
ens = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ens)
assert callable(ens.geometric_ensemble) and callable(mod.FeatureDatabase.create)
assert not hasattr(sys.modules["retclip"], "__version__"), "retclip/__init__ was executed"
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
