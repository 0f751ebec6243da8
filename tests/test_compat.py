"""Each compatibility step of retclip.compat is needed here: these tests fail if one is removed."""
import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from retclip import compat


def test_every_step_ran_or_was_not_needed_and_is_idempotent():
    for name, step in compat._STEPS.items():
        # A second call must find nothing left to do.
        assert step() is False, name


def test_pillow_linear_alias_lets_detectron2_transforms_import():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    transforms = importlib.import_module("detectron2.data.transforms")
    assert hasattr(transforms, "ResizeShortestEdge")


def test_numpy_aliases_present_for_detectron2_v06():
    assert np.int is int and np.float is float and np.object is object and np.str is str


def test_pkg_resources_available_for_model_zoo():
    model_zoo = importlib.import_module("detectron2.model_zoo")
    import pkg_resources

    path = pkg_resources.resource_filename("detectron2", "model_zoo")
    assert path.endswith("model_zoo") and model_zoo is not None


def test_detectron2_c_standin_lets_default_setup_report_versions():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info
    if compat.has_compiled_detectron2():
        pytest.skip("a compiled detectron2._C is installed; the stand-in is not used")
    from detectron2 import _C

    assert _C.has_cuda() is False
    assert "none" in _C.get_compiler_version()


def test_safe_torch_load_accepts_numpy_scalars_without_disabling_weights_only(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": np.int64(7), "lr": np.float64(0.5)}, path)
    loaded = torch.load(path, weights_only=True)
    assert int(loaded["iteration"]) == 7 and float(loaded["lr"]) == 0.5


def test_safe_torch_load_still_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"obj": compat.APPLIED.__class__}, path)  # a type is fine; a callable global is not
    torch.save({"fn": subprocess.call}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        torch.load(path, weights_only=True)


def test_steps_are_applied_before_detectron2_in_a_fresh_interpreter():
    code = (
        "import retclip.config, sys; from retclip import compat; "
        "import detectron2.data.transforms, detectron2.model_zoo, detectron2.engine; "
        "print(','.join(compat.APPLIED))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    applied = out.stdout.strip().split(",")
    assert "pillow_linear" in applied and "numpy_aliases" in applied
