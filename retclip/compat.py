"""The one place for compatibility steps between detectron2 v0.6 and today's libraries.

Every step checks whether it is needed and does nothing otherwise, so a cluster install of a
newer, compiled detectron2 is left untouched. Every detectron2-facing part of RetCLIP
(``retclip.config``, ``retclip.checkpoint``, ``retclip.modeling``, ``retclip.data``, ...) calls
:func:`apply_all` before it imports detectron2; ``import retclip`` alone changes nothing. Each step has a test in ``tests/test_compat.py`` that fails
when the step is removed.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import Callable, Dict, List

logger = logging.getLogger(__name__)

#: Names of the steps that changed something in this process (for logs and tests).
APPLIED: List[str] = []

_STANDIN_MARKER = "__retclip_standin__"


def pillow_linear() -> bool:
    """Pillow 10 removed ``Image.LINEAR``; ``detectron2.data.transforms`` v0.6 reads it at import."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    return True


def numpy_aliases() -> bool:
    """NumPy 2 removed ``np.int/float/bool/object/str``; v0.6's SemSegEvaluator still uses them."""
    import numpy as np

    changed = False
    for name, value in (("int", int), ("float", float), ("bool", bool), ("object", object), ("str", str)):
        if name not in np.__dict__:
            setattr(np, name, value)
            changed = True
    return changed


def pkg_resources_standin() -> bool:
    """setuptools >= 81 dropped ``pkg_resources``; ``detectron2.model_zoo`` imports it for one call."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return False
    module = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"pkg_resources stand-in: package {package!r} not found")
        import os

        return os.path.join(list(spec.submodule_search_locations)[0], resource)

    module.resource_filename = resource_filename  # type: ignore[attr-defined]
    setattr(module, _STANDIN_MARKER, True)
    sys.modules["pkg_resources"] = module
    return True


def detectron2_c_standin() -> bool:
    """The pure-Python detectron2 has no compiled ``_C``; ``default_setup`` and
    ``collect_env`` call its version functions. Installed only when the real module is absent."""
    if "detectron2._C" in sys.modules:
        return False
    if importlib.util.find_spec("detectron2") is None:
        return False
    if importlib.util.find_spec("detectron2._C") is not None:
        return False
    module = types.ModuleType("detectron2._C")
    module.get_compiler_version = lambda: "none (pure-Python detectron2)"  # type: ignore[attr-defined]
    module.get_cuda_version = lambda: "none"  # type: ignore[attr-defined]
    module.has_cuda = lambda: False  # type: ignore[attr-defined]
    setattr(module, _STANDIN_MARKER, True)
    sys.modules["detectron2._C"] = module
    import detectron2

    detectron2._C = module  # type: ignore[attr-defined]
    return True


def safe_torch_load_globals() -> bool:
    """``torch.load`` defaults to ``weights_only=True``; third-party ``.pth`` files (detectron2
    checkpoints among them) hold numpy scalars and dtypes. Allow-list exactly those instead of
    turning the safe loader off."""
    import numpy as np
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 has no allow-list and loads everything anyway
        return False
    wanted: list = [np.dtype, np.ndarray]
    wanted += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "uint8", "bool")]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x layout
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    wanted += [scalar, _reconstruct]
    present = set(torch.serialization.get_safe_globals())
    missing = [g for g in wanted if g not in present]
    if not missing:
        return False
    add(missing)
    return True


#: Modules that call ``torch.jit.script`` when imported (fvcore's focal losses, detectron2 v0.6's
#: box encoders).
JIT_SCRIPT_AT_IMPORT = ("fvcore.nn", "detectron2.modeling.box_regression")


def quiet_jit_script_warnings() -> bool:
    """torch >= 2.10 answers every ``torch.jit.script`` with a FutureWarning, so each tool printed
    one per run from the modules in :data:`JIT_SCRIPT_AT_IMPORT`. Import exactly those modules
    with exactly that warning (its message and category) ignored; other callers still warn."""
    todo = [m for m in JIT_SCRIPT_AT_IMPORT if m not in sys.modules]
    if not todo or importlib.util.find_spec("fvcore") is None:
        return False
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is (deprecated|not supported)", category=FutureWarning
        )
        for name in todo:
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                importlib.import_module(name)
    return True


_STEPS: Dict[str, Callable[[], bool]] = {
    "pillow_linear": pillow_linear,
    "numpy_aliases": numpy_aliases,
    "pkg_resources_standin": pkg_resources_standin,
    "detectron2_c_standin": detectron2_c_standin,
    "safe_torch_load_globals": safe_torch_load_globals,
    "quiet_jit_script_warnings": quiet_jit_script_warnings,
}


def apply_all() -> List[str]:
    """Apply every step that is needed; returns the names of the steps that changed something."""
    for name, step in _STEPS.items():
        if name in APPLIED:
            continue
        if step():
            APPLIED.append(name)
            logger.debug("compat step applied: %s", name)
    return list(APPLIED)


def has_compiled_detectron2() -> bool:
    """True when detectron2's compiled ``_C`` is real (fast COCOeval, rotated ops available).

    Evaluators use this to pick ``use_fast_impl``: the fast COCOeval needs the compiled module.
    """
    module = sys.modules.get("detectron2._C")
    if module is None:
        try:
            from detectron2 import _C as module  # type: ignore[no-redef]
        except ImportError:
            return False
    return not getattr(module, _STANDIN_MARKER, False)
